//! Fleet freezes created through the API.

use rusqlite::{OptionalExtension, Row, params};

use super::*;

const COLUMNS: &str = "id, start_at, end_at, reason, created_by, created_at, ended_at, ended_by";

type FreezeRow = (
    String,
    i64,
    i64,
    String,
    String,
    i64,
    Option<i64>,
    Option<String>,
);

fn row(r: &Row) -> rusqlite::Result<FreezeRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

fn record(
    (id, start, end, reason, created_by, created_at, ended_at, ended_by): FreezeRow,
) -> StoreResult<FreezeRecord> {
    Ok(FreezeRecord {
        id,
        start: from_millis(start)?,
        end: from_millis(end)?,
        reason,
        created_by,
        created_at: from_millis(created_at)?,
        ended_at: opt_ts(ended_at)?,
        ended_by,
    })
}

pub(super) fn create(s: &SqliteStore, f: &FreezeRecord) -> StoreResult<()> {
    s.write(|tx| {
        tx.execute(
            "INSERT INTO freezes (id, start_at, end_at, reason, created_by, created_at, ended_at, ended_by) VALUES (?1,?2,?3,?4,?5,?6,?7,?8)",
            params![
                f.id,
                ms(f.start),
                ms(f.end),
                f.reason,
                f.created_by,
                ms(f.created_at),
                f.ended_at.map(ms),
                f.ended_by
            ],
        )?;
        Ok(())
    })
}

pub(super) fn open(s: &SqliteStore, now: Timestamp) -> StoreResult<Vec<FreezeRecord>> {
    s.read(|c| {
        let mut st = c.prepare(&format!(
            "SELECT {COLUMNS} FROM freezes WHERE ended_at IS NULL AND end_at > ?1 ORDER BY start_at, id"
        ))?;
        let rows = st.query_map(params![ms(now)], row)?;
        collect(rows, record)
    })
}

pub(super) fn end(s: &SqliteStore, id: &str, at: Timestamp, by: &str) -> StoreResult<FreezeRecord> {
    s.write(|tx| {
        let found = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM freezes WHERE id = ?1"),
                params![id],
                row,
            )
            .optional()?;
        let Some(found) = found else {
            return Err(StoreError::NotFound(format!("no freeze {id}")));
        };
        let mut f = record(found)?;
        if let (Some(when), Some(who)) = (f.ended_at, &f.ended_by) {
            return Err(StoreError::Conflict(format!(
                "freeze {id} was already ended at {when} by {who}"
            )));
        }
        if f.end <= at {
            return Err(StoreError::Conflict(format!(
                "freeze {id} is already over (it ended at {})",
                f.end
            )));
        }
        tx.execute(
            "UPDATE freezes SET ended_at = ?2, ended_by = ?3 WHERE id = ?1",
            params![id, ms(at), by],
        )?;
        f.ended_at = Some(at);
        f.ended_by = Some(by.to_string());
        Ok(f)
    })
}
