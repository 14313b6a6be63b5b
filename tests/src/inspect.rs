//! Read-only looks into the SQLite files of the real processes, for facts no API exposes:
//! which report events the coordinator stored for a site, and what an agent still holds in
//! its outbox.
//!
//! Connections are opened read-only (SQLite WAL allows readers beside the running writer).
//! This module must never write to either database: a scenario observes, it does not
//! repair.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::error::{HarnessError, Result};

/// One report event as the coordinator stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReport {
    pub event_id: String,
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
}

impl CoordinatorDb {
    pub fn new(path: impl Into<PathBuf>) -> CoordinatorDb {
        CoordinatorDb { path: path.into() }
    }

    /// Every report event stored for `site`, in the order the agent said they happened.
    pub fn reports(&self, site: &str) -> Result<Vec<StoredReport>> {
        let conn = open(&self.path)?;
        let mut stmt = conn
            .prepare(
                "SELECT event_id, kind, body FROM reports WHERE site_id = ?1 \
                 ORDER BY at, received_at, event_id",
            )
            .map_err(|e| query_err(&self.path, e))?;
        let rows = stmt
            .query_map([site], |row| {
                Ok(StoredReport {
                    event_id: row.get(0)?,
                    kind: row.get(1)?,
                    body: json(row.get(2)?),
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
