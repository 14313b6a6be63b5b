//! The agent's durable state: one SQLite file (`agent.db`) in the state directory.
//!
//! It holds the trust state, the verified assignment being worked on, the current and
//! previous release per stream, the install [`journal`], the report [`outbox`] and its
//! dead letters (reports the coordinator refused, kept for the operator), the local
//! deferral and a few facts (site id, last contact). The database runs in WAL mode with
//! `synchronous=FULL` for every table, so a write that returned survives a power cut;
//! schema changes go through versioned migrations. This module must never decide anything:
//! it stores and returns what the daemon tells it, and verifies nothing.

pub mod journal;
pub mod outbox;
pub mod signal_queue;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use fleetwave_shared::Envelope;
use fleetwave_shared::trust::PersistedTrust;
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension as _, params};
use rusqlite_migration::{M, Migrations};
use serde::{Deserialize, Serialize};

/// Why the state database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create state directory {path}: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database {path}: migration failed: {message}")]
    Migrate { path: String, message: String },
    #[error("state database query failed: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state database holds a value that does not parse ({what}): {message}")]
    Corrupt { what: &'static str, message: String },
}

const MIGRATIONS: &[M<'static>] = &[
    M::up(
        r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE trust (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    state TEXT NOT NULL
);
CREATE TABLE assignment (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    assignment  TEXT NOT NULL,
    release     TEXT NOT NULL,
    accepted_at TEXT NOT NULL
);
CREATE TABLE installed (
    stream              TEXT PRIMARY KEY,
    release_id          TEXT NOT NULL,
    version             TEXT NOT NULL,
    release             TEXT NOT NULL,
    committed_at        TEXT NOT NULL,
    previous_release_id TEXT,
    previous_version    TEXT,
    previous_release    TEXT
);
CREATE TABLE journal (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id  TEXT NOT NULL,
    sequence    INTEGER NOT NULL,
    release_id  TEXT NOT NULL,
    stream      TEXT NOT NULL,
    assignment  TEXT NOT NULL,
    release     TEXT NOT NULL,
    lease_id    TEXT,
    step        TEXT NOT NULL,
    status      TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    finished_at TEXT,
    outcome     TEXT,
    detail      TEXT
);
CREATE INDEX journal_open ON journal (finished_at);
CREATE TABLE outbox (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    id    TEXT NOT NULL UNIQUE,
    kind  TEXT NOT NULL,
    event TEXT NOT NULL
);
CREATE INDEX outbox_kind ON outbox (kind);
CREATE TABLE deferral (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    until  TEXT NOT NULL,
    reason TEXT,
    set_at TEXT NOT NULL
);
"#,
    ),
    // Events handed to the coordinator at least once are marked `sent`: the health
    // compaction never merges them (the coordinator may already have counted them).
    // Rows queued by an older agent may have been sent already, so they start marked.
    M::up(
        r#"
ALTER TABLE outbox ADD COLUMN sent INTEGER NOT NULL DEFAULT 0;
UPDATE outbox SET sent = 1;
"#,
    ),
    // Reports the coordinator refused for their content (a poison event): kept, never
    // deleted, shown by `fleetwave-agent status`. See `outbox`.
    M::up(
        r#"
CREATE TABLE dead_letter (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    kind       TEXT NOT NULL,
    event      TEXT NOT NULL,
    status     INTEGER NOT NULL,
    code       TEXT NOT NULL,
    message    TEXT NOT NULL,
    refused_at TEXT NOT NULL
);
CREATE INDEX dead_letter_kind ON dead_letter (kind);
"#,
    ),
    // Finished golden-signal minutes waiting to go to the coordinator, one row per
    // (stream, minute); bounded, oldest dropped first. See `signal_queue`.
    M::up(
        r#"
CREATE TABLE signal_queue (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    minute TEXT NOT NULL,
    body   TEXT NOT NULL,
    UNIQUE (stream, minute)
);
"#,
    ),
];

/// The state database. Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

/// The verified documents the agent is working on (kept across restarts and offline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAssignment {
    pub assignment: Envelope,
    pub release: Envelope,
    pub accepted_at: Timestamp,
}

/// What is committed on this box for one release stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledRelease {
    pub stream: String,
    pub release_id: String,
    pub version: String,
    #[serde(skip)]
    pub release: Option<Envelope>,
    pub committed_at: Timestamp,
    pub previous_release_id: Option<String>,
    pub previous_version: Option<String>,
    #[serde(skip)]
    pub previous_release: Option<Envelope>,
}

/// A local deferral: no install starts before `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deferral {
    pub until: Timestamp,
    pub reason: Option<String>,
    pub set_at: Timestamp,
}

pub(crate) fn ts(text: String, what: &'static str) -> Result<Timestamp, StateError> {
    text.parse().map_err(|e: jiff::Error| StateError::Corrupt {
        what,
        message: e.to_string(),
    })
}

pub(crate) fn envelope(text: &str, what: &'static str) -> Result<Envelope, StateError> {
    Envelope::from_json(text.as_bytes()).map_err(|e| StateError::Corrupt {
        what,
        message: e.to_string(),
    })
}

pub(crate) fn envelope_text(env: &Envelope) -> String {
    String::from_utf8(env.to_json()).expect("envelope JSON is UTF-8")
}

impl Store {
    /// Opens (creating if needed) `agent.db` in `state_dir` and brings its schema up to date.
    pub fn open(state_dir: &Path) -> Result<Store, StateError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StateError::Dir {
            path: state_dir.display().to_string(),
            source,
        })?;
        Store::open_file(&state_dir.join("agent.db"))
    }

    pub fn open_file(path: &Path) -> Result<Store, StateError> {
        let shown = path.display().to_string();
        let mut conn = Connection::open(path).map_err(|source| StateError::Open {
            path: shown.clone(),
            source,
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .and_then(|_| conn.pragma_update(None, "synchronous", "FULL"))
            .and_then(|_| conn.pragma_update(None, "foreign_keys", "ON"))
            .and_then(|_| conn.busy_timeout(std::time::Duration::from_secs(10)))
            .map_err(|source| StateError::Open {
                path: shown.clone(),
                source,
            })?;
        Migrations::from_slice(MIGRATIONS)
            .to_latest(&mut conn)
            .map_err(|e| StateError::Migrate {
                path: shown,
                message: e.to_string(),
            })?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- facts ----------------------------------------------------------------------

    pub fn meta(&self, key: &str) -> Result<Option<String>, StateError> {
        Ok(self
            .conn()
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    pub fn delete_meta(&self, key: &str) -> Result<(), StateError> {
        self.conn()
            .execute("DELETE FROM meta WHERE key = ?1", [key])?;
        Ok(())
    }

    // ---- trust ----------------------------------------------------------------------

    pub fn trust(&self) -> Result<Option<PersistedTrust>, StateError> {
        let text: Option<String> = self
            .conn()
            .query_row("SELECT state FROM trust WHERE id = 1", [], |r| r.get(0))
            .optional()?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| StateError::Corrupt {
                what: "trust state",
                message: e.to_string(),
            })
        })
        .transpose()
    }

    pub fn save_trust(&self, trust: &PersistedTrust) -> Result<(), StateError> {
        let text = serde_json::to_string(trust).expect("trust state serializes");
        self.conn().execute(
            "INSERT INTO trust (id, state) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state",
            [text],
        )?;
        Ok(())
    }

    // ---- the assignment being worked on ---------------------------------------------

    pub fn assignment(&self) -> Result<Option<StoredAssignment>, StateError> {
        let row: Option<(String, String, String)> = self
            .conn()
            .query_row(
                "SELECT assignment, release, accepted_at FROM assignment WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        row.map(|(a, r, at)| {
            Ok(StoredAssignment {
                assignment: envelope(&a, "stored assignment")?,
                release: envelope(&r, "stored release")?,
                accepted_at: ts(at, "assignment accepted_at")?,
            })
        })
        .transpose()
    }

    /// Stores the accepted assignment and the trust state that accepted it, atomically.
    pub fn save_accepted(
        &self,
        assignment: &Envelope,
        release: &Envelope,
        trust: &PersistedTrust,
        at: Timestamp,
    ) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO assignment (id, assignment, release, accepted_at) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET assignment = excluded.assignment,
                 release = excluded.release, accepted_at = excluded.accepted_at",
            params![
                envelope_text(assignment),
                envelope_text(release),
                at.to_string()
            ],
        )?;
        tx.execute(
            "INSERT INTO trust (id, state) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state",
            [serde_json::to_string(trust).expect("trust state serializes")],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets the assignment (the coordinator withdrew it).
    pub fn clear_assignment(&self) -> Result<(), StateError> {
        self.conn().execute("DELETE FROM assignment", [])?;
        Ok(())
    }

    // ---- installed releases ---------------------------------------------------------

    pub fn installed(&self) -> Result<Vec<InstalledRelease>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT stream, release_id, version, release, committed_at, previous_release_id,
                    previous_version, previous_release FROM installed ORDER BY stream",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(stream, release_id, version, rel, at, pid, pver, prel)| {
                Ok(InstalledRelease {
                    stream,
                    release_id,
                    version,
                    release: Some(envelope(&rel, "installed release")?),
                    committed_at: ts(at, "installed committed_at")?,
                    previous_release_id: pid,
                    previous_version: pver,
                    previous_release: prel.map(|p| envelope(&p, "previous release")).transpose()?,
                })
            })
            .collect()
    }

    pub fn installed_stream(&self, stream: &str) -> Result<Option<InstalledRelease>, StateError> {
        Ok(self.installed()?.into_iter().find(|i| i.stream == stream))
    }

    /// Records a committed release of `stream`, the one before it becoming the previous
    /// release, together with the trust state that recorded it, atomically.
    #[allow(clippy::too_many_arguments)]
    pub fn record_commit(
        &self,
        stream: &str,
        release_id: &str,
        version: &str,
        release: &Envelope,
        trust: &PersistedTrust,
        at: Timestamp,
    ) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let before: Option<(String, String, String)> = tx
            .query_row(
                "SELECT release_id, version, release FROM installed WHERE stream = ?1",
                [stream],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        // Committing the same release again (a resumed commit) keeps the previous one.
        let already = before.as_ref().is_some_and(|(id, _, _)| id == release_id);
        if !already {
            let (pid, pver, prel) = match before {
                Some((a, b, c)) => (Some(a), Some(b), Some(c)),
                None => (None, None, None),
            };
            tx.execute(
                "INSERT INTO installed (stream, release_id, version, release, committed_at,
                     previous_release_id, previous_version, previous_release)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (stream) DO UPDATE SET release_id = excluded.release_id,
                     version = excluded.version, release = excluded.release,
                     committed_at = excluded.committed_at,
                     previous_release_id = excluded.previous_release_id,
                     previous_version = excluded.previous_version,
                     previous_release = excluded.previous_release",
                params![
                    stream,
                    release_id,
                    version,
                    envelope_text(release),
                    at.to_string(),
                    pid,
                    pver,
                    prel
                ],
            )?;
        }
        tx.execute(
            "INSERT INTO trust (id, state) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state",
            [serde_json::to_string(trust).expect("trust state serializes")],
        )?;
        tx.commit()?;
        Ok(())
    }

    // ---- deferral -------------------------------------------------------------------

    pub fn deferral(&self) -> Result<Option<Deferral>, StateError> {
        let row: Option<(String, Option<String>, String)> = self
            .conn()
            .query_row(
                "SELECT until, reason, set_at FROM deferral WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        row.map(|(until, reason, set_at)| {
            Ok(Deferral {
                until: ts(until, "deferral until")?,
                reason,
                set_at: ts(set_at, "deferral set_at")?,
            })
        })
        .transpose()
    }

    pub fn set_deferral(&self, deferral: &Deferral) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT INTO deferral (id, until, reason, set_at) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET until = excluded.until, reason = excluded.reason,
                 set_at = excluded.set_at",
            params![
                deferral.until.to_string(),
                deferral.reason,
                deferral.set_at.to_string()
            ],
        )?;
        Ok(())
    }

    pub fn clear_deferral(&self) -> Result<bool, StateError> {
        Ok(self.conn().execute("DELETE FROM deferral", [])? > 0)
    }
}

/// A random 128-bit id as 32 lowercase hex characters (event ids, nonces).
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.set_meta("site_id", "store-17").unwrap();
            store
                .set_deferral(&Deferral {
                    until: "2026-01-02T00:00:00Z".parse().unwrap(),
                    reason: Some("sale".into()),
                    set_at: "2026-01-01T00:00:00Z".parse().unwrap(),
                })
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.meta("site_id").unwrap().as_deref(), Some("store-17"));
        assert_eq!(
            store.deferral().unwrap().unwrap().reason.as_deref(),
            Some("sale")
        );
        assert!(store.clear_deferral().unwrap());
        assert!(store.deferral().unwrap().is_none());
        let mode: String = store
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = store
            .conn()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
    }
}
