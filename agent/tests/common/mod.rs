//! Test harness for the agent's integration tests: a real coordinator (in-process, TLS on
//! 127.0.0.1, temp SQLite file, development root from `fleetwave-coordinator init`), an
//! async operator client, release signing with the offline release key, and real
//! `fleetwave-agent` processes with their own state directories.
//!
//! Nothing here is a stand-in: the coordinator is the real server, the agent is the real
//! binary, the demo app is the real `fleetwave-demo-app` (built by `cargo build -p
//! fleetwave-e2e`).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use fleetwave_coordinator::config::Config as CoordinatorConfig;
use fleetwave_coordinator::init::{InitOptions, init};
use fleetwave_coordinator::server::{Running, Transport, start};
use fleetwave_shared::docs::{ASSIGNMENT_TYPE, RELEASE_TYPE};
use fleetwave_shared::protocol::operator as api;
use fleetwave_shared::{Artifact, Assignment, Envelope, Release, ReleaseKind};
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Awaits a condition: the one helper of every suite.
pub use fleetwave_testkit::eventually;

/// A built binary of the workspace, or a clear panic saying how to build it.
pub fn workspace_binary(name: &str) -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| here.join("../target"));
    let path = target.join("debug").join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build -p fleetwave-e2e --bin {name}`",
        path.display()
    );
    path
}

/// A running coordinator and the files `init` made.
pub struct Coordinator {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub url: String,
    pub ca: PathBuf,
    pub root: PathBuf,
    pub admin_token: String,
    running: Option<Running>,
    http: reqwest::Client,
    /// Applied to the configuration at every start (limits for a test).
    tune: fn(&mut CoordinatorConfig),
}

impl Coordinator {
    pub async fn start() -> Coordinator {
        Self::start_tuned(|_| {}).await
    }

    /// Starts a coordinator whose configuration `tune` changed (kept across restarts).
    pub async fn start_tuned(tune: fn(&mut CoordinatorConfig)) -> Coordinator {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let out =
            init(&InitOptions::dev_loopback(dir.path().to_path_buf())).expect("coordinator init");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let running = start(Self::config(dir.path(), tune), Transport::Tls, listener)
            .await
            .expect("coordinator starts");
        let pem = std::fs::read(&out.ca_cert).unwrap();
        let http = reqwest::Client::builder()
            .tls_backend_rustls()
            .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
            .build()
            .unwrap();
        Coordinator {
            url: format!("https://127.0.0.1:{}", addr.port()),
            addr,
            ca: out.ca_cert,
            root: dir.path().join("root.1.json"),
            admin_token: out.admin_token,
            running: Some(running),
            http,
            tune,
            dir,
        }
    }

    fn config(dir: &Path, tune: fn(&mut CoordinatorConfig)) -> CoordinatorConfig {
        let mut config = CoordinatorConfig::load(&dir.join("coordinator.toml")).unwrap();
        config.poll.interval_secs = 1;
        config.controller.tick_millis = 200;
        tune(&mut config);
        config
    }

    /// Stops the server (the database stays).
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }

    /// Starts the server again on the same address.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.running = Some(
            start(
                Self::config(self.dir.path(), self.tune),
                Transport::Tls,
                listener,
            )
            .await
            .expect("coordinator restarts"),
        );
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> T {
        let res = req.bearer_auth(&self.admin_token).send().await.unwrap();
        let status = res.status();
        let body = res.bytes().await.unwrap();
        assert!(
            status.is_success(),
            "operator request failed: {status}: {}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).unwrap()
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> T {
        self.send(self.http.get(format!("{}{path}", self.url)))
            .await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> T {
        self.send(self.http.post(format!("{}{path}", self.url)).json(body))
            .await
    }

    pub async fn enrollment_token(&self, site: &str) -> String {
        let created: api::EnrollmentTokenCreated = self
            .post(
                api::paths::ENROLLMENT_TOKENS,
                &api::CreateEnrollmentToken {
                    labels: [("cohort".to_string(), "pig".to_string())].into(),
                    site_id: Some(site.to_string()),
                    expires_in_secs: None,
                    uses: None,
                },
            )
            .await;
        created.token
    }

    pub async fn site(&self, id: &str) -> api::SiteInfo {
        self.get(&format!("{}/{id}", api::paths::SITES)).await
    }

    pub async fn upload(&self, bytes: Vec<u8>) -> String {
        let sha = fleetwave_shared::sha256_hex(&bytes);
        let _: serde_json::Value = self
            .send(
                self.http
                    .put(format!("{}/v1/artifacts/{sha}", self.url))
                    .body(bytes),
            )
            .await;
        sha
    }

    pub fn release_key(&self) -> ed25519_dalek::SigningKey {
        fleetwave_shared::keys::read_private_key(&self.dir.path().join("offline-keys/release.key"))
            .unwrap()
    }

    pub fn coordinator_key(&self) -> ed25519_dalek::SigningKey {
        fleetwave_shared::keys::read_private_key(&self.dir.path().join("coordinator.key")).unwrap()
    }

    /// Signs and publishes a demo app release whose artifact is `artifact` (uploaded);
    /// `signed_bytes` are the bytes the release's length and SHA-256 describe (normally
    /// the same).
    pub async fn publish_demo(
        &self,
        version: &str,
        counter: u64,
        healthy: bool,
        tamper: bool,
        site: &Site,
    ) -> Envelope {
        let good = demo_artifact(version, healthy);
        self.upload(good.clone()).await;
        let url_sha = if tamper {
            self.upload(demo_artifact(&format!("{version}-evil"), healthy))
                .await
        } else {
            fleetwave_shared::sha256_hex(&good)
        };
        let env = self.sign_demo_release(version, counter, &good, &url_sha, site);
        let _: serde_json::Value = self.post(api::paths::RELEASES, &env).await;
        env
    }

    /// A signed demo release describing `artifact`, served from `/v1/artifacts/<url_sha>`.
    pub fn sign_demo_release(
        &self,
        version: &str,
        counter: u64,
        artifact: &[u8],
        url_sha: &str,
        site: &Site,
    ) -> Envelope {
        let release = Release {
            id: format!("demo-{version}"),
            name: "demo".into(),
            version: version.into(),
            kind: ReleaseKind::App,
            counter,
            issued_at: Timestamp::now() - SignedDuration::from_secs(5),
            expires: Timestamp::now() + SignedDuration::from_hours(24),
            artifacts: vec![Artifact {
                name: "app.tar.gz".into(),
                url: format!("/v1/artifacts/{url_sha}"),
                length: artifact.len() as u64,
                sha256: fleetwave_shared::sha256_hex(artifact),
            }],
            install: [
                ("format".to_string(), serde_json::json!("tar.gz")),
                ("verify_period_secs".to_string(), serde_json::json!(3)),
                (
                    "health_url".to_string(),
                    serde_json::json!(format!("http://{}/healthz", site.app_addr)),
                ),
            ]
            .into(),
            min_agent_version: None,
        };
        Envelope::sign(
            RELEASE_TYPE,
            &serde_json::to_vec(&release).unwrap(),
            &[&self.release_key()],
        )
    }

    /// Signs `release` with the offline release key and publishes it (its artifacts must
    /// have been uploaded).
    pub async fn publish_release(&self, release: &Release) -> Envelope {
        let env = Envelope::sign(
            RELEASE_TYPE,
            &serde_json::to_vec(release).unwrap(),
            &[&self.release_key()],
        );
        let _: serde_json::Value = self.post(api::paths::RELEASES, &env).await;
        env
    }

    /// Uploads a small artifact and publishes a `command` release `<name>-<version>` with
    /// these install parameters (scripts and settings); returns its id.
    pub async fn publish_command(
        &self,
        name: &str,
        version: &str,
        install: serde_json::Value,
    ) -> String {
        let bytes = format!("{name} {version} chart").into_bytes();
        let sha = self.upload(bytes.clone()).await;
        let release = Release {
            id: format!("{name}-{version}"),
            name: name.into(),
            version: version.into(),
            kind: ReleaseKind::Command,
            counter: 1,
            issued_at: Timestamp::now() - SignedDuration::from_secs(5),
            expires: Timestamp::now() + SignedDuration::from_hours(24),
            artifacts: vec![Artifact {
                name: "chart.tgz".into(),
                url: format!("/v1/artifacts/{sha}"),
                length: bytes.len() as u64,
                sha256: sha,
            }],
            install: serde_json::from_value(install).unwrap(),
            min_agent_version: None,
        };
        self.publish_release(&release).await;
        release.id
    }

    /// Creates and starts a one-wave rollout of `release_id` to the pig cohort.
    pub async fn rollout(&self, release_id: &str) -> String {
        let plan = format!(
            "name = \"test {release_id}\"\nrelease = \"{release_id}\"\n\n[[waves]]\nname = \"all\"\ngate = {{ success_ratio = 1.0, failure_budget = 0, bake = \"1s\" }}\n"
        );
        let view: api::RolloutView = self
            .post(
                api::paths::ROLLOUTS,
                &api::CreateRollout {
                    plan,
                    format: api::PlanFormat::Toml,
                },
            )
            .await;
        let _: api::RolloutView = self
            .post(
                &format!("{}/{}/start", api::paths::ROLLOUTS, view.id),
                &serde_json::json!({}),
            )
            .await;
        view.id
    }

    /// Waits until the rollout is no longer active (completed, halted, ...).
    pub async fn rollout_finished(&self, id: &str) -> api::RolloutStatus {
        eventually(&format!("rollout {id} finishes"), || async {
            let view: api::RolloutView = self.get(&format!("{}/{id}", api::paths::ROLLOUTS)).await;
            (!view.status.is_active()).then_some(view.status)
        })
        .await
    }

    /// An assignment signed with the coordinator's key (as the coordinator would).
    pub fn sign_assignment(&self, assignment: &Assignment) -> Envelope {
        Envelope::sign(
            ASSIGNMENT_TYPE,
            &serde_json::to_vec(assignment).unwrap(),
            &[&self.coordinator_key()],
        )
    }
}

/// The demo app's artifact: a tar.gz with `app.toml`.
pub fn demo_artifact(version: &str, healthy: bool) -> Vec<u8> {
    let body = format!("version = \"{version}\"\nhealthy = {healthy}\n");
    let mut out = Vec::new();
    {
        let gz = flate2::write::GzEncoder::new(&mut out, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, "app.toml", body.as_bytes())
            .unwrap();
        tar.into_inner().unwrap().finish().unwrap();
    }
    out
}

/// One box: its directory, config and the agent processes started for it.
pub struct Site {
    pub id: String,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub app_addr: SocketAddr,
}

pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

impl Site {
    pub fn new(id: &str, coordinator: &Coordinator) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let app_addr = free_addr();
        let root = dir.path();
        let demo = workspace_binary("fleetwave-demo-app");
        let q = |p: &Path| serde_json::to_string(&p.display().to_string()).unwrap();
        let pid = root.join("demo-app.pid");
        let restart = format!(
            "[{}, \"restart\", \"--dir\", {}, \"--listen\", \"{app_addr}\", \"--pid-file\", {}, \"--log\", {}]",
            q(&demo),
            q(&root.join("apps/demo/current")),
            q(&pid),
            q(&root.join("demo-app.log"))
        );
        let stop = format!("[{}, \"stop\", \"--pid-file\", {}]", q(&demo), q(&pid));
        let config = format!(
            r#"[coordinator]
url = "{url}"
ca_file = {ca}
request_timeout_secs = 10

[agent]
state_dir = {state}
root_file = {rootfile}

[poll]
interval_secs = 1
wait_secs = 2
jitter = 0.1
backoff_min_secs = 1
backoff_max_secs = 2

[health]
interval_secs = 2
min_free_disk_bytes = 1048576
disk_margin = 1.0
min_mem_available_bytes = 0
max_load_per_cpu = 0.0

[health.verify]
period_secs = 3
interval_secs = 1
fail_after = 2

[executor]
staging_dir = {staging}
apps_dir = {apps}

[executor.app]
restart_command = {restart}
stop_command = {stop}
command_timeout_secs = 60
"#,
            url = coordinator.url,
            ca = q(&coordinator.ca),
            state = q(&root.join("state")),
            rootfile = q(&coordinator.root),
            staging = q(&root.join("staging")),
            apps = q(&root.join("apps")),
        );
        let config_path = root.join("agent.toml");
        std::fs::write(&config_path, config).unwrap();
        Site {
            id: id.to_string(),
            dir,
            config: config_path,
            app_addr,
        }
    }

    pub fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetwave-agent"));
        cmd.arg("--config")
            .arg(&self.config)
            .env("FLEETWAVE_LOG", "info,fleetwave_agent=debug")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs a local command to completion: (exit code, stdout, stderr).
    pub async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.command().args(args).output().await.unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub async fn enroll(&self, coordinator: &Coordinator) {
        let token = coordinator.enrollment_token(&self.id).await;
        let (code, out, err) = self
            .cli(&["enroll", "--token", &token, "--site", &self.id])
            .await;
        assert_eq!(code, 0, "enroll failed: {out}{err}");
    }

    /// Appends TOML (e.g. an `[install]` table) to the agent's configuration.
    pub fn configure(&self, toml: &str) {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push('\n');
        text.push_str(toml);
        std::fs::write(&self.config, text).unwrap();
    }

    /// Starts the daemon; its stderr goes to `<dir>/agent-N.log`.
    pub fn run(&self, env: &[(&str, &str)]) -> tokio::process::Child {
        let n = std::fs::read_dir(self.dir.path()).unwrap().count();
        let log = std::fs::File::create(self.dir.path().join(format!("agent-{n}.log"))).unwrap();
        let mut cmd = self.command();
        cmd.arg("run").stdout(Stdio::null()).stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    }

    pub async fn status(&self) -> serde_json::Value {
        let (code, out, err) = self.cli(&["status", "--json"]).await;
        assert_eq!(code, 0, "status failed: {err}");
        serde_json::from_str(&out).unwrap()
    }

    /// Everything the daemons logged so far (for failure messages).
    pub fn logs(&self) -> String {
        let mut all = String::new();
        let mut entries: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        entries.sort();
        for p in entries {
            all.push_str(&format!("--- {}\n", p.display()));
            all.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
        }
        all
    }

    /// `GET /version` of the demo app on this box.
    pub async fn app_version(&self) -> Option<String> {
        let res = reqwest::get(format!("http://{}/version", self.app_addr))
            .await
            .ok()?;
        res.text().await.ok().map(|t| t.trim().to_string())
    }

    pub fn state(&self) -> fleetwave_agent::state::Store {
        fleetwave_agent::state::Store::open(&self.dir.path().join("state")).unwrap()
    }
}

/// Stops the demo app started for a site (best effort, for cleanup).
impl Drop for Site {
    fn drop(&mut self) {
        let pid = self.dir.path().join("demo-app.pid");
        if pid.exists() {
            let _ = std::process::Command::new(workspace_binary("fleetwave-demo-app"))
                .args(["stop", "--pid-file"])
                .arg(&pid)
                .status();
        }
    }
}
