//! Roots, operator and enrollment tokens, enrollment, session nonces and the audit log.

use super::*;
use crate::store::boxes::EnrollStep;

pub(super) fn ping(s: &PgStore) -> StoreResult<()> {
    s.read(|c| {
        c.query_one("SELECT 1", &[])?;
        Ok(())
    })
}

pub(super) fn roots(s: &PgStore) -> StoreResult<Vec<Envelope>> {
    s.read(|c| {
        let rows = c.query("SELECT envelope FROM roots ORDER BY version", &[])?;
        collect(rows, |r| envelope(r.get(0)))
    })
}

pub(super) fn add_root(
    s: &PgStore,
    version: u64,
    env: &Envelope,
    at: Timestamp,
) -> StoreResult<()> {
    s.write(|tx| {
        let latest: Option<i64> = tx.query_one("SELECT MAX(version) FROM roots", &[])?.get(0);
        let expected = latest.map_or(1, |v| v + 1);
        if version as i64 != expected {
            return Err(StoreError::Conflict(format!(
                "root version {version} cannot be stored: the next version is {expected}"
            )));
        }
        tx.execute(
            "INSERT INTO roots (version, envelope, added_at) VALUES ($1, $2, $3)",
            &[&(version as i64), &to_json(env), &ms(at)],
        )?;
        Ok(())
    })
}

pub(super) fn create_operator_token(
    s: &PgStore,
    token_hash: &str,
    t: &OperatorTokenRecord,
) -> StoreResult<()> {
    s.write(|tx| {
        tx.execute(
            "INSERT INTO operator_tokens (id, token_hash, name, role, created_at, created_by, revoked) VALUES ($1,$2,$3,$4,$5,$6,0)",
            &[&t.id, &token_hash, &t.name, &t.role.as_str(), &ms(t.created_at), &t.created_by],
        )?;
        Ok(())
    })
}

pub(super) fn operator_token_by_hash(
    s: &PgStore,
    token_hash: &str,
) -> StoreResult<Option<OperatorTokenRecord>> {
    s.read(|c| {
        c.query_opt(
            &format!("SELECT {OP_COLS} FROM operator_tokens WHERE token_hash = $1"),
            &[&token_hash],
        )?
        .as_ref()
        .map(op_token)
        .transpose()
    })
}

pub(super) fn list_operator_tokens(s: &PgStore) -> StoreResult<Vec<OperatorTokenRecord>> {
    s.read(|c| {
        let rows = c.query(
            &format!("SELECT {OP_COLS} FROM operator_tokens ORDER BY created_at, id"),
            &[],
        )?;
        collect(rows, op_token)
    })
}

pub(super) fn revoke_operator_token(s: &PgStore, id: &str) -> StoreResult<()> {
    s.write(|tx| {
        let n = tx.execute(
            "UPDATE operator_tokens SET revoked = 1 WHERE id = $1",
            &[&id],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no operator token {id}")));
        }
        Ok(())
    })
}

pub(super) fn create_enrollment_token(
    s: &PgStore,
    token_hash: &str,
    t: &EnrollmentTokenRecord,
) -> StoreResult<()> {
    s.write(|tx| insert_enrollment_token(tx, token_hash, t))
}

pub(super) fn insert_enrollment_token(
    tx: &mut Transaction,
    token_hash: &str,
    t: &EnrollmentTokenRecord,
) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO enrollment_tokens (id, token_hash, labels, site_id, expires_at, uses_total, uses_left, revoked, created_at, created_by) VALUES ($1,$2,$3,$4,$5,$6,$7,0,$8,$9)",
        &[
            &t.id,
            &token_hash,
            &to_json(&t.labels),
            &t.site_id,
            &ms(t.expires_at),
            &i64::from(t.uses_total),
            &i64::from(t.uses_left),
            &ms(t.created_at),
            &t.created_by,
        ],
    )?;
    Ok(())
}

pub(super) fn list_enrollment_tokens(s: &PgStore) -> StoreResult<Vec<EnrollmentTokenRecord>> {
    s.read(|c| {
        let rows = c.query(
            &format!("SELECT {ENROLL_COLS} FROM enrollment_tokens ORDER BY created_at, id"),
            &[],
        )?;
        collect(rows, enroll_record)
    })
}

pub(super) fn revoke_enrollment_token(s: &PgStore, id: &str) -> StoreResult<()> {
    s.write(|tx| {
        let n = tx.execute(
            "UPDATE enrollment_tokens SET revoked = 1 WHERE id = $1",
            &[&id],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no enrollment token {id}")));
        }
        Ok(())
    })
}

pub(super) fn enrollment_token_by_hash(
    s: &PgStore,
    token_hash: &str,
) -> StoreResult<Option<EnrollmentTokenRecord>> {
    s.read(|c| {
        c.query_opt(
            &format!("SELECT {ENROLL_COLS} FROM enrollment_tokens WHERE token_hash = $1"),
            &[&token_hash],
        )?
        .as_ref()
        .map(enroll_record)
        .transpose()
    })
}

pub(super) fn enroll(s: &PgStore, e: &Enrollment) -> StoreResult<SiteRecord> {
    // READ COMMITTED, with row locks: every site of a fleet enrolling with one shared token
    // updates that token's row, and under SERIALIZABLE each commit failed every other
    // enrollment in flight ("could not serialize access due to concurrent update": 52 of
    // 600 sites enrolling 64 at a time over two replicas ran out of attempts). Here the
    // token's row lock makes them take turns, each reading the uses the one before left;
    // the site's row lock makes two boxes of one site take turns; two enrollments of a new
    // site both inserting it conflict on its primary key, and the one that lost runs again
    // and sees the site.
    s.write_committed(|tx| {
        let token = tx
            .query_opt(
                &format!("SELECT {ENROLL_COLS} FROM enrollment_tokens WHERE token_hash = $1 FOR UPDATE"),
                &[&e.token_hash],
            )?
            .as_ref()
            .map(enroll_record)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound("enrollment token is not known".into()))?;
        if token.revoked {
            return Err(StoreError::Conflict("enrollment token was revoked".into()));
        }
        if token.expires_at <= e.at {
            return Err(StoreError::Conflict(format!(
                "enrollment token expired at {}",
                token.expires_at
            )));
        }
        if token.uses_left == 0 {
            return Err(StoreError::Conflict("enrollment token is used up".into()));
        }
        tx.execute(
            "UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE id = $1",
            &[&token.id],
        )?;
        // Locks the site's row: two boxes of one site enrolling at once take turns.
        let site = get_site_for_update(tx, &e.site_id)?;
        let boxes = super::sites::boxes_in(tx, &e.site_id)?;
        match crate::store::boxes::enroll_step(e, &token, site.as_ref(), &boxes)? {
            EnrollStep::NewSite => {
                tx.execute(
                    "INSERT INTO sites (id, device_key, labels, state, agent_version, enrolled_at, box_id, box_role) VALUES ($1,$2,$3,'active',$4,$5,$6,$7)",
                    &[&e.site_id, &e.device_key, &to_json(&token.labels), &e.agent_version, &ms(e.at), &e.box_id, &e.role],
                )?;
            }
            EnrollStep::JoinSite => {
                tx.execute(
                    "INSERT INTO site_boxes (site_id, box_id, role, device_key, agent_version, enrolled_at) VALUES ($1,$2,$3,$4,$5,$6)",
                    &[&e.site_id, &e.box_id, &e.role, &e.device_key, &e.agent_version, &ms(e.at)],
                )?;
            }
            EnrollStep::RekeyFirstBox => {
                let mut labels = site.map(|s| s.labels).unwrap_or_default();
                labels.extend(token.labels.clone());
                // A re-keyed box is a new box: what it runs is unknown until its agent says.
                tx.execute(
                    "UPDATE sites SET device_key = $2, labels = $3, agent_version = $4, enrolled_at = $5, installed = '{}', box_role = $6 WHERE id = $1",
                    &[&e.site_id, &e.device_key, &to_json(&labels), &e.agent_version, &ms(e.at), &e.role],
                )?;
            }
            EnrollStep::RekeyBox => {
                tx.execute(
                    "UPDATE site_boxes SET role = $3, device_key = $4, agent_version = $5, enrolled_at = $6 WHERE site_id = $1 AND box_id = $2",
                    &[&e.site_id, &e.box_id, &e.role, &e.device_key, &e.agent_version, &ms(e.at)],
                )?;
            }
        }
        get_site(tx, &e.site_id)?.ok_or_else(|| StoreError::Corrupt("site vanished".into()))
    })
}

fn get_site_for_update(tx: &mut Transaction, id: &str) -> StoreResult<Option<SiteRecord>> {
    tx.query_opt(
        &format!("SELECT {SITE_COLS} FROM sites WHERE id = $1 FOR UPDATE"),
        &[&id],
    )?
    .as_ref()
    .map(site_record)
    .transpose()
}

pub(super) fn record_session_nonce(
    s: &PgStore,
    site_id: &str,
    nonce: &str,
    expires_at: Timestamp,
) -> StoreResult<bool> {
    // READ COMMITTED: the primary key (site, nonce) alone refuses a replayed nonce, and
    // pruning the site's expired nonces needs no snapshot (see the module's docs).
    s.write_committed(|tx| {
        tx.execute(
            "DELETE FROM session_nonces WHERE site_id = $1 AND expires_at < $2",
            &[&site_id, &ms(Timestamp::now())],
        )?;
        let n = tx.execute(
            "INSERT INTO session_nonces (site_id, nonce, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&site_id, &nonce, &ms(expires_at)],
        )?;
        Ok(n == 1)
    })
}

pub(super) fn audit(s: &PgStore, a: &AuditRecord) -> StoreResult<()> {
    s.write(|tx| insert_audit(tx, a))
}

/// Stores an audit entry inside the caller's transaction, with the webhook event it
/// causes (if any) in the outbox.
pub(super) fn insert_audit(tx: &mut Transaction, a: &AuditRecord) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO audit_log (at, actor, action, target, detail, remote) VALUES ($1,$2,$3,$4,$5,$6)",
        &[&ms(a.at), &a.actor, &a.action, &a.target, &a.detail, &a.remote],
    )?;
    if let Some(event) = crate::webhooks::WebhookEvent::from_audit(a) {
        super::webhooks::enqueue(tx, &event)?;
    }
    Ok(())
}

fn audit_record(r: &Row) -> StoreResult<AuditRecord> {
    Ok(AuditRecord {
        id: r.get(0),
        at: from_millis(r.get(1))?,
        actor: r.get(2),
        action: r.get(3),
        target: r.get(4),
        detail: r.get(5),
        remote: r.get(6),
    })
}

pub(super) fn list_audit(
    s: &PgStore,
    before: Option<i64>,
    limit: usize,
) -> StoreResult<Vec<AuditRecord>> {
    s.read(|c| {
        let rows = c.query(
            "SELECT id, at, actor, action, target, detail, remote FROM audit_log WHERE id < $1 ORDER BY id DESC LIMIT $2",
            &[&before.unwrap_or(i64::MAX), &(limit.min(i64::MAX as usize) as i64)],
        )?;
        collect(rows, audit_record)
    })
}

pub(super) fn audit_of(s: &PgStore, target: &str, limit: usize) -> StoreResult<Vec<AuditRecord>> {
    s.read(|c| {
        let rows = c.query(
            "SELECT id, at, actor, action, target, detail, remote FROM audit_log WHERE target = $1 ORDER BY id LIMIT $2",
            &[&target, &(limit.min(i64::MAX as usize) as i64)],
        )?;
        collect(rows, audit_record)
    })
}
