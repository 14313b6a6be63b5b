//! The SQLite implementation of [`Store`]: one file in WAL mode, one writer connection
//! behind a mutex, a few read-only connections for queries.
//!
//! Every write is one transaction committed with `synchronous=FULL` before the method
//! returns. It must never be called from an async worker thread directly: go through
//! [`super::Db`].
//!
//! Layout: this module holds the connections and migrations; `rows` maps rows to
//! records; `store_impl` implements [`Store`] by delegating to one module per area
//! (`access`, `sites`, `releases`, `rollouts`, `assignments`, `reports`: the report
//! path, which stores agent reports and folds them with [`super::fold`]'s rules);
//! [`dashboard`] is the dashboard's read model and [`backup`] the backup and restore of
//! the file.

mod access;
mod assignments;
pub mod backup;
mod channels;
pub mod dashboard;
mod dashboard_sessions;
mod freezes;
mod releases;
mod reports;
mod rollouts;
mod rows;
mod signals;
mod site_import;
pub use signals::{SAMPLES_SQL, signals_samples_sql};
mod sites;
mod store_impl;
mod webhooks;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleetwave_shared::Envelope;
use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags};
use rusqlite_migration::{M, Migrations};

use super::*;
use rows::*;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Backend(Box::new(e))
    }
}

const READERS: usize = 4;
/// The writer connection's page cache in KiB (SQLite's default is 2,000 KiB per
/// connection; readers keep it).
const WRITER_CACHE_KIB: i64 = 64 * 1024;
/// A site's (?1) first unhealthy heartbeat at or after ?2: what a commit looks for. It
/// must stay answerable from the partial index `reports_unhealthy` (schema v3).
pub const FIRST_UNHEALTHY_SQL: &str = "SELECT MIN(at) FROM reports WHERE site_id = ?1 AND kind = 'health' AND at >= ?2 AND json_extract(body, '$.healthy') = 0";
/// Deletes at most ?3 reports of kind ?1 received before ?2, oldest first, through the
/// index `reports_by_kind_received` (schema v3).
pub const PRUNE_REPORTS_SQL: &str = "DELETE FROM reports WHERE rowid IN (SELECT rowid FROM reports WHERE kind = ?1 AND received_at < ?2 ORDER BY received_at LIMIT ?3)";

/// The migrations, in order. Never edit a released one: add the next.
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("../schema.sql")),
        M::up(include_str!("../schema_v2.sql")),
        M::up(include_str!("../schema_v3.sql")),
        M::up(include_str!("../schema_v4.sql")),
        M::up(include_str!("../schema_v5.sql")),
        M::up(include_str!("../schema_v6.sql")),
        M::up(include_str!("../schema_v7.sql")),
        M::up(include_str!("../schema_v8.sql")),
        M::up(include_str!("../schema_v9.sql")),
        M::up(include_str!("../schema_v10.sql")),
        M::up(include_str!("../schema_v11.sql")),
        M::up(include_str!("../schema_v12.sql")),
        M::up(include_str!("../schema_v13.sql")),
    ])
}

pub struct SqliteStore {
    /// The database file (the dashboard's read model opens its own connections to it).
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    // Room for every statement of the report and assignment paths (rusqlite's default 16
    // would evict them in turn and prepare each statement again).
    conn.set_prepared_statement_cache_capacity(64);
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs pending migrations.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Migration(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let mut writer = Connection::open(path)?;
        let mode: String =
            writer.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Migration(format!(
                "{} does not support WAL mode (got {mode})",
                path.display()
            )));
        }
        configure(&writer)?;
        // The writer's page cache: the pages a wave's reports touch again and again
        // (indexes of reports and rollout sites) stay in memory instead of being read
        // through the kernel for every statement. Filled only as pages are used.
        writer.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
        migrations()
            .to_latest(&mut writer)
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            configure(&conn)?;
            readers.push(Mutex::new(conn));
        }
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        let conn = self.readers[i].lock().unwrap_or_else(|e| e.into_inner());
        f(&conn)
    }

    fn write<T>(&self, f: impl FnOnce(&rusqlite::Transaction) -> StoreResult<T>) -> StoreResult<T> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

fn ms(t: Timestamp) -> i64 {
    to_millis(t)
}

fn opt_ts(v: Option<i64>) -> StoreResult<Option<Timestamp>> {
    v.map(from_millis).transpose()
}

fn json_map(text: &str) -> StoreResult<BTreeMap<String, String>> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("labels: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serializes")
}

fn envelope(text: &str) -> StoreResult<Envelope> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("envelope: {e}")))
}

fn collect<T, R>(
    rows: impl Iterator<Item = rusqlite::Result<R>>,
    f: impl Fn(R) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let mut out = Vec::new();
    for row in rows {
        out.push(f(row?)?);
    }
    Ok(out)
}
