//! Assignments (each site's sequence) and leases.

use rusqlite::{OptionalExtension, params};

use super::*;

pub(super) fn issue_assignments(
    s: &SqliteStore,
    drafts: &[AssignmentDraft],
    sign: &(dyn Fn(&AssignmentDraft, u64) -> Envelope + Sync),
) -> StoreResult<Vec<AssignmentRecord>> {
    if drafts.is_empty() {
        return Ok(Vec::new());
    }
    s.write(|tx| {
        let mut out = Vec::with_capacity(drafts.len());
        // Prepared once per batch: a wave may issue thousands of assignments.
        let mut next_sequence = tx.prepare_cached(
            "UPDATE sites SET last_sequence = last_sequence + 1 WHERE id = ?1 RETURNING last_sequence",
        )?;
        let insert_sql =
            format!("INSERT INTO assignments ({ASSIGN_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)");
        let mut insert = tx.prepare_cached(&insert_sql)?;
        let mut mark_rollback = tx.prepare_cached(
            "UPDATE rollout_sites SET rollback_sequence = ?3 WHERE rollout_id = ?1 AND site_id = ?2",
        )?;
        let mut mark_assigned = tx.prepare_cached(
            "UPDATE rollout_sites SET assigned_at = COALESCE(assigned_at, ?3) WHERE rollout_id = ?1 AND site_id = ?2",
        )?;
        let mut sequences = Vec::with_capacity(drafts.len());
        for d in drafts {
            let sequence: i64 = next_sequence
                .query_row([&d.site_id], |r| r.get(0))
                .optional()?
                .ok_or_else(|| StoreError::NotFound(format!("no site {}", d.site_id)))?;
            sequences.push(sequence as u64);
        }
        let envelopes = crate::store::sign_all(drafts, &sequences, sign);
        for ((d, &sequence), env) in drafts.iter().zip(&sequences).zip(envelopes) {
            insert.execute(
                params![d.site_id, sequence as i64, d.rollout_id, d.wave, d.release_id, d.release_digest, d.rollback, to_json(&env), ms(d.issued_at), ms(d.expires)],
            )?;
            if d.rollback {
                mark_rollback.execute(params![d.rollout_id, d.site_id, sequence as i64])?;
            } else {
                mark_assigned.execute(params![d.rollout_id, d.site_id, ms(d.issued_at)])?;
            }
            out.push(AssignmentRecord {
                site_id: d.site_id.clone(),
                sequence,
                rollout_id: d.rollout_id.clone(),
                wave: d.wave,
                release_id: d.release_id.clone(),
                release_digest: d.release_digest.clone(),
                rollback: d.rollback,
                envelope: env,
                issued_at: d.issued_at,
                expires: d.expires,
            });
        }
        Ok(out)
    })
}

pub(super) fn current_assignments_after(
    s: &SqliteStore,
    after: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<AssignmentRecord>> {
    s.read(|c| {
        let mut st = c.prepare(&format!(
            "SELECT {ASSIGN_COLS} FROM assignments a WHERE a.site_id > ?1 AND sequence = (SELECT MAX(sequence) FROM assignments b WHERE b.site_id = a.site_id) ORDER BY a.site_id LIMIT ?2"
        ))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = st.query_map(params![after.unwrap_or(""), limit], assign_row)?;
        collect(rows, assign_record)
    })
}

pub(super) fn current_assignment_of(
    s: &SqliteStore,
    site_id: &str,
) -> StoreResult<Option<AssignmentRecord>> {
    s.read(|c| {
        let mut st = c.prepare(&format!(
            "SELECT {ASSIGN_COLS} FROM assignments a WHERE site_id = ?1 ORDER BY sequence DESC LIMIT 1"
        ))?;
        let rows = st.query_map([site_id], assign_row)?;
        Ok(collect(rows, assign_record)?.pop())
    })
}

pub(super) fn active_leases(
    s: &SqliteStore,
    rollout_id: &str,
    now: Timestamp,
) -> StoreResult<Vec<LeaseRecord>> {
    s.read(|c| {
        let mut st = c.prepare("SELECT id, site_id, rollout_id, wave, granted_at, expires_at FROM leases WHERE rollout_id = ?1 AND expires_at > ?2")?;
        let rows = st.query_map(params![rollout_id, ms(now)], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, u32>(3)?, r.get::<_, i64>(4)?, r.get::<_, i64>(5)?))
        })?;
        collect(rows, |(id, site_id, rollout_id, wave, g, e)| {
            Ok(LeaseRecord { id, site_id, rollout_id, wave, granted_at: from_millis(g)?, expires_at: from_millis(e)? })
        })
    })
}

pub(super) fn grant_leases(
    s: &SqliteStore,
    leases: &[LeaseRecord],
) -> StoreResult<Vec<StoreResult<()>>> {
    s.write(|tx| {
        let mut out = Vec::with_capacity(leases.len());
        for l in leases {
            // Each lease under its own savepoint: a failing one is undone alone.
            tx.execute_batch("SAVEPOINT lease_grant")?;
            match grant_lease(tx, l) {
                Ok(()) => {
                    tx.execute_batch("RELEASE lease_grant")?;
                    out.push(Ok(()));
                }
                Err(e) => {
                    tx.execute_batch("ROLLBACK TO lease_grant; RELEASE lease_grant")?;
                    out.push(Err(e));
                }
            }
        }
        Ok(out)
    })
}

pub(super) fn compartment_counts(
    s: &SqliteStore,
    rollout_id: &str,
    label: &str,
    value: &str,
    except_site: &str,
    now: Timestamp,
) -> StoreResult<(u32, u32)> {
    s.read(|c| {
        // Sites without the label share the value "": counted as all minus labelled.
        let sites: i64 = if value.is_empty() {
            let all: i64 = c
                .prepare_cached("SELECT COUNT(*) FROM rollout_sites WHERE rollout_id = ?1")?
                .query_row([rollout_id], |r| r.get(0))?;
            let labelled: i64 = c
                .prepare_cached(
                    "SELECT COUNT(*) FROM site_labels sl JOIN rollout_sites rs \
                     ON rs.rollout_id = ?1 AND rs.site_id = sl.site_id \
                     WHERE sl.key = ?2 AND sl.value <> ''",
                )?
                .query_row(params![rollout_id, label], |r| r.get(0))?;
            all - labelled
        } else {
            c.prepare_cached(
                "SELECT COUNT(*) FROM site_labels sl JOIN rollout_sites rs \
                 ON rs.rollout_id = ?1 AND rs.site_id = sl.site_id \
                 WHERE sl.key = ?2 AND sl.value = ?3",
            )?
            .query_row(params![rollout_id, label, value], |r| r.get(0))?
        };
        let active: i64 = c
            .prepare_cached(
                "SELECT COUNT(*) FROM leases l \
                 LEFT JOIN site_labels sl ON sl.site_id = l.site_id AND sl.key = ?2 \
                 WHERE l.rollout_id = ?1 AND l.expires_at > ?4 AND l.site_id <> ?5 \
                 AND COALESCE(sl.value, '') = ?3",
            )?
            .query_row(
                params![rollout_id, label, value, ms(now), except_site],
                |r| r.get(0),
            )?;
        Ok((sites.max(0) as u32, active.max(0) as u32))
    })
}

/// Stores one lease, replacing the site's earlier lease for the same rollout.
pub(super) fn grant_lease(tx: &rusqlite::Transaction, l: &LeaseRecord) -> StoreResult<()> {
    tx.prepare_cached("DELETE FROM leases WHERE rollout_id = ?1 AND site_id = ?2")?
        .execute(params![l.rollout_id, l.site_id])?;
    tx.prepare_cached(
        "INSERT INTO leases (id, site_id, rollout_id, wave, granted_at, expires_at) VALUES (?1,?2,?3,?4,?5,?6)",
    )?
    .execute(params![l.id, l.site_id, l.rollout_id, l.wave, ms(l.granted_at), ms(l.expires_at)])?;
    tx.prepare_cached(
        "UPDATE rollout_sites SET leased_at = MAX(COALESCE(leased_at, 0), ?3) WHERE rollout_id = ?1 AND site_id = ?2",
    )?
    .execute(params![l.rollout_id, l.site_id, ms(l.granted_at)])?;
    Ok(())
}
