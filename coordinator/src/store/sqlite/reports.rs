//! The report path on SQLite: stores each new event once and folds it into the site's
//! facts.

use fleetwave_shared::protocol::EventBody;
use rusqlite::{OptionalExtension, params};

use super::*;

/// One site's batch inside the caller's transaction (see [`Store::apply_reports`]).
pub(super) fn apply_batch(
    tx: &rusqlite::Transaction,
    site_id: &str,
    box_id: Option<&str>,
    events: &[Event],
    received_at: Timestamp,
) -> StoreResult<ReportOutcome> {
    let mut outcome = ReportOutcome::default();
    // A box of a site of several boxes folds into its own facts (store::boxes).
    let boxes = match box_id {
        Some(b) => {
            let boxes = super::sites::boxes_in(tx, site_id)?;
            (boxes.len() > 1).then_some((b, boxes))
        }
        None => None,
    };
    for event in events {
        let kind = ReportKind::of(&event.body).as_str();
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
        if let Some(rollout) = apply_event(tx, site_id, boxes.as_ref(), event, at)?
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

/// The site's row in the rollout `rollout_id` (or else in its active rollout), with that
/// rollout's release.
fn rollout_row_for(
    tx: &rusqlite::Transaction,
    site_id: &str,
    rollout_id: Option<&str>,
) -> StoreResult<Option<(RolloutSiteRecord, String)>> {
    let read = |r: &rusqlite::Row| Ok((rs_record(r)?, r.get::<_, String>(RS_COLS_LEN)?));
    let row = match rollout_id {
        Some(id) => tx
            .prepare_cached(&format!("SELECT {RS_COLS}, r.release_id FROM rollout_sites rs JOIN sites s ON s.id = rs.site_id JOIN rollouts r ON r.id = rs.rollout_id WHERE rs.site_id = ?1 AND rs.rollout_id = ?2"))?
            .query_row(params![site_id, id], read)
            .optional()?,
        None => tx
            .prepare_cached(&format!("SELECT {RS_COLS}, r.release_id FROM rollout_sites rs JOIN sites s ON s.id = rs.site_id JOIN rollouts r ON r.id = rs.rollout_id WHERE rs.site_id = ?1 AND rs.active = 1"))?
            .query_row([site_id], read)
            .optional()?,
    };
    Ok(row)
}

/// Writes back the facts of a rollout site that [`fold::fold_rollout_site`] sets.
fn write_rollout_row(tx: &rusqlite::Transaction, row: &RolloutSiteRecord) -> StoreResult<()> {
    tx.prepare_cached(
        "UPDATE rollout_sites SET phase = ?3, phase_at = ?4, detail = ?5, committed_at = ?6, failed_at = ?7, failure = ?8,
           rolled_back = ?9, leased_at = ?10, last_healthy_at = ?11, first_unhealthy_after_commit_at = ?12,
           last_report_at = ?13, previous_release_id = ?14
         WHERE rollout_id = ?1 AND site_id = ?2",
    )?
    .execute(params![
        row.rollout_id,
        row.site_id,
        row.phase.map(phase_str),
        row.phase_at.map(ms),
        row.detail,
        row.committed_at.map(ms),
        row.failed_at.map(ms),
        row.failure,
        row.rolled_back,
        row.leased_at.map(ms),
        row.last_healthy_at.map(ms),
        row.first_unhealthy_after_commit_at.map(ms),
        row.last_report_at.map(ms),
        row.previous_release_id,
    ])?;
    Ok(())
}

/// Folds a health or deferral event into the site's own facts (read, fold, write).
fn apply_site_facts(
    tx: &rusqlite::Transaction,
    site_id: &str,
    body: &EventBody,
    time: Timestamp,
) -> StoreResult<()> {
    let row = tx
        .prepare_cached(
            "SELECT healthy, health_at, deferred_until, deferral_at FROM sites WHERE id = ?1",
        )?
        .query_row([site_id], |r| {
            Ok((
                r.get::<_, Option<bool>>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        })
        .optional()?;
    let Some((healthy, health_at, deferred_until, deferral_at)) = row else {
        return Ok(());
    };
    let mut facts = fold::SiteFacts {
        healthy,
        health_at: opt_ts(health_at)?,
        deferred_until: opt_ts(deferred_until)?,
        deferral_at: opt_ts(deferral_at)?,
    };
    if fold::fold_site(&mut facts, body, time) {
        tx.prepare_cached(
            "UPDATE sites SET healthy = ?2, health_at = ?3, deferred_until = ?4, deferral_at = ?5 WHERE id = ?1",
        )?
        .execute(params![
            site_id,
            facts.healthy,
            facts.health_at.map(ms),
            facts.deferred_until.map(ms),
            facts.deferral_at.map(ms),
        ])?;
    }
    Ok(())
}

/// Folds an `installed` event into what the site runs (read, fold, write).
fn apply_installed(
    tx: &rusqlite::Transaction,
    site_id: &str,
    body: &EventBody,
    time: Timestamp,
) -> StoreResult<()> {
    let installed: String = tx
        .prepare_cached("SELECT installed FROM sites WHERE id = ?1")?
        .query_row([site_id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("no site {site_id}")))?;
    let mut map: BTreeMap<String, InstalledRelease> = serde_json::from_str(&installed)
        .map_err(|e| StoreError::Corrupt(format!("site {site_id}: installed: {e}")))?;
    if fold::fold_installed(&mut map, body, time) {
        tx.prepare_cached("UPDATE sites SET installed = ?2 WHERE id = ?1")?
            .execute(params![site_id, to_json(&map)])?;
    }
    Ok(())
}

/// Applies one new event's facts at `time` (the event's time as [`super::event_time`]
/// bounds it): reads the facts, folds the event in with [`fold`]'s rules (facts never go
/// backwards; a terminal phase releases the lease) and writes them back. Returns the
/// rollout whose facts changed.
pub(super) fn apply_event(
    tx: &rusqlite::Transaction,
    site_id: &str,
    from_box: Option<&(&str, Vec<SiteBox>)>,
    event: &Event,
    time: Timestamp,
) -> StoreResult<Option<String>> {
    // Facts are stored in milliseconds: fold at the time as stored, so that comparisons
    // with stored times are exact.
    let time = from_millis(ms(time))?;
    match &event.body {
        EventBody::Health { .. } | EventBody::Deferral { .. } => {
            apply_site_facts(tx, site_id, &event.body, time)?
        }
        EventBody::Installed { .. } => apply_installed(tx, site_id, &event.body, time)?,
        EventBody::Phase { .. } | EventBody::Refusal { .. } => {}
    }
    let Some((mut row, target)) = rollout_row_for(tx, site_id, fold::named_rollout(&event.body))?
    else {
        return Ok(None);
    };
    let before = row.clone();
    let fold = match from_box {
        Some((box_id, boxes)) => {
            let mut facts = read_box_facts(tx, &row.rollout_id, site_id)?;
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
                write_box_facts(tx, &row.rollout_id, site_id, box_id, f)?;
            }
            fold
        }
        None => fold::fold_rollout_site(&mut row, &target, &event.body, time, |since| {
            let first: Option<i64> = tx
                .prepare_cached(FIRST_UNHEALTHY_SQL)?
                .query_row(params![site_id, ms(since)], |r| r.get(0))?;
            opt_ts(first)
        })?,
    };
    if row != before {
        write_rollout_row(tx, &row)?;
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
        tx.prepare_cached("DELETE FROM leases WHERE rollout_id = ?1 AND site_id = ?2")?
            .execute(params![row.rollout_id, site_id])?;
    }
    Ok(Some(row.rollout_id))
}

/// The facts of every box of a site in a rollout that has any.
pub(super) fn read_box_facts(
    c: &rusqlite::Connection,
    rollout_id: &str,
    site_id: &str,
) -> StoreResult<Vec<(String, super::boxes::BoxFacts)>> {
    let mut st = c.prepare_cached(
        "SELECT box_id, facts FROM rollout_boxes WHERE rollout_id = ?1 AND site_id = ?2 ORDER BY box_id",
    )?;
    let rows = st.query_map(params![rollout_id, site_id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (b, json) = row?;
        let facts = serde_json::from_str(&json).map_err(|e| {
            StoreError::Corrupt(format!(
                "rollout {rollout_id} site {site_id} box {b}: facts: {e}"
            ))
        })?;
        out.push((b, facts));
    }
    Ok(out)
}

/// Stores a box's facts in a rollout (inserted or replaced).
pub(super) fn write_box_facts(
    c: &rusqlite::Connection,
    rollout_id: &str,
    site_id: &str,
    box_id: &str,
    facts: &super::boxes::BoxFacts,
) -> StoreResult<()> {
    c.prepare_cached(
        "INSERT INTO rollout_boxes (rollout_id, site_id, box_id, facts) VALUES (?1,?2,?3,?4)
         ON CONFLICT (rollout_id, site_id, box_id) DO UPDATE SET facts = excluded.facts",
    )?
    .execute(params![rollout_id, site_id, box_id, to_json(facts)])?;
    Ok(())
}

pub(super) fn apply_report_group(
    s: &SqliteStore,
    batches: &[ReportInput],
) -> StoreResult<Vec<StoreResult<ReportOutcome>>> {
    s.write(|tx| {
        let mut out = Vec::with_capacity(batches.len());
        for b in batches {
            // Each batch under its own savepoint: a failing one is undone alone.
            tx.execute_batch("SAVEPOINT report_batch")?;
            match apply_batch(
                tx,
                &b.site_id,
                b.box_id.as_deref(),
                &b.events,
                b.received_at,
            ) {
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

pub(super) fn prune_reports(
    s: &SqliteStore,
    kind: ReportKind,
    before: Timestamp,
    limit: usize,
) -> StoreResult<usize> {
    s.write(|tx| {
        let n = tx.prepare_cached(PRUNE_REPORTS_SQL)?.execute(params![
            kind.as_str(),
            ms(before),
            limit as i64
        ])?;
        Ok(n)
    })
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
        let kinds: Vec<ReportKind> = samples.iter().map(ReportKind::of).collect();
        assert_eq!(kinds, ReportKind::ALL);
        // And each is the event's `kind` on the wire, and parses back.
        for (body, kind) in samples.iter().zip(ReportKind::ALL) {
            assert_eq!(serde_json::to_value(body).unwrap()["kind"], kind.as_str());
            assert_eq!(ReportKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(ReportKind::parse("nope"), None);
    }
}
