//! The golden-signal analysis's cost, two ways: the pure judge
//! ([`fleetwave_coordinator::analysis::judge`], [`run`]) over one wave of N upgraded sites
//! against N control sites, S signals each; and the engine's controller pass with the
//! analysis over a real SQLite file ([`engine`]), which reads the samples from the store. The samples are generated once, outside the timing, from a
//! fixed seed (a small xorshift generator: the figures are reproducible); every third
//! signal is degraded on the upgraded group so that the run exercises Pass and Fail.
//! Nothing here asserts a time.

use std::time::{Duration, Instant};

use fleetwave_coordinator::analysis::{self, Direction, SignalConfig, Tolerance, Verdict};

/// xorshift64*: deterministic noise for the samples, not for anything secret.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Judges `signals` signals over `sites` upgraded and `sites` control samples, `passes`
/// times; prints the median, min and max time per pass. Returns the median.
pub fn run(sites: usize, signals: usize, passes: usize) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        sites > 0 && signals > 0 && passes > 0,
        "--sites, --signals and --passes must be at least 1"
    );
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let mut data = Vec::with_capacity(signals);
    for s in 0..signals {
        let config = SignalConfig::new(
            format!("signal_{s}"),
            Direction::IncreaseIsBad,
            Tolerance::Relative(0.1),
            20,
            analysis::DEFAULT_ALPHA,
        )?;
        let degrade = if s % 3 == 0 { 1.3 } else { 1.0 };
        let control: Vec<f64> = (0..sites).map(|_| 100.0 + 20.0 * noise.next()).collect();
        let upgraded: Vec<f64> = (0..sites)
            .map(|_| (100.0 + 20.0 * noise.next()) * degrade)
            .collect();
        data.push((config, upgraded, control));
    }
    let mut times = Vec::with_capacity(passes);
    let mut failed = 0;
    for _ in 0..passes {
        let started = Instant::now();
        failed = 0;
        for (config, upgraded, control) in &data {
            let j = analysis::judge(config, upgraded, control)?;
            failed += usize::from(j.verdict == Verdict::Fail);
        }
        times.push(started.elapsed());
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = times[times.len() / 2];
    println!(
        "analysis (pure judge, in-process): {sites} upgraded vs {sites} control sites, {signals} signals: median {:.1} ms, min {:.1} ms, max {:.1} ms over {passes} passes ({failed} of {signals} signals fail, as degraded)",
        ms(median),
        ms(times[0]),
        ms(times[times.len() - 1]),
    );
    Ok(median)
}

/// One controller pass with analysis, as the coordinator runs it: an in-process engine
/// over a real SQLite file with `2 × sites` sites, a rollout whose first wave (`sites`
/// sites, selected by label) has every site committed, the other `sites` still on the
/// previous release, `signals` `[[analysis]]` signals, and `minutes` minutes of every
/// signal of the sites the analysis reads in the store (the agents' per-minute values,
/// written straight into `signal_values`: sending them over HTTP measures ingestion, not
/// the judge).
/// Each timed pass moves the engine's clock a minute on, so the verdicts are computed
/// again (the engine judges at most once a minute); a pass in the same minute is timed
/// apart. No signal is degraded, so the wave stays baking through every pass.
pub async fn engine(
    dir: &std::path::Path,
    sites: usize,
    signals: usize,
    minutes: usize,
    passes: usize,
) -> anyhow::Result<Duration> {
    use fleetwave_coordinator::clock::Clock;
    use fleetwave_coordinator::engine::Action;
    use fleetwave_shared::protocol::operator::PlanFormat;
    use jiff::{SignedDuration, Timestamp};

    anyhow::ensure!(
        sites > 0 && signals > 0 && minutes > 0 && passes > 0,
        "--sites, --signals, --minutes and --passes must be at least 1"
    );
    let setup = crate::coordinator::Setup::open_or_create(dir)?;
    let db = setup.database();
    drop(fleetwave_coordinator::store::SqliteStore::open(&db)?);
    let clock = Clock::adjustable();
    // Whole minutes: the samples are dated from `t0` on, the commits at `t0`.
    let t0 = {
        let s = clock.now().as_second();
        Timestamp::from_second(s - s.rem_euclid(60))?
    };
    let ms = |t: Timestamp| t.as_millisecond();
    {
        let started = Instant::now();
        let mut conn = rusqlite::Connection::open(&db)?;
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare(
                "INSERT OR IGNORE INTO sites (id, device_key, labels, state, agent_version, enrolled_at) VALUES (?1, ?2, ?3, 'active', '0.1.0-sim', ?4)",
            )?;
            for i in 0..2 * sites {
                let key = hex::encode(crate::site::device_key(i).verifying_key().as_bytes());
                let labels = if i < sites {
                    r#"{"sim":"1","cohort":"canary"}"#
                } else {
                    r#"{"sim":"1","cohort":"general"}"#
                };
                st.execute(rusqlite::params![
                    crate::site::site_id(i),
                    key,
                    labels,
                    ms(t0)
                ])?;
            }
        }
        tx.commit()?;
        println!(
            "  (wrote {} sites in {:.1} s)",
            2 * sites,
            started.elapsed().as_secs_f64()
        );
    }
    let config = fleetwave_coordinator::config::Config::load(&setup.dir.join("coordinator.toml"))?;
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let app =
        fleetwave_coordinator::server::build_app_with_clock(config, stop_rx, clock.clone()).await?;
    let counter = Timestamp::now().as_millisecond() as u64;
    let release = format!("sim-app-{counter}");
    crate::tick::publish_in_process(&app, &setup, &release, &format!("1.0.{counter}"), counter)
        .await?;
    let mut plan = format!(
        "name = \"analysis bench\"\nrelease = \"{release}\"\nselector = {{ sim = \"1\" }}\nassignment_ttl = \"1d\"\n\n\
         [[waves]]\nname = \"canary\"\nselector = {{ cohort = \"canary\" }}\ngate = {{ bake = \"24h\", report_deadline = \"24h\" }}\n\n\
         [[waves]]\nname = \"rest\"\ngate = {{ bake = \"24h\", report_deadline = \"24h\" }}\n"
    );
    for s in 0..signals {
        plan.push_str(&format!(
            "\n[[analysis]]\nsignal = \"signal_{s}\"\ndirection = \"increase_is_bad\"\ntolerance = {{ relative = 0.1 }}\nmin_sites = 5\nmin_samples = 20\n"
        ));
    }
    let rollout = app
        .engine
        .create_rollout(plan, PlanFormat::Toml, "fleetwave-sim")
        .await
        .map_err(|e| anyhow::anyhow!("create rollout: {e}"))?;
    let started = Instant::now();
    app.engine
        .rollout_action(&rollout.id, Action::Start, "fleetwave-sim")
        .await
        .map_err(|e| anyhow::anyhow!("start rollout: {e}"))?;
    println!(
        "  (rollout {} started in {:.1} s: wave 0 of {sites} sites opened)",
        rollout.id,
        started.elapsed().as_secs_f64()
    );
    {
        let started = Instant::now();
        let mut conn = rusqlite::Connection::open(&db)?;
        conn.busy_timeout(Duration::from_secs(30))?;
        let tx = conn.transaction()?;
        let committed = tx.execute(
            "UPDATE rollout_sites SET leased_at = ?2, phase = 'committed', phase_at = ?2, committed_at = ?2, last_healthy_at = ?2, last_report_at = ?2 WHERE rollout_id = ?1 AND wave = 0",
            rusqlite::params![rollout.id, ms(t0)],
        )?;
        anyhow::ensure!(
            committed == sites,
            "wave 0 holds {committed} sites, not {sites}"
        );
        let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
        // The sites the analysis reads: the 200 of each group with the lowest stable seed
        // (`controller::analysis::groups`). Only theirs are stored: every site's minutes
        // would be 6 million rows (over 500 MB of disk) and only deepen the key's B-tree.
        let read = |range: std::ops::Range<usize>| {
            let mut ids: Vec<(f64, usize)> = range
                .map(|i| {
                    let id = crate::site::site_id(i);
                    (fleetwave_coordinator::controller::seed(&rollout.id, &id), i)
                })
                .collect();
            ids.sort_by(|a, b| a.0.total_cmp(&b.0));
            ids.truncate(fleetwave_coordinator::controller::analysis::MAX_ANALYSIS_SITES);
            ids.into_iter().map(|(_, i)| i)
        };
        let stored: Vec<usize> = read(0..sites).chain(read(sites..2 * sites)).collect();
        {
            let mut st = tx.prepare(
                "INSERT OR REPLACE INTO signal_values (site_id, stream, signal, minute, value, release_id) VALUES (?1, 'sim-app', ?2, ?3, ?4, ?5)",
            )?;
            let names: Vec<String> = (0..signals).map(|s| format!("signal_{s}")).collect();
            for &i in &stored {
                let id = crate::site::site_id(i);
                let rel = if i < sites {
                    release.as_str()
                } else {
                    "sim-app-old"
                };
                for name in &names {
                    for m in 0..minutes {
                        let minute = t0 + SignedDuration::from_mins(m as i64);
                        st.execute(rusqlite::params![
                            id,
                            name,
                            ms(minute),
                            100.0 + 20.0 * noise.next(),
                            rel
                        ])?;
                    }
                }
            }
        }
        tx.commit()?;
        println!(
            "  (wave 0 committed; {} signal values of the {} sites read stored in {:.1} s)",
            stored.len() * signals * minutes,
            stored.len(),
            started.elapsed().as_secs_f64()
        );
    }
    // The engine reads the commits from the store again, as after a restart.
    app.engine.facts.clear();
    clock.advance(Duration::from_secs(60 * minutes as u64));
    app.engine
        .tick_all()
        .await
        .map_err(|e| anyhow::anyhow!("tick: {e}"))?;
    let mut times = Vec::with_capacity(passes);
    for _ in 0..passes {
        clock.advance(Duration::from_secs(60));
        let started = Instant::now();
        app.engine
            .tick_all()
            .await
            .map_err(|e| anyhow::anyhow!("tick: {e}"))?;
        times.push(started.elapsed());
    }
    let started = Instant::now();
    app.engine
        .tick_all()
        .await
        .map_err(|e| anyhow::anyhow!("tick: {e}"))?;
    let cached = started.elapsed();
    let analyses = app.engine.analyses(&rollout.id);
    let facts = analyses.get(&0).map(Vec::as_slice).unwrap_or_default();
    let verdicts: Vec<String> = facts
        .iter()
        .map(|f| f.verdict.as_str().to_string())
        .collect();
    let sizes = facts
        .first()
        .and_then(|f| f.numbers.as_ref())
        .map(|n| {
            format!(
                "{} upgraded sites ({} samples) vs {} control sites ({} samples) per signal",
                n.upgraded.sites, n.upgraded.samples, n.control.sites, n.control.samples
            )
        })
        .unwrap_or_else(|| "no verdict".into());
    times.sort();
    let ms_of = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = times[times.len() / 2];
    println!(
        "analysis (engine pass, {sites}-site wave vs {sites} control sites, {signals} signals, {minutes} minutes stored; in this process): median {:.1} ms, min {:.1} ms, max {:.1} ms over {passes} passes judging a new minute; {:.1} ms for a pass in the same minute (verdicts kept); {sizes}; verdicts {}",
        ms_of(median),
        ms_of(times[0]),
        ms_of(times[times.len() - 1]),
        ms_of(cached),
        verdicts.join(" "),
    );
    Ok(median)
}
