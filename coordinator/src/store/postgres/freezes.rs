//! Fleet freezes created through the API.

use super::*;

const COLUMNS: &str = "id, start_at, end_at, reason, created_by, created_at, ended_at, ended_by";

fn record(r: &Row) -> StoreResult<FreezeRecord> {
    Ok(FreezeRecord {
        id: r.get(0),
        start: from_millis(r.get(1))?,
        end: from_millis(r.get(2))?,
        reason: r.get(3),
        created_by: r.get(4),
        created_at: from_millis(r.get(5))?,
        ended_at: opt_ts(r.get(6))?,
        ended_by: r.get(7),
    })
}

pub(super) fn create(s: &PgStore, f: &FreezeRecord) -> StoreResult<()> {
    s.write(|tx| {
        tx.execute(
            &format!("INSERT INTO freezes ({COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)"),
            &[
                &f.id,
                &ms(f.start),
                &ms(f.end),
                &f.reason,
                &f.created_by,
                &ms(f.created_at),
                &f.ended_at.map(ms),
                &f.ended_by,
            ],
        )?;
        Ok(())
    })
}

pub(super) fn open(s: &PgStore, now: Timestamp) -> StoreResult<Vec<FreezeRecord>> {
    s.read(|c| {
        let rows = c.query(
            &format!(
                "SELECT {COLUMNS} FROM freezes WHERE ended_at IS NULL AND end_at > $1 ORDER BY start_at, id"
            ),
            &[&ms(now)],
        )?;
        collect(rows, record)
    })
}

pub(super) fn end(s: &PgStore, id: &str, at: Timestamp, by: &str) -> StoreResult<FreezeRecord> {
    s.write(|tx| {
        let Some(found) = tx.query_opt(
            &format!("SELECT {COLUMNS} FROM freezes WHERE id = $1"),
            &[&id],
        )?
        else {
            return Err(StoreError::NotFound(format!("no freeze {id}")));
        };
        let mut f = record(&found)?;
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
            "UPDATE freezes SET ended_at = $2, ended_by = $3 WHERE id = $1",
            &[&id, &ms(at), &by],
        )?;
        f.ended_at = Some(at);
        f.ended_by = Some(by.to_string());
        Ok(f)
    })
}
