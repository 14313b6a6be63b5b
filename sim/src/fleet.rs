//! A simulated fleet against a running coordinator: enrolls the sites it lacks (remembered
//! in `<dir>/fleet.json`, so a large fleet is enrolled once), opens their sessions, and
//! runs the scenarios that need many sites (steady polling with a four-wave rollout, the
//! long-poll wake-up, report ingestion, the poll-path ratio).
//!
//! It prints figures; it never asserts a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use fleetwave_shared::Envelope;
use fleetwave_shared::protocol::{EventBody, Phase, RolloutStatus};
use fleetwave_shared::trust::TrustState;
use futures_util::StreamExt as _;

use crate::coordinator::{Coordinator, Setup, Tuning, client};

/// The simulated sites share this many clients, each with its own connection pool (see
/// [`Net::client`]).
pub const CLIENT_SHARDS: usize = 256;

/// The loopback source address of client shard `i`: 127.0.1.1, 127.0.1.2, ... (each
/// with its own ephemeral ports, as each real site has its own address).
pub(crate) fn shard_address(i: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, 0, 1 + (i / 254) as u8, (i % 254) as u8 + 1)
}
use crate::procstat::{self, mib};
use crate::site::{Executor, Fetched, Net, PollOutcome, Site};
use crate::stats::{Counter, Latencies};

/// How the simulated sites' clients talk to the coordinator.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// A request's time limit.
    pub timeout: Duration,
    /// A new TCP + TLS connection per request instead of a keep-alive pool.
    pub fresh_connections: bool,
    /// Requests in flight at once per client.
    pub connections_per_client: usize,
}

/// A coordinator process and its simulated sites.
pub struct Fleet {
    pub setup: Setup,
    pub coordinator: Coordinator,
    pub net: Arc<Net>,
    pub anchor: Arc<TrustState>,
    pub sites: Vec<Site>,
    /// The coordinator's PostgreSQL database (`--postgres-url`); none: its SQLite file.
    pub postgres_url: Option<String>,
    /// Further coordinator processes on the same database (`--replicas`): the sites of
    /// client shard `i` talk to replica `i % (1 + replicas.len())` (0: `coordinator`).
    pub replicas: Vec<Coordinator>,
}

fn marker(dir: &Path) -> PathBuf {
    dir.join("fleet.json")
}

fn enrolled_count(dir: &Path) -> usize {
    std::fs::read_to_string(marker(dir))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["enrolled"].as_u64())
        .unwrap_or(0) as usize
}

/// Runs `f` over every site, `concurrency` at a time; sites come back in any order.
pub async fn for_each_site<F, Fut>(sites: Vec<Site>, concurrency: usize, f: F) -> Vec<Site>
where
    F: Fn(Site) -> Fut,
    Fut: std::future::Future<Output = Site>,
{
    futures_util::stream::iter(sites.into_iter().map(f))
        .buffer_unordered(concurrency)
        .collect()
        .await
}

pub fn print_machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "machine: {cores} cores ({cpu}); load average {}",
        procstat::load_average()
    );
}

impl Fleet {
    /// Prepares `dir`, starts the coordinator, enrolls missing sites (or, with
    /// `seed_via_import`, imports them with their device keys) and opens sessions for `n`
    /// sites.
    pub async fn up(
        dir: &Path,
        bin: &Path,
        n: usize,
        tuning: &Tuning,
        clients: &ClientOptions,
        seed_via_import: bool,
    ) -> anyhow::Result<Fleet> {
        let ClientOptions {
            timeout: client_timeout,
            fresh_connections,
            connections_per_client,
        } = *clients;
        let setup = Setup::open_or_create(dir)?;
        if tuning.replicas > 1 && tuning.postgres_url.is_none() {
            bail!("--replicas above 1 needs --postgres-url: SQLite is one process's database");
        }
        let coordinator = Coordinator::start(bin, &setup, tuning).await?;
        println!(
            "coordinator: pid {} at {} (data {})",
            coordinator.pid,
            coordinator.base,
            setup.database().display()
        );
        let mut replicas = Vec::new();
        for k in 1..tuning.replicas.max(1) {
            let r =
                Coordinator::start_replica(bin, &setup, tuning, k, coordinator.addr.port()).await?;
            println!("replica {k}: pid {} at {}", r.pid, r.addr);
            replicas.push(r);
        }
        let addrs: Vec<std::net::SocketAddr> = std::iter::once(coordinator.addr)
            .chain(replicas.iter().map(|r| r.addr))
            .collect();
        let aborted = coordinator.abort_leftover_rollouts().await?;
        if aborted > 0 {
            println!("aborted {aborted} rollout(s) an earlier run left active");
        }
        let clients = (0..CLIENT_SHARDS.min(n.max(1)))
            .map(|i| {
                client(
                    &setup.ca_pem,
                    client_timeout,
                    fresh_connections,
                    Some(shard_address(i)),
                    addrs[i % addrs.len()],
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let net = Net::new(clients, coordinator.base.clone(), connections_per_client);
        let root = Envelope::from_json(
            &std::fs::read(setup.dir.join("root.1.json")).context("reading root.1.json")?,
        )?;
        let anchor = Arc::new(
            TrustState::from_anchor(&root).map_err(|e| anyhow::anyhow!("root anchor: {e}"))?,
        );
        let have = enrolled_count(dir);
        let sites: Vec<Site> = (0..n).map(Site::new).collect();
        if have < n && seed_via_import {
            crate::import::seed(&coordinator, have, n).await?;
            std::fs::write(marker(dir), format!("{{\"enrolled\": {n}}}\n"))?;
        } else if have < n {
            let token = coordinator.enrollment_token((n - have) as u32).await?;
            let started = Instant::now();
            let failures = Arc::new(AtomicU64::new(0));
            let todo: Vec<Site> = (have..n).map(Site::new).collect();
            let done = for_each_site(todo, 64, |site| {
                let (net, token, failures) = (net.clone(), token.clone(), failures.clone());
                async move {
                    if let Err(e) = site.enroll(&net, &token).await
                        && failures.fetch_add(1, Ordering::Relaxed) < 3
                    {
                        eprintln!("enroll {}: {e}", site.id);
                    }
                    site
                }
            })
            .await;
            let failed = failures.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64();
            println!(
                "enrolled {} sites in {secs:.1} s ({:.0} enrollments/s), {failed} failed",
                done.len(),
                done.len() as f64 / secs
            );
            if failed > 0 {
                bail!("{failed} enrollments failed");
            }
            std::fs::write(marker(dir), format!("{{\"enrolled\": {n}}}\n"))?;
        }
        let started = Instant::now();
        let failures = Arc::new(AtomicU64::new(0));
        let sites = for_each_site(sites, 64, |mut site| {
            let (net, failures) = (net.clone(), failures.clone());
            async move {
                if let Err(e) = site.open_session(&net).await
                    && failures.fetch_add(1, Ordering::Relaxed) < 3
                {
                    eprintln!("session {}: {e}", site.id);
                }
                site
            }
        })
        .await;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "opened {} sessions in {secs:.1} s ({:.0} handshakes/s), {} failed",
            sites.len(),
            sites.len() as f64 / secs,
            failures.load(Ordering::Relaxed)
        );
        let mut sites = sites;
        sites.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Fleet {
            setup,
            coordinator,
            net,
            anchor,
            sites,
            postgres_url: tuning.postgres_url.clone(),
            replicas,
        })
    }

    pub fn sample(&self) -> anyhow::Result<procstat::Sample> {
        Ok(procstat::sample(self.coordinator.pid)?)
    }

    /// Every coordinator process: the first, then the replicas.
    pub fn coordinators(&self) -> impl Iterator<Item = &Coordinator> {
        std::iter::once(&self.coordinator).chain(self.replicas.iter())
    }

    /// A metric summed over every coordinator process.
    pub async fn metric(&self, name: &str, label: &str) -> anyhow::Result<f64> {
        let mut sum = 0.0;
        for c in self.coordinators() {
            sum += c.metric(name, label).await?;
        }
        Ok(sum)
    }
}

/// One sample of each coordinator process.
type Samples = Vec<procstat::Sample>;

fn print_coordinator(label: &str, from: &Samples, to: &Samples) {
    let several = from.len() > 1;
    for (k, (from, to)) in from.iter().zip(to).enumerate() {
        let which = if !several {
            "coordinator process".to_string()
        } else {
            format!("coordinator replica {k}")
        };
        println!(
            "  {which} (pid, from /proc): CPU {:.1}% of one core over {:.0} s, RSS {:.0} MiB now, {:.0} MiB peak",
            procstat::cpu_percent(from, to),
            to.at.duration_since(from.at).as_secs_f64(),
            mib(to.rss_bytes),
            mib(to.peak_rss_bytes),
        );
    }
    let _ = label;
}

/// Options of the steady polling + rollout scenario.
pub struct SteadyOptions {
    pub interval: Duration,
    pub wait: u32,
    pub duration: Duration,
    pub health_every: u32,
    pub executor: Executor,
    pub rollout: bool,
    pub rollout_timeout: Duration,
}

/// What the smoke run checks (no time is asserted).
pub struct SteadyResult {
    pub errors: u64,
    pub rollout_completed: bool,
}

/// Steady polling at an interval (spread evenly), heartbeats, then a four-wave rollout.
pub async fn steady(fleet: Fleet, o: SteadyOptions) -> anyhow::Result<SteadyResult> {
    let n = fleet.sites.len();
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(Counter::default());
    let failed = Arc::new(Counter::default());
    // Only installs of the measured rollout count (a reused --dir may hold an older
    // rollout whose assignments fresh simulated sites still install).
    let measured: Arc<std::sync::OnceLock<String>> = Arc::new(std::sync::OnceLock::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut site) in fleet.sites.into_iter().enumerate() {
        let net = fleet.net.clone();
        let anchor = fleet.anchor.clone();
        let (committed, failed, stop) = (committed.clone(), failed.clone(), stop.clone());
        let measured = measured.clone();
        let mut stop_rx = stop_rx.clone();
        let o_interval = o.interval;
        let (wait, health_every, executor) = (o.wait, o.health_every, o.executor);
        tasks.spawn(async move {
            let offset = o_interval.mul_f64(i as f64 / n as f64);
            let mut next = start + offset;
            let mut round: u32 = 0;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => {}
                    _ = stop_rx.changed() => break,
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if !site.has_session() {
                    if let Err(e) = site.open_session(&net).await {
                        net.errors.add(e.kind());
                    }
                    next = tokio::time::Instant::now() + Duration::from_secs(1);
                    continue;
                }
                let poll = tokio::select! {
                    r = site.poll(&net, wait, &anchor) => r,
                    _ = stop_rx.changed() => break,
                };
                match poll {
                    Ok(PollOutcome::New(accepted)) => {
                        let counts = measured
                            .get()
                            .is_some_and(|id| *id == accepted.assignment.rollout_id);
                        if !counts {
                            // An assignment from a rollout that an earlier run finished
                            // (leftovers still running were aborted at start): a real agent
                            // restarts with its saved state and runs that release already.
                            // Installing it again loaded the steady phase with 100,000
                            // leases and installs.
                            site.installed = Some(accepted.release.id.clone());
                        } else {
                            match site.install(&net, &accepted, executor).await {
                                Ok(true) => committed.add(1),
                                Ok(false) => failed.add(1),
                                Err(e) => net.errors.add(e.kind()),
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => net.errors.add(e.kind()),
                }
                round += 1;
                if health_every > 0 && round.is_multiple_of(health_every) {
                    let ev = site.health();
                    if let Err(e) = site.report(&net, &[ev]).await {
                        net.errors.add(e.kind());
                    }
                }
                next = if wait > 0 {
                    tokio::time::Instant::now()
                } else {
                    next + o_interval
                };
            }
        });
    }
    let net = fleet.net.clone();
    let c = &fleet.coordinator;
    // Warm-up: one full interval, in which every site polls once (all 200s).
    tokio::time::sleep(o.interval.min(Duration::from_secs(90))).await;
    net.poll_latency.reset();
    net.report_latency.reset();
    let s0 = fleet_sample(c, &fleet.replicas)?;
    let (p0, r0, e0) = (
        net.polls.get(),
        net.report_events.get(),
        net.report_posts.get(),
    );
    let t0 = Instant::now();
    tokio::time::sleep(o.duration).await;
    let secs = t0.elapsed().as_secs_f64();
    let s1 = fleet_sample(c, &fleet.replicas)?;
    println!(
        "steady polling: {n} sites, every {:?}{} (load average {})",
        o.interval,
        if o.wait > 0 {
            format!(", long poll {} s", o.wait)
        } else {
            String::new()
        },
        procstat::load_average()
    );
    println!(
        "  polls/s {:.0}, report posts/s {:.1}, report events/s {:.1}",
        (net.polls.get() - p0) as f64 / secs,
        (net.report_posts.get() - e0) as f64 / secs,
        (net.report_events.get() - r0) as f64 / secs
    );
    println!("  poll latency: {}", net.poll_latency.summary());
    println!("  report latency: {}", net.report_latency.summary());
    println!("  errors: {}", net.errors.summary());
    println!("  shed and retried: {}", net.retried.summary());
    print_coordinator("steady", &s0, &s1);
    let mut rollout_completed = !o.rollout;
    if o.rollout {
        net.poll_latency.reset();
        let (release_id, _) = c.publish_release(&fleet.setup).await?;
        let plan = crate::coordinator::four_wave_plan(&release_id, o.executor.failure_rate);
        let id = c.create_rollout(&plan).await?;
        let _ = measured.set(id.clone());
        let s0 = fleet_sample(c, &fleet.replicas)?;
        let h0 = c.route_histogram("/v1/agent/poll").await?;
        let t0 = Instant::now();
        c.start_rollout(&id).await?;
        let deadline = t0 + o.rollout_timeout;
        let mut all_at = None;
        let status;
        loop {
            let done = committed.get() + failed.get();
            if all_at.is_none() && done as usize >= n {
                all_at = Some(t0.elapsed());
            }
            if all_at.is_some() || Instant::now() > deadline {
                let now = c.rollout_status(&id).await?;
                if now != RolloutStatus::Running || Instant::now() > deadline {
                    status = now;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let end = t0.elapsed();
        let s1 = fleet_sample(c, &fleet.replicas)?;
        let inside = c.route_histogram("/v1/agent/poll").await?.since(&h0);
        println!(
            "four-wave rollout {id} (shares 1%, 10%, 50%, rest; bake 0s; install {:?}, failure rate {}):",
            o.executor.install, o.executor.failure_rate
        );
        match all_at {
            Some(t) => println!(
                "  every site installed after {:.1} s ({} committed, {} failed); rollout {status} after {:.1} s",
                t.as_secs_f64(),
                committed.get(),
                failed.get(),
                end.as_secs_f64()
            ),
            None => println!(
                "  NOT every site installed within {:?}: {} committed, {} failed; rollout {status}",
                o.rollout_timeout,
                committed.get(),
                failed.get()
            ),
        }
        println!(
            "  poll latency during the rollout: {}",
            net.poll_latency.summary()
        );
        println!(
            "  the same polls inside the coordinator (its own histogram, from routing to answer): {}",
            inside.summary()
        );
        println!("  errors (whole run): {}", net.errors.summary());
        println!("  shed and retried (whole run): {}", net.retried.summary());
        print_coordinator("rollout", &s0, &s1);
        rollout_completed = status == RolloutStatus::Completed;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(SteadyResult {
        errors: net.errors.total(),
        rollout_completed,
    })
}

fn fleet_sample(c: &Coordinator, replicas: &[Coordinator]) -> anyhow::Result<Samples> {
    std::iter::once(c)
        .chain(replicas)
        .map(|c| Ok(procstat::sample(c.pid)?))
        .collect()
}

/// Long-poll wake-up: every site waits in a long poll; a one-wave rollout starts; how long
/// until each waiting site holds its assignment.
pub async fn long_poll(fleet: Fleet, wait: u32) -> anyhow::Result<u64> {
    let n = fleet.sites.len();
    let c = &fleet.coordinator;
    let (release_id, _) = c.publish_release(&fleet.setup).await?;
    let id = c
        .create_rollout(&crate::coordinator::one_wave_plan(&release_id))
        .await?;
    // Every site learns its current ETag first (a short poll).
    let net = fleet.net.clone();
    let anchor = fleet.anchor.clone();
    let sites = for_each_site(fleet.sites, 64, |mut site| {
        let (net, anchor) = (net.clone(), anchor.clone());
        async move {
            if let Err(e) = site.poll(&net, 0, &anchor).await {
                net.errors.add(e.kind());
            }
            site
        }
    })
    .await;
    net.errors.reset();
    let waiting = Arc::new(AtomicU64::new(0));
    let t0: Arc<std::sync::OnceLock<Instant>> = Arc::new(std::sync::OnceLock::new());
    let wake = Arc::new(Latencies::default());
    let received = Arc::new(Counter::default());
    let mut tasks = tokio::task::JoinSet::new();
    for mut site in sites {
        let (net, anchor, waiting, t0, wake, received) = (
            net.clone(),
            anchor.clone(),
            waiting.clone(),
            t0.clone(),
            wake.clone(),
            received.clone(),
        );
        tasks.spawn(async move {
            let mut counted = false;
            loop {
                if !counted {
                    waiting.fetch_add(1, Ordering::Relaxed);
                    counted = true;
                }
                // Timed to the answer's arrival; checked after the window (below).
                match site.fetch(&net, wait, &anchor).await {
                    Ok(Fetched::Body(body)) if body.assignment.is_some() => {
                        if let Some(t) = t0.get() {
                            wake.record(t.elapsed());
                        }
                        received.add(1);
                        return Some((site, body));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        net.errors.add(e.kind());
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while (waiting.load(Ordering::Relaxed) as usize) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the last requests reach the coordinator and park.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let errors_before = net.errors.total();
    let s0 = fleet_sample(c, &fleet.replicas)?;
    let start = Instant::now();
    let _ = t0.set(start);
    c.start_rollout(&id).await?;
    let start_call = start.elapsed();
    let deadline = start + Duration::from_secs(wait.max(5) as u64);
    while (received.get() as usize) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s1 = fleet_sample(c, &fleet.replicas)?;
    let got = received.get();
    // Every received answer is checked as the agent checks it (signatures, site, expiry,
    // sequence), outside the timed window: 10,000 real sites do this on their own CPUs.
    let mut answers = Vec::with_capacity(n);
    tasks.abort_all();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(Some(answer)) = joined {
            answers.push(answer);
        }
    }
    let checking = Instant::now();
    let mut accepted = 0u64;
    let mut refused: BTreeMap<String, u64> = BTreeMap::new();
    for (mut site, body) in answers {
        match site.check(&body, &anchor) {
            Ok(PollOutcome::New(_)) | Ok(PollOutcome::Same) => accepted += 1,
            Ok(_) => *refused.entry("no assignment".into()).or_default() += 1,
            Err(e) => *refused.entry(e.to_string()).or_default() += 1,
        }
    }
    let check_time = checking.elapsed();
    println!(
        "long-poll wake-up: {n} sites waiting (long poll {wait} s), one wave opened (load average {})",
        procstat::load_average()
    );
    println!(
        "  start request (opens the wave, signs {n} assignments) answered after {:.0} ms",
        start_call.as_secs_f64() * 1000.0
    );
    println!(
        "  {got} of {n} sites received their assignment; time from start to receipt: {}",
        wake.summary()
    );
    println!(
        "  checked after the window as each agent checks it: {accepted} accepted, {} refused{}; {:.0} µs per site on one core here ({:.0} ms in all)",
        refused.values().sum::<u64>(),
        if refused.is_empty() {
            String::new()
        } else {
            format!(" ({refused:?})")
        },
        check_time.as_secs_f64() * 1e6 / got.max(1) as f64,
        check_time.as_secs_f64() * 1000.0
    );
    println!(
        "  errors while waiting: {} (before the wave: {errors_before})",
        net.errors.summary()
    );
    print_coordinator("long-poll", &s0, &s1);
    let refusals = refused.values().sum::<u64>();
    Ok(net.errors.total() + refusals + (n as u64 - accepted.min(n as u64)))
}

/// Report ingestion: every site posts `batches` batches of `batch` events (health
/// heartbeats and phase reports), `concurrency` posts at a time; then resends every batch
/// and checks that nothing was applied twice, by the answers, `/metrics` and the store.
pub async fn reports(
    mut fleet: Fleet,
    batch: usize,
    batches: usize,
    concurrency: usize,
) -> anyhow::Result<bool> {
    let net = fleet.net.clone();
    let run = {
        let mut b = [0u8; 4];
        getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("random: {e}"))?;
        hex::encode(b)
    };
    // Build every batch up front: the same bytes are sent twice.
    let mut work = Vec::new();
    for mut site in std::mem::take(&mut fleet.sites) {
        let mut site_batches = Vec::new();
        for b in 0..batches {
            let mut events = Vec::with_capacity(batch);
            for k in 0..batch {
                let mut ev = if k % 2 == 0 {
                    site.health()
                } else {
                    site.event(EventBody::Phase {
                        rollout_id: None,
                        release_id: "sim-none".into(),
                        phase: Phase::Waiting,
                        detail: Some(format!("batch {b}")),
                    })
                };
                ev.id = format!("{}-{run}-{b}-{k}", site.id);
                events.push(ev);
            }
            site_batches.push(events);
        }
        work.push((Arc::new(site), site_batches));
    }
    let unique = (work.len() * batches * batch) as u64;
    let mut results = Vec::new();
    for pass in ["first", "resend"] {
        let accepted = Arc::new(AtomicU64::new(0));
        let duplicates = Arc::new(AtomicU64::new(0));
        let jobs: Vec<_> = work
            .iter()
            .flat_map(|(site, bs)| bs.iter().map(move |b| (site.clone(), b.clone())))
            .collect();
        let s0 = fleet_sample(&fleet.coordinator, &fleet.replicas)?;
        let started = Instant::now();
        futures_util::stream::iter(jobs.into_iter().map(|(site, events)| {
            let (net, accepted, duplicates) = (net.clone(), accepted.clone(), duplicates.clone());
            async move {
                // One attempt each: the exactly-once check counts every acknowledgement.
                match site.report_once(&net, &events).await {
                    Ok(ack) => {
                        accepted.fetch_add(ack.accepted as u64, Ordering::Relaxed);
                        duplicates.fetch_add(ack.duplicates as u64, Ordering::Relaxed);
                    }
                    Err(e) => net.errors.add(e.kind()),
                }
            }
        }))
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
        let secs = started.elapsed().as_secs_f64();
        let s1 = fleet_sample(&fleet.coordinator, &fleet.replicas)?;
        let (a, d) = (
            accepted.load(Ordering::Relaxed),
            duplicates.load(Ordering::Relaxed),
        );
        println!(
            "report ingestion, {pass} pass: {unique} events in batches of {batch}, {concurrency} posts at a time: {:.0} events/s ({:.0} posts/s), accepted {a}, duplicates {d} (load average {})",
            unique as f64 / secs,
            (unique as usize / batch) as f64 / secs,
            procstat::load_average()
        );
        println!("  post latency: {}", net.report_latency.summary());
        print_coordinator(pass, &s0, &s1);
        net.report_latency.reset();
        results.push((a, d));
    }
    let metric = fleet
        .metric("fleetwave_report_events_total", "accepted")
        .await?;
    let pattern = format!("%-{run}-%");
    let stored: i64 = match fleet.postgres_url.clone() {
        // The synchronous client runs its own runtime: off the async workers.
        Some(url) => {
            tokio::task::spawn_blocking(move || -> anyhow::Result<i64> {
                let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
                let row = client.query_one(
                    "SELECT COUNT(*) FROM reports WHERE event_id LIKE $1",
                    &[&pattern],
                )?;
                Ok(row.get(0))
            })
            .await??
        }
        None => {
            let conn = rusqlite::Connection::open_with_flags(
                fleet.setup.database(),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(Duration::from_secs(10))?;
            conn.query_row(
                "SELECT COUNT(*) FROM reports WHERE event_id LIKE ?1",
                [pattern],
                |r| r.get(0),
            )?
        }
    };
    let exactly_once = results[0] == (unique, 0)
        && results[1] == (0, unique)
        && stored as u64 == unique
        && metric as u64 == unique;
    println!(
        "  exactly once: {} (sent {unique} unique events twice; acknowledged new {} then {}, duplicates {} then {}; /metrics accepted {metric}; rows in the store {stored}; errors {})",
        if exactly_once { "yes" } else { "NO" },
        results[0].0,
        results[1].0,
        results[0].1,
        results[1].1,
        net.errors.summary()
    );
    Ok(exactly_once && net.errors.total() == 0)
}
