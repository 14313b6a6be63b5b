//! Releases and artifacts.

use rusqlite::{OptionalExtension, params};

use super::*;

pub(super) fn publish_release(s: &SqliteStore, r: &ReleaseRecord) -> StoreResult<()> {
    s.write(|tx| {
        if tx.query_row("SELECT 1 FROM releases WHERE id = ?1", [&r.id], |_| Ok(())).optional()?.is_some() {
            return Err(StoreError::Conflict(format!("release {} is already published", r.id)));
        }
        let highest: Option<i64> = tx.query_row("SELECT MAX(counter) FROM releases WHERE name = ?1", [&r.name], |row| row.get(0))?;
        if let Some(h) = highest
            && r.counter as i64 <= h
        {
            return Err(StoreError::Conflict(format!(
                "release {} has counter {}, but stream {:?} already has counter {h}: counters must go up",
                r.id, r.counter, r.name
            )));
        }
        tx.execute(
            &format!("INSERT INTO releases ({RELEASE_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)"),
            params![r.id, r.digest, r.name, r.version, r.kind, r.counter as i64, to_json(&r.envelope), ms(r.published_at), r.published_by],
        )?;
        Ok(())
    })
}

pub(super) fn release(s: &SqliteStore, id: &str) -> StoreResult<Option<ReleaseRecord>> {
    s.read(|c| {
        let row = c
            .query_row(
                &format!("SELECT {RELEASE_COLS} FROM releases WHERE id = ?1"),
                [id],
                release_row,
            )
            .optional()?;
        row.map(release_record).transpose()
    })
}

pub(super) fn list_releases(s: &SqliteStore) -> StoreResult<Vec<ReleaseRecord>> {
    s.read(|c| {
        let mut st = c.prepare(&format!(
            "SELECT {RELEASE_COLS} FROM releases ORDER BY published_at, id"
        ))?;
        let rows = st.query_map([], release_row)?;
        collect(rows, release_record)
    })
}

pub(super) fn add_artifact(s: &SqliteStore, a: &ArtifactRecord) -> StoreResult<()> {
    s.write(|tx| {
        tx.execute(
            "INSERT OR IGNORE INTO artifacts (sha256, length, uploaded_at, uploaded_by) VALUES (?1,?2,?3,?4)",
            params![a.sha256, a.length as i64, ms(a.uploaded_at), a.uploaded_by],
        )?;
        Ok(())
    })
}

pub(super) fn artifact(s: &SqliteStore, sha256: &str) -> StoreResult<Option<ArtifactRecord>> {
    s.read(|c| {
        let row = c
            .query_row(
                "SELECT sha256, length, uploaded_at, uploaded_by FROM artifacts WHERE sha256 = ?1",
                [sha256],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(sha256, length, at, by)| {
            Ok(ArtifactRecord {
                sha256,
                length: length as u64,
                uploaded_at: from_millis(at)?,
                uploaded_by: by,
            })
        })
        .transpose()
    })
}
