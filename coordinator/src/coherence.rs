//! Keeps this replica's memory coherent with what other replicas commit to a shared
//! database (PostgreSQL), so that every replica can serve.
//!
//! Each replica keeps in memory what the hot paths read: the poll cache (each site's
//! assignment, state and device keys), the live rollouts' facts (what the wave controller
//! and lease decisions read) and the stored freezes. A change committed by another
//! replica reaches this one as a notification ([`crate::store::Change`], sent by
//! triggers in the database when the writing transaction commits); this task re-reads the
//! rows it names and puts them in memory ([`crate::engine::Engine::apply_changes`]),
//! which wakes the long polls of a site that got an assignment and the wave controller
//! when a rollout's facts changed.
//!
//! While the notifications cannot be heard (the listening connection broke, the database
//! is down), this replica cannot know what it misses: it reports itself incoherent and
//! refuses requests (503, see [`crate::liveness::ControllerStatus::refusal`]) until it
//! has listened again and reloaded everything it keeps. On SQLite (one process), or with
//! `storage.followers = "stand_by"` (only the leader serves), nothing runs.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::state::AppState;

/// How long one wait for notifications lasts (the task looks at shutdown in between).
const WAIT: Duration = Duration::from_secs(1);
/// Most changes applied in one batch.
const BATCH: usize = 20_000;

/// Starts the task when other replicas may write to this replica's store and followers
/// serve; None otherwise.
pub fn spawn(app: AppState) -> Option<JoinHandle<()>> {
    if !app.db.shared_by_replicas()
        || app.config.storage.followers != crate::config::Followers::Serve
    {
        return None;
    }
    app.controller.coherence(Some(
        "this replica has not started hearing other replicas' changes yet".to_string(),
    ));
    Some(tokio::spawn(run(app)))
}

async fn run(app: AppState) {
    let mut shutdown = app.shutdown.clone();
    let mut pause = Duration::from_millis(100);
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Each listening runs in a task of its own: should it panic, this replica says it
        // is incoherent and listens again, like after any other failure.
        let attempt = tokio::spawn({
            let app = app.clone();
            async move { listen(&app).await }
        })
        .await
        .unwrap_or_else(|e| Err(format!("the listening task ended: {e}")));
        match attempt {
            Ok(()) => return,
            Err(why) => {
                tracing::warn!(reason = %why, retry_in_ms = pause.as_millis() as u64, "this replica does not hear other replicas' changes; it refuses requests until it does");
                app.controller.coherence(Some(format!(
                    "this replica does not hear other replicas' changes ({why}); it \
                     reloads its memory once it does"
                )));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return,
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Listens, reloads everything once (changes made before the listening began are not
/// announced to it), then applies changes until shutdown (Ok) or a failure (Err).
async fn listen(app: &AppState) -> Result<(), String> {
    let db = app.db.clone();
    let feed = tokio::task::spawn_blocking(move || db.change_feed())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("listening: {e}"))?;
    let Some(feed) = feed else {
        return Ok(());
    };
    let mut feed = Feed(Some(feed));
    app.engine
        .resync()
        .await
        .map_err(|e| format!("reloading: {e}"))?;
    app.controller.coherence(None);
    tracing::info!("this replica hears other replicas' changes");
    let shutdown = app.shutdown.clone();
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let (back, changes) = tokio::task::spawn_blocking(move || {
            let changes = match feed.0.as_mut() {
                Some(f) => f.next(WAIT, BATCH),
                None => Ok(Vec::new()),
            };
            (feed, changes)
        })
        .await
        .map_err(|e| e.to_string())?;
        feed = back;
        let changes = changes.map_err(|e| format!("the change feed: {e}"))?;
        if changes.is_empty() {
            continue;
        }
        let n = changes.len();
        app.engine
            .apply_changes(changes)
            .await
            .map_err(|e| format!("applying {n} changes: {e}"))?;
    }
}

/// The feed's connection, closed on a thread of its own when dropped: the synchronous
/// PostgreSQL client closes by blocking on a runtime of its own, which tokio forbids on
/// an async worker thread.
struct Feed(Option<Box<dyn crate::store::ChangeFeed>>);

impl Drop for Feed {
    fn drop(&mut self) {
        if let Some(feed) = self.0.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                let _ = std::thread::Builder::new()
                    .name("fleetwave-feed-close".into())
                    .spawn(move || drop(feed));
            } else {
                drop(feed);
            }
        }
    }
}
