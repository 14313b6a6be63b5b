//! Launching the demo fleet: finding the binaries, the demo directory, the coordinator
//! (`init`, `serve`), the releases, and one enrolled agent with its demo app per site;
//! stopping everything in order. What the demo then shows is in [`super::story`].

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use fleetwave_shared::Envelope;
use fleetwave_shared::docs::RELEASE_TYPE;
use fleetwave_shared::protocol::operator::{self as api, paths};

use fleetwave_launch::{AgentConfig, AgentTuning, LocalCoordinator, LocalSite};

use super::fleet::{self, DemoVersion, SiteSpec};
use super::procs::{self, Guard, Proc, interrupted, nap};
use super::{AGENT, COORDINATOR, DEMO_APP, MARKER, Say};
use crate::api::Client;
use crate::api::rollouts::Progress;

/// The binaries the demo starts, next to this executable.
pub(super) use fleetwave_launch::Bins;

pub(super) fn find_bins() -> Result<Bins> {
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
pub(super) fn prepare_dir(dir: &Path, demo_app: &Path) -> Result<PathBuf> {
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

pub(super) fn check_port(port: u16) -> Result<()> {
    match TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "port {port} on 127.0.0.1 is in use (another demo or coordinator still running?); stop it or pick another port with --port"
        ),
        Err(e) => bail!("cannot use port {port} on 127.0.0.1: {e}"),
    }
}

pub(super) fn free_addr() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("no free port on 127.0.0.1")?;
    Ok(l.local_addr()?)
}

pub(super) struct Site {
    pub(super) spec: SiteSpec,
    pub(super) app_addr: SocketAddr,
    pub(super) agent: Option<Proc>,
}

/// Everything running; dropping it stops every process in order.
pub(super) struct Demo {
    pub(super) dir: PathBuf,
    pub(super) bins: Bins,
    pub(super) coordinator: Option<Proc>,
    pub(super) sites: Vec<Site>,
    pub(super) guard: Option<Guard>,
    pub(super) client: Option<Client>,
    pub(super) say: Say,
    /// Versions each site reported installed, ever (site → versions).
    pub(super) seen_versions: BTreeMap<String, BTreeSet<String>>,
    pub(super) last_versions: BTreeMap<String, String>,
    /// The rollout whose progress is printed while the demo waits, and its printer.
    pub(super) watching: Option<(String, Progress)>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Demo {
    pub(super) fn client(&self) -> &Client {
        self.client.as_ref().expect("connected before use")
    }

    /// Stops agents (SIGTERM, then SIGKILL after a grace period), the demo apps, then the
    /// coordinator; then lets the guard go. Idempotent.
    pub(super) fn shutdown(&mut self) {
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

    pub(super) fn check_coordinator(&mut self) -> Result<()> {
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

    pub(super) fn check_agents(&mut self) {
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

    pub(super) fn start_coordinator(
        &mut self,
        port: u16,
    ) -> Result<(String, String, PathBuf, PathBuf)> {
        let local = LocalCoordinator {
            dir: self.dir.join("coordinator"),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let cdir = local.dir.clone();
        let log = self.dir.join("logs").join("coordinator.log");
        procs::run_logged(
            "fleetwave-coordinator init",
            local.init(&self.bins).command(),
            &log,
        )?;
        // A demo-sized fleet on one machine: agents come back every second (their long
        // polls still hear of a new wave at once) and the controller ticks twice a second.
        local
            .tune("\n# Added by `fleetwave demo`: a small fleet that moves fast.\n[poll]\ninterval_secs = 1\njitter_percent = 20\n\n[controller]\ntick_millis = 500\n")
            .with_context(|| format!("cannot tune {}", local.config().display()))?;
        self.coordinator = Some(Proc::spawn(
            "coordinator",
            local.serve(&self.bins, "info").command(),
            &log,
        )?);
        let token = local
            .admin_token()
            .context("cannot read the admin token init wrote")?;
        let url = local.url();
        let ca = local.ca();
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

    pub(super) fn publish_releases(
        &self,
        cdir: &Path,
    ) -> Result<Vec<(DemoVersion, api::ReleaseInfo)>> {
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
                v.words(),
                length,
                info.url
            ));
            out.push((v, published));
        }
        Ok(out)
    }

    pub(super) fn start_sites(
        &mut self,
        n: usize,
        url: &str,
        ca: &Path,
        root: &Path,
    ) -> Result<()> {
        let seed = &fleet::versions()[0];
        for spec in fleet::sites(n) {
            if interrupted() {
                return Ok(());
            }
            let site = LocalSite {
                id: spec.id.clone(),
                labels: spec.labels.clone(),
                root: self.dir.join("sites").join(&spec.id),
                app_addr: free_addr()?,
            };
            site.create_dirs()?;
            let app_addr = site.app_addr;
            // The app the box ran before fleetwave managed it: 1.0.0, healthy.
            procs::run_logged(
                &format!("the demo app of {}", spec.id),
                site.seed_app(&self.bins, seed.version)?.command(),
                &site.app_log(),
            )?;
            std::fs::write(
                site.config(),
                site.agent_config(
                    &self.bins,
                    &AgentConfig {
                        written_by: "`fleetwave demo`",
                        url,
                        also: &[],
                        ca,
                        root,
                        tuning: AgentTuning {
                            wait_secs: 5,
                            jitter: 0.1,
                            backoff_max_secs: 5,
                            probe_name: "demo-app",
                        },
                        app_labels: false,
                        extra: &fleet::signals_config(app_addr),
                    },
                ),
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
            procs::run_logged(
                &format!("fleetwave-agent enroll ({})", spec.id),
                site.enroll(&self.bins, &token.token).command(),
                &log,
            )?;
            let agent = Proc::spawn(
                &format!("agent {}", spec.id),
                site.run(&self.bins, "info").command(),
                &log,
            )?;
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

    pub(super) fn all_sites(&self) -> Result<Vec<api::SiteInfo>> {
        let list: api::SiteList = self.client().get(&format!("{}?limit=1000", paths::SITES))?;
        Ok(list.sites)
    }

    /// What each demo app itself serves at /version.
    pub(super) fn served_versions(&self) -> BTreeMap<String, String> {
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
pub(super) fn http_version(addr: SocketAddr) -> Option<String> {
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
