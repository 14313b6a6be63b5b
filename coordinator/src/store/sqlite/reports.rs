//! The report path on SQLite: stores each new event once and folds it into the site's
//! facts.

use fleetwave_shared::protocol::EventBody;
use rusqlite::{OptionalExtension, params};

use super::*;

/// One site's batch inside the caller's transaction (see [`Store::apply_reports`]).
pub(super) fn apply_batch(
    tx: &rusqlite::Transaction,
    site_id: &str,
    events: &[Event],
    received_at: Timestamp,
) -> StoreResult<ReportOutcome> {
    let mut outcome = ReportOutcome::default();
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
        if let Some(rollout) = apply_event(tx, site_id, event, at)?
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

/// The site's row in its active rollout (or in `rollout_id`), with that rollout's release.
pub(super) fn rollout_row_for(
    tx: &rusqlite::Transaction,
    site_id: &str,
    rollout_id: Option<&str>,
) -> StoreResult<Option<(String, String)>> {
    let row = match rollout_id {
        Some(id) => tx
            .prepare_cached("SELECT rs.rollout_id, r.release_id FROM rollout_sites rs JOIN rollouts r ON r.id = rs.rollout_id WHERE rs.site_id = ?1 AND rs.rollout_id = ?2")?
            .query_row(
                params![site_id, id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?,
        None => tx
            .prepare_cached("SELECT rs.rollout_id, r.release_id FROM rollout_sites rs JOIN rollouts r ON r.id = rs.rollout_id WHERE rs.site_id = ?1 AND rs.active = 1")?
            .query_row(
                [site_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?,
    };
    Ok(row)
}

/// Applies one new event's facts at `time` (the event's time as [`super::event_time`]
/// bounds it). Every fact follows that time, so a late event never moves a fact
/// backwards. Returns the rollout whose facts changed.
pub(super) fn apply_event(
    tx: &rusqlite::Transaction,
    site_id: &str,
    event: &Event,
    time: Timestamp,
) -> StoreResult<Option<String>> {
    let at = ms(time);
    match &event.body {
        EventBody::Phase {
            rollout_id,
            release_id,
            phase,
            detail,
        } => {
            let Some((rollout, target)) = rollout_row_for(tx, site_id, rollout_id.as_deref())?
            else {
                return Ok(None);
            };
            let key = params![rollout, site_id, at, phase_str(*phase), detail];
            tx.prepare_cached(
                "UPDATE rollout_sites SET phase = ?4, phase_at = ?3, detail = ?5 WHERE rollout_id = ?1 AND site_id = ?2 AND (phase_at IS NULL OR phase_at <= ?3)",
            )?
            .execute(
                key,
            )?;
            touch_report(tx, &rollout, site_id, at)?;
            let target_release = *release_id == target;
            match phase {
                Phase::Committed if target_release => record_commit(tx, &rollout, site_id, at)?,
                // A rollback the agent gave up on is a failure too (its detail says why).
                Phase::Failed | Phase::RollbackFailed if target_release => {
                    tx.prepare_cached(
                        "UPDATE rollout_sites SET failed_at = MAX(COALESCE(failed_at, ?3), ?3),
                           failure = CASE WHEN failed_at IS NULL OR failed_at <= ?3 THEN ?4 ELSE failure END
                         WHERE rollout_id = ?1 AND site_id = ?2",
                    )?
                    .execute(
                        params![rollout, site_id, at, detail],
                    )?;
                }
                Phase::RolledBack if target_release => {
                    tx.prepare_cached(
                        "UPDATE rollout_sites SET rolled_back = 1 WHERE rollout_id = ?1 AND site_id = ?2",
                    )?
                    .execute(
                        params![rollout, site_id],
                    )?;
                }
                Phase::Leased => {
                    tx.prepare_cached(
                        "UPDATE rollout_sites SET leased_at = MAX(COALESCE(leased_at, 0), ?3) WHERE rollout_id = ?1 AND site_id = ?2",
                    )?
                    .execute(
                        params![rollout, site_id, at],
                    )?;
                }
                _ => {}
            }
            if matches!(
                phase,
                Phase::Committed | Phase::Failed | Phase::RolledBack | Phase::RollbackFailed
            ) {
                tx.prepare_cached("DELETE FROM leases WHERE rollout_id = ?1 AND site_id = ?2")?
                    .execute(params![rollout, site_id])?;
            }
            Ok(Some(rollout))
        }
        EventBody::Health { healthy, .. } => {
            tx.prepare_cached(
                "UPDATE sites SET healthy = ?2, health_at = ?3 WHERE id = ?1 AND (health_at IS NULL OR health_at <= ?3)",
            )?
            .execute(
                params![site_id, healthy, at],
            )?;
            let Some((rollout, _)) = rollout_row_for(tx, site_id, None)? else {
                return Ok(None);
            };
            if *healthy {
                tx.prepare_cached(
                    "UPDATE rollout_sites SET last_healthy_at = MAX(COALESCE(last_healthy_at, ?3), ?3) WHERE rollout_id = ?1 AND site_id = ?2",
                )?
                .execute(
                    params![rollout, site_id, at],
                )?;
            } else {
                tx.prepare_cached(
                    "UPDATE rollout_sites SET first_unhealthy_after_commit_at = MIN(COALESCE(first_unhealthy_after_commit_at, ?3), ?3)
                     WHERE rollout_id = ?1 AND site_id = ?2 AND committed_at IS NOT NULL AND committed_at <= ?3",
                )?
                .execute(
                    params![rollout, site_id, at],
                )?;
            }
            touch_report(tx, &rollout, site_id, at)?;
            Ok(Some(rollout))
        }
        EventBody::Deferral { until, .. } => {
            tx.prepare_cached(
                "UPDATE sites SET deferred_until = ?2, deferral_at = ?3 WHERE id = ?1 AND (deferral_at IS NULL OR deferral_at <= ?3)",
            )?
            .execute(
                params![site_id, until.map(ms), at],
            )?;
            let rollout = rollout_row_for(tx, site_id, None)?.map(|(r, _)| r);
            if let Some(r) = &rollout {
                touch_report(tx, r, site_id, at)?;
            }
            Ok(rollout)
        }
        EventBody::Installed {
            name,
            release_id,
            version,
            previous_release_id,
        } => {
            let installed: String = tx
                .prepare_cached("SELECT installed FROM sites WHERE id = ?1")?
                .query_row([site_id], |r| r.get(0))
                .optional()?
                .ok_or_else(|| StoreError::NotFound(format!("no site {site_id}")))?;
            let mut map: BTreeMap<String, InstalledRelease> = serde_json::from_str(&installed)
                .map_err(|e| StoreError::Corrupt(format!("site {site_id}: installed: {e}")))?;
            if map.get(name).is_none_or(|old| old.at <= time) {
                map.insert(
                    name.clone(),
                    InstalledRelease {
                        release_id: release_id.clone(),
                        version: version.clone(),
                        previous_release_id: previous_release_id.clone(),
                        at: time,
                    },
                );
                tx.prepare_cached("UPDATE sites SET installed = ?2 WHERE id = ?1")?
                    .execute(params![site_id, to_json(&map)])?;
            }
            let Some((rollout, target)) = rollout_row_for(tx, site_id, None)? else {
                return Ok(None);
            };
            // The release the site ran before this rollout: what a rollback goes back to.
            let previous = if release_id.as_deref() == Some(target.as_str()) {
                previous_release_id.clone()
            } else {
                release_id.clone()
            };
            if release_id.as_deref() == Some(target.as_str()) {
                record_commit(tx, &rollout, site_id, at)?;
            }
            if let Some(previous) = previous.filter(|p| *p != target) {
                tx.prepare_cached(
                    "UPDATE rollout_sites SET previous_release_id = ?3 WHERE rollout_id = ?1 AND site_id = ?2 AND committed_at IS NULL",
                )?
                .execute(
                    params![rollout, site_id, previous],
                )?;
            }
            touch_report(tx, &rollout, site_id, at)?;
            Ok(Some(rollout))
        }
        EventBody::Refusal {
            rollout_id,
            code,
            message,
            ..
        } => {
            let Some((rollout, _)) = rollout_row_for(tx, site_id, rollout_id.as_deref())? else {
                return Ok(None);
            };
            tx.prepare_cached(
                "UPDATE rollout_sites SET detail = ?4 WHERE rollout_id = ?1 AND site_id = ?2 AND (phase_at IS NULL OR phase_at <= ?3)",
            )?
            .execute(
                params![rollout, site_id, at, format!("refused: {code}: {message}")],
            )?;
            touch_report(tx, &rollout, site_id, at)?;
            Ok(Some(rollout))
        }
    }
}

pub(super) fn touch_report(
    tx: &rusqlite::Transaction,
    rollout: &str,
    site_id: &str,
    at: i64,
) -> StoreResult<()> {
    tx.prepare_cached(
        "UPDATE rollout_sites SET last_report_at = MAX(COALESCE(last_report_at, 0), ?3) WHERE rollout_id = ?1 AND site_id = ?2",
    )?
    .execute(
        params![rollout, site_id, at],
    )?;
    Ok(())
}

/// A commit of the target release at `at`: the latest commit counts, and the first
/// unhealthy heartbeat after it is recomputed from the stored reports (which may have
/// arrived before the commit did).
pub(super) fn record_commit(
    tx: &rusqlite::Transaction,
    rollout: &str,
    site_id: &str,
    at: i64,
) -> StoreResult<()> {
    let committed: Option<i64> = tx
        .prepare_cached(
            "SELECT committed_at FROM rollout_sites WHERE rollout_id = ?1 AND site_id = ?2",
        )?
        .query_row(params![rollout, site_id], |r| r.get(0))?;
    if committed.is_some_and(|c| c >= at) {
        return Ok(());
    }
    let first_unhealthy: Option<i64> = tx
        .prepare_cached(FIRST_UNHEALTHY_SQL)?
        .query_row(params![site_id, at], |r| r.get(0))?;
    tx.prepare_cached(
        "UPDATE rollout_sites SET committed_at = ?3, first_unhealthy_after_commit_at = ?4 WHERE rollout_id = ?1 AND site_id = ?2",
    )?
    .execute(
        params![rollout, site_id, at, first_unhealthy],
    )?;
    Ok(())
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
