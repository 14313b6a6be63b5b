//! The dashboard's read model: aggregate and paginated reads over the fleet that the
//! [`crate::store::Store`] trait does not offer (counts by state, version and health,
//! filtered pages with a total, one compact row per site for the grid, a site's reports).
//!
//! They are plain read-only SQL on the coordinator's SQLite file, through connections
//! opened here with `SQLITE_OPEN_READ_ONLY` (WAL lets them read while the store writes).
//! This module must never write, and never runs on an async worker thread: every query
//! goes through [`ReadModel::run`], which uses tokio's blocking pool.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use fleetwave_shared::protocol::Event;
use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

/// Why a dashboard read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("dashboard read failed: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("dashboard read task failed: {0}")]
    Task(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Read-only connections to the coordinator's database, opened on first use.
pub struct ReadModel {
    path: PathBuf,
    pool: Mutex<Vec<Connection>>,
}

/// Which sites a list or grid shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteQuery {
    /// Part of the site id or of a label value (case-insensitive).
    pub search: Option<String>,
    /// Every `key=value` must match.
    pub labels: BTreeMap<String, String>,
    /// `active` or `decommissioned`.
    pub state: Option<String>,
    /// Sites that report this version installed (any stream).
    pub version: Option<String>,
}

/// One row of the sites list.
#[derive(Debug, Clone)]
pub struct SiteRow {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub state: String,
    pub last_seen: Option<Timestamp>,
    pub versions: Vec<String>,
    pub healthy: Option<bool>,
    pub deferred_until: Option<Timestamp>,
}

/// One cell of the grid: what colours it.
#[derive(Debug, Clone)]
pub struct GridCell {
    pub id: String,
    pub state: String,
    pub healthy: Option<bool>,
    pub last_seen_ms: Option<i64>,
    pub deferred_until_ms: Option<i64>,
}

/// The fleet at a glance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetCounts {
    pub total: u64,
    pub active: u64,
    pub decommissioned: u64,
    pub healthy: u64,
    pub unhealthy: u64,
    pub health_unknown: u64,
    pub deferred: u64,
    /// Active sites not seen for the stale threshold (or never).
    pub stale: u64,
    /// (stream, version, active sites running it), most sites first.
    pub versions: Vec<(String, String, u64)>,
    /// Active sites that report no version at all.
    pub no_version: u64,
    /// The stalest active sites: (id, last seen).
    pub stalest: Vec<(String, Option<Timestamp>)>,
}

fn ts(ms: Option<i64>) -> Option<Timestamp> {
    ms.and_then(|m| Timestamp::from_millisecond(m).ok())
}

/// The WHERE clause and its arguments for a site query.
fn site_where(q: &SiteQuery) -> (String, Vec<String>) {
    let mut sql = String::from("1=1");
    let mut args: Vec<String> = Vec::new();
    if let Some(state) = &q.state {
        args.push(state.clone());
        sql.push_str(&format!(" AND state = ?{}", args.len()));
    }
    for (k, v) in &q.labels {
        args.push(format!("$.\"{}\"", k.replace('"', "")));
        let kp = args.len();
        args.push(v.clone());
        sql.push_str(&format!(
            " AND json_extract(labels, ?{kp}) = ?{}",
            args.len()
        ));
    }
    if let Some(version) = &q.version {
        args.push(version.clone());
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM json_each(sites.installed) WHERE json_extract(value, '$.version') = ?{})",
            args.len()
        ));
    }
    if let Some(search) = q.search.as_ref().filter(|s| !s.is_empty()) {
        let escaped = search
            .to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        args.push(format!("%{escaped}%"));
        let n = args.len();
        sql.push_str(&format!(
            " AND (lower(id) LIKE ?{n} ESCAPE '\\' OR EXISTS (SELECT 1 FROM json_each(sites.labels) WHERE lower(value) LIKE ?{n} ESCAPE '\\'))"
        ));
    }
    (sql, args)
}

fn versions_of(installed: &str) -> Result<Vec<String>, ReadError> {
    let v: BTreeMap<String, serde_json::Value> = serde_json::from_str(installed)
        .map_err(|e| ReadError::Corrupt(format!("sites.installed: {e}")))?;
    Ok(v.iter()
        .filter_map(|(stream, i)| {
            i.get("version")
                .and_then(|v| v.as_str())
                .map(|v| format!("{stream} {v}"))
        })
        .collect())
}

impl ReadModel {
    pub fn new(path: PathBuf) -> ReadModel {
        ReadModel {
            path,
            pool: Mutex::new(Vec::new()),
        }
    }

    fn connect(&self) -> Result<Connection, ReadError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        Ok(conn)
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T, ReadError>) -> Result<T, ReadError> {
        let conn = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => self.connect()?,
        };
        let out = f(&conn);
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < 2 {
            pool.push(conn);
        }
        out
    }

    /// Runs `f` on the blocking pool with a read-only connection.
    pub async fn run<T, F>(self: &std::sync::Arc<Self>, f: F) -> Result<T, ReadError>
    where
        T: Send + 'static,
        F: FnOnce(&ReadModel, &Connection) -> Result<T, ReadError> + Send + 'static,
    {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.with(|c| f(&me, c)))
            .await
            .map_err(|e| ReadError::Task(e.to_string()))?
    }

    /// Counts for the overview. `stale_before`: sites not seen since then are stale.
    pub fn fleet_counts(
        &self,
        c: &Connection,
        now: Timestamp,
        stale_before: Timestamp,
    ) -> Result<FleetCounts, ReadError> {
        let mut out = FleetCounts::default();
        let now_ms = now.as_millisecond();
        let stale_ms = stale_before.as_millisecond();
        let mut st = c.prepare(
            "SELECT state, COUNT(*), \
                    SUM(CASE WHEN healthy = 1 THEN 1 ELSE 0 END), \
                    SUM(CASE WHEN healthy = 0 THEN 1 ELSE 0 END), \
                    SUM(CASE WHEN healthy IS NULL THEN 1 ELSE 0 END), \
                    SUM(CASE WHEN deferred_until > ?1 THEN 1 ELSE 0 END), \
                    SUM(CASE WHEN last_seen IS NULL OR last_seen < ?2 THEN 1 ELSE 0 END) \
             FROM sites GROUP BY state",
        )?;
        let mut rows = st.query(rusqlite::params![now_ms, stale_ms])?;
        while let Some(r) = rows.next()? {
            let state: String = r.get(0)?;
            let n: i64 = r.get(1)?;
            out.total += n as u64;
            if state == "active" {
                out.active = n as u64;
                out.healthy = r.get::<_, i64>(2)? as u64;
                out.unhealthy = r.get::<_, i64>(3)? as u64;
                out.health_unknown = r.get::<_, i64>(4)? as u64;
                out.deferred = r.get::<_, i64>(5)? as u64;
                out.stale = r.get::<_, i64>(6)? as u64;
            } else {
                out.decommissioned += n as u64;
            }
        }
        let mut st = c.prepare(
            "SELECT j.key, json_extract(j.value, '$.version') AS v, COUNT(*) \
             FROM sites, json_each(sites.installed) AS j \
             WHERE sites.state = 'active' AND v IS NOT NULL \
             GROUP BY j.key, v ORDER BY 3 DESC, 1, 2 LIMIT 50",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)? as u64,
            ))
        })?;
        for row in rows {
            out.versions.push(row?);
        }
        out.no_version = c.query_row(
            "SELECT COUNT(*) FROM sites WHERE state = 'active' AND \
             NOT EXISTS (SELECT 1 FROM json_each(sites.installed) WHERE json_extract(value, '$.version') IS NOT NULL)",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64;
        let mut st = c.prepare(
            "SELECT id, last_seen FROM sites WHERE state = 'active' AND \
             (last_seen IS NULL OR last_seen < ?1) ORDER BY COALESCE(last_seen, 0), id LIMIT 10",
        )?;
        let rows = st.query_map([stale_ms], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))
        })?;
        for row in rows {
            let (id, seen) = row?;
            out.stalest.push((id, ts(seen)));
        }
        Ok(out)
    }

    /// Every version some site reports (for the filter's choices).
    pub fn versions(&self, c: &Connection) -> Result<Vec<String>, ReadError> {
        let mut st = c.prepare(
            "SELECT DISTINCT json_extract(j.value, '$.version') AS v \
             FROM sites, json_each(sites.installed) AS j WHERE v IS NOT NULL ORDER BY v LIMIT 200",
        )?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One page of sites (ordered by id) and how many match in all.
    pub fn site_page(
        &self,
        c: &Connection,
        q: &SiteQuery,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<SiteRow>, u64), ReadError> {
        let (clause, args) = site_where(q);
        let total: i64 = c.query_row(
            &format!("SELECT COUNT(*) FROM sites WHERE {clause}"),
            rusqlite::params_from_iter(args.iter()),
            |r| r.get(0),
        )?;
        let sql = format!(
            "SELECT id, labels, state, last_seen, installed, healthy, deferred_until \
             FROM sites WHERE {clause} ORDER BY id LIMIT {limit} OFFSET {offset}"
        );
        let mut st = c.prepare(&sql)?;
        let mut rows = st.query(rusqlite::params_from_iter(args.iter()))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let labels: String = r.get(1)?;
            let installed: String = r.get(4)?;
            out.push(SiteRow {
                id: r.get(0)?,
                labels: serde_json::from_str(&labels)
                    .map_err(|e| ReadError::Corrupt(format!("sites.labels: {e}")))?,
                state: r.get(2)?,
                last_seen: ts(r.get(3)?),
                versions: versions_of(&installed)?,
                healthy: r.get::<_, Option<i64>>(5)?.map(|h| h != 0),
                deferred_until: ts(r.get(6)?),
            });
        }
        Ok((out, total as u64))
    }

    /// Every matching site as one grid cell, ordered by id.
    pub fn grid(&self, c: &Connection, q: &SiteQuery) -> Result<Vec<GridCell>, ReadError> {
        let (clause, args) = site_where(q);
        let sql = format!(
            "SELECT id, state, healthy, last_seen, deferred_until FROM sites WHERE {clause} ORDER BY id"
        );
        let mut st = c.prepare(&sql)?;
        let rows = st.query_map(rusqlite::params_from_iter(args.iter()), |r| {
            Ok(GridCell {
                id: r.get(0)?,
                state: r.get(1)?,
                healthy: r.get::<_, Option<i64>>(2)?.map(|h| h != 0),
                last_seen_ms: r.get(3)?,
                deferred_until_ms: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A site's newest reports (optionally of one kind), newest first.
    pub fn site_events(
        &self,
        c: &Connection,
        site_id: &str,
        kind: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Event>, ReadError> {
        let mut st = c.prepare(
            "SELECT body FROM reports WHERE site_id = ?1 AND (?2 IS NULL OR kind = ?2) \
             ORDER BY at DESC, event_id DESC LIMIT ?3",
        )?;
        let rows = st.query_map(rusqlite::params![site_id, kind, limit], |r| {
            r.get::<_, String>(0)
        })?;
        let mut out = Vec::new();
        for body in rows {
            let body = body?;
            out.push(
                serde_json::from_str(&body)
                    .map_err(|e| ReadError::Corrupt(format!("reports.body of {site_id}: {e}")))?,
            );
        }
        Ok(out)
    }

    /// When the site last got an assignment: (sequence, rollout, release, rollback).
    pub fn last_assignment(
        &self,
        c: &Connection,
        site_id: &str,
    ) -> Result<Option<(u64, String, String, bool)>, ReadError> {
        Ok(c.query_row(
            "SELECT sequence, rollout_id, release_id, rollback FROM assignments \
             WHERE site_id = ?1 ORDER BY sequence DESC LIMIT 1",
            [site_id],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get(1)?,
                    r.get(2)?,
                    r.get::<_, i64>(3)? != 0,
                ))
            },
        )
        .optional()?)
    }
}
