//! Scenario 3, a silent site: one site of a wave is offline (its link cut at the fault
//! proxy) while the wave runs. With `on_silent = "fail"` the gate counts it as failed after
//! the report deadline and the rollout halts; with `on_silent = "exclude"` the rollout goes
//! on without it; either way the site catches up when its link returns.

use fleetwave_e2e::release::DemoRelease;
use std::time::Duration;

use fleetwave_e2e::{
    Fleet, FleetOptions, FleetSpec, PlanSpec, WaveSpec, eventually, eventually_default, patience,
};
use fleetwave_shared::protocol::operator::RolloutStatus;

/// Two pigs (pig-2 behind a proxy) and one general site; wave 0 the pigs, wave 1 the rest.
fn fleet() -> anyhow::Result<Fleet> {
    Ok(Fleet::start_with(
        FleetSpec::cohorts(2, 0, 1, 0),
        FleetOptions::default().proxied("pig-2"),
    )?)
}

fn plan(release: &str, on_silent: &'static str) -> PlanSpec {
    PlanSpec::new(
        &format!("{release} with on_silent = {on_silent}"),
        release,
        vec![
            WaveSpec::new("pigs").only("cohort", "pig").gate(|g| {
                g.on_silent = on_silent;
                // The shortest deadline a plan may have.
                g.report_deadline_secs = 60;
                g.success_ratio = 1.0;
                g.failure_budget = Some(0);
            }),
            WaveSpec::new("the rest"),
        ],
    )
}

/// Long enough for the 60 s report deadline to pass, with room for a slow machine.
fn past_deadline() -> Duration {
    patience(Duration::from_secs(180))
}

fn silent_count(fleet: &Fleet, id: &str) -> anyhow::Result<u32> {
    Ok(fleet.operator.rollout(id)?.waves[0].tally.silent)
}

#[test]
fn on_silent_fail_counts_the_silent_site_as_failed_and_halts() -> anyhow::Result<()> {
    let fleet = fleet()?;
    let release = DemoRelease::good("1.0.0", 1);
    fleet.publish(&release)?;
    fleet.site("pig-2")?.proxy.as_ref().unwrap().cut()?;
    let id = fleet.rollout(&plan(&release.id, "fail"))?;

    let view = eventually(
        "the gate to halt on the silent site",
        past_deadline(),
        || {
            let view = fleet.operator.rollout(&id)?;
            anyhow::ensure!(
                view.status == RolloutStatus::Halted,
                "rollout is {}: {}",
                view.status.as_str(),
                fleetwave_e2e::cluster::describe_waves(&view)
            );
            Ok(view)
        },
    )?;
    assert_eq!(view.waves[0].tally.silent, 1, "{:?}", view.waves[0]);
    let pig2 = view.sites.iter().find(|s| s.site_id == "pig-2").unwrap();
    assert_eq!(pig2.state, "silent", "{pig2:?}");
    let halt = view.decisions.iter().find(|d| d.kind == "halt").unwrap();
    assert!(
        halt.reason.contains("silent"),
        "halt reason: {}",
        halt.reason
    );
    // The healthy pig installed; the later wave never opened.
    fleet.wait_version("pig-1", "1.0.0")?;
    assert_eq!(fleet.site("general-1")?.version_on_disk()?, None);
    assert!(view.waves[1].opened_at.is_none(), "{:?}", view.waves[1]);

    // When its link returns, the silent site reports in and is no longer silent.
    fleet.site("pig-2")?.proxy.as_ref().unwrap().pass()?;
    eventually_default("pig-2 to report in again", || {
        let info = fleet.operator.site("pig-2")?;
        let seen = info
            .last_seen
            .ok_or_else(|| anyhow::anyhow!("never seen"))?;
        anyhow::ensure!(
            seen > halt.at,
            "last seen {seen}, before the halt at {}",
            halt.at
        );
        Ok(())
    })?;
    Ok(())
}

#[test]
fn on_silent_exclude_goes_on_and_the_site_catches_up() -> anyhow::Result<()> {
    let fleet = fleet()?;
    let release = DemoRelease::good("1.0.0", 1);
    fleet.publish(&release)?;
    let proxy = fleet.site("pig-2")?.proxy.as_ref().unwrap();
    proxy.cut()?;
    let id = fleet.rollout(&plan(&release.id, "exclude"))?;

    // The silent pig is excluded: the next wave opens and the rollout completes.
    eventually("pig-2 to be counted silent", past_deadline(), || {
        let n = silent_count(&fleet, &id)?;
        anyhow::ensure!(n == 1, "{n} silent");
        Ok(())
    })?;
    let view = fleet.wait_rollout_status(&id, RolloutStatus::Completed)?;
    assert!(view.waves[1].opened_at.is_some());
    fleet.wait_version("pig-1", "1.0.0")?;
    fleet.wait_version("general-1", "1.0.0")?;
    assert_eq!(fleet.site("pig-2")?.version_on_disk()?, None);

    // The link returns: pig-2 catches up with the release.
    proxy.pass()?;
    fleet.wait_version("pig-2", "1.0.0")?;
    fleet.wait_reported_version("pig-2", "1.0.0")?;
    Ok(())
}
