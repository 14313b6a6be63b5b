//! Dashboard sessions (see `dashboard::session`).

use rusqlite::{OptionalExtension, params};

use super::*;

pub(super) fn open_dashboard_session(
    s: &SqliteStore,
    id_hash: &str,
    session: &DashboardSession,
    created_before: Timestamp,
    used_before: Timestamp,
) -> StoreResult<()> {
    s.write(|tx| {
        tx.execute(
            "DELETE FROM dashboard_sessions WHERE created_at < ?1 OR last_used < ?2",
            params![ms(created_before), ms(used_before)],
        )?;
        tx.execute(
            "INSERT INTO dashboard_sessions (id_hash, token_hash, csrf, created_at, last_used) VALUES (?1,?2,?3,?4,?5)",
            params![
                id_hash,
                session.token_hash,
                session.csrf,
                ms(session.created_at),
                ms(session.last_used)
            ],
        )?;
        Ok(())
    })
}

pub(super) fn dashboard_session(
    s: &SqliteStore,
    id_hash: &str,
) -> StoreResult<Option<DashboardSession>> {
    s.read(|c| {
        let found = c
            .prepare_cached(
                "SELECT token_hash, csrf, created_at, last_used FROM dashboard_sessions WHERE id_hash = ?1",
            )?
            .query_row(params![id_hash], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .optional()?;
        found
            .map(|(token_hash, csrf, created_at, last_used)| {
                Ok(DashboardSession {
                    token_hash,
                    csrf,
                    created_at: from_millis(created_at)?,
                    last_used: from_millis(last_used)?,
                })
            })
            .transpose()
    })
}

pub(super) fn touch_dashboard_session(
    s: &SqliteStore,
    id_hash: &str,
    at: Timestamp,
) -> StoreResult<()> {
    s.write(|tx| {
        tx.execute(
            "UPDATE dashboard_sessions SET last_used = ?2 WHERE id_hash = ?1 AND last_used < ?2",
            params![id_hash, ms(at)],
        )?;
        Ok(())
    })
}

pub(super) fn close_dashboard_session(s: &SqliteStore, id_hash: &str) -> StoreResult<()> {
    s.write(|tx| {
        tx.execute(
            "DELETE FROM dashboard_sessions WHERE id_hash = ?1",
            params![id_hash],
        )?;
        Ok(())
    })
}
