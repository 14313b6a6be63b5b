//! Backup and restore of the coordinator's state: the SQLite backend's
//! [`crate::store::sqlite::backup`], re-exported where `main` and the tests find it.

pub use crate::store::sqlite::backup::*;
