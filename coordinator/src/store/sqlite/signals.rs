//! Golden signals as stored (schema v9): one row per (site, stream, signal, minute) for
//! the gate, and each stream's latest minute whole for the site page. Writing a minute
//! again replaces it (replays are idempotent); a site's streams are bounded.

use fleetwave_shared::protocol::signals::SignalMinute;
use rusqlite::params;

use super::*;
use crate::store::{MAX_SIGNAL_STREAMS_PER_SITE, SignalSample, SignalsStored};

/// One site's values of one signal in a range of minutes: a range of the primary key.
pub const SAMPLES_SQL: &str = "SELECT minute, value, release_id FROM signal_values WHERE site_id = ?1 AND stream = ?2 AND signal = ?3 AND minute >= ?4 AND minute < ?5";

pub(super) fn put(
    s: &SqliteStore,
    site_id: &str,
    minutes: &[SignalMinute],
    received_at: Timestamp,
) -> StoreResult<SignalsStored> {
    s.write(|tx| {
        let mut streams: Vec<String> = {
            let mut stmt =
                tx.prepare_cached("SELECT stream FROM signal_latest WHERE site_id = ?1")?;
            stmt.query_map([site_id], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        let mut out = SignalsStored::default();
        for m in minutes {
            if !streams.contains(&m.stream) {
                if streams.len() >= MAX_SIGNAL_STREAMS_PER_SITE {
                    out.dropped_streams += 1;
                    continue;
                }
                streams.push(m.stream.clone());
            }
            let minute = ms(m.minute);
            let mut put_value = tx.prepare_cached(
                "INSERT INTO signal_values (site_id, stream, signal, minute, value, release_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (site_id, stream, signal, minute)
                 DO UPDATE SET value = excluded.value, release_id = excluded.release_id",
            )?;
            for (signal, value) in &m.values {
                put_value.execute(params![
                    site_id,
                    m.stream,
                    signal,
                    minute,
                    value,
                    m.release_id
                ])?;
            }
            tx.prepare_cached(
                "INSERT INTO signal_latest (site_id, stream, minute, body, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (site_id, stream) DO UPDATE SET
                   minute = excluded.minute, body = excluded.body,
                   received_at = excluded.received_at
                 WHERE excluded.minute >= signal_latest.minute",
            )?
            .execute(params![
                site_id,
                m.stream,
                minute,
                serde_json::to_string(m).expect("signal minutes serialize"),
                ms(received_at)
            ])?;
            out.minutes += 1;
        }
        Ok(out)
    })
}

pub(super) fn latest(
    s: &SqliteStore,
    site_id: &str,
) -> StoreResult<Vec<(SignalMinute, Timestamp)>> {
    s.read(|conn| {
        let mut stmt = conn.prepare_cached(
            "SELECT body, received_at FROM signal_latest WHERE site_id = ?1 ORDER BY stream",
        )?;
        let rows = stmt
            .query_map([site_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(body, at)| {
                let m = serde_json::from_str(&body)
                    .map_err(|e| StoreError::Corrupt(format!("signal minute of {site_id}: {e}")))?;
                Ok((m, from_millis(at)?))
            })
            .collect()
    })
}

pub(super) fn samples(
    s: &SqliteStore,
    sites: &[String],
    stream: &str,
    signal: &str,
    from: Timestamp,
    to: Timestamp,
) -> StoreResult<Vec<SignalSample>> {
    s.read(|conn| {
        let mut stmt = conn.prepare_cached(SAMPLES_SQL)?;
        let mut out = Vec::new();
        for site in sites {
            let rows = stmt
                .query_map(params![site, stream, signal, ms(from), ms(to)], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, f64>(1)?,
                        r.get::<_, Option<String>>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            for (minute, value, release_id) in rows {
                out.push(SignalSample {
                    site_id: site.clone(),
                    minute: from_millis(minute)?,
                    value,
                    release_id,
                });
            }
        }
        Ok(out)
    })
}

/// The statement of [`samples_of_signals`] for `n` signals: site, stream, the minutes'
/// range, then the signals' names (`?5` on).
pub fn signals_samples_sql(n: usize) -> String {
    let marks = (0..n)
        .map(|i| format!("?{}", i + 5))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT signal, minute, value, release_id FROM signal_values WHERE site_id = ?1 AND stream = ?2 AND minute >= ?3 AND minute < ?4 AND signal IN ({marks})"
    )
}

/// [`samples`] of several signals: one statement per site, seeking each signal's minutes
/// through the key (`signal IN (...)`), instead of one per site and signal.
pub(super) fn samples_of_signals(
    s: &SqliteStore,
    sites: &[String],
    stream: &str,
    signals: &[String],
    from: Timestamp,
    to: Timestamp,
) -> StoreResult<Vec<Vec<SignalSample>>> {
    let mut out: Vec<Vec<SignalSample>> = vec![Vec::new(); signals.len()];
    if signals.is_empty() || sites.is_empty() {
        return Ok(out);
    }
    let index: std::collections::HashMap<&str, usize> = signals
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let sql = signals_samples_sql(signals.len());
    s.read(|conn| {
        let mut stmt = conn.prepare_cached(&sql)?;
        for site in sites {
            let mut args: Vec<rusqlite::types::Value> = vec![
                site.clone().into(),
                stream.to_string().into(),
                ms(from).into(),
                ms(to).into(),
            ];
            args.extend(signals.iter().map(|n| n.clone().into()));
            let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
            while let Some(r) = rows.next()? {
                let signal: String = r.get(0)?;
                let Some(&i) = index.get(signal.as_str()) else {
                    continue;
                };
                out[i].push(SignalSample {
                    site_id: site.clone(),
                    minute: from_millis(r.get(1)?)?,
                    value: r.get(2)?,
                    release_id: r.get(3)?,
                });
            }
        }
        Ok(out)
    })
}

pub(super) fn prune(s: &SqliteStore, before: Timestamp, limit: usize) -> StoreResult<usize> {
    s.write(|tx| {
        let n = tx
            .prepare_cached(
                "DELETE FROM signal_values WHERE (site_id, stream, signal, minute) IN
                 (SELECT site_id, stream, signal, minute FROM signal_values
                  WHERE minute < ?1 ORDER BY minute LIMIT ?2)",
            )?
            .execute(params![ms(before), limit as i64])?;
        if n < limit {
            tx.prepare_cached("DELETE FROM signal_latest WHERE minute < ?1")?
                .execute([ms(before)])?;
        }
        Ok(n)
    })
}
