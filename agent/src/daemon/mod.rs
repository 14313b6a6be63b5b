//! The daemon: poll, verify, decide, lease, install through the executor, report.
//!
//! One task runs the main loop (poll → accept or refuse → readiness → lease → install →
//! report); a second samples health on its own interval; a third pings the systemd
//! watchdog when one is configured. Nothing wakes up more often than the configured
//! intervals: a long poll waits in the kernel, sleeps are timers. On start the install
//! journal is read and an interrupted install is finished or rolled back (and reported).
//!
//! This module never acts on a document the trust core refused, never installs without a
//! lease (except air-gapped, where there is no coordinator to grant one), and never
//! deletes a queued report that was not acknowledged.

//!
//! Layout: this module is the loop and its wiring (what one round does, what to do with
//! the stored assignment); [`context`] what the daemon and the local commands share;
//! [`accept`] polling and accepting or refusing documents (polls and bundles); [`install`]
//! driving an install through its steps and the journal; [`rollback`] going back;
//! [`deliver`] sending the outbox; [`pacing`] back-offs and jitter; [`service`] the
//! health sampler, systemd status and signals.

mod accept;
mod context;
mod deliver;
mod install;
mod pacing;
mod rollback;
mod service;
mod stage;

use std::sync::Arc;
use std::time::Duration;

use fleetwave_shared::protocol::Phase;

use crate::client::{ClientError, Session};
use crate::clock::Clock;
use crate::config::Config;
use crate::decision::{self, Facts, Readiness};
use crate::readiness::{DiskNeed, Health};
use crate::state::StateError;

pub use accept::{Accepting, accept_documents};
pub use context::Context;
pub use deliver::{SIGNAL_DELIVERY_KEY, deliver_reports, deliver_signals};
pub use pacing::{StepPacer, jittered, retry_delay, spread_up};
use pacing::{backoff_delay, new_backoff};
pub use rollback::RollbackFailing;
pub use service::record_sample;
use service::{shutdown_signal, spawn_sampler, status};

/// This agent's version, as reported and compared with `min_agent_version`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why the daemon (or a local command) cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("this box is not enrolled: no trust state in {0}; run `fleetwave-agent enroll` first")]
    NotEnrolled(String),
    #[error("the stored root of trust no longer verifies: {0}")]
    Trust(String),
    #[error("cannot read the device key {path}: {message}")]
    DeviceKey { path: String, message: String },
    #[error("health checks cannot be set up: {0}")]
    Health(String),
    #[error("the peer cache ([peers]) cannot start: {0}")]
    Peers(String),
}

/// A background task that ends with the daemon.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How the main loop goes on after an install attempt.
enum Next {
    /// Nothing more to do now.
    Idle,
    /// Try again after this delay (retryable failure, lease denied, waiting).
    RetryIn(Duration),
    /// A request to the coordinator failed: try again after the poll back-off (the
    /// coordinator's `Retry-After`, if it sent one, is the least delay).
    CoordinatorFailed { retry_after: Option<Duration> },
    /// The agent replaced itself and must exit so its service restarts it.
    Exit,
}

/// An install the daemon is recovering after a restart ([`Daemon::recovery`]).
#[derive(Debug, Clone)]
struct Recovering {
    /// `recovered after restart at step <step> (<state>)`.
    prefix: String,
    /// What the executor found on the box at restart (`kubernetes`: the cordon, the binary).
    found: Option<String>,
}

impl Recovering {
    /// The report of how the recovery ended (`what`: `finished the upgrade`, `rolled
    /// back`), with what the executor found at restart and finds now.
    async fn ended(&self, what: &str, executor: &crate::executor::Executor) -> String {
        match (&self.found, executor.recovery_found().await) {
            (Some(then), Some(now)) => {
                format!("{}: {what} (at restart: {then}; now: {now})", self.prefix)
            }
            _ => format!("{}: {what}", self.prefix),
        }
    }
}

/// The running daemon.
pub struct Daemon {
    ctx: Context,
    config_path: std::path::PathBuf,
    session: Option<Session>,
    health: Arc<Health>,
    etag: Option<String>,
    last_wait: Option<String>,
    /// Detail for the next `committed` phase event (set by recovery).
    note: Option<String>,
    /// An install being recovered after a restart: how the recovery report began
    /// (`recovered after restart at step ...`) and what the executor found then. Its
    /// `committed` or `rolled_back` report says which of the two ended it.
    recovery: Option<Recovering>,
    /// Back-off of a download that failed in a retryable way.
    downloads: StepPacer,
    /// Back-off of a rollback that failed.
    rollbacks: StepPacer,
    /// The download ahead of the window in progress (`download.ahead`).
    staging: Option<stage::Staging>,
    /// No new download ahead before then (the last one failed).
    staging_retry_at: Option<tokio::time::Instant>,
    /// The site's other boxes (`[peers] enabled`), asked before the coordinator.
    peers: Option<Arc<crate::peer::Peers>>,
}

impl Daemon {
    /// `config_path` is passed on to the self-update guard.
    pub fn new(config: Config, config_path: &std::path::Path) -> Result<Daemon, DaemonError> {
        Daemon::with_clock(config, config_path, Clock::system())
    }

    /// [`Daemon::new`] reading the time from `clock`.
    pub fn with_clock(
        config: Config,
        config_path: &std::path::Path,
        clock: Clock,
    ) -> Result<Daemon, DaemonError> {
        let ctx = Context::open_with_clock(config, clock)?;
        let ctx_poll = ctx.config.poll.clone();
        let ctx_install = ctx.config.install.clone();
        let session = ctx.session()?;
        let health = Arc::new(ctx.health()?);
        let peers = if ctx.config.peers.enabled {
            let board = crate::peer::Board::default();
            let peers =
                crate::peer::Peers::new(&ctx.config.peers, board).map_err(DaemonError::Peers)?;
            Some(Arc::new(peers))
        } else {
            None
        };
        Ok(Daemon {
            ctx,
            config_path: config_path.to_path_buf(),
            session,
            health,
            etag: None,
            last_wait: None,
            note: None,
            recovery: None,
            downloads: StepPacer::downloads(&ctx_poll),
            rollbacks: StepPacer::rollbacks(&ctx_install),
            staging: None,
            staging_retry_at: None,
            peers,
        })
    }

    /// Runs until SIGTERM or SIGINT.
    pub async fn run(mut self) -> Result<(), DaemonError> {
        tracing::info!(site = %self.ctx.site_id, version = AGENT_VERSION, "fleetwave-agent starting");
        crate::test_hooks::announce();
        if let Next::Exit = self.recover().await? {
            return Ok(());
        }
        self.ctx.report_installed()?;
        fleetwave_shared::service::ready();
        status("running");
        let _watchdog = fleetwave_shared::service::spawn_watchdog();
        let _sampler = spawn_sampler(
            self.ctx.store.clone(),
            self.health.clone(),
            &self.ctx.config,
            self.ctx.clock.clone(),
        );
        // Golden signals: one scrape task per configured stream, apart from the loop.
        let _signals = crate::signals::spawn(
            self.ctx.store.clone(),
            &self.ctx.config.signals,
            self.ctx.clock.clone(),
        );

        // The peer cache's server: serves this box's verified artifacts to its peers.
        let _peer_server = match &self.peers {
            Some(peers) => {
                let config = &self.ctx.config.peers;
                let server = crate::peer::server::PeerServer::bind(
                    config,
                    &self.ctx.config.staging_dir(),
                    peers.board().clone(),
                )
                .await
                .map_err(|e| {
                    DaemonError::Peers(format!(
                        "cannot listen on peers.listen {}: {e}",
                        config.listen
                    ))
                })?;
                tracing::info!(
                    "serving verified artifacts to the site's peers on {}",
                    config.listen
                );
                Some(AbortOnDrop(tokio::spawn(server.run())))
            }
            None => None,
        };

        let mut shutdown = Box::pin(shutdown_signal());
        let poll = &self.ctx.config.poll;
        let mut backoff = new_backoff(poll);
        loop {
            // Stopping drops an iteration wherever it is: the journal makes that as safe as
            // a power cut (the next start finishes or rolls back), so a stop never waits for
            // a verify period.
            let delay = tokio::select! {
                next = self.iteration(&mut backoff) => match next? {
                    Some(delay) => delay,
                    None => return Ok(()),
                },
                _ = &mut shutdown => Duration::ZERO,
            };
            if delay.is_zero() {
                tracing::info!("stopping");
                fleetwave_shared::service::stopping();
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = &mut shutdown => {
                    tracing::info!("stopping");
                    fleetwave_shared::service::stopping();
                    return Ok(());
                }
            }
        }
    }

    /// One round: deliver reports, poll, work on the assignment, deliver again. Returns the
    /// delay until the next round (never zero), or `None` when the agent must exit.
    async fn iteration(
        &mut self,
        backoff: &mut backon::ExponentialBackoff,
    ) -> Result<Option<Duration>, DaemonError> {
        // An import-bundle may have accepted an assignment since the last round.
        self.ctx.reload_trust()?;
        self.deliver_reports().await;
        let poll = self.ctx.config.poll.clone();
        let (delay, poll_failed) = match self.poll_once().await {
            Ok(next) => {
                *backoff = new_backoff(&poll);
                (next, false)
            }
            Err(e) => {
                let wait = backoff_delay(backoff, &poll, e.retry_after());
                tracing::warn!(retry_in_secs = wait.as_secs_f64(), "poll failed: {e}");
                status(&format!("coordinator unreachable: {e}"));
                (wait, true)
            }
        };
        let delay = match self.work().await? {
            Next::Exit => return Ok(None),
            Next::RetryIn(d) => delay.min(d),
            // The poll failed too: its back-off already covers this outage.
            Next::CoordinatorFailed { retry_after } if poll_failed => {
                delay.max(retry_after.unwrap_or_default())
            }
            Next::CoordinatorFailed { retry_after } => {
                delay.min(backoff_delay(backoff, &poll, retry_after))
            }
            Next::Idle => delay,
        };
        self.deliver_reports().await;
        let delay = delay.max(Duration::from_millis(100));
        tracing::debug!(next_round_in_secs = delay.as_secs_f64(), "round done");
        Ok(Some(delay))
    }

    /// Decides what to do with the stored assignment and does it.
    async fn work(&mut self) -> Result<Next, DaemonError> {
        let open = self.ctx.store.journal_open()?;
        let open_id = open.as_ref().map(|e| e.id);
        let now = self.ctx.clock.instant();
        if let Some(wait) = self.downloads.wait(open_id, now) {
            // The download failed lately: it waits out its back-off (polls go on).
            return Ok(Next::RetryIn(wait));
        }
        if let Some(wait) = self.rollbacks.wait(open_id, now) {
            // So does a rollback that failed.
            return Ok(Next::RetryIn(wait));
        }
        if open.is_some() {
            // A retryable failure left an install open: resume it.
            return self.recover().await;
        }
        let Some(stored) = self.ctx.store.assignment()? else {
            status("idle: no assignment");
            return Ok(Next::Idle);
        };
        let accepted = match self.ctx.evaluate(&stored.assignment, &stored.release) {
            Ok(a) => a,
            Err(refusal) => {
                // Expired (or otherwise no longer valid): never acted on.
                self.ctx.refuse(&refusal, Some(&stored.assignment))?;
                self.ctx.store.clear_assignment()?;
                return Ok(Next::Idle);
            }
        };
        let a = &accepted.assignment;
        let r = &accepted.release;
        if self
            .ctx
            .store
            .journal_finished_for(&a.rollout_id, a.sequence)?
            .is_some()
        {
            status(&format!(
                "idle: assignment {}#{} done",
                a.rollout_id, a.sequence
            ));
            return Ok(Next::Idle);
        }
        if let Some(installed) = self.ctx.store.installed_stream(&r.name)?
            && installed.release_id == r.id
        {
            status(&format!("idle: {} {} installed", r.name, r.version));
            return Ok(Next::Idle);
        }
        let need = DiskNeed {
            path: self.ctx.config.staging_dir(),
            artifact_bytes: r.artifacts.iter().map(|x| x.length).sum(),
        };
        let sample = self.health.readiness(&need).await;
        let failing: Vec<String> = sample
            .failing()
            .map(|c| format!("{}: {}", c.name, c.reason))
            .collect();
        let deferred_until = self.ctx.store.deferral()?.map(|d| d.until);
        let zone = self.ctx.config.time_zone();
        let now = self.ctx.trust.effective_now(self.ctx.clock.now());
        let decision = decision::readiness(
            &Facts {
                assignment: a,
                zone: &zone,
                deferred_until,
                failing_checks: &failing,
            },
            now,
        );
        match decision {
            Readiness::Expired { .. } => {
                // evaluate() already refuses expired assignments; this is the same rule.
                self.ctx.store.clear_assignment()?;
                Ok(Next::Idle)
            }
            Readiness::Wait(wait) => {
                self.waiting(&a.rollout_id, &r.id, wait.detail())?;
                let mut until = wait
                    .until()
                    .map(|u| Duration::from_secs(u.duration_since(now).as_secs().max(1) as u64))
                    .unwrap_or(Duration::from_secs(self.ctx.config.health.interval_secs));
                // Download ahead while it waits, unless a check fails (e.g. too little
                // disk: the disk check counts the artifacts' size).
                if self.ctx.config.download.ahead
                    && failing.is_empty()
                    && let Some(look_again) = self.stage_ahead(&a.rollout_id, r).await?
                {
                    until = until.min(look_again);
                }
                Ok(Next::RetryIn(until))
            }
            Readiness::Ready => {
                self.last_wait = None;
                self.lease_and_install(&accepted).await
            }
        }
    }

    /// Waiting to install (`detail` says for what): the systemd status line, and the
    /// `waiting` phase reported once per distinct reason, not on every round.
    fn waiting(
        &mut self,
        rollout_id: &str,
        release_id: &str,
        detail: String,
    ) -> Result<(), DaemonError> {
        status(&format!("waiting: {detail}"));
        if self.last_wait.as_deref() != Some(&detail) {
            self.ctx.phase(
                Some(rollout_id),
                release_id,
                Phase::Waiting,
                Some(detail.clone()),
            )?;
            self.last_wait = Some(detail);
        }
        Ok(())
    }

    /// After a lease denial: ask again when the coordinator said (at least a second later),
    /// spread upward by the poll jitter so that the boxes it turned away do not all come
    /// back at the same instant.
    fn after_denial(&self, retry_after: Duration) -> Next {
        Next::RetryIn(spread_up(
            retry_after.max(Duration::from_secs(1)),
            self.ctx.config.poll.jitter,
        ))
    }
}
