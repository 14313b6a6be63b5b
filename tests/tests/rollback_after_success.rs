//! Scenario 10, a release that only a later wave finds bad, and a previous release that
//! expired meanwhile.
//!
//! 2.0.0 is healthy on the pig and on the canary city, whose sites install, bake and commit
//! it; it fails its health check on the `hardware = gen2` sites, which only the third wave
//! has. The rollout halts in wave 2 and, with `auto_rollback`, every site of the rollout
//! returns to 1.0.0. The sites of waves 0 and 1 run a healthy, committed 2.0.0 and never
//! go back by themselves: only the coordinator's rollback assignments bring them back.
//!
//! By then 1.0.0 has expired for the agents, as a release signed 90 days ago has in a real
//! fleet: going back to a release a site ran and committed is allowed past its expiry
//! (docs/trust-model.md, "Expiry limits new installs, not going back").

use fleetwave_e2e::release::DemoRelease;
use fleetwave_e2e::{Fleet, FleetSpec, PlanSpec, WaveSpec, eventually_default};
use fleetwave_shared::Release;
use jiff::{SignedDuration, Timestamp};

/// The release document inside a published envelope.
fn release_doc(info: &fleetwave_shared::protocol::operator::ReleaseInfo) -> Release {
    use base64::Engine as _;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(&info.envelope.payload)
        .expect("base64 payload");
    serde_json::from_slice(&payload).expect("a release document")
}

#[test]
fn a_release_failing_in_a_later_wave_sends_the_sites_that_succeeded_back_too() -> anyhow::Result<()>
{
    let spec = FleetSpec::cohorts(1, 1, 2, 0)
        .with_site("general-1", |s| s.label("hardware", "gen2"))
        .with_site("general-2", |s| s.label("hardware", "gen2"));
    let fleet = Fleet::start(spec.clone())?;

    // 1.0.0 expires ten minutes from now and 2.0.0 is signed as issued one second after
    // that. An agent that accepts 2.0.0's assignment raises its trusted time (the clock is
    // never trusted below the newest `issued_at` it accepted) past 1.0.0's expiry: from then
    // on 1.0.0 is expired for it, exactly as if the ten minutes had passed, and the scenario
    // does not wait for them. The baseline has those ten minutes to install 1.0.0 while it
    // is still valid.
    let v1_expires = Timestamp::now() + SignedDuration::from_mins(10);
    let v2_issued = v1_expires + SignedDuration::from_secs(1);
    let v1 = DemoRelease::good("1.0.0", 1).expires(&v1_expires.to_string());
    fleet.baseline(&v1)?;
    let v2 = DemoRelease::good("2.0.0", 2)
        .unhealthy_on("hardware", "gen2")
        .issued_at(&v2_issued.to_string());
    let published = fleet.publish(&v2)?;
    assert!(
        release_doc(&published).issued_at > v1_expires,
        "2.0.0 must be issued after 1.0.0 expired"
    );

    let plan = PlanSpec::new(
        "2.0.0 in three waves",
        &v2.id,
        vec![
            WaveSpec::new("pigs").only("cohort", "pig"),
            WaveSpec::new("canary city").only("city", "tulsa"),
            WaveSpec::new("the rest"),
        ],
    )
    .auto_rollback(true)
    .every_gate(|g| {
        g.failure_budget = Some(0);
        g.min_sample = 1;
        g.bake_secs = 1;
    });
    let id = fleet.rollout(&plan)?;

    // The rollout halts in wave 2, after waves 0 and 1 passed.
    let (view, halt) = fleet.wait_halted(&id)?;
    assert_eq!(halt.wave, Some(2), "{halt:?}");
    for wave in 0..=2 {
        assert!(
            view.decisions
                .iter()
                .any(|d| d.kind == "open_wave" && d.wave == Some(wave)),
            "wave {wave} never opened: {:#?}",
            view.decisions
        );
    }

    let sites = fleet.operator.rollout_sites(&id)?;
    let wave_of = |site: &str| sites.iter().find(|s| s.site_id == site).map(|s| s.wave);
    assert_eq!(wave_of("pig-1"), Some(0), "{sites:?}");
    assert_eq!(wave_of("canary-1"), Some(1), "{sites:?}");
    assert_eq!(wave_of("general-1"), Some(2), "{sites:?}");
    assert_eq!(wave_of("general-2"), Some(2), "{sites:?}");

    // The sites of waves 0 and 1 had committed 2.0.0 (healthy there); the gen2 sites of
    // wave 2 found it unhealthy.
    for site in ["pig-1", "canary-1"] {
        let phases = fleet.phases(site, &v2.id)?;
        assert!(
            phases.iter().any(|p| p == "committed"),
            "{site} never committed {}: {phases:?}",
            v2.id
        );
    }
    for site in ["general-1", "general-2"] {
        let phases = fleet.phases(site, &v2.id)?;
        assert!(
            phases.iter().any(|p| p == "failed"),
            "{site} did not fail {}: {phases:?}",
            v2.id
        );
    }

    // Every site of the halted rollout ends on 1.0.0: on disk, served by the app, and as
    // the coordinator sees it; the coordinator sent each a rollback assignment.
    for site in spec.sites.iter().map(|s| s.id.as_str()) {
        fleet.wait_version(site, "1.0.0")?;
        fleet.wait_reported_version(site, "1.0.0")?;
    }
    eventually_default("every site of the rollout to be rolled back", || {
        let sites = fleet.operator.rollout_sites(&id)?;
        let not: Vec<String> = sites
            .iter()
            .filter(|s| s.state != "rolled_back")
            .map(|s| format!("{} is {}", s.site_id, s.state))
            .collect();
        anyhow::ensure!(not.is_empty(), "{not:?}");
        Ok(())
    })?;

    // And no agent refused going back to the expired 1.0.0.
    let db = fleetwave_e2e::inspect::CoordinatorDb::new(fleet.coordinator.database());
    for site in spec.sites.iter().map(|s| s.id.as_str()) {
        let refusals: Vec<serde_json::Value> = db
            .reports(site)?
            .into_iter()
            .filter(|r| r.body["kind"] == "refusal")
            .map(|r| r.body)
            .collect();
        assert!(refusals.is_empty(), "{site} refused: {refusals:?}");
    }
    Ok(())
}
