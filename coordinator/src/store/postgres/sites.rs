//! Sites: lookups, lists, labels, state, last-seen times, holds and counts.

use ::postgres::types::ToSql;

use super::*;

pub(super) fn site(s: &PgStore, id: &str) -> StoreResult<Option<SiteRecord>> {
    s.read(|c| get_site(&mut **c, id))
}

const BOX_SELECT: &str = "SELECT id, box_id, box_role, device_key, agent_version, enrolled_at, TRUE AS first FROM sites WHERE id = $1
     UNION ALL SELECT site_id, box_id, role, device_key, agent_version, enrolled_at, FALSE FROM site_boxes WHERE site_id = $1
     ORDER BY first DESC, box_id";

/// A site's boxes inside the caller's transaction or connection: its first box (the
/// `sites` row) first, then the others by box id.
pub(super) fn boxes_in(
    c: &mut impl ::postgres::GenericClient,
    site_id: &str,
) -> StoreResult<Vec<SiteBox>> {
    c.query(BOX_SELECT, &[&site_id])?
        .iter()
        .map(box_record)
        .collect()
}

fn box_record(r: &Row) -> StoreResult<SiteBox> {
    Ok(SiteBox {
        site_id: r.get(0),
        box_id: r.get(1),
        role: r.get(2),
        device_key: r.get(3),
        agent_version: r.get(4),
        enrolled_at: from_millis(r.get(5))?,
        first: r.get(6),
    })
}

pub(super) fn site_boxes(s: &PgStore, site_id: &str) -> StoreResult<Vec<SiteBox>> {
    s.read(|c| boxes_in(&mut **c, site_id))
}

pub(super) fn boxes_of_multi_box_sites(s: &PgStore) -> StoreResult<Vec<SiteBox>> {
    s.read(|c| {
        (**c).query(
            "SELECT id, box_id, box_role, device_key, agent_version, enrolled_at, TRUE AS first FROM sites
               WHERE id IN (SELECT site_id FROM site_boxes)
             UNION ALL SELECT site_id, box_id, role, device_key, agent_version, enrolled_at, FALSE FROM site_boxes
             ORDER BY 1, first DESC, 2",
            &[],
        )?
        .iter()
        .map(box_record)
        .collect()
    })
}

pub(super) fn list_sites(s: &PgStore, f: &SiteFilter) -> StoreResult<Vec<SiteRecord>> {
    s.read(|c| {
        let mut sql = format!("SELECT {SITE_COLS} FROM sites WHERE id > $1");
        let mut args: Vec<String> = vec![f.after.clone().unwrap_or_default()];
        if let Some(state) = f.state {
            args.push(state.as_str().to_string());
            sql.push_str(&format!(" AND state = ${}", args.len()));
        }
        for (k, v) in &f.labels {
            args.push(k.replace('"', ""));
            let kp = args.len();
            args.push(v.clone());
            sql.push_str(&format!(" AND (labels::jsonb ->> ${kp}) = ${}", args.len()));
        }
        if let Some(version) = &f.version {
            args.push(version.clone());
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM jsonb_each(sites.installed::jsonb) AS j WHERE j.value ->> 'version' = ${})",
                args.len()
            ));
        }
        sql.push_str(&format!(" ORDER BY id LIMIT {}", f.limit.max(1)));
        let params: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        let rows = c.query(&sql, &params)?;
        collect(rows, site_record)
    })
}

pub(super) fn set_site_labels(
    s: &PgStore,
    id: &str,
    labels: &BTreeMap<String, String>,
) -> StoreResult<()> {
    s.write(|tx| {
        let n = tx.execute(
            "UPDATE sites SET labels = $2 WHERE id = $1",
            &[&id, &to_json(labels)],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no site {id}")));
        }
        Ok(())
    })
}

pub(super) fn set_site_state(s: &PgStore, id: &str, state: SiteState) -> StoreResult<()> {
    s.write(|tx| {
        let n = tx.execute(
            "UPDATE sites SET state = $2 WHERE id = $1",
            &[&id, &state.as_str()],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no site {id}")));
        }
        Ok(())
    })
}

pub(super) fn touch_sites(s: &PgStore, seen: &[(String, Timestamp)]) -> StoreResult<()> {
    if seen.is_empty() {
        return Ok(());
    }
    // In id order, so that two batches touching the same sites never deadlock. READ
    // COMMITTED: `GREATEST` is the whole rule and needs no snapshot; under SERIALIZABLE the
    // flush of thousands of sites conflicted with report groups and failed.
    let mut seen: Vec<(&str, i64)> = seen.iter().map(|(id, at)| (id.as_str(), ms(*at))).collect();
    seen.sort();
    s.write_committed(|tx| {
        let st = tx.prepare(
            "UPDATE sites SET last_seen = GREATEST(COALESCE(last_seen, 0), $2) WHERE id = $1",
        )?;
        for (id, at) in &seen {
            tx.execute(&st, &[id, at])?;
        }
        Ok(())
    })
}

pub(super) fn site_keys(s: &PgStore) -> StoreResult<Vec<SiteKey>> {
    s.read(|c| {
        let rows = c.query("SELECT id, state, device_key FROM sites", &[])?;
        collect(rows, |r| {
            let (id, state): (String, String) = (r.get(0), r.get(1));
            Ok(SiteKey {
                state: SiteState::parse(&state)
                    .ok_or_else(|| StoreError::Corrupt(format!("site {id}: state {state}")))?,
                id,
                device_key: r.get(2),
            })
        })
    })
}

pub(super) fn site_labels(s: &PgStore, stream: Option<&str>) -> StoreResult<Vec<SiteLabels>> {
    s.read(|c| {
        let rows = c.query(
            "SELECT id, state, labels, installed FROM sites ORDER BY id",
            &[],
        )?;
        collect(rows, |r| {
            SiteLabels::from_columns(r.get(0), r.get(1), r.get(2), r.get(3), stream)
        })
    })
}

pub(super) fn count_sites_by_state(s: &PgStore) -> StoreResult<Vec<(SiteState, u64)>> {
    s.read(|c| {
        let rows = c.query(
            "SELECT state, COUNT(*) FROM sites GROUP BY state ORDER BY state",
            &[],
        )?;
        collect(rows, |r| {
            let state: String = r.get(0);
            Ok((
                SiteState::parse(&state)
                    .ok_or_else(|| StoreError::Corrupt(format!("site state {state}")))?,
                r.get::<_, i64>(1) as u64,
            ))
        })
    })
}

pub(super) fn count_sites_rollback_failed(s: &PgStore) -> StoreResult<u64> {
    // Only rows in `rollback_failed` are candidates (few); a newer phase of the same
    // site in another rollout means it moved on.
    s.read(|c| {
        let n: i64 = c
            .query_one(
                "SELECT COUNT(DISTINCT rs.site_id) FROM rollout_sites rs WHERE rs.phase = 'rollback_failed'
                   AND NOT EXISTS (SELECT 1 FROM rollout_sites later
                                   WHERE later.site_id = rs.site_id AND later.phase_at > rs.phase_at)",
                &[],
            )?
            .get(0);
        Ok(n as u64)
    })
}

/// Uses the `(state, last_seen)` index: never-seen sites, then a range per cutoff.
pub(super) fn count_sites_not_seen_since(
    s: &PgStore,
    cutoffs: &[Timestamp],
) -> StoreResult<Vec<u64>> {
    s.read(|c| {
        let never: i64 = c
            .query_one(
                "SELECT COUNT(*) FROM sites WHERE state = 'active' AND last_seen IS NULL",
                &[],
            )?
            .get(0);
        let st =
            c.prepare("SELECT COUNT(*) FROM sites WHERE state = 'active' AND last_seen < $1")?;
        cutoffs
            .iter()
            .map(|t| {
                let n: i64 = c.query_one(&st, &[&ms(*t)])?.get(0);
                Ok((never + n) as u64)
            })
            .collect()
    })
}

pub(super) fn set_site_hold(
    s: &PgStore,
    site_id: &str,
    hold: Option<&SiteHold>,
) -> StoreResult<bool> {
    s.write(|tx| {
        let was: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM site_holds WHERE site_id = $1)",
                &[&site_id],
            )?
            .get(0);
        match hold {
            Some(h) => {
                tx.execute(
                    "INSERT INTO site_holds (site_id, reason, held_by, held_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (site_id) DO UPDATE SET reason = $2, held_by = $3, held_at = $4",
                    &[&h.site_id, &h.reason, &h.held_by, &ms(h.held_at)],
                )?;
            }
            None => {
                tx.execute("DELETE FROM site_holds WHERE site_id = $1", &[&site_id])?;
            }
        }
        Ok(was)
    })
}

pub(super) fn site_holds(s: &PgStore) -> StoreResult<BTreeMap<String, SiteHold>> {
    s.read(|c| {
        let rows = c.query(
            "SELECT site_id, reason, held_by, held_at FROM site_holds",
            &[],
        )?;
        let mut out = BTreeMap::new();
        for r in rows {
            let site_id: String = r.get(0);
            let at: i64 = r.get(3);
            let held_at = Timestamp::from_millisecond(at)
                .map_err(|e| StoreError::Corrupt(format!("site hold time {at}: {e}")))?;
            out.insert(
                site_id.clone(),
                SiteHold {
                    site_id,
                    reason: r.get(1),
                    held_by: r.get(2),
                    held_at,
                },
            );
        }
        Ok(out)
    })
}
