//! The signal queue: finished golden-signal minutes ([`SignalMinute`]) waiting to go to
//! the coordinator with the reports.
//!
//! Bounded: at most `max` minutes are kept (all streams together). When a new minute would
//! go beyond, the oldest minutes are dropped first and counted (`status` says how many,
//! and up to which minute), so that a box offline for days keeps the most recent day and
//! never grows its state without end. A minute is deleted once the coordinator
//! acknowledged the batch that carried it; the coordinator stores minutes by (site,
//! stream, signal, minute), so sending one again after a lost answer is harmless, and so
//! is dropping one that was on its way.
//!
//! This module never talks to the coordinator and never touches the report outbox.

use fleetwave_shared::protocol::signals::SignalMinute;
use jiff::Timestamp;
use rusqlite::{OptionalExtension as _, params};
use serde::{Deserialize, Serialize};

use super::{StateError, Store};

/// The `meta` key of [`Dropped`].
const DROPPED_KEY: &str = "signals:dropped";

/// Minutes dropped so far because the queue was full (the coordinator never saw them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// How many minutes, since this agent's state was created.
    pub minutes: u64,
    /// The newest minute dropped, and when the last drop happened.
    pub newest_dropped_minute: Option<Timestamp>,
    pub last_drop_at: Option<Timestamp>,
}

impl Store {
    /// Queues a finished minute (replacing a queued minute of the same stream and start)
    /// and drops the oldest minutes beyond `max`; returns how many were dropped.
    pub fn signals_push(
        &self,
        minute: &SignalMinute,
        max: usize,
        now: Timestamp,
    ) -> Result<usize, StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO signal_queue (stream, minute, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (stream, minute) DO UPDATE SET body = excluded.body",
            params![
                minute.stream,
                minute.minute.to_string(),
                serde_json::to_string(minute).expect("signal minutes serialize")
            ],
        )?;
        let count: i64 = tx.query_row("SELECT COUNT(*) FROM signal_queue", [], |r| r.get(0))?;
        let excess = (count as usize).saturating_sub(max);
        if excess > 0 {
            // Oldest by minute (a stream that was down a while is not favoured).
            let newest: Option<String> = tx
                .query_row(
                    "SELECT MAX(minute) FROM (SELECT minute FROM signal_queue
                     ORDER BY minute, seq LIMIT ?1)",
                    [excess as i64],
                    |r| r.get(0),
                )
                .optional()?
                .flatten();
            tx.execute(
                "DELETE FROM signal_queue WHERE seq IN
                 (SELECT seq FROM signal_queue ORDER BY minute, seq LIMIT ?1)",
                [excess as i64],
            )?;
            let mut dropped: Dropped = tx
                .query_row(
                    "SELECT value FROM meta WHERE key = ?1",
                    [DROPPED_KEY],
                    |r| r.get::<_, String>(0),
                )
                .optional()?
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            dropped.minutes += excess as u64;
            dropped.newest_dropped_minute = newest
                .and_then(|t| t.parse().ok())
                .max(dropped.newest_dropped_minute);
            dropped.last_drop_at = Some(now);
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![
                    DROPPED_KEY,
                    serde_json::to_string(&dropped).expect("counts serialize")
                ],
            )?;
        }
        tx.commit()?;
        Ok(excess)
    }

    /// The oldest `limit` queued minutes with their queue positions, oldest first. A row
    /// that does not parse (written by a newer agent) is deleted, with a warning.
    pub fn signals_batch(&self, limit: usize) -> Result<Vec<(i64, SignalMinute)>, StateError> {
        let conn = self.conn();
        let rows = {
            let mut stmt =
                conn.prepare("SELECT seq, body FROM signal_queue ORDER BY minute, seq LIMIT ?1")?;
            stmt.query_map([limit as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (seq, body) in rows {
            match serde_json::from_str::<SignalMinute>(&body) {
                Ok(m) => out.push((seq, m)),
                Err(e) => {
                    tracing::warn!(seq, "a queued signal minute cannot be read ({e}); dropped");
                    conn.execute("DELETE FROM signal_queue WHERE seq = ?1", [seq])?;
                }
            }
        }
        Ok(out)
    }

    /// Deletes minutes the coordinator acknowledged (or refused for good).
    pub fn signals_ack(&self, seqs: &[i64]) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for seq in seqs {
            tx.execute("DELETE FROM signal_queue WHERE seq = ?1", [seq])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// How many minutes are queued.
    pub fn signals_len(&self) -> Result<u64, StateError> {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM signal_queue", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Minutes dropped because the queue was full.
    pub fn signals_dropped(&self) -> Result<Dropped, StateError> {
        Ok(self
            .meta(DROPPED_KEY)?
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(stream: &str, m: i64, v: f64) -> SignalMinute {
        SignalMinute {
            stream: stream.into(),
            release_id: Some("shop-1".into()),
            minute: Timestamp::from_second(1_800_000_000 + m * 60).unwrap(),
            values: [("error_ratio".to_string(), v)].into_iter().collect(),
            resets: vec![],
            scrapes: 4,
            failed_scrapes: 0,
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_minutes_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = Timestamp::from_second(1_900_000_000).unwrap();
        for m in 0..10 {
            let stream = if m % 2 == 0 { "shop" } else { "pos" };
            assert_eq!(
                store.signals_push(&minute(stream, m, 0.1), 6, now).unwrap(),
                (m >= 6) as usize
            );
        }
        assert_eq!(store.signals_len().unwrap(), 6);
        let kept: Vec<SignalMinute> = store
            .signals_batch(100)
            .unwrap()
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        assert_eq!(
            kept.first().unwrap(),
            &minute("shop", 4, 0.1),
            "minutes 0 to 3 dropped"
        );
        assert_eq!(kept.last().unwrap(), &minute("pos", 9, 0.1));
        let dropped = store.signals_dropped().unwrap();
        assert_eq!(dropped.minutes, 4);
        assert_eq!(
            dropped.newest_dropped_minute,
            Some(minute("pos", 3, 0.0).minute)
        );
        assert_eq!(dropped.last_drop_at, Some(now));
    }

    #[test]
    fn the_same_minute_again_replaces_it_and_acked_minutes_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = Timestamp::from_second(1_900_000_000).unwrap();
        store
            .signals_push(&minute("shop", 0, 0.1), 10, now)
            .unwrap();
        store
            .signals_push(&minute("shop", 0, 0.3), 10, now)
            .unwrap();
        store
            .signals_push(&minute("shop", 1, 0.2), 10, now)
            .unwrap();
        let batch = store.signals_batch(1).unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].1, minute("shop", 0, 0.3));
        store.signals_ack(&[batch[0].0]).unwrap();
        let rest = store.signals_batch(10).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].1, minute("shop", 1, 0.2));
        assert_eq!(store.signals_dropped().unwrap(), Dropped::default());
    }
}
