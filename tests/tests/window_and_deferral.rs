//! Scenario 8, maintenance window and local deferral: a site outside its window, or
//! deferred by its staff (`fleetwave-agent defer`), is not leased and is not counted as
//! silent, even after the wave's report deadline; a deferred site installs once the
//! deferral is lifted.

use std::time::Duration;

use fleetwave_e2e::plan::WindowSpec;
use fleetwave_e2e::release::DemoRelease;
use fleetwave_e2e::{Fleet, FleetSpec, PlanSpec, WaveSpec, eventually_default};
use fleetwave_shared::protocol::operator::{RolloutStatus, RolloutView};

/// The plan's report deadline (the shortest a plan may have).
const DEADLINE_SECS: u64 = 60;

fn plan(release: &str) -> PlanSpec {
    PlanSpec::new(
        "everyone at once",
        release,
        vec![WaveSpec::new("everyone").gate(|g| {
            g.report_deadline_secs = DEADLINE_SECS;
            g.on_silent = "fail";
        })],
    )
}

/// Waits until the report deadline of wave 0 has passed (a lower bound taken from the
/// plan, not an assertion on timing): only then can "not silent" be checked.
fn wait_past_the_deadline(view: &RolloutView) {
    let opened = view.waves[0].opened_at.expect("wave 0 is open");
    let due = opened + Duration::from_secs(DEADLINE_SECS + 5);
    while jiff::Timestamp::now() < due {
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn never_leased(fleet: &Fleet, site: &str, release: &str) -> anyhow::Result<()> {
    let phases = fleet.phases(site, release)?;
    anyhow::ensure!(
        !phases
            .iter()
            .any(|p| matches!(p.as_str(), "leased" | "downloading" | "installing")),
        "{site} was leased: {phases:?}"
    );
    Ok(())
}

#[test]
fn a_deferred_site_is_not_leased_nor_silent_and_installs_after_resume() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetSpec::cohorts(1, 0, 1, 0))?;
    let out = fleet.agent_cli("general-1", &["defer", "6h", "--reason", "big sales day"])?;
    assert!(!out.trim().is_empty(), "defer printed nothing");
    eventually_default("the coordinator to see the deferral", || {
        let info = fleet.operator.site("general-1")?;
        anyhow::ensure!(info.deferred_until.is_some(), "{info:?}");
        Ok(())
    })?;

    let release = DemoRelease::good("1.0.0", 1);
    fleet.publish(&release)?;
    let id = fleet.rollout(&plan(&release.id))?;
    fleet.wait_version("pig-1", "1.0.0")?;
    let view = fleet.operator.rollout(&id)?;
    wait_past_the_deadline(&view);

    let view = fleet.operator.rollout(&id)?;
    assert_eq!(view.waves[0].tally.silent, 0, "{:?}", view.waves[0]);
    assert_eq!(view.waves[0].tally.failed, 0, "{:?}", view.waves[0]);
    // A deferred site needs no attention, so the status view does not list it: page.
    let sites = fleet.operator.rollout_sites(&id)?;
    let deferred = sites
        .iter()
        .find(|s| s.site_id == "general-1")
        .expect("general-1 is in the rollout's site list");
    assert!(
        !matches!(deferred.state.as_str(), "silent" | "failed" | "succeeded"),
        "{deferred:?}"
    );
    assert_eq!(
        view.status,
        RolloutStatus::Running,
        "{:?}",
        view.status_reason
    );
    never_leased(&fleet, "general-1", &release.id)?;
    assert_eq!(fleet.site("general-1")?.version_on_disk()?, None);

    // Staff lift the deferral: the site installs and the rollout completes.
    fleet.agent_cli("general-1", &["resume"])?;
    fleet.wait_version("general-1", "1.0.0")?;
    fleet.wait_rollout_status(&id, RolloutStatus::Completed)?;
    Ok(())
}

#[test]
fn a_site_outside_its_window_is_not_leased_nor_silent() -> anyhow::Result<()> {
    // Every site in UTC, and a one-hour window that opens three hours from now.
    let mut spec = FleetSpec::cohorts(1, 0, 1, 0);
    for site in &mut spec.sites {
        site.labels.insert("tz".into(), "UTC".into());
    }
    let fleet = Fleet::start(spec)?;
    let release = DemoRelease::good("1.0.0", 1);
    fleet.publish(&release)?;
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let hhmm = |z: jiff::Zoned| format!("{:02}:{:02}", z.hour(), z.minute());
    let mut plan = plan(&release.id);
    plan.window = Some(WindowSpec {
        days: vec![],
        start: hhmm(now.checked_add(jiff::SignedDuration::from_hours(3))?),
        end: hhmm(now.checked_add(jiff::SignedDuration::from_hours(4))?),
    });
    let id = fleet.rollout(&plan)?;
    let view = eventually_default("wave 0 to open", || {
        let view = fleet.operator.rollout(&id)?;
        anyhow::ensure!(view.waves[0].opened_at.is_some());
        Ok(view)
    })?;
    // The agents accept the assignment and wait for the window.
    for site in ["pig-1", "general-1"] {
        eventually_default(&format!("{site} to wait for its window"), || {
            let phases = fleet.phases(site, &release.id)?;
            anyhow::ensure!(phases.iter().any(|p| p == "waiting"), "{phases:?}");
            Ok(())
        })?;
    }
    wait_past_the_deadline(&view);

    let view = fleet.operator.rollout(&id)?;
    assert_eq!(view.waves[0].tally.silent, 0, "{:?}", view.waves[0]);
    assert_eq!(view.waves[0].tally.failed, 0, "{:?}", view.waves[0]);
    assert_eq!(
        view.status,
        RolloutStatus::Running,
        "{:?}",
        view.status_reason
    );
    for site in ["pig-1", "general-1"] {
        never_leased(&fleet, site, &release.id)?;
        assert_eq!(fleet.site(site)?.version_on_disk()?, None);
    }
    Ok(())
}
