//! Agent self-update: a release of kind `app` with install parameter `target = "agent"`.
//!
//! Sequence (see docs/executors.md):
//! 1. prepare: download and verify the new binary, stage it as `<binary>.fleetwave-new`,
//!    and check that it runs and reports the release's version (`<new> --version`).
//! 2. install: copy the running binary to `<binary>.previous`, rename the new one over
//!    `<binary>`; answer [`InstallOutcome::RestartAgent`].
//! 3. the daemon records journal step `verify`, starts [`spawn_guard`] (the guard runs from
//!    `<binary>.previous`, outside the service's cgroup) and restarts its own service.
//! 4. the new agent starts, finds the journal at `verify`, runs verify (its own version is
//!    the target, a health sample passes) and commit, and checks in healthy.
//! 5. the guard ([`guard`]) waits up to the verify period for that; if it does not see it,
//!    it restores `<binary>.previous` and restarts the service.
//!
//! This module never restarts the service in the middle of a step except in
//! [`SelfUpdateConfig::restart_command`] calls made by rollback and the guard.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fleetwave_shared::{Artifact, Release};
use serde::{Deserialize, Serialize};

use super::app::{path_str, pick_artifact, remove_staged, run_checked};
use super::download::{self, ArtifactSource};
use super::params::Params;
use super::{ExecError, ExecutorConfig, InstallOutcome, InstalledVersion, Step, binary};
use crate::readiness::process::{self, CommandLine, RunOptions};
use crate::readiness::{CheckResult, Health, HealthSample};

/// `[executor.self_update]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelfUpdateConfig {
    /// The agent binary the service runs. Default `/usr/local/bin/fleetwave-agent`.
    pub binary: PathBuf,
    /// Restarts the agent's service. Default `["systemctl", "restart", "fleetwave-agent"]`.
    pub restart_command: CommandLine,
    /// Prefix that starts the guard outside the service (so a service restart does not kill
    /// it). Default `["systemd-run", "--unit=fleetwave-agent-self-update-guard",
    /// "--collect", "--quiet"]`; an empty list starts it as a detached child process.
    pub guard_launcher: Vec<String>,
    /// Timeout of the version and restart commands, seconds. Default 60.
    pub command_timeout_secs: u64,
}

impl Default for SelfUpdateConfig {
    fn default() -> Self {
        SelfUpdateConfig {
            binary: PathBuf::from("/usr/local/bin/fleetwave-agent"),
            restart_command: CommandLine::argv(&["systemctl", "restart", "fleetwave-agent"]),
            guard_launcher: vec![
                "systemd-run".into(),
                "--unit=fleetwave-agent-self-update-guard".into(),
                "--collect".into(),
                "--quiet".into(),
            ],
            command_timeout_secs: 60,
        }
    }
}

impl SelfUpdateConfig {
    /// The binary the guard should run from: the previous, known-good one.
    pub fn guard_binary(&self) -> PathBuf {
        binary::previous_path(&self.binary)
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.command_timeout_secs.max(1))
    }
}

/// Runs `<bin> --version` and returns its output's last word (`fleetwave-agent 0.2.0` →
/// `0.2.0`).
pub async fn binary_version(bin: &std::path::Path, timeout: Duration) -> Result<String, String> {
    let cmd = CommandLine::Argv(vec![path_str(bin), "--version".into()]);
    let out = process::run(&cmd, &RunOptions::with_timeout(timeout))
        .await
        .map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!(
            "`{}`: {} {}",
            cmd.display(),
            out.status_text(),
            out.brief()
        ));
    }
    out.stdout
        .split_whitespace()
        .last()
        .map(str::to_string)
        .ok_or_else(|| format!("`{}` printed nothing", cmd.display()))
}

/// The self-update executor for one release.
#[derive(Debug, Clone)]
pub struct AgentExecutor {
    release: Release,
    artifact: Artifact,
    config: SelfUpdateConfig,
    staging_dir: PathBuf,
    check_version: bool,
}

impl AgentExecutor {
    /// Install parameters: `target = "agent"`, `artifact`, `check_version` (bool, default
    /// true: the new binary's `--version` must print the release version),
    /// `verify_period_secs`.
    pub fn new(config: &ExecutorConfig, release: &Release) -> Result<AgentExecutor, ExecError> {
        let params = Params::new(&release.install);
        let artifact = pick_artifact(release, &params)?;
        params.u64("verify_period_secs")?;
        let check_version = match release.install.get("check_version") {
            None => true,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ExecError::BadParams {
                    key: "check_version".into(),
                    message: "expected true or false".into(),
                });
            }
        };
        Ok(AgentExecutor {
            release: release.clone(),
            artifact,
            config: config.self_update.clone(),
            staging_dir: config.staging_dir.clone(),
            check_version,
        })
    }

    pub fn version(&self) -> &str {
        &self.release.version
    }

    /// Download, verify, stage beside the binary, check the new binary's version.
    pub async fn prepare(&self, source: &ArtifactSource<'_>) -> Result<(), ExecError> {
        let staged = download::fetch(source, &self.artifact, &self.staging_dir).await?;
        binary::stage(&self.config.binary, &staged, &self.artifact.sha256).await?;
        if self.check_version {
            let on_target = binary::file_sha256(&self.config.binary).await.as_deref()
                == Some(self.artifact.sha256.as_str());
            let candidate = if on_target {
                self.config.binary.clone()
            } else {
                binary::new_path(&self.config.binary)
            };
            let v = binary_version(&candidate, self.config.timeout())
                .await
                .map_err(|m| ExecError::Failed {
                    step: Step::Prepare,
                    message: format!("the new agent binary does not run: {m}"),
                })?;
            if !super::versions_equal(&v, &self.release.version) {
                return Err(ExecError::ArtifactMismatch {
                    name: self.artifact.name.clone(),
                    message: format!(
                        "the new agent binary reports version {v}, the release says {}",
                        self.release.version
                    ),
                });
            }
        }
        Ok(())
    }

    /// Swap the binary (keeping `<binary>.previous`). The daemon then restarts itself.
    pub async fn install(&self) -> Result<InstallOutcome, ExecError> {
        binary::replace(&self.config.binary, &self.artifact.sha256, Step::Install).await?;
        Ok(InstallOutcome::RestartAgent)
    }

    /// Run by the new agent after its restart: the binary on disk is the target and a
    /// health sample passes. (The verify period itself is the guard's.)
    pub async fn verify<F>(
        &self,
        health: &Health,
        mut on_sample: F,
    ) -> Result<HealthSample, ExecError>
    where
        F: FnMut(&HealthSample) + Send,
    {
        let mut sample = health.sample().await;
        let on_target = binary::file_sha256(&self.config.binary).await.as_deref()
            == Some(self.artifact.sha256.as_str());
        sample.push(if on_target {
            CheckResult::pass("agent:binary", format!("{} in place", self.release.version))
        } else {
            CheckResult::fail("agent:binary", "the binary on disk is not the new agent")
        });
        on_sample(&sample);
        let mut state = crate::readiness::WatchState::new(1);
        state.observe(&sample).map_err(ExecError::Unhealthy)?;
        Ok(sample)
    }

    /// Keep `<binary>.previous`, remove the staged files.
    pub async fn commit(&self) -> Result<(), ExecError> {
        binary::clean_staged(&self.config.binary).await;
        remove_staged(&self.staging_dir, &self.artifact).await;
        Ok(())
    }

    /// Restore `<binary>.previous` and restart the service (which ends this process when
    /// it runs under that service; the restarted agent calls rollback again, which then
    /// finds the previous binary in place and does nothing).
    pub async fn rollback(&self) -> Result<(), ExecError> {
        binary::clean_staged(&self.config.binary).await;
        let on_target = binary::file_sha256(&self.config.binary).await.as_deref()
            == Some(self.artifact.sha256.as_str());
        if !on_target {
            return Ok(());
        }
        binary::restore_previous(&self.config.binary, Step::Rollback).await?;
        run_checked(
            Step::Rollback,
            &self.config.restart_command,
            self.config.timeout(),
            super::release_env(&self.release, Step::Rollback),
            None,
        )
        .await
    }

    /// The version the agent binary on disk reports.
    pub async fn installed(&self) -> Result<Option<InstalledVersion>, ExecError> {
        if !tokio::fs::try_exists(&self.config.binary)
            .await
            .unwrap_or(false)
        {
            return Ok(None);
        }
        let version = binary_version(&self.config.binary, self.config.timeout())
            .await
            .map_err(|m| ExecError::Failed {
                step: Step::Verify,
                message: m,
            })?;
        let prev = binary::previous_path(&self.config.binary);
        let previous = if tokio::fs::try_exists(&prev).await.unwrap_or(false) {
            binary_version(&prev, self.config.timeout()).await.ok()
        } else {
            None
        };
        Ok(Some(InstalledVersion { version, previous }))
    }
}

/// What the guard did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardOutcome {
    /// The new agent checked in healthy in time; nothing to do.
    Confirmed,
    /// It did not: the previous binary was restored and the service restarted.
    RolledBack,
    /// It did not, but the binary on disk was no longer the new one (someone already
    /// rolled back); nothing to do.
    AlreadyRestored,
}

/// The self-update guard. Calls `confirmed` (the daemon reads its journal: did the new
/// agent commit the release and check in healthy?) at once and then every `poll`, for up to
/// `verify_period`. If it never answers true, and `config.binary` is still the artifact
/// `new_sha256`, restores `<binary>.previous` and runs the restart command.
pub async fn guard<F>(
    config: &SelfUpdateConfig,
    new_sha256: &str,
    verify_period: Duration,
    poll: Duration,
    mut confirmed: F,
) -> Result<GuardOutcome, ExecError>
where
    F: AsyncFnMut() -> bool,
{
    let deadline = tokio::time::Instant::now() + verify_period;
    loop {
        if confirmed().await {
            return Ok(GuardOutcome::Confirmed);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep_until((now + poll.max(Duration::from_millis(100))).min(deadline)).await;
    }
    if binary::file_sha256(&config.binary).await.as_deref() != Some(new_sha256) {
        return Ok(GuardOutcome::AlreadyRestored);
    }
    binary::restore_previous(&config.binary, Step::Rollback).await?;
    tracing::warn!(binary = %config.binary.display(), "new agent did not check in healthy; previous binary restored");
    run_checked(
        Step::Rollback,
        &config.restart_command,
        config.timeout(),
        Vec::new(),
        None,
    )
    .await?;
    Ok(GuardOutcome::RolledBack)
}

/// Starts the guard detached: `guard_launcher` (e.g. `systemd-run ...`) followed by
/// `<binary>.previous` and `args` (the daemon's hidden `self-update-guard` subcommand and
/// its arguments). Does not wait for it.
pub fn spawn_guard(config: &SelfUpdateConfig, args: &[String]) -> Result<(), ExecError> {
    let program = config.guard_binary();
    let mut argv: Vec<String> = config.guard_launcher.clone();
    argv.push(path_str(&program));
    argv.extend(args.iter().cloned());
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let child = cmd.spawn().map_err(|e| ExecError::CommandFailed {
        step: Step::Install,
        command: argv.join(" "),
        message: format!("cannot start the self-update guard: {e}"),
        output: String::new(),
    })?;
    // Reap it in the background so it never lingers as a zombie while we run.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(())
}
