//! Boxes within a site on the `kubernetes` executor, against STAND-IN k3s/kubectl scripts
//! (no real k3s runs here; see `tests/src/stand_in_k3s.rs`): store-1 is a cluster of three
//! nodes, one box each (srv the server, agt-1 and agt-2 agents), each its own real agent
//! process. The coordinator leases one node at a time, servers first; each node is
//! cordoned, drained, snapshotted, swapped, restarted and uncordoned by its own agent.
//!
//! The agent of the second box (agt-1) is killed with SIGKILL (its whole process group) at
//! a named pause point, never by timing: mid-drain (`kubernetes_cordoned`: cordoned, the
//! drain not started) and mid-upgrade (`kubernetes_replaced`: the k3s binary replaced, the
//! restart not run, the node neither Ready on the new version nor committed). Started
//! again, it recovers by the journal's rule (install started and the assignment still
//! current: run the install again, then verify), finishes the upgrade, uncordons the node
//! and reports which it did: the recovery's `installing` report says what it found (the
//! node left cordoned, the binary replaced or not) and its `committed` report says
//! `finished the upgrade` and what the node looks like now. The site then finishes box by
//! box and counts once in its wave. When the new version never gets Ready on that node,
//! the recovery's verify fails and it rolls back (binary restored, node uncordoned), its
//! `rolled_back` report says so, and the site fails once, naming the box.
//!
//! Besides the kills: a drain that a PodDisruptionBudget blocks once fails agt-1, and the
//! plan's `[retry]` starts the site again: agt-1 afresh, srv keeping its commit (it runs
//! the release already), and the site completes.

use fleetwave_e2e::fleet::PLACES;
use fleetwave_e2e::inspect::CoordinatorDb;
use fleetwave_e2e::stand_in_k3s::{self, K3sRelease, StandInNode};
use fleetwave_e2e::{Cohort, Fleet, FleetOptions, FleetSpec, PlanSpec, SiteSpec, WaveSpec};
use fleetwave_shared::protocol::operator::RolloutStatus;
use jiff::Timestamp;

/// The fleet entries (one per box) in box order: server first.
const BOXES: [(&str, &str, &str); 3] = [
    ("store-1-srv", "srv", "server"),
    ("store-1-agt-1", "agt-1", "agent"),
    ("store-1-agt-2", "agt-2", "agent"),
];

/// What every node runs at first, and the upgrade.
const FROM: &str = "v1.30.4+k3s1";
const TO: &str = "v1.31.2+k3s1";

/// The agent's pause points (agent/src/test_hooks.rs): the node cordoned, the drain not
/// started; the k3s binary replaced, the restart not run.
const KUBERNETES_CORDONED: &str = "kubernetes_cordoned";
const KUBERNETES_REPLACED: &str = "kubernetes_replaced";

/// The box whose agent is killed: the second in box order.
const KILLED: &str = "store-1-agt-1";

/// store-1's three boxes, each on its own stand-in k3s node of one cluster running
/// [`FROM`].
fn store() -> anyhow::Result<(Fleet, Vec<StandInNode>)> {
    let sites = BOXES
        .iter()
        .map(|(entry, _, _)| SiteSpec::new(*entry, Cohort::Pig, &PLACES[1]))
        .collect();
    let mut options = FleetOptions {
        agent_extra: stand_in_k3s::agent_config(),
        ..FleetOptions::default()
    };
    for (entry, b, role) in BOXES {
        options = options.box_of(entry, "store-1", b, role);
    }
    let fleet = Fleet::start_with(FleetSpec { sites }, options)?;
    let nodes: Vec<StandInNode> = BOXES
        .iter()
        .map(|(entry, b, role)| Ok(StandInNode::at(&fleet.site(entry)?.dirs.root, b, role)))
        .collect::<anyhow::Result<_>>()?;
    for n in &nodes {
        n.install(FROM)?;
        n.join(&nodes)?;
    }
    Ok((fleet, nodes))
}

fn plan(release: &str) -> PlanSpec {
    PlanSpec::new(
        &format!("{release} node by node"),
        release,
        vec![WaveSpec::new("the store").gate(|g| {
            g.failure_budget = Some(0);
            g.report_deadline_secs = 60;
        })],
    )
    .box_order(&["role=server", "role=agent"])
}

fn time(facts: &serde_json::Value, key: &str) -> Option<Timestamp> {
    facts[key].as_str().map(|t| t.parse().expect("a timestamp"))
}

/// A node's full, uninterrupted upgrade as the stand-ins record it.
fn upgraded(node: &str) -> Vec<String> {
    vec![
        format!("kubectl cordon {node}"),
        format!("kubectl drain {node} --ignore-daemonsets --delete-emptydir-data --timeout=60s"),
        format!("snapshot {FROM}"),
        format!("restart {TO}"),
        format!("kubectl uncordon {node}"),
    ]
}

/// Starts the rollout of [`TO`] with the killed box's agent armed to pause at `point`,
/// waits for it there, checks the node as the pause point promises (via `at_pause`),
/// kills the agent (SIGKILL to its process group) and starts it again. Returns the
/// rollout id once it completed.
fn kill_at(
    fleet: &mut Fleet,
    nodes: &[StandInNode],
    point: &str,
    at_pause: impl Fn(&StandInNode),
) -> anyhow::Result<String> {
    let release = K3sRelease::ready(TO, 1);
    fleet.publish_k3s(&release)?;
    let env = fleet.pause_env(KILLED, point)?;
    fleet.start_agent_with(KILLED, &env)?;
    let id = fleet.rollout(&plan(&release.id))?;
    fleet.wait_paused(KILLED, point)?;
    // The server upgraded first and is back in service; the killed box's node is cordoned.
    assert_eq!(nodes[0].running(), TO);
    assert!(!nodes[0].cordoned());
    assert!(nodes[1].cordoned(), "{:?}", nodes[1].events());
    at_pause(&nodes[1]);
    assert!(nodes[2].events().is_empty(), "{:?}", nodes[2].events());
    fleet
        .site_mut(KILLED)?
        .agent
        .as_mut()
        .expect("the agent runs")
        .kill9()?;
    fleet.start_agent(KILLED)?;
    let view = fleet.wait_rollout_status(&id, RolloutStatus::Completed)?;
    // The site counts once.
    let tally = &view.waves[0].tally;
    assert_eq!(
        (tally.sites, tally.succeeded),
        (1, 1),
        "{:?}",
        view.waves[0]
    );
    assert_eq!(fleet.operator.rollout_sites(&id)?.len(), 1);
    // Every node runs the new version, none is left cordoned.
    for n in nodes {
        assert_eq!(n.running(), TO, "node {}: {:?}", n.name, n.events());
        assert!(
            !n.cordoned(),
            "node {} left cordoned: {:?}",
            n.name,
            n.events()
        );
    }
    assert_eq!(nodes[0].events(), upgraded("srv"));
    assert_eq!(nodes[2].events(), upgraded("agt-2"));
    // Box by box: each box first leased after the box before it committed.
    let facts = CoordinatorDb::new(fleet.coordinator.database()).box_facts(&id, "store-1")?;
    let of = |b: &str| {
        facts
            .iter()
            .find(|(id, _)| id == b)
            .map(|(_, f)| f.clone())
            .unwrap_or_else(|| panic!("no facts of box {b}: {facts:?}"))
    };
    for pair in BOXES.windows(2) {
        let (before, after) = (of(pair[0].1), of(pair[1].1));
        let committed = time(&before, "committed_at").expect("committed");
        let started = time(&after, "first_leased_at").expect("leased");
        assert!(
            started > committed,
            "box {} started at {started}, before box {} committed at {committed}",
            pair[1].1,
            pair[0].1
        );
    }
    Ok(id)
}

/// The details of the killed box's recovery reports the coordinator stored for `rollout`:
/// (phase, detail) of each report that says `recovered after restart`.
fn recovery_reports(fleet: &Fleet, rollout: &str) -> anyhow::Result<Vec<(String, String)>> {
    Ok(CoordinatorDb::new(fleet.coordinator.database())
        .reports("store-1")?
        .into_iter()
        .filter(|r| r.body["kind"] == "phase" && r.body["rollout_id"] == rollout)
        .filter_map(|r| {
            let detail = r.body["detail"].as_str()?;
            detail.contains("recovered after restart").then(|| {
                (
                    r.body["phase"].as_str().unwrap_or_default().to_string(),
                    detail.to_string(),
                )
            })
        })
        .collect())
}

#[test]
fn stand_in_k3s_sigkill_of_the_second_box_mid_drain_recovers_finishes_and_uncordons()
-> anyhow::Result<()> {
    let (mut fleet, nodes) = store()?;
    let id = kill_at(&mut fleet, &nodes, KUBERNETES_CORDONED, |n| {
        // Cordoned, the drain not started, nothing of k3s changed.
        assert_eq!(n.events(), ["kubectl cordon agt-1"]);
        assert_eq!(n.running(), FROM);
    })?;
    // The recovery ran the install again: cordon (again), drain, snapshot, swap, restart,
    // then uncordoned once Ready on the new version.
    let mut want = upgraded("agt-1");
    want.insert(0, "kubectl cordon agt-1".into());
    assert_eq!(nodes[1].events(), want);
    let binary = nodes[1].bin.join("k3s");
    let binary = binary.display();
    assert_eq!(
        recovery_reports(&fleet, &id)?,
        [
            (
                "installing".to_string(),
                format!(
                    "recovered after restart at step install (started): installing again \
                     (found: node agt-1 left cordoned by this upgrade, {binary} is the previous binary)"
                )
            ),
            (
                "committed".to_string(),
                format!(
                    "recovered after restart at step install (started): finished the upgrade \
                     (at restart: node agt-1 left cordoned by this upgrade, {binary} is the \
                     previous binary; now: no node left cordoned by this upgrade, {binary} is the \
                     new binary ({TO}, <binary>.previous kept))"
                )
            ),
        ]
    );
    Ok(())
}

#[test]
fn stand_in_k3s_sigkill_of_the_second_box_mid_upgrade_recovers_finishes_and_counts_once()
-> anyhow::Result<()> {
    let (mut fleet, nodes) = store()?;
    let id = kill_at(&mut fleet, &nodes, KUBERNETES_REPLACED, |n| {
        // Drained and snapshotted, the binary swapped, the node still runs the old version.
        assert_eq!(n.events(), upgraded("agt-1")[..3]);
        assert_eq!(n.running(), FROM);
    })?;
    // The recovery only restarted (the binary was the target already): no second cordon,
    // drain or snapshot; then uncordoned once Ready.
    assert_eq!(nodes[1].events(), upgraded("agt-1"));
    let binary = nodes[1].bin.join("k3s");
    let binary = binary.display();
    let replaced = format!("{binary} is the new binary ({TO}, <binary>.previous kept)");
    assert_eq!(
        recovery_reports(&fleet, &id)?,
        [
            (
                "installing".to_string(),
                format!(
                    "recovered after restart at step install (started): installing again \
                     (found: node agt-1 left cordoned by this upgrade, {replaced})"
                )
            ),
            (
                "committed".to_string(),
                format!(
                    "recovered after restart at step install (started): finished the upgrade \
                     (at restart: node agt-1 left cordoned by this upgrade, {replaced}; now: no \
                     node left cordoned by this upgrade, {replaced})"
                )
            ),
        ]
    );
    Ok(())
}

#[test]
fn stand_in_k3s_sigkill_of_the_second_box_mid_upgrade_of_a_node_that_never_gets_ready_rolls_back_and_fails_the_site_once()
-> anyhow::Result<()> {
    let (mut fleet, nodes) = store()?;
    // The nodes run FROM through fleetwave first (a baseline: the binary is already the
    // target, so only the restart runs), so that the site has a release to go back to.
    let from = K3sRelease::ready(FROM, 1);
    fleet.publish_k3s(&from)?;
    let baseline = fleet.rollout(&plan(&from.id))?;
    fleet.wait_rollout_status(&baseline, RolloutStatus::Completed)?;
    for n in &nodes {
        assert_eq!(n.events(), [format!("restart {FROM}")], "node {}", n.name);
        n.forget_events();
    }
    // TO never gets Ready on agt-1; the agent dies right after its binary was swapped.
    let bad = K3sRelease::ready(TO, 2).broken_on("agt-1");
    fleet.publish_k3s(&bad)?;
    let env = fleet.pause_env(KILLED, KUBERNETES_REPLACED)?;
    fleet.start_agent_with(KILLED, &env)?;
    let id = fleet.rollout(&plan(&bad.id).auto_rollback(true))?;
    fleet.wait_paused(KILLED, KUBERNETES_REPLACED)?;
    assert_eq!(nodes[0].running(), TO);
    assert_eq!(nodes[1].events(), upgraded("agt-1")[..3]);
    fleet
        .site_mut(KILLED)?
        .agent
        .as_mut()
        .expect("the agent runs")
        .kill9()?;
    fleet.start_agent(KILLED)?;
    let (view, halt) = fleet.wait_halted(&id)?;
    // Counted once, as one failure naming the box.
    let tally = &view.waves[0].tally;
    assert_eq!(
        (tally.sites, tally.failed + tally.rolled_back),
        (1, 1),
        "{:?}",
        view.waves[0]
    );
    let site = view.sites.iter().find(|s| s.site_id == "store-1").unwrap();
    let said = format!("{site:?} / {}", halt.reason);
    assert!(said.contains("box agt-1"), "{said}");
    // The recovery restarted on the new binary, the node never got Ready, and it rolled
    // back: the previous binary restored and restarted, the node uncordoned. The report
    // says so.
    assert_eq!(
        nodes[1].events(),
        [
            "kubectl cordon agt-1".to_string(),
            "kubectl drain agt-1 --ignore-daemonsets --delete-emptydir-data --timeout=60s".into(),
            format!("snapshot {FROM}"),
            format!("restart {TO}"),
            format!("restart {FROM}"),
            "kubectl uncordon agt-1".into(),
        ]
    );
    let binary = nodes[1].bin.join("k3s");
    let binary = binary.display();
    let reports = recovery_reports(&fleet, &id)?;
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert_eq!(
        reports[0],
        (
            "installing".to_string(),
            format!(
                "recovered after restart at step install (started): installing again (found: \
                 node agt-1 left cordoned by this upgrade, {binary} is the new binary ({TO}, \
                 <binary>.previous kept))"
            )
        )
    );
    assert_eq!(reports[1].0, "rolled_back", "{reports:?}");
    assert!(
        reports[1].1.contains("kube:node")
            && reports[1].1.ends_with(&format!(
                "; recovered after restart at step install (started): rolled back (at \
                 restart: node agt-1 left cordoned by this upgrade, {binary} is the new binary \
                 ({TO}, <binary>.previous kept); now: no node left cordoned by this upgrade, \
                 {binary} is the previous binary)"
            )),
        "{reports:?}"
    );
    // The server, upgraded first, goes back (auto rollback); agt-2 was never touched; no
    // node is left cordoned.
    fleetwave_e2e::eventually_default("srv to roll back to FROM", || {
        anyhow::ensure!(
            nodes[0].running() == FROM,
            "srv runs {}",
            nodes[0].running()
        );
        anyhow::ensure!(!nodes[0].cordoned(), "{:?}", nodes[0].events());
        Ok(())
    })?;
    assert_eq!(nodes[1].running(), FROM);
    assert!(nodes[2].events().is_empty(), "{:?}", nodes[2].events());
    for n in &nodes {
        assert!(
            !n.cordoned(),
            "node {} left cordoned: {:?}",
            n.name,
            n.events()
        );
    }
    Ok(())
}

#[test]
fn stand_in_k3s_a_retry_after_a_drain_a_disruption_budget_blocked_starts_the_boxes_afresh_and_completes()
-> anyhow::Result<()> {
    let (fleet, nodes) = store()?;
    // The first drain of agt-1 fails as a PodDisruptionBudget would; the next one passes.
    std::fs::write(nodes[1].state.join("drain-blocked"), "1")?;
    let release = K3sRelease::ready(TO, 1);
    fleet.publish_k3s(&release)?;
    let id = fleet.rollout(&plan(&release.id).retry(2, 1))?;
    let view = fleet.wait_rollout_status(&id, RolloutStatus::Completed)?;
    let tally = &view.waves[0].tally;
    assert_eq!(
        (tally.sites, tally.succeeded),
        (1, 1),
        "{:?}",
        view.waves[0]
    );
    assert!(
        view.decisions.iter().any(|d| d.kind == "retried"),
        "{:#?}",
        view.decisions
    );
    for n in &nodes {
        assert_eq!(n.running(), TO, "node {}: {:?}", n.name, n.events());
        assert!(
            !n.cordoned(),
            "node {} left cordoned: {:?}",
            n.name,
            n.events()
        );
    }
    // srv upgraded once (the retry kept its commit: it runs the release already); agt-1's
    // first drain failed and the rollback uncordoned it, the retry upgraded it; then agt-2.
    assert_eq!(nodes[0].events(), upgraded("srv"));
    let mut want = vec![
        "kubectl cordon agt-1".to_string(),
        "kubectl drain agt-1 --ignore-daemonsets --delete-emptydir-data --timeout=60s".into(),
        "kubectl uncordon agt-1".into(),
    ];
    want.extend(upgraded("agt-1"));
    assert_eq!(nodes[1].events(), want);
    assert_eq!(nodes[2].events(), upgraded("agt-2"));
    // agt-1 is not failed any more, and agt-2's turn came after agt-1 committed.
    let facts = CoordinatorDb::new(fleet.coordinator.database()).box_facts(&id, "store-1")?;
    let of = |b: &str| facts.iter().find(|(id, _)| id == b).map(|(_, f)| f.clone());
    let (agt1, agt2) = (of("agt-1").expect("agt-1"), of("agt-2").expect("agt-2"));
    assert!(agt1["failed_at"].is_null(), "{agt1}");
    let committed = time(&agt1, "committed_at").expect("agt-1 committed");
    let started = time(&agt2, "first_leased_at").expect("agt-2 leased");
    assert!(started > committed, "agt-2 {agt2} / agt-1 {agt1}");
    Ok(())
}
