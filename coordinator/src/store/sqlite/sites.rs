//! Sites: lookups, lists, labels, state, last-seen times and counts.

use rusqlite::params;

use super::*;

pub(super) fn site(s: &SqliteStore, id: &str) -> StoreResult<Option<SiteRecord>> {
    s.read(|c| get_site(c, id))
}

const BOX_SELECT: &str = "SELECT id, box_id, box_role, device_key, agent_version, enrolled_at, 1 FROM sites WHERE id = ?1
     UNION ALL SELECT site_id, box_id, role, device_key, agent_version, enrolled_at, 0 FROM site_boxes WHERE site_id = ?1
     ORDER BY 7 DESC, 2";

/// A site's boxes inside the caller's transaction or connection: its first box (the
/// `sites` row) first, then the others by box id.
pub(super) fn boxes_in(c: &rusqlite::Connection, site_id: &str) -> StoreResult<Vec<SiteBox>> {
    let mut st = c.prepare_cached(BOX_SELECT)?;
    let rows = st.query_map([site_id], box_row)?;
    collect(rows, box_record)
}

type BoxRow = (String, String, String, String, String, i64, bool);

fn box_row(r: &rusqlite::Row) -> rusqlite::Result<BoxRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn box_record(
    (site_id, box_id, role, device_key, agent_version, enrolled_at, first): BoxRow,
) -> StoreResult<SiteBox> {
    Ok(SiteBox {
        site_id,
        box_id,
        role,
        device_key,
        agent_version,
        enrolled_at: from_millis(enrolled_at)?,
        first,
    })
}

pub(super) fn site_boxes(s: &SqliteStore, site_id: &str) -> StoreResult<Vec<SiteBox>> {
    s.read(|c| boxes_in(c, site_id))
}

pub(super) fn boxes_of_multi_box_sites(s: &SqliteStore) -> StoreResult<Vec<SiteBox>> {
    s.read(|c| {
        let mut st = c.prepare(
            "SELECT id, box_id, box_role, device_key, agent_version, enrolled_at, 1 FROM sites
               WHERE id IN (SELECT site_id FROM site_boxes)
             UNION ALL SELECT site_id, box_id, role, device_key, agent_version, enrolled_at, 0 FROM site_boxes
             ORDER BY 1, 7 DESC, 2",
        )?;
        let rows = st.query_map([], box_row)?;
        collect(rows, box_record)
    })
}

pub(super) fn list_sites(s: &SqliteStore, f: &SiteFilter) -> StoreResult<Vec<SiteRecord>> {
    s.read(|c| {
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

pub(super) fn set_site_labels(
    s: &SqliteStore,
    id: &str,
    labels: &BTreeMap<String, String>,
) -> StoreResult<()> {
    s.write(|tx| {
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

pub(super) fn set_site_state(s: &SqliteStore, id: &str, state: SiteState) -> StoreResult<()> {
    s.write(|tx| {
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

pub(super) fn touch_sites(s: &SqliteStore, seen: &[(String, Timestamp)]) -> StoreResult<()> {
    if seen.is_empty() {
        return Ok(());
    }
    s.write(|tx| {
        let mut st = tx.prepare_cached(
            "UPDATE sites SET last_seen = MAX(COALESCE(last_seen, 0), ?2) WHERE id = ?1",
        )?;
        for (id, at) in seen {
            st.execute(params![id, ms(*at)])?;
        }
        Ok(())
    })
}

pub(super) fn site_keys(s: &SqliteStore) -> StoreResult<Vec<SiteKey>> {
    s.read(|c| {
        let mut st = c.prepare("SELECT id, state, device_key FROM sites")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        collect(rows, |(id, state, device_key)| {
            Ok(SiteKey {
                state: SiteState::parse(&state)
                    .ok_or_else(|| StoreError::Corrupt(format!("site {id}: state {state}")))?,
                id,
                device_key,
            })
        })
    })
}

pub(super) fn site_labels(s: &SqliteStore, stream: Option<&str>) -> StoreResult<Vec<SiteLabels>> {
    s.read(|c| {
        let mut st = c.prepare("SELECT id, state, labels, installed FROM sites ORDER BY id")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        collect(rows, |(id, state, labels, installed)| {
            SiteLabels::from_columns(id, &state, &labels, &installed, stream)
        })
    })
}

pub(super) fn count_sites_by_state(s: &SqliteStore) -> StoreResult<Vec<(SiteState, u64)>> {
    s.read(|c| {
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

pub(super) fn count_sites_rollback_failed(s: &SqliteStore) -> StoreResult<u64> {
    // Only rows in `rollback_failed` are candidates (few); a newer phase of the same
    // site in another rollout means it moved on.
    s.read(|c| {
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

/// Uses the `(state, last_seen)` index: never-seen sites, then a range per cutoff.
pub(super) fn count_sites_not_seen_since(
    s: &SqliteStore,
    cutoffs: &[Timestamp],
) -> StoreResult<Vec<u64>> {
    s.read(|c| {
        let never: i64 = c
            .prepare_cached(
                "SELECT COUNT(*) FROM sites WHERE state = 'active' AND last_seen IS NULL",
            )?
            .query_row([], |r| r.get(0))?;
        let mut st = c.prepare_cached(
            "SELECT COUNT(*) FROM sites WHERE state = 'active' AND last_seen < ?1",
        )?;
        cutoffs
            .iter()
            .map(|t| {
                let n: i64 = st.query_row([t.as_millisecond()], |r| r.get(0))?;
                Ok((never + n) as u64)
            })
            .collect()
    })
}

pub(super) fn set_site_hold(
    s: &SqliteStore,
    site_id: &str,
    hold: Option<&SiteHold>,
) -> StoreResult<bool> {
    s.write(|tx| {
        let was: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM site_holds WHERE site_id = ?1)",
                [site_id],
                |r| r.get(0),
            )?;
        match hold {
            Some(h) => {
                tx.execute(
                    "INSERT INTO site_holds (site_id, reason, held_by, held_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (site_id) DO UPDATE SET reason = ?2, held_by = ?3, held_at = ?4",
                    params![h.site_id, h.reason, h.held_by, h.held_at.as_millisecond()],
                )?;
            }
            None => {
                tx.execute("DELETE FROM site_holds WHERE site_id = ?1", [site_id])?;
            }
        }
        Ok(was)
    })
}

pub(super) fn site_holds(s: &SqliteStore) -> StoreResult<BTreeMap<String, SiteHold>> {
    s.read(|c| {
        let mut st =
            c.prepare_cached("SELECT site_id, reason, held_by, held_at FROM site_holds")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (site_id, reason, held_by, at) = row?;
            let held_at = Timestamp::from_millisecond(at)
                .map_err(|e| StoreError::Corrupt(format!("site hold time {at}: {e}")))?;
            out.insert(
                site_id.clone(),
                SiteHold {
                    site_id,
                    reason,
                    held_by,
                    held_at,
                },
            );
        }
        Ok(out)
    })
}
