//! The report path on PostgreSQL: stores each new event once (the primary key of
//! `reports` decides, across replicas) and folds it into the site's facts with
//! [`super::fold`]'s rules, as the SQLite backend does.

use fleetwave_shared::protocol::EventBody;

use super::*;

/// A site's ($1) first unhealthy heartbeat at or after $2: what a commit looks for,
/// answered from the partial index `reports_unhealthy`.
pub const FIRST_UNHEALTHY_SQL: &str = "SELECT MIN(at) FROM reports WHERE site_id = $1 AND kind = 'health' AND at >= $2 AND (body::jsonb ->> 'healthy') = 'false'";

/// Deletes at most $3 reports of kind $1 received before $2, oldest first, through the
/// index `reports_by_kind_received`.
pub const PRUNE_REPORTS_SQL: &str = "DELETE FROM reports WHERE (site_id, event_id) IN (SELECT site_id, event_id FROM reports WHERE kind = $1 AND received_at < $2 ORDER BY received_at LIMIT $3)";

/// The report path's statements, prepared once per transaction (a group of hundreds of
/// batches) instead of once per event: each saves a round trip to the server.
struct Stmts {
    insert: Statement,
    row_named: Statement,
    row_active: Statement,
    read_back: Statement,
    write_row: Statement,
    site_facts: Statement,
    write_site_facts: Statement,
    installed: Statement,
    write_installed: Statement,
    first_unhealthy: Statement,
    unlease: Statement,
}

impl Stmts {
    fn prepare(tx: &mut Transaction) -> StoreResult<Stmts> {
        let row = format!(
            "SELECT {RS_COLS}, r.release_id FROM rollout_sites rs JOIN sites s ON s.id = rs.site_id JOIN rollouts r ON r.id = rs.rollout_id WHERE rs.site_id = $1"
        );
        Ok(Stmts {
            insert: tx.prepare(
                "INSERT INTO reports (site_id, event_id, at, kind, body, received_at) VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT DO NOTHING",
            )?,
            row_named: tx.prepare(&format!("{row} AND rs.rollout_id = $2"))?,
            row_active: tx.prepare(&format!("{row} AND rs.active = 1"))?,
            read_back: tx.prepare(&super::rollouts::rs_query(
                "rs.rollout_id = $1 AND rs.site_id = $2",
            ))?,
            write_row: tx.prepare(
                "UPDATE rollout_sites SET phase = $3, phase_at = $4, detail = $5, committed_at = $6, failed_at = $7, failure = $8,
                   rolled_back = $9, leased_at = $10, last_healthy_at = $11, first_unhealthy_after_commit_at = $12,
                   last_report_at = $13, previous_release_id = $14
                 WHERE rollout_id = $1 AND site_id = $2",
            )?,
            site_facts: tx.prepare(
                "SELECT healthy, health_at, deferred_until, deferral_at FROM sites WHERE id = $1",
            )?,
            write_site_facts: tx.prepare(
                "UPDATE sites SET healthy = $2, health_at = $3, deferred_until = $4, deferral_at = $5 WHERE id = $1",
            )?,
            installed: tx.prepare("SELECT installed FROM sites WHERE id = $1")?,
            write_installed: tx.prepare("UPDATE sites SET installed = $2 WHERE id = $1")?,
            first_unhealthy: tx.prepare(FIRST_UNHEALTHY_SQL)?,
            unlease: tx.prepare("DELETE FROM leases WHERE rollout_id = $1 AND site_id = $2")?,
        })
    }
}

/// One site's batch inside the caller's transaction (see [`Store::apply_reports`]).
fn apply_batch(
    tx: &mut Transaction,
    st: &Stmts,
    site_id: &str,
    box_id: Option<&str>,
    events: &[Event],
    received_at: Timestamp,
) -> StoreResult<ReportOutcome> {
    let mut outcome = ReportOutcome::default();
    // A box of a site of several boxes folds into its own facts (store::boxes).
    let boxes = match box_id {
        Some(b) => {
            let boxes = super::sites::boxes_in(&mut *tx, site_id)?;
            (boxes.len() > 1).then_some((b, boxes))
        }
        None => None,
    };
    for event in events {
        let kind = ReportKind::of(&event.body).as_str();
        let at = super::event_time(event.at, received_at);
        let n = tx.execute(
            &st.insert,
            &[
                &site_id,
                &event.id,
                &ms(at),
                &kind,
                &to_json(event),
                &ms(received_at),
            ],
        )?;
        if n == 0 {
            outcome.duplicates += 1;
            continue;
        }
        outcome.accepted += 1;
        if let Some(rollout) = apply_event(tx, st, site_id, boxes.as_ref(), event, at)?
            && !outcome.rollouts_touched.contains(&rollout)
        {
            outcome.rollouts_touched.push(rollout);
        }
    }
    for rollout in &outcome.rollouts_touched {
        if let Some(row) = tx.query_opt(&st.read_back, &[rollout, &site_id])? {
            outcome.facts.push(rs_record(&row)?);
        }
    }
    Ok(outcome)
}

/// The site's row in the rollout `rollout_id` (or else in its active rollout), with that
/// rollout's release.
fn rollout_row_for(
    tx: &mut Transaction,
    st: &Stmts,
    site_id: &str,
    rollout_id: Option<&str>,
) -> StoreResult<Option<(RolloutSiteRecord, String)>> {
    let row = match rollout_id {
        Some(id) => tx.query_opt(&st.row_named, &[&site_id, &id])?,
        None => tx.query_opt(&st.row_active, &[&site_id])?,
    };
    row.map(|r| Ok((rs_record(&r)?, r.get::<_, String>(RS_COLS_LEN))))
        .transpose()
}

/// Writes back the facts of a rollout site that [`fold::fold_rollout_site`] sets.
fn write_rollout_row(tx: &mut Transaction, st: &Stmts, row: &RolloutSiteRecord) -> StoreResult<()> {
    tx.execute(
        &st.write_row,
        &[
            &row.rollout_id,
            &row.site_id,
            &row.phase.map(|p| p.as_str()),
            &row.phase_at.map(ms),
            &row.detail,
            &row.committed_at.map(ms),
            &row.failed_at.map(ms),
            &row.failure,
            &i64::from(row.rolled_back),
            &row.leased_at.map(ms),
            &row.last_healthy_at.map(ms),
            &row.first_unhealthy_after_commit_at.map(ms),
            &row.last_report_at.map(ms),
            &row.previous_release_id,
        ],
    )?;
    Ok(())
}

/// Folds a health or deferral event into the site's own facts (read, fold, write).
fn apply_site_facts(
    tx: &mut Transaction,
    st: &Stmts,
    site_id: &str,
    body: &EventBody,
    time: Timestamp,
) -> StoreResult<()> {
    let Some(r) = tx.query_opt(&st.site_facts, &[&site_id])? else {
        return Ok(());
    };
    let mut facts = fold::SiteFacts {
        healthy: opt_flag(&r, 0),
        health_at: opt_ts(r.get(1))?,
        deferred_until: opt_ts(r.get(2))?,
        deferral_at: opt_ts(r.get(3))?,
    };
    if fold::fold_site(&mut facts, body, time) {
        tx.execute(
            &st.write_site_facts,
            &[
                &site_id,
                &facts.healthy.map(i64::from),
                &facts.health_at.map(ms),
                &facts.deferred_until.map(ms),
                &facts.deferral_at.map(ms),
            ],
        )?;
    }
    Ok(())
}

/// Folds an `installed` event into what the site runs (read, fold, write).
fn apply_installed(
    tx: &mut Transaction,
    st: &Stmts,
    site_id: &str,
    body: &EventBody,
    time: Timestamp,
) -> StoreResult<()> {
    let installed: String = tx
        .query_opt(&st.installed, &[&site_id])?
        .ok_or_else(|| StoreError::NotFound(format!("no site {site_id}")))?
        .get(0);
    let mut map: BTreeMap<String, InstalledRelease> = serde_json::from_str(&installed)
        .map_err(|e| StoreError::Corrupt(format!("site {site_id}: installed: {e}")))?;
    if fold::fold_installed(&mut map, body, time) {
        tx.execute(&st.write_installed, &[&site_id, &to_json(&map)])?;
    }
    Ok(())
}

/// Applies one new event's facts at `time` (see the SQLite backend's `apply_event`).
/// Returns the rollout whose facts changed.
fn apply_event(
    tx: &mut Transaction,
    st: &Stmts,
    site_id: &str,
    from_box: Option<&(&str, Vec<SiteBox>)>,
    event: &Event,
    time: Timestamp,
) -> StoreResult<Option<String>> {
    // Facts are stored in milliseconds: fold at the time as stored.
    let time = from_millis(ms(time))?;
    match &event.body {
        EventBody::Health { .. } | EventBody::Deferral { .. } => {
            apply_site_facts(tx, st, site_id, &event.body, time)?
        }
        EventBody::Installed { .. } => apply_installed(tx, st, site_id, &event.body, time)?,
        EventBody::Phase { .. } | EventBody::Refusal { .. } => {}
    }
    let Some((mut row, target)) =
        rollout_row_for(tx, st, site_id, fold::named_rollout(&event.body))?
    else {
        return Ok(None);
    };
    let before = row.clone();
    let fold = match from_box {
        Some((box_id, boxes)) => {
            let mut facts = read_box_facts(&mut *tx, &row.rollout_id, site_id)?;
            let fold = super::boxes::fold_box_event(
                &mut row,
                &target,
                box_id,
                boxes,
                &mut facts,
                &event.body,
                time,
            )?;
            if let Some((_, f)) = facts.iter().find(|(b, _)| b == box_id) {
                write_box_facts(&mut *tx, &row.rollout_id, site_id, box_id, f)?;
            }
            fold
        }
        None => fold::fold_rollout_site(&mut row, &target, &event.body, time, |since| {
            let first: Option<i64> = tx
                .query_one(&st.first_unhealthy, &[&site_id, &ms(since)])?
                .get(0);
            opt_ts(first)
        })?,
    };
    if row != before {
        write_rollout_row(tx, st, &row)?;
        if row.failed_at.is_some() && row.failed_at != before.failed_at {
            let event = crate::webhooks::WebhookEvent::site_failed(
                &row.rollout_id,
                &target,
                row.wave,
                site_id,
                row.failure.as_deref(),
                time,
            );
            super::webhooks::enqueue(tx, &event)?;
        }
    }
    if fold.release_lease {
        tx.execute(&st.unlease, &[&row.rollout_id, &site_id])?;
    }
    Ok(Some(row.rollout_id))
}

/// The facts of every box of a site in a rollout that has any.
pub(super) fn read_box_facts(
    c: &mut impl ::postgres::GenericClient,
    rollout_id: &str,
    site_id: &str,
) -> StoreResult<Vec<(String, super::boxes::BoxFacts)>> {
    c.query(
        "SELECT box_id, facts FROM rollout_boxes WHERE rollout_id = $1 AND site_id = $2 ORDER BY box_id",
        &[&rollout_id, &site_id],
    )?
    .iter()
    .map(|r| {
        let (b, json): (String, String) = (r.get(0), r.get(1));
        let facts = serde_json::from_str(&json).map_err(|e| {
            StoreError::Corrupt(format!("rollout {rollout_id} site {site_id} box {b}: facts: {e}"))
        })?;
        Ok((b, facts))
    })
    .collect()
}

/// Stores a box's facts in a rollout (inserted or replaced).
pub(super) fn write_box_facts(
    c: &mut impl ::postgres::GenericClient,
    rollout_id: &str,
    site_id: &str,
    box_id: &str,
    facts: &super::boxes::BoxFacts,
) -> StoreResult<()> {
    c.execute(
        "INSERT INTO rollout_boxes (rollout_id, site_id, box_id, facts) VALUES ($1,$2,$3,$4)
         ON CONFLICT (rollout_id, site_id, box_id) DO UPDATE SET facts = excluded.facts",
        &[&rollout_id, &site_id, &box_id, &to_json(facts)],
    )?;
    Ok(())
}

pub(super) fn apply_report_group(
    s: &PgStore,
    batches: &[ReportInput],
) -> StoreResult<Vec<StoreResult<ReportOutcome>>> {
    s.write(|tx| {
        let st = Stmts::prepare(tx)?;
        let mut out = Vec::with_capacity(batches.len());
        for b in batches {
            // Each batch under its own savepoint: a failing one is undone alone.
            let mut sp = tx.savepoint("report_batch")?;
            match apply_batch(
                &mut sp,
                &st,
                &b.site_id,
                b.box_id.as_deref(),
                &b.events,
                b.received_at,
            ) {
                Ok(outcome) => {
                    sp.commit()?;
                    out.push(Ok(outcome));
                }
                // The whole transaction must run again: not this batch's own failure.
                Err(e) if retryable(&e) => return Err(e),
                Err(e) => {
                    sp.rollback()?;
                    out.push(Err(e));
                }
            }
        }
        Ok(out)
    })
}

pub(super) fn prune_reports(
    s: &PgStore,
    kind: ReportKind,
    before: Timestamp,
    limit: usize,
) -> StoreResult<usize> {
    s.write(|tx| {
        let n = tx.execute(
            PRUNE_REPORTS_SQL,
            &[
                &kind.as_str(),
                &ms(before),
                &(limit.min(i64::MAX as usize) as i64),
            ],
        )?;
        Ok(n as usize)
    })
}
