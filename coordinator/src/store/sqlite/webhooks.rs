//! Webhook endpoints, the outbox of events and their deliveries, and the delivery log.

use rusqlite::{OptionalExtension, Row, params};

use super::*;
use crate::webhooks::{ATTEMPTS_KEPT, WebhookEvent, new_message_id};

const ENDPOINT_COLS: &str =
    "id, url, secret, kinds, format, allow_insecure_http, description, created_at, created_by";

const DELIVERY_COLS: &str = "d.id, d.endpoint_id, e.type, d.state, d.attempts, d.created_at, d.next_attempt_at, d.last_status, d.last_error, d.finished_at";

/// Finished deliveries kept per endpoint (older ones, and events no delivery names any
/// more, are deleted).
const FINISHED_KEPT: usize = 1000;

type EndpointRow = (
    String,
    String,
    String,
    String,
    String,
    bool,
    String,
    i64,
    String,
);

fn endpoint_row(r: &Row) -> rusqlite::Result<EndpointRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
    ))
}

fn endpoint_record(
    (id, url, secret, kinds, format, allow_insecure_http, description, created_at, created_by): EndpointRow,
) -> StoreResult<WebhookRecord> {
    Ok(WebhookRecord {
        id,
        url,
        secret,
        kinds: serde_json::from_str(&kinds)
            .map_err(|e| StoreError::Corrupt(format!("webhook kinds: {e}")))?,
        format,
        allow_insecure_http,
        description,
        created_at: from_millis(created_at)?,
        created_by,
    })
}

type DeliveryRow = (
    String,
    String,
    String,
    String,
    u32,
    i64,
    i64,
    Option<u16>,
    Option<String>,
    Option<i64>,
);

fn delivery_row(r: &Row) -> rusqlite::Result<DeliveryRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
    ))
}

fn delivery_record(
    (
        id,
        endpoint_id,
        event_type,
        state,
        attempts,
        created_at,
        next_attempt_at,
        last_status,
        last_error,
        finished_at,
    ): DeliveryRow,
) -> StoreResult<DeliveryRecord> {
    Ok(DeliveryRecord {
        id,
        endpoint_id,
        event_type,
        state,
        attempts,
        created_at: from_millis(created_at)?,
        next_attempt_at: from_millis(next_attempt_at)?,
        last_status,
        last_error,
        finished_at: opt_ts(finished_at)?,
    })
}

/// Whether any endpoint is registered (the outbox is skipped otherwise).
pub(super) fn any_endpoint(tx: &rusqlite::Transaction) -> StoreResult<bool> {
    Ok(tx
        .prepare_cached("SELECT 1 FROM webhook_endpoints LIMIT 1")?
        .query_row([], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Writes `event` to the outbox inside the caller's transaction, with one pending
/// delivery (and its stable `webhook-id`) per endpoint subscribed to its type. Nothing is
/// stored when no endpoint wants it.
pub(super) fn enqueue(tx: &rusqlite::Transaction, event: &WebhookEvent) -> StoreResult<()> {
    let kind = event.kind.as_str();
    let endpoints: Vec<String> = {
        let mut st = tx.prepare_cached(
            "SELECT w.id FROM webhook_endpoints w, json_each(w.kinds) k WHERE k.value = ?1 ORDER BY w.id",
        )?;
        let rows = st.query_map([kind], |r| r.get(0))?;
        collect(rows, Ok)?
    };
    if endpoints.is_empty() {
        return Ok(());
    }
    insert_event(tx, event, &endpoints)?;
    Ok(())
}

/// Stores the event and a pending delivery of it to each of `endpoints`; returns the
/// deliveries' ids.
fn insert_event(
    tx: &rusqlite::Transaction,
    event: &WebhookEvent,
    endpoints: &[String],
) -> StoreResult<Vec<String>> {
    tx.prepare_cached("INSERT INTO webhook_events (type, at, body) VALUES (?1, ?2, ?3)")?
        .execute(params![
            event.kind.as_str(),
            ms(event.timestamp),
            event.json()
        ])?;
    let event_id = tx.last_insert_rowid();
    let mut st = tx.prepare_cached(
        "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, state, attempts, created_at, next_attempt_at) VALUES (?1, ?2, ?3, 'pending', 0, ?4, ?4)",
    )?;
    let mut ids = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let id = new_message_id();
        st.execute(params![id, endpoint, event_id, ms(event.timestamp)])?;
        ids.push(id);
    }
    Ok(ids)
}

pub(super) fn create(s: &SqliteStore, w: &WebhookRecord, audit: &AuditRecord) -> StoreResult<()> {
    s.write(|tx| {
        let n = tx.execute(
            &format!(
                "INSERT OR IGNORE INTO webhook_endpoints ({ENDPOINT_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)"
            ),
            params![
                w.id,
                w.url,
                w.secret,
                to_json(&w.kinds),
                w.format,
                w.allow_insecure_http,
                w.description,
                ms(w.created_at),
                w.created_by
            ],
        )?;
        if n == 0 {
            return Err(StoreError::Conflict(format!(
                "webhook {} already exists",
                w.id
            )));
        }
        super::access::insert_audit(tx, audit)
    })
}

pub(super) fn list(s: &SqliteStore) -> StoreResult<Vec<WebhookRecord>> {
    s.read(|c| {
        let mut st = c.prepare(&format!(
            "SELECT {ENDPOINT_COLS} FROM webhook_endpoints ORDER BY created_at, id"
        ))?;
        let rows = st.query_map([], endpoint_row)?;
        collect(rows, endpoint_record)
    })
}

pub(super) fn get(s: &SqliteStore, id: &str) -> StoreResult<Option<WebhookRecord>> {
    s.read(|c| {
        c.query_row(
            &format!("SELECT {ENDPOINT_COLS} FROM webhook_endpoints WHERE id = ?1"),
            [id],
            endpoint_row,
        )
        .optional()?
        .map(endpoint_record)
        .transpose()
    })
}

pub(super) fn delete(s: &SqliteStore, id: &str, audit: &AuditRecord) -> StoreResult<()> {
    s.write(|tx| {
        // Deliveries and attempts go with it (ON DELETE CASCADE).
        let n = tx.execute("DELETE FROM webhook_endpoints WHERE id = ?1", [id])?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no webhook {id}")));
        }
        prune_events(tx)?;
        super::access::insert_audit(tx, audit)
    })
}

pub(super) fn enqueue_test(
    s: &SqliteStore,
    id: &str,
    event: &WebhookEvent,
    audit: &AuditRecord,
) -> StoreResult<String> {
    s.write(|tx| {
        let exists = tx
            .query_row(
                "SELECT 1 FROM webhook_endpoints WHERE id = ?1",
                [id],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !exists {
            return Err(StoreError::NotFound(format!("no webhook {id}")));
        }
        let ids = insert_event(tx, event, &[id.to_string()])?;
        super::access::insert_audit(tx, audit)?;
        ids.into_iter()
            .next()
            .ok_or_else(|| StoreError::Task("no delivery stored".into()))
    })
}

pub(super) fn record_site_silences(
    s: &SqliteStore,
    silences: &[SiteSilence],
) -> StoreResult<usize> {
    if silences.is_empty() {
        return Ok(0);
    }
    s.write(|tx| {
        let mut new = 0;
        for x in silences {
            let n = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO webhook_site_silences (rollout_id, site_id, since) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![x.rollout_id, x.site_id, ms(x.since)])?;
            if n == 1 {
                new += 1;
                let event = WebhookEvent::site_silent(x);
                enqueue(tx, &event)?;
            }
        }
        Ok(new)
    })
}

pub(super) fn subscribed(s: &SqliteStore, kind: &str) -> StoreResult<bool> {
    s.read(|c| {
        Ok(c.prepare_cached(
            "SELECT 1 FROM webhook_endpoints w, json_each(w.kinds) k WHERE k.value = ?1 LIMIT 1",
        )?
        .query_row([kind], |_| Ok(()))
        .optional()?
        .is_some())
    })
}

pub(super) fn counts(s: &SqliteStore) -> StoreResult<BTreeMap<String, DeliveryCounts>> {
    s.read(|c| {
        let mut st = c.prepare(
            "SELECT endpoint_id, state, COUNT(*) FROM webhook_deliveries GROUP BY endpoint_id, state",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u64>(2)?,
            ))
        })?;
        let mut out: BTreeMap<String, DeliveryCounts> = BTreeMap::new();
        for row in rows {
            let (endpoint, state, n) = row?;
            let c = out.entry(endpoint).or_default();
            match state.as_str() {
                "pending" => c.pending = n,
                "delivered" => c.delivered = n,
                "failed" => c.failed = n,
                other => {
                    return Err(StoreError::Corrupt(format!(
                        "webhook delivery state {other:?}"
                    )));
                }
            }
        }
        Ok(out)
    })
}

pub(super) fn due(
    s: &SqliteStore,
    now: Timestamp,
    busy: &[String],
    limit: usize,
) -> StoreResult<Vec<DueDelivery>> {
    s.read(|c| {
        // One delivery per endpoint (its earliest due; SQLite takes the bare columns from
        // the row of the MIN): an endpoint with a long backlog never fills the batch.
        let mut st = c.prepare_cached(&format!(
            "SELECT {DELIVERY_COLS}, w.url, w.secret, w.format, e.body, MIN(d.next_attempt_at) AS due
             FROM webhook_deliveries d
             JOIN webhook_events e ON e.id = d.event_id
             JOIN webhook_endpoints w ON w.id = d.endpoint_id
             WHERE d.state = 'pending' AND d.next_attempt_at <= ?1
               AND d.endpoint_id NOT IN (SELECT value FROM json_each(?2))
             GROUP BY d.endpoint_id
             ORDER BY due, d.endpoint_id LIMIT ?3"
        ))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = st.query_map(params![ms(now), to_json(&busy), limit], |r| {
            Ok((
                delivery_row(r)?,
                r.get::<_, String>(10)?,
                r.get::<_, String>(11)?,
                r.get::<_, String>(12)?,
                r.get::<_, String>(13)?,
            ))
        })?;
        collect(rows, |(d, url, secret, format, event_body)| {
            Ok(DueDelivery {
                delivery: delivery_record(d)?,
                url,
                secret,
                format,
                event_body,
            })
        })
    })
}

pub(super) fn record_attempt(
    s: &SqliteStore,
    a: &AttemptRecord,
    next_attempt_at: Option<Timestamp>,
) -> StoreResult<()> {
    s.write(|tx| {
        let state = match (a.outcome.as_str(), next_attempt_at) {
            ("retrying", Some(_)) => "pending",
            ("delivered", None) => "delivered",
            ("failed", None) => "failed",
            (outcome, next) => {
                return Err(StoreError::Task(format!(
                    "attempt outcome {outcome:?} with next attempt {next:?}"
                )));
            }
        };
        let n = tx.execute(
            "UPDATE webhook_deliveries SET state = ?2, attempts = ?3, next_attempt_at = COALESCE(?4, next_attempt_at), last_status = ?5, last_error = ?6, finished_at = ?7 WHERE id = ?1 AND state = 'pending'",
            params![
                a.delivery_id,
                state,
                a.attempt,
                next_attempt_at.map(ms),
                a.status,
                a.error,
                (state != "pending").then(|| ms(a.at))
            ],
        )?;
        if n == 0 {
            // The endpoint was deleted meanwhile: nothing to record.
            return Ok(());
        }
        tx.execute(
            "INSERT INTO webhook_attempts (endpoint_id, delivery_id, event_type, attempt, at, status, error, duration_ms, outcome) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)",
            params![
                a.endpoint_id,
                a.delivery_id,
                a.event_type,
                a.attempt,
                ms(a.at),
                a.status,
                a.error,
                i64::try_from(a.duration_ms).unwrap_or(i64::MAX),
                a.outcome
            ],
        )?;
        tx.execute(
            "DELETE FROM webhook_attempts WHERE endpoint_id = ?1 AND id <= (SELECT id FROM webhook_attempts WHERE endpoint_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            params![a.endpoint_id, ATTEMPTS_KEPT as i64],
        )?;
        if state != "pending" {
            tx.execute(
                "DELETE FROM webhook_deliveries WHERE rowid IN (SELECT rowid FROM webhook_deliveries WHERE endpoint_id = ?1 AND state != 'pending' ORDER BY finished_at DESC, rowid DESC LIMIT -1 OFFSET ?2)",
                params![a.endpoint_id, FINISHED_KEPT as i64],
            )?;
            prune_events(tx)?;
        }
        Ok(())
    })
}

/// Deletes events no delivery names any more.
fn prune_events(tx: &rusqlite::Transaction) -> StoreResult<()> {
    tx.prepare_cached(
        "DELETE FROM webhook_events WHERE NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = webhook_events.id)",
    )?
    .execute([])?;
    Ok(())
}

pub(super) fn attempts(
    s: &SqliteStore,
    endpoint_id: &str,
    limit: usize,
) -> StoreResult<Vec<AttemptRecord>> {
    s.read(|c| {
        let mut st = c.prepare(
            "SELECT id, endpoint_id, delivery_id, event_type, attempt, at, status, error, duration_ms, outcome FROM webhook_attempts WHERE endpoint_id = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = st.query_map(params![endpoint_id, limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<u16>>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, i64>(8)?,
                r.get::<_, String>(9)?,
            ))
        })?;
        collect(
            rows,
            |(id, endpoint_id, delivery_id, event_type, attempt, at, status, error, duration, outcome)| {
                Ok(AttemptRecord {
                    id,
                    endpoint_id,
                    delivery_id,
                    event_type,
                    attempt,
                    at: from_millis(at)?,
                    status,
                    error,
                    duration_ms: u64::try_from(duration).unwrap_or(0),
                    outcome,
                })
            },
        )
    })
}

pub(super) fn deliveries(
    s: &SqliteStore,
    endpoint_id: &str,
    limit: usize,
) -> StoreResult<Vec<DeliveryRecord>> {
    s.read(|c| {
        let mut st = c.prepare(&format!(
            "SELECT {DELIVERY_COLS} FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id WHERE d.endpoint_id = ?1 ORDER BY d.created_at DESC, d.rowid DESC LIMIT ?2"
        ))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = st.query_map(params![endpoint_id, limit], delivery_row)?;
        collect(rows, delivery_record)
    })
}
