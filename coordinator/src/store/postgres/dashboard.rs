//! The dashboard's read model on PostgreSQL ([`DashboardRead`]): plain SQL on the store's
//! pool. PostgreSQL's readers never block its writers (MVCC), and its planner chooses
//! among the indexes of `site_labels`, `site_versions` and `sites` by their statistics,
//! so a site query is one WHERE clause (the SQLite model plans the driving index itself).
//! This module must never write, and never runs on an async worker thread.

use ::postgres::types::ToSql;
use fleetwave_shared::protocol::Event;

use super::*;
use crate::store::read::{
    DashboardRead, FleetCounts, GridCell, SiteQuery, SiteRow, count_limit, id_prefix_range,
};

/// Reads on the store's pool.
pub struct PgReadModel {
    pool: Arc<PoolHandle>,
}

impl PgReadModel {
    pub(super) fn new(pool: Arc<PoolHandle>) -> PgReadModel {
        PgReadModel { pool }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Conn) -> StoreResult<T>) -> StoreResult<T> {
        let mut c = self.pool.get()?;
        f(&mut c)
    }
}

fn ts(ms: Option<i64>) -> Option<Timestamp> {
    ms.and_then(|m| Timestamp::from_millisecond(m).ok())
}

/// An `ILIKE` pattern that finds `text` anywhere (ASCII case-insensitive under the "C"
/// collation, as SQLite's LIKE).
fn like_anywhere(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// A site query as ` WHERE ...` over `sites AS s`, with its arguments (`$1`, `$2`, ...).
fn filter(q: &SiteQuery) -> (String, Vec<String>) {
    let mut conds = Vec::new();
    let mut args: Vec<String> = Vec::new();
    let mut arg = |v: String| {
        args.push(v);
        format!("${}", args.len())
    };
    for (k, v) in &q.labels {
        let (k, v) = (arg(k.clone()), arg(v.clone()));
        conds.push(format!(
            "EXISTS (SELECT 1 FROM site_labels WHERE site_id = s.id AND key = {k} AND value = {v})"
        ));
    }
    if let Some(v) = &q.version {
        let v = arg(v.clone());
        conds.push(format!(
            "EXISTS (SELECT 1 FROM site_versions WHERE site_id = s.id AND version = {v})"
        ));
    }
    if let Some(s) = q.search.as_ref().filter(|s| !s.is_empty()) {
        // Ids by their start through the primary key (a range), label values by any part.
        let (low, high) = id_prefix_range(s);
        let (low, high) = (arg(low), arg(high));
        let p = arg(like_anywhere(s));
        conds.push(format!(
            "s.id IN (SELECT id FROM sites WHERE id >= {low} AND id < {high} \
             UNION SELECT site_id FROM site_labels WHERE value ILIKE {p} ESCAPE '\\')"
        ));
    }
    if let Some(state) = &q.state {
        let p = arg(state.clone());
        conds.push(format!("s.state = {p}"));
    }
    let text = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    (text, args)
}

fn params(args: &[String]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
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

/// The grid's query: every matching site's cell, with its version of the stream given as
/// the last argument (when there is one).
fn grid_sql(where_: &str, stream_arg: Option<usize>) -> String {
    let (version, join) = match stream_arg {
        Some(n) => (
            "v.version",
            format!(" LEFT JOIN site_versions AS v ON v.site_id = s.id AND v.stream = ${n}"),
        ),
        None => ("NULL::text", String::new()),
    };
    format!(
        "SELECT s.id, s.state, s.healthy, s.last_seen, s.deferred_until, {version} FROM sites AS s{join}{where_} ORDER BY s.id"
    )
}

impl DashboardRead for PgReadModel {
    fn fleet_counts(&self, now: Timestamp, stale_before: Timestamp) -> StoreResult<FleetCounts> {
        self.with(|c| {
            let mut out = FleetCounts::default();
            for r in c.query("SELECT state, healthy, COUNT(*) FROM sites GROUP BY state, healthy", &[])? {
                let state: String = r.get(0);
                let healthy: Option<i64> = r.get(1);
                let n = r.get::<_, i64>(2) as u64;
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
                .query_one(
                    "SELECT COUNT(*) FROM sites WHERE state = 'active' AND deferred_until > $1",
                    &[&ms(now)],
                )?
                .get::<_, i64>(0) as u64;
            out.stale = c
                .query_one(
                    "SELECT COUNT(*) FROM sites WHERE state = 'active' AND (last_seen IS NULL OR last_seen < $1)",
                    &[&ms(stale_before)],
                )?
                .get::<_, i64>(0) as u64;
            let mut versions: Vec<(String, String, u64)> = c
                .query(
                    "SELECT v.stream, v.version, COUNT(*) FROM site_versions AS v JOIN sites AS s ON s.id = v.site_id \
                     WHERE s.state = 'active' GROUP BY v.version, v.stream",
                    &[],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get::<_, i64>(2) as u64))
                .collect();
            versions.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1))));
            versions.truncate(50);
            out.versions = versions;
            let with_version: i64 = c
                .query_one(
                    "SELECT COUNT(*) FROM sites AS s WHERE s.state = 'active' \
                     AND EXISTS (SELECT 1 FROM site_versions WHERE site_id = s.id)",
                    &[],
                )?
                .get(0);
            out.no_version = out.active.saturating_sub(with_version.max(0) as u64);
            for r in c.query(
                "SELECT id, last_seen FROM sites WHERE state = 'active' AND \
                 (last_seen IS NULL OR last_seen < $1) ORDER BY last_seen NULLS FIRST, id LIMIT 10",
                &[&ms(stale_before)],
            )? {
                out.stalest.push((r.get(0), ts(r.get(1))));
            }
            Ok(out)
        })
    }

    fn version_pairs(&self) -> StoreResult<Vec<(String, String)>> {
        self.with(|c| {
            Ok(c.query(
                "SELECT DISTINCT version, stream FROM site_versions ORDER BY version, stream LIMIT 200",
                &[],
            )?
            .iter()
            .map(|r| (r.get(1), r.get(0)))
            .collect())
        })
    }

    fn site_page(
        &self,
        q: &SiteQuery,
        offset: u64,
        limit: u64,
    ) -> StoreResult<(Vec<SiteRow>, u64)> {
        let (where_, args) = filter(q);
        self.with(|c| {
            // With a filter, counted up to one past the count limit ("more than").
            let total: i64 = if where_.is_empty() {
                c.query_one("SELECT COUNT(*) FROM sites", &[])?.get(0)
            } else {
                let most = count_limit(offset, limit) as i64 + 1;
                let mut all = params(&args);
                all.push(&most);
                c.query_one(
                    &format!(
                        "SELECT COUNT(*) FROM (SELECT 1 FROM sites AS s{where_} LIMIT ${}) AS x",
                        args.len() + 1
                    ),
                    &all,
                )?
                .get(0)
            };
            let n = args.len();
            let mut all = params(&args);
            let (limit, offset) = (limit.min(i64::MAX as u64) as i64, offset.min(i64::MAX as u64) as i64);
            all.push(&limit);
            all.push(&offset);
            let rows = c.query(
                &format!(
                    "SELECT s.id, s.labels, s.state, s.last_seen, s.installed, s.healthy, s.deferred_until \
                     FROM sites AS s{where_} ORDER BY s.id LIMIT ${} OFFSET ${}",
                    n + 1,
                    n + 2
                ),
                &all,
            )?;
            let out = collect(rows, |r| {
                let labels: String = r.get(1);
                Ok(SiteRow {
                    id: r.get(0),
                    labels: serde_json::from_str(&labels)
                        .map_err(|e| StoreError::Corrupt(format!("sites.labels: {e}")))?,
                    state: r.get(2),
                    last_seen: ts(r.get(3)),
                    versions: versions_of(r.get(4))?,
                    healthy: opt_flag(r, 5),
                    deferred_until: ts(r.get(6)),
                })
            })?;
            Ok((out, total as u64))
        })
    }

    fn grid(&self, q: &SiteQuery, stream: Option<&str>) -> StoreResult<Vec<GridCell>> {
        let (where_, mut args) = filter(q);
        let stream_arg = stream.map(|s| {
            args.push(s.to_string());
            args.len()
        });
        self.with(|c| {
            let rows = c.query(&grid_sql(&where_, stream_arg), &params(&args))?;
            Ok(rows
                .iter()
                .map(|r| GridCell {
                    id: r.get(0),
                    state: r.get(1),
                    healthy: opt_flag(r, 2),
                    last_seen_ms: r.get(3),
                    deferred_until_ms: r.get(4),
                    version: r.get(5),
                })
                .collect())
        })
    }

    fn query_plans(&self, q: &SiteQuery) -> StoreResult<Vec<(String, Vec<String>)>> {
        let (where_, args) = filter(q);
        self.with(|c| {
            let mut out = Vec::new();
            for sql in [
                format!("SELECT COUNT(*) FROM sites AS s{where_}"),
                format!("SELECT s.id FROM sites AS s{where_} ORDER BY s.id LIMIT 50 OFFSET 0"),
                grid_sql(&where_, None),
            ] {
                let lines = c
                    .query(&format!("EXPLAIN {sql}"), &params(&args))?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                out.push((sql, lines));
            }
            Ok(out)
        })
    }

    fn site_events(
        &self,
        site_id: &str,
        kind: Option<ReportKind>,
        limit: u32,
    ) -> StoreResult<Vec<Event>> {
        self.with(|c| {
            let rows = c.query(
                "SELECT body FROM reports WHERE site_id = $1 AND ($2::text IS NULL OR kind = $2) \
                 ORDER BY at DESC, event_id DESC LIMIT $3",
                &[&site_id, &kind.map(ReportKind::as_str), &i64::from(limit)],
            )?;
            collect(rows, |r| event(site_id, r.get(0)))
        })
    }

    fn site_events_around(
        &self,
        site_id: &str,
        at: Timestamp,
        before: u32,
        after: u32,
    ) -> StoreResult<Vec<Event>> {
        self.with(|c| {
            let mut bodies: Vec<String> = c
                .query(
                    "SELECT body FROM reports WHERE site_id = $1 AND at <= $2 \
                     ORDER BY at DESC, event_id DESC LIMIT $3",
                    &[&site_id, &ms(at), &i64::from(before)],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            bodies.reverse();
            bodies.extend(
                c.query(
                    "SELECT body FROM reports WHERE site_id = $1 AND at > $2 \
                     ORDER BY at, event_id LIMIT $3",
                    &[&site_id, &ms(at), &i64::from(after)],
                )?
                .iter()
                .map(|r| r.get::<_, String>(0)),
            );
            bodies.iter().map(|b| event(site_id, b)).collect()
        })
    }

    fn last_assignment(&self, site_id: &str) -> StoreResult<Option<(u64, String, String, bool)>> {
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT sequence, rollout_id, release_id, rollback FROM assignments \
                 WHERE site_id = $1 ORDER BY sequence DESC LIMIT 1",
                &[&site_id],
            )?
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1), r.get(2), flag(&r, 3))))
        })
    }
}

fn event(site_id: &str, body: &str) -> StoreResult<Event> {
    serde_json::from_str(body)
        .map_err(|e| StoreError::Corrupt(format!("reports.body of {site_id}: {e}")))
}
