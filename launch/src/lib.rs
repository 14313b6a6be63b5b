//! A local fleet on loopback, as `fleetwave demo` and the end-to-end harness launch it: one
//! `fleetwave-coordinator` (`init --dev-root`, tuned, `serve`) and, per site, a demo app
//! at a seed version, an agent configuration that manages that app, `fleetwave-agent
//! enroll` and `fleetwave-agent run`.
//!
//! This crate is the one recipe: the command lines, the files they need and where they
//! live. It starts nothing. Each caller runs the [`Cmd`]s with its own process
//! supervision: the demo's children die with the demo (process groups, `PDEATHSIG`, a
//! guard for the detached apps); the harness's children log to per-test files, can stop
//! at named pause points and are killed with their test.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The three binaries a local fleet runs.
#[derive(Debug, Clone)]
pub struct Bins {
    pub coordinator: PathBuf,
    pub agent: PathBuf,
    pub demo_app: PathBuf,
}

/// One command line: what to run, with which arguments, environment and directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
}

impl Cmd {
    fn new(program: &Path) -> Cmd {
        Cmd {
            program: program.to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
        }
    }

    /// Appends an argument.
    pub fn arg(mut self, a: impl Into<OsString>) -> Cmd {
        self.args.push(a.into());
        self
    }

    /// Sets an environment variable of the command.
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Cmd {
        self.env.push((k.into(), v.into()));
        self
    }

    fn cwd(mut self, dir: &Path) -> Cmd {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    /// The same as a [`std::process::Command`] (stdio left to the caller).
    pub fn command(&self) -> std::process::Command {
        let mut c = std::process::Command::new(&self.program);
        c.args(&self.args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        c
    }
}

/// A coordinator in `dir` listening on `addr` (loopback), set up by `init --dev-root`.
#[derive(Debug, Clone)]
pub struct LocalCoordinator {
    pub dir: PathBuf,
    pub addr: SocketAddr,
}

impl LocalCoordinator {
    /// `fleetwave-coordinator init --dir DIR --dev-root --listen ADDR`: keys, TLS, the
    /// root document, the admin token and `coordinator.toml`.
    pub fn init(&self, bins: &Bins) -> Cmd {
        Cmd::new(&bins.coordinator)
            .arg("init")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--dev-root")
            .arg("--listen")
            .arg(self.addr.to_string())
    }

    /// Appends `tuning` (TOML with documented keys only) to `coordinator.toml`.
    pub fn tune(&self, tuning: &str) -> io::Result<()> {
        let mut text = std::fs::read_to_string(self.config())?;
        text.push_str(tuning);
        std::fs::write(self.config(), text)
    }

    /// `fleetwave-coordinator serve --config coordinator.toml`, logging at `log_filter`.
    pub fn serve(&self, bins: &Bins, log_filter: &str) -> Cmd {
        Cmd::new(&bins.coordinator)
            .arg("serve")
            .arg("--config")
            .arg(self.config())
            .env("FLEETWAVE_LOG", log_filter)
            .cwd(&self.dir)
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("coordinator.toml")
    }

    /// The CA that signed the coordinator's TLS certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("tls").join("ca.pem")
    }

    /// The first root document, which agents are configured to trust.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root.1.json")
    }

    pub fn offline_key(&self, name: &str) -> PathBuf {
        self.dir.join("offline-keys").join(name)
    }

    /// The admin token `init` wrote.
    pub fn admin_token(&self) -> io::Result<String> {
        Ok(std::fs::read_to_string(self.dir.join("admin.token"))?
            .trim()
            .to_string())
    }
}

/// The demo app's release stream (release `name`), in the demo and in the tests.
pub const DEMO_STREAM: &str = "demo";

/// One site: its agent's files and its demo app, all under `root`.
#[derive(Debug, Clone)]
pub struct LocalSite {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    /// `sites/<id>`: everything of this site.
    pub root: PathBuf,
    /// Where the demo app listens (plain HTTP on loopback).
    pub app_addr: SocketAddr,
}

impl LocalSite {
    /// The agent's state directory (its SQLite database, device key, trust state).
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    /// Where the `app` executor keeps versions and the `current` symlink.
    pub fn apps_dir(&self) -> PathBuf {
        self.root.join("apps")
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// The agent's configuration file.
    pub fn config(&self) -> PathBuf {
        self.root.join("agent.toml")
    }

    /// The version the box ran before fleetwave managed it.
    pub fn seed_dir(&self) -> PathBuf {
        self.root.join("seed-app")
    }

    pub fn app_pid_file(&self) -> PathBuf {
        self.root.join("demo-app.pid")
    }

    pub fn app_log(&self) -> PathBuf {
        self.root.join("demo-app.log")
    }

    /// What the app executor points `current` at for the demo stream.
    pub fn current_dir(&self) -> PathBuf {
        self.apps_dir().join(DEMO_STREAM).join("current")
    }

    /// The site's IANA time zone: its `tz` label, UTC without one.
    pub fn tz(&self) -> &str {
        self.labels.get("tz").map(String::as_str).unwrap_or("UTC")
    }

    /// Creates the site's directories.
    pub fn create_dirs(&self) -> io::Result<()> {
        for d in [
            self.state_dir(),
            self.apps_dir(),
            self.staging_dir(),
            self.seed_dir(),
        ] {
            std::fs::create_dir_all(d)?;
        }
        Ok(())
    }

    /// Writes the seed app (`version`, healthy) and returns the command that starts it:
    /// `fleetwave-demo-app restart` detaches the app and returns.
    pub fn seed_app(&self, bins: &Bins, version: &str) -> io::Result<Cmd> {
        std::fs::create_dir_all(self.seed_dir())?;
        std::fs::write(
            self.seed_dir().join("app.toml"),
            format!("version = {}\nhealthy = true\n", q(version)),
        )?;
        Ok(self.app_restart(bins, &self.seed_dir(), &[]))
    }

    /// `fleetwave-demo-app restart` serving `dir` on the site's address.
    fn app_restart(&self, bins: &Bins, dir: &Path, labels: &[String]) -> Cmd {
        let mut c = Cmd::new(&bins.demo_app)
            .arg("restart")
            .arg("--dir")
            .arg(dir)
            .arg("--listen")
            .arg(self.app_addr.to_string())
            .arg("--pid-file")
            .arg(self.app_pid_file())
            .arg("--log")
            .arg(self.app_log());
        for l in labels {
            c = c.arg("--label").arg(l);
        }
        c
    }

    /// The agent's TOML configuration: the coordinator, the trust root, `tuning`'s polls
    /// and health checks, the demo app's health probe, and the demo app as the `app`
    /// executor's managed application.
    pub fn agent_config(&self, bins: &Bins, c: &AgentConfig<'_>) -> String {
        let labels: Vec<String> = if c.app_labels {
            self.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect()
        } else {
            Vec::new()
        };
        let restart = self.app_restart(bins, &self.current_dir(), &labels);
        let restart: Vec<OsString> = std::iter::once(restart.program.into_os_string())
            .chain(restart.args)
            .collect();
        let stop = [
            bins.demo_app.as_os_str().to_owned(),
            "stop".into(),
            "--pid-file".into(),
            self.app_pid_file().into_os_string(),
        ];
        let t = &c.tuning;
        format!(
            r#"# fleetwave-agent configuration written by {by} for site {id}.
# Every key is documented in docs/agent.md.

[coordinator]
url = {url}
also = {also}
ca_file = {ca}
request_timeout_secs = 10

[agent]
state_dir = {state}
site_id = {id_q}
root_file = {root}
site_time_zone = {tz}

[poll]
interval_secs = 1
wait_secs = {wait}
jitter = {jitter:?}
backoff_min_secs = 1
backoff_max_secs = {backoff_max}

[health]
interval_secs = 1
min_free_disk_bytes = 1048576
disk_margin = 1.0
min_mem_available_bytes = 0
max_load_per_cpu = 0.0
probe_timeout_secs = 5

# After an install the app must stay healthy for 3 s (checked every second; two failed
# checks in a row roll it back).
[health.verify]
period_secs = 3
interval_secs = 1
fail_after = 2

[[health.probes]]
type = "http"
name = {probe_name}
url = {probe}

[executor]
staging_dir = {staging}
apps_dir = {apps}

[executor.app]
restart_command = {restart}
stop_command = {stop}
command_timeout_secs = 60
{extra}"#,
            by = c.written_by,
            id = self.id,
            id_q = q(&self.id),
            url = q(c.url),
            also = list(c.also),
            ca = q_path(c.ca),
            state = q_path(&self.state_dir()),
            root = q_path(c.root),
            tz = q(self.tz()),
            wait = t.wait_secs,
            jitter = t.jitter,
            backoff_max = t.backoff_max_secs,
            probe_name = q(t.probe_name),
            probe = q(&format!("http://{}/healthz", self.app_addr)),
            staging = q_path(&self.staging_dir()),
            apps = q_path(&self.apps_dir()),
            restart = list(&restart),
            stop = list(&stop),
            extra = c.extra,
        )
    }

    /// `fleetwave-agent --config agent.toml enroll --token TOKEN`.
    pub fn enroll(&self, bins: &Bins, token: &str) -> Cmd {
        self.agent(bins).arg("enroll").arg("--token").arg(token)
    }

    /// `fleetwave-agent --config agent.toml run`, logging at `log_filter`.
    pub fn run(&self, bins: &Bins, log_filter: &str) -> Cmd {
        self.agent(bins).arg("run").env("FLEETWAVE_LOG", log_filter)
    }

    /// `fleetwave-agent --config agent.toml` in the site's directory: add a subcommand.
    pub fn agent(&self, bins: &Bins) -> Cmd {
        Cmd::new(&bins.agent)
            .arg("--config")
            .arg(self.config())
            .cwd(&self.root)
    }
}

/// What an agent's configuration says beyond the site's own files.
#[derive(Debug, Clone)]
pub struct AgentConfig<'a> {
    /// Who wrote the file, for its first line (e.g. "`fleetwave demo`").
    pub written_by: &'a str,
    pub url: &'a str,
    /// More coordinators of the fleet (replicas), tried after `url`.
    pub also: &'a [String],
    pub ca: &'a Path,
    /// The root document the agent trusts first.
    pub root: &'a Path,
    pub tuning: AgentTuning,
    /// Whether the demo app is started with the site's labels (`--label k=v`), which
    /// lets a release fail only on some sites.
    pub app_labels: bool,
    /// TOML appended verbatim.
    pub extra: &'a str,
}

/// Poll and probe settings that differ between a demo (gentle) and tests (fast, exact).
#[derive(Debug, Clone, Copy)]
pub struct AgentTuning {
    pub wait_secs: u64,
    pub jitter: f64,
    pub backoff_max_secs: u64,
    pub probe_name: &'static str,
}

fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn q_path(p: &Path) -> String {
    q(&p.display().to_string())
}

fn list<S: AsRef<std::ffi::OsStr>>(items: &[S]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| q(&s.as_ref().to_string_lossy()))
        .collect();
    format!("[{}]", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bins() -> Bins {
        Bins {
            coordinator: "/b/fleetwave-coordinator".into(),
            agent: "/b/fleetwave-agent".into(),
            demo_app: "/b/fleetwave-demo-app".into(),
        }
    }

    fn site() -> LocalSite {
        LocalSite {
            id: "store \"1\"".into(),
            labels: BTreeMap::from([
                ("tz".to_string(), "Europe/Paris".to_string()),
                ("cohort".to_string(), "pig".to_string()),
            ]),
            root: "/fleet/sites/store-1".into(),
            app_addr: "127.0.0.1:4100".parse().unwrap(),
        }
    }

    #[test]
    fn the_agent_config_is_valid_toml_with_the_site_and_the_tuning() {
        let s = site();
        let text = s.agent_config(
            &bins(),
            &AgentConfig {
                written_by: "a test",
                url: "https://127.0.0.1:4000",
                also: &["https://127.0.0.1:4001".to_string()],
                ca: Path::new("/c/tls/ca.pem"),
                root: Path::new("/c/root.1.json"),
                tuning: AgentTuning {
                    wait_secs: 2,
                    jitter: 0.0,
                    backoff_max_secs: 2,
                    probe_name: "demo",
                },
                app_labels: true,
                extra: "\n[install]\nrollback_attempts = 2\n",
            },
        );
        let v: toml::Value = toml::from_str(&text).expect(&text);
        assert_eq!(v["agent"]["site_id"].as_str(), Some("store \"1\""));
        assert_eq!(
            v["coordinator"]["also"][0].as_str(),
            Some("https://127.0.0.1:4001")
        );
        assert_eq!(v["agent"]["site_time_zone"].as_str(), Some("Europe/Paris"));
        assert_eq!(v["poll"]["jitter"].as_float(), Some(0.0));
        assert_eq!(v["install"]["rollback_attempts"].as_integer(), Some(2));
        let restart: Vec<&str> = v["executor"]["app"]["restart_command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        assert_eq!(restart[0], "/b/fleetwave-demo-app");
        assert_eq!(restart[3], "/fleet/sites/store-1/apps/demo/current");
        assert_eq!(
            &restart[restart.len() - 4..],
            ["--label", "cohort=pig", "--label", "tz=Europe/Paris"]
        );
        assert_eq!(
            v["health"]["probes"][0]["url"].as_str(),
            Some("http://127.0.0.1:4100/healthz")
        );
    }

    #[test]
    fn commands_name_the_files_of_the_layout() {
        let c = LocalCoordinator {
            dir: "/c".into(),
            addr: "127.0.0.1:4000".parse().unwrap(),
        };
        let init = c.init(&bins());
        assert_eq!(
            init.args,
            [
                "init",
                "--dir",
                "/c",
                "--dev-root",
                "--listen",
                "127.0.0.1:4000"
            ]
            .map(OsString::from)
        );
        let serve = c.serve(&bins(), "info");
        assert_eq!(serve.cwd.as_deref(), Some(Path::new("/c")));
        assert!(serve.args.contains(&OsString::from("/c/coordinator.toml")));
        let run = site().run(&bins(), "debug");
        assert_eq!(
            run.args,
            ["--config", "/fleet/sites/store-1/agent.toml", "run"].map(OsString::from)
        );
        assert_eq!(
            run.env,
            vec![(OsString::from("FLEETWAVE_LOG"), OsString::from("debug"))]
        );
    }
}
