//! Scenario 9, root rotation: the fleet's root and release keys rotate (root version 2,
//! signed by the old and the new root keys, made with the real `fleetwave` CLI); every
//! agent follows the chain; a release signed by the new release key installs, and one
//! signed by the retired release key is refused.

use std::path::{Path, PathBuf};

use fleetwave_e2e::mitm::{Forger, assert_untouched, assignment_for, poll_answer, wait_refusal};
use fleetwave_e2e::release::DemoRelease;
use fleetwave_e2e::{
    Fleet, FleetOptions, FleetSpec, Mitm, PlanSpec, Spawn, bins, eventually_default,
};
use fleetwave_shared::protocol::operator::RolloutStatus;

fn cli(fleet: &Fleet, label: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> anyhow::Result<String> {
    let mut spawn = Spawn::new(label, bins::binary(bins::CLI)?, &fleet.dirs.logs);
    for a in args {
        spawn = spawn.arg(a.as_ref());
    }
    Ok(spawn.run()?)
}

fn pubfile(key: &Path) -> PathBuf {
    PathBuf::from(format!("{}.pub", key.display()))
}

#[test]
fn agents_follow_a_root_rotation_and_the_retired_release_key_is_refused() -> anyhow::Result<()> {
    // pig-1 reaches the coordinator through a man in the middle, general-1 directly.
    let options = FleetOptions {
        not_started: ["pig-1".to_string()].into(),
        ..FleetOptions::default()
    };
    let mut fleet = Fleet::start_with(FleetSpec::cohorts(1, 0, 1, 0), options)?;
    let mitm = Mitm::front(&mut fleet, "pig-1")?;
    fleet.baseline(&DemoRelease::good("1.0.0", 1))?;

    // New root and release keys, and root version 2 signed by the old and new root keys.
    let work = fleet.dirs.work.join("rotation");
    std::fs::create_dir_all(&work)?;
    let new_root = work.join("root-2.key");
    let new_release = work.join("release-2.key");
    cli(
        &fleet,
        "fleetwave-key-root",
        &[&"key", &"generate", &"--out", &new_root],
    )?;
    cli(
        &fleet,
        "fleetwave-key-release",
        &[&"key", &"generate", &"--out", &new_release],
    )?;
    let doc = work.join("root-v2.json");
    let envelope = work.join("root-v2.envelope.json");
    let coordinator_pub = fleet.coordinator.dir.join("coordinator.key.pub");
    cli(
        &fleet,
        "fleetwave-root-init",
        &[
            &"root",
            &"init",
            &"--version",
            &"2",
            &"--root-key",
            &pubfile(&new_root),
            &"--release-key",
            &pubfile(&new_release),
            &"--coordinator-key",
            &coordinator_pub,
            &"--expires",
            &"30d",
            &"--out",
            &doc,
        ],
    )?;
    cli(
        &fleet,
        "fleetwave-root-sign",
        &[
            &"root",
            &"sign",
            &"--key",
            &fleet.coordinator.root_key,
            &"--key",
            &new_root,
            &"--out",
            &envelope,
            &doc,
        ],
    )?;
    let root_v2 = fleetwave_shared::Envelope::from_json(&std::fs::read(&envelope)?)?;
    let published = fleet.operator.publish_root(&root_v2)?;
    assert_eq!(published.version, 2);

    // Every agent follows the chain to version 2.
    for site in fleet.sites.keys() {
        eventually_default(&format!("{site} to trust root version 2"), || {
            let out = fleet.agent_cli(site, &["status", "--json"])?;
            let status: serde_json::Value = serde_json::from_str(&out)?;
            anyhow::ensure!(
                status["root_version"] == 2,
                "root_version {}",
                status["root_version"]
            );
            Ok(())
        })?;
    }

    // A release signed by the retired release key is refused, and nothing installs it.
    let stale = DemoRelease::good("2.0.0", 2);
    let envelope = fleet.sign_release(&stale, &fleet.coordinator.release_key)?;
    let err = fleet
        .operator
        .publish_release(&envelope)
        .expect_err("a release signed by the retired key was accepted");
    let text = err.to_string();
    assert!(
        text.contains("422") && text.contains("release_refused"),
        "{text}"
    );
    for site in fleet.sites.keys() {
        assert_eq!(
            fleet.site(site)?.version_on_disk()?.as_deref(),
            Some("1.0.0")
        );
    }

    // A compromised coordinator (its online key is still in root version 2) assigns it
    // anyway: the agent refuses the release, reports it, and installs nothing.
    let forger = Forger::coordinator(&fleet.coordinator)?;
    let assignment = assignment_for("pig-1", &envelope, 1_000_001);
    mitm.serve(poll_answer(
        forger.assignment(&assignment),
        envelope.clone(),
    ));
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
    assert_untouched(&fleet, "pig-1", &stale, Some("1.0.0"))?;
    mitm.pass();

    // A release signed by the new release key installs everywhere.
    let fresh = DemoRelease::good("3.0.0", 3);
    let envelope = fleet.sign_release(&fresh, &new_release)?;
    fleet.operator.publish_release(&envelope)?;
    let id = fleet.rollout(&PlanSpec::new(
        "after rotation",
        &fresh.id,
        vec![fleetwave_e2e::WaveSpec::new("everyone")],
    ))?;
    fleet.wait_rollout_status(&id, RolloutStatus::Completed)?;
    for site in fleet.sites.keys() {
        fleet.wait_version(site, "3.0.0")?;
    }
    Ok(())
}
