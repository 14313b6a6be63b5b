//! A running test fleet: one real `fleetwave-coordinator` and one real `fleetwave-agent`
//! per site, on 127.0.0.1, each site with its own state directory and its own demo app.
//!
//! [`Fleet::start`] does what an operator does on a fresh machine: `coordinator init
//! --dev-root`, `coordinator serve`, one enrollment token per site (carrying the site's
//! labels), `agent enroll`, `agent run`. Everything is tuned for tests through the
//! documented configuration keys only (one-second polls, a short verify period, checks that
//! a busy CI machine cannot fail). [`Fleet::publish`] builds, signs (with the real
//! `fleetwave release sign`) and publishes a demo app release; [`Fleet::rollout`] creates
//! and starts a rollout from a [`PlanSpec`].
//!
//! This module must never fake a part of fleetwave: if a step needs a binary or an API,
//! it uses the real one, and a missing one is an error naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetwave_shared::Envelope;
use fleetwave_shared::protocol::operator::{self as api, RolloutStatus};

use crate::bins;
use crate::error::{HarnessError, Result};
use fleetwave_launch::{AgentConfig, AgentTuning, LocalCoordinator, LocalSite};

use crate::fleet::{FleetDirs, FleetSpec, SiteDirs, SiteSpec};
use crate::operator::Operator;
use crate::plan::PlanSpec;
use crate::process::{Process, Spawn};
use crate::proxy::FaultProxy;
use crate::release::{CommandRelease, DEMO_STREAM, DemoRelease};
use crate::stand_in_k3s::K3sRelease;
use crate::{eventually_default, free_port};

/// Test tuning appended to the coordinator's generated config (documented keys only).
pub const COORDINATOR_TUNING: &str = "
# --- fleetwave e2e tuning: fast polls and ticks ---
[poll]
interval_secs = 1
jitter_percent = 0

[controller]
tick_millis = 200
";

/// How a fleet is started.
#[derive(Debug, Clone, Default)]
pub struct FleetOptions {
    /// Sites whose agent reaches the coordinator through its own [`FaultProxy`].
    pub proxied: BTreeSet<String>,
    /// Extra TOML appended to every agent's config; `{app_addr}` stands for the site's
    /// demo app address (e.g. in a `[signals.demo]` scrape URL), `{site_root}` for the
    /// entry's directory and `{box_id}` for its box id (its entry id if it is no box).
    pub agent_extra: String,
    /// Sites that are enrolled but whose agent is not started (start with
    /// [`Fleet::start_agent`]).
    pub not_started: BTreeSet<String>,
    /// Sites that are neither enrolled nor started at first (a store that opens later:
    /// [`Fleet::enroll_late`]).
    pub enroll_later: BTreeSet<String>,
    /// Extra TOML appended to the coordinator's config (documented keys only), e.g. an
    /// `[artifacts]` section.
    pub coordinator_extra: String,
    /// A CA certificate (PEM) added to the bundle every agent pins, besides the
    /// coordinator's (e.g. the object store's, so agents can follow presigned URLs).
    pub agent_extra_ca: Option<PathBuf>,
    /// Sites whose agents form one peer cache (`[peers]`): each listens on its own
    /// loopback port and lists the others, as the boxes of one store would.
    pub peer_cache: BTreeSet<String>,
    /// Fleet entries that are boxes of a site of several boxes, by entry id: the entry's
    /// agent enrolls into that site with its own `[box]` id and role (its own directories,
    /// demo app and device key, as a machine of the store would have).
    pub boxes: BTreeMap<String, BoxOf>,
    /// More coordinator processes beside the first (replicas on the same configuration,
    /// for a fleet whose `coordinator_extra` puts the state in PostgreSQL). They start
    /// once the first is ready, so the first leads; site number `i` (in the spec's order)
    /// talks to coordinator `i % (1 + replicas)` first and lists the others in `also`.
    pub replicas: usize,
}

/// A fleet entry that is one box of a site ([`FleetOptions::boxes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoxOf {
    /// The site the box belongs to, as the coordinator knows it.
    pub site: String,
    /// The box's id (`[box] id`).
    pub id: String,
    /// The box's role (`[box] role`).
    pub role: String,
}

impl FleetOptions {
    pub fn proxied(mut self, site: &str) -> FleetOptions {
        self.proxied.insert(site.to_string());
        self
    }

    /// Makes the fleet entry `entry` box `box_id` (role `role`) of site `site`
    /// ([`FleetOptions::boxes`]).
    pub fn box_of(mut self, entry: &str, site: &str, box_id: &str, role: &str) -> FleetOptions {
        self.boxes.insert(
            entry.to_string(),
            BoxOf {
                site: site.to_string(),
                id: box_id.to_string(),
                role: role.to_string(),
            },
        );
        self
    }

    /// Puts `site` in the fleet's one peer cache ([`FleetOptions::peer_cache`]).
    pub fn peer(mut self, site: &str) -> FleetOptions {
        self.peer_cache.insert(site.to_string());
        self
    }
}

/// The coordinator process and where to reach it.
#[derive(Debug)]
pub struct Coordinator {
    pub process: Process,
    pub addr: SocketAddr,
    pub url: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub ca: PathBuf,
    pub root: PathBuf,
    pub release_key: PathBuf,
    pub root_key: PathBuf,
    pub admin_token: String,
}

impl Coordinator {
    /// The coordinator's SQLite file.
    pub fn database(&self) -> PathBuf {
        self.dir.join("data").join("coordinator.db")
    }
}

/// One site: its agent process, its demo app and (maybe) its fault proxy.
#[derive(Debug)]
pub struct Site {
    pub spec: SiteSpec,
    pub dirs: SiteDirs,
    pub agent: Option<Process>,
    /// Where its demo app listens.
    pub app_addr: SocketAddr,
    /// The demo app's pid file.
    pub app_pid_file: PathBuf,
    pub proxy: Option<FaultProxy>,
    /// The launch recipe of this site (files, commands), shared with `fleetwave demo`.
    pub local: LocalSite,
}

impl Site {
    /// `<apps_dir>/demo/current`, the version the app executor switched to.
    pub fn current_dir(&self) -> PathBuf {
        self.dirs.app.join(DEMO_STREAM).join("current")
    }

    /// The version on disk (`current/app.toml`), or None before the first install.
    pub fn version_on_disk(&self) -> Result<Option<String>> {
        let path = self.current_dir().join("app.toml");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let value: toml::Value = toml::from_str(&text).map_err(|e| {
                    HarnessError::Fleet(format!("{} is not TOML: {e}", path.display()))
                })?;
                Ok(value
                    .get("version")
                    .and_then(|v| v.as_str())
                    .map(str::to_string))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(HarnessError::io(format!("reading {}", path.display()), e)),
        }
    }

    /// The version the running demo app answers on `/version`.
    pub fn version_served(&self) -> Result<String> {
        http_get(self.app_addr, "/version").map(|(_, body)| body.trim().to_string())
    }

    fn stop_app(&self) {
        if let Ok(text) = std::fs::read_to_string(&self.app_pid_file)
            && let Ok(pid) = text.trim().parse::<libc::pid_t>()
            && pid > 0
        {
            // SAFETY: kill(2) on the demo app this site started; it runs in its own group.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        // The demo app is detached from the agent (its own process group), so it is
        // stopped here; the agent itself is stopped by its `Process`.
        self.agent.take();
        self.stop_app();
    }
}

/// A minimal HTTP/1.0 GET on loopback (for the demo app, which speaks plain HTTP).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let err = |e: std::io::Error| HarnessError::io(format!("GET http://{addr}{path}"), e);
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(err)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(err)?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(err)?;
    let mut text = String::new();
    stream.read_to_string(&mut text).map_err(err)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            HarnessError::Fleet(format!("http://{addr}{path}: no status in {text:?}"))
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A running fleet. Dropping it stops every process it started.
#[derive(Debug)]
pub struct Fleet {
    pub spec: FleetSpec,
    pub options: FleetOptions,
    /// Each peer-cache site's `[peers]` port on 127.0.0.1.
    peer_ports: BTreeMap<String, u16>,
    pub sites: BTreeMap<String, Site>,
    pub coordinator: Coordinator,
    /// The coordinators started beside the first ([`FleetOptions::replicas`]).
    pub replicas: Vec<Coordinator>,
    pub operator: Operator,
    // Dropped last: the processes above write into it.
    pub dirs: FleetDirs,
}

impl Fleet {
    /// Starts a coordinator and every site of `spec`, and waits until every started agent
    /// has been seen by the coordinator.
    pub fn start(spec: FleetSpec) -> Result<Fleet> {
        Fleet::start_with(spec, FleetOptions::default())
    }

    pub fn start_with(spec: FleetSpec, options: FleetOptions) -> Result<Fleet> {
        let dirs = FleetDirs::create(&spec)?;
        let coordinator = start_coordinator(&dirs, &options)?;
        let operator = Operator::new(&coordinator.url, &coordinator.ca, &coordinator.admin_token)?;
        eventually_default("the coordinator to answer /healthz", || {
            let status = operator.probe("/healthz")?;
            anyhow::ensure!(status == 200, "/healthz answered {status}");
            Ok(())
        })?;
        let mut replicas = Vec::new();
        if options.replicas > 0 {
            // The first coordinator leads before the others start.
            eventually_default("the first coordinator to lead (/readyz 200)", || {
                let status = operator.probe("/readyz")?;
                anyhow::ensure!(status == 200, "/readyz answered {status}");
                Ok(())
            })?;
        }
        for n in 1..=options.replicas {
            replicas.push(start_replica(&dirs, &coordinator, n)?);
        }
        let mut peer_ports = BTreeMap::new();
        for site in &options.peer_cache {
            peer_ports.insert(site.clone(), free_port()?);
        }
        let mut fleet = Fleet {
            spec: spec.clone(),
            peer_ports,
            options,
            sites: BTreeMap::new(),
            coordinator,
            replicas,
            operator,
            dirs,
        };
        for (i, site) in spec.sites.iter().enumerate() {
            fleet.add_site(site, i)?;
        }
        let started: Vec<String> = fleet
            .sites
            .iter()
            .filter(|(_, s)| s.agent.is_some())
            .map(|(_, s)| s.local.id.clone())
            .collect();
        fleet.wait_seen(&started)?;
        Ok(fleet)
    }

    /// Every coordinator process: the first, then its replicas.
    pub fn coordinators(&self) -> impl Iterator<Item = &Coordinator> {
        std::iter::once(&self.coordinator).chain(&self.replicas)
    }

    /// The coordinator URLs site number `index` tries, in order: coordinator
    /// `index % count` first, then the others.
    fn coordinator_urls(&self, index: usize) -> Vec<String> {
        let all: Vec<String> = self.coordinators().map(|c| c.url.clone()).collect();
        let first = index % all.len();
        all[first..].iter().chain(&all[..first]).cloned().collect()
    }

    fn add_site(&mut self, spec: &SiteSpec, index: usize) -> Result<()> {
        let dirs = self.dirs.site(&spec.id)?.clone();
        // A box of a site of several boxes enrolls into its site.
        let box_of = self.options.boxes.get(&spec.id).cloned();
        let local = LocalSite {
            id: box_of.as_ref().map_or(spec.id.clone(), |b| b.site.clone()),
            labels: spec.labels.clone(),
            root: dirs.root.clone(),
            app_addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        };
        let proxy = if self.options.proxied.contains(&spec.id) {
            Some(FaultProxy::start(self.coordinator.addr)?)
        } else {
            None
        };
        let mut urls = self.coordinator_urls(index);
        if let Some(p) = &proxy {
            urls = vec![format!("https://{}", p.addr())];
        }
        let mut site = Site {
            spec: spec.clone(),
            dirs,
            agent: None,
            app_addr: local.app_addr,
            app_pid_file: local.app_pid_file(),
            proxy,
            local,
        };
        start_seed_app(&self.dirs, &site)?;
        let mut config = self.agent_config(&site, &urls)?;
        if let Some(b) = &box_of {
            config.push_str(&format!("\n[box]\nid = {:?}\nrole = {:?}\n", b.id, b.role));
        }
        std::fs::write(&site.dirs.config, config)
            .map_err(|e| HarnessError::io(format!("writing {}", site.dirs.config.display()), e))?;
        if self.options.enroll_later.contains(&spec.id) {
            self.sites.insert(spec.id.clone(), site);
            return Ok(());
        }
        self.enroll(&site)?;
        if !self.options.not_started.contains(&spec.id) {
            site.agent = Some(self.agent_command(&site, "")?.arg("run").start()?);
        }
        self.sites.insert(spec.id.clone(), site);
        Ok(())
    }

    /// Enrolls `site` with a new one-use token bound to it and its labels.
    fn enroll(&self, site: &Site) -> Result<()> {
        // A further box of an enrolled site joins with a token from `site rekey`: another
        // entry of the fleet enrolled that site already. (An entry enrolled late is in
        // `sites` itself by then; it alone does not make its site enrolled.)
        if self
            .sites
            .values()
            .any(|s| s.local.id == site.local.id && s.spec.id != site.spec.id)
        {
            let rekey: serde_json::Value = self.operator.post(
                &format!("/v1/sites/{}/rekey", site.local.id),
                &serde_json::json!({}),
            )?;
            let token = rekey["token"].as_str().ok_or_else(|| {
                HarnessError::Fleet(format!("rekey of {} answered {rekey}", site.local.id))
            })?;
            return self.enroll_with(site, token, "enroll");
        }
        let token = self
            .operator
            .create_enrollment_token(&api::CreateEnrollmentToken {
                labels: site.spec.labels.clone(),
                site_id: Some(site.local.id.clone()),
                expires_in_secs: Some(3600),
                uses: Some(1),
            })?;
        self.enroll_with(site, &token.token, "enroll")
    }

    fn enroll_with(&self, site: &Site, token: &str, label: &str) -> Result<()> {
        Spawn::from_cmd(
            format!("agent-{}-{label}", site.spec.id),
            &site.local.enroll(&bins::local_bins()?, token),
            &self.dirs.logs,
        )
        .run()?;
        Ok(())
    }

    /// Enrolls and starts a site of [`FleetOptions::enroll_later`] (a store that opens
    /// after the others), and waits until the coordinator has seen it.
    pub fn enroll_late(&mut self, id: &str) -> Result<()> {
        self.enroll(self.site(id)?)?;
        self.start_agent(id)?;
        self.wait_seen(&[id.to_string()])
    }

    /// Re-images `id`'s box: stops its agent, empties its state directory (keys, journal,
    /// what it installed), enrolls it again with a token from `site rekey`, and starts
    /// it. The app directory stays (the new image's app is whatever the image had).
    pub fn reimage(&mut self, id: &str) -> Result<()> {
        self.site_mut(id)?.agent.take();
        let state = self.site(id)?.dirs.state.clone();
        std::fs::remove_dir_all(&state)
            .and_then(|()| std::fs::create_dir_all(&state))
            .map_err(|e| HarnessError::io(format!("emptying {}", state.display()), e))?;
        let rekey: serde_json::Value = self
            .operator
            .post(&format!("/v1/sites/{id}/rekey"), &serde_json::json!({}))?;
        let token = rekey["token"]
            .as_str()
            .ok_or_else(|| HarnessError::Fleet(format!("rekey of {id} answered {rekey}")))?
            .to_string();
        self.enroll_with(self.site(id)?, &token, "reenroll")?;
        self.start_agent(id)
    }

    /// The agent's configuration for `site`, talking to `urls` (the first, then the others
    /// in order): the shared recipe with the harness's tuning (short long polls, no jitter,
    /// the app started with the site's labels) and [`FleetOptions::agent_extra`].
    fn agent_config(&self, site: &Site, urls: &[String]) -> Result<String> {
        let box_id = self
            .options
            .boxes
            .get(&site.spec.id)
            .map_or(site.spec.id.as_str(), |b| b.id.as_str());
        let mut extra = self
            .options
            .agent_extra
            .replace("{app_addr}", &site.app_addr.to_string())
            .replace("{site_root}", &site.dirs.root.display().to_string())
            .replace("{box_id}", box_id);
        if let Some(port) = self.peer_ports.get(&site.spec.id) {
            let others: Vec<String> = self
                .peer_ports
                .iter()
                .filter(|(id, _)| **id != site.spec.id)
                .map(|(_, p)| format!("\"127.0.0.1:{p}\""))
                .collect();
            extra.push_str(&format!(
                "\n[peers]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\naddresses = [{}]\n",
                others.join(", ")
            ));
        }
        Ok(site.local.agent_config(
            &bins::local_bins()?,
            &AgentConfig {
                written_by: "the e2e harness",
                url: &urls[0],
                also: &urls[1..],
                ca: &self.coordinator.ca,
                root: &self.coordinator.root,
                tuning: AgentTuning {
                    wait_secs: 2,
                    jitter: 0.0,
                    backoff_max_secs: 2,
                    probe_name: "demo",
                },
                app_labels: true,
                extra: &extra,
            },
        ))
    }

    /// `fleetwave-agent --config <site config>` (add the subcommand), logged as
    /// `agent-<site>` for the daemon (empty `suffix`) or `agent-<site>-<suffix>`.
    fn agent_command(&self, site: &Site, suffix: &str) -> Result<Spawn> {
        let name = if suffix.is_empty() {
            format!("agent-{}", site.spec.id)
        } else {
            format!("agent-{}-{suffix}", site.spec.id)
        };
        Ok(Spawn::from_cmd(
            name,
            &site.local.agent(&bins::local_bins()?),
            &self.dirs.logs,
        )
        .env("FLEETWAVE_LOG", "info,fleetwave_agent=debug"))
    }

    /// Runs a local agent command for `site` (e.g. `["status", "--json"]`) and returns
    /// its stdout.
    pub fn agent_cli(&self, site: &str, args: &[&str]) -> Result<String> {
        let site = self.site(site)?;
        self.agent_command(site, "cli")?
            .args(args.iter().copied())
            .run()
    }

    pub fn site(&self, id: &str) -> Result<&Site> {
        self.sites
            .get(id)
            .ok_or_else(|| HarnessError::Fleet(format!("no site {id:?} in this fleet")))
    }

    pub fn site_mut(&mut self, id: &str) -> Result<&mut Site> {
        self.sites
            .get_mut(id)
            .ok_or_else(|| HarnessError::Fleet(format!("no site {id:?} in this fleet")))
    }

    /// Starts (or restarts) the agent of `site`.
    pub fn start_agent(&mut self, id: &str) -> Result<()> {
        self.start_agent_with(id, &[])
    }

    /// Starts (or restarts) the agent of `site` with extra environment variables, e.g.
    /// [`Fleet::pause_env`] (they reach the commands it runs, such as the demo app's
    /// restart, too).
    pub fn start_agent_with(&mut self, id: &str, env: &[(String, String)]) -> Result<()> {
        let spawn = {
            let site = self.site(id)?;
            let mut spawn = self.agent_command(site, "")?.arg("run");
            for (k, v) in env {
                spawn = spawn.env(k, v);
            }
            spawn
        };
        let site = self.site_mut(id)?;
        site.agent.take();
        site.agent = Some(spawn.start()?);
        Ok(())
    }

    /// The environment that arms a test pause point for `site`'s agent (and the commands
    /// it runs): `FLEETWAVE_TEST_HOOKS=1`, `FLEETWAVE_TEST_PAUSE_AT=<point>` and
    /// `FLEETWAVE_TEST_PAUSE_FILE=<site root>/paused`. See [`Fleet::wait_paused`].
    pub fn pause_env(&self, site: &str, point: &str) -> Result<Vec<(String, String)>> {
        let file = self.site(site)?.dirs.root.join("paused");
        Ok(vec![
            ("FLEETWAVE_TEST_HOOKS".into(), "1".into()),
            ("FLEETWAVE_TEST_PAUSE_AT".into(), point.into()),
            (
                "FLEETWAVE_TEST_PAUSE_FILE".into(),
                file.display().to_string(),
            ),
        ])
    }

    /// Waits until a process of `site` (its agent, or a command the agent ran) stands at
    /// the pause point `point` armed by [`Fleet::pause_env`]; returns that process's pid.
    pub fn wait_paused(&self, site: &str, point: &str) -> Result<libc::pid_t> {
        let file = self.site(site)?.dirs.root.join("paused");
        eventually_default(&format!("{site} to pause at {point}"), || {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let (at, pid) = text
                .trim()
                .split_once(' ')
                .ok_or_else(|| anyhow::anyhow!("{text:?}"))?;
            anyhow::ensure!(at == point, "paused at {at:?}");
            Ok(pid.parse::<libc::pid_t>()?)
        })
    }

    /// Waits until the coordinator has seen every site of `ids`.
    pub fn wait_seen(&self, ids: &[String]) -> Result<()> {
        eventually_default("every agent to contact the coordinator", || {
            let sites = self.operator.sites()?;
            let seen: BTreeSet<&str> = sites
                .iter()
                .filter(|s| s.last_seen.is_some())
                .map(|s| s.id.as_str())
                .collect();
            let missing: Vec<&String> = ids
                .iter()
                .filter(|id| !seen.contains(id.as_str()))
                .collect();
            anyhow::ensure!(missing.is_empty(), "not seen yet: {missing:?}");
            Ok(())
        })
    }

    /// Builds the release's artifact, uploads it, signs the release with `key` (default:
    /// the fleet's release key) through `fleetwave release sign`, and publishes it.
    pub fn publish(&self, release: &DemoRelease) -> Result<api::ReleaseInfo> {
        let envelope = self.sign_release(release, &self.coordinator.release_key)?;
        self.operator.publish_release(&envelope)
    }

    /// Builds and uploads the artifact and signs the release with `key`; does not publish.
    pub fn sign_release(&self, release: &DemoRelease, key: &Path) -> Result<Envelope> {
        let dir = self.release_dir(&release.id)?;
        let artifact = release.write_artifact(&dir)?;
        self.sign_manifest(
            &release.id,
            &artifact,
            &release.manifest_toml(&artifact),
            key,
        )
    }

    /// Builds and uploads a `command` release's artifact, signs it with the fleet's release
    /// key and publishes it.
    pub fn publish_command(&self, release: &CommandRelease) -> Result<api::ReleaseInfo> {
        let dir = self.release_dir(&release.id)?;
        let artifact = release.write_artifact(&dir)?;
        let manifest = release.manifest_toml(&artifact);
        let envelope = self.sign_manifest(
            &release.id,
            &artifact,
            &manifest,
            &self.coordinator.release_key,
        )?;
        self.operator.publish_release(&envelope)
    }

    /// Builds and uploads a stand-in k3s release's artifact (a stand-in `k3s` script, see
    /// [`crate::stand_in_k3s`]), signs it with the fleet's release key and publishes it.
    pub fn publish_k3s(&self, release: &K3sRelease) -> Result<api::ReleaseInfo> {
        let dir = self.release_dir(&release.id)?;
        let artifact = release.write_artifact(&dir)?;
        let manifest = release.manifest_toml(&artifact);
        let envelope = self.sign_manifest(
            &release.id,
            &artifact,
            &manifest,
            &self.coordinator.release_key,
        )?;
        self.operator.publish_release(&envelope)
    }

    fn release_dir(&self, id: &str) -> Result<PathBuf> {
        let dir = self.dirs.work.join(id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| HarnessError::io(format!("creating {}", dir.display()), e))?;
        Ok(dir)
    }

    /// Uploads `artifact`, then signs `manifest` (naming it) with `key` through
    /// `fleetwave release sign`.
    fn sign_manifest(
        &self,
        id: &str,
        artifact: &Path,
        manifest: &str,
        key: &Path,
    ) -> Result<Envelope> {
        let dir = self.release_dir(id)?;
        let bytes = std::fs::read(artifact)
            .map_err(|e| HarnessError::io(format!("reading {}", artifact.display()), e))?;
        self.operator.upload_artifact(bytes)?;
        let manifest_path = dir.join("release.toml");
        std::fs::write(&manifest_path, manifest)
            .map_err(|e| HarnessError::io(format!("writing {}", manifest_path.display()), e))?;
        let out = dir.join("release.json");
        Spawn::new(
            format!("fleetwave-release-sign-{id}"),
            bins::binary(bins::CLI)?,
            &self.dirs.logs,
        )
        .args(["release", "sign", "--key"])
        .arg(key)
        .arg(&manifest_path)
        .arg("--out")
        .arg(&out)
        .run()?;
        read_envelope(&out)
    }

    /// Creates and starts a rollout; returns its id.
    pub fn rollout(&self, plan: &PlanSpec) -> Result<String> {
        let text = plan.to_toml();
        std::fs::write(
            self.dirs.work.join(format!("{}.plan.toml", plan.release)),
            &text,
        )
        .map_err(|e| HarnessError::io("writing the plan", e))?;
        let created = self.operator.create_rollout(&text)?;
        self.operator.rollout_action(&created.id, "start")?;
        Ok(created.id)
    }

    /// Waits until the rollout reaches `status`; fails at once if it reaches another final
    /// status (so a halted rollout does not wait out the deadline).
    pub fn wait_rollout_status(&self, id: &str, status: RolloutStatus) -> Result<api::RolloutView> {
        eventually_default(&format!("rollout {id} to be {}", status.as_str()), || {
            let view = self.operator.rollout(id)?;
            if view.status == status {
                return Ok(view);
            }
            anyhow::bail!(
                "rollout is {} ({}); waves: {}",
                view.status.as_str(),
                view.status_reason.clone().unwrap_or_default(),
                describe_waves(&view)
            )
        })
    }

    /// Waits until the rollout has halted (with `auto_rollback` it may end rolled back)
    /// and returns its view with its `halt` decision; panics if there is none.
    pub fn wait_halted(&self, id: &str) -> Result<(api::RolloutView, api::DecisionView)> {
        let view = eventually_default(&format!("rollout {id} to halt"), || {
            let view = self.operator.rollout(id)?;
            anyhow::ensure!(
                matches!(
                    view.status,
                    RolloutStatus::Halted | RolloutStatus::RolledBack
                ),
                "rollout is {}: {}",
                view.status.as_str(),
                describe_waves(&view)
            );
            Ok(view)
        })?;
        let halt = view
            .decisions
            .iter()
            .find(|d| d.kind == "halt")
            .cloned()
            .unwrap_or_else(|| panic!("no halt decision: {:#?}", view.decisions));
        Ok((view, halt))
    }

    /// Waits until `site` runs `version` on disk and the app serves it.
    pub fn wait_version(&self, site: &str, version: &str) -> Result<()> {
        let s = self.site(site)?;
        eventually_default(&format!("{site} to run {version}"), || {
            let on_disk = s.version_on_disk()?;
            anyhow::ensure!(on_disk.as_deref() == Some(version), "on disk: {on_disk:?}");
            let served = s.version_served()?;
            anyhow::ensure!(served == version, "the app serves {served:?}");
            Ok(())
        })
    }

    /// Waits until the coordinator reports `version` installed at `site`.
    pub fn wait_reported_version(&self, site: &str, version: &str) -> Result<()> {
        eventually_default(
            &format!("the coordinator to see {site} on {version}"),
            || {
                let info = self.operator.site(site)?;
                let got = info
                    .installed
                    .get(DEMO_STREAM)
                    .and_then(|i| i.version.clone());
                anyhow::ensure!(got.as_deref() == Some(version), "reported: {got:?}");
                Ok(())
            },
        )
    }
}

impl Fleet {
    /// Publishes `release` and rolls it out to every site in one wave; waits until the
    /// rollout completed and every site runs it. For the baseline a scenario starts from.
    pub fn baseline(&self, release: &DemoRelease) -> Result<String> {
        self.publish(release)?;
        let plan = PlanSpec::new(
            &format!("baseline {}", release.id),
            &release.id,
            vec![crate::plan::WaveSpec::new("everyone").gate(|g| g.bake_secs = 1)],
        );
        let id = self.rollout(&plan)?;
        self.wait_rollout_status(&id, RolloutStatus::Completed)?;
        for site in self.sites.keys() {
            self.wait_version(site, &release.version)?;
        }
        Ok(id)
    }

    /// The coordinator's stored `phase` reports of `site` for `release_id`, in order.
    pub fn phases(&self, site: &str, release_id: &str) -> Result<Vec<String>> {
        let db = crate::inspect::CoordinatorDb::new(self.coordinator.database());
        Ok(db
            .reports(site)?
            .into_iter()
            .filter(|r| r.body["release_id"] == release_id && r.body["kind"] == "phase")
            .filter_map(|r| r.body["phase"].as_str().map(str::to_string))
            .collect())
    }
}

/// One line per wave: name, tally and gate standing.
pub fn describe_waves(view: &api::RolloutView) -> String {
    view.waves
        .iter()
        .map(|w| {
            format!(
                "[{} {}: {} sites, {} ok, {} failed, {} silent, {} in progress; {}]",
                w.index,
                w.name,
                w.tally.sites,
                w.tally.succeeded,
                w.tally.failed,
                w.tally.silent,
                w.tally.in_progress,
                w.gate
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn read_envelope(path: &Path) -> Result<Envelope> {
    let bytes = std::fs::read(path)
        .map_err(|e| HarnessError::io(format!("reading {}", path.display()), e))?;
    Envelope::from_json(&bytes)
        .map_err(|e| HarnessError::Fleet(format!("{} is not an envelope: {e}", path.display())))
}

fn start_coordinator(dirs: &FleetDirs, options: &FleetOptions) -> Result<Coordinator> {
    let local = LocalCoordinator {
        dir: dirs.coordinator.clone(),
        addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
    };
    let bins = bins::local_bins()?;
    Spawn::from_cmd("coordinator-init", &local.init(&bins), &dirs.logs).run()?;
    local
        .tune(COORDINATOR_TUNING)
        .and_then(|()| local.tune(&options.coordinator_extra))
        .map_err(|e| HarnessError::io(format!("tuning {}", local.config().display()), e))?;
    if let Some(extra) = &options.agent_extra_ca {
        let pem = std::fs::read_to_string(extra)
            .map_err(|e| HarnessError::io(format!("reading {}", extra.display()), e))?;
        let mut bundle = std::fs::read_to_string(local.ca())
            .map_err(|e| HarnessError::io(format!("reading {}", local.ca().display()), e))?;
        bundle.push_str(&pem);
        std::fs::write(local.ca(), bundle)
            .map_err(|e| HarnessError::io(format!("writing {}", local.ca().display()), e))?;
    }
    let admin_token = local
        .admin_token()
        .map_err(|e| HarnessError::io("reading the admin token", e))?;
    let process = Spawn::from_cmd(
        "coordinator",
        &local.serve(&bins, "info,fleetwave_coordinator=debug"),
        &dirs.logs,
    )
    .start()?;
    Ok(Coordinator {
        process,
        addr: local.addr,
        url: local.url(),
        ca: local.ca(),
        root: local.root(),
        release_key: local.offline_key("release.key"),
        root_key: local.offline_key("root.key"),
        config: local.config(),
        admin_token,
        dir: local.dir,
    })
}

/// Starts replica `n` of `first`: the same configuration file (keys, TLS certificate,
/// storage, data directory for artifacts, as hosts sharing `/etc/fleetwave` and an
/// artifact mount would), listening on its own port. Logged as `coordinator-<n>`.
fn start_replica(dirs: &FleetDirs, first: &Coordinator, n: usize) -> Result<Coordinator> {
    let local = LocalCoordinator {
        dir: first.dir.clone(),
        addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
    };
    let bins = bins::local_bins()?;
    let process = Spawn::from_cmd(
        format!("coordinator-{n}"),
        &local
            .serve(&bins, "info,fleetwave_coordinator=debug")
            .arg("--listen")
            .arg(local.addr.to_string()),
        &dirs.logs,
    )
    .start()?;
    Ok(Coordinator {
        process,
        addr: local.addr,
        url: local.url(),
        dir: local.dir,
        config: first.config.clone(),
        ca: first.ca.clone(),
        root: first.root.clone(),
        release_key: first.release_key.clone(),
        root_key: first.root_key.clone(),
        admin_token: first.admin_token.clone(),
    })
}

/// Starts the site's demo app at a seed version `0.0.0` (what the box ran before fleetwave
/// managed it), so its health probe passes before the first install.
fn start_seed_app(dirs: &FleetDirs, site: &Site) -> Result<()> {
    let cmd = site
        .local
        .seed_app(&bins::local_bins()?, "0.0.0")
        .map_err(|e| HarnessError::io("writing the seed app", e))?;
    Spawn::from_cmd(format!("demo-app-{}-seed", site.spec.id), &cmd, &dirs.logs).run()?;
    Ok(())
}
