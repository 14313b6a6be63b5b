//! The `app` executor installing the real demo app (`fleetwave-demo-app`, a tiny HTTP
//! server) from artifacts served on loopback, restarting a real process and checking its
//! real `/healthz`.

#[path = "fixtures/support.rs"]
mod support;

use std::path::{Path, PathBuf};

use fleetwave_agent::executor::{
    ArtifactSource, Executor, ExecutorConfig, InstallOutcome, download,
};
use fleetwave_agent::readiness::Health;
use fleetwave_shared::{Release, ReleaseKind};
use serde_json::json;
use support::{Behaviour, DemoAppGuard, FileServer, artifact, release, tar_gz};

/// Field order matters: the demo app is stopped (guard) before its directory is deleted.
struct Site {
    config: ExecutorConfig,
    health: Health,
    server: FileServer,
    client: reqwest::Client,
    port: u16,
    pid_file: PathBuf,
    _guard: DemoAppGuard,
    _tmp: tempfile::TempDir,
}

impl Site {
    async fn new() -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let config = ExecutorConfig {
            apps_dir: tmp.path().join("apps"),
            staging_dir: tmp.path().join("staging"),
            ..ExecutorConfig::default()
        };
        let health = Health::new(support::quiet_health(2, 2), &config.staging_dir).unwrap();
        let server = FileServer::start().await;
        let client = server.client();
        let pid_file = tmp.path().join("demo.pid");
        Site {
            config,
            health,
            client,
            server,
            port: support::free_port(),
            _guard: DemoAppGuard {
                pid_file: pid_file.clone(),
            },
            pid_file,
            _tmp: tmp,
        }
    }

    fn root(&self) -> PathBuf {
        self.config.apps_dir.join("demo")
    }

    /// A demo app release: an archive with `app.toml`, restarted by the demo app's own
    /// restart helper, checked on its `/healthz`.
    fn release(&self, version: &str, healthy: bool) -> Release {
        let archive = demo_archive(version, healthy);
        let path = format!("/v1/artifacts/demo-{version}");
        let art = artifact("demo.tar.gz", &path, &archive);
        self.server.put(&path, archive, Behaviour::Normal);
        let demo = support::demo_app();
        release(
            "demo",
            version,
            ReleaseKind::App,
            vec![art],
            json!({
                "restart_command": [
                    demo.to_str().unwrap(), "restart",
                    "--dir", self.root().join("current").to_str().unwrap(),
                    "--listen", format!("127.0.0.1:{}", self.port),
                    "--pid-file", self.pid_file.to_str().unwrap(),
                ],
                "stop_command": [demo.to_str().unwrap(), "stop", "--pid-file", self.pid_file.to_str().unwrap()],
                "health_url": format!("http://127.0.0.1:{}/healthz", self.port),
                "verify_period_secs": 2,
            }),
        )
    }

    fn source(&self) -> ArtifactSource<'_> {
        ArtifactSource {
            client: &self.client,
            base_url: &self.server.base_url,
            bearer_token: Some("token"),
            max_bytes_per_sec: 0,
            peers: None,
        }
    }

    fn executor(&self, r: &Release) -> Executor {
        Executor::for_release(&self.config, &support::verified(r), false).unwrap()
    }

    /// prepare → install → verify → commit.
    async fn install_and_commit(&self, r: &Release) {
        let e = self.executor(r);
        e.prepare(&self.source()).await.unwrap();
        assert_eq!(e.install().await.unwrap(), InstallOutcome::Done);
        e.verify(&self.health, |_| {}).await.unwrap();
        e.commit().await.unwrap();
    }

    async fn running_version(&self) -> Option<String> {
        support::get(self.port, "/version").await.map(|(_, b)| b)
    }

    fn link(&self, name: &str) -> Option<String> {
        std::fs::read_link(self.root().join(name))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }
}

fn demo_archive(version: &str, healthy: bool) -> Vec<u8> {
    tar_gz(&[
        (
            "app.toml",
            format!("version = \"{version}\"\nhealthy = {healthy}\n").as_bytes(),
        ),
        ("README", b"demo"),
    ])
}

fn dirs(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn app_install_of_the_demo_app_restarts_it_checks_health_and_commits() {
    let site = Site::new().await;
    let v1 = site.release("1.0.0", true);
    site.install_and_commit(&v1).await;
    assert_eq!(site.running_version().await.as_deref(), Some("1.0.0"));
    let installed = site.executor(&v1).installed().await.unwrap().unwrap();
    assert_eq!(installed.version, "1.0.0");
    assert_eq!(installed.previous, None);
    let first_pid = support::read_pid(&site.pid_file).unwrap();

    let v2 = site.release("2.0.0", true);
    let mut samples = 0;
    let e2 = site.executor(&v2);
    e2.prepare(&site.source()).await.unwrap();
    e2.install().await.unwrap();
    let last = e2.verify(&site.health, |_| samples += 1).await.unwrap();
    assert!(
        samples >= 2,
        "sampled at the start and the end of the period"
    );
    assert!(
        last.checks
            .iter()
            .any(|c| c.name == "http:demo" && c.passed)
    );
    e2.commit().await.unwrap();
    assert_eq!(site.running_version().await.as_deref(), Some("2.0.0"));
    assert_ne!(
        support::read_pid(&site.pid_file).unwrap(),
        first_pid,
        "a new process runs"
    );
    assert_eq!(site.link("current").as_deref(), Some("2.0.0"));
    assert_eq!(site.link("previous").as_deref(), Some("1.0.0"));
    let installed = e2.installed().await.unwrap().unwrap();
    assert_eq!(
        (installed.version.as_str(), installed.previous.as_deref()),
        ("2.0.0", Some("1.0.0"))
    );

    // The third commit keeps current and previous only; staging is emptied.
    let v3 = site.release("3.0.0", true);
    site.install_and_commit(&v3).await;
    assert_eq!(dirs(&site.root()), ["2.0.0", "3.0.0"]);
    let staged = download::artifacts_dir(&site.config.staging_dir);
    assert_eq!(std::fs::read_dir(staged).unwrap().count(), 0);
}

#[tokio::test]
async fn an_unhealthy_release_fails_verify_and_rollback_restores_and_restarts_the_previous_app() {
    let site = Site::new().await;
    site.install_and_commit(&site.release("1.0.0", true)).await;

    let bad = site.release("2.0.0", false);
    let e = site.executor(&bad);
    e.prepare(&site.source()).await.unwrap();
    e.install().await.unwrap();
    assert_eq!(site.running_version().await.as_deref(), Some("2.0.0"));
    let err = e.verify(&site.health, |_| {}).await.unwrap_err();
    assert_eq!(err.code(), "unhealthy", "{err}");
    assert!(err.to_string().contains("http:demo: status 500"), "{err}");

    e.rollback().await.unwrap();
    assert_eq!(site.link("current").as_deref(), Some("1.0.0"));
    assert_eq!(site.running_version().await.as_deref(), Some("1.0.0"));
    assert_eq!(support::get(site.port, "/healthz").await.unwrap().0, 200);
    let pid = support::read_pid(&site.pid_file).unwrap();

    // A second rollback (recovery after a crash) changes nothing and restarts nothing.
    e.rollback().await.unwrap();
    assert_eq!(site.link("current").as_deref(), Some("1.0.0"));
    assert_eq!(support::read_pid(&site.pid_file).unwrap(), pid);
    assert_eq!(e.installed().await.unwrap().unwrap().version, "1.0.0");
}

#[tokio::test]
async fn each_app_step_is_idempotent_when_called_twice() {
    let site = Site::new().await;
    site.install_and_commit(&site.release("1.0.0", true)).await;
    let v2 = site.release("2.0.0", true);
    let e = site.executor(&v2);

    e.prepare(&site.source()).await.unwrap();
    let requests = site.server.seen().len();
    e.prepare(&site.source()).await.unwrap();
    assert_eq!(
        site.server.seen().len(),
        requests,
        "a prepared version is not fetched again"
    );

    e.install().await.unwrap();
    e.install().await.unwrap();
    assert_eq!(site.link("current").as_deref(), Some("2.0.0"));
    assert_eq!(
        site.link("previous").as_deref(),
        Some("1.0.0"),
        "previous is not overwritten"
    );
    assert_eq!(site.running_version().await.as_deref(), Some("2.0.0"));

    e.verify(&site.health, |_| {}).await.unwrap();
    e.verify(&site.health, |_| {}).await.unwrap();
    e.commit().await.unwrap();
    e.commit().await.unwrap();
    assert_eq!(dirs(&site.root()), ["1.0.0", "2.0.0"]);
    assert!(e.is_target_installed().await.unwrap());
}

#[tokio::test]
async fn a_tampered_artifact_is_refused_before_anything_is_unpacked() {
    let site = Site::new().await;
    let r = site.release("1.0.0", true);
    let path = "/v1/artifacts/demo-1.0.0";
    // Same length, one byte changed in transit or on the mirror.
    let mut evil = demo_archive("1.0.0", true);
    let mid = evil.len() / 2;
    evil[mid] ^= 0x01;
    site.server.put(path, evil, Behaviour::Normal);
    let e = site.executor(&r);
    let err = e.prepare(&site.source()).await.unwrap_err();
    assert_eq!(err.code(), "artifact_mismatch", "{err}");
    assert!(!site.root().join("1.0.0").exists());
    assert!(!site.root().join(".tmp-1.0.0").exists());
    assert!(e.installed().await.unwrap().is_none());
    let err = e.install().await.unwrap_err();
    assert!(err.to_string().contains("not prepared"), "{err}");
}

#[tokio::test]
async fn an_archive_with_an_escaping_entry_leaves_no_version_directory() {
    let site = Site::new().await;
    let mut b = support::TarBuilder::new();
    b.file("app.toml", b"version = \"1.0.0\"\nhealthy = true\n")
        .file("../../escape", b"x");
    let archive = b.finish();
    let art = artifact("demo.tar.gz", "/a", &archive);
    site.server.put("/a", archive, Behaviour::Normal);
    let r = release("demo", "1.0.0", ReleaseKind::App, vec![art], json!({}));
    let err = site.executor(&r).prepare(&site.source()).await.unwrap_err();
    assert_eq!(err.code(), "unsafe_archive", "{err}");
    assert_eq!(dirs(&site.root()), Vec::<String>::new());
    assert!(!site.config.apps_dir.join("escape").exists());
}

#[tokio::test]
async fn rolling_back_a_first_install_stops_the_app_and_removes_current() {
    let site = Site::new().await;
    let r = site.release("1.0.0", false);
    let e = site.executor(&r);
    e.prepare(&site.source()).await.unwrap();
    e.install().await.unwrap();
    assert!(e.verify(&site.health, |_| {}).await.is_err());
    e.rollback().await.unwrap();
    assert!(site.link("current").is_none());
    assert!(
        site.running_version().await.is_none(),
        "the app was stopped"
    );
    assert!(e.installed().await.unwrap().is_none());
    e.rollback().await.unwrap();
}

#[tokio::test]
async fn a_single_file_artifact_is_placed_with_its_mode() {
    let site = Site::new().await;
    let bytes = b"#!/bin/sh\necho tool 1.0\n".to_vec();
    let art = artifact("tool", "/tool", &bytes);
    site.server.put("/tool", bytes, Behaviour::Normal);
    let r = release(
        "tool",
        "1.0",
        ReleaseKind::App,
        vec![art],
        json!({"format": "file", "file_mode": "0750", "verify_period_secs": 0}),
    );
    let e = site.executor(&r);
    e.prepare(&site.source()).await.unwrap();
    e.install().await.unwrap();
    e.verify(&site.health, |_| {}).await.unwrap();
    e.commit().await.unwrap();
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(site.config.apps_dir.join("tool/current/tool")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o750);
}

#[test]
fn bad_install_params_are_refused_naming_the_key() {
    let config = ExecutorConfig::default();
    let art = artifact("a.tar.gz", "/a", b"x");
    for (params, key) in [
        (json!({"format": "zip"}), "format"),
        (json!({"restart_command": 5}), "restart_command"),
        (json!({"health_url": "ftp://x"}), "health_url"),
        (json!({"target": "toaster"}), "target"),
        (json!({"file_mode": "rwx"}), "file_mode"),
    ] {
        let r = release("demo", "1.0", ReleaseKind::App, vec![art.clone()], params);
        let err = Executor::for_release(&config, &support::verified(&r), false).unwrap_err();
        assert_eq!(err.code(), "bad_install_params");
        assert!(err.to_string().contains(key), "{err}");
    }
    let r = release("../etc", "1.0", ReleaseKind::App, vec![art], json!({}));
    assert!(Executor::for_release(&config, &support::verified(&r), false).is_err());
}
