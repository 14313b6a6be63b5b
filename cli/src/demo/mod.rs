//! `fleetwave demo`: a whole fleet on this machine in one command — a coordinator on
//! 127.0.0.1 (TLS, SQLite in the demo dir), N real `fleetwave-agent` processes each managing
//! a small demo app, a good release through five waves, then a bad release that halts in
//! its first wave and rolls back — with live progress in the terminal.
//!
//! It drives the system only the way an operator would: the coordinator's `init` and
//! `serve`, the agents' `enroll` and `run`, and the operator API (the same client as the
//! other commands). It never reaches into a database. It wipes only a directory it created
//! itself (marked by `.fleetwave-demo`), and every process it starts stops with it.

mod fleet;
mod procs;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use fleetwave_shared::Envelope;
use fleetwave_shared::docs::RELEASE_TYPE;
use fleetwave_shared::protocol::operator::{self as api, paths};

use crate::api::Client;
use crate::api::rollouts::{Progress, tally_words};
use fleet::{DemoVersion, SiteDirs, SiteSpec};
use procs::{Guard, Proc, interrupted, nap};

pub const LONG_ABOUT: &str = "\
Run a whole fleetwave fleet on this machine, in one command.

  1. a coordinator on 127.0.0.1 (TLS with a local CA, SQLite and keys in --dir)
  2. N real fleetwave-agent processes (default 12): each a site with its own state dir,
     labels (region, city, cohort pig/canary/general/dog, tz) and a small demo app
  3. release demo-1.1.0 rolled out through five waves: pigs, the canary city (lyon), 25%
     of the rest, the rest, dogs last
  4. release demo-1.2.0, whose app fails its health check: it halts in its first wave,
     the pigs roll back to 1.1.0, and no other site ever sees it

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

/// The binaries the demo starts, next to this executable.
struct Bins {
    coordinator: PathBuf,
    agent: PathBuf,
    demo_app: PathBuf,
}

fn find_bins() -> Result<Bins> {
    let exe = std::env::current_exe().context("cannot find the fleetwave executable")?;
    let dir = exe
        .parent()
        .context("the fleetwave executable has no directory")?;
    let find = |name: &str| -> Result<PathBuf> {
        let p = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        if p.is_file() {
            Ok(p)
        } else {
            bail!(
                "{name} is not next to fleetwave (looked for {}): build every binary first with `cargo build --release --workspace --bins` (or without --release for target/debug)",
                p.display()
            )
        }
    };
    Ok(Bins {
        coordinator: find(COORDINATOR)?,
        agent: find(AGENT)?,
        demo_app: find(DEMO_APP)?,
    })
}

/// Wipes and recreates the demo dir, refusing any directory the demo did not create.
fn prepare_dir(dir: &Path, demo_app: &Path) -> Result<PathBuf> {
    if dir.exists() {
        let marked = dir.join(MARKER).is_file();
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_none();
        if marked {
            // A demo killed hard may have left its apps running; stop them first.
            procs::stop_demo_apps(dir, demo_app);
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("cannot remove the previous demo in {}", dir.display()))?;
        } else if !empty {
            bail!(
                "{} exists and was not created by `fleetwave demo` (no {MARKER} file in it); give another --dir or remove it yourself",
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        "created by `fleetwave demo`; the next run wipes this directory\n",
    )?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    for sub in ["logs", "releases", "sites"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    Ok(dir)
}

fn check_port(port: u16) -> Result<()> {
    match TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "port {port} on 127.0.0.1 is in use (another demo or coordinator still running?); stop it or pick another port with --port"
        ),
        Err(e) => bail!("cannot use port {port} on 127.0.0.1: {e}"),
    }
}

fn free_addr() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("no free port on 127.0.0.1")?;
    Ok(l.local_addr()?)
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

struct Site {
    spec: SiteSpec,
    app_addr: SocketAddr,
    agent: Option<Proc>,
}

/// Everything running; dropping it stops every process in order.
struct Demo {
    dir: PathBuf,
    bins: Bins,
    coordinator: Option<Proc>,
    sites: Vec<Site>,
    guard: Option<Guard>,
    client: Option<Client>,
    say: Say,
    /// Versions each site reported installed, ever (site → versions).
    seen_versions: BTreeMap<String, BTreeSet<String>>,
    last_versions: BTreeMap<String, String>,
    /// The rollout whose progress is printed while the demo waits, and its printer.
    watching: Option<(String, Progress)>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Demo {
    fn client(&self) -> &Client {
        self.client.as_ref().expect("connected before use")
    }

    /// Stops agents (SIGTERM, then SIGKILL after a grace period), the demo apps, then the
    /// coordinator; then lets the guard go. Idempotent.
    fn shutdown(&mut self) {
        let agents: Vec<&mut Proc> = self
            .sites
            .iter_mut()
            .filter_map(|s| s.agent.as_mut())
            .collect();
        if agents.is_empty() && self.coordinator.is_none() && self.guard.is_none() {
            return;
        }
        for a in agents {
            a.terminate();
        }
        for s in &mut self.sites {
            if let Some(mut a) = s.agent.take() {
                a.wait_or_kill(Duration::from_secs(10));
            }
        }
        procs::stop_demo_apps(&self.dir, &self.bins.demo_app);
        if let Some(mut c) = self.coordinator.take() {
            c.terminate();
            c.wait_or_kill(Duration::from_secs(15));
        }
        if let Some(g) = self.guard.take() {
            g.finish();
        }
    }

    fn check_coordinator(&mut self) -> Result<()> {
        if let Some(c) = self.coordinator.as_mut()
            && let Some(status) = c.exited()
        {
            let tail = c.log_tail(10);
            let log = c.log.display().to_string();
            self.coordinator = None;
            bail!("the coordinator stopped ({status}); the end of {log}:\n{tail}");
        }
        Ok(())
    }

    fn check_agents(&mut self) {
        let mut died = Vec::new();
        for s in &mut self.sites {
            if let Some(a) = s.agent.as_mut()
                && let Some(status) = a.exited()
            {
                died.push(format!(
                    "agent of {} stopped ({status}); see {}",
                    s.spec.id,
                    a.log.display()
                ));
                s.agent = None;
            }
        }
        for d in died {
            self.say.line(format!("WARNING: {d}"));
        }
    }

    fn start_coordinator(&mut self, port: u16) -> Result<(String, String, PathBuf, PathBuf)> {
        let cdir = self.dir.join("coordinator");
        let log = self.dir.join("logs").join("coordinator.log");
        let mut init = Command::new(&self.bins.coordinator);
        init.arg("init")
            .arg("--dir")
            .arg(&cdir)
            .arg("--dev-root")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"));
        procs::run_logged("fleetwave-coordinator init", init, &log)?;
        let config = cdir.join("coordinator.toml");
        // A demo-sized fleet on one machine: agents come back every second (their long
        // polls still hear of a new wave at once) and the controller ticks twice a second.
        let mut text = std::fs::read_to_string(&config)
            .with_context(|| format!("cannot read {}", config.display()))?;
        text.push_str(
            "\n# Added by `fleetwave demo`: a small fleet that moves fast.\n[poll]\ninterval_secs = 1\njitter_percent = 20\n\n[controller]\ntick_millis = 500\n",
        );
        std::fs::write(&config, text)?;
        let mut cmd = Command::new(&self.bins.coordinator);
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .env("FLEETWAVE_LOG", "info")
            .current_dir(&cdir);
        self.coordinator = Some(Proc::spawn("coordinator", cmd, &log)?);
        let token = std::fs::read_to_string(cdir.join("admin.token"))
            .context("cannot read the admin token init wrote")?
            .trim()
            .to_string();
        let url = format!("https://127.0.0.1:{port}");
        let ca = cdir.join("tls").join("ca.pem");
        self.client = Some(Client::new(&url, &token, Some(&ca))?);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.check_coordinator()?;
            match self
                .client()
                .get::<api::SiteList>(&format!("{}?limit=1", paths::SITES))
            {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    bail!("the coordinator did not answer within 60 s: {e:#}")
                }
                Err(_) => {}
            }
            if nap(Duration::from_millis(200)) {
                return Ok((url, token, ca, cdir));
            }
        }
        Ok((url, token, ca, cdir))
    }

    fn publish_releases(&self, cdir: &Path) -> Result<Vec<(DemoVersion, api::ReleaseInfo)>> {
        let key = fleetwave_shared::keys::read_private_key(
            &cdir.join("offline-keys").join("release.key"),
        )?;
        let rel_dir = self.dir.join("releases");
        let mut out = Vec::new();
        for v in fleet::versions() {
            let artifact = v.write_artifact(&rel_dir)?;
            let (length, sha) = crate::manifest::hash_file(&artifact)?;
            let info: api::ArtifactInfo = self
                .client()
                .put_file(&format!("/v1/artifacts/{sha}"), &artifact)?;
            let manifest_path = rel_dir.join(format!("{}.toml", v.release_id()));
            std::fs::write(&manifest_path, v.manifest(&artifact))?;
            let release = crate::manifest::load(&manifest_path, jiff::Timestamp::now())?;
            let payload = serde_json::to_vec(&release)?;
            let envelope = Envelope::sign(RELEASE_TYPE, &payload, &[&key]);
            std::fs::write(
                rel_dir.join(format!("{}.envelope.json", v.release_id())),
                serde_json::to_vec_pretty(&envelope)?,
            )?;
            let published: api::ReleaseInfo = self.client().post(paths::RELEASES, &envelope)?;
            self.say.line(format!(
                "published {} (app {}, {}): artifact {} bytes at {}, signed with the dev release key",
                published.id,
                v.version,
                if v.healthy { "healthy" } else { "FAILS its health check" },
                length,
                info.url
            ));
            out.push((v, published));
        }
        Ok(out)
    }

    fn start_sites(&mut self, n: usize, url: &str, ca: &Path, root: &Path) -> Result<()> {
        let seed = &fleet::versions()[0];
        for spec in fleet::sites(n) {
            if interrupted() {
                return Ok(());
            }
            let dirs = SiteDirs::new(&self.dir, &spec.id);
            for d in [&dirs.state, &dirs.apps, &dirs.staging, &dirs.seed] {
                std::fs::create_dir_all(d)?;
            }
            let app_addr = free_addr()?;
            // The app the box ran before fleetwave managed it: 1.0.0, healthy.
            std::fs::write(dirs.seed.join("app.toml"), seed.app_toml())?;
            let mut start_app = Command::new(&self.bins.demo_app);
            start_app
                .arg("restart")
                .arg("--dir")
                .arg(&dirs.seed)
                .arg("--listen")
                .arg(app_addr.to_string())
                .arg("--pid-file")
                .arg(&dirs.pid_file)
                .arg("--log")
                .arg(&dirs.app_log);
            procs::run_logged(
                &format!("the demo app of {}", spec.id),
                start_app,
                &dirs.app_log,
            )?;
            std::fs::write(
                &dirs.config,
                fleet::agent_config(&fleet::AgentSetup {
                    site: &spec,
                    dirs: &dirs,
                    url,
                    ca,
                    root,
                    demo_app: &self.bins.demo_app,
                    app_addr,
                }),
            )?;
            let token: api::EnrollmentTokenCreated = self.client().post(
                paths::ENROLLMENT_TOKENS,
                &api::CreateEnrollmentToken {
                    labels: spec.labels.clone(),
                    site_id: Some(spec.id.clone()),
                    expires_in_secs: Some(3600),
                    uses: Some(1),
                },
            )?;
            let log = self.dir.join("logs").join(format!("agent-{}.log", spec.id));
            let mut enroll = Command::new(&self.bins.agent);
            enroll
                .arg("--config")
                .arg(&dirs.config)
                .arg("enroll")
                .arg("--token")
                .arg(&token.token)
                .current_dir(&dirs.root);
            procs::run_logged(
                &format!("fleetwave-agent enroll ({})", spec.id),
                enroll,
                &log,
            )?;
            let mut run = Command::new(&self.bins.agent);
            run.arg("--config")
                .arg(&dirs.config)
                .arg("run")
                .env("FLEETWAVE_LOG", "info")
                .current_dir(&dirs.root);
            let agent = Proc::spawn(&format!("agent {}", spec.id), run, &log)?;
            self.say.line(format!(
                "site {:<10} enrolled, agent pid {:<7} app 1.0.0 on {}  ({})",
                spec.id,
                agent.pid(),
                app_addr,
                crate::api::output::labels(&spec.labels)
            ));
            self.sites.push(Site {
                spec,
                app_addr,
                agent: Some(agent),
            });
        }
        Ok(())
    }

    fn all_sites(&self) -> Result<Vec<api::SiteInfo>> {
        let list: api::SiteList = self.client().get(&format!("{}?limit=1000", paths::SITES))?;
        Ok(list.sites)
    }

    /// Records what every site reports installed; prints the changes in one line.
    fn observe_versions(&mut self) -> Result<()> {
        let sites = self.all_sites()?;
        let mut changes = Vec::new();
        for s in &sites {
            let Some(v) = s
                .installed
                .get(fleet::STREAM)
                .and_then(|i| i.version.clone())
            else {
                continue;
            };
            self.seen_versions
                .entry(s.id.clone())
                .or_default()
                .insert(v.clone());
            if self.last_versions.get(&s.id) != Some(&v) {
                let from = self
                    .last_versions
                    .get(&s.id)
                    .cloned()
                    .unwrap_or_else(|| "1.0.0".into());
                changes.push(format!("{} {from}→{v}", s.id));
                self.last_versions.insert(s.id.clone(), v);
            }
        }
        if !changes.is_empty() {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for s in &self.sites {
                let v = self
                    .last_versions
                    .get(&s.spec.id)
                    .cloned()
                    .unwrap_or_else(|| "1.0.0".into());
                *counts.entry(v).or_default() += 1;
            }
            let fleet: Vec<String> = counts.iter().map(|(v, n)| format!("{v} ×{n}")).collect();
            self.say.line(format!(
                "versions  {}   [fleet: {}]",
                changes.join(", "),
                fleet.join(", ")
            ));
        }
        Ok(())
    }

    /// Prints what changed in the rollout being watched, if any.
    fn watch_rollout(&mut self) -> Result<()> {
        let Some((id, mut progress)) = self.watching.take() else {
            return Ok(());
        };
        let view = self.rollout_view(&id);
        if let Ok(view) = &view {
            for line in progress.update(view) {
                self.say.line(line);
            }
        }
        self.watching = Some((id, progress));
        view.map(|_| ())
    }

    fn rollout_view(&self, id: &str) -> Result<api::RolloutView> {
        self.client().get(&format!("{}/{id}", paths::ROLLOUTS))
    }

    /// Creates and starts a rollout from the plan file, then prints progress until its
    /// status leaves `running` (or `deadline` passes). Returns the last view, or None when
    /// interrupted.
    fn run_rollout(
        &mut self,
        plan_path: &Path,
        deadline: Duration,
    ) -> Result<Option<api::RolloutView>> {
        let created = crate::api::rollouts::create_from_file(self.client(), plan_path)?;
        let waves: Vec<String> = created
            .waves
            .iter()
            .map(|w| format!("{} {} ({} sites)", w.index, w.name, w.tally.sites))
            .collect();
        self.say.line(format!(
            "rollout   {} created for {}: waves {}",
            created.id,
            created.release_id,
            waves.join(" → ")
        ));
        let _: api::RolloutView = self.client().post(
            &format!("{}/{}/start", paths::ROLLOUTS, created.id),
            &serde_json::json!({}),
        )?;
        self.watching = Some((created.id.clone(), Progress::default()));
        let end = Instant::now() + deadline;
        loop {
            self.check_coordinator()?;
            self.check_agents();
            self.watch_rollout()?;
            let view = self.rollout_view(&created.id)?;
            self.observe_versions()?;
            let done = !matches!(
                view.status,
                api::RolloutStatus::Pending | api::RolloutStatus::Running
            );
            if done || Instant::now() > end {
                return Ok(Some(view));
            }
            if nap(Duration::from_millis(700)) {
                return Ok(None);
            }
        }
    }

    /// Waits until every site reports `version` installed (printing changes), or `deadline`.
    fn settle(&mut self, version: &str, deadline: Duration) -> Result<Option<bool>> {
        let end = Instant::now() + deadline;
        loop {
            self.check_coordinator()?;
            self.observe_versions()?;
            self.watch_rollout()?;
            // Done when every site reports it and every app really serves it (an app may
            // still be serving a release its agent is about to roll back).
            let reported = self
                .sites
                .iter()
                .all(|s| self.last_versions.get(&s.spec.id).map(String::as_str) == Some(version));
            if reported && self.served_versions().values().all(|v| v == version) {
                return Ok(Some(true));
            }
            if Instant::now() > end {
                return Ok(Some(false));
            }
            if nap(Duration::from_millis(700)) {
                return Ok(None);
            }
        }
    }

    /// What each demo app itself serves at /version.
    fn served_versions(&self) -> BTreeMap<String, String> {
        self.sites
            .iter()
            .map(|s| {
                (
                    s.spec.id.clone(),
                    http_version(s.app_addr).unwrap_or_else(|| "not answering".into()),
                )
            })
            .collect()
    }
}

/// `GET /version` from a demo app (plain HTTP on loopback).
fn http_version(addr: SocketAddr) -> Option<String> {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET /version HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.split_whitespace()
        .nth(1)
        .filter(|c| *c == "200")
        .map(|_| body.trim().to_string())
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

enum Outcome {
    Interrupted,
    /// The story ran; Err says what did not go as expected.
    Done(std::result::Result<(), String>),
}

fn story(demo: &mut Demo, args: &DemoArgs) -> Result<Outcome> {
    let say_dir = demo.dir.display().to_string();
    demo.say.line(format!("fleetwave demo in {say_dir}"));
    let (url, token, ca, cdir) = demo.start_coordinator(args.port)?;
    if interrupted() {
        return Ok(Outcome::Interrupted);
    }
    let profile = demo.dir.join("cli.toml");
    std::fs::write(
        &profile,
        format!(
            "# fleetwave CLI profile for this demo: FLEETWAVE_PROFILE={} fleetwave site list\nurl = {:?}\ntoken_file = {:?}\nca = {:?}\n",
            profile.display(),
            url,
            cdir.join("admin.token").display().to_string(),
            ca.display().to_string()
        ),
    )?;
    println!();
    println!(
        "  dashboard:       {url}/   (the browser must trust {})",
        ca.display()
    );
    println!("  operator token:  {token}   (admin)");
    println!(
        "  CLI:             export FLEETWAVE_PROFILE={}",
        profile.display()
    );
    println!("                   fleetwave site list; fleetwave rollout list");
    println!("  logs:            {}", demo.dir.join("logs").display());
    println!("  stop:            Ctrl-C");
    println!();
    demo.say.line(format!(
        "coordinator up on {url} (TLS, SQLite in {}, dev root and release keys in {})",
        cdir.join("data").display(),
        cdir.join("offline-keys").display()
    ));
    let releases = demo.publish_releases(&cdir)?;
    let root = cdir.join("root.1.json");
    demo.start_sites(args.sites, &url, &ca, &root)?;
    if interrupted() {
        return Ok(Outcome::Interrupted);
    }
    // Every agent has talked to the coordinator.
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        demo.check_coordinator()?;
        demo.check_agents();
        let seen = demo
            .all_sites()?
            .iter()
            .filter(|s| s.last_seen.is_some())
            .count();
        if seen >= demo.sites.len() {
            break;
        }
        if Instant::now() > end {
            return Ok(Outcome::Done(Err(format!(
                "only {seen} of {} agents reached the coordinator within 2 minutes; see {}",
                demo.sites.len(),
                demo.dir.join("logs").display()
            ))));
        }
        if nap(Duration::from_millis(300)) {
            return Ok(Outcome::Interrupted);
        }
    }
    demo.say.line(format!(
        "all {} agents are polling; every site runs app 1.0.0",
        demo.sites.len()
    ));

    // Act 1: the good release through five waves.
    let good = &releases[1].0;
    let bad = &releases[2].0;
    let plans = demo.dir.join("releases");
    let good_plan = plans.join(format!("rollout-{}.toml", good.version));
    std::fs::write(
        &good_plan,
        fleet::plan(
            &good.release_id(),
            &format!("demo {} to every store", good.version),
        ),
    )?;
    demo.say.blank();
    demo.say.line(format!(
        "=== act 1: {} (healthy) through pigs → canary city → 25% → the rest → dogs",
        good.release_id()
    ));
    let Some(good_view) = demo.run_rollout(&good_plan, Duration::from_secs(600))? else {
        return Ok(Outcome::Interrupted);
    };
    let Some(good_everywhere) = demo.settle(good.version, Duration::from_secs(60))? else {
        return Ok(Outcome::Interrupted);
    };

    // Act 2: the bad release; it must halt in its first wave and roll back.
    let bad_plan = plans.join(format!("rollout-{}.toml", bad.version));
    std::fs::write(
        &bad_plan,
        fleet::plan(
            &bad.release_id(),
            &format!("demo {} to every store", bad.version),
        ),
    )?;
    demo.say.blank();
    demo.say.line(format!(
        "=== act 2: {} (its app fails its health check), same waves, auto_rollback = true",
        bad.release_id()
    ));
    let Some(bad_view) = demo.run_rollout(&bad_plan, Duration::from_secs(300))? else {
        return Ok(Outcome::Interrupted);
    };
    demo.say
        .line("waiting for the first wave's sites to be back on 1.1.0");
    let Some(back) = demo.settle(good.version, Duration::from_secs(120))? else {
        return Ok(Outcome::Interrupted);
    };
    let bad_view = demo.rollout_view(&bad_view.id)?;
    let served = demo.served_versions();
    let verdict = judge(
        demo,
        &good_view,
        good_everywhere,
        &bad_view,
        back,
        &served,
        bad.version,
    );
    summary(demo, &url, &token, &good_view, &bad_view, &served, &verdict);
    Ok(Outcome::Done(verdict))
}

/// Did the story happen as it should? Every failed expectation, in one message.
fn judge(
    demo: &Demo,
    good: &api::RolloutView,
    good_everywhere: bool,
    bad: &api::RolloutView,
    back: bool,
    served: &BTreeMap<String, String>,
    bad_version: &str,
) -> std::result::Result<(), String> {
    let mut wrong = Vec::new();
    if good.status != api::RolloutStatus::Completed {
        wrong.push(format!(
            "the good rollout {} is {} ({}), not completed",
            good.id,
            good.status.as_str(),
            good.status_reason.as_deref().unwrap_or("")
        ));
    }
    if !good_everywhere {
        wrong.push("not every site reported 1.1.0 after the good rollout".to_string());
    }
    if !matches!(
        bad.status,
        api::RolloutStatus::Halted | api::RolloutStatus::RolledBack
    ) {
        wrong.push(format!(
            "the bad rollout {} is {}, not halted",
            bad.id,
            bad.status.as_str()
        ));
    }
    let opened_later = bad
        .waves
        .iter()
        .filter(|w| w.index > 0 && w.opened_at.is_some())
        .map(|w| w.name.clone())
        .collect::<Vec<_>>();
    if !opened_later.is_empty() {
        wrong.push(format!(
            "the bad rollout opened later waves: {opened_later:?}"
        ));
    }
    // The view lists only the sites that need attention: the later waves' sites (pending,
    // as they must be) are read from the rollout's site list.
    let bad_sites = crate::api::rollouts::all_sites(demo.client(), &bad.id, None, None)
        .unwrap_or_else(|e| {
            wrong.push(format!("cannot list the sites of {}: {e:#}", bad.id));
            Vec::new()
        });
    for s in bad_sites.iter().filter(|s| s.wave > 0) {
        if s.phase.is_some() {
            wrong.push(format!(
                "{} (wave {}) started on the bad release (phase {:?})",
                s.site_id, s.wave, s.phase
            ));
        }
        if demo
            .seen_versions
            .get(&s.site_id)
            .is_some_and(|v| v.contains(bad_version))
        {
            wrong.push(format!(
                "{} (wave {}) installed {bad_version}",
                s.site_id, s.wave
            ));
        }
    }
    if !back {
        wrong.push("not every site reported 1.1.0 after the rollback".to_string());
    }
    let off: Vec<String> = served
        .iter()
        .filter(|(_, v)| v.as_str() != "1.1.0")
        .map(|(s, v)| format!("{s} serves {v}"))
        .collect();
    if !off.is_empty() {
        wrong.push(format!("apps not on 1.1.0: {}", off.join(", ")));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}

fn summary(
    demo: &Demo,
    url: &str,
    token: &str,
    good: &api::RolloutView,
    bad: &api::RolloutView,
    served: &BTreeMap<String, String>,
    verdict: &std::result::Result<(), String>,
) {
    let say = &demo.say;
    say.blank();
    say.line("=== summary");
    for v in [good, bad] {
        say.line(format!(
            "rollout {} ({}): {}{}",
            v.id,
            v.release_id,
            v.status.as_str(),
            v.status_reason
                .as_deref()
                .map(|r| format!(" — {r}"))
                .unwrap_or_default()
        ));
        for w in &v.waves {
            say.line(format!(
                "    wave {} {:<12} {}",
                w.index,
                w.name,
                match (w.opened_at, w.tally.sites) {
                    (Some(_), _) => tally_words(&w.tally),
                    (None, 0) => "never opened".to_string(),
                    (None, n) => format!("never opened: its {n} site(s) never saw the release"),
                }
            ));
        }
    }
    let mut by_version: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (site, v) in served {
        by_version
            .entry(v.as_str())
            .or_default()
            .push(site.as_str());
    }
    for (v, sites) in &by_version {
        say.line(format!(
            "apps serving {v}: {} ({})",
            sites.len(),
            sites.join(" ")
        ));
    }
    match verdict {
        Ok(()) => say.line(
            "as expected: 1.1.0 reached every site wave by wave; 1.2.0 halted in its first wave, rolled back, and no later site ever installed it",
        ),
        Err(e) => say.line(format!("NOT as expected: {e}")),
    }
    say.line(format!("dashboard {url}/  operator token {token}"));
    say.line(format!(
        "timelines: fleetwave rollout status {} (or {}) with FLEETWAVE_PROFILE={}",
        good.id,
        bad.id,
        demo.dir.join("cli.toml").display()
    ));
}
