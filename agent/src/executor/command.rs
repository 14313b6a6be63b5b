//! The `command` executor: the same contract around operator scripts (helm upgrade,
//! kubeadm, a vendor installer...).
//!
//! Each step runs its script, if one is configured: the release's install parameter of the
//! same name (`prepare`, `install`, `verify`, `commit`, `rollback`) or else the agent's
//! `[executor.command]`. Exit codes: 0 = ok, 21 = retry this step later
//! ([`RETRY_LATER_EXIT`]; the daemon runs the step again as [`CommandExecutor::retry_policy`]
//! says, then counts it as failed), anything else = failed (after install or verify: roll
//! back).
//! Scripts must be idempotent themselves: after a power cut the same step runs again.
//! The committed version is recorded in `<apps_dir>/<name>/.fleetwave/command-installed`.
//! This module runs nothing of a release before its artifacts are verified.

use std::path::PathBuf;
use std::time::Duration;

use fleetwave_shared::Release;
use serde::{Deserialize, Serialize};

use super::app::{path_str, remove_staged, write_synced};
use super::download::{self, ArtifactSource};
use super::params::{Params, safe_component};
use super::{ExecError, ExecutorConfig, InstallOutcome, InstalledVersion, RetryPolicy, Step};
use crate::readiness::process::{self, CommandLine, RunOptions};
use crate::readiness::{Health, HealthSample};

/// The exit code with which a script asks to be run again later.
pub const RETRY_LATER_EXIT: i32 = 21;

/// `[executor.command]`: default scripts (a release's install parameters take precedence).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandConfig {
    /// Run after the artifacts are downloaded and verified. Default: none.
    pub prepare: Option<CommandLine>,
    /// Switch to the new version. Required here or in the release. Default: none.
    pub install: Option<CommandLine>,
    /// Run once before the health watch of the verify period. Default: none.
    pub verify: Option<CommandLine>,
    /// Run after a healthy verify period. Default: none.
    pub commit: Option<CommandLine>,
    /// Undo install. Default: none (a rollback then fails with `step_failed`).
    pub rollback: Option<CommandLine>,
    /// Timeout of each script, seconds. Default 1800.
    pub timeout_secs: u64,
    /// How many more times a step whose script exits 21 is run before it counts as failed.
    /// Default 5.
    pub max_retries: u32,
    /// Seconds before the first retry of a step that exited 21; doubled before each further
    /// retry. Default 30.
    pub retry_delay_secs: u64,
    /// Longest wait between two retries, seconds. Default 600.
    pub retry_max_delay_secs: u64,
}

impl Default for CommandConfig {
    fn default() -> Self {
        CommandConfig {
            prepare: None,
            install: None,
            verify: None,
            commit: None,
            rollback: None,
            timeout_secs: 1800,
            max_retries: 5,
            retry_delay_secs: 30,
            retry_max_delay_secs: 600,
        }
    }
}

/// The `command` executor for one release.
#[derive(Debug, Clone)]
pub struct CommandExecutor {
    release: Release,
    rollback_assignment: bool,
    scripts: CommandConfig,
    staging_dir: PathBuf,
    state_dir: PathBuf,
}

impl CommandExecutor {
    /// Install parameters: `prepare`, `install`, `verify`, `commit`, `rollback` (each a
    /// string for `/bin/sh -c` or a list), `verify_period_secs`, and `max_retries`,
    /// `retry_delay_secs`, `retry_max_delay_secs` (override `[executor.command]`).
    pub fn new(
        config: &ExecutorConfig,
        release: &Release,
        rollback_assignment: bool,
    ) -> Result<CommandExecutor, ExecError> {
        let params = Params::new(&release.install);
        safe_component("name", &release.name)?;
        params.u64("verify_period_secs")?;
        let pick =
            |key: &str, fallback: &Option<CommandLine>| -> Result<Option<CommandLine>, ExecError> {
                Ok(params.command(key)?.or_else(|| fallback.clone()))
            };
        let c = &config.command;
        let max_retries = match params.u64("max_retries")? {
            Some(n) => u32::try_from(n).map_err(|_| ExecError::BadParams {
                key: "max_retries".into(),
                message: format!("{n} is too large"),
            })?,
            None => c.max_retries,
        };
        let scripts = CommandConfig {
            prepare: pick("prepare", &c.prepare)?,
            install: pick("install", &c.install)?,
            verify: pick("verify", &c.verify)?,
            commit: pick("commit", &c.commit)?,
            rollback: pick("rollback", &c.rollback)?,
            timeout_secs: c.timeout_secs.max(1),
            max_retries,
            retry_delay_secs: params
                .u64("retry_delay_secs")?
                .unwrap_or(c.retry_delay_secs),
            retry_max_delay_secs: params
                .u64("retry_max_delay_secs")?
                .unwrap_or(c.retry_max_delay_secs),
        };
        if scripts.install.is_none() {
            return Err(ExecError::BadParams {
                key: "install".into(),
                message: "a command release needs an install script (install parameter `install` or executor.command.install)".into(),
            });
        }
        Ok(CommandExecutor {
            release: release.clone(),
            rollback_assignment,
            scripts,
            staging_dir: config.staging_dir.clone(),
            state_dir: config.apps_dir.join(&release.name).join(".fleetwave"),
        })
    }

    pub fn version(&self) -> &str {
        &self.release.version
    }

    /// How a step whose script exited 21 is run again: the release's `max_retries`,
    /// `retry_delay_secs` and `retry_max_delay_secs`, else `[executor.command]`'s.
    pub fn retry_policy(&self) -> RetryPolicy {
        let delay = Duration::from_secs(self.scripts.retry_delay_secs);
        RetryPolicy {
            max_retries: self.scripts.max_retries,
            delay,
            max_delay: Duration::from_secs(self.scripts.retry_max_delay_secs).max(delay),
        }
    }

    /// The per-release scratch directory handed to scripts (`FLEETWAVE_STAGING_DIR`).
    pub fn work_dir(&self) -> PathBuf {
        self.staging_dir.join("work").join(&self.release.id)
    }

    fn env(&self, step: Step) -> Vec<(String, String)> {
        let mut env = super::release_env(&self.release, step);
        env.push(("FLEETWAVE_STAGING_DIR".into(), path_str(&self.work_dir())));
        env.push((
            "FLEETWAVE_ROLLBACK".into(),
            if self.rollback_assignment { "1" } else { "0" }.into(),
        ));
        let paths: Vec<String> = self
            .release
            .artifacts
            .iter()
            .map(|a| path_str(&download::staged_path(&self.staging_dir, &a.sha256)))
            .collect();
        if let Some(first) = paths.first() {
            env.push(("FLEETWAVE_ARTIFACT".into(), first.clone()));
        }
        for (a, p) in self.release.artifacts.iter().zip(&paths) {
            let key: String = a
                .name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            env.push((format!("FLEETWAVE_ARTIFACT_{key}"), p.clone()));
        }
        env.push(("FLEETWAVE_ARTIFACTS".into(), paths.join("\n")));
        env
    }

    async fn run_step(&self, step: Step, script: Option<&CommandLine>) -> Result<(), ExecError> {
        let Some(cmd) = script else {
            return Ok(());
        };
        let work = self.work_dir();
        tokio::fs::create_dir_all(&work)
            .await
            .map_err(|e| ExecError::io("creating", &work, e))?;
        let mut opts = RunOptions::with_timeout(Duration::from_secs(self.scripts.timeout_secs));
        opts.env = self.env(step);
        opts.cwd = Some(work);
        let out = process::run(cmd, &opts)
            .await
            .map_err(|e| ExecError::CommandFailed {
                step,
                command: cmd.display(),
                message: e.to_string(),
                output: String::new(),
            })?;
        match out.code {
            Some(0) => Ok(()),
            Some(RETRY_LATER_EXIT) => Err(ExecError::RetryLater {
                step,
                message: format!("`{}` exited 21: {}", cmd.display(), out.brief()),
            }),
            _ => Err(ExecError::CommandFailed {
                step,
                command: cmd.display(),
                message: format!("{}: {}", out.status_text(), out.brief()),
                output: out.tail(super::COMMAND_OUTPUT_KEPT),
            }),
        }
    }

    /// Download and verify every artifact, then run the prepare script.
    pub async fn prepare(&self, source: &ArtifactSource<'_>) -> Result<(), ExecError> {
        for a in &self.release.artifacts {
            download::fetch(source, a, &self.staging_dir).await?;
        }
        self.run_step(Step::Prepare, self.scripts.prepare.as_ref())
            .await
    }

    /// Run the install script.
    pub async fn install(&self) -> Result<InstallOutcome, ExecError> {
        for a in &self.release.artifacts {
            let p = download::staged_path(&self.staging_dir, &a.sha256);
            if !tokio::fs::try_exists(&p).await.unwrap_or(false) {
                return Err(ExecError::Failed {
                    step: Step::Install,
                    message: format!("artifact {} is not prepared", a.name),
                });
            }
        }
        self.run_step(Step::Install, self.scripts.install.as_ref())
            .await?;
        Ok(InstallOutcome::Done)
    }

    /// Run the verify script once, then watch health for the verify period.
    pub async fn verify<F>(&self, health: &Health, on_sample: F) -> Result<HealthSample, ExecError>
    where
        F: FnMut(&HealthSample) + Send,
    {
        self.run_step(Step::Verify, self.scripts.verify.as_ref())
            .await?;
        let params = Params::new(&self.release.install);
        let period = super::verify_period(&params, health)?;
        crate::readiness::watch(
            &health.config().verify,
            Some(period),
            async || health.sample().await,
            on_sample,
        )
        .await
        .map_err(ExecError::Unhealthy)
    }

    fn record(&self) -> PathBuf {
        self.state_dir.join("command-installed")
    }

    /// Run the commit script, record the version, remove the staged files.
    pub async fn commit(&self) -> Result<(), ExecError> {
        self.run_step(Step::Commit, self.scripts.commit.as_ref())
            .await?;
        tokio::fs::create_dir_all(&self.state_dir)
            .await
            .map_err(|e| ExecError::io("creating", &self.state_dir, e))?;
        let previous = tokio::fs::read_to_string(self.record())
            .await
            .ok()
            .and_then(|s| s.lines().next().map(str::to_string))
            .filter(|v| v != &self.release.version);
        let mut text = format!("{}\n", self.release.version);
        if let Some(p) = previous {
            text.push_str(&p);
            text.push('\n');
        }
        write_synced(&self.record(), text.as_bytes()).await?;
        for a in &self.release.artifacts {
            remove_staged(&self.staging_dir, a).await;
        }
        let _ = tokio::fs::remove_dir_all(self.work_dir()).await;
        Ok(())
    }

    /// Run the rollback script (required for a rollback).
    pub async fn rollback(&self) -> Result<(), ExecError> {
        match &self.scripts.rollback {
            Some(cmd) => self.run_step(Step::Rollback, Some(cmd)).await,
            None => Err(ExecError::Failed {
                step: Step::Rollback,
                message: "no rollback script (install parameter `rollback` or executor.command.rollback); nothing was undone".into(),
            }),
        }
    }

    /// The version recorded at the last commit (and the one before it).
    pub async fn installed(&self) -> Result<Option<InstalledVersion>, ExecError> {
        let Ok(text) = tokio::fs::read_to_string(self.record()).await else {
            return Ok(None);
        };
        let mut lines = text.lines().filter(|l| !l.is_empty());
        Ok(lines.next().map(|v| InstalledVersion {
            version: v.to_string(),
            previous: lines.next().map(str::to_string),
        }))
    }
}
