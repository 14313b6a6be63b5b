//! Releases and artifacts.

use super::*;

pub(super) fn publish_release(s: &PgStore, r: &ReleaseRecord) -> StoreResult<()> {
    s.write(|tx| {
        if tx.query_opt("SELECT 1 FROM releases WHERE id = $1", &[&r.id])?.is_some() {
            return Err(StoreError::Conflict(format!("release {} is already published", r.id)));
        }
        let highest: Option<i64> = tx
            .query_one("SELECT MAX(counter) FROM releases WHERE name = $1", &[&r.name])?
            .get(0);
        if let Some(h) = highest
            && r.counter as i64 <= h
        {
            return Err(StoreError::Conflict(format!(
                "release {} has counter {}, but stream {:?} already has counter {h}: counters must go up",
                r.id, r.counter, r.name
            )));
        }
        tx.execute(
            &format!("INSERT INTO releases ({RELEASE_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)"),
            &[
                &r.id,
                &r.digest,
                &r.name,
                &r.version,
                &r.kind,
                &(r.counter as i64),
                &to_json(&r.envelope),
                &ms(r.published_at),
                &r.published_by,
            ],
        )?;
        Ok(())
    })
}

pub(super) fn release(s: &PgStore, id: &str) -> StoreResult<Option<ReleaseRecord>> {
    s.read(|c| {
        c.query_opt(
            &format!("SELECT {RELEASE_COLS} FROM releases WHERE id = $1"),
            &[&id],
        )?
        .as_ref()
        .map(release_record)
        .transpose()
    })
}

pub(super) fn list_releases(s: &PgStore) -> StoreResult<Vec<ReleaseRecord>> {
    s.read(|c| {
        let rows = c.query(
            &format!("SELECT {RELEASE_COLS} FROM releases ORDER BY published_at, id"),
            &[],
        )?;
        collect(rows, release_record)
    })
}

pub(super) fn add_artifact(s: &PgStore, a: &ArtifactRecord) -> StoreResult<()> {
    s.write(|tx| {
        tx.execute(
            "INSERT INTO artifacts (sha256, length, uploaded_at, uploaded_by) VALUES ($1,$2,$3,$4) ON CONFLICT DO NOTHING",
            &[&a.sha256, &(a.length as i64), &ms(a.uploaded_at), &a.uploaded_by],
        )?;
        Ok(())
    })
}

pub(super) fn artifact(s: &PgStore, sha256: &str) -> StoreResult<Option<ArtifactRecord>> {
    s.read(|c| {
        c.query_opt(
            "SELECT sha256, length, uploaded_at, uploaded_by FROM artifacts WHERE sha256 = $1",
            &[&sha256],
        )?
        .map(|r| {
            Ok(ArtifactRecord {
                sha256: r.get(0),
                length: r.get::<_, i64>(1) as u64,
                uploaded_at: from_millis(r.get(2))?,
                uploaded_by: r.get(3),
            })
        })
        .transpose()
    })
}
