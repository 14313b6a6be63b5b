//! The SQLite implementation of [`Store`]: one file in WAL mode, one writer connection
//! behind a mutex, a few read-only connections for queries.
//!
//! Every write is one transaction committed with `synchronous=FULL` before the method
//! returns. It must never be called from an async worker thread directly: go through
//! [`super::Db`].

// Rows are read as plain tuples, then converted with a named function per table.
#![allow(clippy::type_complexity)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleetwave_shared::Envelope;
use fleetwave_shared::protocol::operator::{OperatorRole, RolloutStatus, SiteState};
use fleetwave_shared::protocol::{Event, EventBody, Phase};
use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use rusqlite_migration::{M, Migrations};

use super::*;

const READERS: usize = 4;
/// The writer connection's page cache in KiB (SQLite's default is 2,000 KiB per
/// connection; readers keep it).
const WRITER_CACHE_KIB: i64 = 64 * 1024;
/// A site's (?1) first unhealthy heartbeat at or after ?2: what a commit looks for. It
/// must stay answerable from the partial index `reports_unhealthy` (schema v3).
pub const FIRST_UNHEALTHY_SQL: &str = "SELECT MIN(at) FROM reports WHERE site_id = ?1 AND kind = 'health' AND at >= ?2 AND json_extract(body, '$.healthy') = 0";
/// Deletes at most ?3 reports of kind ?1 received before ?2, oldest first, through the
/// index `reports_by_kind_received` (schema v3).
pub const PRUNE_REPORTS_SQL: &str = "DELETE FROM reports WHERE rowid IN (SELECT rowid FROM reports WHERE kind = ?1 AND received_at < ?2 ORDER BY received_at LIMIT ?3)";
/// Every kind of stored report (`reports.kind`), as [`event_kind`] names them.
pub const REPORT_KINDS: [&str; 5] = ["phase", "health", "deferral", "installed", "refusal"];

/// The migrations, in order. Never edit a released one: add the next.
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("schema.sql")),
        M::up(include_str!("schema_v2.sql")),
        M::up(include_str!("schema_v3.sql")),
    ])
}

pub struct SqliteStore {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    // Room for every statement of the report and assignment paths (rusqlite's default 16
    // would evict them in turn and prepare each statement again).
    conn.set_prepared_statement_cache_capacity(64);
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs pending migrations.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Migration(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let mut writer = Connection::open(path)?;
        let mode: String =
            writer.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Migration(format!(
                "{} does not support WAL mode (got {mode})",
                path.display()
            )));
        }
        configure(&writer)?;
        // The writer's page cache: the pages a wave's reports touch again and again
        // (indexes of reports and rollout sites) stay in memory instead of being read
        // through the kernel for every statement. Filled only as pages are used.
        writer.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
        migrations()
            .to_latest(&mut writer)
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            configure(&conn)?;
            readers.push(Mutex::new(conn));
        }
        Ok(SqliteStore {
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        let conn = self.readers[i].lock().unwrap_or_else(|e| e.into_inner());
        f(&conn)
    }

    fn write<T>(&self, f: impl FnOnce(&rusqlite::Transaction) -> StoreResult<T>) -> StoreResult<T> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

fn insert_decisions(tx: &rusqlite::Transaction, decisions: &[DecisionRecord]) -> StoreResult<()> {
    let mut st = tx.prepare_cached(
        "INSERT INTO decisions (rollout_id, at, kind, wave, reason) VALUES (?1,?2,?3,?4,?5)",
    )?;
    for d in decisions {
        st.execute(params![d.rollout_id, ms(d.at), d.kind, d.wave, d.reason])?;
    }
    Ok(())
}

fn ms(t: Timestamp) -> i64 {
    to_millis(t)
}

fn opt_ts(v: Option<i64>) -> StoreResult<Option<Timestamp>> {
    v.map(from_millis).transpose()
}

fn json_map(text: &str) -> StoreResult<BTreeMap<String, String>> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("labels: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serializes")
}

fn envelope(text: &str) -> StoreResult<Envelope> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("envelope: {e}")))
}

fn phase_str(p: Phase) -> &'static str {
    p.as_str()
}

fn parse_phase(s: &str) -> Option<Phase> {
    Some(match s {
        "accepted" => Phase::Accepted,
        "waiting" => Phase::Waiting,
        "leased" => Phase::Leased,
        "downloading" => Phase::Downloading,
        "installing" => Phase::Installing,
        "verifying" => Phase::Verifying,
        "committed" => Phase::Committed,
        "failed" => Phase::Failed,
        "rolled_back" => Phase::RolledBack,
        "rollback_failed" => Phase::RollbackFailed,
        _ => return None,
    })
}

const SITE_COLS: &str = "id, device_key, labels, state, agent_version, enrolled_at, last_seen, installed, healthy, health_at, deferred_until";

fn site_row(
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
fn site_record(
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

fn get_site(conn: &Connection, id: &str) -> StoreResult<Option<SiteRecord>> {
    let row = conn
        .query_row(
            &format!("SELECT {SITE_COLS} FROM sites WHERE id = ?1"),
            [id],
            site_row,
        )
        .optional()?;
    row.map(site_record).transpose()
}

const ENROLL_COLS: &str =
    "id, labels, site_id, expires_at, uses_total, uses_left, revoked, created_at, created_by";

fn enroll_token(
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
fn enroll_record(
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

const OP_COLS: &str = "id, name, role, created_at, created_by, revoked";

fn op_record(r: &Row) -> rusqlite::Result<(String, String, String, i64, String, bool)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn op_token(
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

const RELEASE_COLS: &str =
    "id, digest, name, version, kind, counter, envelope, published_at, published_by";

fn release_row(
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
fn release_record(
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

const ROLLOUT_COLS: &str = "id, release_id, plan_source, plan_format, status, status_reason, waves, created_at, created_by, updated_at";

#[allow(clippy::type_complexity)]
fn rollout_row(
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
fn rollout_record(
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

const RS_COLS: &str = "rs.rollout_id, rs.site_id, rs.wave, skipped, assigned_at, leased_at, phase, phase_at, detail, committed_at, failed_at, failure, rolled_back, last_healthy_at, first_unhealthy_after_commit_at, last_report_at, rollback_sequence, previous_release_id, s.deferred_until";

fn rs_record(r: &Row) -> rusqlite::Result<RolloutSiteRecord> {
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
    })
}

const ASSIGN_COLS: &str = "site_id, sequence, rollout_id, wave, release_id, release_digest, rollback, envelope, issued_at, expires";

#[allow(clippy::type_complexity)]
fn assign_row(
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
fn assign_record(
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

fn collect<T, R>(
    rows: impl Iterator<Item = rusqlite::Result<R>>,
    f: impl Fn(R) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let mut out = Vec::new();
    for row in rows {
        out.push(f(row?)?);
    }
    Ok(out)
}

impl Store for SqliteStore {
    fn ping(&self) -> StoreResult<()> {
        self.read(|c| {
            Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map(|_| ())?)
        })
    }

    fn roots(&self) -> StoreResult<Vec<Envelope>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT envelope FROM roots ORDER BY version")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            collect(rows, |t| envelope(&t))
        })
    }

    fn add_root(&self, version: u64, env: &Envelope, at: Timestamp) -> StoreResult<()> {
        self.write(|tx| {
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

    fn create_operator_token(&self, token_hash: &str, t: &OperatorTokenRecord) -> StoreResult<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO operator_tokens (id, token_hash, name, role, created_at, created_by, revoked) VALUES (?1,?2,?3,?4,?5,?6,0)",
                params![t.id, token_hash, t.name, t.role.as_str(), ms(t.created_at), t.created_by],
            )?;
            Ok(())
        })
    }

    fn operator_token_by_hash(&self, token_hash: &str) -> StoreResult<Option<OperatorTokenRecord>> {
        self.read(|c| {
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

    fn list_operator_tokens(&self) -> StoreResult<Vec<OperatorTokenRecord>> {
        self.read(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {OP_COLS} FROM operator_tokens ORDER BY created_at, id"
            ))?;
            let rows = st.query_map([], op_record)?;
            collect(rows, op_token)
        })
    }

    fn revoke_operator_token(&self, id: &str) -> StoreResult<()> {
        self.write(|tx| {
            let n = tx.execute("UPDATE operator_tokens SET revoked = 1 WHERE id = ?1", [id])?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no operator token {id}")));
            }
            Ok(())
        })
    }

    fn create_enrollment_token(
        &self,
        token_hash: &str,
        t: &EnrollmentTokenRecord,
    ) -> StoreResult<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO enrollment_tokens (id, token_hash, labels, site_id, expires_at, uses_total, uses_left, revoked, created_at, created_by) VALUES (?1,?2,?3,?4,?5,?6,?7,0,?8,?9)",
                params![t.id, token_hash, to_json(&t.labels), t.site_id, ms(t.expires_at), t.uses_total, t.uses_left, ms(t.created_at), t.created_by],
            )?;
            Ok(())
        })
    }

    fn list_enrollment_tokens(&self) -> StoreResult<Vec<EnrollmentTokenRecord>> {
        self.read(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {ENROLL_COLS} FROM enrollment_tokens ORDER BY created_at, id"
            ))?;
            let rows = st.query_map([], enroll_token)?;
            collect(rows, enroll_record)
        })
    }

    fn revoke_enrollment_token(&self, id: &str) -> StoreResult<()> {
        self.write(|tx| {
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

    fn enrollment_token_by_hash(
        &self,
        token_hash: &str,
    ) -> StoreResult<Option<EnrollmentTokenRecord>> {
        self.read(|c| {
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

    fn enroll(&self, e: &Enrollment) -> StoreResult<SiteRecord> {
        self.write(|tx| {
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
            match get_site(tx, &e.site_id)? {
                Some(site) if site.state == SiteState::Decommissioned => Err(StoreError::Conflict(format!(
                    "site {} is decommissioned; an operator must re-enable it first",
                    e.site_id
                ))),
                Some(site)
                    if token.site_id.as_deref() != Some(e.site_id.as_str())
                        || token.created_at < site.enrolled_at =>
                {
                    Err(StoreError::SiteExists(e.site_id.clone()))
                }
                Some(mut site) => {
                    site.labels.extend(token.labels.clone());
                    tx.execute(
                        "UPDATE sites SET device_key = ?2, labels = ?3, agent_version = ?4, enrolled_at = ?5 WHERE id = ?1",
                        params![e.site_id, e.device_key, to_json(&site.labels), e.agent_version, ms(e.at)],
                    )?;
                    get_site(tx, &e.site_id)?.ok_or_else(|| StoreError::Corrupt("site vanished".into()))
                }
                None => {
                    tx.execute(
                        "INSERT INTO sites (id, device_key, labels, state, agent_version, enrolled_at) VALUES (?1,?2,?3,'active',?4,?5)",
                        params![e.site_id, e.device_key, to_json(&token.labels), e.agent_version, ms(e.at)],
                    )?;
                    get_site(tx, &e.site_id)?.ok_or_else(|| StoreError::Corrupt("site vanished".into()))
                }
            }
        })
    }

    fn record_session_nonce(
        &self,
        site_id: &str,
        nonce: &str,
        expires_at: Timestamp,
    ) -> StoreResult<bool> {
        self.write(|tx| {
            tx.execute("DELETE FROM session_nonces WHERE site_id = ?1 AND expires_at < ?2", params![site_id, ms(Timestamp::now())])?;
            let n = tx.execute(
                "INSERT OR IGNORE INTO session_nonces (site_id, nonce, expires_at) VALUES (?1, ?2, ?3)",
                params![site_id, nonce, ms(expires_at)],
            )?;
            Ok(n == 1)
        })
    }

    fn site(&self, id: &str) -> StoreResult<Option<SiteRecord>> {
        self.read(|c| get_site(c, id))
    }

    fn list_sites(&self, f: &SiteFilter) -> StoreResult<Vec<SiteRecord>> {
        self.read(|c| {
            let mut sql = format!("SELECT {SITE_COLS} FROM sites WHERE id > ?1");
            let mut args: Vec<String> = vec![f.after.clone().unwrap_or_default()];
            if let Some(state) = f.state {
                args.push(state.as_str().to_string());
                sql.push_str(&format!(" AND state = ?{}", args.len()));
            }
            for (k, v) in &f.labels {
                args.push(format!("$.\"{}\"", k.replace('"', "")));
                let kp = args.len();
                args.push(v.clone());
                sql.push_str(&format!(" AND json_extract(labels, ?{kp}) = ?{}", args.len()));
            }
            if let Some(version) = &f.version {
                args.push(version.clone());
                sql.push_str(&format!(
                    " AND EXISTS (SELECT 1 FROM json_each(sites.installed) WHERE json_extract(value, '$.version') = ?{})",
                    args.len()
                ));
            }
            sql.push_str(&format!(" ORDER BY id LIMIT {}", f.limit.max(1)));
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map(rusqlite::params_from_iter(args.iter()), site_row)?;
            collect(rows, site_record)
        })
    }

    fn set_site_labels(&self, id: &str, labels: &BTreeMap<String, String>) -> StoreResult<()> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE sites SET labels = ?2 WHERE id = ?1",
                params![id, to_json(labels)],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no site {id}")));
            }
            Ok(())
        })
    }

    fn set_site_state(&self, id: &str, state: SiteState) -> StoreResult<()> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE sites SET state = ?2 WHERE id = ?1",
                params![id, state.as_str()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no site {id}")));
            }
            Ok(())
        })
    }

    fn touch_sites(&self, seen: &[(String, Timestamp)]) -> StoreResult<()> {
        if seen.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            let mut st = tx.prepare_cached(
                "UPDATE sites SET last_seen = MAX(COALESCE(last_seen, 0), ?2) WHERE id = ?1",
            )?;
            for (id, at) in seen {
                st.execute(params![id, ms(*at)])?;
            }
            Ok(())
        })
    }

    fn count_sites_by_state(&self) -> StoreResult<Vec<(SiteState, u64)>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT state, COUNT(*) FROM sites GROUP BY state")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            collect(rows, |(s, n)| {
                Ok((
                    SiteState::parse(&s)
                        .ok_or_else(|| StoreError::Corrupt(format!("site state {s}")))?,
                    n as u64,
                ))
            })
        })
    }

    fn count_sites_rollback_failed(&self) -> StoreResult<u64> {
        // Only rows in `rollback_failed` are candidates (few); a newer phase of the same
        // site in another rollout means it moved on.
        self.read(|c| {
            let n: i64 = c.query_row(
                "SELECT COUNT(DISTINCT rs.site_id) FROM rollout_sites rs WHERE rs.phase = 'rollback_failed'
                   AND NOT EXISTS (SELECT 1 FROM rollout_sites later
                                   WHERE later.site_id = rs.site_id AND later.phase_at > rs.phase_at)",
                [],
                |r| r.get(0),
            )?;
            Ok(n as u64)
        })
    }

    fn publish_release(&self, r: &ReleaseRecord) -> StoreResult<()> {
        self.write(|tx| {
            if tx.query_row("SELECT 1 FROM releases WHERE id = ?1", [&r.id], |_| Ok(())).optional()?.is_some() {
                return Err(StoreError::Conflict(format!("release {} is already published", r.id)));
            }
            let highest: Option<i64> = tx.query_row("SELECT MAX(counter) FROM releases WHERE name = ?1", [&r.name], |row| row.get(0))?;
            if let Some(h) = highest
                && r.counter as i64 <= h
            {
                return Err(StoreError::Conflict(format!(
                    "release {} has counter {}, but stream {:?} already has counter {h}: counters must go up",
                    r.id, r.counter, r.name
                )));
            }
            tx.execute(
                &format!("INSERT INTO releases ({RELEASE_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)"),
                params![r.id, r.digest, r.name, r.version, r.kind, r.counter as i64, to_json(&r.envelope), ms(r.published_at), r.published_by],
            )?;
            Ok(())
        })
    }

    fn release(&self, id: &str) -> StoreResult<Option<ReleaseRecord>> {
        self.read(|c| {
            let row = c
                .query_row(
                    &format!("SELECT {RELEASE_COLS} FROM releases WHERE id = ?1"),
                    [id],
                    release_row,
                )
                .optional()?;
            row.map(release_record).transpose()
        })
    }

    fn list_releases(&self) -> StoreResult<Vec<ReleaseRecord>> {
        self.read(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {RELEASE_COLS} FROM releases ORDER BY published_at, id"
            ))?;
            let rows = st.query_map([], release_row)?;
            collect(rows, release_record)
        })
    }

    fn add_artifact(&self, a: &ArtifactRecord) -> StoreResult<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT OR IGNORE INTO artifacts (sha256, length, uploaded_at, uploaded_by) VALUES (?1,?2,?3,?4)",
                params![a.sha256, a.length as i64, ms(a.uploaded_at), a.uploaded_by],
            )?;
            Ok(())
        })
    }

    fn artifact(&self, sha256: &str) -> StoreResult<Option<ArtifactRecord>> {
        self.read(|c| {
            let row = c
                .query_row("SELECT sha256, length, uploaded_at, uploaded_by FROM artifacts WHERE sha256 = ?1", [sha256], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?))
                })
                .optional()?;
            row.map(|(sha256, length, at, by)| {
                Ok(ArtifactRecord { sha256, length: length as u64, uploaded_at: from_millis(at)?, uploaded_by: by })
            })
            .transpose()
        })
    }

    fn create_rollout(&self, ro: &RolloutRecord, members: &[RolloutSiteRecord]) -> StoreResult<()> {
        self.write(|tx| {
            if tx.query_row("SELECT 1 FROM rollouts WHERE id = ?1", [&ro.id], |_| Ok(())).optional()?.is_some() {
                return Err(StoreError::Conflict(format!("rollout {} already exists", ro.id)));
            }
            let mut busy = Vec::new();
            {
                let mut st = tx.prepare_cached("SELECT rollout_id FROM rollout_sites WHERE site_id = ?1 AND active = 1")?;
                for m in members {
                    if let Some(other) = st.query_row([&m.site_id], |r| r.get::<_, String>(0)).optional()? {
                        busy.push(format!("{} (in {other})", m.site_id));
                    }
                }
            }
            if !busy.is_empty() {
                let more = if busy.len() > 10 { format!(" and {} more", busy.len() - 10) } else { String::new() };
                busy.truncate(10);
                return Err(StoreError::Conflict(format!(
                    "sites already belong to an active rollout (one active rollout per site): {}{more}",
                    busy.join(", ")
                )));
            }
            tx.execute(
                &format!("INSERT INTO rollouts ({ROLLOUT_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)"),
                params![ro.id, ro.release_id, ro.plan_source, ro.plan_format, ro.status.as_str(), ro.status_reason, to_json(&ro.waves), ms(ro.created_at), ro.created_by, ms(ro.updated_at)],
            )?;
            insert_members(tx, members)?;
            Ok(())
        })
    }

    fn rollout(&self, id: &str) -> StoreResult<Option<RolloutRecord>> {
        self.read(|c| {
            let row = c
                .query_row(
                    &format!("SELECT {ROLLOUT_COLS} FROM rollouts WHERE id = ?1"),
                    [id],
                    rollout_row,
                )
                .optional()?;
            row.map(rollout_record).transpose()
        })
    }

    fn list_rollouts(&self) -> StoreResult<Vec<RolloutRecord>> {
        self.read(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {ROLLOUT_COLS} FROM rollouts ORDER BY created_at, id"
            ))?;
            let rows = st.query_map([], rollout_row)?;
            collect(rows, rollout_record)
        })
    }

    fn update_rollout(&self, ro: &RolloutRecord, decisions: &[DecisionRecord]) -> StoreResult<()> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE rollouts SET status = ?2, status_reason = ?3, waves = ?4, updated_at = ?5 WHERE id = ?1",
                params![ro.id, ro.status.as_str(), ro.status_reason, to_json(&ro.waves), ms(ro.updated_at)],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no rollout {}", ro.id)));
            }
            if !ro.status.is_active() {
                tx.execute("UPDATE rollout_sites SET active = 0 WHERE rollout_id = ?1", [&ro.id])?;
                tx.execute("DELETE FROM leases WHERE rollout_id = ?1", [&ro.id])?;
            }
            insert_decisions(tx, decisions)
        })
    }

    fn rollout_sites(&self, rollout_id: &str) -> StoreResult<Vec<RolloutSiteRecord>> {
        self.read(|c| {
            let mut st = c.prepare(&format!("SELECT {RS_COLS} FROM rollout_sites rs JOIN sites s ON s.id = rs.site_id WHERE rs.rollout_id = ?1 ORDER BY rs.site_id"))?;
            let rows = st.query_map([rollout_id], rs_record)?;
            collect(rows, Ok)
        })
    }

    fn rollout_site(
        &self,
        rollout_id: &str,
        site_id: &str,
    ) -> StoreResult<Option<RolloutSiteRecord>> {
        self.read(|c| {
            let mut st = c.prepare_cached(&format!("SELECT {RS_COLS} FROM rollout_sites rs JOIN sites s ON s.id = rs.site_id WHERE rs.rollout_id = ?1 AND rs.site_id = ?2"))?;
            Ok(st.query_row([rollout_id, site_id], rs_record).optional()?)
        })
    }

    fn add_rollout_sites(&self, members: &[RolloutSiteRecord]) -> StoreResult<Vec<String>> {
        self.write(|tx| {
            let mut free = Vec::new();
            {
                let mut st = tx.prepare_cached("SELECT 1 FROM rollout_sites WHERE site_id = ?1 AND (active = 1 OR rollout_id = ?2)")?;
                for m in members {
                    if st.query_row(params![m.site_id, m.rollout_id], |_| Ok(())).optional()?.is_none() {
                        free.push(m.clone());
                    }
                }
            }
            insert_members(tx, &free)?;
            Ok(free.into_iter().map(|m| m.site_id).collect())
        })
    }

    fn set_rollout_site_skipped(&self, rollout_id: &str, site_id: &str) -> StoreResult<()> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE rollout_sites SET skipped = 1 WHERE rollout_id = ?1 AND site_id = ?2",
                params![rollout_id, site_id],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!(
                    "site {site_id} is not part of rollout {rollout_id}"
                )));
            }
            tx.execute(
                "DELETE FROM leases WHERE rollout_id = ?1 AND site_id = ?2",
                params![rollout_id, site_id],
            )?;
            Ok(())
        })
    }

    fn set_rollout_site_waves(
        &self,
        rollout_id: &str,
        moves: &[(String, u32)],
    ) -> StoreResult<Vec<String>> {
        self.write(|tx| {
            let mut st = tx.prepare_cached(
                "UPDATE rollout_sites SET wave = ?3 WHERE rollout_id = ?1 AND site_id = ?2 \
                 AND assigned_at IS NULL AND leased_at IS NULL",
            )?;
            let mut moved = Vec::new();
            for (site_id, wave) in moves {
                if st.execute(params![rollout_id, site_id, wave])? > 0 {
                    moved.push(site_id.clone());
                }
            }
            Ok(moved)
        })
    }

    fn active_rollout_of_site(&self, site_id: &str) -> StoreResult<Option<String>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT rollout_id FROM rollout_sites WHERE site_id = ?1 AND active = 1",
                [site_id],
                |r| r.get(0),
            )
            .optional()?)
        })
    }

    fn issue_assignments(
        &self,
        drafts: &[AssignmentDraft],
        sign: &(dyn Fn(&AssignmentDraft, u64) -> Envelope + Sync),
    ) -> StoreResult<Vec<AssignmentRecord>> {
        if drafts.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|tx| {
            let mut out = Vec::with_capacity(drafts.len());
            // Prepared once per batch: a wave may issue thousands of assignments.
            let mut next_sequence = tx.prepare_cached(
                "UPDATE sites SET last_sequence = last_sequence + 1 WHERE id = ?1 RETURNING last_sequence",
            )?;
            let insert_sql =
                format!("INSERT INTO assignments ({ASSIGN_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)");
            let mut insert = tx.prepare_cached(&insert_sql)?;
            let mut mark_rollback = tx.prepare_cached(
                "UPDATE rollout_sites SET rollback_sequence = ?3 WHERE rollout_id = ?1 AND site_id = ?2",
            )?;
            let mut mark_assigned = tx.prepare_cached(
                "UPDATE rollout_sites SET assigned_at = COALESCE(assigned_at, ?3) WHERE rollout_id = ?1 AND site_id = ?2",
            )?;
            for d in drafts {
                let sequence: i64 = next_sequence
                    .query_row([&d.site_id], |r| r.get(0))
                    .optional()?
                    .ok_or_else(|| StoreError::NotFound(format!("no site {}", d.site_id)))?;
                let env = sign(d, sequence as u64);
                insert.execute(
                    params![d.site_id, sequence, d.rollout_id, d.wave, d.release_id, d.release_digest, d.rollback, to_json(&env), ms(d.issued_at), ms(d.expires)],
                )?;
                if d.rollback {
                    mark_rollback.execute(params![d.rollout_id, d.site_id, sequence])?;
                } else {
                    mark_assigned.execute(params![d.rollout_id, d.site_id, ms(d.issued_at)])?;
                }
                out.push(AssignmentRecord {
                    site_id: d.site_id.clone(),
                    sequence: sequence as u64,
                    rollout_id: d.rollout_id.clone(),
                    wave: d.wave,
                    release_id: d.release_id.clone(),
                    release_digest: d.release_digest.clone(),
                    rollback: d.rollback,
                    envelope: env,
                    issued_at: d.issued_at,
                    expires: d.expires,
                });
            }
            Ok(out)
        })
    }

    fn current_assignments(&self) -> StoreResult<Vec<AssignmentRecord>> {
        self.read(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {ASSIGN_COLS} FROM assignments a WHERE sequence = (SELECT MAX(sequence) FROM assignments b WHERE b.site_id = a.site_id)"
            ))?;
            let rows = st.query_map([], assign_row)?;
            collect(rows, assign_record)
        })
    }

    fn active_leases(&self, rollout_id: &str, now: Timestamp) -> StoreResult<Vec<LeaseRecord>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT id, site_id, rollout_id, wave, granted_at, expires_at FROM leases WHERE rollout_id = ?1 AND expires_at > ?2")?;
            let rows = st.query_map(params![rollout_id, ms(now)], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, u32>(3)?, r.get::<_, i64>(4)?, r.get::<_, i64>(5)?))
            })?;
            collect(rows, |(id, site_id, rollout_id, wave, g, e)| {
                Ok(LeaseRecord { id, site_id, rollout_id, wave, granted_at: from_millis(g)?, expires_at: from_millis(e)? })
            })
        })
    }

    fn grant_leases(&self, leases: &[LeaseRecord]) -> StoreResult<Vec<StoreResult<()>>> {
        self.write(|tx| {
            let mut out = Vec::with_capacity(leases.len());
            for l in leases {
                // Each lease under its own savepoint: a failing one is undone alone.
                tx.execute_batch("SAVEPOINT lease_grant")?;
                match grant_lease(tx, l) {
                    Ok(()) => {
                        tx.execute_batch("RELEASE lease_grant")?;
                        out.push(Ok(()));
                    }
                    Err(e) => {
                        tx.execute_batch("ROLLBACK TO lease_grant; RELEASE lease_grant")?;
                        out.push(Err(e));
                    }
                }
            }
            Ok(out)
        })
    }

    fn compartment_counts(
        &self,
        rollout_id: &str,
        label: &str,
        value: &str,
        except_site: &str,
        now: Timestamp,
    ) -> StoreResult<(u32, u32)> {
        self.read(|c| {
            // Sites without the label share the value "": counted as all minus labelled.
            let sites: i64 = if value.is_empty() {
                let all: i64 = c
                    .prepare_cached("SELECT COUNT(*) FROM rollout_sites WHERE rollout_id = ?1")?
                    .query_row([rollout_id], |r| r.get(0))?;
                let labelled: i64 = c
                    .prepare_cached(
                        "SELECT COUNT(*) FROM site_labels sl JOIN rollout_sites rs \
                         ON rs.rollout_id = ?1 AND rs.site_id = sl.site_id \
                         WHERE sl.key = ?2 AND sl.value <> ''",
                    )?
                    .query_row(params![rollout_id, label], |r| r.get(0))?;
                all - labelled
            } else {
                c.prepare_cached(
                    "SELECT COUNT(*) FROM site_labels sl JOIN rollout_sites rs \
                     ON rs.rollout_id = ?1 AND rs.site_id = sl.site_id \
                     WHERE sl.key = ?2 AND sl.value = ?3",
                )?
                .query_row(params![rollout_id, label, value], |r| r.get(0))?
            };
            let active: i64 = c
                .prepare_cached(
                    "SELECT COUNT(*) FROM leases l \
                     LEFT JOIN site_labels sl ON sl.site_id = l.site_id AND sl.key = ?2 \
                     WHERE l.rollout_id = ?1 AND l.expires_at > ?4 AND l.site_id <> ?5 \
                     AND COALESCE(sl.value, '') = ?3",
                )?
                .query_row(
                    params![rollout_id, label, value, ms(now), except_site],
                    |r| r.get(0),
                )?;
            Ok((sites.max(0) as u32, active.max(0) as u32))
        })
    }

    fn apply_report_group(
        &self,
        batches: &[ReportInput],
    ) -> StoreResult<Vec<StoreResult<ReportOutcome>>> {
        self.write(|tx| {
            let mut out = Vec::with_capacity(batches.len());
            for b in batches {
                // Each batch under its own savepoint: a failing one is undone alone.
                tx.execute_batch("SAVEPOINT report_batch")?;
                match apply_batch(tx, &b.site_id, &b.events, b.received_at) {
                    Ok(outcome) => {
                        tx.execute_batch("RELEASE report_batch")?;
                        out.push(Ok(outcome));
                    }
                    Err(e) => {
                        tx.execute_batch("ROLLBACK TO report_batch; RELEASE report_batch")?;
                        out.push(Err(e));
                    }
                }
            }
            Ok(out)
        })
    }

    fn add_decisions(&self, decisions: &[DecisionRecord]) -> StoreResult<()> {
        if decisions.is_empty() {
            return Ok(());
        }
        self.write(|tx| insert_decisions(tx, decisions))
    }

    fn prune_reports(&self, kind: &str, before: Timestamp, limit: usize) -> StoreResult<usize> {
        self.write(|tx| {
            let n = tx.prepare_cached(PRUNE_REPORTS_SQL)?.execute(params![
                kind,
                ms(before),
                limit as i64
            ])?;
            Ok(n)
        })
    }

    fn decisions(&self, rollout_id: &str) -> StoreResult<Vec<DecisionRecord>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT id, rollout_id, at, kind, wave, reason FROM decisions WHERE rollout_id = ?1 ORDER BY id")?;
            let rows = st.query_map([rollout_id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?, r.get::<_, Option<u32>>(4)?, r.get::<_, String>(5)?))
            })?;
            collect(rows, |(id, rollout_id, at, kind, wave, reason)| {
                Ok(DecisionRecord { id, rollout_id, at: from_millis(at)?, kind, wave, reason })
            })
        })
    }

    fn audit(&self, a: &AuditRecord) -> StoreResult<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO audit_log (at, actor, action, target, detail, remote) VALUES (?1,?2,?3,?4,?5,?6)",
                params![ms(a.at), a.actor, a.action, a.target, a.detail, a.remote],
            )?;
            Ok(())
        })
    }

    fn list_audit(&self, before: Option<i64>, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT id, at, actor, action, target, detail, remote FROM audit_log WHERE id < ?1 ORDER BY id DESC LIMIT ?2")?;
            let rows = st.query_map(params![before.unwrap_or(i64::MAX), limit as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, String>(4)?, r.get::<_, String>(5)?, r.get::<_, String>(6)?))
            })?;
            collect(rows, |(id, at, actor, action, target, detail, remote)| {
                Ok(AuditRecord { id, at: from_millis(at)?, actor, action, target, detail, remote })
            })
        })
    }
}

/// One site's batch inside the caller's transaction (see [`Store::apply_reports`]).
fn apply_batch(
    tx: &rusqlite::Transaction,
    site_id: &str,
    events: &[Event],
    received_at: Timestamp,
) -> StoreResult<ReportOutcome> {
    let mut outcome = ReportOutcome::default();
    for event in events {
        let kind = event_kind(&event.body);
        let at = super::event_time(event.at, received_at);
        let n = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO reports (site_id, event_id, at, kind, body, received_at) VALUES (?1,?2,?3,?4,?5,?6)",
            )?
            .execute(params![site_id, event.id, ms(at), kind, to_json(event), ms(received_at)])?;
        if n == 0 {
            outcome.duplicates += 1;
            continue;
        }
        outcome.accepted += 1;
        if let Some(rollout) = apply_event(tx, site_id, event, at)?
            && !outcome.rollouts_touched.contains(&rollout)
        {
            outcome.rollouts_touched.push(rollout);
        }
    }
    let mut read_back = tx.prepare_cached(&format!(
        "SELECT {RS_COLS} FROM rollout_sites rs JOIN sites s ON s.id = rs.site_id WHERE rs.rollout_id = ?1 AND rs.site_id = ?2"
    ))?;
    for rollout in &outcome.rollouts_touched {
        if let Some(row) = read_back
            .query_row(params![rollout, site_id], rs_record)
            .optional()?
        {
            outcome.facts.push(row);
        }
    }
    Ok(outcome)
}

fn insert_members(tx: &rusqlite::Transaction, members: &[RolloutSiteRecord]) -> StoreResult<()> {
    let mut st = tx.prepare_cached(
        "INSERT INTO rollout_sites (rollout_id, site_id, wave, active, skipped, previous_release_id) VALUES (?1,?2,?3,1,0,?4)",
    )?;
    for m in members {
        st.execute(params![
            m.rollout_id,
            m.site_id,
            m.wave,
            m.previous_release_id
        ])?;
    }
    Ok(())
}

/// The `reports.kind` of an event (its `kind` on the wire). A new kind also goes into
/// [`REPORT_KINDS`], or retention never prunes it.
fn event_kind(body: &EventBody) -> &'static str {
    match body {
        EventBody::Phase { .. } => "phase",
        EventBody::Health { .. } => "health",
        EventBody::Deferral { .. } => "deferral",
        EventBody::Installed { .. } => "installed",
        EventBody::Refusal { .. } => "refusal",
    }
}

/// The site's row in its active rollout (or in `rollout_id`), with that rollout's release.
fn rollout_row_for(
    tx: &rusqlite::Transaction,
    site_id: &str,
    rollout_id: Option<&str>,
) -> StoreResult<Option<(String, String)>> {
    let row = match rollout_id {
        Some(id) => tx
            .prepare_cached("SELECT rs.rollout_id, r.release_id FROM rollout_sites rs JOIN rollouts r ON r.id = rs.rollout_id WHERE rs.site_id = ?1 AND rs.rollout_id = ?2")?
            .query_row(
                params![site_id, id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?,
        None => tx
            .prepare_cached("SELECT rs.rollout_id, r.release_id FROM rollout_sites rs JOIN rollouts r ON r.id = rs.rollout_id WHERE rs.site_id = ?1 AND rs.active = 1")?
            .query_row(
                [site_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?,
    };
    Ok(row)
}

/// Applies one new event's facts at `time` (the event's time as [`super::event_time`]
/// bounds it). Every fact follows that time, so a late event never moves a fact
/// backwards. Returns the rollout whose facts changed.
fn apply_event(
    tx: &rusqlite::Transaction,
    site_id: &str,
    event: &Event,
    time: Timestamp,
) -> StoreResult<Option<String>> {
    let at = ms(time);
    match &event.body {
        EventBody::Phase {
            rollout_id,
            release_id,
            phase,
            detail,
        } => {
            let Some((rollout, target)) = rollout_row_for(tx, site_id, rollout_id.as_deref())?
            else {
                return Ok(None);
            };
            let key = params![rollout, site_id, at, phase_str(*phase), detail];
            tx.prepare_cached(
                "UPDATE rollout_sites SET phase = ?4, phase_at = ?3, detail = ?5 WHERE rollout_id = ?1 AND site_id = ?2 AND (phase_at IS NULL OR phase_at <= ?3)",
            )?
            .execute(
                key,
            )?;
            touch_report(tx, &rollout, site_id, at)?;
            let target_release = *release_id == target;
            match phase {
                Phase::Committed if target_release => record_commit(tx, &rollout, site_id, at)?,
                // A rollback the agent gave up on is a failure too (its detail says why).
                Phase::Failed | Phase::RollbackFailed if target_release => {
                    tx.prepare_cached(
                        "UPDATE rollout_sites SET failed_at = MAX(COALESCE(failed_at, ?3), ?3),
                           failure = CASE WHEN failed_at IS NULL OR failed_at <= ?3 THEN ?4 ELSE failure END
                         WHERE rollout_id = ?1 AND site_id = ?2",
                    )?
                    .execute(
                        params![rollout, site_id, at, detail],
                    )?;
                }
                Phase::RolledBack if target_release => {
                    tx.prepare_cached(
                        "UPDATE rollout_sites SET rolled_back = 1 WHERE rollout_id = ?1 AND site_id = ?2",
                    )?
                    .execute(
                        params![rollout, site_id],
                    )?;
                }
                Phase::Leased => {
                    tx.prepare_cached(
                        "UPDATE rollout_sites SET leased_at = MAX(COALESCE(leased_at, 0), ?3) WHERE rollout_id = ?1 AND site_id = ?2",
                    )?
                    .execute(
                        params![rollout, site_id, at],
                    )?;
                }
                _ => {}
            }
            if matches!(
                phase,
                Phase::Committed | Phase::Failed | Phase::RolledBack | Phase::RollbackFailed
            ) {
                tx.prepare_cached("DELETE FROM leases WHERE rollout_id = ?1 AND site_id = ?2")?
                    .execute(params![rollout, site_id])?;
            }
            Ok(Some(rollout))
        }
        EventBody::Health { healthy, .. } => {
            tx.prepare_cached(
                "UPDATE sites SET healthy = ?2, health_at = ?3 WHERE id = ?1 AND (health_at IS NULL OR health_at <= ?3)",
            )?
            .execute(
                params![site_id, healthy, at],
            )?;
            let Some((rollout, _)) = rollout_row_for(tx, site_id, None)? else {
                return Ok(None);
            };
            if *healthy {
                tx.prepare_cached(
                    "UPDATE rollout_sites SET last_healthy_at = MAX(COALESCE(last_healthy_at, ?3), ?3) WHERE rollout_id = ?1 AND site_id = ?2",
                )?
                .execute(
                    params![rollout, site_id, at],
                )?;
            } else {
                tx.prepare_cached(
                    "UPDATE rollout_sites SET first_unhealthy_after_commit_at = MIN(COALESCE(first_unhealthy_after_commit_at, ?3), ?3)
                     WHERE rollout_id = ?1 AND site_id = ?2 AND committed_at IS NOT NULL AND committed_at <= ?3",
                )?
                .execute(
                    params![rollout, site_id, at],
                )?;
            }
            touch_report(tx, &rollout, site_id, at)?;
            Ok(Some(rollout))
        }
        EventBody::Deferral { until, .. } => {
            tx.prepare_cached(
                "UPDATE sites SET deferred_until = ?2, deferral_at = ?3 WHERE id = ?1 AND (deferral_at IS NULL OR deferral_at <= ?3)",
            )?
            .execute(
                params![site_id, until.map(ms), at],
            )?;
            let rollout = rollout_row_for(tx, site_id, None)?.map(|(r, _)| r);
            if let Some(r) = &rollout {
                touch_report(tx, r, site_id, at)?;
            }
            Ok(rollout)
        }
        EventBody::Installed {
            name,
            release_id,
            version,
            previous_release_id,
        } => {
            let installed: String = tx
                .prepare_cached("SELECT installed FROM sites WHERE id = ?1")?
                .query_row([site_id], |r| r.get(0))
                .optional()?
                .ok_or_else(|| StoreError::NotFound(format!("no site {site_id}")))?;
            let mut map: BTreeMap<String, InstalledRelease> = serde_json::from_str(&installed)
                .map_err(|e| StoreError::Corrupt(format!("site {site_id}: installed: {e}")))?;
            if map.get(name).is_none_or(|old| old.at <= time) {
                map.insert(
                    name.clone(),
                    InstalledRelease {
                        release_id: release_id.clone(),
                        version: version.clone(),
                        previous_release_id: previous_release_id.clone(),
                        at: time,
                    },
                );
                tx.prepare_cached("UPDATE sites SET installed = ?2 WHERE id = ?1")?
                    .execute(params![site_id, to_json(&map)])?;
            }
            let Some((rollout, target)) = rollout_row_for(tx, site_id, None)? else {
                return Ok(None);
            };
            // The release the site ran before this rollout: what a rollback goes back to.
            let previous = if release_id.as_deref() == Some(target.as_str()) {
                previous_release_id.clone()
            } else {
                release_id.clone()
            };
            if release_id.as_deref() == Some(target.as_str()) {
                record_commit(tx, &rollout, site_id, at)?;
            }
            if let Some(previous) = previous.filter(|p| *p != target) {
                tx.prepare_cached(
                    "UPDATE rollout_sites SET previous_release_id = ?3 WHERE rollout_id = ?1 AND site_id = ?2 AND committed_at IS NULL",
                )?
                .execute(
                    params![rollout, site_id, previous],
                )?;
            }
            touch_report(tx, &rollout, site_id, at)?;
            Ok(Some(rollout))
        }
        EventBody::Refusal {
            rollout_id,
            code,
            message,
            ..
        } => {
            let Some((rollout, _)) = rollout_row_for(tx, site_id, rollout_id.as_deref())? else {
                return Ok(None);
            };
            tx.prepare_cached(
                "UPDATE rollout_sites SET detail = ?4 WHERE rollout_id = ?1 AND site_id = ?2 AND (phase_at IS NULL OR phase_at <= ?3)",
            )?
            .execute(
                params![rollout, site_id, at, format!("refused: {code}: {message}")],
            )?;
            touch_report(tx, &rollout, site_id, at)?;
            Ok(Some(rollout))
        }
    }
}

fn touch_report(
    tx: &rusqlite::Transaction,
    rollout: &str,
    site_id: &str,
    at: i64,
) -> StoreResult<()> {
    tx.prepare_cached(
        "UPDATE rollout_sites SET last_report_at = MAX(COALESCE(last_report_at, 0), ?3) WHERE rollout_id = ?1 AND site_id = ?2",
    )?
    .execute(
        params![rollout, site_id, at],
    )?;
    Ok(())
}

/// A commit of the target release at `at`: the latest commit counts, and the first
/// unhealthy heartbeat after it is recomputed from the stored reports (which may have
/// arrived before the commit did).
fn record_commit(
    tx: &rusqlite::Transaction,
    rollout: &str,
    site_id: &str,
    at: i64,
) -> StoreResult<()> {
    let committed: Option<i64> = tx
        .prepare_cached(
            "SELECT committed_at FROM rollout_sites WHERE rollout_id = ?1 AND site_id = ?2",
        )?
        .query_row(params![rollout, site_id], |r| r.get(0))?;
    if committed.is_some_and(|c| c >= at) {
        return Ok(());
    }
    let first_unhealthy: Option<i64> = tx
        .prepare_cached(FIRST_UNHEALTHY_SQL)?
        .query_row(params![site_id, at], |r| r.get(0))?;
    tx.prepare_cached(
        "UPDATE rollout_sites SET committed_at = ?3, first_unhealthy_after_commit_at = ?4 WHERE rollout_id = ?1 AND site_id = ?2",
    )?
    .execute(
        params![rollout, site_id, at, first_unhealthy],
    )?;
    Ok(())
}

/// Stores one lease, replacing the site's earlier lease for the same rollout.
fn grant_lease(tx: &rusqlite::Transaction, l: &LeaseRecord) -> StoreResult<()> {
    tx.prepare_cached("DELETE FROM leases WHERE rollout_id = ?1 AND site_id = ?2")?
        .execute(params![l.rollout_id, l.site_id])?;
    tx.prepare_cached(
        "INSERT INTO leases (id, site_id, rollout_id, wave, granted_at, expires_at) VALUES (?1,?2,?3,?4,?5,?6)",
    )?
    .execute(params![l.id, l.site_id, l.rollout_id, l.wave, ms(l.granted_at), ms(l.expires_at)])?;
    tx.prepare_cached(
        "UPDATE rollout_sites SET leased_at = MAX(COALESCE(leased_at, 0), ?3) WHERE rollout_id = ?1 AND site_id = ?2",
    )?
    .execute(params![l.rollout_id, l.site_id, ms(l.granted_at)])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_kinds_name_every_event_kind() {
        let samples = [
            EventBody::Phase {
                rollout_id: None,
                release_id: "r".into(),
                phase: Phase::Committed,
                detail: None,
            },
            EventBody::Health {
                healthy: true,
                summary: Default::default(),
            },
            EventBody::Deferral {
                until: None,
                reason: None,
            },
            EventBody::Installed {
                name: "app".into(),
                release_id: None,
                version: None,
                previous_release_id: None,
            },
            EventBody::Refusal {
                code: "c".into(),
                message: "m".into(),
                rollout_id: None,
                sequence: None,
            },
        ];
        let kinds: Vec<&str> = samples.iter().map(event_kind).collect();
        assert_eq!(kinds, REPORT_KINDS);
        // And each is the event's `kind` on the wire.
        for (body, kind) in samples.iter().zip(REPORT_KINDS) {
            assert_eq!(serde_json::to_value(body).unwrap()["kind"], kind);
        }
    }
}
