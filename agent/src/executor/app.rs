//! The `app` executor: versioned directories and an atomically switched `current` symlink.
//!
//! On-disk layout for a release stream `<name>`:
//!
//! ```text
//! <apps_dir>/<name>/<version>/           unpacked artifact (renamed into place whole)
//! <apps_dir>/<name>/current -> <version> what runs; what `installed()` reports
//! <apps_dir>/<name>/previous -> <old>    what a rollback switches back to
//! <apps_dir>/<name>/.fleetwave/<version>.sha256   the artifact each version came from
//! <apps_dir>/<name>/.tmp-<version>/      unpack in progress (deleted when found stale)
//! ```
//!
//! Symlinks are switched by creating a new link beside the old one and renaming it over
//! (atomic on POSIX), then syncing the directory. This module never writes outside
//! `<apps_dir>/<name>` and the staging directory, and never deletes the version `current`
//! or `previous` points to.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetwave_shared::{Artifact, Release};
use serde::{Deserialize, Serialize};

use super::download::{self, ArtifactSource};
use super::params::{Params, safe_component};
use super::unpack::{self, Format};
use super::{ExecError, ExecutorConfig, InstallOutcome, InstalledVersion, Step};
use crate::readiness::config::HttpProbe;
use crate::readiness::process::{self, CommandLine, RunOptions};
use crate::readiness::{Health, HealthSample, ProbeConfig};

/// `[executor.app]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppConfig {
    /// Restart command used when the release has no `restart_command` install parameter.
    /// Default: none (the app is switched but nothing is restarted).
    pub restart_command: Option<CommandLine>,
    /// Stop command used when rolling back a first install (nothing to go back to), when the
    /// release has no `stop_command`. Default: none.
    pub stop_command: Option<CommandLine>,
    /// Timeout of restart and stop commands, seconds. Default 300.
    pub command_timeout_secs: u64,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            restart_command: None,
            stop_command: None,
            command_timeout_secs: 300,
        }
    }
}

/// The `app` executor for one release.
#[derive(Debug, Clone)]
pub struct AppExecutor {
    release: Release,
    artifact: Artifact,
    format: Format,
    file_name: String,
    file_mode: u32,
    root: PathBuf,
    staging_dir: PathBuf,
    restart: Option<CommandLine>,
    stop: Option<CommandLine>,
    timeout: Duration,
    health_url: Option<String>,
}

/// Picks the artifact to use: install parameter `artifact` (by name), else the first.
pub(crate) fn pick_artifact(release: &Release, params: &Params<'_>) -> Result<Artifact, ExecError> {
    match params.str("artifact")? {
        Some(name) => release
            .artifacts
            .iter()
            .find(|a| a.name == name)
            .cloned()
            .ok_or_else(|| ExecError::BadParams {
                key: "artifact".into(),
                message: format!("the release has no artifact named {name:?}"),
            }),
        None => release
            .artifacts
            .first()
            .cloned()
            .ok_or_else(|| ExecError::BadParams {
                key: "artifacts".into(),
                message: "the release has no artifact".into(),
            }),
    }
}

/// Parses an octal mode string such as `"0755"`.
pub(crate) fn parse_mode(params: &Params<'_>, key: &str, default: u32) -> Result<u32, ExecError> {
    match params.str(key)? {
        None => Ok(default),
        Some(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| ExecError::BadParams {
                key: key.into(),
                message: format!("{s:?} is not an octal file mode such as \"0755\""),
            }),
    }
}

impl AppExecutor {
    /// Install parameters: `artifact`, `format` (`tar.gz` | `file`), `file_name`,
    /// `file_mode`, `restart_command`, `stop_command`, `health_url`, `verify_period_secs`.
    pub fn new(config: &ExecutorConfig, release: &Release) -> Result<AppExecutor, ExecError> {
        let params = Params::new(&release.install);
        safe_component("name", &release.name)?;
        safe_component("version", &release.version)?;
        let artifact = pick_artifact(release, &params)?;
        let format = Format::pick(params.str("format")?, &artifact.name)?;
        let file_name = params
            .str("file_name")?
            .unwrap_or(&artifact.name)
            .to_string();
        safe_component("file_name", &file_name)?;
        let file_mode = parse_mode(&params, "file_mode", 0o755)?;
        let restart = match params.command("restart_command")? {
            Some(c) => Some(c),
            None => config.app.restart_command.clone(),
        };
        let stop = match params.command("stop_command")? {
            Some(c) => Some(c),
            None => config.app.stop_command.clone(),
        };
        let health_url = params.str("health_url")?.map(str::to_string);
        if let Some(u) = &health_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(ExecError::BadParams {
                key: "health_url".into(),
                message: format!("{u:?} must start with http:// or https://"),
            });
        }
        params.u64("verify_period_secs")?;
        Ok(AppExecutor {
            release: release.clone(),
            artifact,
            format,
            file_name,
            file_mode,
            root: config.apps_dir.join(&release.name),
            staging_dir: config.staging_dir.clone(),
            restart,
            stop,
            timeout: Duration::from_secs(config.app.command_timeout_secs.max(1)),
            health_url,
        })
    }

    pub fn version(&self) -> &str {
        &self.release.version
    }

    /// `<apps_dir>/<name>`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn version_dir(&self) -> PathBuf {
        self.root.join(&self.release.version)
    }

    fn marker(&self, version: &str) -> PathBuf {
        self.root
            .join(".fleetwave")
            .join(format!("{version}.sha256"))
    }

    /// Download, verify, unpack into `<name>/.tmp-<version>`, then rename to
    /// `<name>/<version>`. Skipped when that directory already holds this artifact.
    pub async fn prepare(&self, source: &ArtifactSource<'_>) -> Result<(), ExecError> {
        let dir = self.version_dir();
        if self.version_dir_matches().await? {
            return Ok(());
        }
        if tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            let (cur, prev) = (self.link("current").await, self.link("previous").await);
            if cur.as_deref() == Some(self.version()) || prev.as_deref() == Some(self.version()) {
                return Err(ExecError::Failed {
                    step: Step::Prepare,
                    message: format!(
                        "{} is in use and was installed from a different artifact than {}",
                        dir.display(),
                        self.artifact.sha256
                    ),
                });
            }
            remove_dir(&dir).await?;
        }
        let staged = download::fetch(source, &self.artifact, &self.staging_dir).await?;
        let tmp = self.root.join(format!(".tmp-{}", self.release.version));
        if tokio::fs::try_exists(&tmp).await.unwrap_or(false) {
            remove_dir(&tmp).await?;
        }
        tokio::fs::create_dir_all(&tmp)
            .await
            .map_err(|e| ExecError::io("creating", &tmp, e))?;
        let (format, name, file_name, mode) = (
            self.format,
            self.artifact.name.clone(),
            self.file_name.clone(),
            self.file_mode,
        );
        let tmp2 = tmp.clone();
        blocking(move || {
            match format {
                Format::TarGz => unpack::unpack_tar_gz(&staged, &tmp2, &name)?,
                Format::File => unpack::place_file(&staged, &tmp2, &file_name, mode)?,
            }
            unpack::sync_tree(&tmp2)
        })
        .await
        .inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&tmp);
        })?;
        let marker = self.marker(self.version());
        let mdir = marker.parent().expect("marker has a parent");
        tokio::fs::create_dir_all(mdir)
            .await
            .map_err(|e| ExecError::io("creating", mdir, e))?;
        write_synced(&marker, self.artifact.sha256.as_bytes()).await?;
        tokio::fs::rename(&tmp, &dir)
            .await
            .map_err(|e| ExecError::io("renaming into place", &dir, e))?;
        download::sync_dir(&self.root).await;
        Ok(())
    }

    async fn version_dir_matches(&self) -> Result<bool, ExecError> {
        let dir = self.version_dir();
        let is_dir = tokio::fs::symlink_metadata(&dir)
            .await
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if !is_dir {
            return Ok(false);
        }
        Ok(tokio::fs::read_to_string(self.marker(self.version()))
            .await
            .map(|s| s.trim() == self.artifact.sha256)
            .unwrap_or(false))
    }

    /// Where `<name>/<link>` points (the version), if it is a symlink.
    async fn link(&self, link: &str) -> Option<String> {
        read_version_link(&self.root.join(link)).await
    }

    /// Point `previous` at the running version, switch `current` to this version, restart.
    /// Idempotent: once `current` points here only the restart runs again.
    pub async fn install(&self) -> Result<InstallOutcome, ExecError> {
        if !self.version_dir_matches().await? {
            return Err(ExecError::Failed {
                step: Step::Install,
                message: format!("{} is not prepared", self.version_dir().display()),
            });
        }
        let current = self.link("current").await;
        if current.as_deref() != Some(self.version()) {
            if let Some(cur) = &current {
                switch_link(&self.root, "previous", cur).await?;
            }
            switch_link(&self.root, "current", self.version()).await?;
        }
        crate::test_hooks::pause(crate::test_hooks::AFTER_SWITCH).await;
        if let Some(cmd) = &self.restart {
            self.run(Step::Install, cmd).await?;
        } else {
            tracing::info!(app = %self.release.name, "no restart_command configured; switched without restarting");
        }
        Ok(InstallOutcome::Done)
    }

    /// Health watch for the verify period: the configured probes, plus an HTTP probe
    /// `http:<name>` on the release's `health_url` if it has one.
    pub async fn verify<F>(&self, health: &Health, on_sample: F) -> Result<HealthSample, ExecError>
    where
        F: FnMut(&HealthSample) + Send,
    {
        let params = Params::new(&self.release.install);
        let period = super::verify_period(&params, health)?;
        let extra: Vec<ProbeConfig> = self
            .health_url
            .iter()
            .map(|url| {
                ProbeConfig::Http(HttpProbe {
                    name: self.release.name.clone(),
                    url: url.clone(),
                    expect_status: 200,
                    body_contains: None,
                    ca_file: None,
                    timeout_secs: None,
                })
            })
            .collect();
        crate::readiness::watch(
            &health.config().verify,
            Some(period),
            async || health.sample_with(&extra).await,
            on_sample,
        )
        .await
        .map_err(ExecError::Unhealthy)
    }

    /// Keep `current` and `previous`, delete every other version directory, stale
    /// `.tmp-*` directories and the staged artifact.
    pub async fn commit(&self) -> Result<(), ExecError> {
        let current = self.link("current").await;
        if current.as_deref() != Some(self.version()) {
            return Err(ExecError::Failed {
                step: Step::Commit,
                message: format!(
                    "current points to {}, not {}",
                    current.as_deref().unwrap_or("nothing"),
                    self.version()
                ),
            });
        }
        let previous = self.link("previous").await;
        let mut entries = tokio::fs::read_dir(&self.root)
            .await
            .map_err(|e| ExecError::io("reading", &self.root, e))?;
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| ExecError::io("reading", &self.root, e))?
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ftype = match entry.file_type().await {
                Ok(t) => t,
                Err(_) => continue,
            };
            if !ftype.is_dir() || name == ".fleetwave" {
                continue;
            }
            let keep = Some(name.as_str()) == current.as_deref()
                || Some(name.as_str()) == previous.as_deref();
            if !keep {
                remove_dir(&entry.path()).await?;
                if !name.starts_with(".tmp-") {
                    let _ = tokio::fs::remove_file(self.marker(&name)).await;
                }
            }
        }
        remove_staged(&self.staging_dir, &self.artifact).await;
        Ok(())
    }

    /// Switch `current` back to `previous` and restart (or, after a first install, stop the
    /// app and remove `current`). Idempotent; does nothing when this release was never
    /// switched to.
    pub async fn rollback(&self) -> Result<(), ExecError> {
        let current = self.link("current").await;
        let previous = self.link("previous").await;
        let on_target = current.as_deref() == Some(self.version());
        match (&previous, on_target) {
            (Some(prev), true) => {
                switch_link(&self.root, "current", prev).await?;
                self.restart_after_rollback().await?;
            }
            (None, true) => {
                if let Some(cmd) = &self.stop {
                    self.run(Step::Rollback, cmd).await?;
                }
                remove_link(&self.root.join("current")).await?;
                download::sync_dir(&self.root).await;
                return Ok(());
            }
            (Some(prev), false) if current.as_deref() == Some(prev.as_str()) => {
                // Switched back before an interruption; the restart may not have run.
                self.restart_after_rollback().await?;
            }
            _ => return Ok(()),
        }
        remove_link(&self.root.join("previous")).await?;
        download::sync_dir(&self.root).await;
        Ok(())
    }

    async fn restart_after_rollback(&self) -> Result<(), ExecError> {
        match &self.restart {
            Some(cmd) => self.run(Step::Rollback, cmd).await,
            None => Ok(()),
        }
    }

    /// The version `current` points to, and `previous`.
    pub async fn installed(&self) -> Result<Option<InstalledVersion>, ExecError> {
        let current = self.link("current").await;
        let previous = self.link("previous").await;
        Ok(current.map(|version| InstalledVersion { version, previous }))
    }

    async fn run(&self, step: Step, cmd: &CommandLine) -> Result<(), ExecError> {
        let mut env = super::release_env(&self.release, step);
        env.push(("FLEETWAVE_APP_NAME".into(), self.release.name.clone()));
        env.push(("FLEETWAVE_APP_ROOT".into(), path_str(&self.root)));
        env.push((
            "FLEETWAVE_APP_CURRENT".into(),
            path_str(&self.root.join("current")),
        ));
        env.push((
            "FLEETWAVE_APP_VERSION_DIR".into(),
            path_str(&self.version_dir()),
        ));
        if let Some(prev) = self.link("previous").await {
            env.push(("FLEETWAVE_PREVIOUS_VERSION".into(), prev));
        }
        run_checked(step, cmd, self.timeout, env, Some(self.root.clone())).await
    }
}

pub(crate) fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Runs an operator command; exit 0 is success, anything else [`ExecError::CommandFailed`].
pub(crate) async fn run_checked(
    step: Step,
    cmd: &CommandLine,
    timeout: Duration,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
) -> Result<(), ExecError> {
    let mut opts = RunOptions::with_timeout(timeout);
    opts.env = env;
    opts.cwd = cwd;
    let out = process::run(cmd, &opts)
        .await
        .map_err(|e| ExecError::CommandFailed {
            step,
            command: cmd.display(),
            message: e.to_string(),
            output: String::new(),
        })?;
    if out.success() {
        Ok(())
    } else {
        Err(ExecError::CommandFailed {
            step,
            command: cmd.display(),
            message: format!("{}: {}", out.status_text(), out.brief()),
            output: out.tail(super::COMMAND_OUTPUT_KEPT),
        })
    }
}

/// Reads a version symlink (`current`, `previous`): its target's last component.
pub(crate) async fn read_version_link(link: &Path) -> Option<String> {
    let target = tokio::fs::read_link(link).await.ok()?;
    target.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Atomically points `<dir>/<link>` at `<target>` (relative): new link beside, rename over.
pub(crate) async fn switch_link(dir: &Path, link: &str, target: &str) -> Result<(), ExecError> {
    let tmp = dir.join(format!(".{link}.new"));
    let _ = tokio::fs::remove_file(&tmp).await;
    tokio::fs::symlink(target, &tmp)
        .await
        .map_err(|e| ExecError::io("creating symlink", &tmp, e))?;
    let dst = dir.join(link);
    tokio::fs::rename(&tmp, &dst)
        .await
        .map_err(|e| ExecError::io("switching symlink", &dst, e))?;
    download::sync_dir(dir).await;
    Ok(())
}

async fn remove_link(path: &Path) -> Result<(), ExecError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ExecError::io("removing", path, e)),
    }
}

async fn remove_dir(path: &Path) -> Result<(), ExecError> {
    match tokio::fs::remove_dir_all(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ExecError::io("removing", path, e)),
    }
}

/// Removes a verified staged artifact and any partial download of it (best effort).
pub(crate) async fn remove_staged(staging_dir: &Path, artifact: &Artifact) {
    let _ = tokio::fs::remove_file(download::staged_path(staging_dir, &artifact.sha256)).await;
    let _ = tokio::fs::remove_file(download::part_path(staging_dir, &artifact.sha256)).await;
}

/// Writes a small file durably (temp file, fsync, rename).
pub(crate) async fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ExecError> {
    let path = path.to_path_buf();
    let bytes = bytes.to_vec();
    blocking(move || {
        use std::io::Write;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(|e| ExecError::io("creating", &tmp, e))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| ExecError::io("writing", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| ExecError::io("renaming", &path, e))
    })
    .await
}

/// Runs blocking file work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ExecError> + Send + 'static,
) -> Result<T, ExecError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ExecError::Failed {
            step: Step::Prepare,
            message: format!("background task failed: {e}"),
        })?
}
