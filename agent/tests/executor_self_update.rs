//! Agent self-update with stand-in agent binaries (shell scripts that print
//! `fleetwave-agent VERSION`): staged, swapped atomically keeping `.previous`, and restored
//! by the guard when the new agent does not check in.

#[path = "fixtures/support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetwave_agent::executor::self_update::{self, GuardOutcome};
use fleetwave_agent::executor::{ArtifactSource, Executor, ExecutorConfig, InstallOutcome};
use fleetwave_agent::readiness::{CommandLine, Health};
use fleetwave_shared::{Release, ReleaseKind};
use serde_json::json;
use support::{Behaviour, FileServer, artifact, release, write_script};

fn stand_in_agent(version: &str) -> String {
    format!(
        "#!/bin/sh\n# stand-in agent binary for self-update tests\n[ \"$1\" = --version ] && echo \"fleetwave-agent {version}\"\n"
    )
}

struct Box_ {
    config: ExecutorConfig,
    health: Health,
    server: FileServer,
    client: reqwest::Client,
    binary: PathBuf,
    restarts: PathBuf,
    _tmp: tempfile::TempDir,
}

async fn a_box() -> Box_ {
    let tmp = tempfile::tempdir().unwrap();
    let binary = tmp.path().join("fleetwave-agent");
    write_script(&binary, &stand_in_agent("0.1.0"));
    let restarts = tmp.path().join("restarts");
    let config = ExecutorConfig {
        staging_dir: tmp.path().join("staging"),
        self_update: self_update::SelfUpdateConfig {
            binary: binary.clone(),
            restart_command: CommandLine::Shell(format!("echo restart >> {}", restarts.display())),
            ..Default::default()
        },
        ..Default::default()
    };
    let health = Health::new(support::quiet_health(0, 1), &config.staging_dir).unwrap();
    let server = FileServer::start().await;
    Box_ {
        client: server.client(),
        server,
        config,
        health,
        binary,
        restarts,
        _tmp: tmp,
    }
}

impl Box_ {
    fn release(&self, version: &str, reports: &str) -> Release {
        let bytes = stand_in_agent(reports).into_bytes();
        let path = format!("/agent-{version}-{reports}");
        let art = artifact("fleetwave-agent", &path, &bytes);
        self.server.put(&path, bytes, Behaviour::Normal);
        release(
            "fleetwave-agent",
            version,
            ReleaseKind::App,
            vec![art],
            json!({"target": "agent"}),
        )
    }

    fn source(&self) -> ArtifactSource<'_> {
        ArtifactSource {
            client: &self.client,
            base_url: &self.server.base_url,
            bearer_token: None,
            max_bytes_per_sec: 0,
            peers: None,
        }
    }

    fn version_of(&self, path: &Path) -> String {
        let out = std::process::Command::new(path)
            .arg("--version")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn restarts(&self) -> usize {
        std::fs::read_to_string(&self.restarts)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

#[tokio::test]
async fn self_update_swaps_the_binary_keeping_the_previous_and_asks_the_daemon_to_restart() {
    let b = a_box().await;
    let r = b.release("0.2.0", "0.2.0");
    let e = Executor::for_release(&b.config, &support::verified(&r), false).unwrap();
    assert_eq!(e.kind_name(), "agent");
    e.prepare(&b.source()).await.unwrap();
    assert_eq!(
        b.version_of(&b.binary),
        "fleetwave-agent 0.1.0",
        "prepare only stages"
    );
    assert_eq!(e.install().await.unwrap(), InstallOutcome::RestartAgent);
    assert_eq!(e.install().await.unwrap(), InstallOutcome::RestartAgent);
    assert_eq!(b.version_of(&b.binary), "fleetwave-agent 0.2.0");
    assert_eq!(
        b.version_of(&b.config.self_update.guard_binary()),
        "fleetwave-agent 0.1.0"
    );
    assert_eq!(
        b.restarts(),
        0,
        "the daemon restarts itself, not the executor"
    );
    // The new agent, after its restart:
    e.verify(&b.health, |_| {}).await.unwrap();
    e.commit().await.unwrap();
    let installed = e.installed().await.unwrap().unwrap();
    assert_eq!(installed.version, "0.2.0");
    assert_eq!(installed.previous.as_deref(), Some("0.1.0"));
}

#[tokio::test]
async fn self_update_refuses_a_binary_that_reports_another_version() {
    let b = a_box().await;
    let r = b.release("0.2.0", "0.1.9");
    let e = Executor::for_release(&b.config, &support::verified(&r), false).unwrap();
    let err = e.prepare(&b.source()).await.unwrap_err();
    assert_eq!(err.code(), "artifact_mismatch");
    assert!(err.to_string().contains("reports version 0.1.9"), "{err}");
}

#[tokio::test]
async fn the_guard_restores_the_previous_binary_when_the_new_agent_never_checks_in() {
    let b = a_box().await;
    let r = b.release("0.2.0", "0.2.0");
    let e = Executor::for_release(&b.config, &support::verified(&r), false).unwrap();
    e.prepare(&b.source()).await.unwrap();
    e.install().await.unwrap();
    let sha = &r.artifacts[0].sha256;
    let mut asked = 0;
    let outcome = self_update::guard(
        &b.config.self_update,
        sha,
        Duration::from_millis(300),
        Duration::from_millis(50),
        async || {
            asked += 1;
            false
        },
    )
    .await
    .unwrap();
    assert_eq!(outcome, GuardOutcome::RolledBack);
    assert!(asked >= 2);
    assert_eq!(b.version_of(&b.binary), "fleetwave-agent 0.1.0");
    assert_eq!(b.restarts(), 1);

    // A second guard (or the old agent's rollback) finds nothing left to do.
    let again = self_update::guard(
        &b.config.self_update,
        sha,
        Duration::ZERO,
        Duration::from_millis(50),
        async || false,
    )
    .await
    .unwrap();
    assert_eq!(again, GuardOutcome::AlreadyRestored);
    e.rollback().await.unwrap();
    assert_eq!(b.restarts(), 1);
}

#[tokio::test]
async fn the_guard_leaves_a_confirmed_update_alone() {
    let b = a_box().await;
    let r = b.release("0.2.0", "0.2.0");
    let e = Executor::for_release(&b.config, &support::verified(&r), false).unwrap();
    e.prepare(&b.source()).await.unwrap();
    e.install().await.unwrap();
    let mut calls = 0;
    let outcome = self_update::guard(
        &b.config.self_update,
        &r.artifacts[0].sha256,
        Duration::from_secs(30),
        Duration::from_millis(20),
        async || {
            calls += 1;
            calls >= 3
        },
    )
    .await
    .unwrap();
    assert_eq!(outcome, GuardOutcome::Confirmed);
    assert_eq!(b.version_of(&b.binary), "fleetwave-agent 0.2.0");
    assert_eq!(b.restarts(), 0);
}

#[tokio::test]
async fn a_self_update_rollback_restores_and_restarts_once() {
    let b = a_box().await;
    let r = b.release("0.2.0", "0.2.0");
    let e = Executor::for_release(&b.config, &support::verified(&r), false).unwrap();
    e.prepare(&b.source()).await.unwrap();
    e.install().await.unwrap();
    e.rollback().await.unwrap();
    e.rollback().await.unwrap();
    assert_eq!(b.version_of(&b.binary), "fleetwave-agent 0.1.0");
    assert_eq!(b.restarts(), 1);
}

#[test]
fn spawn_guard_starts_the_previous_binary_detached() {
    let tmp = tempfile::tempdir().unwrap();
    let binary = tmp.path().join("fleetwave-agent");
    let marker = tmp.path().join("guard-ran");
    let previous = tmp.path().join("fleetwave-agent.previous");
    write_script(
        &previous,
        &format!(
            "#!/bin/sh\necho \"$@\" > {}.tmp && mv {0}.tmp {0}\n",
            marker.display()
        ),
    );
    let config = self_update::SelfUpdateConfig {
        binary,
        guard_launcher: vec![],
        ..Default::default()
    };
    self_update::spawn_guard(
        &config,
        &[
            "self-update-guard".into(),
            "--config".into(),
            "a.toml".into(),
        ],
    )
    .unwrap();
    // Wait for the detached process to leave its mark (bounded; not a timing assertion).
    let _ = fleetwave_testkit::wait_blocking(
        fleetwave_testkit::patience(Duration::from_secs(5)),
        || if marker.exists() { Ok(()) } else { Err(()) },
    );
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        "self-update-guard --config a.toml"
    );
}
