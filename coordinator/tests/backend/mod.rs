//! Both store backends for the tests that use the store directly (`mod backend;`): a
//! temporary SQLite file, or a fresh database on a real PostgreSQL server started for the
//! test ([`fleetwave_testkit::postgres::PgServer`]). A test written once as
//! `fn name(backend: Backend)` runs on each through [`both_backends!`], as
//! `sqlite::name` and `postgres::name`. Without PostgreSQL installed the PostgreSQL half
//! fails with what to install; it never skips.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use fleetwave_coordinator::store::{PgOptions, PgStore, SqliteStore, Store};
use fleetwave_testkit::postgres::PgServer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One test's database (and its PostgreSQL server), removed when dropped.
pub struct TestDb {
    pub backend: Backend,
    dir: tempfile::TempDir,
    /// The PostgreSQL server and the database's URL.
    pg: Option<(PgServer, String)>,
}

impl TestDb {
    pub fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let pg = (backend == Backend::Postgres).then(|| {
            let server = PgServer::start();
            let url = server.create_database();
            (server, url)
        });
        TestDb { backend, dir, pg }
    }

    /// A temporary directory for the test's own files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The SQLite file (SQLite only).
    pub fn sqlite_path(&self) -> std::path::PathBuf {
        self.dir.path().join("c.db")
    }

    /// The PostgreSQL URL (PostgreSQL only).
    pub fn url(&self) -> &str {
        &self.pg.as_ref().expect("a PostgreSQL test database").1
    }

    /// The PostgreSQL server (PostgreSQL only).
    pub fn server(&self) -> &PgServer {
        &self.pg.as_ref().expect("a PostgreSQL test database").0
    }

    /// Opens the store (migrating the database); again to reopen it.
    pub fn open(&self) -> Arc<dyn Store> {
        match self.backend {
            Backend::Sqlite => Arc::new(SqliteStore::open(&self.sqlite_path()).unwrap()),
            Backend::Postgres => Arc::new(PgStore::open(&PgOptions::new(self.url())).unwrap()),
        }
    }

    /// What a coordinator's configuration file needs to keep its state here: nothing for
    /// SQLite (the file in its data directory), `[storage]` for PostgreSQL.
    pub fn storage_config(&self) -> String {
        match self.backend {
            Backend::Sqlite => String::new(),
            Backend::Postgres => format!(
                "\n[storage]\nbackend = \"postgres\"\nurl = \"{}\"\npool_size = 8\n",
                self.url()
            ),
        }
    }

    /// The first column (text) of every row of `sql`, read straight from the database.
    pub fn strings(&self, sql: &str) -> Vec<String> {
        match self.backend {
            Backend::Sqlite => {
                let c = rusqlite::Connection::open(self.sqlite_path()).unwrap();
                let mut st = c.prepare(sql).unwrap();
                st.query_map([], |r| r.get(0))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect()
            }
            Backend::Postgres => {
                let mut c = postgres::Client::connect(self.url(), postgres::NoTls).unwrap();
                c.query(sql, &[])
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect()
            }
        }
    }
}

/// Runs each `fn name(backend: Backend)` on both backends, as `sqlite::name` and
/// `postgres::name`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                super::$name($crate::backend::Backend::Sqlite)
            })*
        }
        mod postgres {
            $(#[test]
            fn $name() {
                super::$name($crate::backend::Backend::Postgres)
            })*
        }
    };
}

/// Runs each `async fn name(backend: Backend)` on both backends as a tokio test, as
/// `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! both_backends_async {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name($crate::backend::Backend::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name($crate::backend::Backend::Postgres).await
            })*
        }
    };
}
