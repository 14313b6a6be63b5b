//! Scenario 1, the happy path: a good release reaches every site through four waves
//! (pigs, the canary city, half of the rest, then the rest with the dogs last); every gate
//! decision is recorded with its reason; the version on every site's disk and the version
//! its app serves are the release's.

use fleetwave_e2e::inspect::CoordinatorDb;
use fleetwave_e2e::release::DemoRelease;
use fleetwave_e2e::{Cohort, Fleet, FleetSpec, PlanSpec};
use fleetwave_shared::protocol::operator::RolloutStatus;

#[test]
fn a_release_reaches_every_site_through_four_waves() -> anyhow::Result<()> {
    let spec = FleetSpec::cohorts(1, 1, 2, 1);
    let fleet = Fleet::start(spec.clone())?;
    let release = DemoRelease::good("1.0.0", 1);
    fleet.publish(&release)?;
    let id = fleet.rollout(&PlanSpec::four_waves(&release.id, "tulsa"))?;

    let view = fleet.wait_rollout_status(&id, RolloutStatus::Completed)?;
    // Nothing needs attention in a completed rollout: its view lists no site.
    assert!(view.sites.is_empty(), "{:?}", view.sites);
    let sites = fleet.operator.rollout_sites(&id)?;
    assert_eq!(sites.len() as u64, view.sites_omitted);

    // Every site runs the release: on disk, served by the app, and as the coordinator knows.
    for site in &spec.sites {
        fleet.wait_version(&site.id, "1.0.0")?;
        fleet.wait_reported_version(&site.id, "1.0.0")?;
    }

    // Wave membership follows the plan: pigs first, the canary city second, dogs last.
    let wave_of = |site: &str| {
        sites
            .iter()
            .find(|s| s.site_id == site)
            .map(|s| s.wave)
            .unwrap_or_else(|| panic!("{site} is not in the rollout: {sites:?}"))
    };
    assert_eq!(view.waves.len(), 4);
    for site in spec.in_cohort(Cohort::Pig) {
        assert_eq!(wave_of(&site.id), 0, "{} is a pig", site.id);
    }
    for site in spec.in_cohort(Cohort::Canary) {
        assert_eq!(wave_of(&site.id), 1, "{} is in the canary city", site.id);
    }
    for site in spec.in_cohort(Cohort::Dog) {
        assert_eq!(wave_of(&site.id), 3, "{} is a dog", site.id);
    }
    for site in &sites {
        assert_eq!(site.state, "succeeded", "{site:?}");
    }
    // General sites are split by seed: half of the rest, or the rest.
    for site in spec.in_cohort(Cohort::General) {
        assert!(
            matches!(wave_of(&site.id), 2 | 3),
            "{} is a general site",
            site.id
        );
    }
    for wave in &view.waves {
        // A 50 % share of two general sites is taken by each site's seed (stable when
        // sites join later), so it may take none or both; every other wave has members.
        assert!(
            wave.tally.sites >= 1 || wave.name == "half of the rest",
            "wave {} is empty: {wave:?}",
            wave.name
        );
        assert_eq!(wave.tally.succeeded, wave.tally.sites, "{wave:?}");
        assert!(wave.passed_at.is_some(), "wave {} never passed", wave.name);
    }

    // Every gate decision is recorded, in order, each with a reason: wave N opens only
    // after wave N-1 passed, then the rollout completes (operator actions such as
    // `created` and `started`, and `waiting` notes, are in the timeline too).
    let changes: Vec<(String, Option<u32>)> = view
        .decisions
        .iter()
        .filter(|d| matches!(d.kind.as_str(), "open_wave" | "halt" | "complete"))
        .map(|d| (d.kind.clone(), d.wave))
        .collect();
    assert_eq!(
        changes,
        vec![
            ("open_wave".to_string(), Some(0)),
            ("open_wave".to_string(), Some(1)),
            ("open_wave".to_string(), Some(2)),
            ("open_wave".to_string(), Some(3)),
            ("complete".to_string(), None),
        ],
        "decisions: {:#?}",
        view.decisions
    );
    assert!(view.decisions.iter().all(|d| !d.reason.trim().is_empty()));
    for pair in view.waves.windows(2) {
        let (earlier, later) = (&pair[0], &pair[1]);
        assert!(
            earlier.passed_at.unwrap() <= later.opened_at.unwrap(),
            "wave {} opened before wave {} passed",
            later.name,
            earlier.name
        );
    }

    // No site started installing before its wave opened (reports carry the agent's clock,
    // the same machine's clock here).
    let db = CoordinatorDb::new(fleet.coordinator.database());
    for site in &sites {
        let opened = view.waves[site.wave as usize].opened_at.unwrap();
        let reports = db.reports(&site.site_id)?;
        let leased: Vec<_> = reports
            .iter()
            .filter(|r| r.body["phase"] == "leased")
            .collect();
        assert_eq!(
            leased.len(),
            1,
            "{}: leased reports {leased:?}",
            site.site_id
        );
        let at: jiff::Timestamp = leased[0].body["at"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .unwrap_or_else(|e| panic!("{}: bad `at` in {:?}: {e}", site.site_id, leased[0]));
        assert!(
            at >= opened,
            "{} leased at {at}, its wave opened at {opened}",
            site.site_id
        );
    }
    Ok(())
}
