//! Which replica runs the wave controller: several coordinator processes share one
//! PostgreSQL database, and exactly one of them (the leader) runs the controller.
//!
//! The leadership is a lease row in the database ([`crate::store::Store::claim_leadership`]),
//! claimed and renewed every third of `storage.leader_lease_secs` by the database's clock
//! (the replicas' clocks play no part). When the leader stops renewing (it died, hangs, or
//! lost the database), another replica takes over once the lease has expired; every
//! takeover increments the row's fencing token. The leader runs its controller inside
//! [`crate::store::fence::fenced`] with its token, so that every write the controller
//! makes is checked against the row in its own transaction: a paused old leader that wakes
//! up after a takeover has its writes refused instead of landing.
//!
//! On SQLite (one process) the leadership is always held and nothing is fenced.
//!
//! This module never decides anything about a rollout; it only starts and stops the
//! controller.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::store::fence::{self, Fence};
use crate::store::{Claim, Db, StoreResult};

/// What this replica is to the wave controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not known yet (the database has not answered a claim).
    Candidate,
    /// This replica runs the controller, with this fencing token.
    Leader { token: i64 },
    /// Another replica runs it.
    Follower { holder: String },
}

/// This replica's claim on the wave controller's leadership.
pub struct Leadership {
    db: Db,
    holder: String,
    lease: Duration,
    /// Test hook: the renewals stop as if the process were paused, while its controller
    /// goes on believing it leads.
    paused: AtomicBool,
    role: watch::Sender<Role>,
}

/// A name for this process among the replicas: host, process id and a random part (a
/// restarted process is a new holder: after a crash it takes over only once the old
/// lease expired; a process that shut down resigned its lease already).
pub fn holder_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "coordinator".to_string());
    format!(
        "{host}/{}/{}",
        std::process::id(),
        crate::ids::random_hex(3)
    )
}

impl Leadership {
    /// A claimant called `holder`, holding the leadership for `lease` per renewal.
    pub fn new(db: Db, holder: String, lease: Duration) -> Leadership {
        Leadership {
            db,
            holder,
            lease,
            paused: AtomicBool::new(false),
            role: watch::Sender::new(Role::Candidate),
        }
    }

    /// The name this replica claims the leadership with.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// What this replica is now.
    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// Every change of [`Leadership::role`].
    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    /// How often the lease is renewed (and a follower tries to claim it): a third of it.
    pub fn renew_every(&self) -> Duration {
        (self.lease / 3).max(Duration::from_millis(100))
    }

    /// Test hook: stops (true) or restarts (false) the renewals, as a paused process
    /// would, without stopping the controller.
    pub fn pause_renewal(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    /// This process's claimant ([`holder_id`]) on `db`, with the configured lease
    /// (`storage.leader_lease_secs`).
    pub fn configured(db: Db, config: &crate::config::Config) -> Leadership {
        Leadership::new(
            db,
            holder_id(),
            Duration::from_secs(config.storage.leader_lease_secs),
        )
    }

    /// Claims once and tells `observe` what this replica is, so that it serves (or stands
    /// by) from its first request on; [`Leadership::lead`] goes on from there.
    pub async fn first_claim(&self, observe: impl Fn(&Role)) -> StoreResult<()> {
        let role = match self.claim().await? {
            Claim::Leader { token } => Role::Leader { token },
            Claim::Follower { holder, .. } => Role::Follower { holder },
        };
        self.set_role(role, &observe);
        Ok(())
    }

    /// One claim (or renewal) of the leadership.
    pub async fn claim(&self) -> StoreResult<Claim> {
        let (holder, lease) = (self.holder.clone(), self.lease);
        self.db
            .run(move |s| s.claim_leadership(&holder, lease))
            .await
    }

    /// Until `shutdown`: waits to lead, then runs `run(fence)` inside
    /// [`fence::fenced`] while renewing the lease; stops it when the leadership is lost
    /// and waits to lead again. Returns when `run` returns (the controller ended) or at
    /// shutdown. `observe` sees every change of [`Leadership::role`].
    pub async fn lead<F, Fut>(
        &self,
        shutdown: watch::Receiver<bool>,
        observe: impl Fn(&Role),
        run: F,
    ) where
        F: FnMut(Fence) -> Fut,
        Fut: Future<Output = ()>,
    {
        self.lead_until_stopped(shutdown.clone(), observe, run)
            .await;
        if *shutdown.borrow() && matches!(self.role(), Role::Leader { .. }) {
            // Shutting down: hand over now rather than after the lease.
            let holder = self.holder.clone();
            match self.db.run(move |s| s.resign_leadership(&holder)).await {
                Ok(()) => {
                    tracing::info!(holder = %self.holder, "resigned the wave controller's leadership")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not resign the wave controller's leadership; another replica takes over when its lease expires")
                }
            }
        }
    }

    async fn lead_until_stopped<F, Fut>(
        &self,
        mut shutdown: watch::Receiver<bool>,
        observe: impl Fn(&Role),
        mut run: F,
    ) where
        F: FnMut(Fence) -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            let Some(token) = self.wait_to_lead(&mut shutdown, &observe).await else {
                return;
            };
            self.set_role(Role::Leader { token }, &observe);
            tracing::info!(holder = %self.holder, token, "this replica leads the wave controller");
            let fence = Fence { token };
            tokio::select! {
                _ = fence::fenced(fence, run(fence)) => return,
                why = self.keep(token, &observe) => {
                    tracing::warn!(holder = %self.holder, token, reason = %why, "this replica lost the wave controller's leadership; its controller stops");
                    self.set_role(Role::Candidate, &observe);
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    fn set_role(&self, role: Role, observe: &impl Fn(&Role)) {
        let changed = self.role.send_if_modified(|r| {
            if *r == role {
                return false;
            }
            *r = role.clone();
            true
        });
        if changed {
            observe(&role);
        }
    }

    /// Claims until this replica leads (its token) or shutdown (None).
    async fn wait_to_lead(
        &self,
        shutdown: &mut watch::Receiver<bool>,
        observe: &impl Fn(&Role),
    ) -> Option<i64> {
        loop {
            if *shutdown.borrow() {
                return None;
            }
            match self.claim().await {
                Ok(Claim::Leader { token }) => return Some(token),
                Ok(Claim::Follower { holder, .. }) => {
                    if self.role()
                        != (Role::Follower {
                            holder: holder.clone(),
                        })
                    {
                        tracing::info!(leader = %holder, "another replica leads the wave controller; this one stands by");
                    }
                    self.set_role(Role::Follower { holder }, observe);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not claim the wave controller's leadership; trying again");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.renew_every()) => {}
                _ = shutdown.changed() => return None,
            }
        }
    }

    /// Renews the lease of `token` until it is lost; returns why. A lease that could not
    /// be renewed for its whole length is lost too: another replica may hold it by now.
    async fn keep(&self, token: i64, observe: &impl Fn(&Role)) -> String {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.renew_every()).await;
            if self.paused.load(Ordering::SeqCst) {
                continue;
            }
            if renewed.elapsed() >= self.lease {
                // Woken past the lease (a stopped process, a migrated VM): another replica
                // may lead by now. Stand by until the database says.
                self.set_role(Role::Candidate, observe);
            }
            let sent = Instant::now();
            match self.claim().await {
                Ok(Claim::Leader { token: t }) if t == token => {
                    // The lease runs from before the claim was sent, by this clock.
                    renewed = sent;
                    self.set_role(Role::Leader { token }, observe);
                }
                Ok(Claim::Leader { token: t }) => {
                    return format!(
                        "the lease expired unrenewed; it was claimed again with token {t}, not {token}"
                    );
                }
                Ok(Claim::Follower {
                    holder, token: t, ..
                }) => {
                    return format!("replica {holder} took it over with token {t}");
                }
                Err(e) if renewed.elapsed() >= self.lease => {
                    return format!(
                        "it could not be renewed for its whole lease ({}s): {e}",
                        self.lease.as_secs_f64()
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew the wave controller's leadership; trying again");
                }
            }
        }
    }
}
