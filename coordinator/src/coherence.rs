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

/// When other replicas may write to this replica's store and followers serve: starts
/// listening, reloads what this replica keeps (changes made before the listening began
/// are not announced to it), and returns the task that follows the changes from then on,
/// so that the replica serves from its first request with a coherent memory. None
/// otherwise (nothing to follow).
pub async fn start(app: AppState) -> anyhow::Result<Option<JoinHandle<()>>> {
    if !app.db.shared_by_replicas()
        || app.config.storage.followers != crate::config::Followers::Serve
    {
        return Ok(None);
    }
    let feed = connect(&app).await.map_err(anyhow::Error::msg)?;
    Ok(Some(tokio::spawn(run(app, feed))))
}

/// Listens, then reloads everything once; the replica is coherent from then on.
async fn connect(app: &AppState) -> Result<Feed, String> {
    let db = app.db.clone();
    let feed = tokio::task::spawn_blocking(move || db.change_feed())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("listening: {e}"))?
        .ok_or("this store has no change feed")?;
    let feed = Feed(Some(feed));
    app.engine
        .resync()
        .await
        .map_err(|e| format!("reloading: {e}"))?;
    app.controller.coherence(None);
    tracing::info!("this replica hears other replicas' changes");
    Ok(feed)
}

async fn run(app: AppState, first: Feed) {
    let mut shutdown = app.shutdown.clone();
    let mut pause = Duration::from_millis(100);
    let mut feed = Some(first);
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Each listening runs in a task of its own: should it panic, this replica says it
        // is incoherent and listens again, like after any other failure.
        let attempt = tokio::spawn({
            let (app, feed) = (app.clone(), feed.take());
            async move {
                let feed = match feed {
                    Some(f) => f,
                    None => connect(&app).await?,
                };
                follow(&app, feed).await
            }
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

/// Applies changes until shutdown (Ok) or a failure (Err: changes may have been lost).
async fn follow(app: &AppState, mut feed: Feed) -> Result<(), String> {
    let shutdown = app.shutdown.clone();
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let (back, changes) = tokio::task::spawn_blocking(move || {
            let changes = match feed.0.as_mut() {
                Some(f) => f.next(WAIT, BATCH),
                None => Err(crate::store::StoreError::Backend(
                    "the change feed is closed".into(),
                )),
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
