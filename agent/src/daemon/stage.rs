//! Downloading ahead (`download.ahead`): while a verified assignment waits for its window
//! (or a deferral, or its `not_before`), its artifacts are downloaded and verified in the
//! background into the same staging directory the install reads, so the install that
//! starts in the window finds them there and spends the window installing. Nothing is
//! installed here and no lease is asked for.
//!
//! The download runs in its own task (paced by `download.max_bytes_per_sec`, resumed from
//! its `.part` files after a restart or a cut link): polls, reports and health checks go
//! on meanwhile. When it has verified every artifact the agent reports the `staged` phase
//! once per release (remembered across restarts). A failed download is said in the log and
//! tried again after a pause; the install downloads by itself in any case. The disk
//! reserve is the readiness check's: the daemon downloads ahead only while every check
//! passes, and the disk check asks for the artifacts times `disk_margin` plus
//! `min_free_disk_bytes` on the staging filesystem.

use std::time::Duration;

use fleetwave_shared::protocol::Phase;
use fleetwave_shared::{Artifact, Release};

use super::{Daemon, DaemonError, status};
use crate::executor::ExecError;
use crate::executor::download::{self, ArtifactSource};

/// The release whose artifacts were last staged (kept in the state's meta table).
const STAGED_META: &str = "staged_release";
/// Pause after a failed download ahead before the next one.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// A download ahead in progress, or finished and not yet looked at.
pub(super) struct Staging {
    release_id: String,
    task: tokio::task::JoinHandle<Result<u64, ExecError>>,
}

impl Daemon {
    /// Starts, or follows, the download ahead of `release` for assignment `rollout_id`.
    /// Returns how soon the daemon should look again (`None`: nothing in progress).
    pub(super) async fn stage_ahead(
        &mut self,
        rollout_id: &str,
        release: &Release,
    ) -> Result<Option<Duration>, DaemonError> {
        if self.ctx.store.meta(STAGED_META)?.as_deref() == Some(release.id.as_str()) {
            return Ok(None);
        }
        let look_again = Duration::from_secs(self.ctx.config.health.interval_secs.clamp(1, 60));
        if let Some(s) = &self.staging
            && s.release_id == release.id
        {
            if !s.task.is_finished() {
                return Ok(Some(look_again));
            }
            let s = self.staging.take().expect("checked above");
            match s.task.await {
                Ok(Ok(bytes)) => {
                    self.ctx.store.set_meta(STAGED_META, &release.id)?;
                    let detail = format!(
                        "{} artifact(s), {bytes} bytes, downloaded and verified ahead; the \
                         install waits for its window and a lease",
                        release.artifacts.len()
                    );
                    status(&format!("staged {}: {detail}", release.id));
                    self.ctx
                        .phase(Some(rollout_id), &release.id, Phase::Staged, Some(detail))?;
                    return Ok(None);
                }
                Ok(Err(e)) => {
                    tracing::warn!(release = %release.id, "download ahead failed: {e}; trying again later");
                }
                Err(e) => {
                    tracing::warn!(release = %release.id, "download ahead stopped: {e}");
                }
            }
            self.staging_retry_at = Some(tokio::time::Instant::now() + RETRY_AFTER);
            return Ok(Some(RETRY_AFTER));
        }
        if let Some(at) = self.staging_retry_at
            && tokio::time::Instant::now() < at
        {
            return Ok(Some(at - tokio::time::Instant::now()));
        }
        self.staging_retry_at = None;
        // Another release's download (a newer assignment replaced it): stop it.
        if let Some(old) = self.staging.take() {
            old.task.abort();
        }
        let Some(session) = &self.session else {
            return Ok(None); // air-gapped: bundles bring their artifacts
        };
        let client = session.http().clone();
        let bearer = session.bearer().await.ok();
        // Relative artifact URLs are fetched from the coordinator in use now.
        let base_url = session.base_url().to_string();
        let staging_dir = self.ctx.config.staging_dir();
        let limit = self.ctx.config.download.max_bytes_per_sec;
        let artifacts: Vec<Artifact> = release.artifacts.clone();
        let peers = self.peers.clone();
        tracing::info!(release = %release.id, artifacts = artifacts.len(), "downloading ahead of the window");
        let task = tokio::spawn(async move {
            let source = ArtifactSource {
                client: &client,
                base_url: &base_url,
                bearer_token: bearer.as_deref(),
                max_bytes_per_sec: limit,
                peers: peers.as_deref(),
            };
            let mut bytes = 0;
            for a in &artifacts {
                download::fetch(&source, a, &staging_dir).await?;
                bytes += a.length;
            }
            Ok(bytes)
        });
        self.staging = Some(Staging {
            release_id: release.id.clone(),
            task,
        });
        Ok(Some(look_again))
    }
}
