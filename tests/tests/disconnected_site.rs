//! Scenario 4, a disconnected site: the site's link is cut at the fault proxy after it got
//! its lease and while it verifies the install; it finishes offline, its reports queue in
//! the outbox through several poll intervals, and on reconnect every queued report arrives
//! exactly once.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use fleetwave_e2e::inspect::{AgentDb, CoordinatorDb};
use fleetwave_e2e::release::DemoRelease;
use fleetwave_e2e::{Fleet, FleetOptions, FleetSpec, PlanSpec, WaveSpec, eventually_default};
use fleetwave_shared::protocol::operator::RolloutStatus;

#[test]
fn queued_reports_arrive_exactly_once_after_the_link_returns() -> anyhow::Result<()> {
    let fleet = Fleet::start_with(
        FleetSpec::cohorts(1, 0, 0, 0),
        FleetOptions::default().proxied("pig-1"),
    )?;
    // A verify period long enough to cut the link in the middle of it.
    let release =
        DemoRelease::good("1.0.0", 1).install_param("verify_period_secs", serde_json::json!(8));
    fleet.publish(&release)?;
    let id = fleet.rollout(&PlanSpec::new(
        "one pig",
        &release.id,
        vec![WaveSpec::new("pigs")],
    ))?;

    eventually_default("pig-1 to report that it verifies", || {
        let phases = fleet.phases("pig-1", &release.id)?;
        anyhow::ensure!(phases.iter().any(|p| p == "verifying"), "{phases:?}");
        Ok(())
    })?;
    let proxy = fleet.site("pig-1")?.proxy.as_ref().unwrap();
    // The agent really talks to the coordinator through the proxy.
    let through = proxy.stats().upstream_connects.load(Ordering::SeqCst);
    assert!(through >= 1, "no connection went through the proxy");
    proxy.cut()?;

    // Offline, the agent finishes the install and queues what it has to say.
    let agent_db = AgentDb::new(&fleet.site("pig-1")?.dirs.state);
    let queued = eventually_default("the commit to be queued in the outbox", || {
        let outbox = agent_db.outbox()?;
        anyhow::ensure!(
            outbox
                .iter()
                .any(|e| e.event["kind"] == "phase" && e.event["phase"] == "committed"),
            "outbox: {:?}",
            outbox.iter().map(|e| &e.kind).collect::<Vec<_>>()
        );
        Ok(outbox)
    })?;
    fleet.wait_version("pig-1", "1.0.0")?;
    // Several poll intervals pass with the link down: heartbeats keep queueing.
    let before = queued.len();
    eventually_default("more reports to queue while offline", || {
        let n = agent_db.outbox()?.len();
        anyhow::ensure!(n >= before + 3, "{n} queued, {before} at first");
        Ok(())
    })?;
    let queued = agent_db.outbox()?;
    let coordinator_db = CoordinatorDb::new(fleet.coordinator.database());
    let stored_before = coordinator_db.reports("pig-1")?;
    assert!(
        !stored_before.iter().any(|r| r.body["phase"] == "committed"),
        "the commit reached the coordinator through a cut link"
    );

    proxy.pass()?;
    eventually_default("the outbox to drain", || {
        let left = agent_db.outbox()?;
        let ids: Vec<&String> = left.iter().map(|e| &e.id).collect();
        let stored = coordinator_db.reports("pig-1")?;
        let missing: Vec<&String> = queued
            .iter()
            .map(|e| &e.id)
            .filter(|id| !stored.iter().any(|r| &r.event_id == *id))
            .collect();
        anyhow::ensure!(
            missing.is_empty(),
            "not delivered yet: {missing:?} (outbox {ids:?})"
        );
        Ok(())
    })?;

    // Exactly once: each install phase of the release is stored once, and every queued
    // event id once (health heartbeats may have been merged while queued; their ids too).
    let stored = coordinator_db.reports("pig-1")?;
    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    for r in stored
        .iter()
        .filter(|r| r.body["release_id"] == release.id.as_str())
    {
        if let Some(p) = r.body["phase"].as_str() {
            *phases.entry(p.to_string()).or_default() += 1;
        }
    }
    for phase in [
        "accepted",
        "leased",
        "downloading",
        "installing",
        "verifying",
        "committed",
    ] {
        assert_eq!(phases.get(phase), Some(&1), "phase {phase}: {phases:?}");
    }
    let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &stored {
        *ids.entry(r.event_id.as_str()).or_default() += 1;
    }
    assert!(ids.values().all(|n| *n == 1), "{ids:?}");

    fleet.wait_reported_version("pig-1", "1.0.0")?;
    fleet.wait_rollout_status(&id, RolloutStatus::Completed)?;
    Ok(())
}
