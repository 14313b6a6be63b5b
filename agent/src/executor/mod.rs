//! Executors: put a verified release on this box, watch it, and commit it or roll it back.
//!
//! # The contract
//!
//! Every kind of release goes through the same five steps, called by the daemon in order
//! while it holds a lease, each recorded in the install journal *before* it starts:
//!
//! 1. [`Executor::prepare`]: download every artifact (resumable, into the staging
//!    directory), verify its length and SHA-256, unpack or stage it. Nothing running
//!    changes.
//! 2. [`Executor::install`]: switch to the new version (atomic rename) and restart it.
//! 3. [`Executor::verify`]: watch health for the verify period.
//! 4. [`Executor::commit`]: record the new version, keep the previous one for a rollback,
//!    delete older ones and the staging files.
//! 5. [`Executor::rollback`] (instead of 4, after a failure in 2 or 3): switch back to the
//!    previous version and restart it.
//!
//! [`Executor::installed`] says what is on the box now.
//!
//! Every step is idempotent: calling it again after it finished, or after the agent was
//! killed half-way through it (kill -9, power cut), does the right thing. So recovery is:
//! call again the step the journal says was started ([`Step::resume`]); an interrupted
//! verify starts its full period again. A download that fails with
//! [`ExecError::is_retryable`] (network trouble, a full disk) is retried later with the
//! poll back-off; a step whose operator script exits 21 ([`ExecError::RetryLater`]) is run
//! again by the daemon at most [`RetryPolicy::max_retries`] times, then fails; any other
//! failure of install or verify leads to rollback.
//!
//! # Dispatch
//!
//! [`Executor`] is an enum over the kinds (app, agent self-update, kubernetes, command);
//! each method matches and awaits the kind's own `async fn`. No trait objects, no boxed
//! futures: the futures are `Send` when their inputs are.
//!
//! This module never verifies signatures (the daemon hands it a release that passed the
//! trust core), never talks to the coordinator except to download artifacts, and never
//! runs anything of a release before its artifact's length and SHA-256 match.

pub mod app;
pub mod binary;
pub mod command;
pub mod download;
pub mod kubernetes;
pub mod params;
pub mod self_update;
pub mod unpack;

use std::path::PathBuf;
use std::time::Duration;

use fleetwave_shared::{Release, ReleaseKind, Verified};
use serde::{Deserialize, Serialize};

use crate::readiness::{Health, HealthSample, WatchFailure};

pub use download::ArtifactSource;
pub use params::Params;

/// `[executor]`: where executors keep files and how they restart things.
///
/// ```toml
/// [executor]
/// staging_dir = "/var/lib/fleetwave-agent/staging"
/// apps_dir = "/var/lib/fleetwave-agent/apps"
///
/// [executor.app]
/// restart_command = ["systemctl", "restart", "pos"]
///
/// [executor.kubernetes]
/// binary = "/usr/local/bin/k3s"
///
/// [executor.command]
/// install = "/etc/fleetwave/install.sh"
///
/// [executor.self_update]
/// binary = "/usr/local/bin/fleetwave-agent"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorConfig {
    /// Downloads (`<sha256>.part` while incomplete, `<sha256>` when verified) and per-release
    /// scratch directories. Default `/var/lib/fleetwave-agent/staging`.
    pub staging_dir: PathBuf,
    /// Application versions: `<apps_dir>/<name>/<version>` and the `current` symlink.
    /// Default `/var/lib/fleetwave-agent/apps`.
    pub apps_dir: PathBuf,
    /// `[executor.app]`.
    pub app: app::AppConfig,
    /// `[executor.kubernetes]`.
    pub kubernetes: kubernetes::KubernetesConfig,
    /// `[executor.command]`.
    pub command: command::CommandConfig,
    /// `[executor.self_update]`.
    pub self_update: self_update::SelfUpdateConfig,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            staging_dir: PathBuf::from("/var/lib/fleetwave-agent/staging"),
            apps_dir: PathBuf::from("/var/lib/fleetwave-agent/apps"),
            app: app::AppConfig::default(),
            kubernetes: kubernetes::KubernetesConfig::default(),
            command: command::CommandConfig::default(),
            self_update: self_update::SelfUpdateConfig::default(),
        }
    }
}

/// The journal's step names. The daemon records the step it is about to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Prepare,
    Install,
    Verify,
    Commit,
    Rollback,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Prepare => "prepare",
            Step::Install => "install",
            Step::Verify => "verify",
            Step::Commit => "commit",
            Step::Rollback => "rollback",
        }
    }

    pub fn parse(s: &str) -> Option<Step> {
        Some(match s {
            "prepare" => Step::Prepare,
            "install" => Step::Install,
            "verify" => Step::Verify,
            "commit" => Step::Commit,
            "rollback" => Step::Rollback,
            _ => return None,
        })
    }

    /// The step to call after a restart found this one started but not finished: the same
    /// step (every step is idempotent). An interrupted `prepare` resumes its download; an
    /// interrupted `install` switches and restarts again, then verify runs; an interrupted
    /// `verify` starts its full period again; `commit` and `rollback` finish.
    pub fn resume(self) -> Step {
        self
    }

    /// The step after this one succeeded (`None` after commit and rollback).
    pub fn next(self) -> Option<Step> {
        match self {
            Step::Prepare => Some(Step::Install),
            Step::Install => Some(Step::Verify),
            Step::Verify => Some(Step::Commit),
            Step::Commit | Step::Rollback => None,
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`Executor::install`] leaves for the daemon to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallOutcome {
    /// Switched and restarted: go on with verify.
    Done,
    /// Agent self-update: the new binary is in place. The daemon must record the journal
    /// step `verify`, start the self-update guard detached
    /// ([`self_update::guard`], `fleetwave-agent self-update-guard`), then restart its own
    /// service ([`self_update::SelfUpdateConfig::restart_command`]). The new agent runs
    /// verify and commit.
    RestartAgent,
}

/// What is installed for a release stream now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledVersion {
    /// The version string (the app's version directory, `k3s --version`'s version, the
    /// agent binary's `--version`, or the command executor's recorded version).
    pub version: String,
    /// The version kept for a rollback, when known.
    pub previous: Option<String>,
}

/// What went wrong in an executor step. [`ExecError::code`] is the stable code reported in
/// phase events.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("artifact {name}: {message}")]
    ArtifactMismatch { name: String, message: String },
    #[error("artifact {name}: the server sent more than the signed length of {length} bytes")]
    ArtifactTooLarge { name: String, length: u64 },
    #[error("downloading {url}: {message}")]
    DownloadFailed { url: String, message: String },
    #[error("disk full writing {path}: {message}; free space on that filesystem and retry")]
    DiskFull { path: PathBuf, message: String },
    #[error("refusing artifact {artifact}: entry {entry:?} {message}")]
    UnsafeArchive {
        artifact: String,
        entry: String,
        message: String,
    },
    #[error("install parameter {key}: {message}")]
    BadParams { key: String, message: String },
    #[error("pre-flight refused: {0}")]
    Preflight(String),
    #[error("{step}: `{command}` failed: {message}")]
    CommandFailed {
        step: Step,
        command: String,
        message: String,
        /// The end of what the command printed ([`COMMAND_OUTPUT_KEPT`] characters at
        /// most; empty if it printed nothing or never ran).
        output: String,
    },
    #[error("{step}: asked to retry later: {message}")]
    RetryLater { step: Step, message: String },
    #[error("verify: {0}")]
    Unhealthy(WatchFailure),
    #[error("{step}: {message}")]
    Failed { step: Step, message: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ExecError {
    /// Stable, machine-readable code: `artifact_mismatch`, `artifact_too_large`,
    /// `download_failed`, `disk_full`, `unsafe_archive`, `bad_install_params`,
    /// `preflight_refused`, `command_failed`, `retry_later`, `unhealthy`, `step_failed`,
    /// `io_error`.
    pub fn code(&self) -> &'static str {
        match self {
            ExecError::ArtifactMismatch { .. } => "artifact_mismatch",
            ExecError::ArtifactTooLarge { .. } => "artifact_too_large",
            ExecError::DownloadFailed { .. } => "download_failed",
            ExecError::DiskFull { .. } => "disk_full",
            ExecError::UnsafeArchive { .. } => "unsafe_archive",
            ExecError::BadParams { .. } => "bad_install_params",
            ExecError::Preflight(_) => "preflight_refused",
            ExecError::CommandFailed { .. } => "command_failed",
            ExecError::RetryLater { .. } => "retry_later",
            ExecError::Unhealthy(_) => "unhealthy",
            ExecError::Failed { .. } => "step_failed",
            ExecError::Io { .. } => "io_error",
        }
    }

    /// A download worth trying again after the poll back-off, for as long as it takes
    /// (network trouble, a full disk). An operator script's exit code 21
    /// ([`ExecError::RetryLater`]) is not: the daemon runs that step again a bounded number
    /// of times ([`RetryPolicy`]) and then treats it as failed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ExecError::DownloadFailed { .. } | ExecError::DiskFull { .. }
        )
    }

    /// What the failed command printed (its end), if this is a command failure and it
    /// printed anything.
    pub fn output(&self) -> Option<&str> {
        match self {
            ExecError::CommandFailed { output, .. } if !output.is_empty() => Some(output),
            _ => None,
        }
    }

    /// An I/O error, turned into [`ExecError::DiskFull`] when the disk is full.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> ExecError {
        let path = path.into();
        if is_disk_full(&source) {
            ExecError::DiskFull {
                path,
                message: source.to_string(),
            }
        } else {
            ExecError::Io {
                action,
                path,
                source,
            }
        }
    }
}

/// How much of a failed command's output an [`ExecError::CommandFailed`] keeps (its end).
pub const COMMAND_OUTPUT_KEPT: usize = 1024;

/// ENOSPC or EDQUOT.
pub(crate) fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(28) | Some(122))
}

/// How a step that asks to be retried later (an operator script's exit code 21) is run
/// again: at most `max_retries` more times, waiting `delay` before the first retry and
/// twice as long before each further one, at most `max_delay`. After the last retry the
/// step has failed (`retry_later`) and the daemon goes on as for any failure of that step
/// (after install or verify: roll back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// No retries: for executors whose steps never ask to be retried later.
    pub const NONE: RetryPolicy = RetryPolicy {
        max_retries: 0,
        delay: Duration::ZERO,
        max_delay: Duration::ZERO,
    };

    /// The wait before retry `n` (1 for the first retry): `delay × 2^(n-1)`, at most
    /// `max_delay`.
    pub fn delay_before(&self, n: u32) -> Duration {
        let factor = 1u32 << n.saturating_sub(1).min(20);
        self.delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// The executor for one release, by kind.
// One executor exists per install at a time: the size difference between variants costs
// nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Executor {
    /// `kind = "app"`: versioned directory and `current` symlink.
    App(app::AppExecutor),
    /// `kind = "app"` with install parameter `target = "agent"`: this agent's own binary.
    Agent(self_update::AgentExecutor),
    /// `kind = "kubernetes"`: the site's k3s (or another distribution, by configuration).
    Kubernetes(kubernetes::KubernetesExecutor),
    /// `kind = "command"`: operator scripts.
    Command(command::CommandExecutor),
}

impl Executor {
    /// Picks and configures the executor for `release`. `rollback` is true when the
    /// assignment is an explicit rollback (the Kubernetes skew policy allows a downgrade
    /// only then). Fails on install parameters it cannot use (`bad_install_params`).
    ///
    /// Only a [`Verified`] release reaches an executor: one that the trust core checked
    /// against the root (new installs, commits and rollbacks alike).
    pub fn for_release(
        config: &ExecutorConfig,
        release: &Verified<Release>,
        rollback: bool,
    ) -> Result<Executor, ExecError> {
        let release: &Release = release;
        let params = Params::new(&release.install);
        Ok(match release.kind {
            ReleaseKind::App => match params.str("target")? {
                Some("agent") => Executor::Agent(self_update::AgentExecutor::new(config, release)?),
                Some("app") | None => Executor::App(app::AppExecutor::new(config, release)?),
                Some(other) => {
                    return Err(ExecError::BadParams {
                        key: "target".into(),
                        message: format!(
                            "unknown target {other:?} (expected \"app\" or \"agent\")"
                        ),
                    });
                }
            },
            ReleaseKind::Kubernetes => Executor::Kubernetes(kubernetes::KubernetesExecutor::new(
                config, release, rollback,
            )?),
            ReleaseKind::Command => {
                Executor::Command(command::CommandExecutor::new(config, release, rollback)?)
            }
        })
    }

    /// `app`, `agent`, `kubernetes` or `command`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Executor::App(_) => "app",
            Executor::Agent(_) => "agent",
            Executor::Kubernetes(_) => "kubernetes",
            Executor::Command(_) => "command",
        }
    }

    /// Step 1: download, verify, unpack or stage. Resumes a partial download.
    pub async fn prepare(&self, source: &ArtifactSource<'_>) -> Result<(), ExecError> {
        match self {
            Executor::App(e) => e.prepare(source).await,
            Executor::Agent(e) => e.prepare(source).await,
            Executor::Kubernetes(e) => e.prepare(source).await,
            Executor::Command(e) => e.prepare(source).await,
        }
    }

    /// Step 2: switch to the new version and restart it.
    pub async fn install(&self) -> Result<InstallOutcome, ExecError> {
        match self {
            Executor::App(e) => e.install().await,
            Executor::Agent(e) => e.install().await,
            Executor::Kubernetes(e) => e.install().await,
            Executor::Command(e) => e.install().await,
        }
    }

    /// Step 3: watch health for the verify period, handing every sample to `on_sample`.
    /// Returns the last (healthy) sample; [`ExecError::Unhealthy`] means roll back.
    pub async fn verify<F>(&self, health: &Health, on_sample: F) -> Result<HealthSample, ExecError>
    where
        F: FnMut(&HealthSample) + Send,
    {
        match self {
            Executor::App(e) => e.verify(health, on_sample).await,
            Executor::Agent(e) => e.verify(health, on_sample).await,
            Executor::Kubernetes(e) => e.verify(health, on_sample).await,
            Executor::Command(e) => e.verify(health, on_sample).await,
        }
    }

    /// Step 4: record the new version, keep the previous one, clean up older ones.
    pub async fn commit(&self) -> Result<(), ExecError> {
        match self {
            Executor::App(e) => e.commit().await,
            Executor::Agent(e) => e.commit().await,
            Executor::Kubernetes(e) => e.commit().await,
            Executor::Command(e) => e.commit().await,
        }
    }

    /// Instead of commit after a failure: back to the previous version, restarted.
    pub async fn rollback(&self) -> Result<(), ExecError> {
        match self {
            Executor::App(e) => e.rollback().await,
            Executor::Agent(e) => e.rollback().await,
            Executor::Kubernetes(e) => e.rollback().await,
            Executor::Command(e) => e.rollback().await,
        }
    }

    /// What is installed for this release's stream now (`None`: nothing yet).
    pub async fn installed(&self) -> Result<Option<InstalledVersion>, ExecError> {
        match self {
            Executor::App(e) => e.installed().await,
            Executor::Agent(e) => e.installed().await,
            Executor::Kubernetes(e) => e.installed().await,
            Executor::Command(e) => e.installed().await,
        }
    }

    /// What an interrupted install of this release left behind, as far as the executor
    /// can tell (for the recovery report); `None` for the kinds that say nothing more than
    /// the journal does.
    pub async fn recovery_found(&self) -> Option<String> {
        match self {
            Executor::Kubernetes(e) => Some(e.recovery_found().await),
            Executor::App(_) | Executor::Agent(_) | Executor::Command(_) => None,
        }
    }

    /// The release is already installed (by version), e.g. after a crash right after
    /// commit: the daemon may skip to recording it.
    pub async fn is_target_installed(&self) -> Result<bool, ExecError> {
        let target = self.target_version();
        Ok(self
            .installed()
            .await?
            .is_some_and(|i| versions_equal(&i.version, target)))
    }

    /// How a step that asks to be retried later is run again (only operator scripts of the
    /// `command` executor ask; the other kinds never retry a step this way).
    pub fn retry_policy(&self) -> RetryPolicy {
        match self {
            Executor::Command(e) => e.retry_policy(),
            Executor::App(_) | Executor::Agent(_) | Executor::Kubernetes(_) => RetryPolicy::NONE,
        }
    }

    /// The version this executor installs.
    pub fn target_version(&self) -> &str {
        match self {
            Executor::App(e) => e.version(),
            Executor::Agent(e) => e.version(),
            Executor::Kubernetes(e) => e.version(),
            Executor::Command(e) => e.version(),
        }
    }
}

/// Versions compare equal ignoring a leading `v`.
pub(crate) fn versions_equal(a: &str, b: &str) -> bool {
    a.trim().trim_start_matches('v') == b.trim().trim_start_matches('v')
}

/// The verify period for a release: its `verify_period_secs` install parameter, else the
/// configured `health.verify.period_secs`.
pub(crate) fn verify_period(params: &Params<'_>, health: &Health) -> Result<Duration, ExecError> {
    Ok(Duration::from_secs(
        params
            .u64("verify_period_secs")?
            .unwrap_or(health.config().verify.period_secs),
    ))
}

/// The environment every operator command gets (`FLEETWAVE_*`).
pub(crate) fn release_env(release: &Release, step: Step) -> Vec<(String, String)> {
    vec![
        ("FLEETWAVE_RELEASE_ID".into(), release.id.clone()),
        ("FLEETWAVE_RELEASE_NAME".into(), release.name.clone()),
        ("FLEETWAVE_VERSION".into(), release.version.clone()),
        (
            "FLEETWAVE_RELEASE_COUNTER".into(),
            release.counter.to_string(),
        ),
        ("FLEETWAVE_STEP".into(), step.as_str().into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_later_waits_double_up_to_the_cap() {
        let secs = Duration::from_secs;
        let policy = RetryPolicy {
            max_retries: 6,
            delay: secs(30),
            max_delay: secs(600),
        };
        let waits: Vec<Duration> = (1..=6).map(|n| policy.delay_before(n)).collect();
        assert_eq!(
            waits,
            [
                secs(30),
                secs(60),
                secs(120),
                secs(240),
                secs(480),
                secs(600)
            ]
        );
        // Far past the cap (and past any shift width) it stays at the cap.
        assert_eq!(policy.delay_before(u32::MAX), secs(600));
    }
}
