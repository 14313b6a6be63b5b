//! Channels and the sites off a stream's version, which convergence reads.

use super::access::insert_audit;
use super::*;

const COLUMNS: &str = "name, stream, selector, release_id, max_concurrent, failure_budget, \
                       \"window\", set_by, set_at, set_reason, created_at, created_by";

fn record(r: &Row) -> StoreResult<ChannelRecord> {
    let name: String = r.get(0);
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::Corrupt(format!("channel {name}: {what}: {e}"))
    };
    let selector: String = r.get(2);
    let window: Option<String> = r.get(6);
    Ok(ChannelRecord {
        selector: serde_json::from_str(&selector).map_err(|e| corrupt("selector", &e))?,
        window: window
            .map(|w| serde_json::from_str(&w))
            .transpose()
            .map_err(|e| corrupt("window", &e))?,
        max_concurrent: u32::try_from(r.get::<_, i64>(4))
            .map_err(|e| corrupt("max_concurrent", &e))?,
        failure_budget: u32::try_from(r.get::<_, i64>(5))
            .map_err(|e| corrupt("failure_budget", &e))?,
        set_at: from_millis(r.get(8))?,
        created_at: from_millis(r.get(10))?,
        stream: r.get(1),
        release_id: r.get(3),
        set_by: r.get(7),
        set_reason: r.get(9),
        created_by: r.get(11),
        name,
    })
}

pub(super) fn list(s: &PgStore) -> StoreResult<Vec<ChannelRecord>> {
    s.read(|c| {
        let rows = c.query(
            &format!("SELECT {COLUMNS} FROM channels ORDER BY name"),
            &[],
        )?;
        collect(rows, record)
    })
}

pub(super) fn put(s: &PgStore, ch: &ChannelRecord, audit: &AuditRecord) -> StoreResult<()> {
    s.write(|tx| {
        if let Some(release) = &ch.release_id {
            let stream: Option<String> = tx
                .query_opt("SELECT name FROM releases WHERE id = $1", &[release])?
                .map(|r| r.get(0));
            match stream {
                None => return Err(StoreError::NotFound(format!("release {release}"))),
                Some(s) if s != ch.stream => {
                    return Err(StoreError::Conflict(format!(
                        "release {release} is of stream {s}, channel {} is of stream {}",
                        ch.name, ch.stream
                    )));
                }
                Some(_) => {}
            }
        }
        tx.execute(
            &format!(
                "INSERT INTO channels ({COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)
                 ON CONFLICT (name) DO UPDATE SET stream = $2, selector = $3, release_id = $4,
                   max_concurrent = $5, failure_budget = $6, \"window\" = $7, set_by = $8,
                   set_at = $9, set_reason = $10"
            ),
            &[
                &ch.name,
                &ch.stream,
                &to_json(&ch.selector),
                &ch.release_id,
                &i64::from(ch.max_concurrent),
                &i64::from(ch.failure_budget),
                &ch.window.as_ref().map(to_json),
                &ch.set_by,
                &ms(ch.set_at),
                &ch.set_reason,
                &ms(ch.created_at),
                &ch.created_by,
            ],
        )?;
        insert_audit(tx, audit)
    })
}

pub(super) fn delete(s: &PgStore, name: &str, audit: &AuditRecord) -> StoreResult<()> {
    s.write(|tx| {
        if tx.execute("DELETE FROM channels WHERE name = $1", &[&name])? == 0 {
            return Err(StoreError::NotFound(format!("channel {name}")));
        }
        insert_audit(tx, audit)
    })
}

/// A row of both off-version queries: id, labels, version, last seen, deferred until,
/// the active rollout.
fn off_site(r: &Row) -> StoreResult<OffVersionSite> {
    Ok(OffVersionSite {
        id: r.get(0),
        labels: json_map(r.get(1))?,
        version: r.get(2),
        last_seen: opt_ts(r.get(3))?,
        deferred_until: opt_ts(r.get(4))?,
        rollout_id: r.get(5),
    })
}

pub(super) fn sites_off_version(
    s: &PgStore,
    stream: &str,
    version: &str,
    free_only: bool,
    after: &str,
    limit: usize,
) -> StoreResult<Vec<OffVersionSite>> {
    let sql = format!(
        "SELECT * FROM (
           SELECT s.id, s.labels, v.version, s.last_seen, s.deferred_until,
                  (SELECT rs.rollout_id FROM rollout_sites AS rs
                    WHERE rs.site_id = s.id AND rs.active = 1) AS busy
             FROM sites AS s
             LEFT JOIN site_versions AS v ON v.site_id = s.id AND v.stream = $1
            WHERE s.state = 'active' AND s.id > $3
              AND (v.version IS NULL OR v.version <> $2)) AS off
          {}
          ORDER BY id LIMIT $4",
        if free_only { "WHERE busy IS NULL" } else { "" }
    );
    s.read(|c| {
        let rows = c.query(
            &sql,
            &[
                &stream,
                &version,
                &after,
                &(limit.min(i64::MAX as usize) as i64),
            ],
        )?;
        collect(rows, off_site)
    })
}

pub(super) fn sites_off_version_indexed(
    s: &PgStore,
    stream: &str,
    version: &str,
    free_only: bool,
) -> StoreResult<Vec<OffVersionSite>> {
    // Two ranges of `site_versions_by_stream` around the version, and the partial index
    // `sites_nothing_installed`: only the sites off the version are read.
    const SQL: &str = "SELECT s.id, s.labels, c.version, s.last_seen, s.deferred_until, c.busy
           FROM (SELECT c.id, c.version,
                        (SELECT rs.rollout_id FROM rollout_sites AS rs
                          WHERE rs.site_id = c.id AND rs.active = 1) AS busy
                   FROM (SELECT site_id AS id, version FROM site_versions
                          WHERE stream = $1 AND version < $2
                         UNION ALL
                         SELECT site_id, version FROM site_versions
                          WHERE stream = $1 AND version > $2
                         UNION ALL
                         SELECT id, NULL FROM sites WHERE state = 'active' AND installed = '{}') AS c) AS c
           JOIN sites AS s ON s.id = c.id
          WHERE s.state = 'active' AND (NOT $3 OR c.busy IS NULL)
          ORDER BY s.id";
    s.read(|c| {
        let rows = c.query(SQL, &[&stream, &version, &free_only])?;
        collect(rows, off_site)
    })
}
