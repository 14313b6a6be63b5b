//! `fleetwave demo`: a whole fleet on this machine in one command — a coordinator on
//! 127.0.0.1 (TLS, SQLite in the demo dir), N real `fleetwave-agent` processes each managing
//! a small demo app, a good release through five waves, then a bad release that halts in
//! its first wave and rolls back, then a release that stays healthy but serves worse, which
//! the golden-signal analysis halts in its first wave — with live progress in the terminal.
//!
//! It drives the system only the way an operator would: the coordinator's `init` and
//! `serve`, the agents' `enroll` and `run`, and the operator API (the same client as the
//! other commands). It never reaches into a database. It wipes only a directory it created
//! itself (marked by `.fleetwave-demo`), and every process it starts stops with it.

mod fleet;
mod launch;
mod procs;
mod story;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;

use launch::{Demo, check_port, find_bins, prepare_dir};
use procs::{Guard, interrupted, nap};
use story::{Outcome, story};

pub const LONG_ABOUT: &str = "\
Run a whole fleetwave fleet on this machine, in one command.

  1. a coordinator on 127.0.0.1 (TLS with a local CA, SQLite and keys in --dir)
  2. N real fleetwave-agent processes (default 12): each a site with its own state dir,
     labels (region, city, cohort pig/canary/general/dog, tz) and a small demo app
  3. release demo-1.1.0 rolled out through five waves: pigs, the canary city (lyon), 25%
     of the rest, the rest, dogs last
  4. release demo-1.2.0, whose app fails its health check: it halts in its first wave,
     the pigs roll back to 1.1.0, and no other site ever sees it
  5. release demo-1.3.0, whose app answers its health check but fails more requests and
     answers slower: the golden-signal analysis (error ratio, p95 latency; the agents
     scrape the apps' /metrics) compares the first wave with the sites still on 1.1.0
     and halts it there, naming the signals and by how much (a few minutes: signals are
     per minute)

Progress is printed as it happens; the dashboard URL and an operator token come first.
When the story is done the fleet keeps running (look around with the dashboard or the
other fleetwave commands) until Ctrl-C, which stops every process it started.

It needs fleetwave-coordinator, fleetwave-agent and fleetwave-demo-app next to this
executable: cargo build --release --workspace --bins. Run it as often as you like: the
demo dir is wiped and recreated each time (only a dir the demo created itself).";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many sites (agents), 4 to 60.
    #[arg(long, default_value_t = 12)]
    pub sites: usize,
    /// The demo's directory (coordinator, sites, logs); wiped and recreated on each run.
    #[arg(long, default_value = "demo-data")]
    pub dir: PathBuf,
    /// The coordinator's port on 127.0.0.1.
    #[arg(long, default_value_t = 8443)]
    pub port: u16,
    /// Exit after the story: 0 if it went as expected, 1 if not.
    #[arg(long)]
    pub exit_when_done: bool,
    /// How many acts: 2 stops after the unhealthy release (about a minute); 3 adds the
    /// release that degrades without failing, halted by the golden-signal analysis (a few
    /// minutes more: signals come per minute).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=3))]
    pub acts: u8,
}

#[derive(Debug, Args)]
pub struct GuardArgs {
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long)]
    pub demo_app: PathBuf,
}

/// The story did not happen as expected (exit code 1 with `--exit-when-done`).
#[derive(Debug, thiserror::Error)]
#[error("the story did not go as expected: {0}")]
pub struct StoryFailed(pub String);

const MARKER: &str = ".fleetwave-demo";
const COORDINATOR: &str = "fleetwave-coordinator";
const AGENT: &str = "fleetwave-agent";
const DEMO_APP: &str = "fleetwave-demo-app";

pub fn guard(args: GuardArgs) -> Result<()> {
    procs::guard_main(&args.dir, &args.demo_app)
}

/// Prints one progress line, prefixed with the seconds since the demo started.
struct Say {
    start: Instant,
}

impl Say {
    fn line(&self, text: impl AsRef<str>) {
        let secs = self.start.elapsed().as_secs();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "[{:>2}:{:02}] {}", secs / 60, secs % 60, text.as_ref());
        let _ = out.flush();
    }

    fn blank(&self) {
        println!();
    }
}

pub fn run(args: DemoArgs) -> Result<()> {
    if !(4..=60).contains(&args.sites) {
        bail!("--sites {} is out of range: give 4 to 60 sites", args.sites);
    }
    let bins = find_bins()?;
    check_port(args.port)?;
    procs::catch_signals();
    let dir = prepare_dir(&args.dir, &bins.demo_app)?;
    let guard = Guard::start(&dir, &bins.demo_app, &dir.join("logs").join("guard.log"))?;
    let mut demo = Demo {
        dir: dir.clone(),
        bins,
        coordinator: None,
        sites: Vec::new(),
        guard: Some(guard),
        client: None,
        say: Say {
            start: Instant::now(),
        },
        seen_versions: BTreeMap::new(),
        last_versions: BTreeMap::new(),
        watching: None,
    };
    let result = story(&mut demo, &args);
    match result {
        Ok(Outcome::Interrupted) => {
            demo.say
                .line("interrupted: stopping every agent, app and the coordinator");
            demo.shutdown();
            demo.say.line("stopped");
            Ok(())
        }
        Ok(Outcome::Done(verdict)) => {
            if args.exit_when_done {
                demo.say.line("--exit-when-done: stopping everything");
                demo.shutdown();
                return verdict.map_err(|e| StoryFailed(e).into());
            }
            demo.say.blank();
            demo.say.line(
                "the fleet keeps running: look around with the dashboard or the CLI; Ctrl-C stops everything",
            );
            while !nap(Duration::from_secs(1)) {
                if let Err(e) = demo.check_coordinator() {
                    demo.shutdown();
                    return Err(e);
                }
                demo.check_agents();
            }
            demo.say
                .line("Ctrl-C: stopping every agent, app and the coordinator");
            demo.shutdown();
            demo.say.line("stopped");
            Ok(())
        }
        Err(e) => {
            if interrupted() {
                demo.shutdown();
                return Ok(());
            }
            demo.say.line(format!("failed: {e:#}"));
            demo.say.line(format!(
                "logs are in {}; stopping everything",
                dir.join("logs").display()
            ));
            demo.shutdown();
            Err(e)
        }
    }
}
