//! The dashboard's read model on SQLite ([`DashboardRead`]): plain read-only SQL on the
//! coordinator's file, through connections opened here with `SQLITE_OPEN_READ_ONLY` (WAL
//! lets them read while the store writes, so they never block the writer). This module
//! must never write, and never runs on an async worker thread (see
//! `dashboard::read::ReadModel::run`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use fleetwave_shared::protocol::Event;
use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::store::read::{
    DashboardRead, FleetCounts, GridCell, SiteQuery, SiteRow, count_limit, id_prefix_range,
};
use crate::store::{ReportKind, StoreError, StoreResult};

/// Read-only connections to the coordinator's database, opened on first use (at most two
/// kept).
pub struct SqliteReadModel {
    path: PathBuf,
    pool: Mutex<Vec<Connection>>,
}

impl SqliteReadModel {
    pub fn new(path: PathBuf) -> SqliteReadModel {
        SqliteReadModel {
            path,
            pool: Mutex::new(Vec::new()),
        }
    }

    fn connect(&self) -> StoreResult<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        Ok(conn)
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
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
}

impl DashboardRead for SqliteReadModel {
    fn fleet_counts(&self, now: Timestamp, stale_before: Timestamp) -> StoreResult<FleetCounts> {
        self.with(|c| fleet_counts(c, now, stale_before))
    }

    fn version_pairs(&self) -> StoreResult<Vec<(String, String)>> {
        self.with(version_pairs)
    }

    fn site_page(
        &self,
        q: &SiteQuery,
        offset: u64,
        limit: u64,
    ) -> StoreResult<(Vec<SiteRow>, u64)> {
        self.with(|c| site_page(c, q, offset, limit))
    }

    fn grid(&self, q: &SiteQuery, stream: Option<&str>) -> StoreResult<Vec<GridCell>> {
        self.with(|c| grid(c, q, stream))
    }

    fn query_plans(&self, q: &SiteQuery) -> StoreResult<Vec<(String, Vec<String>)>> {
        self.with(|c| query_plans(c, q))
    }

    fn site_events(
        &self,
        site_id: &str,
        kind: Option<ReportKind>,
        limit: u32,
    ) -> StoreResult<Vec<Event>> {
        self.with(|c| site_events(c, site_id, kind.map(ReportKind::as_str), limit))
    }

    fn site_events_around(
        &self,
        site_id: &str,
        at: Timestamp,
        before: u32,
        after: u32,
    ) -> StoreResult<Vec<Event>> {
        self.with(|c| site_events_around(c, site_id, at, before, after))
    }

    fn last_assignment(&self, site_id: &str) -> StoreResult<Option<(u64, String, String, bool)>> {
        self.with(|c| last_assignment(c, site_id))
    }
}

fn ts(ms: Option<i64>) -> Option<Timestamp> {
    ms.and_then(|m| Timestamp::from_millisecond(m).ok())
}

/// At most this many distinct label pairs are walked one index seek at a time when a
/// search looks for matching label values; past it, one scan of the label index is cheaper.
const SKIP_SCAN_CAP: usize = 4096;

/// A `LIKE` pattern that finds `text` anywhere (ASCII case-insensitive, as SQLite's LIKE).
fn like_anywhere(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// One condition of a site query, as a set of site ids (to drive the query) or as a test
/// of one site id (to filter what another condition drives). Both forms use the indexes of
/// schema version 2: `site_labels_by_pair`, `site_versions_by_version`, `sites_by_state_id`.
#[derive(Debug, Clone)]
enum Cond {
    Label(String, String),
    Version(String),
    State(String),
    /// A search: site ids in `[.1, .2)` (those starting with the text, see
    /// [`id_prefix_range`]) and label values matching the `LIKE` pattern `.0`.
    Search(String, String, String),
}

/// SQL text with its positional (`?`) arguments, in order.
#[derive(Debug, Default, Clone)]
struct Sql {
    text: String,
    args: Vec<String>,
}

impl Sql {
    fn push(&mut self, text: &str, args: impl IntoIterator<Item = String>) {
        self.text.push_str(text);
        self.args.extend(args);
    }
}

impl Cond {
    /// The condition as a test of the site id expression `x`.
    fn probe(&self, x: &str, out: &mut Sql) {
        match self {
            Cond::Label(k, v) => out.push(
                &format!(
                    "EXISTS (SELECT 1 FROM site_labels WHERE site_id = {x} AND key = ? AND value = ?)"
                ),
                [k.clone(), v.clone()],
            ),
            Cond::Version(v) => out.push(
                &format!(
                    "EXISTS (SELECT 1 FROM site_versions WHERE site_id = {x} AND version = ?)"
                ),
                [v.clone()],
            ),
            Cond::State(s) => out.push(
                &format!(
                    "EXISTS (SELECT 1 FROM sites INDEXED BY sites_by_state_id WHERE state = ? AND id = {x})"
                ),
                [s.clone()],
            ),
            Cond::Search(p, low, high) => out.push(
                &format!(
                    "(({x} >= ? AND {x} < ?) OR EXISTS (SELECT 1 FROM site_labels WHERE site_id = {x} AND value LIKE ? ESCAPE '\\'))"
                ),
                [low.clone(), high.clone(), p.clone()],
            ),
        }
    }

    /// How many sites the condition selects, counted up to `cap` (an index range), for
    /// choosing the condition that drives a query; `None` when only running the query
    /// would tell.
    fn size(&self, c: &Connection, cap: u64) -> StoreResult<Option<u64>> {
        let cap = cap.min(i64::MAX as u64) as i64;
        let n: i64 = match self {
            Cond::Label(k, v) => c
                .prepare_cached(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM site_labels WHERE key = ?1 AND value = ?2 LIMIT ?3)",
                )?
                .query_row(rusqlite::params![k, v, cap], |r| r.get(0))?,
            Cond::Version(v) => c
                .prepare_cached(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM site_versions WHERE version = ?1 LIMIT ?2)",
                )?
                .query_row(rusqlite::params![v, cap], |r| r.get(0))?,
            Cond::State(s) => c
                .prepare_cached(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM sites WHERE state = ?1 LIMIT ?2)",
                )?
                .query_row(rusqlite::params![s, cap], |r| r.get(0))?,
            Cond::Search(..) => return Ok(None),
        };
        Ok(Some(n as u64))
    }
}

/// Every distinct (a, b) of an index whose leading columns are (a, b), one index seek per
/// pair (SQLite has no skip scan without statistics); `None` past `cap` pairs.
fn distinct_pairs(
    c: &Connection,
    table: &str,
    a: &str,
    b: &str,
    cap: usize,
) -> StoreResult<Option<Vec<(String, String)>>> {
    let mut first = c.prepare_cached(&format!(
        "SELECT {a}, {b} FROM {table} ORDER BY {a}, {b} LIMIT 1"
    ))?;
    let mut same = c.prepare_cached(&format!(
        "SELECT {b} FROM {table} WHERE {a} = ?1 AND {b} > ?2 ORDER BY {b} LIMIT 1"
    ))?;
    let mut next = c.prepare_cached(&format!(
        "SELECT {a}, {b} FROM {table} WHERE {a} > ?1 ORDER BY {a}, {b} LIMIT 1"
    ))?;
    let mut out: Vec<(String, String)> = Vec::new();
    let mut at: Option<(String, String)> = first
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    while let Some((x, y)) = at {
        if out.len() >= cap {
            return Ok(None);
        }
        at = match same
            .query_row([&x, &y], |r| r.get::<_, String>(0))
            .optional()?
        {
            Some(y2) => Some((x.clone(), y2)),
            None => next
                .query_row([&x], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?,
        };
        out.push((x, y));
    }
    Ok(Some(out))
}

/// A site query planned over the indexes: one condition drives (its set of site ids, as
/// `m(site_id)`), the others test each of its ids.
struct Planned {
    /// `(...) AS m WHERE ...`: the FROM and WHERE of every query over the matches.
    body: Sql,
    /// `(...) AS m` alone, and the ` WHERE ...` alone (the grid joins in between).
    from: Sql,
    filter: Sql,
    /// No condition: every site.
    all: bool,
}

fn plan(c: &Connection, q: &SiteQuery) -> StoreResult<Planned> {
    let mut conds: Vec<Cond> = Vec::new();
    for (k, v) in &q.labels {
        conds.push(Cond::Label(k.clone(), v.clone()));
    }
    if let Some(v) = &q.version {
        conds.push(Cond::Version(v.clone()));
    }
    if let Some(s) = q.search.as_ref().filter(|s| !s.is_empty()) {
        let (low, high) = id_prefix_range(s);
        conds.push(Cond::Search(like_anywhere(s), low, high));
    }
    if let Some(s) = &q.state {
        conds.push(Cond::State(s.clone()));
    }
    // The driver is the smallest indexed set. A search drives only when nothing but the
    // state narrows the fleet (its size is known only by running it).
    let driver = if conds.len() <= 1 {
        conds.pop()
    } else if !conds
        .iter()
        .any(|c| matches!(c, Cond::Label(..) | Cond::Version(_)))
    {
        let i = conds.iter().position(|c| matches!(c, Cond::Search(..)));
        i.map(|i| conds.remove(i))
    } else {
        let mut best: Option<(usize, u64)> = None;
        for (i, cond) in conds.iter().enumerate() {
            // Counting stops at the smallest size so far: a larger set need not be counted.
            let cap = best.map_or(u64::MAX, |(_, m)| m);
            if let Some(n) = cond.size(c, cap)?
                && best.is_none_or(|(_, m)| n < m)
            {
                best = Some((i, n));
            }
        }
        best.map(|(i, _)| conds.remove(i))
    };
    let mut body = Sql::default();
    let all = driver.is_none();
    match &driver {
        None => body.push("(SELECT id AS site_id FROM sites) AS m", []),
        Some(Cond::Label(k, v)) => body.push(
            "(SELECT site_id FROM site_labels WHERE key = ? AND value = ?) AS m",
            [k.clone(), v.clone()],
        ),
        Some(Cond::Version(v)) => body.push(
            "(SELECT DISTINCT site_id FROM site_versions WHERE version = ?) AS m",
            [v.clone()],
        ),
        Some(Cond::State(s)) => body.push(
            "(SELECT id AS site_id FROM sites INDEXED BY sites_by_state_id WHERE state = ?) AS m",
            [s.clone()],
        ),
        Some(Cond::Search(p, low, high)) => search_set(c, p, low, high, &mut body)?,
    }
    let from = body.clone();
    let mut filter = Sql::default();
    for (i, cond) in conds.iter().enumerate() {
        filter.push(if i == 0 { " WHERE " } else { " AND " }, []);
        cond.probe("m.site_id", &mut filter);
    }
    body.push(&filter.text, filter.args.iter().cloned());
    Ok(Planned {
        body,
        from,
        filter,
        all,
    })
}

/// The sites a search finds, as `(...) AS m`: ids starting with the text (a range of the
/// id index, `[low, high)`), and the sites of every label pair whose value contains it (the
/// distinct pairs are few in a real fleet: region, cohort, city; they are found first,
/// then their sites through the pair index). Nothing reads every site.
fn search_set(
    c: &Connection,
    pattern: &str,
    low: &str,
    high: &str,
    out: &mut Sql,
) -> StoreResult<()> {
    let hits: Vec<(String, String)> =
        match distinct_pairs(c, "site_labels", "key", "value", SKIP_SCAN_CAP)? {
            Some(pairs) => {
                let mut test = c.prepare_cached("SELECT ?1 LIKE ?2 ESCAPE '\\'")?;
                let mut hits = Vec::new();
                for (k, v) in pairs {
                    if test.query_row([&v, pattern], |r| r.get::<_, bool>(0))? {
                        hits.push((k, v));
                    }
                }
                hits
            }
            None => {
                let mut st = c.prepare_cached(
                    "SELECT DISTINCT key, value FROM site_labels WHERE value LIKE ?1 ESCAPE '\\'",
                )?;
                st.query_map([pattern], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?
            }
        };
    out.push(
        "(SELECT id AS site_id FROM sites WHERE id >= ? AND id < ?",
        [low.to_string(), high.to_string()],
    );
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in hits {
        by_key.entry(k).or_default().push(v);
    }
    for (k, values) in by_key {
        let marks = vec!["?"; values.len()].join(", ");
        out.push(
            &format!(" UNION SELECT site_id FROM site_labels WHERE key = ? AND value IN ({marks})"),
            std::iter::once(k).chain(values),
        );
    }
    out.push(") AS m", []);
    Ok(())
}

fn grid_sql(p: &Planned) -> String {
    let cols = "s.id, s.state, s.healthy, s.last_seen, s.deferred_until";
    if p.all {
        // In table order, sorted by id afterwards: one sequential pass over the table
        // instead of a seek per site through the id index.
        format!("SELECT {cols} FROM sites AS s")
    } else {
        format!(
            "SELECT {cols} FROM {} JOIN sites AS s ON s.id = m.site_id{} ORDER BY m.site_id",
            p.from.text, p.filter.text
        )
    }
}

fn versions_of(installed: &str) -> StoreResult<Vec<String>> {
    let v: BTreeMap<String, serde_json::Value> = serde_json::from_str(installed)
        .map_err(|e| StoreError::Corrupt(format!("sites.installed: {e}")))?;
    Ok(v.iter()
        .filter_map(|(stream, i)| {
            i.get("version")
                .and_then(|v| v.as_str())
                .map(|v| format!("{stream} {v}"))
        })
        .collect())
}

/// Counts for the overview. `stale_before`: sites not seen since then are stale.
///
/// Every figure is an index range count or a scan of one covering index (schema
/// version 2), never a scan of the sites' JSON.
fn fleet_counts(
    c: &Connection,
    now: Timestamp,
    stale_before: Timestamp,
) -> StoreResult<FleetCounts> {
    let mut out = FleetCounts::default();
    let now_ms = now.as_millisecond();
    let stale_ms = stale_before.as_millisecond();
    let mut st =
        c.prepare_cached("SELECT state, healthy, COUNT(*) FROM sites GROUP BY state, healthy")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let state: String = r.get(0)?;
        let healthy: Option<i64> = r.get(1)?;
        let n = r.get::<_, i64>(2)? as u64;
        out.total += n;
        if state == "active" {
            out.active += n;
            match healthy {
                Some(0) => out.unhealthy += n,
                Some(_) => out.healthy += n,
                None => out.health_unknown += n,
            }
        } else {
            out.decommissioned += n;
        }
    }
    out.deferred = c
        .prepare_cached(
            "SELECT COUNT(*) FROM sites WHERE state = 'active' AND deferred_until > ?1",
        )?
        .query_row([now_ms], |r| r.get::<_, i64>(0))? as u64;
    out.stale = c
        .prepare_cached(
            "SELECT (SELECT COUNT(*) FROM sites WHERE state = 'active' AND last_seen IS NULL) \
                  + (SELECT COUNT(*) FROM sites WHERE state = 'active' AND last_seen < ?1)",
        )?
        .query_row([stale_ms], |r| r.get::<_, i64>(0))? as u64;
    // Versions of active sites: those of every site, less those of decommissioned ones
    // (few, and found through the state index).
    let mut versions: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut st = c.prepare_cached(
        "SELECT stream, version, COUNT(*) FROM site_versions GROUP BY version, stream",
    )?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        versions.insert((r.get(0)?, r.get(1)?), r.get(2)?);
    }
    let mut st = c.prepare_cached(
        "SELECT v.stream, v.version, COUNT(*) FROM sites AS s INDEXED BY sites_by_state_id \
         JOIN site_versions AS v ON v.site_id = s.id \
         WHERE s.state = 'decommissioned' GROUP BY v.version, v.stream",
    )?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let n: i64 = r.get(2)?;
        if let Some(all) = versions.get_mut(&(r.get(0)?, r.get(1)?)) {
            *all -= n;
        }
    }
    let mut versions: Vec<(String, String, u64)> = versions
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|((s, v), n)| (s, v, n as u64))
        .collect();
    versions.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1))));
    versions.truncate(50);
    out.versions = versions;
    // Active sites that report some version: every site that does (the primary key is
    // in site order, so DISTINCT needs no sort), less decommissioned ones.
    let with_version: i64 = c
        .prepare_cached("SELECT COUNT(*) FROM (SELECT DISTINCT site_id FROM site_versions)")?
        .query_row([], |r| r.get(0))?;
    let decommissioned_with_version: i64 = c
        .prepare_cached(
            "SELECT COUNT(*) FROM sites AS s INDEXED BY sites_by_state_id \
             WHERE s.state = 'decommissioned' \
             AND EXISTS (SELECT 1 FROM site_versions WHERE site_id = s.id)",
        )?
        .query_row([], |r| r.get(0))?;
    out.no_version = out
        .active
        .saturating_sub((with_version - decommissioned_with_version).max(0) as u64);
    // The stalest: in last-seen order (never seen first) through the index, so the
    // query stops after ten.
    let mut st = c.prepare_cached(
        "SELECT id, last_seen FROM sites WHERE state = 'active' AND \
         (last_seen IS NULL OR last_seen < ?1) ORDER BY last_seen, id LIMIT 10",
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

/// Every (stream, version) some site reports, by version then stream (one index seek
/// each); at most 200.
fn version_pairs(c: &Connection) -> StoreResult<Vec<(String, String)>> {
    let pairs = distinct_pairs(c, "site_versions", "version", "stream", 200)?;
    let pairs = match pairs {
        Some(p) => p,
        None => {
            let mut st = c.prepare_cached(
                "SELECT DISTINCT version, stream FROM site_versions ORDER BY version, stream LIMIT 200",
            )?;
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?
        }
    };
    Ok(pairs.into_iter().map(|(v, s)| (s, v)).collect())
}

/// One page of sites (ordered by id) and how many match in all.
fn site_page(
    c: &Connection,
    q: &SiteQuery,
    offset: u64,
    limit: u64,
) -> StoreResult<(Vec<SiteRow>, u64)> {
    let p = plan(c, q)?;
    let (ids, total): (Vec<String>, u64) = if p.all {
        // Every site: the id index counts and pages without reading any row.
        let total: i64 = c
            .prepare_cached("SELECT COUNT(*) FROM sites")?
            .query_row([], |r| r.get(0))?;
        let mut st = c.prepare_cached("SELECT id FROM sites ORDER BY id LIMIT ?1 OFFSET ?2")?;
        let ids = st
            .query_map(rusqlite::params![limit as i64, offset as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        (ids, total as u64)
    } else {
        // A filter: one pass over the matches gives both the total and the page; it stops
        // one past the count limit ("more than"), so a large match is not read to its end.
        let most = count_limit(offset, limit);
        let mut st = c.prepare_cached(&format!(
            "SELECT m.site_id FROM {} ORDER BY m.site_id",
            p.body.text
        ))?;
        let mut rows = st.query(rusqlite::params_from_iter(p.body.args.iter()))?;
        let (mut ids, mut total) = (Vec::new(), 0u64);
        while let Some(r) = rows.next()? {
            if total >= offset && (ids.len() as u64) < limit {
                ids.push(r.get(0)?);
            }
            total += 1;
            if total > most {
                break;
            }
        }
        (ids, total)
    };
    let mut st = c.prepare_cached(
        "SELECT id, labels, state, last_seen, installed, healthy, deferred_until \
         FROM sites WHERE id = ?1",
    )?;
    let mut out = Vec::with_capacity(ids.len());
    for id in &ids {
        let row = st
            .query_row([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                ))
            })
            .optional()?;
        // A site that went between the two reads is left out of this page.
        let Some((id, labels, state, last_seen, installed, healthy, deferred)) = row else {
            continue;
        };
        out.push(SiteRow {
            id,
            labels: serde_json::from_str(&labels)
                .map_err(|e| StoreError::Corrupt(format!("sites.labels: {e}")))?,
            state,
            last_seen: ts(last_seen),
            versions: versions_of(&installed)?,
            healthy: healthy.map(|h| h != 0),
            deferred_until: ts(deferred),
        });
    }
    Ok((out, total))
}

/// Every matching site as one grid cell, ordered by id. `stream`: also read each
/// site's version of that release stream.
fn grid(c: &Connection, q: &SiteQuery, stream: Option<&str>) -> StoreResult<Vec<GridCell>> {
    let p = plan(c, q)?;
    let sql = grid_sql(&p);
    let mut st = c.prepare_cached(&sql)?;
    let rows = st.query_map(rusqlite::params_from_iter(p.body.args.iter()), |r| {
        Ok(GridCell {
            id: r.get(0)?,
            state: r.get(1)?,
            healthy: r.get::<_, Option<i64>>(2)?.map(|h| h != 0),
            last_seen_ms: r.get(3)?,
            deferred_until_ms: r.get(4)?,
            version: None,
        })
    })?;
    let mut cells: Vec<GridCell> = rows.collect::<Result<_, _>>()?;
    if p.all {
        cells.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    }
    if let Some(stream) = stream {
        // Merged in site order with one pass over site_versions' primary key (site
        // order too), rather than one lookup per cell.
        let mut st = c.prepare_cached(
            "SELECT site_id, version FROM site_versions WHERE stream = ?1 ORDER BY site_id",
        )?;
        let mut rows = st.query([stream])?;
        let mut i = 0;
        while let Some(r) = rows.next()? {
            let site: String = r.get(0)?;
            while i < cells.len() && cells[i].id < site {
                i += 1;
            }
            if i == cells.len() {
                break;
            }
            if cells[i].id == site {
                cells[i].version = Some(r.get(1)?);
            }
        }
    }
    Ok(cells)
}

/// The SQL and SQLite's query plan of a site query's count, page and grid (for
/// checking the plans at scale).
fn query_plans(c: &Connection, q: &SiteQuery) -> StoreResult<Vec<(String, Vec<String>)>> {
    let p = plan(c, q)?;
    let mut out = Vec::new();
    for sql in [
        format!("SELECT COUNT(*) FROM {}", p.body.text),
        format!(
            "SELECT m.site_id FROM {} ORDER BY m.site_id LIMIT 50 OFFSET 0",
            p.body.text
        ),
        grid_sql(&p),
    ] {
        let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
        let lines = st
            .query_map(rusqlite::params_from_iter(p.body.args.iter()), |r| {
                r.get::<_, String>(3)
            })?
            .collect::<Result<_, _>>()?;
        out.push((sql, lines));
    }
    Ok(out)
}

/// A site's newest reports (optionally of one kind), newest first.
fn site_events(
    c: &Connection,
    site_id: &str,
    kind: Option<&str>,
    limit: u32,
) -> StoreResult<Vec<Event>> {
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
                .map_err(|e| StoreError::Corrupt(format!("reports.body of {site_id}: {e}")))?,
        );
    }
    Ok(out)
}

/// A site's reports around `at`, oldest first: the `before` newest at or before it and the
/// `after` oldest after it.
fn site_events_around(
    c: &Connection,
    site_id: &str,
    at: Timestamp,
    before: u32,
    after: u32,
) -> StoreResult<Vec<Event>> {
    let at = at.as_millisecond();
    let mut bodies: Vec<String> = Vec::new();
    let mut st = c.prepare(
        "SELECT body FROM reports WHERE site_id = ?1 AND at <= ?2 \
         ORDER BY at DESC, event_id DESC LIMIT ?3",
    )?;
    let older = st.query_map(rusqlite::params![site_id, at, before], |r| r.get(0))?;
    for b in older {
        bodies.push(b?);
    }
    bodies.reverse();
    let mut st = c.prepare(
        "SELECT body FROM reports WHERE site_id = ?1 AND at > ?2 \
         ORDER BY at, event_id LIMIT ?3",
    )?;
    let newer = st.query_map(rusqlite::params![site_id, at, after], |r| r.get(0))?;
    for b in newer {
        bodies.push(b?);
    }
    bodies
        .iter()
        .map(|body| {
            serde_json::from_str(body)
                .map_err(|e| StoreError::Corrupt(format!("reports.body of {site_id}: {e}")))
        })
        .collect()
}

/// When the site last got an assignment: (sequence, rollout, release, rollback).
fn last_assignment(
    c: &Connection,
    site_id: &str,
) -> StoreResult<Option<(u64, String, String, bool)>> {
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
