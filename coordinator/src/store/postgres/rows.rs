//! Row mapping: the columns each table is read with and their conversion into the
//! store's records (the same columns as the SQLite backend's `rows`).

use ::postgres::{GenericClient, Row};

use super::*;

pub(super) const SITE_COLS: &str = "id, device_key, labels, state, agent_version, enrolled_at, last_seen, installed, healthy, health_at, deferred_until";

pub(super) fn site_record(r: &Row) -> StoreResult<SiteRecord> {
    let id: String = r.get(0);
    let state: String = r.get(3);
    let installed: String = r.get(7);
    Ok(SiteRecord {
        labels: json_map(r.get(2))?,
        state: SiteState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("site {id}: state {state}")))?,
        installed: serde_json::from_str(&installed)
            .map_err(|e| StoreError::Corrupt(format!("site {id}: installed: {e}")))?,
        device_key: r.get(1),
        agent_version: r.get(4),
        enrolled_at: from_millis(r.get(5))?,
        last_seen: opt_ts(r.get(6))?,
        healthy: opt_flag(r, 8),
        health_at: opt_ts(r.get(9))?,
        deferred_until: opt_ts(r.get(10))?,
        id,
    })
}

pub(super) fn get_site(c: &mut impl GenericClient, id: &str) -> StoreResult<Option<SiteRecord>> {
    c.query_opt(
        &format!("SELECT {SITE_COLS} FROM sites WHERE id = $1"),
        &[&id],
    )?
    .as_ref()
    .map(site_record)
    .transpose()
}

pub(super) const ENROLL_COLS: &str =
    "id, labels, site_id, expires_at, uses_total, uses_left, revoked, created_at, created_by";

pub(super) fn enroll_record(r: &Row) -> StoreResult<EnrollmentTokenRecord> {
    Ok(EnrollmentTokenRecord {
        id: r.get(0),
        labels: json_map(r.get(1))?,
        site_id: r.get(2),
        expires_at: from_millis(r.get(3))?,
        uses_total: u32_col(r, 4)?,
        uses_left: u32_col(r, 5)?,
        revoked: flag(r, 6),
        created_at: from_millis(r.get(7))?,
        created_by: r.get(8),
    })
}

pub(super) const OP_COLS: &str = "id, name, role, created_at, created_by, revoked";

pub(super) fn op_token(r: &Row) -> StoreResult<OperatorTokenRecord> {
    let id: String = r.get(0);
    let role: String = r.get(2);
    Ok(OperatorTokenRecord {
        role: OperatorRole::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("operator token {id}: role {role}")))?,
        id,
        name: r.get(1),
        created_at: from_millis(r.get(3))?,
        created_by: r.get(4),
        revoked: flag(r, 5),
    })
}

pub(super) const RELEASE_COLS: &str =
    "id, digest, name, version, kind, counter, envelope, published_at, published_by";

pub(super) fn release_record(r: &Row) -> StoreResult<ReleaseRecord> {
    Ok(ReleaseRecord {
        id: r.get(0),
        digest: r.get(1),
        name: r.get(2),
        version: r.get(3),
        kind: r.get(4),
        counter: r.get::<_, i64>(5) as u64,
        envelope: envelope(r.get(6))?,
        published_at: from_millis(r.get(7))?,
        published_by: r.get(8),
    })
}

pub(super) const ROLLOUT_COLS: &str = "id, release_id, plan_source, plan_format, status, status_reason, waves, created_at, created_by, updated_at";

pub(super) fn rollout_record(r: &Row) -> StoreResult<RolloutRecord> {
    let id: String = r.get(0);
    let status: String = r.get(4);
    let waves: String = r.get(6);
    Ok(RolloutRecord {
        status: RolloutStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("rollout {id}: status {status}")))?,
        waves: serde_json::from_str(&waves)
            .map_err(|e| StoreError::Corrupt(format!("rollout {id}: waves: {e}")))?,
        release_id: r.get(1),
        plan_source: r.get(2),
        plan_format: r.get(3),
        status_reason: r.get(5),
        created_at: from_millis(r.get(7))?,
        created_by: r.get(8),
        updated_at: from_millis(r.get(9))?,
        id,
    })
}

pub(super) const RS_COLS: &str = "rs.rollout_id, rs.site_id, rs.wave, skipped, assigned_at, leased_at, phase, phase_at, detail, committed_at, failed_at, failure, rolled_back, last_healthy_at, first_unhealthy_after_commit_at, last_report_at, rollback_sequence, previous_release_id, s.deferred_until, rs.attempts, rs.retry_at, rs.bundle_until";
/// How many columns [`RS_COLS`] names (a query's next column is at this index).
pub(super) const RS_COLS_LEN: usize = 22;

pub(super) fn rs_record(r: &Row) -> StoreResult<RolloutSiteRecord> {
    let ts = |i: usize| -> Option<Timestamp> {
        r.get::<_, Option<i64>>(i)
            .and_then(|v| Timestamp::from_millisecond(v).ok())
    };
    let phase: Option<String> = r.get(6);
    Ok(RolloutSiteRecord {
        rollout_id: r.get(0),
        site_id: r.get(1),
        wave: u32_col(r, 2)?,
        skipped: flag(r, 3),
        assigned_at: ts(4),
        leased_at: ts(5),
        phase: phase.as_deref().and_then(parse_phase),
        phase_at: ts(7),
        detail: r.get(8),
        committed_at: ts(9),
        failed_at: ts(10),
        failure: r.get(11),
        rolled_back: flag(r, 12),
        last_healthy_at: ts(13),
        first_unhealthy_after_commit_at: ts(14),
        last_report_at: ts(15),
        rollback_sequence: r.get::<_, Option<i64>>(16).map(|v| v as u64),
        previous_release_id: r.get(17),
        deferred_until: ts(18),
        attempts: u32_col(r, 19)?,
        retry_at: ts(20),
        bundle_until: ts(21),
    })
}

pub(super) const ASSIGN_COLS: &str = "site_id, sequence, rollout_id, wave, release_id, release_digest, rollback, envelope, issued_at, expires";

pub(super) fn assign_record(r: &Row) -> StoreResult<AssignmentRecord> {
    Ok(AssignmentRecord {
        site_id: r.get(0),
        sequence: r.get::<_, i64>(1) as u64,
        rollout_id: r.get(2),
        wave: u32_col(r, 3)?,
        release_id: r.get(4),
        release_digest: r.get(5),
        rollback: flag(r, 6),
        envelope: envelope(r.get(7))?,
        issued_at: from_millis(r.get(8))?,
        expires: from_millis(r.get(9))?,
    })
}
