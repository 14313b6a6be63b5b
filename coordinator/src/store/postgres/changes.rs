//! The change feed: a connection of its own that LISTENs on `fleetwave_changes`, where
//! the triggers of `schema_notify.sql` announce every committed change to the rows a
//! replica keeps in memory.
//!
//! A replica hears its own changes too, and re-reads those rows like any other: a row it
//! read for another replica's change may have been read just before its own commit and
//! applied just after, and its own notification, delivered after that commit, makes it
//! read the row again. Only its own assignments are dropped (its `fleetwave.origin`):
//! an assignment is never overwritten by an older one (sequences only go up), and a wave
//! opening on 100,000 sites would otherwise read 100,000 rows back.

use ::postgres::fallible_iterator::FallibleIterator as _;

use super::*;

/// The channel the triggers notify on.
pub(super) const CHANNEL: &str = "fleetwave_changes";

pub(super) struct PgChangeFeed {
    client: ::postgres::Client,
    origin: String,
}

pub(super) fn open(s: &PgStore) -> StoreResult<PgChangeFeed> {
    let mut client = s.config.connect(s.tls.clone())?;
    client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
    Ok(PgChangeFeed {
        client,
        origin: s.origin.clone(),
    })
}

impl ChangeFeed for PgChangeFeed {
    fn next(&mut self, wait: std::time::Duration, max: usize) -> StoreResult<Vec<Change>> {
        let mut out = Vec::new();
        let closed = self.client.is_closed();
        let mut notifications = self.client.notifications();
        let first = notifications.timeout_iter(wait).next()?;
        let Some(first) = first else {
            if closed {
                return Err(StoreError::Backend(
                    "the change feed's connection to PostgreSQL closed".into(),
                ));
            }
            return Ok(out);
        };
        out.extend(parse(first.payload(), &self.origin));
        let mut more = notifications.iter();
        while out.len() < max {
            match more.next()? {
                Some(n) => out.extend(parse(n.payload(), &self.origin)),
                None => break,
            }
        }
        Ok(out)
    }
}

/// One notification's change, unless it is an assignment this process issued (or not
/// one of ours).
fn parse(payload: &str, own_origin: &str) -> Option<Change> {
    let mut parts = payload.split(' ');
    let origin = parts.next()?;
    let kind = parts.next()?;
    if kind == "a" && origin == own_origin {
        return None;
    }
    let key = parts.next()?.to_string();
    Some(match kind {
        "s" => Change::Site(key),
        "b" => Change::Boxes(key),
        "a" => Change::Assignment(key),
        "r" => Change::Rollout(key),
        "m" => Change::Member {
            rollout_id: key,
            site_id: parts.next()?.to_string(),
        },
        "f" => Change::Freezes,
        _ => {
            tracing::warn!(payload, "unknown change notification ignored");
            return None;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_parse_into_changes_and_our_own_are_dropped() {
        assert_eq!(
            parse("abc s store-1", "me"),
            Some(Change::Site("store-1".into()))
        );
        assert_eq!(
            parse("abc b store-1", "me"),
            Some(Change::Boxes("store-1".into()))
        );
        assert_eq!(
            parse("abc a store-1", "me"),
            Some(Change::Assignment("store-1".into()))
        );
        assert_eq!(
            parse("abc r ro-1", "me"),
            Some(Change::Rollout("ro-1".into()))
        );
        assert_eq!(
            parse("abc m ro-1 store-1", "me"),
            Some(Change::Member {
                rollout_id: "ro-1".into(),
                site_id: "store-1".into()
            })
        );
        assert_eq!(parse("- f -", "me"), Some(Change::Freezes));
        assert_eq!(parse("me a store-1", "me"), None);
        assert_eq!(
            parse("me s store-1", "me"),
            Some(Change::Site("store-1".into()))
        );
        assert_eq!(parse("abc m ro-1", "me"), None);
        assert_eq!(parse("abc z x", "me"), None);
        assert_eq!(parse("", "me"), None);
    }
}
