//! Controller tick time over a large rollout, measured two ways:
//! - the pure controller ([`fleetwave_coordinator::controller::tick`]) on an in-memory
//!   view of N sites in a four-wave rollout, the last wave half installed;
//! - the coordinator's engine pass (`App::tick_all`: the rollout's facts from the engine's
//!   memory, run the controller, apply and store the decisions), built in-process from
//!   the coordinator library over a real SQLite file with N sites; and once more after
//!   the engine forgot its memory, as after a restart (the pass then loads the rollout's
//!   N sites from SQLite).
//!
//! The sites are written straight into the fresh database (one transaction, the store's
//! own columns) because enrolling 100,000 sites over HTTP measures enrollment, not the
//! tick. Nothing here asserts a time.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleetwave_coordinator::controller::{self, RolloutStatus, SiteFacts, WaveView};
use fleetwave_coordinator::plan::{PlanFormat, parse_plan};
use fleetwave_shared::protocol::Phase;
use jiff::{SignedDuration, Timestamp};

use crate::coordinator::{Setup, four_wave_plan};
use crate::procstat;

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "median {:.1} ms, min {:.1} ms, max {:.1} ms over {} passes",
        ms(v[v.len() / 2]),
        ms(v[0]),
        ms(v[v.len() - 1]),
        v.len()
    )
}

/// The pure controller over `n` sites; returns the median.
pub fn pure(n: usize, passes: usize) -> anyhow::Result<Duration> {
    let plan = parse_plan(&four_wave_plan("sim-app-1", 0.0), PlanFormat::Toml)
        .map_err(|e| anyhow::anyhow!("plan: {e}"))?;
    let labels: BTreeMap<String, String> = [("sim".to_string(), "1".to_string())].into();
    let now = Timestamp::now();
    let t = |mins: i64| now - SignedDuration::from_mins(mins);
    let mut waves = vec![WaveView::default(); plan.waves.len()];
    for (i, w) in waves.iter_mut().enumerate() {
        w.opened_at = Some(t(60 - 10 * i as i64));
    }
    let ids: Vec<String> = (0..n).map(crate::site::site_id).collect();
    let candidates: Vec<controller::Candidate> = ids
        .iter()
        .map(|id| controller::Candidate {
            site_id: id,
            labels: &labels,
        })
        .collect();
    let placed = controller::place(&plan, "sim-rollout", 0, &candidates);
    for (i, (id, wave)) in ids.into_iter().zip(placed).enumerate() {
        let wave = wave.context("the plan selects every simulated site")?;
        let done = wave < 3 || i % 2 == 0;
        waves[wave as usize].sites.push(SiteFacts {
            site_id: id,
            assigned_at: Some(t(50)),
            leased_at: Some(t(49)),
            last_phase: Some(if done {
                Phase::Committed
            } else {
                Phase::Installing
            }),
            last_phase_at: Some(t(45)),
            last_report_at: Some(t(5)),
            committed_at: done.then(|| t(45)),
            last_healthy_at: Some(t(5)),
            ..SiteFacts::default()
        });
    }
    let view = controller::RolloutView {
        rollout_id: "sim-rollout".into(),
        plan,
        status: RolloutStatus::Running,
        current_wave: Some(3),
        waves,
    };
    let mut times = Vec::with_capacity(passes);
    let mut decisions = 0;
    for _ in 0..passes {
        let started = Instant::now();
        let out = controller::tick(&view, now);
        times.push(started.elapsed());
        decisions = out.decisions.len();
    }
    println!(
        "controller tick (pure, in-process): {n} sites in 4 waves, last wave half installed: {} ({decisions} decision(s) per pass)",
        stats(times.clone())
    );
    times.sort();
    Ok(times[times.len() / 2])
}

/// Publishes release `id` of stream `sim-app` (no artifacts, valid for a day), signed by
/// the setup's release key, straight through the store of an in-process coordinator.
pub async fn publish_in_process(
    app: &fleetwave_coordinator::state::App,
    setup: &Setup,
    id: &str,
    version: &str,
    counter: u64,
) -> anyhow::Result<()> {
    let now = Timestamp::now();
    let rel = fleetwave_shared::docs::Release {
        id: id.to_string(),
        name: "sim-app".into(),
        version: version.to_string(),
        kind: fleetwave_shared::docs::ReleaseKind::App,
        counter,
        issued_at: now,
        expires: now + SignedDuration::from_hours(24),
        artifacts: vec![],
        install: Default::default(),
        min_agent_version: None,
    };
    let env = fleetwave_shared::Envelope::sign(
        fleetwave_shared::docs::RELEASE_TYPE,
        &serde_json::to_vec(&rel)?,
        &[&setup.release_key],
    );
    let record = fleetwave_coordinator::store::ReleaseRecord {
        id: rel.id.clone(),
        digest: env.digest(),
        name: rel.name.clone(),
        version: rel.version.clone(),
        kind: "app".into(),
        counter,
        envelope: env,
        published_at: now,
        published_by: "fleetwave-sim".into(),
    };
    app.db.run(move |s| s.publish_release(&record)).await?;
    Ok(())
}

/// The engine pass over a real SQLite database with `n` sites and a running rollout.
pub async fn engine(dir: &Path, n: usize, passes: usize) -> anyhow::Result<Duration> {
    let setup = Setup::open_or_create(dir)?;
    let db = setup.database();
    // Let the store create its schema, then add the sites in one transaction.
    drop(fleetwave_coordinator::store::SqliteStore::open(&db)?);
    {
        let mut conn = rusqlite::Connection::open(&db)?;
        let have: i64 = conn.query_row(
            "SELECT COUNT(*) FROM sites WHERE id LIKE 'sim-%'",
            [],
            |r| r.get(0),
        )?;
        if (have as usize) < n {
            let started = Instant::now();
            let tx = conn.transaction()?;
            {
                let mut st = tx.prepare(
                    "INSERT OR IGNORE INTO sites (id, device_key, labels, state, agent_version, enrolled_at) VALUES (?1, ?2, '{\"sim\":\"1\"}', 'active', '0.1.0-sim', ?3)",
                )?;
                let at = Timestamp::now().as_millisecond();
                for i in 0..n {
                    let key = hex::encode(crate::site::device_key(i).verifying_key().as_bytes());
                    st.execute(rusqlite::params![crate::site::site_id(i), key, at])?;
                }
            }
            tx.commit()?;
            println!(
                "  (wrote {n} sites into {} in {:.1} s)",
                db.display(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    let config = fleetwave_coordinator::config::Config::load(&setup.dir.join("coordinator.toml"))?;
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let app = fleetwave_coordinator::server::build_app(config, stop_rx).await?;
    println!(
        "  (coordinator state built in-process in {:.1} s: {n} sites in the poll cache)",
        started.elapsed().as_secs_f64()
    );
    // A release signed by the setup's release key, published through the store.
    let release = {
        let counter = Timestamp::now().as_millisecond() as u64;
        let id = format!("sim-app-{counter}");
        publish_in_process(&app, &setup, &id, &format!("1.0.{counter}"), counter).await?;
        id
    };
    // A rollout an earlier run left active holds every site: abort it first.
    let rollouts = app.db.run(|s| s.list_rollouts()).await?;
    for r in rollouts.iter().filter(|r| r.status.is_active()) {
        app.engine
            .rollout_action(
                &r.id,
                fleetwave_coordinator::engine::Action::Abort(Some("fleetwave-sim tick".into())),
                "fleetwave-sim",
            )
            .await
            .map_err(|e| anyhow::anyhow!("abort rollout {}: {}", r.id, e))?;
        println!("  (aborted rollout {} an earlier run left active)", r.id);
    }
    let before = procstat::sample(std::process::id())?;
    let plan = four_wave_plan(&release, 0.0);
    let started = Instant::now();
    let rollout = app
        .engine
        .create_rollout(
            plan,
            fleetwave_shared::protocol::operator::PlanFormat::Toml,
            "fleetwave-sim",
        )
        .await
        .map_err(|e| anyhow::anyhow!("create rollout: {}", e))?;
    println!(
        "  (rollout {} created over {n} sites in {:.0} ms)",
        rollout.id,
        started.elapsed().as_secs_f64() * 1000.0
    );
    let started = Instant::now();
    app.engine
        .rollout_action(
            &rollout.id,
            fleetwave_coordinator::engine::Action::Start,
            "fleetwave-sim",
        )
        .await
        .map_err(|e| anyhow::anyhow!("start rollout: {}", e))?;
    println!(
        "  (rollout {} started in {:.0} ms: wave 0 opened and its assignments signed)",
        rollout.id,
        started.elapsed().as_secs_f64() * 1000.0
    );
    let me0 = procstat::sample(std::process::id())?;
    println!(
        "  this process: RSS {:.0} MiB with {n} sites loaded, {:.0} MiB once the rollout over them started",
        procstat::mib(before.rss_bytes),
        procstat::mib(me0.rss_bytes)
    );
    let mut times = Vec::with_capacity(passes);
    for _ in 0..passes {
        let started = Instant::now();
        app.engine
            .tick_all()
            .await
            .map_err(|e| anyhow::anyhow!("tick: {}", e))?;
        times.push(started.elapsed());
    }
    let me1 = procstat::sample(std::process::id())?;
    println!(
        "controller tick (engine pass: {n} rollout sites from the engine's memory, run the controller, apply and store decisions; in this process): {}",
        stats(times.clone())
    );
    app.engine.facts.clear();
    let started = Instant::now();
    app.engine
        .tick_all()
        .await
        .map_err(|e| anyhow::anyhow!("tick: {}", e))?;
    println!(
        "  first pass after a restart (the engine loads the rollout's {n} sites from SQLite once): {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    println!(
        "  this process: RSS {:.0} MiB (peak {:.0} MiB), CPU {:.1} s for the passes",
        procstat::mib(me1.rss_bytes),
        procstat::mib(me1.peak_rss_bytes),
        procstat::cpu_secs(&me0, &me1)
    );
    times.sort();
    Ok(times[times.len() / 2])
}
