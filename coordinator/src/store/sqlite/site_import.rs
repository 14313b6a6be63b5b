//! Bulk site imports: which sites exist already, one chunk of an import per transaction,
//! and undoing the chunks of an import that failed part way.

use rusqlite::{OptionalExtension, params};

use super::*;

pub(super) fn existing(s: &SqliteStore, ids: &[String]) -> StoreResult<Vec<String>> {
    s.read(|c| {
        let mut st = c.prepare_cached("SELECT 1 FROM sites WHERE id = ?1")?;
        let mut found = Vec::new();
        for id in ids {
            if st.query_row([id], |_| Ok(())).optional()?.is_some() {
                found.push(id.clone());
            }
        }
        Ok(found)
    })
}

pub(super) fn import(
    s: &SqliteStore,
    sites: &[ImportedSite],
    tokens: &[ImportedToken],
) -> StoreResult<()> {
    s.write(|tx| {
        let mut exists = tx.prepare_cached("SELECT 1 FROM sites WHERE id = ?1")?;
        let mut taken = |id: &str| -> StoreResult<()> {
            match exists.query_row([id], |_| Ok(())).optional()? {
                Some(()) => Err(StoreError::SiteExists(id.to_string())),
                None => Ok(()),
            }
        };
        for site in sites {
            taken(&site.id)?;
        }
        for t in tokens {
            if let Some(id) = &t.record.site_id {
                taken(id)?;
            }
        }
        let mut insert_site = tx.prepare_cached(
            "INSERT INTO sites (id, device_key, labels, state, agent_version, enrolled_at) VALUES (?1,?2,?3,'active','',?4)",
        )?;
        for site in sites {
            insert_site.execute(params![
                site.id,
                site.device_key,
                to_json(&site.labels),
                ms(site.at)
            ])?;
        }
        let mut insert_token = tx.prepare_cached(
            "INSERT INTO enrollment_tokens (id, token_hash, labels, site_id, expires_at, uses_total, uses_left, revoked, created_at, created_by) VALUES (?1,?2,?3,?4,?5,?6,?7,0,?8,?9)",
        )?;
        for ImportedToken { token_hash, record: t } in tokens {
            insert_token.execute(params![
                t.id,
                token_hash,
                to_json(&t.labels),
                t.site_id,
                ms(t.expires_at),
                t.uses_total,
                t.uses_left,
                ms(t.created_at),
                t.created_by
            ])?;
        }
        Ok(())
    })
}

pub(super) fn undo(s: &SqliteStore, site_ids: &[String], token_ids: &[String]) -> StoreResult<()> {
    s.write(|tx| {
        for sql in [
            "DELETE FROM session_nonces WHERE site_id = ?1",
            "DELETE FROM site_labels WHERE site_id = ?1",
            "DELETE FROM site_versions WHERE site_id = ?1",
            "DELETE FROM sites WHERE id = ?1",
        ] {
            let mut st = tx.prepare_cached(sql)?;
            for id in site_ids {
                st.execute([id])?;
            }
        }
        let mut st = tx.prepare_cached("DELETE FROM enrollment_tokens WHERE id = ?1")?;
        for id in token_ids {
            st.execute([id])?;
        }
        Ok(())
    })
}
