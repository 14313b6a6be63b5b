//! Scenario 6, the coordinator is killed (SIGKILL) and restarted in the middle of a
//! rollout; the rollout continues from where it was, with nothing lost: every wave opens
//! once, every site ends on the release, and the decisions recorded before the crash are
//! still there.

use fleetwave_e2e::release::DemoRelease;
use fleetwave_e2e::{Fleet, FleetSpec, PlanSpec, eventually_default};
use fleetwave_shared::protocol::operator::RolloutStatus;

#[test]
fn a_rollout_survives_a_coordinator_crash() -> anyhow::Result<()> {
    let spec = FleetSpec::cohorts(1, 1, 2, 1);
    let mut fleet = Fleet::start(spec.clone())?;
    let release = DemoRelease::good("1.0.0", 1);
    fleet.publish(&release)?;
    let plan = PlanSpec::four_waves(&release.id, "tulsa").every_gate(|g| g.bake_secs = 3);
    let id = fleet.rollout(&plan)?;

    // Crash once the second wave is open: wave 0 done, the rest to do.
    let before = eventually_default("wave 1 to open", || {
        let view = fleet.operator.rollout(&id)?;
        anyhow::ensure!(
            view.waves[1].opened_at.is_some(),
            "{}",
            fleetwave_e2e::cluster::describe_waves(&view)
        );
        Ok(view)
    })?;
    fleet.coordinator.process.kill9()?;
    fleet.coordinator.process.restart()?;
    eventually_default("the coordinator to answer again", || {
        let status = fleet.operator.probe("/healthz")?;
        anyhow::ensure!(status == 200, "/healthz answered {status}");
        Ok(())
    })?;

    let view = fleet.wait_rollout_status(&id, RolloutStatus::Completed)?;
    for site in &spec.sites {
        fleet.wait_version(&site.id, "1.0.0")?;
        fleet.wait_reported_version(&site.id, "1.0.0")?;
    }
    // Nothing lost: the decisions from before the crash are kept, in order.
    for (old, new) in before.decisions.iter().zip(view.decisions.iter()) {
        assert_eq!(
            (&old.kind, old.wave, &old.reason),
            (&new.kind, new.wave, &new.reason)
        );
    }
    // Nothing doubled: each wave opened once, the rollout completed once.
    for wave in 0..4 {
        let opened = view
            .decisions
            .iter()
            .filter(|d| d.kind == "open_wave" && d.wave == Some(wave))
            .count();
        assert_eq!(
            opened, 1,
            "wave {wave} opened {opened} times: {:#?}",
            view.decisions
        );
    }
    assert_eq!(
        view.decisions
            .iter()
            .filter(|d| d.kind == "complete")
            .count(),
        1
    );
    // Each site installed the release once.
    for site in &spec.sites {
        let phases = fleet.phases(&site.id, &release.id)?;
        let commits = phases.iter().filter(|p| *p == "committed").count();
        assert_eq!(commits, 1, "{}: {phases:?}", site.id);
    }
    Ok(())
}
