//! Dashboard sessions (see `dashboard::session`).

use super::*;

pub(super) fn open_dashboard_session(
    s: &PgStore,
    id_hash: &str,
    session: &DashboardSession,
    created_before: Timestamp,
    used_before: Timestamp,
) -> StoreResult<()> {
    s.write(|tx| {
        tx.execute(
            "DELETE FROM dashboard_sessions WHERE created_at < $1 OR last_used < $2",
            &[&ms(created_before), &ms(used_before)],
        )?;
        tx.execute(
            "INSERT INTO dashboard_sessions (id_hash, token_hash, csrf, created_at, last_used) VALUES ($1,$2,$3,$4,$5)",
            &[
                &id_hash,
                &session.token_hash,
                &session.csrf,
                &ms(session.created_at),
                &ms(session.last_used),
            ],
        )?;
        Ok(())
    })
}

pub(super) fn dashboard_session(
    s: &PgStore,
    id_hash: &str,
) -> StoreResult<Option<DashboardSession>> {
    s.read(|c| {
        c.query_opt(
            "SELECT token_hash, csrf, created_at, last_used FROM dashboard_sessions WHERE id_hash = $1",
            &[&id_hash],
        )?
        .map(|r| {
            Ok(DashboardSession {
                token_hash: r.get(0),
                csrf: r.get(1),
                created_at: from_millis(r.get(2))?,
                last_used: from_millis(r.get(3))?,
            })
        })
        .transpose()
    })
}

pub(super) fn touch_dashboard_session(
    s: &PgStore,
    id_hash: &str,
    at: Timestamp,
) -> StoreResult<()> {
    s.write(|tx| {
        tx.execute(
            "UPDATE dashboard_sessions SET last_used = $2 WHERE id_hash = $1 AND last_used < $2",
            &[&id_hash, &ms(at)],
        )?;
        Ok(())
    })
}

pub(super) fn close_dashboard_session(s: &PgStore, id_hash: &str) -> StoreResult<()> {
    s.write(|tx| {
        tx.execute(
            "DELETE FROM dashboard_sessions WHERE id_hash = $1",
            &[&id_hash],
        )?;
        Ok(())
    })
}
