//! The PostgreSQL implementation of the store: the state of several coordinator replicas
//! in one database (see docs/architecture.md, "Storage").
//!
//! The driver is the synchronous `postgres` client on an `r2d2` pool: [`super::Store`] is
//! a blocking trait called on tokio's blocking pool, so a blocking client is the direct
//! fit (no second runtime to bridge to). TLS to the database is rustls with ring.
//!
//! Every write is one transaction at SERIALIZABLE isolation, retried from the start when
//! PostgreSQL reports a serialization failure or a deadlock: concurrent writers (threads
//! of one replica, or several replicas) behave as SQLite's single writer does, one after
//! the other, so the rules the SQL keeps (exactly-once reports, monotonic counters and
//! sequences, one active rollout per site) hold across replicas without checks in the
//! application. Attempts after the first wait a random moment first (up to 1, 2, 4 … 64 ms),
//! so that transactions that collided do not collide again in lock step. A write whose rule
//! one row's primary key keeps by itself (a session nonce: insert unless present) runs at
//! READ COMMITTED instead ([`PgStore::write_committed`]): under SERIALIZABLE, many sites'
//! handshakes at once conflicted on the index pages they share and failed after every
//! attempt. A method returns only after its transaction committed. It must never be
//! called from an async worker thread directly: go through [`super::Db`].
//!
//! Layout follows the SQLite backend: this module holds the pool, the migrations and the
//! transaction helpers; one module per area implements its part of the trait.

mod access;
mod changes;
mod channels;
pub mod dashboard;
mod dashboard_sessions;
mod freezes;
mod leadership;
mod reports;
mod signals;
pub use signals::SAMPLES_SQL;
mod site_import;
mod store_impl;
pub use reports::{FIRST_UNHEALTHY_SQL, PRUNE_REPORTS_SQL};
mod assignments;
mod releases;
mod rollouts;
mod rows;
mod sites;
mod webhooks;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ::postgres::error::SqlState;
use ::postgres::{IsolationLevel, Row, Statement, Transaction};
use fleetwave_shared::Envelope;
use jiff::Timestamp;
use rustls_pki_types::pem::PemObject as _;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::*;
use rows::*;

/// A PostgreSQL error that says what the server said (the client's own message for a
/// server error is only "db error").
#[derive(Debug)]
pub struct PgError(pub ::postgres::Error);

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_db_error() {
            Some(db) => {
                write!(
                    f,
                    "{} {}: {}",
                    db.severity(),
                    db.code().code(),
                    db.message()
                )?;
                if let Some(detail) = db.detail() {
                    write!(f, " ({detail})")?;
                }
                Ok(())
            }
            None => {
                write!(f, "{}", self.0)?;
                if let Some(source) = std::error::Error::source(&self.0) {
                    write!(f, ": {source}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for PgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl From<::postgres::Error> for StoreError {
    fn from(e: ::postgres::Error) -> StoreError {
        StoreError::Backend(Box::new(PgError(e)))
    }
}

/// The pool's connections: the sync client over rustls, its errors as [`PgError`].
pub(crate) struct Manager {
    config: ::postgres::Config,
    tls: MakeRustlsConnect,
}

impl r2d2::ManageConnection for Manager {
    type Connection = ::postgres::Client;
    type Error = PgError;

    fn connect(&self) -> Result<::postgres::Client, PgError> {
        self.config.connect(self.tls.clone()).map_err(PgError)
    }

    fn is_valid(&self, client: &mut ::postgres::Client) -> Result<(), PgError> {
        client.simple_query("").map(|_| ()).map_err(PgError)
    }

    fn has_broken(&self, client: &mut ::postgres::Client) -> bool {
        client.is_closed()
    }
}

impl From<r2d2::Error> for StoreError {
    fn from(e: r2d2::Error) -> StoreError {
        StoreError::Backend(Box::new(e))
    }
}

/// The migrations, in order: version n is `MIGRATIONS[n - 1]`. Never edit a released one:
/// add the next.
const MIGRATIONS: &[&str] = &[
    include_str!("schema_v1.sql"),
    // Version 2: dashboard sessions; 3: the wave controller's lease row; 4: boxes; 5:
    // each box's facts in a rollout; 6: change notifications between replicas.
    include_str!("schema_v2_sessions.sql"),
    include_str!("schema_leadership.sql"),
    include_str!("schema_v4_boxes.sql"),
    include_str!("schema_v5_box_facts.sql"),
    include_str!("schema_notify.sql"),
];

/// The key of the advisory lock that serializes migrations of replicas starting together.
const MIGRATION_LOCK: i64 = 0x666c_6565_7477_6176; // "fleetwav"

/// Attempts of one write transaction before a serialization failure is returned.
const WRITE_ATTEMPTS: u32 = 20;

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://user:password@host:port/database?sslmode=...` (or key=value pairs).
    pub url: String,
    /// The password, when it is not in the URL (`storage.password_file`).
    pub password: Option<String>,
    /// Connections kept open at most.
    pub pool_size: u32,
    /// PEM file of the certificate authorities that sign the server's certificate (else
    /// the system's roots). Used when the URL asks for TLS (`sslmode=require`) or the
    /// server offers it (`sslmode=prefer`, the default).
    pub ca_file: Option<PathBuf>,
    /// How long a call waits for a free connection (or a new one) before failing.
    pub connect_timeout: Duration,
}

impl PgOptions {
    pub fn new(url: impl Into<String>) -> PgOptions {
        PgOptions {
            url: url.into(),
            password: None,
            pool_size: 16,
            ca_file: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

pub(crate) type Pool = r2d2::Pool<Manager>;
pub(crate) type Conn = r2d2::PooledConnection<Manager>;

pub struct PgStore {
    pool: Arc<PoolHandle>,
    /// How this process's connections are made (the change feed opens one of its own).
    config: ::postgres::Config,
    tls: MakeRustlsConnect,
    /// This process's name in change notifications (`fleetwave.origin`).
    origin: String,
}

/// The pool, shared by the store and its read model. The sync client closes a connection
/// by blocking on its own small runtime, which tokio forbids on an async worker thread:
/// when the last handle goes there (a server shutting down, a test's runtime ending), the
/// pool is closed on a thread of its own instead.
pub(crate) struct PoolHandle(Option<Pool>);

impl std::ops::Deref for PoolHandle {
    type Target = Pool;
    fn deref(&self) -> &Pool {
        self.0.as_ref().expect("the pool is there until dropped")
    }
}

impl Drop for PoolHandle {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let _ = std::thread::Builder::new()
                .name("fleetwave-pg-close".into())
                .spawn(move || drop(pool));
        }
    }
}

/// rustls (ring) with the CA file's roots, or the system's.
fn tls(ca_file: Option<&std::path::Path>) -> StoreResult<MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                StoreError::Migration(format!(
                    "storage.ca_file {}: cannot read: {e}",
                    path.display()
                ))
            })?;
            let mut n = 0;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    StoreError::Migration(format!("storage.ca_file {}: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    StoreError::Migration(format!("storage.ca_file {}: {e}", path.display()))
                })?;
                n += 1;
            }
            if n == 0 {
                return Err(StoreError::Migration(format!(
                    "storage.ca_file {}: no PEM certificate in it",
                    path.display()
                )));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system root that rustls cannot use is left out, as browsers do.
                let _ = roots.add(cert);
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Migration(format!("TLS to the database: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Whether a failed transaction should be run again: PostgreSQL aborted it for a
/// serialization failure or a deadlock, and running it again may succeed.
fn retryable(e: &StoreError) -> bool {
    let StoreError::Backend(b) = e else {
        return false;
    };
    b.downcast_ref::<PgError>()
        .and_then(|e| e.0.code())
        .is_some_and(|c| {
            *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
        })
}

/// A row's primary key (or another unique index) was taken by a transaction that
/// committed meanwhile: at READ COMMITTED, running the transaction again sees that row.
fn unique_violation(e: &StoreError) -> bool {
    let StoreError::Backend(b) = e else {
        return false;
    };
    b.downcast_ref::<PgError>()
        .and_then(|e| e.0.code())
        .is_some_and(|c| *c == SqlState::UNIQUE_VIOLATION)
}

impl PgStore {
    /// Connects to the database and runs pending migrations (under an advisory lock, so
    /// that replicas starting together migrate once).
    pub fn open(options: &PgOptions) -> StoreResult<PgStore> {
        let mut config: ::postgres::Config = options.url.parse().map_err(|e| {
            StoreError::Migration(format!("storage.url is not a PostgreSQL URL: {e}"))
        })?;
        if let Some(password) = &options.password {
            config.password(password);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("fleetwave-coordinator");
        }
        // Every connection names this process in the change notifications its writes
        // send (schema_notify.sql), so that it can tell its own from other replicas'.
        let origin = crate::ids::random_hex(6);
        let options_line = match config.get_options() {
            Some(o) if !o.is_empty() => format!("{o} -c fleetwave.origin={origin}"),
            _ => format!("-c fleetwave.origin={origin}"),
        };
        config.options(&options_line);
        let tls = tls(options.ca_file.as_deref())?;
        let manager = Manager {
            config: config.clone(),
            tls: tls.clone(),
        };
        let pool = r2d2::Pool::builder()
            .max_size(options.pool_size.max(1))
            .min_idle(Some(0))
            .connection_timeout(options.connect_timeout)
            .test_on_check_out(false)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(manager);
        let store = PgStore {
            pool: Arc::new(PoolHandle(Some(pool))),
            config,
            tls,
            origin,
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> StoreResult<()> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS fleetwave_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )?;
        let at: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM fleetwave_schema",
                &[],
            )?
            .get(0);
        if at as usize > MIGRATIONS.len() {
            return Err(StoreError::Migration(format!(
                "the database is at schema version {at}, newer than this coordinator knows ({}): \
                 upgrade the coordinator",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(at as usize) {
            let version = i as i64 + 1;
            tx.batch_execute(sql)
                .map_err(|e| StoreError::Migration(format!("schema version {version}: {e}")))?;
            tx.execute(
                "INSERT INTO fleetwave_schema (version, applied_at) VALUES ($1, $2)",
                &[&version, &ms(Timestamp::now())],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// A connection of the pool, for tools that work on the database as a whole
    /// (`migrate-store`).
    pub(crate) fn connection(&self) -> StoreResult<Conn> {
        self.conn()
    }

    fn conn(&self) -> StoreResult<Conn> {
        Ok(self.pool.get()?)
    }

    /// A read on a pooled connection (each statement sees what was committed before it).
    fn read<T>(&self, f: impl FnOnce(&mut Conn) -> StoreResult<T>) -> StoreResult<T> {
        let mut c = self.conn()?;
        f(&mut c)
    }

    /// One SERIALIZABLE write transaction, run again from the start (up to
    /// [`WRITE_ATTEMPTS`] times) when PostgreSQL aborts it for a serialization failure or
    /// a deadlock. A write of the wave controller (one made inside
    /// [`super::fence::fenced`]) first checks its fencing token against the leadership
    /// row, in the same transaction.
    fn write<T>(&self, mut f: impl FnMut(&mut Transaction) -> StoreResult<T>) -> StoreResult<T> {
        match super::fence::current() {
            Some(fence) => self.write_unfenced(|tx| {
                leadership::check(tx, fence)?;
                f(tx)
            }),
            None => self.write_unfenced(f),
        }
    }

    /// [`PgStore::write`] without the fencing check (claiming the leadership itself).
    fn write_unfenced<T>(
        &self,
        f: impl FnMut(&mut Transaction) -> StoreResult<T>,
    ) -> StoreResult<T> {
        self.write_at(IsolationLevel::Serializable, f)
    }

    /// One READ COMMITTED write transaction, retried like [`PgStore::write`] (on a
    /// deadlock), and also when a unique index refused a row another transaction committed
    /// meanwhile: for a write whose rules a row's primary key and row locks keep (insert
    /// unless present; take turns on a locked row), which needs no serializable snapshot.
    /// Never for the wave controller's writes (no fencing check here).
    fn write_committed<T>(
        &self,
        f: impl FnMut(&mut Transaction) -> StoreResult<T>,
    ) -> StoreResult<T> {
        self.write_at(IsolationLevel::ReadCommitted, f)
    }

    fn write_at<T>(
        &self,
        level: IsolationLevel,
        mut f: impl FnMut(&mut Transaction) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let mut c = self.conn()?;
        let mut attempt = 1;
        loop {
            let result = (|| {
                let mut tx = c.build_transaction().isolation_level(level).start()?;
                let out = f(&mut tx)?;
                tx.commit()?;
                Ok(out)
            })();
            match result {
                Err(e)
                    if attempt < WRITE_ATTEMPTS
                        && (retryable(&e)
                            || (matches!(level, IsolationLevel::ReadCommitted)
                                && unique_violation(&e))) =>
                {
                    std::thread::sleep(retry_pause(attempt));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// How long to wait before attempt `attempt + 1` of a write: a random moment up to
/// 2^(attempt-1) ms, at most 64 ms (the writers that collided spread out instead of
/// colliding again together).
fn retry_pause(attempt: u32) -> std::time::Duration {
    let ceiling_us = 1_000u64 << attempt.saturating_sub(1).min(6);
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    std::time::Duration::from_micros(u64::from_le_bytes(bytes) % ceiling_us)
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

/// A 0/1 flag column as a bool.
fn flag(r: &Row, i: usize) -> bool {
    r.get::<_, i64>(i) != 0
}

fn opt_flag(r: &Row, i: usize) -> Option<bool> {
    r.get::<_, Option<i64>>(i).map(|v| v != 0)
}

/// A count or small number column as u32 (corrupt when out of range).
fn u32_col(r: &Row, i: usize) -> StoreResult<u32> {
    let v: i64 = r.get(i);
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("column {i}: {v} is out of range")))
}

fn collect<T>(rows: Vec<Row>, f: impl Fn(&Row) -> StoreResult<T>) -> StoreResult<Vec<T>> {
    rows.iter().map(f).collect()
}
