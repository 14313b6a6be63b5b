//! Scenario 2, a bad release: its app fails the health check after install at the first
//! wave; the rollout halts there; with `auto_rollback` the wave's sites return to the
//! previous version; no site of a later wave ever installs it.

use fleetwave_e2e::release::DemoRelease;
use fleetwave_e2e::{Fleet, FleetSpec, PlanSpec};

#[test]
fn a_bad_release_halts_in_the_first_wave_and_rolls_back() -> anyhow::Result<()> {
    // Two pigs, so the first wave has more than one site to send back.
    let spec = FleetSpec::cohorts(2, 1, 2, 1);
    let fleet = Fleet::start(spec.clone())?;
    fleet.baseline(&DemoRelease::good("1.0.0", 1))?;

    let bad = DemoRelease::bad("2.0.0", 2);
    fleet.publish(&bad)?;
    let plan = PlanSpec::four_waves(&bad.id, "tulsa")
        .auto_rollback(true)
        // One failure is enough to halt: the gate must not wait for the second pig.
        .every_gate(|g| {
            g.failure_budget = Some(0);
            g.min_sample = 1;
        });
    let id = fleet.rollout(&plan)?;

    // The rollout halts in wave 0 (and, with auto_rollback, may end rolled back).
    let (view, halt) = fleet.wait_halted(&id)?;
    assert_eq!(halt.wave, Some(0), "{halt:?}");
    assert!(!halt.reason.trim().is_empty());
    assert!(
        !view
            .decisions
            .iter()
            .any(|d| d.kind == "open_wave" && d.wave != Some(0)),
        "a later wave opened: {:#?}",
        view.decisions
    );

    // The first wave's sites are back on 1.0.0: on disk, served, and as reported.
    let sites = fleet.operator.rollout_sites(&id)?;
    let pigs: Vec<String> = sites
        .iter()
        .filter(|s| s.wave == 0)
        .map(|s| s.site_id.clone())
        .collect();
    assert_eq!(pigs.len(), 2, "{sites:?}");
    for pig in &pigs {
        fleet.wait_version(pig, "1.0.0")?;
        fleet.wait_reported_version(pig, "1.0.0")?;
        // It really installed 2.0.0 before going back.
        let phases = fleet.phases(pig, &bad.id)?;
        assert!(
            phases.iter().any(|p| p == "installing" || p == "verifying"),
            "{pig} never installed {}: {phases:?}",
            bad.id
        );
    }

    // No site of a later wave ever installed it: nothing reported, nothing on disk.
    for site in spec.sites.iter().filter(|s| !pigs.contains(&s.id)) {
        let phases = fleet.phases(&site.id, &bad.id)?;
        assert!(
            !phases.iter().any(|p| matches!(
                p.as_str(),
                "leased" | "downloading" | "installing" | "verifying" | "committed"
            )),
            "{} (a later wave) worked on the bad release: {phases:?}",
            site.id
        );
        let dir = fleet.site(&site.id)?.dirs.app.join("demo").join("2.0.0");
        assert!(!dir.exists(), "{} has {}", site.id, dir.display());
        assert_eq!(fleet.site(&site.id)?.version_served()?, "1.0.0");
    }
    Ok(())
}
