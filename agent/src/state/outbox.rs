//! The report outbox: events waiting to be delivered to the coordinator.
//!
//! Every event gets a stable random 128-bit id when it is queued; the same id is sent on
//! every retry, so the coordinator applies it at most once, and an event is deleted only
//! after a 2xx answer acknowledged its batch (delivery at least once).
//!
//! Size policy: `max_events` is a soft limit. When the outbox reaches it, all queued health
//! samples are merged into one summary (`samples` counts what it stands for; failing checks
//! are kept, the worst disk, memory and load are kept). Phase, refusal, installed and
//! deferral events are never dropped, so the outbox may exceed the limit by them alone.
//!
//! Compaction never touches an event that was handed out for sending
//! ([`Store::outbox_batch`] marks it `sent`): the coordinator may already have applied it,
//! and merging it into a new summary (with a new id) would make the coordinator count its
//! samples twice. A sent event stays as it is until it is acknowledged.
//!
//! Dead letters: an event the coordinator refuses for its content (`400` for that event
//! alone, or `413` because it alone is over the coordinator's body limit) can never be
//! delivered as it is. [`Store::outbox_dead_letter`] moves it, unchanged, to the
//! `dead_letter` table with the coordinator's status, error code and message, so that it
//! no longer holds back the events queued after it. So does a queued row that this agent
//! cannot read back (written by a newer agent before a self-update was rolled back).
//! Dead letters are never deleted by the agent and are shown by `fleetwave-agent status`.
//!
//! This module must never drop a non-health event, never merge an event it handed out,
//! and never delete a dead letter.

use fleetwave_shared::protocol::{Event, EventBody, HealthSummary};
use jiff::Timestamp;
use rusqlite::{OptionalExtension as _, params};
use serde::Serialize;

use super::{StateError, Store, random_id};

/// Most failing-check names a compacted health summary keeps.
pub const MAX_FAILING_KEPT: usize = 32;

/// Why the coordinator refused an event (what a dead letter records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refused {
    /// The HTTP status (`0`: the agent could not read the queued row back).
    pub status: u16,
    /// The coordinator's error code (`bad_request`, `payload_too_large`, ...).
    pub code: String,
    pub message: String,
}

/// An event the coordinator refused, kept for the operator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    pub id: String,
    pub kind: String,
    /// The event as it was queued (JSON), or the raw row when it does not parse.
    pub event: serde_json::Value,
    #[serde(flatten)]
    pub refused: Refused,
    pub refused_at: Timestamp,
}

/// The kind of an event, as stored and counted (`phase`, `health`, ...).
pub fn kind(body: &EventBody) -> &'static str {
    match body {
        EventBody::Phase { .. } => "phase",
        EventBody::Health { .. } => "health",
        EventBody::Deferral { .. } => "deferral",
        EventBody::Installed { .. } => "installed",
        EventBody::Refusal { .. } => "refusal",
    }
}

/// Merges health samples (oldest first) into one: healthy only if every sample was, counts
/// added up, failing checks united, the worst resource figures kept.
pub fn merge_health(samples: &[(bool, HealthSummary)]) -> (bool, HealthSummary) {
    let mut healthy = true;
    let mut out = HealthSummary {
        samples: 0,
        ..HealthSummary::default()
    };
    for (ok, s) in samples {
        healthy &= *ok;
        out.passed = out.passed.saturating_add(s.passed);
        out.failed = out.failed.saturating_add(s.failed);
        out.samples = out.samples.saturating_add(s.samples.max(1));
        for f in &s.failing {
            if out.failing.len() < MAX_FAILING_KEPT && !out.failing.contains(f) {
                out.failing.push(f.clone());
            }
        }
        out.disk_free_bytes = min_opt(out.disk_free_bytes, s.disk_free_bytes);
        out.mem_available_bytes = min_opt(out.mem_available_bytes, s.mem_available_bytes);
        out.load1 = match (out.load1, s.load1) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    (healthy, out)
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Store {
    /// Queues an event and returns its id, applying the size policy (see the module docs).
    pub fn outbox_push(
        &self,
        body: EventBody,
        at: Timestamp,
        max_events: u64,
    ) -> Result<String, StateError> {
        let mut conn = self.conn();
        // IMMEDIATE: the count, the read of the health rows and their replacement see one
        // state, even with another process (`fleetwave-agent defer`) sending at once.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let count: i64 = tx.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
        let mut event = Event {
            id: random_id(),
            at,
            body,
        };
        if count as u64 >= max_events {
            // Compact: every queued health sample not yet handed out for sending (and this
            // one, if it is health) becomes one summary at the position of the newest.
            let mut stmt = tx.prepare(
                "SELECT seq, event FROM outbox WHERE kind = 'health' AND sent = 0 ORDER BY seq",
            )?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            drop(stmt);
            let mut samples = Vec::new();
            for (_, text) in &rows {
                let e: Event = serde_json::from_str(text).map_err(|e| StateError::Corrupt {
                    what: "outbox event",
                    message: e.to_string(),
                })?;
                if let EventBody::Health { healthy, summary } = e.body {
                    samples.push((healthy, summary));
                }
            }
            let incoming_health = matches!(event.body, EventBody::Health { .. });
            if let EventBody::Health { healthy, summary } = &event.body {
                samples.push((*healthy, summary.clone()));
            }
            if samples.len() > 1 || (incoming_health && !rows.is_empty()) {
                tx.execute("DELETE FROM outbox WHERE kind = 'health' AND sent = 0", [])?;
                let (healthy, summary) = merge_health(&samples);
                let merged = Event {
                    id: random_id(),
                    at: if incoming_health {
                        at
                    } else {
                        rows_last_at(&rows).unwrap_or(at)
                    },
                    body: EventBody::Health { healthy, summary },
                };
                insert(&tx, &merged)?;
                if incoming_health {
                    tx.commit()?;
                    return Ok(merged.id);
                }
            }
            if !incoming_health {
                tracing::debug!(
                    count,
                    max_events,
                    "outbox over its limit; keeping the event"
                );
            }
        }
        insert(&tx, &event)?;
        tx.commit()?;
        Ok(std::mem::take(&mut event.id))
    }

    /// Hands out the oldest `limit` events for sending, in the order they were queued,
    /// and marks them `sent` in the same transaction: from now on compaction leaves them
    /// alone (see the module docs). The mark stays until the event is acknowledged. A row
    /// that cannot be read moves to the dead letters, stamped `now`.
    pub fn outbox_batch(&self, limit: usize, now: Timestamp) -> Result<Vec<Event>, StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let rows = {
            let mut stmt = tx.prepare("SELECT seq, event FROM outbox ORDER BY seq LIMIT ?1")?;
            stmt.query_map([limit as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?
        };
        if let Some((last, _)) = rows.last() {
            tx.execute(
                "UPDATE outbox SET sent = 1 WHERE seq <= ?1 AND sent = 0",
                [last],
            )?;
        }
        let mut events = Vec::with_capacity(rows.len());
        for (seq, text) in &rows {
            match parse_event(text) {
                Ok(e) => events.push(e),
                Err(e) => {
                    // A row this agent cannot read would block every event behind it.
                    let refused = Refused {
                        status: 0,
                        code: "unreadable".into(),
                        message: e.to_string(),
                    };
                    tracing::warn!(
                        seq,
                        "a queued report cannot be read ({e}); moved to the dead letters \
                         (see `fleetwave-agent status`)"
                    );
                    move_to_dead_letter(&tx, "seq", &seq.to_string(), &refused, now)?;
                }
            }
        }
        tx.commit()?;
        Ok(events)
    }

    /// Moves a queued event the coordinator refused to the dead letters (unchanged, with
    /// why). Returns false if it was no longer queued (acknowledged or moved meanwhile).
    pub fn outbox_dead_letter(
        &self,
        id: &str,
        refused: &Refused,
        at: Timestamp,
    ) -> Result<bool, StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let moved = move_to_dead_letter(&tx, "id", id, refused, at)?;
        tx.commit()?;
        Ok(moved)
    }

    /// The most recent `limit` dead letters, newest first.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, kind, event, status, code, message, refused_at FROM dead_letter
             ORDER BY seq DESC LIMIT ?1",
        )?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(id, kind, event, status, code, message, at)| {
                Ok(DeadLetter {
                    id,
                    kind,
                    event: serde_json::from_str(&event).unwrap_or(serde_json::Value::String(event)),
                    refused: Refused {
                        status: u16::try_from(status).unwrap_or(0),
                        code,
                        message,
                    },
                    refused_at: super::ts(at, "dead letter refused_at")?,
                })
            })
            .collect()
    }

    /// Dead letters, per kind.
    pub fn dead_letter_counts(&self) -> Result<Vec<(String, u64)>, StateError> {
        self.counts_by_kind("SELECT kind, COUNT(*) FROM dead_letter GROUP BY kind ORDER BY kind")
    }

    /// The oldest `limit` queued events, without handing them out (for inspection).
    pub fn outbox_peek(&self, limit: usize) -> Result<Vec<Event>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT event FROM outbox ORDER BY seq LIMIT ?1")?;
        let rows = stmt
            .query_map([limit as i64], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        rows.iter().map(|t| parse_event(t)).collect()
    }

    /// Deletes events the coordinator acknowledged.
    pub fn outbox_ack(&self, ids: &[String]) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for id in ids {
            tx.execute("DELETE FROM outbox WHERE id = ?1", [id])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Queued events, per kind (`phase`, `health`, ...).
    pub fn outbox_counts(&self) -> Result<Vec<(String, u64)>, StateError> {
        self.counts_by_kind("SELECT kind, COUNT(*) FROM outbox GROUP BY kind ORDER BY kind")
    }

    /// Runs a `SELECT kind, COUNT(*) ... GROUP BY kind` query.
    fn counts_by_kind(&self, sql: &str) -> Result<Vec<(String, u64)>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn outbox_len(&self) -> Result<u64, StateError> {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
        Ok(n as u64)
    }
}

/// Moves the outbox row whose `column` (`id` or `seq`) is `value` to the dead letters.
fn move_to_dead_letter(
    tx: &rusqlite::Transaction<'_>,
    column: &str,
    value: &str,
    refused: &Refused,
    at: Timestamp,
) -> Result<bool, StateError> {
    let sql = match column {
        "seq" => "SELECT id, kind, event FROM outbox WHERE seq = CAST(?1 AS INTEGER)",
        _ => "SELECT id, kind, event FROM outbox WHERE id = ?1",
    };
    let row: Option<(String, String, String)> = tx
        .query_row(sql, [value], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((id, kind, event)) = row else {
        return Ok(false);
    };
    tx.execute(
        "INSERT OR IGNORE INTO dead_letter (id, kind, event, status, code, message, refused_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            id,
            kind,
            event,
            refused.status,
            refused.code,
            refused.message,
            at.to_string()
        ],
    )?;
    tx.execute("DELETE FROM outbox WHERE id = ?1", [&id])?;
    Ok(true)
}

fn parse_event(text: &str) -> Result<Event, StateError> {
    serde_json::from_str(text).map_err(|e| StateError::Corrupt {
        what: "outbox event",
        message: e.to_string(),
    })
}

fn rows_last_at(rows: &[(i64, String)]) -> Option<Timestamp> {
    rows.last()
        .and_then(|(_, t)| serde_json::from_str::<Event>(t).ok())
        .map(|e| e.at)
}

fn insert(tx: &rusqlite::Transaction<'_>, event: &Event) -> Result<(), StateError> {
    tx.execute(
        "INSERT INTO outbox (id, kind, event) VALUES (?1, ?2, ?3)",
        params![
            event.id,
            kind(&event.body),
            serde_json::to_string(event).expect("events serialize")
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetwave_shared::protocol::Phase;

    fn at(s: u32) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s as i64).unwrap()
    }

    fn health(ok: bool, failing: &[&str], disk: u64) -> EventBody {
        EventBody::Health {
            healthy: ok,
            summary: HealthSummary {
                passed: if ok { 3 } else { 2 },
                failed: if ok { 0 } else { 1 },
                failing: failing.iter().map(|s| s.to_string()).collect(),
                disk_free_bytes: Some(disk),
                mem_available_bytes: None,
                load1: Some(0.5),
                samples: 1,
            },
        }
    }

    fn phase(p: Phase) -> EventBody {
        EventBody::Phase {
            rollout_id: Some("r1".into()),
            release_id: "pos-2".into(),
            phase: p,
            detail: None,
        }
    }

    #[test]
    fn ids_are_128_bit_hex_and_batches_keep_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store
            .outbox_push(phase(Phase::Accepted), at(0), 100)
            .unwrap();
        let b = store.outbox_push(phase(Phase::Leased), at(1), 100).unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        let batch = store.outbox_batch(10, Timestamp::now()).unwrap();
        assert_eq!(
            batch.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
            vec![a.clone(), b]
        );
        // The id is stable until acknowledged.
        assert_eq!(store.outbox_batch(1, Timestamp::now()).unwrap()[0].id, a);
        store.outbox_ack(&[a]).unwrap();
        assert_eq!(store.outbox_len().unwrap(), 1);
    }

    #[test]
    fn full_outbox_compacts_health_and_keeps_every_phase_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let max = 10;
        let phases = [
            Phase::Accepted,
            Phase::Leased,
            Phase::Downloading,
            Phase::Installing,
        ];
        let mut t = 0;
        for p in phases {
            store.outbox_push(phase(p), at(t), max).unwrap();
            t += 1;
            store
                .outbox_push(health(true, &[], 900), at(t), max)
                .unwrap();
            t += 1;
        }
        for i in 0..20 {
            let ok = i != 7;
            let failing: &[&str] = if ok { &[] } else { &["http:app: status 500"] };
            store
                .outbox_push(health(ok, failing, 1000 - i), at(t), max)
                .unwrap();
            t += 1;
        }
        // More phase events past the limit are still kept.
        for p in [Phase::Verifying, Phase::Committed] {
            store.outbox_push(phase(p), at(t), max).unwrap();
            t += 1;
        }
        let events = store.outbox_batch(1000, Timestamp::now()).unwrap();
        let kept_phases: Vec<Phase> = events
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::Phase { phase, .. } => Some(*phase),
                _ => None,
            })
            .collect();
        assert_eq!(
            kept_phases,
            vec![
                Phase::Accepted,
                Phase::Leased,
                Phase::Downloading,
                Phase::Installing,
                Phase::Verifying,
                Phase::Committed
            ]
        );
        let healths: Vec<(bool, HealthSummary)> = events
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::Health { healthy, summary } => Some((*healthy, summary.clone())),
                _ => None,
            })
            .collect();
        let total: u32 = healths.iter().map(|(_, s)| s.samples).sum();
        assert_eq!(total, 24, "every sample is accounted for");
        assert!(
            events.len() as u64 <= max,
            "compaction brought it under the limit"
        );
        assert!(healths.iter().any(|(ok, s)| !ok
            && s.failing == vec!["http:app: status 500".to_string()]
            && s.disk_free_bytes == Some(900)));
    }

    fn samples_of(events: &[Event]) -> u32 {
        events
            .iter()
            .map(|e| match &e.body {
                EventBody::Health { summary, .. } => summary.samples.max(1),
                _ => 0,
            })
            .sum()
    }

    /// The health sampler fills the outbox while a batch of heartbeats is on its way to
    /// the coordinator: compaction must leave the in-flight heartbeats alone, or the
    /// coordinator (which applies the batch, then later the merged summary under a new id)
    /// counts those samples twice.
    #[test]
    fn compaction_never_merges_events_of_an_in_flight_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let max = 10;
        let mut t = 0;
        for _ in 0..6 {
            store
                .outbox_push(health(true, &[], 900), at(t), max)
                .unwrap();
            t += 1;
        }
        // The daemon hands out a batch and sends it ...
        let in_flight = store.outbox_batch(4, Timestamp::now()).unwrap();
        assert_eq!(in_flight.len(), 4);
        let in_flight_ids: Vec<String> = in_flight.iter().map(|e| e.id.clone()).collect();
        // ... while the sampler keeps queueing past the limit (compaction runs).
        for _ in 0..10 {
            store
                .outbox_push(health(true, &[], 800), at(t), max)
                .unwrap();
            t += 1;
        }
        let queued = store.outbox_peek(1000).unwrap();
        for id in &in_flight_ids {
            assert!(
                queued.iter().any(|e| &e.id == id),
                "in-flight event {id} was compacted away"
            );
        }
        assert!(
            queued.len() < 16,
            "the heartbeats not in flight were still compacted: {}",
            queued.len()
        );
        // The coordinator acknowledges the batch; what it receives afterwards adds up to
        // exactly the samples taken, none twice.
        store.outbox_ack(&in_flight_ids).unwrap();
        let rest = store.outbox_batch(1000, Timestamp::now()).unwrap();
        assert_eq!(samples_of(&in_flight) + samples_of(&rest), 16);
        assert!(rest.iter().all(|e| !in_flight_ids.contains(&e.id)));
    }

    #[test]
    fn refused_and_unreadable_events_become_dead_letters_and_stop_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store
            .outbox_push(phase(Phase::Accepted), at(0), 100)
            .unwrap();
        let b = store.outbox_push(phase(Phase::Leased), at(1), 100).unwrap();
        // A row this agent cannot read (an event kind from a newer agent).
        store
            .conn()
            .execute(
                "INSERT INTO outbox (id, kind, event) VALUES ('future', 'telemetry', '{\"id\":\"future\",\"kind\":\"telemetry\"}')",
                [],
            )
            .unwrap();
        let c = store
            .outbox_push(phase(Phase::Downloading), at(2), 100)
            .unwrap();
        let refused = Refused {
            status: 400,
            code: "bad_request".into(),
            message: "events[0].id must be 1 to 64 printable ASCII characters".into(),
        };
        assert!(store.outbox_dead_letter(&b, &refused, at(3)).unwrap());
        assert!(!store.outbox_dead_letter(&b, &refused, at(3)).unwrap());
        // The unreadable row is moved aside when handed out; the rest comes in order.
        let batch: Vec<String> = store
            .outbox_batch(10, Timestamp::now())
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(batch, vec![a, c]);
        let dead = store.dead_letters(10).unwrap();
        assert_eq!(dead.len(), 2);
        assert_eq!(dead[0].id, "future");
        assert_eq!(dead[0].refused.code, "unreadable");
        assert_eq!(dead[1].id, b);
        assert_eq!(dead[1].refused, refused);
        assert_eq!(dead[1].event["phase"], "leased", "kept unchanged");
        assert_eq!(
            store.dead_letter_counts().unwrap(),
            vec![("phase".to_string(), 1), ("telemetry".to_string(), 1)]
        );
    }

    #[test]
    fn merge_keeps_the_worst() {
        let samples = [
            (
                true,
                HealthSummary {
                    disk_free_bytes: Some(5),
                    load1: Some(0.1),
                    samples: 2,
                    ..Default::default()
                },
            ),
            (
                false,
                HealthSummary {
                    disk_free_bytes: Some(3),
                    load1: Some(2.0),
                    failed: 1,
                    failing: vec!["x".into()],
                    samples: 1,
                    ..Default::default()
                },
            ),
        ];
        let (ok, s) = merge_health(&samples);
        assert!(!ok);
        assert_eq!(
            (s.samples, s.failed, s.disk_free_bytes, s.load1),
            (3, 1, Some(3), Some(2.0))
        );
        assert_eq!(s.failing, vec!["x".to_string()]);
    }
}
