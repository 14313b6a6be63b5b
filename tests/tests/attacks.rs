//! Scenario 7, attacks (the parts that can be staged with the real processes):
//! - a tampered artifact: the bytes the coordinator serves no longer match the signed
//!   SHA-256 (an untrusted mirror, or a disk edited behind the coordinator's back): the
//!   agent refuses before unpacking, installs nothing, and reports it;
//! - a release signed by a key that is not a release key (here: the coordinator's own
//!   online key): refused at publication, so no site can ever be assigned it.
//!
//! Replayed, foreign-site and expired assignments need a coordinator that signs what it
//! should not; they are covered by the trust core's tests (shared/tests) until the suite
//! has a compromised-coordinator fixture.

use fleetwave_e2e::release::DemoRelease;
use fleetwave_e2e::{Fleet, FleetSpec, PlanSpec, WaveSpec, eventually_default};

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
