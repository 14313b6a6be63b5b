//! The dashboard's read model: the store's [`DashboardRead`] (aggregate and paginated
//! reads over the fleet, see [`crate::store::read`]), run on tokio's blocking pool. The
//! queries themselves live with the storage backend (SQLite:
//! [`crate::store::sqlite::dashboard`]).

use std::sync::Arc;

pub use crate::store::read::{DashboardRead, FleetCounts, GridCell, SiteQuery, SiteRow};
use crate::store::{StoreError, StoreResult};

/// Why a dashboard read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("dashboard read failed: {0}")]
    Store(#[from] StoreError),
    #[error("dashboard read task failed: {0}")]
    Task(String),
}

/// The dashboard's handle on the read model.
pub struct ReadModel {
    read: Arc<dyn DashboardRead>,
}

impl ReadModel {
    pub fn new(read: Arc<dyn DashboardRead>) -> ReadModel {
        ReadModel { read }
    }

    /// Runs `f` on the blocking pool with the read model.
    pub async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, ReadError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn DashboardRead) -> StoreResult<T> + Send + 'static,
    {
        let read = self.read.clone();
        Ok(tokio::task::spawn_blocking(move || f(read.as_ref()))
            .await
            .map_err(|e| ReadError::Task(e.to_string()))??)
    }
}
