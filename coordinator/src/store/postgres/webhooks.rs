//! Outgoing webhooks: endpoints, the outbox of events, deliveries and their attempts,
//! and silences found once (as the SQLite backend's `webhooks`).

use super::*;
use crate::webhooks::{ATTEMPTS_KEPT, WebhookEvent, new_message_id};

const ENDPOINT_COLS: &str =
    "id, url, secret, kinds, format, allow_insecure_http, description, created_at, created_by";

const DELIVERY_COLS: &str = "d.id, d.endpoint_id, e.type, d.state, d.attempts, d.created_at, d.next_attempt_at, d.last_status, d.last_error, d.finished_at";

/// Finished deliveries kept per endpoint (as SQLite's backend).
const FINISHED_KEPT: i64 = 1000;

fn endpoint_record(r: &Row) -> StoreResult<WebhookRecord> {
    let kinds: String = r.get(3);
    Ok(WebhookRecord {
        id: r.get(0),
        url: r.get(1),
        secret: r.get(2),
        kinds: serde_json::from_str(&kinds)
            .map_err(|e| StoreError::Corrupt(format!("webhook kinds: {e}")))?,
        format: r.get(4),
        allow_insecure_http: flag(r, 5),
        description: r.get(6),
        created_at: from_millis(r.get(7))?,
        created_by: r.get(8),
    })
}

fn status(r: &Row, i: usize) -> StoreResult<Option<u16>> {
    r.get::<_, Option<i64>>(i)
        .map(|v| u16::try_from(v).map_err(|_| StoreError::Corrupt(format!("HTTP status {v}"))))
        .transpose()
}

fn delivery_record(r: &Row) -> StoreResult<DeliveryRecord> {
    Ok(DeliveryRecord {
        id: r.get(0),
        endpoint_id: r.get(1),
        event_type: r.get(2),
        state: r.get(3),
        attempts: u32_col(r, 4)?,
        created_at: from_millis(r.get(5))?,
        next_attempt_at: from_millis(r.get(6))?,
        last_status: status(r, 7)?,
        last_error: r.get(8),
        finished_at: opt_ts(r.get(9))?,
    })
}

/// Whether any endpoint exists (skips building events nobody receives).
pub(super) fn any_endpoint(tx: &mut Transaction) -> StoreResult<bool> {
    Ok(tx
        .query_opt("SELECT 1 FROM webhook_endpoints LIMIT 1", &[])?
        .is_some())
}

/// Stores `event` in the outbox with one delivery per endpoint subscribed to its type,
/// inside the caller's transaction.
pub(super) fn enqueue(tx: &mut Transaction, event: &WebhookEvent) -> StoreResult<()> {
    let kind = event.kind.as_str();
    let endpoints: Vec<String> = tx
        .query(
            "SELECT w.id FROM webhook_endpoints w, jsonb_array_elements_text(w.kinds::jsonb) AS k(value) WHERE k.value = $1 ORDER BY w.id",
            &[&kind],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if endpoints.is_empty() {
        return Ok(());
    }
    insert_event(tx, event, &endpoints)?;
    Ok(())
}

fn insert_event(
    tx: &mut Transaction,
    event: &WebhookEvent,
    endpoints: &[String],
) -> StoreResult<Vec<String>> {
    let event_id: i64 = tx
        .query_one(
            "INSERT INTO webhook_events (type, at, body) VALUES ($1, $2, $3) RETURNING id",
            &[&event.kind.as_str(), &ms(event.timestamp), &event.json()],
        )?
        .get(0);
    let st = tx.prepare(
        "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, state, attempts, created_at, next_attempt_at) VALUES ($1, $2, $3, 'pending', 0, $4, $4)",
    )?;
    let mut ids = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let id = new_message_id();
        tx.execute(&st, &[&id, endpoint, &event_id, &ms(event.timestamp)])?;
        ids.push(id);
    }
    Ok(ids)
}

pub(super) fn create(s: &PgStore, w: &WebhookRecord, audit: &AuditRecord) -> StoreResult<()> {
    s.write(|tx| {
        let n = tx.execute(
            &format!(
                "INSERT INTO webhook_endpoints ({ENDPOINT_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) ON CONFLICT DO NOTHING"
            ),
            &[
                &w.id,
                &w.url,
                &w.secret,
                &to_json(&w.kinds),
                &w.format,
                &i64::from(w.allow_insecure_http),
                &w.description,
                &ms(w.created_at),
                &w.created_by,
            ],
        )?;
        if n == 0 {
            return Err(StoreError::Conflict(format!("webhook {} already exists", w.id)));
        }
        super::access::insert_audit(tx, audit)
    })
}

pub(super) fn list(s: &PgStore) -> StoreResult<Vec<WebhookRecord>> {
    s.read(|c| {
        let rows = c.query(
            &format!("SELECT {ENDPOINT_COLS} FROM webhook_endpoints ORDER BY created_at, id"),
            &[],
        )?;
        collect(rows, endpoint_record)
    })
}

pub(super) fn get(s: &PgStore, id: &str) -> StoreResult<Option<WebhookRecord>> {
    s.read(|c| {
        c.query_opt(
            &format!("SELECT {ENDPOINT_COLS} FROM webhook_endpoints WHERE id = $1"),
            &[&id],
        )?
        .as_ref()
        .map(endpoint_record)
        .transpose()
    })
}

pub(super) fn delete(s: &PgStore, id: &str, audit: &AuditRecord) -> StoreResult<()> {
    s.write(|tx| {
        let n = tx.execute("DELETE FROM webhook_endpoints WHERE id = $1", &[&id])?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no webhook {id}")));
        }
        prune_events(tx)?;
        super::access::insert_audit(tx, audit)
    })
}

pub(super) fn enqueue_test(
    s: &PgStore,
    id: &str,
    event: &WebhookEvent,
    audit: &AuditRecord,
) -> StoreResult<String> {
    s.write(|tx| {
        if tx
            .query_opt("SELECT 1 FROM webhook_endpoints WHERE id = $1", &[&id])?
            .is_none()
        {
            return Err(StoreError::NotFound(format!("no webhook {id}")));
        }
        let ids = insert_event(tx, event, &[id.to_string()])?;
        super::access::insert_audit(tx, audit)?;
        ids.into_iter()
            .next()
            .ok_or_else(|| StoreError::Task("no delivery stored".into()))
    })
}

pub(super) fn record_site_silences(s: &PgStore, silences: &[SiteSilence]) -> StoreResult<usize> {
    if silences.is_empty() {
        return Ok(0);
    }
    s.write(|tx| {
        let mut new = 0;
        for x in silences {
            let n = tx.execute(
                "INSERT INTO webhook_site_silences (rollout_id, site_id, since) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&x.rollout_id, &x.site_id, &ms(x.since)],
            )?;
            if n == 1 {
                new += 1;
                enqueue(tx, &WebhookEvent::site_silent(x))?;
            }
        }
        Ok(new)
    })
}

pub(super) fn subscribed(s: &PgStore, kind: &str) -> StoreResult<bool> {
    s.read(|c| {
        Ok(c.query_opt(
            "SELECT 1 FROM webhook_endpoints w, jsonb_array_elements_text(w.kinds::jsonb) AS k(value) WHERE k.value = $1 LIMIT 1",
            &[&kind],
        )?
        .is_some())
    })
}

pub(super) fn counts(s: &PgStore) -> StoreResult<BTreeMap<String, DeliveryCounts>> {
    s.read(|c| {
        let rows = c.query(
            "SELECT endpoint_id, state, COUNT(*) FROM webhook_deliveries GROUP BY endpoint_id, state",
            &[],
        )?;
        let mut out: BTreeMap<String, DeliveryCounts> = BTreeMap::new();
        for r in rows {
            let endpoint: String = r.get(0);
            let state: String = r.get(1);
            let n = r.get::<_, i64>(2) as u64;
            let c = out.entry(endpoint).or_default();
            match state.as_str() {
                "pending" => c.pending = n,
                "delivered" => c.delivered = n,
                "failed" => c.failed = n,
                other => {
                    return Err(StoreError::Corrupt(format!("webhook delivery state {other:?}")));
                }
            }
        }
        Ok(out)
    })
}

pub(super) fn due(
    s: &PgStore,
    now: Timestamp,
    busy: &[String],
    limit: usize,
) -> StoreResult<Vec<DueDelivery>> {
    s.read(|c| {
        // The earliest due delivery of each endpoint not busy, the earliest first.
        let sql = format!(
            "SELECT * FROM (
               SELECT DISTINCT ON (d.endpoint_id) {DELIVERY_COLS}, w.url, w.secret, w.format, e.body,
                      d.next_attempt_at AS due
                 FROM webhook_deliveries d
                 JOIN webhook_events e ON e.id = d.event_id
                 JOIN webhook_endpoints w ON w.id = d.endpoint_id
                WHERE d.state = 'pending' AND d.next_attempt_at <= $1
                  AND NOT (d.endpoint_id = ANY($2::text[]))
                ORDER BY d.endpoint_id, d.next_attempt_at, d.seq) AS first
             ORDER BY due, endpoint_id LIMIT $3"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let busy: Vec<&str> = busy.iter().map(String::as_str).collect();
        let rows = c.query(&sql, &[&ms(now), &busy, &limit])?;
        collect(rows, |r| {
            Ok(DueDelivery {
                delivery: delivery_record(r)?,
                url: r.get(10),
                secret: r.get(11),
                format: r.get(12),
                event_body: r.get(13),
            })
        })
    })
}

pub(super) fn record_attempt(
    s: &PgStore,
    a: &AttemptRecord,
    next_attempt_at: Option<Timestamp>,
) -> StoreResult<()> {
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
    let status = a.status.map(i64::from);
    let finished = (state != "pending").then(|| ms(a.at));
    s.write(|tx| {
        let n = tx.execute(
            "UPDATE webhook_deliveries SET state = $2, attempts = $3, next_attempt_at = COALESCE($4, next_attempt_at), last_status = $5, last_error = $6, finished_at = $7 WHERE id = $1 AND state = 'pending'",
            &[
                &a.delivery_id,
                &state,
                &i64::from(a.attempt),
                &next_attempt_at.map(ms),
                &status,
                &a.error,
                &finished,
            ],
        )?;
        if n == 0 {
            return Ok(());
        }
        tx.execute(
            "INSERT INTO webhook_attempts (endpoint_id, delivery_id, event_type, attempt, at, status, error, duration_ms, outcome) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
            &[
                &a.endpoint_id,
                &a.delivery_id,
                &a.event_type,
                &i64::from(a.attempt),
                &ms(a.at),
                &status,
                &a.error,
                &i64::try_from(a.duration_ms).unwrap_or(i64::MAX),
                &a.outcome,
            ],
        )?;
        tx.execute(
            "DELETE FROM webhook_attempts WHERE endpoint_id = $1 AND id <= (SELECT id FROM webhook_attempts WHERE endpoint_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
            &[&a.endpoint_id, &(ATTEMPTS_KEPT as i64)],
        )?;
        if state != "pending" {
            tx.execute(
                "DELETE FROM webhook_deliveries WHERE seq IN (SELECT seq FROM webhook_deliveries WHERE endpoint_id = $1 AND state <> 'pending' ORDER BY finished_at DESC NULLS LAST, seq DESC OFFSET $2)",
                &[&a.endpoint_id, &FINISHED_KEPT],
            )?;
            prune_events(tx)?;
        }
        Ok(())
    })
}

fn prune_events(tx: &mut Transaction) -> StoreResult<()> {
    tx.execute(
        "DELETE FROM webhook_events WHERE NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = webhook_events.id)",
        &[],
    )?;
    Ok(())
}

pub(super) fn attempts(
    s: &PgStore,
    endpoint_id: &str,
    limit: usize,
) -> StoreResult<Vec<AttemptRecord>> {
    s.read(|c| {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = c.query(
            "SELECT id, endpoint_id, delivery_id, event_type, attempt, at, status, error, duration_ms, outcome FROM webhook_attempts WHERE endpoint_id = $1 ORDER BY id DESC LIMIT $2",
            &[&endpoint_id, &limit],
        )?;
        collect(rows, |r| {
            Ok(AttemptRecord {
                id: r.get(0),
                endpoint_id: r.get(1),
                delivery_id: r.get(2),
                event_type: r.get(3),
                attempt: u32_col(r, 4)?,
                at: from_millis(r.get(5))?,
                status: status(r, 6)?,
                error: r.get(7),
                duration_ms: u64::try_from(r.get::<_, i64>(8)).unwrap_or(0),
                outcome: r.get(9),
            })
        })
    })
}

pub(super) fn deliveries(
    s: &PgStore,
    endpoint_id: &str,
    limit: usize,
) -> StoreResult<Vec<DeliveryRecord>> {
    s.read(|c| {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = c.query(
            &format!(
                "SELECT {DELIVERY_COLS} FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id WHERE d.endpoint_id = $1 ORDER BY d.created_at DESC, d.seq DESC LIMIT $2"
            ),
            &[&endpoint_id, &limit],
        )?;
        collect(rows, delivery_record)
    })
}
