//! `fleetwave-sim`: the fleet simulator and benchmarks. Runs N simulated sites against a
//! real coordinator process over HTTPS on loopback and prints what it measured; measures
//! the agent's idle cost. See docs/benchmarks.md for the commands and the figures.
//!
//! It prints figures and never asserts a time. Exit status: 0 when the run worked
//! (no protocol errors; the rollout completed; reports applied exactly once), 1 otherwise.

mod agent_idle;
mod analysis;
mod connections;
mod converge;
mod coordinator;
mod fleet;
mod import;
mod procstat;
mod ratio;
mod safety;
mod site;
mod stats;
mod tick;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::coordinator::{Tuning, find_binary};
use crate::fleet::Fleet;
use crate::site::Executor;

#[derive(Parser)]
#[command(
    name = "fleetwave-sim",
    version,
    about = "fleetwave fleet simulator and benchmarks: simulated sites against a real coordinator over HTTPS on loopback"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// Number of simulated sites.
    #[arg(long, default_value_t = 1000)]
    sites: usize,
    /// Directory for the coordinator setup and its SQLite file. Kept, so that a large
    /// fleet is enrolled once and reused by later runs. Default: a temp dir, removed.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The `fleetwave-coordinator` binary (default: next to this one).
    #[arg(long)]
    coordinator_bin: Option<PathBuf>,
    /// Override the coordinator's `limits.max_concurrent_requests`.
    #[arg(long)]
    max_concurrent_requests: Option<usize>,
    /// Override the coordinator's `limits.max_keepalive_connections` (connections kept
    /// open between requests; 10,000 by default).
    #[arg(long)]
    max_keepalive_connections: Option<usize>,
    /// Requests in flight at once per simulated client (each of the 256 clients holds at
    /// most this many connections). 32 × 256 = 8,192: under the coordinator's default
    /// `limits.max_keepalive_connections` (10,000). Scenarios with long polls raise it to
    /// the sites per client, so that every site can wait at once.
    #[arg(long, default_value_t = 32)]
    connections_per_client: usize,
    /// Open a new TCP + TLS connection for every request instead of sharing a keep-alive
    /// pool (what agents polling less often than `limits.keepalive_idle_secs`, 90 s by
    /// default, do).
    #[arg(long)]
    fresh_connections: bool,
    /// Seed the sites the directory lacks with one `POST /v1/sites/import` (pre-registered
    /// with their device keys) instead of enrolling them one by one.
    #[arg(long)]
    seed_via_import: bool,
    /// Keep the coordinator's state in this PostgreSQL database (e.g.
    /// `postgres://fleetwave@127.0.0.1:5432/sim`) instead of SQLite. The database must be
    /// new, or one an earlier run with the same `--dir` used: the directory keeps the
    /// enrolled sites' keys.
    #[arg(long)]
    postgres_url: Option<String>,
    /// Coordinator processes on the `--postgres-url` database, all serving (the simulated
    /// sites are spread over them by client shard; the operator calls go to the first).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// Steady polling at an interval (spread evenly over the sites) with health reports,
    /// then a four-wave rollout to every site.
    Fleet {
        #[command(flatten)]
        common: Common,
        /// Time between two polls of a site, e.g. 60s.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        poll_interval: Duration,
        /// Long-poll wait in seconds (0: short polls at the interval).
        #[arg(long, default_value_t = 0)]
        wait: u32,
        /// How long to measure steady polling after one warm-up interval.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        duration: Duration,
        /// A health heartbeat every this many polls (0: none).
        #[arg(long, default_value_t = 5)]
        health_every: u32,
        /// Simulated install duration.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        install: Duration,
        /// Share of simulated installs that fail (0..1).
        #[arg(long, default_value_t = 0.0)]
        failure_rate: f64,
        /// Skip the rollout (steady polling only).
        #[arg(long)]
        no_rollout: bool,
        /// Give up on the rollout after this long.
        #[arg(long, default_value = "15m", value_parser = parse_duration)]
        rollout_timeout: Duration,
    },
    /// Long-poll wake-up: every site waits in a long poll, a wave opens, time until each
    /// site holds its assignment.
    LongPoll {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 60)]
        wait: u32,
    },
    /// Report ingestion with an exactly-once check (every batch is sent twice).
    Reports {
        #[command(flatten)]
        common: Common,
        /// Events per batch (at most 500).
        #[arg(long, default_value_t = 50)]
        batch: usize,
        /// Batches per site.
        #[arg(long, default_value_t = 4)]
        batches: usize,
        /// Posts in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Poll throughput against a minimal axum server answering the same bytes over the
    /// same TLS and keep-alive.
    PollRatio {
        #[command(flatten)]
        common: Common,
        /// Concurrent keep-alive request loops.
        #[arg(long, default_value_t = 64)]
        workers: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Poll without If-None-Match (a 200 with the full body) instead of the usual 304.
        #[arg(long)]
        full: bool,
    },
    /// (Used by `poll-ratio`: the minimal axum baseline server in its own process.)
    #[command(hide = true)]
    BaselineServer {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        canned: PathBuf,
    },
    /// Memory per idle keep-alive connection: one TLS connection per site, polled once
    /// (200, then 304) and left open, the coordinator's RSS read after each step.
    Connections {
        #[command(flatten)]
        common: Common,
        /// Steps in which the connections are opened (RSS is read after each).
        #[arg(long, default_value_t = 4)]
        steps: usize,
        /// How long the connections stay open and idle after the last step.
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        hold: Duration,
    },
    /// The coordinator's CPU per poll on kept connections against a new connection per
    /// poll that resumes its TLS session from a ticket (agents over the coordinator's
    /// keep-alive budget).
    Handshakes {
        #[command(flatten)]
        common: Common,
        /// Concurrent poll loops, one site each (at most --sites).
        #[arg(long, default_value_t = 64)]
        workers: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Controller tick time over a large rollout (pure controller and engine pass).
    Tick {
        #[arg(long, default_value_t = 100_000)]
        sites: usize,
        #[arg(long, default_value_t = 10)]
        passes: usize,
        /// Directory for the database (default: a temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The convergence pass: N sites in four channels, OFF of them not on their channel's
    /// release (in-process over a real SQLite file).
    Converge {
        #[arg(long, default_value_t = 100_000)]
        sites: usize,
        #[arg(long, default_value_t = 10_000)]
        off: usize,
        #[arg(long, default_value_t = 20)]
        passes: usize,
        /// Directory for the database (default: a temp dir; must be new).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The golden-signal judge over one wave: N upgraded against N control sites, each
    /// with a sample per signal (in-process, pure); then the engine's controller pass
    /// with that analysis over a real SQLite file (N-site wave, N control sites, the
    /// signals' minutes stored).
    Analysis {
        #[arg(long, default_value_t = 10_000)]
        sites: usize,
        #[arg(long, default_value_t = 10)]
        signals: usize,
        #[arg(long, default_value_t = 10)]
        passes: usize,
        /// Minutes of every signal of every site stored for the engine pass.
        #[arg(long, default_value_t = 30)]
        minutes: usize,
        /// Directory for the engine pass's coordinator and database (default: a temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Rollout safety: repeated rollouts of one class of release per run (healthy,
    /// crashes on start, fails its health check, slow degradation, 10 % of sites silent,
    /// flapping links) over a fleet with simulated golden signals and noise, against the
    /// real engine and wave controller (in-process, real SQLite file, adjustable clock).
    /// Prints per class: halts and their wave, blast radius, time from the first install
    /// to the halt, false halts.
    Safety {
        #[arg(long, default_value_t = 400)]
        sites: usize,
        /// Runs per class.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Seed of the simulated fleet, signals and links (the same seed, the same runs).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Only this class (repeat for several; default every class).
        #[arg(long, value_enum)]
        class: Vec<safety::Class>,
        /// Directory under which each run's coordinator and database are made (and
        /// removed after the run). Default: /dev/shm when present (the coordinator
        /// fsyncs every report; the medium changes no decision), else the temp dir.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// A line for every run: how it ended, and the halt's reason.
        #[arg(long)]
        verbose: bool,
    },
    /// Bulk site import (`POST /v1/sites/import`): N sites with device keys, then N
    /// without (one-use enrollment tokens), into a new coordinator; prints sites/s.
    Import {
        #[arg(long, default_value_t = 100_000)]
        sites: usize,
        /// Directory for the coordinator (default: a temp dir; must be new).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The `fleetwave-coordinator` binary (default: next to this one).
        #[arg(long)]
        coordinator_bin: Option<PathBuf>,
    },
    /// The agent's idle RSS and CPU at a 30 s poll interval, and its binary size.
    AgentIdle {
        #[arg(long, default_value_t = 5.0)]
        minutes: f64,
        #[arg(long, default_value_t = 30)]
        interval: u64,
        /// Also scrape ten golden signals every 60 s from a simulated application's
        /// `/metrics` (about 320 series) served in-process on loopback.
        #[arg(long)]
        signals: bool,
        /// The agent binary (default: target/agent-release/fleetwave-agent if built,
        /// else next to this binary).
        #[arg(long)]
        agent_bin: Option<PathBuf>,
        #[arg(long)]
        coordinator_bin: Option<PathBuf>,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// `500ms`, `2s`, `5m`, `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("{s:?} needs a unit: ms, s, m or h"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} does not start with a number"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}: use ms, s, m or h"
            ));
        }
    };
    Ok(Duration::from_secs_f64(secs))
}

/// The working directory: the one given, or a temp dir removed at the end.
fn workdir(dir: Option<PathBuf>) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(d) => Ok((d, None)),
        None => {
            let t = tempfile::Builder::new()
                .prefix("fleetwave-sim-")
                .tempdir()?;
            Ok((t.path().to_path_buf(), Some(t)))
        }
    }
}

/// `long_polls`: every site may wait in a long poll at once, so each client gets at least
/// a turn per site it carries.
async fn fleet_up(
    common: &Common,
    dir: &Path,
    interval_secs: u32,
    client_timeout: Duration,
    long_polls: bool,
) -> anyhow::Result<Fleet> {
    let per_client = if long_polls {
        common
            .connections_per_client
            .max(common.sites.div_ceil(fleet::CLIENT_SHARDS))
    } else {
        common.connections_per_client
    };
    let bin = find_binary(common.coordinator_bin.as_deref(), "fleetwave-coordinator")?;
    Fleet::up(
        dir,
        &bin,
        common.sites,
        &Tuning {
            poll_interval_secs: interval_secs.max(1),
            max_concurrent_requests: common.max_concurrent_requests,
            max_keepalive_connections: common.max_keepalive_connections,
            tick_millis: 200,
            postgres_url: common.postgres_url.clone(),
            replicas: common.replicas,
        },
        &fleet::ClientOptions {
            timeout: client_timeout,
            fresh_connections: common.fresh_connections,
            connections_per_client: per_client,
        },
        common.seed_via_import,
    )
    .await
}

/// Says how many `what` when some did; true when none did.
fn none_failed(failed: u64, what: &str) -> bool {
    if failed > 0 {
        eprintln!("{failed} {what}");
    }
    failed == 0
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    // The baseline server's stdout is its port, read by its parent.
    if !matches!(cli.command, Cmd::BaselineServer { .. }) {
        fleet::print_machine();
    }
    match cli.command {
        Cmd::Fleet {
            common,
            poll_interval,
            wait,
            duration,
            health_every,
            install,
            failure_rate,
            no_rollout,
            rollout_timeout,
        } => {
            let (dir, _tmp) = workdir(common.dir.clone())?;
            let fleet = fleet_up(
                &common,
                &dir,
                poll_interval.as_secs() as u32,
                Duration::from_secs(wait as u64 + 60),
                wait > 0,
            )
            .await?;
            let r = fleet::steady(
                fleet,
                fleet::SteadyOptions {
                    interval: poll_interval,
                    wait,
                    duration,
                    health_every,
                    executor: Executor {
                        install,
                        failure_rate,
                    },
                    rollout: !no_rollout,
                    rollout_timeout,
                },
            )
            .await?;
            Ok(r.errors == 0 && r.rollout_completed)
        }
        Cmd::LongPoll { common, wait } => {
            let (dir, _tmp) = workdir(common.dir.clone())?;
            let fleet = fleet_up(
                &common,
                &dir,
                60,
                Duration::from_secs(wait as u64 + 60),
                true,
            )
            .await?;
            Ok(fleet::long_poll(fleet, wait).await? == 0)
        }
        Cmd::Reports {
            common,
            batch,
            batches,
            concurrency,
        } => {
            let (dir, _tmp) = workdir(common.dir.clone())?;
            let fleet = fleet_up(&common, &dir, 60, Duration::from_secs(120), false).await?;
            fleet::reports(fleet, batch, batches, concurrency).await
        }
        Cmd::PollRatio {
            common,
            workers,
            seconds,
            full,
        } => {
            let (dir, _tmp) = workdir(common.dir.clone())?;
            let fleet = fleet_up(&common, &dir, 60, Duration::from_secs(60), false).await?;
            ratio::poll_ratio(fleet, workers, seconds, !full).await?;
            Ok(true)
        }
        Cmd::BaselineServer { config, canned } => {
            ratio::run_baseline_server(&config, &canned).await?;
            Ok(true)
        }
        Cmd::Connections {
            common,
            steps,
            hold,
        } => {
            let (dir, _tmp) = workdir(common.dir.clone())?;
            let fleet = fleet_up(&common, &dir, 60, Duration::from_secs(60), false).await?;
            let failed = connections::idle_connections(fleet, steps, hold).await?;
            Ok(none_failed(failed, "connections failed to open"))
        }
        Cmd::Handshakes {
            common,
            workers,
            seconds,
        } => {
            let (dir, _tmp) = workdir(common.dir.clone())?;
            let fleet = fleet_up(&common, &dir, 60, Duration::from_secs(60), false).await?;
            let failed = connections::handshake_cost(fleet, workers, seconds).await?;
            Ok(none_failed(failed, "polls failed"))
        }
        Cmd::Tick { sites, passes, dir } => {
            let (dir, _tmp) = workdir(dir)?;
            tick::pure(sites, passes)?;
            tick::engine(&dir, sites, passes).await?;
            Ok(true)
        }
        Cmd::Converge {
            sites,
            off,
            passes,
            dir,
        } => {
            let (dir, _tmp) = workdir(dir)?;
            converge::run(&dir, sites, off, passes).await?;
            Ok(true)
        }
        Cmd::Import {
            sites,
            dir,
            coordinator_bin,
        } => {
            let (dir, _tmp) = workdir(dir)?;
            let bin = find_binary(coordinator_bin.as_deref(), "fleetwave-coordinator")?;
            import::run(&dir, &bin, sites).await?;
            Ok(true)
        }
        Cmd::Analysis {
            sites,
            signals,
            passes,
            minutes,
            dir,
        } => {
            analysis::run(sites, signals, passes)?;
            let (dir, _tmp) = workdir(dir)?;
            analysis::engine(&dir, sites, signals, minutes, passes).await?;
            Ok(true)
        }
        Cmd::Safety {
            sites,
            runs,
            seed,
            class,
            dir,
            verbose,
        } => {
            let classes = if class.is_empty() {
                safety::Class::ALL.to_vec()
            } else {
                class
            };
            safety::run(&safety::Options {
                sites,
                runs,
                seed,
                classes,
                dir,
                verbose,
            })
            .await?;
            Ok(true)
        }
        Cmd::AgentIdle {
            minutes,
            interval,
            signals,
            agent_bin,
            coordinator_bin,
            dir,
        } => {
            let (dir, _tmp) = workdir(dir)?;
            let coordinator = find_binary(coordinator_bin.as_deref(), "fleetwave-coordinator")?;
            let agent = match agent_bin {
                Some(p) => p,
                None => {
                    let me = std::env::current_exe()?;
                    let release = me
                        .parent()
                        .and_then(Path::parent)
                        .map(|t| t.join("agent-release/fleetwave-agent"))
                        .filter(|p| p.is_file());
                    match release {
                        Some(p) => p,
                        None => find_binary(None, "fleetwave-agent").context(
                            "build it: cargo build --profile agent-release -p fleetwave-agent",
                        )?,
                    }
                }
            };
            agent_idle::agent_idle(&dir, &coordinator, &agent, minutes, interval, signals).await?;
            Ok(true)
        }
    }
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(Cli::parse())) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("fleetwave-sim: the run saw errors (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("60").unwrap_err().contains("unit"));
        assert!(parse_duration("6d").unwrap_err().contains("unknown unit"));
    }
}
