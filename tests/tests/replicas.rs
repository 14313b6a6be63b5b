//! Three coordinator replicas on one real PostgreSQL server, over real processes: one leads
//! the wave controller, and all three serve (the followers' memory follows the database
//! through PostgreSQL notifications); every agent lists all three (each site a different
//! one first), as an HA deployment would.
//!
//! The followers serve their sites from the first wave on: assignments the leader issued
//! wake long polls parked on them, they take reports and grant leases of the limited wave
//! (checked from their own metrics before anything fails over). In the middle of the
//! rollout, while a site holds an install lease and stands at a named pause point inside
//! its install, the leading replica is killed with SIGKILL (and so is that site's agent).
//! Another takes over; then PostgreSQL itself is stopped: the replicas answer 503 with
//! `Retry-After` and report unready; it is started again and every replica serves again.
//! The rollout then completes, every report of every site was stored exactly once and none
//! was lost (every outbox drains), and the wave's limit of two concurrent installs held
//! across replicas and the failover (checked from the agents' own lease and commit times).

use std::collections::BTreeMap;
use std::time::Duration;

use fleetwave_e2e::cluster::Coordinator;
use fleetwave_e2e::inspect::{AgentDb, CoordinatorDb, StoredReport};
use fleetwave_e2e::operator::Operator;
use fleetwave_e2e::release::DemoRelease;
use fleetwave_e2e::{
    Fleet, FleetOptions, FleetSpec, PlanSpec, WaveSpec, eventually, eventually_default, patience,
};
use fleetwave_shared::protocol::operator::RolloutStatus;
use fleetwave_testkit::postgres::PgServer;

/// The rest wave's `max_concurrent`.
const LIMIT: usize = 2;

fn operator_for(c: &Coordinator) -> anyhow::Result<Operator> {
    Ok(Operator::new(&c.url, &c.ca, &c.admin_token)?)
}

/// `name{result="result"}` from `c`'s `/metrics` (0 when absent).
fn counter(c: &Coordinator, name: &str, result: &str) -> anyhow::Result<f64> {
    let (status, _, body) = operator_for(c)?.answer("/metrics")?;
    anyhow::ensure!(
        status == 200,
        "{}: /metrics answered {status}: {body}",
        c.url
    );
    let prefix = format!("{name}{{result=\"{result}\"}} ");
    Ok(body
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}

/// Waits until one of the running coordinators answers `/readyz` with 200 and returns an
/// operator talking to it.
fn wait_leader(fleet: &Fleet, what: &str) -> anyhow::Result<(String, Operator)> {
    Ok(eventually_default(what, || {
        let mut answers = Vec::new();
        for c in fleet.coordinators() {
            let op = operator_for(c)?;
            match op.probe("/readyz") {
                Ok(200) => return Ok((c.url.clone(), op)),
                Ok(status) => answers.push(format!("{}: {status}", c.url)),
                Err(e) => answers.push(format!("{}: {e}", c.url)),
            }
        }
        anyhow::bail!("no coordinator leads: {answers:?}")
    })?)
}

/// The install phases of `release` in `reports`, counted.
fn phases(reports: &[StoredReport], release: &str) -> BTreeMap<String, usize> {
    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    for r in reports.iter().filter(|r| r.body["release_id"] == release) {
        if let Some(p) = r.body["phase"].as_str() {
            *phases.entry(p.to_string()).or_default() += 1;
        }
    }
    phases
}

/// When the agent said it held the lease and when it committed, in the agent's own time.
fn install_span(reports: &[StoredReport], release: &str) -> Option<(i64, i64)> {
    let at = |phase: &str| {
        reports
            .iter()
            .find(|r| r.body["release_id"] == release && r.body["phase"] == phase)
            .map(|r| r.at)
    };
    Some((at("leased")?, at("committed")?))
}

#[test]
fn three_replicas_survive_the_leader_killed_mid_rollout_and_postgresql_stopped()
-> anyhow::Result<()> {
    let pg = PgServer::start();
    let db_url = pg.create_database();
    let spec = FleetSpec::cohorts(2, 0, 4, 0);
    let mut fleet = Fleet::start_with(
        spec.clone(),
        FleetOptions {
            coordinator_extra: format!(
                "\n[storage]\nbackend = \"postgres\"\nurl = \"{db_url}\"\npool_size = 4\n\
                 leader_lease_secs = 3\n"
            ),
            replicas: 2,
            ..FleetOptions::default()
        },
    )?;
    // The followers serve and are ready; the first coordinator leads.
    for replica in &fleet.replicas {
        let op = operator_for(replica)?;
        eventually_default(&format!("{} to serve", replica.url), || {
            let (status, _, body) = op.answer("/v1/rollouts")?;
            anyhow::ensure!(status == 200, "answered {status}: {body}");
            anyhow::ensure!(op.probe("/readyz")? == 200, "not ready");
            Ok(())
        })?;
    }

    // general-1 stops inside its install (the journal's `install` step recorded, its
    // lease held) so that the leader dies while a site of the limited wave is installing.
    let pause = fleet.pause_env("general-1", "install")?;
    fleet.start_agent_with("general-1", &pause)?;

    let release = DemoRelease::good("1.0.0", 1);
    fleet.publish(&release)?;
    let mut rest = WaveSpec::new("the rest");
    rest.max_concurrent = Some(LIMIT as u32);
    let id = fleet.rollout(&PlanSpec::new(
        "replicas",
        &release.id,
        vec![WaveSpec::new("pigs").only("cohort", "pig"), rest],
    ))?;
    let paused = fleet.wait_paused("general-1", "install")?;
    // Before anything failed over, each follower served its own sites: pig-2 and
    // general-3 talk to the first follower first, general-1 and general-4 to the second.
    // Each handed out assignments the leader issued (a long poll parked on it woke) and
    // took reports; general-1 holds its lease of the limited wave from the second.
    for replica in &fleet.replicas {
        let served = counter(replica, "fleetwave_polls_total", "assignment")?;
        let reports = counter(replica, "fleetwave_report_events_total", "accepted")?;
        assert!(served >= 1.0, "{} served no assignment", replica.url);
        assert!(reports >= 1.0, "{} took no report", replica.url);
    }
    let granted = counter(&fleet.replicas[1], "fleetwave_leases_total", "granted")?;
    assert!(granted >= 1.0, "{} granted no lease", fleet.replicas[1].url);

    // SIGKILL the leader and the paused agent.
    let leader_url = fleet.coordinator.url.clone();
    fleet.coordinator.process.kill9()?;
    fleet
        .site_mut("general-1")?
        .agent
        .as_mut()
        .expect("general-1's agent runs")
        .kill9()?;
    assert!(
        !fleetwave_e2e::process::pid_alive(paused as u32),
        "general-1's agent (pid {paused}) is gone"
    );
    let (new_leader, op) = wait_leader(&fleet, "a standby to take over the wave controller")?;
    assert_ne!(new_leader, leader_url);
    fleet.operator = op;
    let view = fleet.operator.rollout(&id)?;
    assert_eq!(view.status, RolloutStatus::Running, "{view:?}");

    // PostgreSQL stops: every live replica answers 503 with Retry-After and is unready.
    pg.stop();
    for c in fleet.replicas.iter() {
        let op = operator_for(c)?;
        eventually_default(
            &format!("{} to refuse while PostgreSQL is down", c.url),
            || {
                let (status, retry_after, body) = op.answer("/v1/rollouts")?;
                anyhow::ensure!(status == 503, "answered {status}: {body}");
                anyhow::ensure!(retry_after.is_some(), "503 without Retry-After: {body}");
                let ready = op.probe("/readyz")?;
                anyhow::ensure!(ready == 503, "/readyz answered {ready}");
                Ok(())
            },
        )?;
        assert_eq!(op.probe("/healthz")?, 200, "the process itself is fine");
    }
    pg.restart();
    let (_, op) = wait_leader(&fleet, "a replica to lead again once PostgreSQL is back")?;
    fleet.operator = op;

    // general-1's box comes back (without the pause) and finishes its install.
    fleet.start_agent("general-1")?;
    fleet.wait_rollout_status(&id, RolloutStatus::Completed)?;
    for site in &spec.sites {
        fleet.wait_version(&site.id, "1.0.0")?;
    }

    // No report lost, none stored twice.
    let db = CoordinatorDb::postgres(&db_url);
    let mut spans = Vec::new();
    for site in &spec.sites {
        let agent_db = AgentDb::new(&fleet.site(&site.id)?.dirs.state);
        eventually(
            &format!("{}'s outbox to drain", site.id),
            patience(Duration::from_secs(120)),
            || {
                let left = agent_db.outbox()?;
                anyhow::ensure!(left.is_empty(), "{} events queued", left.len());
                Ok(())
            },
        )?;
        let stored = db.reports(&site.id)?;
        let phases = phases(&stored, &release.id);
        for phase in ["accepted", "leased", "installing", "verifying", "committed"] {
            let n = phases.get(phase).copied().unwrap_or(0);
            if site.id == "general-1" && phase == "installing" {
                // Killed inside its install, the agent's recovery ran the install step
                // again and said so: a second event of its own, not a duplicate.
                assert!((1..=2).contains(&n), "{}: {phase}: {phases:?}", site.id);
            } else {
                assert_eq!(n, 1, "{}: {phase}: {phases:?}", site.id);
            }
        }
        assert!(!phases.contains_key("failed"), "{}: {phases:?}", site.id);
        let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &stored {
            *ids.entry(r.event_id.as_str()).or_default() += 1;
        }
        assert!(ids.values().all(|n| *n == 1), "{}: {ids:?}", site.id);
        if site.id.starts_with("general-") {
            spans.push((
                site.id.clone(),
                install_span(&stored, &release.id).expect("leased and committed reports"),
            ));
        }
    }
    // The limit held: at no instant did more than LIMIT sites of the wave hold their
    // lease (from the agent's `leased` report to its `committed` one, a span inside the
    // coordinator's own lease).
    for (site, (from, _)) in &spans {
        let holding: Vec<&String> = spans
            .iter()
            .filter(|(_, (f, t))| f <= from && from < t)
            .map(|(s, _)| s)
            .collect();
        assert!(
            holding.len() <= LIMIT,
            "when {site} was leased, {holding:?} held leases: {spans:?}"
        );
    }
    Ok(())
}
