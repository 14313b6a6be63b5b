//! Report retention: deleting agents' stored reports once they are older than
//! `[retention]` allows.
//!
//! A stored report is a site's history (the dashboard's site page) and the memory that
//! makes a resent report count once. A site's current state (health, installed releases,
//! its place in each rollout) lives in other tables and is never pruned. Without pruning
//! the reports table only grows: at the agent's default heartbeat (every 5 minutes),
//! 100,000 sites add 28.8 million rows a day.
//!
//! Pruning deletes the oldest rows of one kind at a time, [`CHUNK`] rows per transaction
//! on the writer connection, pausing after each chunk for as long as it took: report
//! batches and lease grants wait for at most one chunk, and the writer never spends more
//! than half of its time pruning.
//!
//! A report resent after its row was pruned is stored and applied again. That is safe:
//! every effect of a report is guarded by the report's own time (a later report always
//! wins, a commit at or before the recorded one changes nothing), so applying an old
//! report again changes nothing.
//!
//! Golden-signal values (schema v9) are pruned the same way, by the age of their minute
//! (`signals_days`): a site's signals are only the gate's evidence over a bake and the
//! site page's latest minute, and 10,000 sites with ten signals add 144 million rows a day.
//!
//! This module never deletes anything but rows of the reports and signal tables.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::config::RetentionConfig;
use crate::metrics::KindLabel;
use crate::state::AppState;
use crate::store::{ReportKind, StoreError};

/// How often a pruning round runs.
pub const PRUNE_EVERY: Duration = Duration::from_secs(300);
/// Rows deleted per transaction.
pub const CHUNK: usize = 2_000;
/// At most this many chunks per kind and round (a backlog, e.g. after lowering the
/// retention, is worked off over several rounds).
pub const MAX_CHUNKS: usize = 250;
/// The least pause between two chunks, for the writer's other work (the pause is at least
/// as long as the last chunk took).
const MIN_PAUSE: Duration = Duration::from_millis(20);

/// The cut-off of each kind at `now`: rows received before it are due. Kinds kept
/// forever (a retention of 0) are left out.
pub fn cut_offs(config: &RetentionConfig, now: Timestamp) -> Vec<(ReportKind, Timestamp)> {
    let hours = |h: u64| SignedDuration::from_hours(h as i64);
    ReportKind::ALL
        .into_iter()
        .filter_map(|kind| {
            let keep = if kind == ReportKind::Health {
                config.health_hours
            } else {
                config.reports_days * 24
            };
            // At most 100 years (validated), so the subtraction stays in range; if it did
            // not, the earliest time keeps everything.
            let before = now.saturating_sub(hours(keep)).unwrap_or(Timestamp::MIN);
            (keep > 0).then_some((kind, before))
        })
        .collect()
}

/// One pruning round at `now`; returns the rows deleted per kind (kinds with none left
/// out).
pub async fn prune_once(
    app: &AppState,
    now: Timestamp,
) -> Result<Vec<(&'static str, u64)>, StoreError> {
    let mut deleted = Vec::new();
    for (kind, before) in cut_offs(&app.config.retention, now) {
        let mut total = 0u64;
        let mut pause = Duration::ZERO;
        for _ in 0..MAX_CHUNKS {
            tokio::time::sleep(pause).await;
            let started = std::time::Instant::now();
            let n = app
                .db
                .run(move |s| s.prune_reports(kind, before, CHUNK))
                .await?;
            // The writer is pruning at most half of the time, however slow the disk.
            pause = started.elapsed().max(MIN_PAUSE);
            total += n as u64;
            if n < CHUNK {
                break;
            }
        }
        if total > 0 {
            app.metrics
                .reports_pruned
                .get_or_create(&KindLabel {
                    kind: kind.as_str().into(),
                })
                .inc_by(total);
            deleted.push((kind.as_str(), total));
        }
    }
    if let Some(before) = signals_cut_off(&app.config.retention, now) {
        let mut total = 0u64;
        let mut pause = Duration::ZERO;
        for _ in 0..MAX_CHUNKS {
            tokio::time::sleep(pause).await;
            let started = std::time::Instant::now();
            let n = app.db.run(move |s| s.prune_signals(before, CHUNK)).await?;
            pause = started.elapsed().max(MIN_PAUSE);
            total += n as u64;
            if n < CHUNK {
                break;
            }
        }
        if total > 0 {
            app.metrics
                .reports_pruned
                .get_or_create(&KindLabel {
                    kind: "signals".into(),
                })
                .inc_by(total);
            deleted.push(("signals", total));
        }
    }
    Ok(deleted)
}

/// Signal values of minutes before this are due at `now` (None: kept forever).
pub fn signals_cut_off(config: &RetentionConfig, now: Timestamp) -> Option<Timestamp> {
    let keep = SignedDuration::from_hours(config.signals_days as i64 * 24);
    (config.signals_days > 0).then(|| now.saturating_sub(keep).unwrap_or(Timestamp::MIN))
}

/// Runs [`prune_once`] a minute after start and then every [`PRUNE_EVERY`], until `stop`
/// turns true (which also ends a round in progress).
pub fn spawn_pruner(
    app: AppState,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut wait = Duration::from_secs(60);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => break,
            }
            wait = PRUNE_EVERY;
            let started = std::time::Instant::now();
            // A shutdown ends a round between two chunks (each chunk is one transaction,
            // so it is either done or not).
            let round = tokio::select! {
                r = prune_once(&app, app.now()) => r,
                _ = stop.changed() => break,
            };
            match round {
                Ok(deleted) if !deleted.is_empty() => tracing::info!(
                    ?deleted,
                    took_ms = started.elapsed().as_millis() as u64,
                    "pruned reports past their retention period"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning old reports failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_offs_follow_the_configured_periods_and_zero_keeps_forever() {
        let now: Timestamp = "2026-11-27T12:00:00Z".parse().unwrap();
        let c = RetentionConfig {
            health_hours: 48,
            reports_days: 90,
            signals_days: 7,
        };
        let cuts = cut_offs(&c, now);
        assert_eq!(cuts.len(), ReportKind::ALL.len());
        for (kind, at) in cuts {
            let expected = if kind == ReportKind::Health {
                "2026-11-25T12:00:00Z"
            } else {
                "2026-08-29T12:00:00Z"
            };
            assert_eq!(at, expected.parse::<Timestamp>().unwrap(), "{kind}");
        }
        let c = RetentionConfig {
            health_hours: 0,
            reports_days: 7,
            signals_days: 7,
        };
        let kinds: Vec<_> = cut_offs(&c, now).into_iter().map(|(k, _)| k).collect();
        assert!(!kinds.contains(&ReportKind::Health) && kinds.len() == ReportKind::ALL.len() - 1);
        let c = RetentionConfig {
            health_hours: 0,
            reports_days: 0,
            signals_days: 0,
        };
        assert!(cut_offs(&c, now).is_empty());
    }
}
