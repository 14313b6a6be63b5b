//! Assignments (each site's sequence) and leases.

use super::*;

pub(super) fn issue_assignments(
    s: &PgStore,
    drafts: &[AssignmentDraft],
    sign: &(dyn Fn(&AssignmentDraft, u64) -> Envelope + Sync),
) -> StoreResult<Vec<AssignmentRecord>> {
    if drafts.is_empty() {
        return Ok(Vec::new());
    }
    s.write(|tx| {
        let mut out = Vec::with_capacity(drafts.len());
        // The row lock of `UPDATE ... RETURNING` makes each site's sequences go up by one
        // across replicas.
        let next_sequence = tx.prepare(
            "UPDATE sites SET last_sequence = last_sequence + 1 WHERE id = $1 RETURNING last_sequence",
        )?;
        let insert = tx.prepare(&format!(
            "INSERT INTO assignments ({ASSIGN_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)"
        ))?;
        let mark_rollback = tx.prepare(
            "UPDATE rollout_sites SET rollback_sequence = $3 WHERE rollout_id = $1 AND site_id = $2",
        )?;
        let mark_assigned = tx.prepare(
            "UPDATE rollout_sites SET assigned_at = COALESCE(assigned_at, $3) WHERE rollout_id = $1 AND site_id = $2",
        )?;
        let mut sequences = Vec::with_capacity(drafts.len());
        for d in drafts {
            let sequence: i64 = tx
                .query_opt(&next_sequence, &[&d.site_id])?
                .ok_or_else(|| StoreError::NotFound(format!("no site {}", d.site_id)))?
                .get(0);
            sequences.push(sequence as u64);
        }
        // Signed on every core while the transaction holds the sites' rows.
        let envelopes = crate::store::sign_all(drafts, &sequences, sign);
        for ((d, &seq), env) in drafts.iter().zip(&sequences).zip(envelopes) {
            let sequence = seq as i64;
            tx.execute(
                &insert,
                &[
                    &d.site_id,
                    &sequence,
                    &d.rollout_id,
                    &i64::from(d.wave),
                    &d.release_id,
                    &d.release_digest,
                    &i64::from(d.rollback),
                    &to_json(&env),
                    &ms(d.issued_at),
                    &ms(d.expires),
                ],
            )?;
            if d.rollback {
                tx.execute(&mark_rollback, &[&d.rollout_id, &d.site_id, &sequence])?;
            } else {
                tx.execute(&mark_assigned, &[&d.rollout_id, &d.site_id, &ms(d.issued_at)])?;
            }
            out.push(AssignmentRecord {
                site_id: d.site_id.clone(),
                sequence: seq,
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
    s: &PgStore,
    after: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<AssignmentRecord>> {
    s.read(|c| {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = c.query(
            &format!(
                "SELECT {ASSIGN_COLS} FROM assignments a WHERE a.site_id > $1 AND sequence = (SELECT MAX(sequence) FROM assignments b WHERE b.site_id = a.site_id) ORDER BY a.site_id LIMIT $2"
            ),
            &[&after.unwrap_or(""), &limit],
        )?;
        collect(rows, assign_record)
    })
}

pub(super) fn current_assignment_of(
    s: &PgStore,
    site_id: &str,
) -> StoreResult<Option<AssignmentRecord>> {
    s.read(|c| {
        let rows = c.query(
            &format!(
                "SELECT {ASSIGN_COLS} FROM assignments a WHERE site_id = $1 ORDER BY sequence DESC LIMIT 1"
            ),
            &[&site_id],
        )?;
        Ok(collect(rows, assign_record)?.pop())
    })
}

pub(super) fn active_leases(
    s: &PgStore,
    rollout_id: &str,
    now: Timestamp,
) -> StoreResult<Vec<LeaseRecord>> {
    s.read(|c| {
        let rows = c.query(
            "SELECT id, site_id, rollout_id, wave, granted_at, expires_at FROM leases WHERE rollout_id = $1 AND expires_at > $2 ORDER BY site_id",
            &[&rollout_id, &ms(now)],
        )?;
        collect(rows, |r| {
            Ok(LeaseRecord {
                id: r.get(0),
                site_id: r.get(1),
                rollout_id: r.get(2),
                wave: u32_col(r, 3)?,
                granted_at: from_millis(r.get(4))?,
                expires_at: from_millis(r.get(5))?,
            })
        })
    })
}

pub(super) fn grant_leases(
    s: &PgStore,
    leases: &[LeaseRecord],
) -> StoreResult<Vec<StoreResult<()>>> {
    s.write(|tx| {
        let mut out = Vec::with_capacity(leases.len());
        for l in leases {
            // Each lease under its own savepoint: a failing one is undone alone.
            let mut sp = tx.savepoint("lease_grant")?;
            match grant_lease(&mut sp, l) {
                Ok(()) => {
                    sp.commit()?;
                    out.push(Ok(()));
                }
                // The whole transaction must run again: not this lease's own failure.
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

pub(super) fn compartment_counts(
    s: &PgStore,
    rollout_id: &str,
    label: &str,
    value: &str,
    except_site: &str,
    now: Timestamp,
) -> StoreResult<(u32, u32)> {
    s.read(|c| count_compartment(&mut **c, rollout_id, label, value, except_site, now))
}

/// [`compartment_counts`] on any connection or transaction.
fn count_compartment(
    c: &mut impl ::postgres::GenericClient,
    rollout_id: &str,
    label: &str,
    value: &str,
    except_site: &str,
    now: Timestamp,
) -> StoreResult<(u32, u32)> {
    // Sites without the label share the value "": counted as all minus labelled.
    let sites: i64 = if value.is_empty() {
        let all: i64 = c
            .query_one(
                "SELECT COUNT(*) FROM rollout_sites WHERE rollout_id = $1",
                &[&rollout_id],
            )?
            .get(0);
        let labelled: i64 = c
            .query_one(
                "SELECT COUNT(*) FROM site_labels sl JOIN rollout_sites rs \
                 ON rs.rollout_id = $1 AND rs.site_id = sl.site_id \
                 WHERE sl.key = $2 AND sl.value <> ''",
                &[&rollout_id, &label],
            )?
            .get(0);
        all - labelled
    } else {
        c.query_one(
            "SELECT COUNT(*) FROM site_labels sl JOIN rollout_sites rs \
             ON rs.rollout_id = $1 AND rs.site_id = sl.site_id \
             WHERE sl.key = $2 AND sl.value = $3",
            &[&rollout_id, &label, &value],
        )?
        .get(0)
    };
    let active: i64 = c
        .query_one(
            "SELECT COUNT(*) FROM leases l \
             LEFT JOIN site_labels sl ON sl.site_id = l.site_id AND sl.key = $2 \
             WHERE l.rollout_id = $1 AND l.expires_at > $4 AND l.site_id <> $5 \
             AND COALESCE(sl.value, '') = $3",
            &[&rollout_id, &label, &value, &ms(now), &except_site],
        )?
        .get(0);
    Ok((sites.max(0) as u32, active.max(0) as u32))
}

/// See [`crate::store::Store::grant_lease_counted`]: the counts are read in the granting
/// transaction, at SERIALIZABLE isolation, so that two replicas granting the last place
/// of a wave at once conflict and one of them counts again (and is refused).
pub(super) fn grant_lease_counted(
    s: &PgStore,
    lease: &LeaseRecord,
    compartment: Option<(&str, &str)>,
    allow: &(dyn Fn(&LeaseCounts) -> bool + Sync),
) -> StoreResult<Result<(), LeaseCounts>> {
    s.write(|tx| {
        let now = ms(lease.granted_at);
        let wave_active: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM leases WHERE rollout_id = $1 AND wave = $2 \
                 AND expires_at > $3 AND site_id <> $4",
                &[
                    &lease.rollout_id,
                    &i64::from(lease.wave),
                    &now,
                    &lease.site_id,
                ],
            )?
            .get(0);
        let compartment = match compartment {
            Some((label, value)) => Some(count_compartment(
                tx,
                &lease.rollout_id,
                label,
                value,
                &lease.site_id,
                lease.granted_at,
            )?),
            None => None,
        };
        let counts = LeaseCounts {
            wave_active: wave_active.max(0) as u32,
            compartment,
        };
        if !allow(&counts) {
            return Ok(Err(counts));
        }
        grant_lease(tx, lease)?;
        Ok(Ok(()))
    })
}

/// Stores one lease, replacing the site's earlier lease for the same rollout.
fn grant_lease(tx: &mut Transaction, l: &LeaseRecord) -> StoreResult<()> {
    tx.execute(
        "DELETE FROM leases WHERE rollout_id = $1 AND site_id = $2",
        &[&l.rollout_id, &l.site_id],
    )?;
    tx.execute(
        "INSERT INTO leases (id, site_id, rollout_id, wave, granted_at, expires_at) VALUES ($1,$2,$3,$4,$5,$6)",
        &[&l.id, &l.site_id, &l.rollout_id, &i64::from(l.wave), &ms(l.granted_at), &ms(l.expires_at)],
    )?;
    tx.execute(
        "UPDATE rollout_sites SET leased_at = GREATEST(COALESCE(leased_at, 0), $3) WHERE rollout_id = $1 AND site_id = $2",
        &[&l.rollout_id, &l.site_id, &ms(l.granted_at)],
    )?;
    Ok(())
}
