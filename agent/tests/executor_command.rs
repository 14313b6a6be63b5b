//! The `command` executor running real operator scripts: exit codes 0 (ok), 1 (fail, roll
//! back) and 21 (retry later), and the environment the scripts get.

#[path = "fixtures/support.rs"]
mod support;

use std::path::Path;

use fleetwave_agent::executor::{ArtifactSource, Executor, ExecutorConfig};
use fleetwave_agent::readiness::Health;
use fleetwave_shared::{Release, ReleaseKind};
use serde_json::json;
use support::{Behaviour, FileServer, artifact, release, write_script};

/// A script that logs its step and environment to `log`, then exits with the code found in
/// `<dir>/exit-<step>` (0 when absent).
fn logging_script(dir: &Path, log: &Path) -> String {
    let script = dir.join("step.sh");
    write_script(
        &script,
        &format!(
            "#!/bin/sh\n\
             echo \"$FLEETWAVE_STEP $FLEETWAVE_RELEASE_ID $FLEETWAVE_VERSION rollback=$FLEETWAVE_ROLLBACK artifact=$(cat \"$FLEETWAVE_ARTIFACT\") cwd=$(pwd)\" >> {log}\n\
             code=$(cat {dir}/exit-$FLEETWAVE_STEP 2>/dev/null || echo 0)\n\
             echo \"step $FLEETWAVE_STEP exits $code\" >&2\n\
             exit $code\n",
            log = log.display(),
            dir = dir.display()
        ),
    );
    script.to_str().unwrap().to_string()
}

struct Setup {
    config: ExecutorConfig,
    health: Health,
    server: FileServer,
    client: reqwest::Client,
    dir: std::path::PathBuf,
    log: std::path::PathBuf,
    release: Release,
    _tmp: tempfile::TempDir,
}

async fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let log = dir.join("log");
    let script = logging_script(&dir, &log);
    let mut config = ExecutorConfig {
        apps_dir: dir.join("apps"),
        staging_dir: dir.join("staging"),
        ..ExecutorConfig::default()
    };
    // Defaults from the agent config; the release overrides `install`.
    config.command.prepare = Some(fleetwave_agent::readiness::CommandLine::argv(&[&script]));
    config.command.install = Some(fleetwave_agent::readiness::CommandLine::argv(&["false"]));
    let server = FileServer::start().await;
    server.put("/chart", b"chart-v2".to_vec(), Behaviour::Normal);
    let release = release(
        "edge-stack",
        "2.0.0",
        ReleaseKind::Command,
        vec![artifact("chart.tgz", "/chart", b"chart-v2")],
        json!({
            "install": script, "verify": script, "commit": script, "rollback": script,
            "verify_period_secs": 0,
        }),
    );
    let health = Health::new(support::quiet_health(0, 1), &config.staging_dir).unwrap();
    Setup {
        client: server.client(),
        server,
        config,
        health,
        dir,
        log,
        release,
        _tmp: tmp,
    }
}

impl Setup {
    fn source(&self) -> ArtifactSource<'_> {
        ArtifactSource {
            client: &self.client,
            base_url: &self.server.base_url,
            bearer_token: None,
            max_bytes_per_sec: 0,
            peers: None,
        }
    }

    fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn exit(&self, step: &str, code: i32) {
        std::fs::write(self.dir.join(format!("exit-{step}")), code.to_string()).unwrap();
    }
}

#[tokio::test]
async fn command_executor_runs_every_step_with_exit_code_0_and_passes_the_release_env() {
    let s = setup().await;
    let e = Executor::for_release(&s.config, &support::verified(&s.release), false).unwrap();
    e.prepare(&s.source()).await.unwrap();
    e.install().await.unwrap();
    e.verify(&s.health, |_| {}).await.unwrap();
    e.commit().await.unwrap();
    let lines = s.log_lines();
    let steps: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(steps, ["prepare", "install", "verify", "commit"]);
    assert!(
        lines[1].contains("edge-stack-2.0.0 2.0.0 rollback=0 artifact=chart-v2"),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains("staging/work/edge-stack-2.0.0"),
        "{}",
        lines[1]
    );
    let installed = e.installed().await.unwrap().unwrap();
    assert_eq!(installed.version, "2.0.0");
}

#[tokio::test]
async fn command_executor_exit_code_1_fails_the_step_and_rollback_runs_the_rollback_script() {
    let s = setup().await;
    s.exit("install", 1);
    let e = Executor::for_release(&s.config, &support::verified(&s.release), false).unwrap();
    e.prepare(&s.source()).await.unwrap();
    let err = e.install().await.unwrap_err();
    assert_eq!(err.code(), "command_failed");
    assert!(!err.is_retryable());
    assert!(
        err.to_string()
            .contains("exit code 1: step install exits 1"),
        "{err}"
    );
    e.rollback().await.unwrap();
    let steps: Vec<String> = s
        .log_lines()
        .iter()
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(steps, ["prepare", "install", "rollback"]);
    assert!(e.installed().await.unwrap().is_none());
}

#[tokio::test]
async fn command_executor_exit_code_21_asks_to_retry_later() {
    let s = setup().await;
    s.exit("prepare", 21);
    let e = Executor::for_release(&s.config, &support::verified(&s.release), true).unwrap();
    let err = e.prepare(&s.source()).await.unwrap_err();
    assert_eq!(err.code(), "retry_later");
    // Not a download to retry with the poll back-off for ever: the daemon runs the step
    // again at most `max_retries` times (see `agent_retry_later.rs`).
    assert!(!err.is_retryable());
    assert_eq!(e.retry_policy().max_retries, 5);
    assert!(s.log_lines()[0].contains("rollback=1"));
    // The retry succeeds once the script says so.
    s.exit("prepare", 0);
    e.prepare(&s.source()).await.unwrap();
}

#[tokio::test]
async fn command_executor_verify_script_failure_is_reported_before_the_watch() {
    let s = setup().await;
    s.exit("verify", 3);
    let e = Executor::for_release(&s.config, &support::verified(&s.release), false).unwrap();
    e.prepare(&s.source()).await.unwrap();
    e.install().await.unwrap();
    let err = e.verify(&s.health, |_| {}).await.unwrap_err();
    assert_eq!(err.code(), "command_failed");
    assert!(err.to_string().contains("exit code 3"), "{err}");
}

#[test]
fn a_command_release_without_an_install_script_is_refused() {
    let config = ExecutorConfig::default();
    let r = release("x", "1", ReleaseKind::Command, vec![], json!({}));
    let err = Executor::for_release(&config, &support::verified(&r), false).unwrap_err();
    assert_eq!(err.code(), "bad_install_params");
    assert!(err.to_string().contains("install"), "{err}");
}
