//! Scenario 7, attacks:
//! - a tampered artifact: the bytes the coordinator serves no longer match the signed
//!   SHA-256 (an untrusted mirror, or a disk edited behind the coordinator's back): the
//!   agent refuses before unpacking, installs nothing, and reports it;
//! - a release signed by a key that is not a release key (here: the coordinator's own
//!   online key): refused at publication, so no site can ever be assigned it; and when a
//!   compromised coordinator serves it anyway, the agent refuses it (`threshold_not_met`);
//! - through a compromised coordinator ([`Mitm`]: the coordinator's TLS key and online
//!   signing key in an attacker's hands), a replayed old assignment (`replay`), another
//!   site's assignment (`wrong_site`) and an expired one (`expired`).
//!
//! Each refusal must reach the real coordinator as a `refusal` report with its code, and
//! leave the site exactly as it was: nothing downloaded, unpacked, installed or leased.

use fleetwave_e2e::mitm::{
    Forger, assert_untouched, assignment_for, poll_answer, read_assignment, wait_refusal,
};
use fleetwave_e2e::release::DemoRelease;
use fleetwave_e2e::{Fleet, FleetOptions, FleetSpec, Mitm, PlanSpec, WaveSpec, eventually_default};
use jiff::{SignedDuration, Timestamp};

/// One pig whose agent talks to the coordinator only through a man in the middle.
fn compromised() -> anyhow::Result<(Fleet, Mitm)> {
    let options = FleetOptions {
        not_started: ["pig-1".to_string()].into(),
        ..FleetOptions::default()
    };
    let mut fleet = Fleet::start_with(FleetSpec::cohorts(1, 0, 0, 0), options)?;
    let mitm = Mitm::front(&mut fleet, "pig-1")?;
    Ok((fleet, mitm))
}

#[test]
fn a_tampered_artifact_is_refused_and_reported() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetSpec::cohorts(1, 0, 0, 0))?;
    fleet.baseline(&DemoRelease::good("1.0.0", 1))?;

    let release = DemoRelease::good("2.0.0", 2);
    fleet.publish(&release)?;
    // Flip one byte of the stored artifact: same length, different SHA-256.
    let built = fleet
        .dirs
        .work
        .join(&release.id)
        .join(format!("{}.tar.gz", release.id));
    let artifact = fleetwave_shared::sha256_hex(&std::fs::read(&built)?);
    let stored = fleet
        .coordinator
        .dir
        .join("data")
        .join("artifacts")
        .join(&artifact);
    let mut bytes = std::fs::read(&stored)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&stored, &bytes)?;

    fleet.rollout(&PlanSpec::new(
        "one pig",
        &release.id,
        vec![WaveSpec::new("pigs")],
    ))?;

    // Refused and reported, nothing installed.
    eventually_default("pig-1 to report the tampered artifact", || {
        let reports = fleetwave_e2e::inspect::CoordinatorDb::new(fleet.coordinator.database())
            .reports("pig-1")?;
        let refused = reports.iter().any(|r| {
            (r.body["kind"] == "refusal"
                && r.body["code"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("artifact"))
                || (r.body["kind"] == "phase"
                    && r.body["release_id"] == release.id.as_str()
                    && r.body["phase"] == "failed")
        });
        anyhow::ensure!(refused, "no refusal or failure reported yet");
        Ok(())
    })?;
    let site = fleet.site("pig-1")?;
    assert_eq!(site.version_on_disk()?.as_deref(), Some("1.0.0"));
    assert_eq!(site.version_served()?, "1.0.0");
    assert!(!site.dirs.app.join("demo").join("2.0.0").exists());
    let phases = fleet.phases("pig-1", &release.id)?;
    assert!(
        !phases.iter().any(|p| p == "installing" || p == "committed"),
        "{phases:?}"
    );
    Ok(())
}

#[test]
fn a_release_signed_by_a_non_release_key_is_refused() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetSpec::cohorts(1, 0, 0, 0))?;
    let release = DemoRelease::good("1.0.0", 1);
    // The coordinator's online key is in the root, but not as a release key.
    let envelope = fleet.sign_release(&release, &fleet.coordinator.dir.join("coordinator.key"))?;
    let err = fleet
        .operator
        .publish_release(&envelope)
        .expect_err("a release signed by the coordinator key was accepted");
    let text = err.to_string();
    assert!(
        text.contains("422") && text.contains("release_refused"),
        "{text}"
    );
    let err = fleet
        .operator
        .create_rollout(&PlanSpec::new("x", &release.id, vec![WaveSpec::new("all")]).to_toml())
        .expect_err("a rollout of an unpublished release was created");
    match err {
        fleetwave_e2e::HarnessError::Api { status, .. } => {
            assert!((400..500).contains(&status), "{status}")
        }
        other => panic!("{other}"),
    }
    assert_eq!(fleet.site("pig-1")?.version_on_disk()?, None);
    Ok(())
}

#[test]
fn a_replayed_old_assignment_is_refused_and_reported() -> anyhow::Result<()> {
    let (fleet, mitm) = compromised()?;
    let old = DemoRelease::good("1.0.0", 1);
    fleet.baseline(&old)?;
    // The attacker keeps the assignment of 1.0.0 it saw pass by...
    let recorded = mitm.recorded();
    let replayed = recorded
        .first()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no assignment recorded"))?;
    let fields = read_assignment(
        replayed
            .assignment
            .as_ref()
            .expect("recorded with an assignment"),
    )?;
    // ...and serves it again once the site moved on to 2.0.0 (a newer sequence).
    let current = DemoRelease::good("2.0.0", 2);
    fleet.baseline(&current)?;
    mitm.serve(replayed);
    wait_refusal(
        &fleet,
        "pig-1",
        "replay",
        &fields.rollout_id,
        fields.sequence,
    )?;
    assert!(mitm.forged_served() > 0);
    let site = fleet.site("pig-1")?;
    assert_eq!(site.version_on_disk()?.as_deref(), Some("2.0.0"));
    assert_eq!(site.version_served()?, "2.0.0");
    let phases = fleet.phases("pig-1", &old.id)?;
    assert_eq!(
        phases.iter().filter(|p| *p == "accepted").count(),
        1,
        "1.0.0 accepted again: {phases:?}"
    );
    assert!(!phases.iter().any(|p| p == "rolled_back"), "{phases:?}");
    let status: serde_json::Value =
        serde_json::from_str(&fleet.agent_cli("pig-1", &["status", "--json"])?)?;
    assert_eq!(
        status["installed"][0]["release_id"],
        current.id.as_str(),
        "{status}"
    );
    assert_eq!(
        status["assignment"]["release_id"],
        current.id.as_str(),
        "{status}"
    );
    Ok(())
}

#[test]
fn another_sites_assignment_is_refused_and_reported() -> anyhow::Result<()> {
    let (fleet, mitm) = compromised()?;
    let release = DemoRelease::good("1.0.0", 1);
    let envelope = fleet.sign_release(&release, &fleet.coordinator.release_key)?;
    let forger = Forger::coordinator(&fleet.coordinator)?;
    let assignment = assignment_for("pig-2", &envelope, 1_000_001);
    mitm.serve(poll_answer(forger.assignment(&assignment), envelope));
    wait_refusal(
        &fleet,
        "pig-1",
        "wrong_site",
        &assignment.rollout_id,
        assignment.sequence,
    )?;
    assert_untouched(&fleet, "pig-1", &release, None)?;
    Ok(())
}

#[test]
fn an_expired_assignment_is_refused_and_reported() -> anyhow::Result<()> {
    let (fleet, mitm) = compromised()?;
    let release = DemoRelease::good("1.0.0", 1);
    let envelope = fleet.sign_release(&release, &fleet.coordinator.release_key)?;
    let forger = Forger::coordinator(&fleet.coordinator)?;
    let mut assignment = assignment_for("pig-1", &envelope, 1_000_002);
    let now = Timestamp::now();
    assignment.issued_at = now - SignedDuration::from_hours(2);
    assignment.not_before = assignment.issued_at;
    assignment.expires = now - SignedDuration::from_mins(1);
    mitm.serve(poll_answer(forger.assignment(&assignment), envelope));
    wait_refusal(
        &fleet,
        "pig-1",
        "expired",
        &assignment.rollout_id,
        assignment.sequence,
    )?;
    assert_untouched(&fleet, "pig-1", &release, None)?;
    Ok(())
}

#[test]
fn a_release_signed_by_a_non_release_key_is_refused_by_the_agent() -> anyhow::Result<()> {
    let (fleet, mitm) = compromised()?;
    let release = DemoRelease::good("1.0.0", 1);
    // The attacker has the coordinator key, not a release key: it signs the release itself.
    let coordinator_key = fleet.coordinator.dir.join("coordinator.key");
    let envelope = fleet.sign_release(&release, &coordinator_key)?;
    let forger = Forger::coordinator(&fleet.coordinator)?;
    let assignment = assignment_for("pig-1", &envelope, 1_000_003);
    mitm.serve(poll_answer(forger.assignment(&assignment), envelope));
    let refusal = wait_refusal(
        &fleet,
        "pig-1",
        "threshold_not_met",
        &assignment.rollout_id,
        assignment.sequence,
    )?;
    assert!(
        refusal["message"]
            .as_str()
            .unwrap_or_default()
            .contains("release"),
        "{refusal}"
    );
    assert_untouched(&fleet, "pig-1", &release, None)?;
    Ok(())
}
