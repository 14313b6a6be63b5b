//! Roots, operator and enrollment tokens, enrollment, session nonces and the audit log.

use rusqlite::{OptionalExtension, params};

use super::*;
use crate::store::boxes::EnrollStep;

pub(super) fn ping(s: &SqliteStore) -> StoreResult<()> {
    s.read(|c| {
        Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
            .map(|_| ())?)
    })
}

pub(super) fn roots(s: &SqliteStore) -> StoreResult<Vec<Envelope>> {
    s.read(|c| {
        let mut st = c.prepare("SELECT envelope FROM roots ORDER BY version")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        collect(rows, |t| envelope(&t))
    })
}

pub(super) fn add_root(
    s: &SqliteStore,
    version: u64,
    env: &Envelope,
    at: Timestamp,
) -> StoreResult<()> {
    s.write(|tx| {
        let latest: Option<i64> =
            tx.query_row("SELECT MAX(version) FROM roots", [], |r| r.get(0))?;
        let expected = latest.map_or(1, |v| v + 1);
        if version as i64 != expected {
            return Err(StoreError::Conflict(format!(
                "root version {version} cannot be stored: the next version is {expected}"
            )));
        }
        tx.execute(
            "INSERT INTO roots (version, envelope, added_at) VALUES (?1, ?2, ?3)",
            params![version as i64, to_json(env), ms(at)],
        )?;
        Ok(())
    })
}

pub(super) fn create_operator_token(
    s: &SqliteStore,
    token_hash: &str,
    t: &OperatorTokenRecord,
) -> StoreResult<()> {
    s.write(|tx| {
        tx.execute(
            "INSERT INTO operator_tokens (id, token_hash, name, role, created_at, created_by, revoked) VALUES (?1,?2,?3,?4,?5,?6,0)",
            params![t.id, token_hash, t.name, t.role.as_str(), ms(t.created_at), t.created_by],
        )?;
        Ok(())
    })
}

pub(super) fn operator_token_by_hash(
    s: &SqliteStore,
    token_hash: &str,
) -> StoreResult<Option<OperatorTokenRecord>> {
    s.read(|c| {
        let row = c
            .query_row(
                &format!("SELECT {OP_COLS} FROM operator_tokens WHERE token_hash = ?1"),
                [token_hash],
                op_record,
            )
            .optional()?;
        row.map(op_token).transpose()
    })
}

pub(super) fn list_operator_tokens(s: &SqliteStore) -> StoreResult<Vec<OperatorTokenRecord>> {
    s.read(|c| {
        let mut st = c.prepare(&format!(
            "SELECT {OP_COLS} FROM operator_tokens ORDER BY created_at, id"
        ))?;
        let rows = st.query_map([], op_record)?;
        collect(rows, op_token)
    })
}

pub(super) fn revoke_operator_token(s: &SqliteStore, id: &str) -> StoreResult<()> {
    s.write(|tx| {
        let n = tx.execute("UPDATE operator_tokens SET revoked = 1 WHERE id = ?1", [id])?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no operator token {id}")));
        }
        Ok(())
    })
}

pub(super) fn create_enrollment_token(
    s: &SqliteStore,
    token_hash: &str,
    t: &EnrollmentTokenRecord,
) -> StoreResult<()> {
    s.write(|tx| {
        tx.execute(
            "INSERT INTO enrollment_tokens (id, token_hash, labels, site_id, expires_at, uses_total, uses_left, revoked, created_at, created_by) VALUES (?1,?2,?3,?4,?5,?6,?7,0,?8,?9)",
            params![t.id, token_hash, to_json(&t.labels), t.site_id, ms(t.expires_at), t.uses_total, t.uses_left, ms(t.created_at), t.created_by],
        )?;
        Ok(())
    })
}

pub(super) fn list_enrollment_tokens(s: &SqliteStore) -> StoreResult<Vec<EnrollmentTokenRecord>> {
    s.read(|c| {
        let mut st = c.prepare(&format!(
            "SELECT {ENROLL_COLS} FROM enrollment_tokens ORDER BY created_at, id"
        ))?;
        let rows = st.query_map([], enroll_token)?;
        collect(rows, enroll_record)
    })
}

pub(super) fn revoke_enrollment_token(s: &SqliteStore, id: &str) -> StoreResult<()> {
    s.write(|tx| {
        let n = tx.execute(
            "UPDATE enrollment_tokens SET revoked = 1 WHERE id = ?1",
            [id],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no enrollment token {id}")));
        }
        Ok(())
    })
}

pub(super) fn enrollment_token_by_hash(
    s: &SqliteStore,
    token_hash: &str,
) -> StoreResult<Option<EnrollmentTokenRecord>> {
    s.read(|c| {
        let row = c
            .query_row(
                &format!("SELECT {ENROLL_COLS} FROM enrollment_tokens WHERE token_hash = ?1"),
                [token_hash],
                enroll_token,
            )
            .optional()?;
        row.map(enroll_record).transpose()
    })
}

pub(super) fn enroll(s: &SqliteStore, e: &Enrollment) -> StoreResult<SiteRecord> {
    s.write(|tx| {
        let token = tx
            .query_row(&format!("SELECT {ENROLL_COLS} FROM enrollment_tokens WHERE token_hash = ?1"), [&e.token_hash], enroll_token)
            .optional()?
            .map(enroll_record)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound("enrollment token is not known".into()))?;
        if token.revoked {
            return Err(StoreError::Conflict("enrollment token was revoked".into()));
        }
        if token.expires_at <= e.at {
            return Err(StoreError::Conflict(format!("enrollment token expired at {}", token.expires_at)));
        }
        if token.uses_left == 0 {
            return Err(StoreError::Conflict("enrollment token is used up".into()));
        }
        tx.execute("UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE id = ?1", [&token.id])?;
        let site = get_site(tx, &e.site_id)?;
        let boxes = super::sites::boxes_in(tx, &e.site_id)?;
        match crate::store::boxes::enroll_step(e, &token, site.as_ref(), &boxes)? {
            EnrollStep::NewSite => {
                tx.execute(
                    "INSERT INTO sites (id, device_key, labels, state, agent_version, enrolled_at, box_id, box_role) VALUES (?1,?2,?3,'active',?4,?5,?6,?7)",
                    params![e.site_id, e.device_key, to_json(&token.labels), e.agent_version, ms(e.at), e.box_id, e.role],
                )?;
            }
            EnrollStep::JoinSite => {
                tx.execute(
                    "INSERT INTO site_boxes (site_id, box_id, role, device_key, agent_version, enrolled_at) VALUES (?1,?2,?3,?4,?5,?6)",
                    params![e.site_id, e.box_id, e.role, e.device_key, e.agent_version, ms(e.at)],
                )?;
            }
            EnrollStep::RekeyFirstBox => {
                let mut labels = site.map(|s| s.labels).unwrap_or_default();
                labels.extend(token.labels.clone());
                tx.execute(
                    // A re-keyed box is a new box: what it runs is unknown until its agent says
                    // (an empty state directory says nothing), so convergence sees it.
                    "UPDATE sites SET device_key = ?2, labels = ?3, agent_version = ?4, enrolled_at = ?5, installed = '{}', box_role = ?6 WHERE id = ?1",
                    params![e.site_id, e.device_key, to_json(&labels), e.agent_version, ms(e.at), e.role],
                )?;
            }
            EnrollStep::RekeyBox => {
                tx.execute(
                    "UPDATE site_boxes SET role = ?3, device_key = ?4, agent_version = ?5, enrolled_at = ?6 WHERE site_id = ?1 AND box_id = ?2",
                    params![e.site_id, e.box_id, e.role, e.device_key, e.agent_version, ms(e.at)],
                )?;
            }
        }
        get_site(tx, &e.site_id)?.ok_or_else(|| StoreError::Corrupt("site vanished".into()))
    })
}

pub(super) fn record_session_nonce(
    s: &SqliteStore,
    site_id: &str,
    nonce: &str,
    expires_at: Timestamp,
) -> StoreResult<bool> {
    s.write(|tx| {
        tx.execute(
            "DELETE FROM session_nonces WHERE site_id = ?1 AND expires_at < ?2",
            params![site_id, ms(Timestamp::now())],
        )?;
        let n = tx.execute(
            "INSERT OR IGNORE INTO session_nonces (site_id, nonce, expires_at) VALUES (?1, ?2, ?3)",
            params![site_id, nonce, ms(expires_at)],
        )?;
        Ok(n == 1)
    })
}

pub(super) fn audit(s: &SqliteStore, a: &AuditRecord) -> StoreResult<()> {
    s.write(|tx| insert_audit(tx, a))
}

/// Stores an audit entry inside the caller's transaction, with the webhook event it
/// causes (if any) in the outbox.
pub(super) fn insert_audit(tx: &rusqlite::Transaction, a: &AuditRecord) -> StoreResult<()> {
    tx.prepare_cached(
        "INSERT INTO audit_log (at, actor, action, target, detail, remote) VALUES (?1,?2,?3,?4,?5,?6)",
    )?
    .execute(params![ms(a.at), a.actor, a.action, a.target, a.detail, a.remote])?;
    if let Some(event) = crate::webhooks::WebhookEvent::from_audit(a) {
        super::webhooks::enqueue(tx, &event)?;
    }
    Ok(())
}

pub(super) fn list_audit(
    s: &SqliteStore,
    before: Option<i64>,
    limit: usize,
) -> StoreResult<Vec<AuditRecord>> {
    s.read(|c| {
        let mut st = c.prepare("SELECT id, at, actor, action, target, detail, remote FROM audit_log WHERE id < ?1 ORDER BY id DESC LIMIT ?2")?;
        let rows = st.query_map(params![before.unwrap_or(i64::MAX), limit as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, String>(4)?, r.get::<_, String>(5)?, r.get::<_, String>(6)?))
        })?;
        collect(rows, |(id, at, actor, action, target, detail, remote)| {
            Ok(AuditRecord { id, at: from_millis(at)?, actor, action, target, detail, remote })
        })
    })
}

pub(super) fn audit_of(
    s: &SqliteStore,
    target: &str,
    limit: usize,
) -> StoreResult<Vec<AuditRecord>> {
    s.read(|c| {
        let mut st = c.prepare("SELECT id, at, actor, action, target, detail, remote FROM audit_log WHERE target = ?1 ORDER BY id LIMIT ?2")?;
        let rows = st.query_map(params![target, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, String>(4)?, r.get::<_, String>(5)?, r.get::<_, String>(6)?))
        })?;
        collect(rows, |(id, at, actor, action, target, detail, remote)| {
            Ok(AuditRecord { id, at: from_millis(at)?, actor, action, target, detail, remote })
        })
    })
}
