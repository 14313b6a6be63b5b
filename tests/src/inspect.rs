//! Read-only looks into the databases of the real processes, for facts no API exposes:
//! which report events the coordinator stored for a site (in its SQLite file or its
//! PostgreSQL database), and what an agent still holds in its outbox.
//!
//! SQLite connections are opened read-only (WAL allows readers beside the running writer);
//! PostgreSQL is only sent SELECTs. This module must never write to any database: a
//! scenario observes, it does not repair.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::error::{HarnessError, Result};

/// One report event as the coordinator stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReport {
    pub event_id: String,
    /// When the agent says it happened (the coordinator's `at` column, as stored).
    pub at: i64,
    pub kind: String,
    pub body: serde_json::Value,
}

/// One event waiting in an agent's outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedEvent {
    pub id: String,
    pub kind: String,
    pub event: serde_json::Value,
}

fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| HarnessError::Fleet(format!("opening {} read-only: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| HarnessError::Fleet(format!("{}: {e}", path.display())))?;
    Ok(conn)
}

fn query_err(path: &Path, e: rusqlite::Error) -> HarnessError {
    HarnessError::Fleet(format!("querying {}: {e}", path.display()))
}

fn json(text: String) -> serde_json::Value {
    serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
}

/// The coordinator's database.
#[derive(Debug, Clone)]
pub struct CoordinatorDb {
    path: PathBuf,
    /// A PostgreSQL URL instead of the SQLite file at `path`.
    postgres: Option<String>,
}

const REPORTS: &str = "SELECT event_id, at, kind, body FROM reports WHERE site_id = $1 \
                       ORDER BY at, received_at, event_id";

impl CoordinatorDb {
    /// The coordinator's SQLite file.
    pub fn new(path: impl Into<PathBuf>) -> CoordinatorDb {
        CoordinatorDb {
            path: path.into(),
            postgres: None,
        }
    }

    /// The coordinators' PostgreSQL database at `url`.
    pub fn postgres(url: &str) -> CoordinatorDb {
        CoordinatorDb {
            path: PathBuf::new(),
            postgres: Some(url.to_string()),
        }
    }

    /// Every report event stored for `site`, in the order the agent said they happened.
    pub fn reports(&self, site: &str) -> Result<Vec<StoredReport>> {
        if let Some(url) = &self.postgres {
            let err = |e: postgres::Error| HarnessError::Fleet(format!("querying {url}: {e}"));
            let mut client = postgres::Client::connect(url, postgres::NoTls).map_err(err)?;
            let rows = client.query(REPORTS, &[&site]).map_err(err)?;
            return Ok(rows
                .iter()
                .map(|row| StoredReport {
                    event_id: row.get(0),
                    at: row.get(1),
                    kind: row.get(2),
                    body: json(row.get(3)),
                })
                .collect());
        }
        let conn = open(&self.path)?;
        let mut stmt = conn
            .prepare(REPORTS)
            .map_err(|e| query_err(&self.path, e))?;
        let rows = stmt
            .query_map([site], |row| {
                Ok(StoredReport {
                    event_id: row.get(0)?,
                    at: row.get(1)?,
                    kind: row.get(2)?,
                    body: json(row.get(3)?),
                })
            })
            .map_err(|e| query_err(&self.path, e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| query_err(&self.path, e))
    }

    /// Each box's facts in `rollout` for `site` (a site of several boxes), by box id: the
    /// JSON the coordinator keeps (`committed_at`, `leased_at`, `failed_at`, ...).
    pub fn box_facts(&self, rollout: &str, site: &str) -> Result<Vec<(String, serde_json::Value)>> {
        let conn = open(&self.path)?;
        let mut stmt = conn
            .prepare(
                "SELECT box_id, facts FROM rollout_boxes WHERE rollout_id = ?1 AND site_id = ?2 \
                 ORDER BY box_id",
            )
            .map_err(|e| query_err(&self.path, e))?;
        let rows = stmt
            .query_map([rollout, site], |row| Ok((row.get(0)?, json(row.get(1)?))))
            .map_err(|e| query_err(&self.path, e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| query_err(&self.path, e))
    }
}

/// An agent's state database (`<state_dir>/agent.db`).
#[derive(Debug, Clone)]
pub struct AgentDb {
    path: PathBuf,
}

impl AgentDb {
    pub fn new(state_dir: &Path) -> AgentDb {
        AgentDb {
            path: state_dir.join("agent.db"),
        }
    }

    /// Events not yet acknowledged by the coordinator, oldest first.
    pub fn outbox(&self) -> Result<Vec<QueuedEvent>> {
        let conn = open(&self.path)?;
        let mut stmt = conn
            .prepare("SELECT id, kind, event FROM outbox ORDER BY seq")
            .map_err(|e| query_err(&self.path, e))?;
        let rows = stmt
            .query_map([], |row| {
                Ok(QueuedEvent {
                    id: row.get(0)?,
                    kind: row.get(1)?,
                    event: json(row.get(2)?),
                })
            })
            .map_err(|e| query_err(&self.path, e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| query_err(&self.path, e))
    }
}
