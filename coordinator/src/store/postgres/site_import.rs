//! Site imports: sites registered with their device keys and enrollment tokens, in
//! chunks, and the undoing of a failed import's chunks.

use super::*;

pub(super) fn existing(s: &PgStore, ids: &[String]) -> StoreResult<Vec<String>> {
    s.read(|c| {
        let st = c.prepare("SELECT 1 FROM sites WHERE id = $1")?;
        let mut found = Vec::new();
        for id in ids {
            if c.query_opt(&st, &[id])?.is_some() {
                found.push(id.clone());
            }
        }
        Ok(found)
    })
}

pub(super) fn import(
    s: &PgStore,
    sites: &[ImportedSite],
    tokens: &[ImportedToken],
) -> StoreResult<()> {
    s.write(|tx| {
        let exists = tx.prepare("SELECT 1 FROM sites WHERE id = $1")?;
        let ids = sites
            .iter()
            .map(|s| &s.id)
            .chain(tokens.iter().filter_map(|t| t.record.site_id.as_ref()));
        for id in ids {
            if tx.query_opt(&exists, &[id])?.is_some() {
                return Err(StoreError::SiteExists(id.clone()));
            }
        }
        let insert_site = tx.prepare(
            "INSERT INTO sites (id, device_key, labels, state, agent_version, enrolled_at) VALUES ($1,$2,$3,'active','',$4)",
        )?;
        for site in sites {
            tx.execute(
                &insert_site,
                &[&site.id, &site.device_key, &to_json(&site.labels), &ms(site.at)],
            )?;
        }
        for ImportedToken { token_hash, record } in tokens {
            super::access::insert_enrollment_token(tx, token_hash, record)?;
        }
        Ok(())
    })
}

pub(super) fn undo(s: &PgStore, site_ids: &[String], token_ids: &[String]) -> StoreResult<()> {
    s.write(|tx| {
        for sql in [
            "DELETE FROM session_nonces WHERE site_id = $1",
            "DELETE FROM site_labels WHERE site_id = $1",
            "DELETE FROM site_versions WHERE site_id = $1",
            "DELETE FROM sites WHERE id = $1",
        ] {
            let st = tx.prepare(sql)?;
            for id in site_ids {
                tx.execute(&st, &[id])?;
            }
        }
        let st = tx.prepare("DELETE FROM enrollment_tokens WHERE id = $1")?;
        for id in token_ids {
            tx.execute(&st, &[id])?;
        }
        Ok(())
    })
}
