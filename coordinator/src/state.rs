//! The running coordinator's HTTP- and session-level state: configuration, the store
//! handle for the API's own records, agent sessions, the root chain, the shutdown signal
//! and the wave controller's liveness, next to the rollout engine
//! ([`crate::engine::Engine`]), which owns the poll cache and every write that changes
//! rollouts, assignments, leases and reports.
//!
//! Nothing in this module decides policy.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use fleetwave_shared::docs::Root;
use fleetwave_shared::verify::{Verified, verify_root_anchor, verify_root_rotation};
use fleetwave_shared::{Envelope, sha256_hex};
use jiff::Timestamp;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::Config;
use crate::engine::Engine;
use crate::liveness::{Liveness, stale_after};
use crate::metrics::Metrics;
use crate::store::Db;

pub use crate::ids::random_hex;

pub type AppState = Arc<App>;

/// Everything handlers and background tasks share.
pub struct App {
    pub config: Config,
    /// The store, for what the API keeps itself (tokens, audit, sites, artifacts).
    pub db: Db,
    pub sessions: Sessions,
    pub trust: RwLock<TrustChain>,
    /// Bumped when a root is added (wakes long polls of every site).
    pub roots_changed: watch::Sender<u64>,
    pub metrics: Arc<Metrics>,
    /// Turns true when the server shuts down (ends long polls at once).
    pub shutdown: watch::Receiver<bool>,
    /// The rollout engine: rollouts, assignments (and the poll cache), leases, reports.
    pub engine: Engine,
    /// Where every "now" is read.
    pub clock: Clock,
    /// Whether the wave controller runs (`/readyz`, metrics, the dashboard's banner).
    pub controller: Liveness,
    /// Where artifact bytes live (files or an object store).
    pub artifacts: crate::artifact_store::ArtifactStore,
}

impl App {
    /// The time now, from the injected clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Why the wave controller is not doing its job now, or None (see [`Liveness`]).
    pub fn controller_problem(&self) -> Option<String> {
        let tick = std::time::Duration::from_millis(self.config.controller.tick_millis);
        self.controller
            .status()
            .problem(std::time::Instant::now(), stale_after(tick))
    }
}

/// The root chain, oldest first, and the newest root verified along it.
pub struct TrustChain {
    pub envelopes: Vec<Envelope>,
    pub current: Verified<Root>,
}

impl TrustChain {
    /// Verifies a chain: the first is the anchor, each next one a rotation.
    pub fn verify(envelopes: Vec<Envelope>) -> Result<TrustChain, String> {
        let first = envelopes.first().ok_or("no root envelope is known")?;
        let mut current = verify_root_anchor(first).map_err(|e| format!("root 1: {e}"))?;
        for (i, next) in envelopes.iter().enumerate().skip(1) {
            current =
                verify_root_rotation(&current, next).map_err(|e| format!("root {}: {e}", i + 1))?;
        }
        Ok(TrustChain { envelopes, current })
    }

    pub fn latest_version(&self) -> u64 {
        self.current.version
    }

    /// Root envelopes newer than `version`.
    pub fn newer_than(&self, version: Option<u64>) -> Vec<Envelope> {
        let skip = version.unwrap_or(0) as usize;
        self.envelopes.iter().skip(skip).cloned().collect()
    }
}

/// An agent session: bearer tokens are kept only as SHA-256.
#[derive(Debug, Clone)]
pub struct Session {
    pub site_id: String,
    pub expires_at: Timestamp,
}

#[derive(Default)]
pub struct Sessions {
    by_hash: RwLock<HashMap<String, Session>>,
}

impl Sessions {
    /// Creates a session and returns its bearer token.
    pub fn open(&self, site_id: &str, expires_at: Timestamp, now: Timestamp) -> String {
        let token = random_hex(32);
        let mut map = self.by_hash.write().unwrap_or_else(|e| e.into_inner());
        // Expired sessions are swept now and then, not on every open (cheap at scale).
        if map.len() % 1024 == 1023 {
            map.retain(|_, s| s.expires_at > now);
        }
        map.insert(
            sha256_hex(token.as_bytes()),
            Session {
                site_id: site_id.to_string(),
                expires_at,
            },
        );
        token
    }

    /// The live session of a bearer token.
    pub fn lookup(&self, token: &str, now: Timestamp) -> Option<Session> {
        let map = self.by_hash.read().unwrap_or_else(|e| e.into_inner());
        map.get(&sha256_hex(token.as_bytes()))
            .filter(|s| s.expires_at > now)
            .cloned()
    }

    /// Drops every session of a site (decommission, re-enrollment).
    pub fn drop_site(&self, site_id: &str) {
        let mut map = self.by_hash.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.site_id != site_id);
    }
}
