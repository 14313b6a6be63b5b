//! Row mapping: the columns each table is read with and their conversion into the
//! store's records.

// Rows are read as plain tuples, then converted with a named function per table.
#![allow(clippy::type_complexity)]

use rusqlite::{Connection, OptionalExtension, Row};

use super::*;

pub(super) fn phase_str(p: Phase) -> &'static str {
    p.as_str()
}

pub(super) const SITE_COLS: &str = "id, device_key, labels, state, agent_version, enrolled_at, last_seen, installed, healthy, health_at, deferred_until";

pub(super) fn site_row(
    r: &Row,
) -> rusqlite::Result<(
    String,
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    String,
    Option<bool>,
    Option<i64>,
    Option<i64>,
)> {
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
        r.get(10)?,
    ))
}

#[allow(clippy::type_complexity)]
pub(super) fn site_record(
    (
        id,
        device_key,
        labels,
        state,
        agent_version,
        enrolled_at,
        last_seen,
        installed,
        healthy,
        health_at,
        deferred_until,
    ): (
        String,
        String,
        String,
        String,
        String,
        i64,
        Option<i64>,
        String,
        Option<bool>,
        Option<i64>,
        Option<i64>,
    ),
) -> StoreResult<SiteRecord> {
    Ok(SiteRecord {
        labels: json_map(&labels)?,
        state: SiteState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("site {id}: state {state}")))?,
        installed: serde_json::from_str(&installed)
            .map_err(|e| StoreError::Corrupt(format!("site {id}: installed: {e}")))?,
        id,
        device_key,
        agent_version,
        enrolled_at: from_millis(enrolled_at)?,
        last_seen: opt_ts(last_seen)?,
        healthy,
        health_at: opt_ts(health_at)?,
        deferred_until: opt_ts(deferred_until)?,
    })
}

pub(super) fn get_site(conn: &Connection, id: &str) -> StoreResult<Option<SiteRecord>> {
    let row = conn
        .query_row(
            &format!("SELECT {SITE_COLS} FROM sites WHERE id = ?1"),
            [id],
            site_row,
        )
        .optional()?;
    row.map(site_record).transpose()
}

pub(super) const ENROLL_COLS: &str =
    "id, labels, site_id, expires_at, uses_total, uses_left, revoked, created_at, created_by";

pub(super) fn enroll_token(
    r: &Row,
) -> rusqlite::Result<(
    String,
    String,
    Option<String>,
    i64,
    u32,
    u32,
    bool,
    i64,
    String,
)> {
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

#[allow(clippy::type_complexity)]
pub(super) fn enroll_record(
    (id, labels, site_id, expires_at, uses_total, uses_left, revoked, created_at, created_by): (
        String,
        String,
        Option<String>,
        i64,
        u32,
        u32,
        bool,
        i64,
        String,
    ),
) -> StoreResult<EnrollmentTokenRecord> {
    Ok(EnrollmentTokenRecord {
        id,
        labels: json_map(&labels)?,
        site_id,
        expires_at: from_millis(expires_at)?,
        uses_total,
        uses_left,
        revoked,
        created_at: from_millis(created_at)?,
        created_by,
    })
}

pub(super) const OP_COLS: &str = "id, name, role, created_at, created_by, revoked";

pub(super) fn op_record(r: &Row) -> rusqlite::Result<(String, String, String, i64, String, bool)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

pub(super) fn op_token(
    (id, name, role, created_at, created_by, revoked): (String, String, String, i64, String, bool),
) -> StoreResult<OperatorTokenRecord> {
    Ok(OperatorTokenRecord {
        role: OperatorRole::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("operator token {id}: role {role}")))?,
        id,
        name,
        created_at: from_millis(created_at)?,
        created_by,
        revoked,
    })
}

pub(super) const RELEASE_COLS: &str =
    "id, digest, name, version, kind, counter, envelope, published_at, published_by";

pub(super) fn release_row(
    r: &Row,
) -> rusqlite::Result<(
    String,
    String,
    String,
    String,
    String,
    i64,
    String,
    i64,
    String,
)> {
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

#[allow(clippy::type_complexity)]
pub(super) fn release_record(
    (id, digest, name, version, kind, counter, env, published_at, published_by): (
        String,
        String,
        String,
        String,
        String,
        i64,
        String,
        i64,
        String,
    ),
) -> StoreResult<ReleaseRecord> {
    Ok(ReleaseRecord {
        id,
        digest,
        name,
        version,
        kind,
        counter: counter as u64,
        envelope: envelope(&env)?,
        published_at: from_millis(published_at)?,
        published_by,
    })
}

pub(super) const ROLLOUT_COLS: &str = "id, release_id, plan_source, plan_format, status, status_reason, waves, created_at, created_by, updated_at";

#[allow(clippy::type_complexity)]
pub(super) fn rollout_row(
    r: &Row,
) -> rusqlite::Result<(
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    i64,
    String,
    i64,
)> {
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

#[allow(clippy::type_complexity)]
pub(super) fn rollout_record(
    (
        id,
        release_id,
        plan_source,
        plan_format,
        status,
        status_reason,
        waves,
        created_at,
        created_by,
        updated_at,
    ): (
        String,
        String,
        String,
        String,
        String,
        Option<String>,
        String,
        i64,
        String,
        i64,
    ),
) -> StoreResult<RolloutRecord> {
    Ok(RolloutRecord {
        status: RolloutStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("rollout {id}: status {status}")))?,
        waves: serde_json::from_str(&waves)
            .map_err(|e| StoreError::Corrupt(format!("rollout {id}: waves: {e}")))?,
        id,
        release_id,
        plan_source,
        plan_format,
        status_reason,
        created_at: from_millis(created_at)?,
        created_by,
        updated_at: from_millis(updated_at)?,
    })
}

pub(super) const RS_COLS: &str = "rs.rollout_id, rs.site_id, rs.wave, skipped, assigned_at, leased_at, phase, phase_at, detail, committed_at, failed_at, failure, rolled_back, last_healthy_at, first_unhealthy_after_commit_at, last_report_at, rollback_sequence, previous_release_id, s.deferred_until, rs.attempts, rs.retry_at, rs.bundle_until";
/// How many columns [`RS_COLS`] names (a query's next column is at this index).
pub(super) const RS_COLS_LEN: usize = 22;

pub(super) fn rs_record(r: &Row) -> rusqlite::Result<RolloutSiteRecord> {
    let ts = |i: usize| -> rusqlite::Result<Option<Timestamp>> {
        let v: Option<i64> = r.get(i)?;
        Ok(v.and_then(|v| Timestamp::from_millisecond(v).ok()))
    };
    let phase: Option<String> = r.get(6)?;
    Ok(RolloutSiteRecord {
        rollout_id: r.get(0)?,
        site_id: r.get(1)?,
        wave: r.get(2)?,
        skipped: r.get(3)?,
        assigned_at: ts(4)?,
        leased_at: ts(5)?,
        phase: phase.as_deref().and_then(parse_phase),
        phase_at: ts(7)?,
        detail: r.get(8)?,
        committed_at: ts(9)?,
        failed_at: ts(10)?,
        failure: r.get(11)?,
        rolled_back: r.get(12)?,
        last_healthy_at: ts(13)?,
        first_unhealthy_after_commit_at: ts(14)?,
        last_report_at: ts(15)?,
        rollback_sequence: r.get::<_, Option<i64>>(16)?.map(|v| v as u64),
        previous_release_id: r.get(17)?,
        deferred_until: ts(18)?,
        attempts: r.get(19)?,
        retry_at: ts(20)?,
        bundle_until: ts(21)?,
    })
}

pub(super) const ASSIGN_COLS: &str = "site_id, sequence, rollout_id, wave, release_id, release_digest, rollback, envelope, issued_at, expires";

#[allow(clippy::type_complexity)]
pub(super) fn assign_row(
    r: &Row,
) -> rusqlite::Result<(
    String,
    i64,
    String,
    u32,
    String,
    String,
    bool,
    String,
    i64,
    i64,
)> {
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

#[allow(clippy::type_complexity)]
pub(super) fn assign_record(
    (
        site_id,
        sequence,
        rollout_id,
        wave,
        release_id,
        release_digest,
        rollback,
        env,
        issued_at,
        expires,
    ): (
        String,
        i64,
        String,
        u32,
        String,
        String,
        bool,
        String,
        i64,
        i64,
    ),
) -> StoreResult<AssignmentRecord> {
    Ok(AssignmentRecord {
        site_id,
        sequence: sequence as u64,
        rollout_id,
        wave,
        release_id,
        release_digest,
        rollback,
        envelope: envelope(&env)?,
        issued_at: from_millis(issued_at)?,
        expires: from_millis(expires)?,
    })
}
