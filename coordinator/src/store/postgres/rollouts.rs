//! Rollouts, their member sites and their decisions.

use super::*;

pub(super) fn create_rollout(
    s: &PgStore,
    ro: &RolloutRecord,
    members: &[RolloutSiteRecord],
) -> StoreResult<()> {
    s.write(|tx| {
        if tx
            .query_opt("SELECT 1 FROM rollouts WHERE id = $1", &[&ro.id])?
            .is_some()
        {
            return Err(StoreError::Conflict(format!(
                "rollout {} already exists",
                ro.id
            )));
        }
        let mut busy = Vec::new();
        let st =
            tx.prepare("SELECT rollout_id FROM rollout_sites WHERE site_id = $1 AND active = 1")?;
        for m in members {
            if let Some(r) = tx.query_opt(&st, &[&m.site_id])? {
                let other: String = r.get(0);
                busy.push(format!("{} (in {other})", m.site_id));
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
                "INSERT INTO rollouts ({ROLLOUT_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)"
            ),
            &[
                &ro.id,
                &ro.release_id,
                &ro.plan_source,
                &ro.plan_format,
                &ro.status.as_str(),
                &ro.status_reason,
                &to_json(&ro.waves),
                &ms(ro.created_at),
                &ro.created_by,
                &ms(ro.updated_at),
            ],
        )?;
        insert_members(tx, members)
    })
}

pub(super) fn rollout(s: &PgStore, id: &str) -> StoreResult<Option<RolloutRecord>> {
    s.read(|c| {
        c.query_opt(
            &format!("SELECT {ROLLOUT_COLS} FROM rollouts WHERE id = $1"),
            &[&id],
        )?
        .as_ref()
        .map(rollout_record)
        .transpose()
    })
}

pub(super) fn list_rollouts(s: &PgStore) -> StoreResult<Vec<RolloutRecord>> {
    s.read(|c| {
        let rows = c.query(
            &format!("SELECT {ROLLOUT_COLS} FROM rollouts ORDER BY created_at, id"),
            &[],
        )?;
        collect(rows, rollout_record)
    })
}

pub(super) fn update_rollout(
    s: &PgStore,
    ro: &RolloutRecord,
    decisions: &[DecisionRecord],
) -> StoreResult<()> {
    s.write(|tx| {
        let n = tx.execute(
            "UPDATE rollouts SET status = $2, status_reason = $3, waves = $4, updated_at = $5 WHERE id = $1",
            &[&ro.id, &ro.status.as_str(), &ro.status_reason, &to_json(&ro.waves), &ms(ro.updated_at)],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no rollout {}", ro.id)));
        }
        if !ro.status.is_active() {
            tx.execute("UPDATE rollout_sites SET active = 0 WHERE rollout_id = $1", &[&ro.id])?;
            tx.execute("DELETE FROM leases WHERE rollout_id = $1", &[&ro.id])?;
            tx.execute("DELETE FROM webhook_site_silences WHERE rollout_id = $1", &[&ro.id])?;
        }
        insert_decisions(tx, decisions)
    })
}

/// The columns of a rollout site read with its site (`rs` and `s`).
pub(super) fn rs_query(filter: &str) -> String {
    format!(
        "SELECT {RS_COLS} FROM rollout_sites rs JOIN sites s ON s.id = rs.site_id WHERE {filter}"
    )
}

pub(super) fn rollout_sites(s: &PgStore, rollout_id: &str) -> StoreResult<Vec<RolloutSiteRecord>> {
    s.read(|c| {
        let rows = c.query(
            &format!("{} ORDER BY rs.site_id", rs_query("rs.rollout_id = $1")),
            &[&rollout_id],
        )?;
        collect(rows, rs_record)
    })
}

pub(super) fn rollout_site(
    s: &PgStore,
    rollout_id: &str,
    site_id: &str,
) -> StoreResult<Option<RolloutSiteRecord>> {
    s.read(|c| {
        c.query_opt(
            &rs_query("rs.rollout_id = $1 AND rs.site_id = $2"),
            &[&rollout_id, &site_id],
        )?
        .as_ref()
        .map(rs_record)
        .transpose()
    })
}

pub(super) fn add_rollout_sites(
    s: &PgStore,
    members: &[RolloutSiteRecord],
) -> StoreResult<Vec<String>> {
    s.write(|tx| {
        let mut free = Vec::new();
        let st = tx.prepare(
            "SELECT 1 FROM rollout_sites WHERE site_id = $1 AND (active = 1 OR rollout_id = $2)",
        )?;
        for m in members {
            if tx.query_opt(&st, &[&m.site_id, &m.rollout_id])?.is_none() {
                free.push(m.clone());
            }
        }
        insert_members(tx, &free)?;
        Ok(free.into_iter().map(|m| m.site_id).collect())
    })
}

pub(super) fn set_rollout_site_skipped(
    s: &PgStore,
    rollout_id: &str,
    site_id: &str,
) -> StoreResult<()> {
    s.write(|tx| {
        let n = tx.execute(
            "UPDATE rollout_sites SET skipped = 1 WHERE rollout_id = $1 AND site_id = $2",
            &[&rollout_id, &site_id],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!(
                "site {site_id} is not part of rollout {rollout_id}"
            )));
        }
        tx.execute(
            "DELETE FROM leases WHERE rollout_id = $1 AND site_id = $2",
            &[&rollout_id, &site_id],
        )?;
        Ok(())
    })
}

pub(super) fn reset_rollout_sites_for_retry(
    s: &PgStore,
    rollout_id: &str,
    site_ids: &[String],
) -> StoreResult<Vec<u32>> {
    s.write(|tx| {
        let reset = tx.prepare(
            "UPDATE rollout_sites SET assigned_at = NULL, leased_at = NULL, phase = NULL,
                 phase_at = NULL, detail = NULL, committed_at = NULL, failed_at = NULL,
                 failure = NULL, rolled_back = 0, first_unhealthy_after_commit_at = NULL,
                 retry_at = NULL, attempts = attempts + 1
             WHERE rollout_id = $1 AND site_id = $2
             RETURNING attempts",
        )?;
        let unlease = tx.prepare("DELETE FROM leases WHERE rollout_id = $1 AND site_id = $2")?;
        let mut attempts = Vec::with_capacity(site_ids.len());
        for site_id in site_ids {
            let Some(row) = tx.query_opt(&reset, &[&rollout_id, site_id])? else {
                return Err(StoreError::NotFound(format!(
                    "site {site_id} is not part of rollout {rollout_id}"
                )));
            };
            tx.execute(&unlease, &[&rollout_id, site_id])?;
            // A site of several boxes: each box starts the attempt afresh too.
            for (box_id, facts) in super::reports::read_box_facts(&mut *tx, rollout_id, site_id)? {
                super::reports::write_box_facts(
                    &mut *tx,
                    rollout_id,
                    site_id,
                    &box_id,
                    &facts.for_new_attempt(),
                )?;
            }
            attempts.push(u32_col(&row, 0)?);
        }
        Ok(attempts)
    })
}

/// Sets one column of member sites of a rollout, each to its value; NotFound for a site
/// that is not a member.
fn set_member_times(
    s: &PgStore,
    rollout_id: &str,
    column: &str,
    values: &[(&String, i64)],
) -> StoreResult<()> {
    let sql =
        format!("UPDATE rollout_sites SET {column} = $3 WHERE rollout_id = $1 AND site_id = $2");
    s.write(|tx| {
        let st = tx.prepare(&sql)?;
        for (site_id, at) in values {
            if tx.execute(&st, &[&rollout_id, site_id, at])? == 0 {
                return Err(StoreError::NotFound(format!(
                    "site {site_id} is not part of rollout {rollout_id}"
                )));
            }
        }
        Ok(())
    })
}

pub(super) fn serve_by_bundle(
    s: &PgStore,
    rollout_id: &str,
    sites: &[String],
    until: Timestamp,
) -> StoreResult<()> {
    let values: Vec<(&String, i64)> = sites.iter().map(|id| (id, ms(until))).collect();
    set_member_times(s, rollout_id, "bundle_until", &values)
}

pub(super) fn schedule_rollout_site_retries(
    s: &PgStore,
    rollout_id: &str,
    retries: &[(String, Timestamp)],
) -> StoreResult<()> {
    if retries.is_empty() {
        return Ok(());
    }
    let values: Vec<(&String, i64)> = retries.iter().map(|(id, at)| (id, ms(*at))).collect();
    set_member_times(s, rollout_id, "retry_at", &values)
}

pub(super) fn set_rollout_site_waves(
    s: &PgStore,
    rollout_id: &str,
    moves: &[(String, u32)],
) -> StoreResult<Vec<String>> {
    s.write(|tx| {
        let st = tx.prepare(
            "UPDATE rollout_sites SET wave = $3 WHERE rollout_id = $1 AND site_id = $2 \
             AND assigned_at IS NULL AND leased_at IS NULL",
        )?;
        let mut moved = Vec::new();
        for (site_id, wave) in moves {
            if tx.execute(&st, &[&rollout_id, site_id, &i64::from(*wave)])? > 0 {
                moved.push(site_id.clone());
            }
        }
        Ok(moved)
    })
}

pub(super) fn active_rollout_of_site(s: &PgStore, site_id: &str) -> StoreResult<Option<String>> {
    s.read(|c| {
        Ok(c.query_opt(
            "SELECT rollout_id FROM rollout_sites WHERE site_id = $1 AND active = 1",
            &[&site_id],
        )?
        .map(|r| r.get(0)))
    })
}

pub(super) fn add_decisions(s: &PgStore, decisions: &[DecisionRecord]) -> StoreResult<()> {
    if decisions.is_empty() {
        return Ok(());
    }
    s.write(|tx| insert_decisions(tx, decisions))
}

pub(super) fn decisions(s: &PgStore, rollout_id: &str) -> StoreResult<Vec<DecisionRecord>> {
    s.read(|c| {
        let rows = c.query(
            "SELECT id, rollout_id, at, kind, wave, reason FROM decisions WHERE rollout_id = $1 ORDER BY id",
            &[&rollout_id],
        )?;
        collect(rows, |r| {
            Ok(DecisionRecord {
                id: r.get(0),
                rollout_id: r.get(1),
                at: from_millis(r.get(2))?,
                kind: r.get(3),
                wave: r
                    .get::<_, Option<i64>>(4)
                    .map(|w| u32::try_from(w).map_err(|_| StoreError::Corrupt(format!("decision wave {w}"))))
                    .transpose()?,
                reason: r.get(5),
            })
        })
    })
}

pub(super) fn insert_decisions(
    tx: &mut Transaction,
    decisions: &[DecisionRecord],
) -> StoreResult<()> {
    let st = tx.prepare(
        "INSERT INTO decisions (rollout_id, at, kind, wave, reason) VALUES ($1,$2,$3,$4,$5)",
    )?;
    for d in decisions {
        tx.execute(
            &st,
            &[
                &d.rollout_id,
                &ms(d.at),
                &d.kind,
                &d.wave.map(i64::from),
                &d.reason,
            ],
        )?;
    }
    // The webhook events these decisions cause, in the same transaction.
    for d in decisions {
        if !super::webhooks::any_endpoint(tx)? {
            break;
        }
        let release: Option<String> = tx
            .query_opt(
                "SELECT release_id FROM rollouts WHERE id = $1",
                &[&d.rollout_id],
            )?
            .map(|r| r.get(0));
        if let Some(event) =
            crate::webhooks::WebhookEvent::from_decision(d, release.as_deref().unwrap_or(""))
        {
            super::webhooks::enqueue(tx, &event)?;
        }
    }
    Ok(())
}

pub(super) fn insert_members(
    tx: &mut Transaction,
    members: &[RolloutSiteRecord],
) -> StoreResult<()> {
    let st = tx.prepare(
        "INSERT INTO rollout_sites (rollout_id, site_id, wave, active, skipped, previous_release_id) VALUES ($1,$2,$3,1,0,$4)",
    )?;
    for m in members {
        tx.execute(
            &st,
            &[
                &m.rollout_id,
                &m.site_id,
                &i64::from(m.wave),
                &m.previous_release_id,
            ],
        )?;
    }
    Ok(())
}
