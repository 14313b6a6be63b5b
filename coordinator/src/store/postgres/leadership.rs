//! The wave controller's leadership in PostgreSQL: the lease row (`leadership`, role
//! `controller`) claimed and renewed by the database's clock, and the fencing check every
//! write of the controller makes in its own transaction.

use std::time::Duration;

use super::*;
use crate::store::fence::Fence;

const ROLE: &str = "controller";

/// Claims, renews or takes over the lease row in one statement; a row comes back only
/// when `holder` leads afterwards.
const CLAIM_SQL: &str = "INSERT INTO leadership (role, holder, token, expires_at) \
     VALUES ($1, $2, 1, clock_timestamp() + $3::bigint * interval '1 millisecond') \
     ON CONFLICT (role) DO UPDATE SET \
         token = CASE WHEN leadership.holder = EXCLUDED.holder THEN leadership.token \
                      ELSE leadership.token + 1 END, \
         holder = EXCLUDED.holder, \
         expires_at = EXCLUDED.expires_at \
     WHERE leadership.holder = EXCLUDED.holder OR leadership.expires_at < clock_timestamp() \
     RETURNING token";

pub(super) fn claim(s: &PgStore, holder: &str, lease: Duration) -> StoreResult<Claim> {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    s.write_unfenced(|tx| {
        if let Some(row) = tx.query_opt(CLAIM_SQL, &[&ROLE, &holder, &lease_ms])? {
            return Ok(Claim::Leader { token: row.get(0) });
        }
        let row = tx.query_one(
            "SELECT holder, token, \
                 GREATEST(EXTRACT(EPOCH FROM expires_at - clock_timestamp()), 0)::float8 \
             FROM leadership WHERE role = $1",
            &[&ROLE],
        )?;
        Ok(Claim::Follower {
            holder: row.get(0),
            token: row.get(1),
            expires_in: Duration::from_secs_f64(row.get(2)),
        })
    })
}

pub(super) fn resign(s: &PgStore, holder: &str) -> StoreResult<()> {
    s.write_unfenced(|tx| {
        tx.execute(
            "UPDATE leadership SET expires_at = clock_timestamp() - interval '1 millisecond' \
             WHERE role = $1 AND holder = $2",
            &[&ROLE, &holder],
        )?;
        Ok(())
    })
}

/// Refuses the transaction's write unless `fence` is still the leadership's token. The
/// row stays share-locked until the transaction ends, so a takeover waits for a write
/// already checked, and a write checked after a takeover sees the new token.
pub(super) fn check(tx: &mut Transaction, fence: Fence) -> StoreResult<()> {
    let row = tx.query_opt(
        "SELECT holder, token FROM leadership WHERE role = $1 FOR SHARE",
        &[&ROLE],
    )?;
    match row {
        Some(row) if row.get::<_, i64>(1) == fence.token => Ok(()),
        Some(row) => Err(StoreError::Fenced(format!(
            "this replica no longer leads the wave controller: its leadership (token {}) was \
             taken over by {} (token {}); the controller's write was refused",
            fence.token,
            row.get::<_, String>(0),
            row.get::<_, i64>(1)
        ))),
        None => Err(StoreError::Fenced(format!(
            "the wave controller's write carried leadership token {} but no replica holds \
             the leadership in this database; the write was refused",
            fence.token
        ))),
    }
}
