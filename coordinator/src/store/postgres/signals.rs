//! Golden signals: each site's signal values per minute and the latest minute of each of
//! its streams.

use fleetwave_shared::protocol::signals::SignalMinute;

use super::*;
use crate::store::{MAX_SIGNAL_STREAMS_PER_SITE, SignalSample, SignalsStored};

/// One site's ($1) values of a stream's ($2) signal ($3) in minutes [$4, $5): a range of
/// the table's key.
pub const SAMPLES_SQL: &str = "SELECT minute, value, release_id FROM signal_values WHERE site_id = $1 AND stream = $2 AND signal = $3 AND minute >= $4 AND minute < $5";

pub(super) fn put(
    s: &PgStore,
    site_id: &str,
    minutes: &[SignalMinute],
    received_at: Timestamp,
) -> StoreResult<SignalsStored> {
    s.write(|tx| {
        let mut streams: Vec<String> = tx
            .query(
                "SELECT stream FROM signal_latest WHERE site_id = $1",
                &[&site_id],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let put_value = tx.prepare(
            "INSERT INTO signal_values (site_id, stream, signal, minute, value, release_id)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (site_id, stream, signal, minute)
             DO UPDATE SET value = excluded.value, release_id = excluded.release_id",
        )?;
        let put_latest = tx.prepare(
            "INSERT INTO signal_latest (site_id, stream, minute, body, received_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (site_id, stream) DO UPDATE SET
               minute = excluded.minute, body = excluded.body,
               received_at = excluded.received_at
             WHERE excluded.minute >= signal_latest.minute",
        )?;
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
            for (signal, value) in &m.values {
                tx.execute(
                    &put_value,
                    &[&site_id, &m.stream, signal, &minute, value, &m.release_id],
                )?;
            }
            tx.execute(
                &put_latest,
                &[
                    &site_id,
                    &m.stream,
                    &minute,
                    &serde_json::to_string(m).expect("signal minutes serialize"),
                    &ms(received_at),
                ],
            )?;
            out.minutes += 1;
        }
        Ok(out)
    })
}

pub(super) fn latest(s: &PgStore, site_id: &str) -> StoreResult<Vec<(SignalMinute, Timestamp)>> {
    s.read(|c| {
        let rows = c.query(
            "SELECT body, received_at FROM signal_latest WHERE site_id = $1 ORDER BY stream",
            &[&site_id],
        )?;
        collect(rows, |r| {
            let body: String = r.get(0);
            let m = serde_json::from_str(&body)
                .map_err(|e| StoreError::Corrupt(format!("signal minute of {site_id}: {e}")))?;
            Ok((m, from_millis(r.get(1))?))
        })
    })
}

pub(super) fn samples(
    s: &PgStore,
    sites: &[String],
    stream: &str,
    signal: &str,
    from: Timestamp,
    to: Timestamp,
) -> StoreResult<Vec<SignalSample>> {
    s.read(|c| {
        let st = c.prepare(SAMPLES_SQL)?;
        let mut out = Vec::new();
        for site in sites {
            for r in c.query(&st, &[site, &stream, &signal, &ms(from), &ms(to)])? {
                out.push(SignalSample {
                    site_id: site.clone(),
                    minute: from_millis(r.get(0))?,
                    value: r.get(1),
                    release_id: r.get(2),
                });
            }
        }
        Ok(out)
    })
}

pub(super) fn prune(s: &PgStore, before: Timestamp, limit: usize) -> StoreResult<usize> {
    s.write(|tx| {
        let n = tx.execute(
            "DELETE FROM signal_values WHERE (site_id, stream, signal, minute) IN
             (SELECT site_id, stream, signal, minute FROM signal_values
              WHERE minute < $1 ORDER BY minute LIMIT $2)",
            &[&ms(before), &(limit.min(i64::MAX as usize) as i64)],
        )? as usize;
        if n < limit {
            tx.execute(
                "DELETE FROM signal_latest WHERE minute < $1",
                &[&ms(before)],
            )?;
        }
        Ok(n)
    })
}
