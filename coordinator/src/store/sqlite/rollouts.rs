//! Rollouts, their member sites and their decisions.

use rusqlite::{OptionalExtension, params};

use super::*;

pub(super) fn create_rollout(
    s: &SqliteStore,
    ro: &RolloutRecord,
    members: &[RolloutSiteRecord],
) -> StoreResult<()> {
    s.write(|tx| {
        if tx
            .query_row("SELECT 1 FROM rollouts WHERE id = ?1", [&ro.id], |_| Ok(()))
            .optional()?
            .is_some()
        {
            return Err(StoreError::Conflict(format!(
                "rollout {} already exists",
                ro.id
            )));
        }
        let mut busy = Vec::new();
        {
            let mut st = tx.prepare_cached(
                "SELECT rollout_id FROM rollout_sites WHERE site_id = ?1 AND active = 1",
            )?;
            for m in members {
                if let Some(other) = st
                    .query_row([&m.site_id], |r| r.get::<_, String>(0))
                    .optional()?
                {
                    busy.push(format!("{} (in {other})", m.site_id));
                }
            }
        }
        if !busy.is_empty() {
            let more = if busy.len() > 10 {
                format!(" and {} more", busy.len() - 10)
            } else {
                String::new()
            };
            busy.truncate(10);
            return Err(StoreError::Conflict(format!(
                "sites already belong to an active rollout (one active rollout per site): {}{more}",
                busy.join(", ")
            )));
        }
        tx.execute(
            &format!(
                "INSERT INTO rollouts ({ROLLOUT_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)"
            ),
            params![
                ro.id,
                ro.release_id,
                ro.plan_source,
                ro.plan_format,
                ro.status.as_str(),
                ro.status_reason,
                to_json(&ro.waves),
                ms(ro.created_at),
                ro.created_by,
                ms(ro.updated_at)
            ],
        )?;
        insert_members(tx, members)?;
        Ok(())
    })
}

pub(super) fn rollout(s: &SqliteStore, id: &str) -> StoreResult<Option<RolloutRecord>> {
    s.read(|c| {
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

pub(super) fn list_rollouts(s: &SqliteStore) -> StoreResult<Vec<RolloutRecord>> {
    s.read(|c| {
        let mut st = c.prepare(&format!(
            "SELECT {ROLLOUT_COLS} FROM rollouts ORDER BY created_at, id"
        ))?;
        let rows = st.query_map([], rollout_row)?;
        collect(rows, rollout_record)
    })
}

pub(super) fn update_rollout(
    s: &SqliteStore,
    ro: &RolloutRecord,
    decisions: &[DecisionRecord],
) -> StoreResult<()> {
    s.write(|tx| {
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
            tx.execute(
                "DELETE FROM webhook_site_silences WHERE rollout_id = ?1",
                [&ro.id],
            )?;
        }
        insert_decisions(tx, decisions)
    })
}

pub(super) fn rollout_sites(
    s: &SqliteStore,
    rollout_id: &str,
) -> StoreResult<Vec<RolloutSiteRecord>> {
    s.read(|c| {
        let mut st = c.prepare(&format!("SELECT {RS_COLS} FROM rollout_sites rs JOIN sites s ON s.id = rs.site_id WHERE rs.rollout_id = ?1 ORDER BY rs.site_id"))?;
        let rows = st.query_map([rollout_id], rs_record)?;
        collect(rows, Ok)
    })
}

pub(super) fn rollout_site(
    s: &SqliteStore,
    rollout_id: &str,
    site_id: &str,
) -> StoreResult<Option<RolloutSiteRecord>> {
    s.read(|c| {
        let mut st = c.prepare_cached(&format!("SELECT {RS_COLS} FROM rollout_sites rs JOIN sites s ON s.id = rs.site_id WHERE rs.rollout_id = ?1 AND rs.site_id = ?2"))?;
        Ok(st.query_row([rollout_id, site_id], rs_record).optional()?)
    })
}

pub(super) fn add_rollout_sites(
    s: &SqliteStore,
    members: &[RolloutSiteRecord],
) -> StoreResult<Vec<String>> {
    s.write(|tx| {
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

pub(super) fn set_rollout_site_skipped(
    s: &SqliteStore,
    rollout_id: &str,
    site_id: &str,
) -> StoreResult<()> {
    s.write(|tx| {
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

pub(super) fn reset_rollout_sites_for_retry(
    s: &SqliteStore,
    rollout_id: &str,
    site_ids: &[String],
) -> StoreResult<Vec<u32>> {
    s.write(|tx| {
        let mut reset = tx.prepare_cached(
            "UPDATE rollout_sites SET assigned_at = NULL, leased_at = NULL, phase = NULL,
                 phase_at = NULL, detail = NULL, committed_at = NULL, failed_at = NULL,
                 failure = NULL, rolled_back = 0, first_unhealthy_after_commit_at = NULL,
                 retry_at = NULL, attempts = attempts + 1
             WHERE rollout_id = ?1 AND site_id = ?2
             RETURNING attempts",
        )?;
        let mut unlease =
            tx.prepare_cached("DELETE FROM leases WHERE rollout_id = ?1 AND site_id = ?2")?;
        let mut attempts = Vec::with_capacity(site_ids.len());
        for site_id in site_ids {
            let Some(n) = reset
                .query_row(params![rollout_id, site_id], |r| r.get::<_, u32>(0))
                .optional()?
            else {
                return Err(StoreError::NotFound(format!(
                    "site {site_id} is not part of rollout {rollout_id}"
                )));
            };
            unlease.execute(params![rollout_id, site_id])?;
            // A site of several boxes: each box starts the attempt afresh too.
            for (box_id, facts) in super::reports::read_box_facts(tx, rollout_id, site_id)? {
                super::reports::write_box_facts(
                    tx,
                    rollout_id,
                    site_id,
                    &box_id,
                    &facts.for_new_attempt(),
                )?;
            }
            attempts.push(n);
        }
        Ok(attempts)
    })
}

pub(super) fn serve_by_bundle(
    s: &SqliteStore,
    rollout_id: &str,
    sites: &[String],
    until: Timestamp,
) -> StoreResult<()> {
    s.write(|tx| {
        let mut st = tx.prepare_cached(
            "UPDATE rollout_sites SET bundle_until = ?3 WHERE rollout_id = ?1 AND site_id = ?2",
        )?;
        for site_id in sites {
            if st.execute(params![rollout_id, site_id, ms(until)])? == 0 {
                return Err(StoreError::NotFound(format!(
                    "site {site_id} is not part of rollout {rollout_id}"
                )));
            }
        }
        Ok(())
    })
}

pub(super) fn schedule_rollout_site_retries(
    s: &SqliteStore,
    rollout_id: &str,
    retries: &[(String, Timestamp)],
) -> StoreResult<()> {
    if retries.is_empty() {
        return Ok(());
    }
    s.write(|tx| {
        let mut st = tx.prepare_cached(
            "UPDATE rollout_sites SET retry_at = ?3 WHERE rollout_id = ?1 AND site_id = ?2",
        )?;
        for (site_id, at) in retries {
            if st.execute(params![rollout_id, site_id, ms(*at)])? == 0 {
                return Err(StoreError::NotFound(format!(
                    "site {site_id} is not part of rollout {rollout_id}"
                )));
            }
        }
        Ok(())
    })
}

pub(super) fn set_rollout_site_waves(
    s: &SqliteStore,
    rollout_id: &str,
    moves: &[(String, u32)],
) -> StoreResult<Vec<String>> {
    s.write(|tx| {
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

pub(super) fn active_rollout_of_site(
    s: &SqliteStore,
    site_id: &str,
) -> StoreResult<Option<String>> {
    s.read(|c| {
        Ok(c.query_row(
            "SELECT rollout_id FROM rollout_sites WHERE site_id = ?1 AND active = 1",
            [site_id],
            |r| r.get(0),
        )
        .optional()?)
    })
}

pub(super) fn add_decisions(s: &SqliteStore, decisions: &[DecisionRecord]) -> StoreResult<()> {
    if decisions.is_empty() {
        return Ok(());
    }
    s.write(|tx| insert_decisions(tx, decisions))
}

pub(super) fn decisions(s: &SqliteStore, rollout_id: &str) -> StoreResult<Vec<DecisionRecord>> {
    s.read(|c| {
        let mut st = c.prepare("SELECT id, rollout_id, at, kind, wave, reason FROM decisions WHERE rollout_id = ?1 ORDER BY id")?;
        let rows = st.query_map([rollout_id], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?, r.get::<_, Option<u32>>(4)?, r.get::<_, String>(5)?))
        })?;
        collect(rows, |(id, rollout_id, at, kind, wave, reason)| {
            Ok(DecisionRecord { id, rollout_id, at: from_millis(at)?, kind, wave, reason })
        })
    })
}

pub(super) fn insert_decisions(
    tx: &rusqlite::Transaction,
    decisions: &[DecisionRecord],
) -> StoreResult<()> {
    let mut st = tx.prepare_cached(
        "INSERT INTO decisions (rollout_id, at, kind, wave, reason) VALUES (?1,?2,?3,?4,?5)",
    )?;
    for d in decisions {
        st.execute(params![d.rollout_id, ms(d.at), d.kind, d.wave, d.reason])?;
    }
    // The webhook events these decisions cause, in the same transaction.
    for d in decisions {
        if !super::webhooks::any_endpoint(tx)? {
            break;
        }
        let release: Option<String> = tx
            .prepare_cached("SELECT release_id FROM rollouts WHERE id = ?1")?
            .query_row([&d.rollout_id], |r| r.get(0))
            .optional()?;
        if let Some(event) =
            crate::webhooks::WebhookEvent::from_decision(d, release.as_deref().unwrap_or(""))
        {
            super::webhooks::enqueue(tx, &event)?;
        }
    }
    Ok(())
}

pub(super) fn insert_members(
    tx: &rusqlite::Transaction,
    members: &[RolloutSiteRecord],
) -> StoreResult<()> {
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
