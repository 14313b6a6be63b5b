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

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use fleetwave_shared::Envelope;
use fleetwave_shared::protocol::{EventBody, Phase, ReportBatch};
use fleetwave_shared::service;
use fleetwave_shared::trust::{Accepted, TrustState};
use jiff::Timestamp;

use crate::client::{self, ClientError, PollAnswer, Session};
use crate::config::Config;
use crate::decision::{self, Facts, Readiness};
use crate::executor::{ArtifactSource, ExecError, Executor, InstallOutcome, RetryPolicy};
use crate::readiness::{DiskNeed, Health, HealthSample};
use crate::state::journal::{self, JournalEntry, NewInstall, Outcome, Recovery, Step, StepState};
use crate::state::{StateError, Store};

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
}

/// What the daemon and the local commands share: configuration, state, trust, identity.
pub struct Context {
    pub config: Config,
    pub store: Store,
    pub trust: TrustState,
    pub site_id: String,
}

impl Context {
    /// Opens the state and restores the trust state (which verifies the stored root again).
    pub fn open(config: Config) -> Result<Context, DaemonError> {
        let store = Store::open(&config.agent.state_dir)?;
        let saved = store.trust()?.ok_or_else(|| {
            DaemonError::NotEnrolled(config.agent.state_dir.display().to_string())
        })?;
        let mut trust =
            TrustState::restore(saved).map_err(|e| DaemonError::Trust(e.to_string()))?;
        // State saved before the trust state remembered what ran: the releases committed
        // here are in `installed` (only ever written after a verified commit).
        for installed in store.installed()? {
            if trust.ran_releases.contains_key(&installed.stream) {
                continue;
            }
            let committed = [&installed.previous_release, &installed.release];
            for release in committed.into_iter().flatten() {
                trust.remember_ran(&installed.stream, &release.digest());
            }
        }
        let site_id = if config.agent.site_id.is_empty() {
            store.meta("site_id")?.ok_or_else(|| {
                DaemonError::NotEnrolled(config.agent.state_dir.display().to_string())
            })?
        } else {
            config.agent.site_id.clone()
        };
        Ok(Context {
            config,
            store,
            trust,
            site_id,
        })
    }

    pub fn device_key(&self) -> Result<SigningKey, DaemonError> {
        let path = self.config.device_key_path();
        fleetwave_shared::keys::read_private_key(&path).map_err(|e| DaemonError::DeviceKey {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// A session with the coordinator, or `None` for an air-gapped box (no URL).
    pub fn session(&self) -> Result<Option<Session>, DaemonError> {
        if self.config.coordinator.url.trim().is_empty() {
            return Ok(None);
        }
        let http = client::http_client(&self.config.coordinator)?;
        Ok(Some(Session::new(
            http,
            &self.config.coordinator.url,
            &self.site_id,
            self.device_key()?,
        )))
    }

    pub fn health(&self) -> Result<Health, DaemonError> {
        Health::new(self.config.health.clone(), &self.config.staging_dir())
            .map_err(|e| DaemonError::Health(e.to_string()))
    }

    /// Queues a report.
    pub fn report(&self, body: EventBody) -> Result<String, StateError> {
        self.store
            .outbox_push(body, Timestamp::now(), self.config.outbox.max_events)
    }

    pub fn phase(
        &self,
        rollout_id: Option<&str>,
        release_id: &str,
        phase: Phase,
        detail: Option<String>,
    ) -> Result<(), StateError> {
        tracing::info!(
            release_id,
            phase = phase.as_str(),
            detail = detail.as_deref().unwrap_or(""),
            "install phase"
        );
        self.report(EventBody::Phase {
            rollout_id: rollout_id.map(str::to_string),
            release_id: release_id.to_string(),
            phase,
            detail,
        })?;
        Ok(())
    }

    /// Re-checks stored envelopes with the trust core at the current time.
    pub fn evaluate(
        &self,
        assignment: &Envelope,
        release: &Envelope,
    ) -> Result<Accepted, fleetwave_shared::Refusal> {
        self.trust.evaluate(
            &self.site_id,
            assignment,
            release,
            Timestamp::now(),
            AGENT_VERSION,
        )
    }

    /// Accepts a verified assignment: trust state and assignment persisted together.
    pub fn accept(&mut self, accepted: &Accepted) -> Result<(), StateError> {
        self.trust.accept(accepted);
        self.store.save_accepted(
            accepted.assignment.envelope(),
            accepted.release.envelope(),
            &self.trust.persisted(),
            Timestamp::now(),
        )
    }

    /// Reports a refusal (never acted on).
    pub fn refuse(
        &self,
        refusal: &fleetwave_shared::Refusal,
        assignment: Option<&Envelope>,
    ) -> Result<(), StateError> {
        let (rollout_id, sequence) = assignment
            .and_then(peek_assignment)
            .map(|a| (Some(a.rollout_id), Some(a.sequence)))
            .unwrap_or((None, None));
        tracing::warn!(code = refusal.code(), "refused: {refusal}");
        self.report(EventBody::Refusal {
            code: refusal.code().to_string(),
            message: refusal.to_string(),
            rollout_id,
            sequence,
        })?;
        Ok(())
    }

    /// Queues one `installed` event per stream (what is on the box now).
    pub fn report_installed(&self) -> Result<(), StateError> {
        for i in self.store.installed()? {
            self.report(EventBody::Installed {
                name: i.stream.clone(),
                release_id: Some(i.release_id.clone()),
                version: Some(i.version.clone()),
                previous_release_id: i.previous_release_id.clone(),
            })?;
        }
        Ok(())
    }
}

/// Reads an assignment's fields without verifying it, only to label a refusal report.
fn peek_assignment(envelope: &Envelope) -> Option<fleetwave_shared::Assignment> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&envelope.payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// systemd notifications (no-ops outside systemd).
fn status(text: &str) {
    service::status(text);
}

/// `interval × (1 ± jitter)`, from the operating system's random generator.
pub fn jittered(base: Duration, jitter: f64) -> Duration {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    let unit = (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
    let factor = 1.0 + jitter * (2.0 * unit - 1.0);
    base.mul_f64(factor.max(0.0))
}

/// `base × (1 + jitter × u)` with `u` uniform in [0, 1): spread upward only, so a delay
/// the coordinator asked for is never cut short, yet boxes told the same delay do not come
/// back in step.
pub fn spread_up(base: Duration, jitter: f64) -> Duration {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    let unit = (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
    base.mul_f64(1.0 + jitter.max(0.0) * unit)
}

/// The delay before trying the coordinator again after a failed request: the next step of
/// the exponential back-off (`backoff_next`, already jittered), but never shorter than the
/// coordinator's `Retry-After`, itself spread upward by `jitter`. A coordinator that keeps
/// answering `503` with `Retry-After: 1` (its long-poll limit is full) therefore sees each
/// box back off further on every refusal, at a random offset, instead of every box coming
/// back exactly one second later.
pub fn retry_delay(retry_after: Option<Duration>, backoff_next: Duration, jitter: f64) -> Duration {
    match retry_after {
        Some(asked) => backoff_next.max(spread_up(asked, jitter)),
        None => backoff_next,
    }
}

/// When an install step that failed in a way worth retrying may be tried again: an
/// exponential back-off (from `min`, doubling with jitter, up to `max`), kept per install
/// and forgotten when the step succeeds or another install is open. Polls go on meanwhile;
/// only the step waits. Downloads (`prepare`: coordinator unreachable, artifact not there
/// yet) use the poll back-off (`poll.backoff_min_secs` .. `poll.backoff_max_secs`),
/// rollbacks `install.rollback_retry_min_secs` .. `install.rollback_retry_max_secs`.
pub struct StepPacer {
    min: Duration,
    max: Duration,
    /// The journal entry the back-off belongs to, its state and the earliest next try.
    pending: Option<(i64, backon::ExponentialBackoff, std::time::Instant)>,
}

impl StepPacer {
    pub fn new(min: Duration, max: Duration) -> StepPacer {
        StepPacer {
            min,
            max,
            pending: None,
        }
    }

    /// The pacer of downloads: the poll back-off.
    pub fn downloads(poll: &crate::config::PollConfig) -> StepPacer {
        StepPacer::new(
            Duration::from_secs(poll.backoff_min_secs),
            Duration::from_secs(poll.backoff_max_secs),
        )
    }

    /// The pacer of failed rollbacks: `install.rollback_retry_*`.
    pub fn rollbacks(install: &crate::config::InstallConfig) -> StepPacer {
        StepPacer::new(
            Duration::from_secs(install.rollback_retry_min_secs),
            Duration::from_secs(install.rollback_retry_max_secs),
        )
    }

    /// The step of install `entry` failed at `now`: returns the delay before the next try
    /// (the next back-off step; a new back-off for a different install).
    pub fn failed(&mut self, entry: i64, now: std::time::Instant) -> Duration {
        let mut backoff = match self.pending.take() {
            Some((id, backoff, _)) if id == entry => backoff,
            _ => exponential(self.min, self.max),
        };
        let delay = backoff.next().unwrap_or(self.max);
        self.pending = Some((entry, backoff, now + delay));
        delay
    }

    /// How long install `entry` must still wait before its step is tried again, if it
    /// must. A back-off of another install is forgotten.
    pub fn wait(&mut self, entry: Option<i64>, now: std::time::Instant) -> Option<Duration> {
        match &self.pending {
            Some((id, _, at)) if Some(*id) == entry => {
                (*at > now).then(|| at.saturating_duration_since(now))
            }
            Some(_) => {
                self.pending = None;
                None
            }
            None => None,
        }
    }

    /// The step succeeded: the next failure starts from `min` again.
    pub fn succeeded(&mut self) {
        self.pending = None;
    }
}

/// A rollback that keeps failing, as `fleetwave-agent status` shows it: kept in `agent.db`
/// (meta key [`RollbackFailing::META_KEY`]) so that the bound on attempts holds across
/// restarts of the agent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RollbackFailing {
    /// The install (journal entry) being rolled back.
    pub entry: i64,
    pub release_id: String,
    /// Failed attempts so far.
    pub failures: u32,
    /// After this many the agent gives up (`install.rollback_attempts`).
    pub attempts: u32,
    pub last_error: String,
    /// The end of the failing command's output.
    pub output: String,
    pub failed_at: Timestamp,
    /// When the next attempt runs (absent once the agent gave up).
    pub next_try_at: Option<Timestamp>,
}

impl RollbackFailing {
    pub const META_KEY: &'static str = "rollback_failing";

    /// The record of `entry`'s failed rollbacks, if any.
    pub fn load(store: &Store, entry: i64) -> Result<Option<RollbackFailing>, StateError> {
        Ok(store
            .meta(Self::META_KEY)?
            .and_then(|t| serde_json::from_str::<RollbackFailing>(&t).ok())
            .filter(|f| f.entry == entry))
    }

    fn save(&self, store: &Store) -> Result<(), StateError> {
        let text = serde_json::to_string(self).expect("rollback record serializes");
        store.set_meta(Self::META_KEY, &text)
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
    /// Back-off of a download that failed in a retryable way.
    downloads: StepPacer,
    /// Back-off of a rollback that failed.
    rollbacks: StepPacer,
}

impl Daemon {
    /// `config_path` is passed on to the self-update guard.
    pub fn new(config: Config, config_path: &std::path::Path) -> Result<Daemon, DaemonError> {
        let ctx = Context::open(config)?;
        let ctx_poll = ctx.config.poll.clone();
        let ctx_install = ctx.config.install.clone();
        let session = ctx.session()?;
        let health = Arc::new(ctx.health()?);
        Ok(Daemon {
            ctx,
            config_path: config_path.to_path_buf(),
            session,
            health,
            etag: None,
            last_wait: None,
            note: None,
            downloads: StepPacer::downloads(&ctx_poll),
            rollbacks: StepPacer::rollbacks(&ctx_install),
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
        service::ready();
        status("running");
        let _watchdog = service::spawn_watchdog();
        let _sampler = spawn_sampler(
            self.ctx.store.clone(),
            self.health.clone(),
            &self.ctx.config,
        );

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
                service::stopping();
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = &mut shutdown => {
                    tracing::info!("stopping");
                    service::stopping();
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

    /// Polls once (long poll); accepts or refuses what came; returns the delay to the next
    /// poll.
    async fn poll_once(&mut self) -> Result<Duration, ClientError> {
        let cfg = &self.ctx.config;
        let default = jittered(Duration::from_secs(cfg.poll.interval_secs), cfg.poll.jitter);
        let Some(session) = &self.session else {
            return Ok(default);
        };
        // The suggested interval counts from the start of this poll: a long poll that the
        // coordinator held open for `wait_secs` has already spent that part of it, so the
        // agent is back in a long poll soon and a newly opened wave reaches it within
        // seconds instead of after a full extra interval.
        let started = std::time::Instant::now();
        let answer = session
            .poll(
                cfg.poll.wait_secs,
                self.ctx.trust.root().version,
                self.etag.as_deref(),
                Duration::from_secs(cfg.coordinator.request_timeout_secs),
            )
            .await?;
        let _ = self
            .ctx
            .store
            .set_meta("last_contact", &Timestamp::now().to_string());
        let suggested = |s: Option<u32>| {
            s.map(|s| jittered(Duration::from_secs(u64::from(s)), cfg.poll.jitter))
                .unwrap_or(default)
        };
        match answer {
            PollAnswer::NotModified { next_poll_secs } => {
                Ok(suggested(next_poll_secs).saturating_sub(started.elapsed()))
            }
            PollAnswer::Changed {
                response,
                etag,
                next_poll_secs,
            } => {
                let next = suggested(next_poll_secs.or(Some(response.next_poll_secs)));
                if let Err(e) = self.on_documents(
                    &response.roots,
                    response.assignment.as_ref(),
                    response.release.as_ref(),
                ) {
                    tracing::error!("cannot store what the coordinator sent: {e}");
                    return Ok(next);
                }
                self.etag = etag;
                Ok(next.saturating_sub(started.elapsed()))
            }
        }
    }

    /// Verifies and accepts (or refuses and reports) what a poll or a bundle delivered.
    fn on_documents(
        &mut self,
        roots: &[Envelope],
        assignment: Option<&Envelope>,
        release: Option<&Envelope>,
    ) -> Result<(), StateError> {
        if let Accepting::NoAssignment =
            accept_documents(&mut self.ctx, roots, assignment, release)?
        {
            self.withdrawn()?;
        }
        Ok(())
    }

    /// The coordinator has no assignment for this site (rollout aborted or finished):
    /// forget the stored one; an install that changed nothing yet is abandoned.
    fn withdrawn(&mut self) -> Result<(), StateError> {
        if let Some(entry) = self.ctx.store.journal_open()? {
            if !matches!(entry.step, Step::Leased | Step::Prepare) {
                return Ok(()); // the box changed: recovery finishes or rolls back
            }
            let why = "the coordinator withdrew the assignment";
            self.ctx.phase(
                Some(&entry.rollout_id),
                &entry.release_id,
                Phase::Failed,
                Some(format!("{why}; abandoned, nothing was changed")),
            )?;
            self.ctx.store.journal_finish(
                entry.id,
                Outcome::Abandoned,
                Some(why),
                Timestamp::now(),
            )?;
        }
        if self.ctx.store.assignment()?.is_some() {
            tracing::info!("the coordinator has no assignment for this site any more");
            self.ctx.store.clear_assignment()?;
        }
        Ok(())
    }

    async fn deliver_reports(&mut self) {
        if let Some(session) = &self.session {
            deliver_reports(&self.ctx, session).await;
        }
    }

    /// Finishes or rolls back an install the journal shows as open.
    async fn recover(&mut self) -> Result<Next, DaemonError> {
        let Some(entry) = self.ctx.store.journal_open()? else {
            return Ok(Next::Idle);
        };
        let current = self.ctx.evaluate(&entry.assignment, &entry.release);
        let decision = journal::recovery(entry.step, entry.state, current.is_ok());
        tracing::warn!(
            release = %entry.release_id, step = entry.step.as_str(), state = entry.state.as_str(),
            decision = ?decision, "found an unfinished install; recovering"
        );
        let detail = |what: &str| {
            format!(
                "recovered after restart at step {} ({}): {what}",
                entry.step.as_str(),
                entry.state.as_str()
            )
        };
        match decision {
            Recovery::Abandon => {
                let why = current.err().map(|r| r.to_string()).unwrap_or_default();
                self.ctx.phase(
                    Some(&entry.rollout_id),
                    &entry.release_id,
                    Phase::Failed,
                    Some(detail(&format!("abandoned, nothing was changed: {why}"))),
                )?;
                self.ctx.store.journal_finish(
                    entry.id,
                    Outcome::Abandoned,
                    Some(&why),
                    Timestamp::now(),
                )?;
                Ok(Next::Idle)
            }
            Recovery::RollBack | Recovery::FinishRollback => {
                self.rollback(&entry, &detail("rolling back")).await
            }
            Recovery::Resume => {
                if let Some(next) = self.renew_lease(&entry).await? {
                    return Ok(next);
                }
                self.resume_at(
                    &entry,
                    Phase::Downloading,
                    detail("resuming"),
                    Step::Prepare,
                )
                .await
            }
            Recovery::Reinstall => {
                self.resume_at(
                    &entry,
                    Phase::Installing,
                    detail("installing again"),
                    Step::Install,
                )
                .await
            }
            Recovery::Reverify => {
                self.resume_at(
                    &entry,
                    Phase::Verifying,
                    detail("verifying again"),
                    Step::Verify,
                )
                .await
            }
            Recovery::FinishCommit => {
                self.note = Some(detail("finishing the commit"));
                self.run_steps(&entry, Step::Commit).await
            }
        }
    }

    /// Recovery that goes on with the install: reports `phase` with the recovery `detail`,
    /// then runs the executor steps from `from`.
    async fn resume_at(
        &mut self,
        entry: &JournalEntry,
        phase: Phase,
        detail: String,
        from: Step,
    ) -> Result<Next, DaemonError> {
        self.ctx.phase(
            Some(&entry.rollout_id),
            &entry.release_id,
            phase,
            Some(detail),
        )?;
        self.run_steps(entry, from).await
    }

    /// Before resuming an install that changed nothing yet: asks for the lease again.
    /// Returns `Some` when the install must not go on now.
    async fn renew_lease(&mut self, entry: &JournalEntry) -> Result<Option<Next>, DaemonError> {
        let Some(session) = &self.session else {
            return Ok(None);
        };
        let timeout = Duration::from_secs(self.ctx.config.coordinator.request_timeout_secs);
        match session
            .lease(&entry.rollout_id, entry.sequence, timeout)
            .await
        {
            Ok(grant) => {
                self.ctx
                    .store
                    .journal_set_lease(entry.id, &grant.lease_id)?;
                Ok(None)
            }
            Err(ClientError::LeaseDenied {
                reason,
                message,
                retry_after,
                ..
            }) => {
                let detail = format!("lease denied: {reason}: {message}");
                if reason.is_final() {
                    self.ctx.phase(
                        Some(&entry.rollout_id),
                        &entry.release_id,
                        Phase::Failed,
                        Some(format!("{detail}; abandoned, nothing was changed")),
                    )?;
                    self.ctx.store.journal_finish(
                        entry.id,
                        Outcome::Abandoned,
                        Some(&detail),
                        Timestamp::now(),
                    )?;
                    return Ok(Some(Next::Idle));
                }
                status(&format!("waiting: {detail}"));
                Ok(Some(self.after_denial(retry_after)))
            }
            Err(e) if self.ctx.config.install.install_offline => {
                tracing::warn!(
                    "cannot renew the lease ({e}); continuing offline (install.install_offline = true)"
                );
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(
                    "cannot renew the lease ({e}); waiting for the coordinator (install.install_offline = false)"
                );
                Ok(Some(Next::CoordinatorFailed {
                    retry_after: e.retry_after(),
                }))
            }
        }
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

    /// Decides what to do with the stored assignment and does it.
    async fn work(&mut self) -> Result<Next, DaemonError> {
        let open = self.ctx.store.journal_open()?;
        let open_id = open.as_ref().map(|e| e.id);
        let now = std::time::Instant::now();
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
        let now = self.ctx.trust.effective_now(Timestamp::now());
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
                let detail = wait.detail();
                status(&format!("waiting: {detail}"));
                if self.last_wait.as_deref() != Some(&detail) {
                    self.ctx.phase(
                        Some(&a.rollout_id),
                        &r.id,
                        Phase::Waiting,
                        Some(detail.clone()),
                    )?;
                    self.last_wait = Some(detail);
                }
                let until = wait
                    .until()
                    .map(|u| Duration::from_secs(u.duration_since(now).as_secs().max(1) as u64))
                    .unwrap_or(Duration::from_secs(self.ctx.config.health.interval_secs));
                Ok(Next::RetryIn(until))
            }
            Readiness::Ready => {
                self.last_wait = None;
                self.lease_and_install(&accepted).await
            }
        }
    }

    async fn lease_and_install(&mut self, accepted: &Accepted) -> Result<Next, DaemonError> {
        let a = &accepted.assignment;
        let r = &accepted.release;
        let lease_id = match &self.session {
            Some(session) => {
                let timeout = Duration::from_secs(self.ctx.config.coordinator.request_timeout_secs);
                match session.lease(&a.rollout_id, a.sequence, timeout).await {
                    Ok(grant) => Some(grant.lease_id),
                    Err(ClientError::LeaseDenied {
                        reason,
                        message,
                        retry_after,
                        ..
                    }) => {
                        let detail = format!("lease denied: {reason}: {message}");
                        status(&format!("waiting: {detail}"));
                        if self.last_wait.as_deref() != Some(&detail) {
                            self.ctx.phase(
                                Some(&a.rollout_id),
                                &r.id,
                                Phase::Waiting,
                                Some(detail.clone()),
                            )?;
                            self.last_wait = Some(detail);
                        }
                        return Ok(self.after_denial(retry_after));
                    }
                    Err(e) => {
                        tracing::warn!("lease request failed: {e}");
                        return Ok(Next::CoordinatorFailed {
                            retry_after: e.retry_after(),
                        });
                    }
                }
            }
            // Air-gapped: no coordinator, so no lease; the imported bundle is the permission.
            None => None,
        };
        let id = self.ctx.store.journal_begin(
            &NewInstall {
                rollout_id: &a.rollout_id,
                sequence: a.sequence,
                release_id: &r.id,
                stream: &r.name,
                assignment: a.envelope(),
                release: r.envelope(),
                lease_id: lease_id.as_deref(),
            },
            Timestamp::now(),
        )?;
        self.ctx
            .phase(Some(&a.rollout_id), &r.id, Phase::Leased, lease_id.clone())?;
        let entry = self
            .ctx
            .store
            .journal_open()?
            .filter(|e| e.id == id)
            .expect("just opened");
        self.run_steps(&entry, Step::Prepare).await
    }

    async fn step(
        &self,
        entry: &JournalEntry,
        step: Step,
        state: StepState,
    ) -> Result<(), DaemonError> {
        self.ctx
            .store
            .journal_step(entry.id, step, state, Timestamp::now())?;
        if state == StepState::Started {
            crate::test_hooks::pause(step.as_str()).await;
        }
        Ok(())
    }

    /// Runs one executor step (`run`) and runs it again while it asks to be retried later
    /// (an operator script's exit code 21): at most `policy.max_retries` more times,
    /// waiting the policy's back-off before each retry. Each retry is logged, shown in the
    /// systemd status and reported as `phase` with the reason and the wait; the journal
    /// stays at the step's `started`, so a restart meanwhile simply runs the step again.
    /// Once the retries are used up, the step's last `retry_later` error says so and the
    /// caller handles it as any failure of that step.
    async fn retrying_later<T, F, Fut>(
        &self,
        entry: &JournalEntry,
        phase: Phase,
        policy: RetryPolicy,
        mut run: F,
    ) -> Result<Result<T, ExecError>, DaemonError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ExecError>>,
    {
        let mut retries = 0u32;
        loop {
            match run().await {
                Err(e @ ExecError::RetryLater { .. }) if retries < policy.max_retries => {
                    retries += 1;
                    let wait = policy.delay_before(retries);
                    let detail = format!(
                        "{}: {e}; retry {retries} of {} in {} s",
                        e.code(),
                        policy.max_retries,
                        wait.as_secs()
                    );
                    tracing::warn!(
                        retry = retries,
                        max_retries = policy.max_retries,
                        retry_in_secs = wait.as_secs_f64(),
                        "step asked to be retried later: {e}"
                    );
                    status(&format!("retrying later: {detail}"));
                    self.ctx.phase(
                        Some(&entry.rollout_id),
                        &entry.release_id,
                        phase,
                        Some(detail),
                    )?;
                    // The coordinator hears of the wait now, not after it.
                    if let Some(session) = &self.session {
                        deliver_reports(&self.ctx, session).await;
                    }
                    tokio::time::sleep(wait).await;
                }
                Err(ExecError::RetryLater { step, message }) => {
                    let tries = retries + 1;
                    return Ok(Err(ExecError::RetryLater {
                        step,
                        message: format!(
                            "{message} (run {tries} time{}, no retry left)",
                            if tries == 1 { "" } else { "s" }
                        ),
                    }));
                }
                other => return Ok(other),
            }
        }
    }

    /// Runs the executor steps from `from` to commit, rolling back on failure.
    async fn run_steps(&mut self, entry: &JournalEntry, from: Step) -> Result<Next, DaemonError> {
        let accepted = self.ctx.evaluate(&entry.assignment, &entry.release);
        // Recovery may finish a commit or roll back after expiry, but never starts work on
        // a document that no longer verifies.
        let release = match (&accepted, from) {
            (Ok(a), _) => a.release.clone(),
            (Err(refusal), Step::Commit) => {
                tracing::warn!(
                    "finishing a verified commit although the assignment no longer verifies: {refusal}"
                );
                return self.commit_unverified(entry).await;
            }
            (Err(refusal), _) => {
                self.ctx.refuse(refusal, Some(&entry.assignment))?;
                return self
                    .rollback(entry, &format!("assignment no longer valid: {refusal}"))
                    .await;
            }
        };
        let rollback = accepted
            .as_ref()
            .map(|a| a.assignment.rollback)
            .unwrap_or(false);
        let executor = match Executor::for_release(&self.ctx.config.executor, &release, rollback) {
            Ok(e) => e,
            Err(e) => return self.fail_unchanged(entry, &e).await,
        };
        let rid = entry.rollout_id.as_str();
        if from == Step::Prepare {
            self.step(entry, Step::Prepare, StepState::Started).await?;
            self.ctx
                .phase(Some(rid), &entry.release_id, Phase::Downloading, None)?;
            let bearer = match &self.session {
                Some(s) => s.bearer().await.ok(),
                None => None,
            };
            let client = match &self.session {
                Some(s) => s.http().clone(),
                None => reqwest::Client::new(),
            };
            let source = ArtifactSource {
                client: &client,
                base_url: &self.ctx.config.coordinator.url,
                bearer_token: bearer.as_deref(),
            };
            let prepared = self
                .retrying_later(entry, Phase::Downloading, executor.retry_policy(), || {
                    executor.prepare(&source)
                })
                .await?;
            if let Err(e) = prepared {
                if e.is_retryable() {
                    // The journal stays at `prepare`: a later round resumes it (renewing
                    // the lease first; see `recover`) once the back-off has run.
                    let wait = self.downloads.failed(entry.id, std::time::Instant::now());
                    tracing::warn!(
                        retry_in_secs = wait.as_secs_f64(),
                        "prepare failed, will retry: {e}"
                    );
                    status(&format!(
                        "download failing, next try in {} s: {e}",
                        wait.as_secs()
                    ));
                    return Ok(Next::RetryIn(wait));
                }
                self.downloads.succeeded();
                return self.fail_unchanged(entry, &e).await;
            }
            self.downloads.succeeded();
            self.step(entry, Step::Prepare, StepState::Done).await?;
        }
        if matches!(from, Step::Prepare | Step::Install) {
            self.step(entry, Step::Install, StepState::Started).await?;
            self.ctx
                .phase(Some(rid), &entry.release_id, Phase::Installing, None)?;
            let installed = self
                .retrying_later(entry, Phase::Installing, executor.retry_policy(), || {
                    executor.install()
                })
                .await?;
            match installed {
                Ok(InstallOutcome::Done) => {}
                Ok(InstallOutcome::RestartAgent) => {
                    self.step(entry, Step::Install, StepState::Done).await?;
                    self.step(entry, Step::Verify, StepState::Started).await?;
                    self.ctx.phase(
                        Some(rid),
                        &entry.release_id,
                        Phase::Verifying,
                        Some("agent self-update: restarting into the new agent".into()),
                    )?;
                    self.deliver_reports().await;
                    return self.restart_into_new_agent(entry, &release).await;
                }
                Err(e) => return self.fail_and_roll_back(entry, &e).await,
            }
            self.step(entry, Step::Install, StepState::Done).await?;
        }
        if matches!(from, Step::Prepare | Step::Install | Step::Verify) {
            self.step(entry, Step::Verify, StepState::Started).await?;
            self.ctx
                .phase(Some(rid), &entry.release_id, Phase::Verifying, None)?;
            self.deliver_reports().await;
            let store = &self.ctx.store;
            let max = self.ctx.config.outbox.max_events;
            let health = &self.health;
            let result = self
                .retrying_later(entry, Phase::Verifying, executor.retry_policy(), || {
                    executor.verify(health, move |s: &HealthSample| {
                        let _ = store.outbox_push(
                            EventBody::Health {
                                healthy: s.healthy(),
                                summary: s.summary(),
                            },
                            Timestamp::now(),
                            max,
                        );
                    })
                })
                .await?;
            if let Err(e) = result {
                return self.fail_and_roll_back(entry, &e).await;
            }
            self.step(entry, Step::Verify, StepState::Done).await?;
        }
        self.step(entry, Step::Commit, StepState::Started).await?;
        if let Err(e) = executor.commit().await {
            // Verified healthy; a failed bookkeeping step is retried, not rolled back.
            tracing::error!("commit failed, will retry: {e}");
            return Ok(Next::RetryIn(Duration::from_secs(60)));
        }
        self.record_commit(entry, &release)?;
        Ok(Next::Idle)
    }

    /// Agent self-update: starts the guard (which restores the old binary if the new agent
    /// does not commit within the verify period), then restarts the service.
    async fn restart_into_new_agent(
        &mut self,
        entry: &JournalEntry,
        release: &fleetwave_shared::Release,
    ) -> Result<Next, DaemonError> {
        let cfg = &self.ctx.config.executor.self_update;
        let sha256 = release
            .artifacts
            .first()
            .map(|a| a.sha256.clone())
            .unwrap_or_default();
        let args = vec![
            "self-update-guard".to_string(),
            "--config".into(),
            self.config_path.display().to_string(),
            "--sha256".into(),
            sha256,
            "--rollout".into(),
            entry.rollout_id.clone(),
            "--sequence".into(),
            entry.sequence.to_string(),
        ];
        if let Err(e) = crate::executor::self_update::spawn_guard(cfg, &args) {
            return self.fail_and_roll_back(entry, &e).await;
        }
        let opts = crate::readiness::process::RunOptions::with_timeout(Duration::from_secs(
            cfg.command_timeout_secs.max(1),
        ));
        match crate::readiness::process::run(&cfg.restart_command, &opts).await {
            Ok(out) if out.success() => Ok(Next::Exit),
            Ok(out) => {
                tracing::error!(
                    "restart command failed: {}; the guard will restore the previous agent",
                    out.brief()
                );
                Ok(Next::Exit)
            }
            Err(e) => {
                tracing::error!(
                    "restart command failed: {e}; the guard will restore the previous agent"
                );
                Ok(Next::Exit)
            }
        }
    }

    fn record_commit(
        &mut self,
        entry: &JournalEntry,
        release: &fleetwave_shared::Verified<fleetwave_shared::Release>,
    ) -> Result<(), DaemonError> {
        self.ctx.trust.record_installed(release);
        self.ctx.store.record_commit(
            &release.name,
            &release.id,
            &release.version,
            &entry.release,
            &self.ctx.trust.persisted(),
            Timestamp::now(),
        )?;
        self.ctx
            .store
            .journal_finish(entry.id, Outcome::Committed, None, Timestamp::now())?;
        let note = self.note.take();
        self.ctx.phase(
            Some(&entry.rollout_id),
            &entry.release_id,
            Phase::Committed,
            note,
        )?;
        let installed = self.ctx.store.installed_stream(&release.name)?;
        self.ctx.report(EventBody::Installed {
            name: release.name.clone(),
            release_id: Some(release.id.clone()),
            version: Some(release.version.clone()),
            previous_release_id: installed.and_then(|i| i.previous_release_id),
        })?;
        status(&format!(
            "idle: {} {} committed",
            release.name, release.version
        ));
        Ok(())
    }

    /// Finishes a commit whose health was verified before a crash, when the assignment has
    /// expired since: the release itself must still verify against the root.
    async fn commit_unverified(&mut self, entry: &JournalEntry) -> Result<Next, DaemonError> {
        let now = self.ctx.trust.effective_now(Timestamp::now());
        let release = match fleetwave_shared::verify::verify_release(
            self.ctx.trust.root(),
            &entry.release,
            now,
        ) {
            Ok(r) => r,
            Err(refusal) => {
                self.ctx.refuse(&refusal, Some(&entry.assignment))?;
                return self
                    .rollback(entry, &format!("release no longer valid: {refusal}"))
                    .await;
            }
        };
        let executor = match Executor::for_release(&self.ctx.config.executor, &release, false) {
            Ok(e) => e,
            Err(e) => return self.fail_and_roll_back(entry, &e).await,
        };
        if let Err(e) = executor.commit().await {
            tracing::error!("commit failed, will retry: {e}");
            return Ok(Next::RetryIn(Duration::from_secs(60)));
        }
        self.record_commit(entry, &release)?;
        Ok(Next::Idle)
    }

    /// A failure before anything on the box changed: report and close the install.
    async fn fail_unchanged(
        &mut self,
        entry: &JournalEntry,
        e: &ExecError,
    ) -> Result<Next, DaemonError> {
        self.ctx.report(EventBody::Refusal {
            code: e.code().to_string(),
            message: e.to_string(),
            rollout_id: Some(entry.rollout_id.clone()),
            sequence: Some(entry.sequence),
        })?;
        self.ctx.phase(
            Some(&entry.rollout_id),
            &entry.release_id,
            Phase::Failed,
            Some(format!("{}: {e}", e.code())),
        )?;
        self.ctx.store.journal_finish(
            entry.id,
            Outcome::Abandoned,
            Some(&e.to_string()),
            Timestamp::now(),
        )?;
        Ok(Next::Idle)
    }

    async fn fail_and_roll_back(
        &mut self,
        entry: &JournalEntry,
        e: &ExecError,
    ) -> Result<Next, DaemonError> {
        let detail = format!("{}: {e}", e.code());
        self.ctx.phase(
            Some(&entry.rollout_id),
            &entry.release_id,
            Phase::Failed,
            Some(detail.clone()),
        )?;
        self.rollback(entry, &detail).await
    }

    /// Switches back to the previous release through the executor and reports it.
    async fn rollback(&mut self, entry: &JournalEntry, why: &str) -> Result<Next, DaemonError> {
        self.step(entry, Step::Rollback, StepState::Started).await?;
        let now = self.ctx.trust.effective_now(Timestamp::now());
        // The release verified when the install began; its signature still decides which
        // executor handles it (expiry does not matter for going back).
        let release =
            fleetwave_shared::verify::verify_release(self.ctx.trust.root(), &entry.release, now)
                .map(|r| r.into_inner())
                .or_else(|_| peek_release(&entry.release).ok_or(()));
        let Ok(release) = release else {
            tracing::error!(
                "cannot read the release of the interrupted install; nothing to roll back with"
            );
            self.ctx.store.journal_finish(
                entry.id,
                Outcome::RolledBack,
                Some("release unreadable"),
                Timestamp::now(),
            )?;
            return Ok(Next::Idle);
        };
        let result = match Executor::for_release(&self.ctx.config.executor, &release, true) {
            Ok(ex) => ex.rollback().await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            return self.rollback_failed(entry, why, &e);
        }
        self.rollbacks.succeeded();
        if RollbackFailing::load(&self.ctx.store, entry.id)?.is_some() {
            self.ctx.store.delete_meta(RollbackFailing::META_KEY)?;
        }
        self.ctx.store.journal_finish(
            entry.id,
            Outcome::RolledBack,
            Some(why),
            Timestamp::now(),
        )?;
        self.ctx.phase(
            Some(&entry.rollout_id),
            &entry.release_id,
            Phase::RolledBack,
            Some(why.to_string()),
        )?;
        let installed = self.ctx.store.installed_stream(&release.name)?;
        self.ctx.report(EventBody::Installed {
            name: release.name.clone(),
            release_id: installed.as_ref().map(|i| i.release_id.clone()),
            version: installed.as_ref().map(|i| i.version.clone()),
            previous_release_id: installed.and_then(|i| i.previous_release_id),
        })?;
        status(&format!("rolled back {}: {why}", release.id));
        Ok(Next::Idle)
    }
}

impl Daemon {
    /// A rollback attempt failed: logs it with the end of the command's output and tries
    /// again after the rollback back-off; after `install.rollback_attempts` failed attempts
    /// (counted across restarts) it gives up: the install is closed as `rollback_failed`
    /// and reported as phase `rollback_failed` with the error and output, and the agent
    /// does not try again by itself (a new assignment, e.g. a rollback from the
    /// coordinator, starts a new install).
    fn rollback_failed(
        &mut self,
        entry: &JournalEntry,
        why: &str,
        e: &ExecError,
    ) -> Result<Next, DaemonError> {
        let attempts = self.ctx.config.install.rollback_attempts;
        let now = Timestamp::now();
        let output = e.output().unwrap_or_default().to_string();
        let failures =
            RollbackFailing::load(&self.ctx.store, entry.id)?.map_or(0, |f| f.failures) + 1;
        let mut record = RollbackFailing {
            entry: entry.id,
            release_id: entry.release_id.clone(),
            failures,
            attempts,
            last_error: e.to_string(),
            output: output.clone(),
            failed_at: now,
            next_try_at: None,
        };
        let shown_output = if output.is_empty() {
            "(none)"
        } else {
            output.as_str()
        };
        if failures >= attempts {
            tracing::error!(
                release = %entry.release_id,
                attempt = failures,
                attempts,
                output = shown_output,
                "rollback failed {failures} times; giving up: {e}. The box needs an operator: \
                 it may run neither release."
            );
            let detail = crate::readiness::process::truncate_chars(
                &format!(
                    "{}: rollback failed {failures} times, giving up (rolling back because: \
                     {why}): {e}; output: {shown_output}",
                    e.code()
                ),
                ROLLBACK_FAILED_DETAIL_CHARS,
            );
            self.ctx
                .store
                .journal_finish(entry.id, Outcome::RollbackFailed, Some(&detail), now)?;
            self.ctx.phase(
                Some(&entry.rollout_id),
                &entry.release_id,
                Phase::RollbackFailed,
                Some(detail),
            )?;
            self.rollbacks.succeeded();
            record.save(&self.ctx.store)?;
            status(&format!(
                "rollback of {} failed {failures} times; gave up, needs an operator: {e}",
                entry.release_id
            ));
            return Ok(Next::Idle);
        }
        let wait = self.rollbacks.failed(entry.id, std::time::Instant::now());
        record.next_try_at = Some(now + wait);
        record.save(&self.ctx.store)?;
        tracing::error!(
            release = %entry.release_id,
            attempt = failures,
            attempts,
            retry_in_secs = wait.as_secs_f64(),
            output = shown_output,
            "rollback failed, will retry: {e}"
        );
        status(&format!(
            "rollback failing (attempt {failures} of {attempts}), next try in {} s: {e}",
            wait.as_secs()
        ));
        Ok(Next::RetryIn(wait))
    }
}

/// Longest `detail` of a `rollback_failed` phase event (error and output included).
const ROLLBACK_FAILED_DETAIL_CHARS: usize = 2048;

/// The release document of an envelope without checking its signature: only used to
/// pick the executor that rolls back an install which verified when it began.
fn peek_release(envelope: &Envelope) -> Option<fleetwave_shared::Release> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&envelope.payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What [`accept_documents`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepting {
    /// A new assignment was verified and stored.
    Accepted {
        rollout_id: String,
        sequence: u64,
        release_id: String,
    },
    /// The same assignment as before.
    Unchanged,
    /// The coordinator has no assignment for this site.
    NoAssignment,
    /// Refused (reported); `code` is the refusal code.
    Refused { code: String, message: String },
}

/// Follows root rotations, then verifies an assignment and its release exactly as the
/// trust core demands; accepts and persists it or reports the refusal. Network polls and
/// imported bundles both come through here.
pub fn accept_documents(
    ctx: &mut Context,
    roots: &[Envelope],
    assignment: Option<&Envelope>,
    release: Option<&Envelope>,
) -> Result<Accepting, StateError> {
    if !roots.is_empty() {
        let mut next = ctx.trust.clone();
        match next.update_root(roots) {
            Ok(version) if version != ctx.trust.root().version => {
                tracing::info!(version, "root of trust rotated");
                ctx.trust = next;
                ctx.store.save_trust(&ctx.trust.persisted())?;
            }
            Ok(_) => {}
            Err(refusal) => {
                ctx.refuse(&refusal, None)?;
                return Ok(Accepting::Refused {
                    code: refusal.code().into(),
                    message: refusal.to_string(),
                });
            }
        }
    }
    let (Some(assignment), Some(release)) = (assignment, release) else {
        if assignment.is_some() {
            let message = "the assignment came without its release".to_string();
            ctx.report(EventBody::Refusal {
                code: "missing_release".into(),
                message: message.clone(),
                rollout_id: None,
                sequence: None,
            })?;
            return Ok(Accepting::Refused {
                code: "missing_release".into(),
                message,
            });
        }
        return Ok(Accepting::NoAssignment);
    };
    match ctx.evaluate(assignment, release) {
        Ok(accepted) if !accepted.is_new => Ok(Accepting::Unchanged),
        Ok(accepted) => {
            ctx.accept(&accepted)?;
            let a = &accepted.assignment;
            ctx.phase(
                Some(&a.rollout_id),
                &accepted.release.id,
                Phase::Accepted,
                Some(format!("sequence {}", a.sequence)),
            )?;
            Ok(Accepting::Accepted {
                rollout_id: a.rollout_id.clone(),
                sequence: a.sequence,
                release_id: accepted.release.id.clone(),
            })
        }
        Err(refusal) => {
            // The same document refused for the same reason is reported once, so that a
            // coordinator serving it on every poll cannot fill the outbox.
            let key = format!("{}:{}", assignment.digest(), refusal.code());
            if ctx.store.meta("last_refusal")?.as_deref() != Some(key.as_str()) {
                ctx.refuse(&refusal, Some(assignment))?;
                ctx.store.set_meta("last_refusal", &key)?;
            }
            Ok(Accepting::Refused {
                code: refusal.code().into(),
                message: refusal.to_string(),
            })
        }
    }
}

/// Lease denials after which waiting cannot help: the assignment is no longer the one to
/// act on.
/// Sends queued reports in batches until the outbox is empty or a send fails; returns how
/// many were acknowledged.
///
/// A batch the coordinator refuses for its content ([`ClientError::refuses_content`]: 413
/// too large, 400 malformed) is split in halves, first half first, until the refused
/// events stand alone; a single event still refused is a poison event and moves to the
/// dead letters (kept in `agent.db`, shown by `status`, logged at warn), and delivery goes
/// on with the events after it. Any other failure (unreachable, 5xx, 401, 403, 408, 429)
/// leaves every event queued for the next round.
pub async fn deliver_reports(ctx: &Context, session: &Session) -> usize {
    let timeout = Duration::from_secs(ctx.config.coordinator.request_timeout_secs);
    let mut delivered = 0;
    loop {
        let batch = match ctx.store.outbox_batch(ctx.config.outbox.batch_size) {
            Ok(b) if !b.is_empty() => b,
            Ok(_) => return delivered,
            Err(e) => {
                tracing::error!("cannot read the outbox: {e}");
                return delivered;
            }
        };
        // Chunks still to send, the next one last (so the queue order is kept).
        let mut pending = vec![batch];
        while let Some(events) = pending.pop() {
            let batch = ReportBatch { events };
            let result = session.report(&batch, timeout).await;
            let mut events = batch.events;
            match result {
                Ok(ack) => {
                    tracing::debug!(
                        accepted = ack.accepted,
                        duplicates = ack.duplicates,
                        "reports delivered"
                    );
                    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
                    if let Err(e) = ctx.store.outbox_ack(&ids) {
                        tracing::error!("cannot remove delivered reports: {e}");
                        return delivered;
                    }
                    delivered += ids.len();
                }
                Err(e) => match e.refuses_content() {
                    Some(refused) if events.len() > 1 => {
                        let second = events.split_off(events.len() / 2);
                        tracing::info!(
                            status = refused.status,
                            code = %refused.code,
                            events = events.len() + second.len(),
                            "the coordinator refused a report batch; sending it in halves \
                             to find the refused event(s): {}",
                            refused.message
                        );
                        pending.push(second);
                        pending.push(events);
                    }
                    Some(refused) => {
                        let event = &events[0];
                        if let Err(e) = dead_letter(ctx, event, &refused) {
                            tracing::error!("cannot move a refused report aside: {e}");
                            return delivered;
                        }
                    }
                    None => {
                        tracing::info!(
                            queued = events.len() + pending.iter().map(Vec::len).sum::<usize>(),
                            "reports not delivered yet: {e}"
                        );
                        return delivered;
                    }
                },
            }
        }
    }
}

/// Moves an event the coordinator refused on its own to the dead letters, saying so.
fn dead_letter(
    ctx: &Context,
    event: &fleetwave_shared::protocol::Event,
    refused: &crate::state::outbox::Refused,
) -> Result<(), StateError> {
    let kind = crate::state::outbox::kind(&event.body);
    ctx.store
        .outbox_dead_letter(&event.id, refused, Timestamp::now())?;
    let what = if kind == "health" {
        "a health heartbeat"
    } else {
        "an event the coordinator has NOT seen"
    };
    tracing::warn!(
        event_id = %event.id,
        kind,
        status = refused.status,
        code = %refused.code,
        "the coordinator refused a {kind} report on its own ({}: {}); it is {what}, kept as a \
         dead letter in agent.db (see `fleetwave-agent status`); delivering the reports after it",
        refused.code,
        refused.message
    );
    Ok(())
}

/// The next back-off step, with the coordinator's `Retry-After` as the least delay.
fn backoff_delay(
    backoff: &mut backon::ExponentialBackoff,
    poll: &crate::config::PollConfig,
    retry_after: Option<Duration>,
) -> Duration {
    let next = backoff
        .next()
        .unwrap_or(Duration::from_secs(poll.backoff_max_secs));
    retry_delay(retry_after, next, poll.jitter)
}

fn new_backoff(poll: &crate::config::PollConfig) -> backon::ExponentialBackoff {
    exponential(
        Duration::from_secs(poll.backoff_min_secs),
        Duration::from_secs(poll.backoff_max_secs),
    )
}

/// Doubling from `min` with jitter, at most `max`, for ever.
fn exponential(min: Duration, max: Duration) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder as _;
    backon::ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(min)
        .with_max_delay(max)
        .without_max_times()
        .build()
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Samples health every `health.interval_secs` and queues a heartbeat; the latest sample
/// is also kept for `status`.
fn spawn_sampler(
    store: Store,
    health: Arc<Health>,
    config: &Config,
) -> tokio::task::JoinHandle<()> {
    let every = Duration::from_secs(config.health.interval_secs);
    let max = config.outbox.max_events;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let sample = health.sample().await;
            record_sample(&store, &sample, max);
        }
    })
}

/// Queues a heartbeat and keeps the sample for `status`.
pub fn record_sample(store: &Store, sample: &HealthSample, max_events: u64) {
    if let Ok(text) = serde_json::to_string(sample) {
        let _ = store.set_meta("last_health", &text);
    }
    if let Err(e) = store.outbox_push(
        EventBody::Health {
            healthy: sample.healthy(),
            summary: sample.summary(),
        },
        Timestamp::now(),
        max_events,
    ) {
        tracing::error!("cannot queue a health heartbeat: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetwave_shared::docs::{ASSIGNMENT_TYPE, RELEASE_TYPE, ROOT_TYPE, RoleKeys, Roles, Root};
    use fleetwave_shared::keys::{PublicKeyFile, generate};
    use fleetwave_shared::{Assignment, KeyId, Release, ReleaseKind};
    use jiff::SignedDuration;

    struct Fleet {
        root: Envelope,
        release: ed25519_dalek::SigningKey,
        coordinator: ed25519_dalek::SigningKey,
    }

    fn fleet() -> Fleet {
        let (root_key, release, coordinator) = (generate(), generate(), generate());
        let mut keys = std::collections::BTreeMap::new();
        let mut id = |k: &ed25519_dalek::SigningKey| {
            let id = KeyId::of(&k.verifying_key()).0;
            keys.insert(id.clone(), PublicKeyFile::from_key(&k.verifying_key()));
            RoleKeys {
                keyids: vec![id],
                threshold: 1,
            }
        };
        let roles = Roles {
            root: id(&root_key),
            release: id(&release),
            coordinator: id(&coordinator),
        };
        let root = Root {
            version: 1,
            expires: Timestamp::now() + SignedDuration::from_hours(24),
            keys,
            roles,
        };
        Fleet {
            root: Envelope::sign(ROOT_TYPE, &serde_json::to_vec(&root).unwrap(), &[&root_key]),
            release,
            coordinator,
        }
    }

    fn context(fleet: &Fleet, dir: &std::path::Path) -> Context {
        let config = Config::parse(
            &format!(
                "[coordinator]\nurl = \"\"\n[agent]\nstate_dir = {:?}\nsite_id = \"s1\"\n",
                dir.display().to_string()
            ),
            "test",
        )
        .unwrap();
        let store = Store::open(dir).unwrap();
        let trust = TrustState::from_anchor(&fleet.root).unwrap();
        store.save_trust(&trust.persisted()).unwrap();
        Context::open(config).unwrap()
    }

    fn documents(fleet: &Fleet, sequence: u64, expires_in: SignedDuration) -> (Envelope, Envelope) {
        let now = Timestamp::now();
        let release = Release {
            id: "pos-1".into(),
            name: "pos".into(),
            version: "1".into(),
            kind: ReleaseKind::App,
            counter: 1,
            issued_at: now - SignedDuration::from_mins(1),
            expires: now + SignedDuration::from_hours(1),
            artifacts: vec![],
            install: Default::default(),
            min_agent_version: None,
        };
        let release = Envelope::sign(
            RELEASE_TYPE,
            &serde_json::to_vec(&release).unwrap(),
            &[&fleet.release],
        );
        let assignment = Assignment {
            site_id: "s1".into(),
            rollout_id: format!("r{sequence}"),
            wave: 0,
            release_sha256: release.digest(),
            sequence,
            not_before: now,
            issued_at: now - SignedDuration::from_mins(1),
            expires: now + expires_in,
            rollback: false,
            window: None,
        };
        let assignment = Envelope::sign(
            ASSIGNMENT_TYPE,
            &serde_json::to_vec(&assignment).unwrap(),
            &[&fleet.coordinator],
        );
        (assignment, release)
    }

    fn refusals(ctx: &Context) -> Vec<String> {
        ctx.store
            .outbox_peek(100)
            .unwrap()
            .into_iter()
            .filter_map(|e| match e.body {
                EventBody::Refusal { code, .. } => Some(code),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn accepts_once_then_refuses_replay_and_expiry_reporting_each_once() {
        let fleet = fleet();
        let dir = tempfile::tempdir().unwrap();
        let mut ctx = context(&fleet, dir.path());
        let (a5, r) = documents(&fleet, 5, SignedDuration::from_hours(1));
        assert!(matches!(
            accept_documents(&mut ctx, &[], Some(&a5), Some(&r)).unwrap(),
            Accepting::Accepted { sequence: 5, .. }
        ));
        // Persisted: a restarted agent still has it and its sequence.
        assert_eq!(ctx.store.assignment().unwrap().unwrap().assignment, a5);
        assert_eq!(ctx.store.trust().unwrap().unwrap().last_sequence, 5);
        // Polled again: unchanged, not a replay.
        assert_eq!(
            accept_documents(&mut ctx, &[], Some(&a5), Some(&r)).unwrap(),
            Accepting::Unchanged
        );
        // An older sequence is a replay; served twice, reported once.
        let (a4, r4) = documents(&fleet, 4, SignedDuration::from_hours(1));
        for _ in 0..2 {
            assert!(matches!(
                accept_documents(&mut ctx, &[], Some(&a4), Some(&r4)).unwrap(),
                Accepting::Refused { ref code, .. } if code == "replay"
            ));
        }
        // An expired assignment is refused even with a newer sequence.
        let (a9, r9) = documents(&fleet, 9, SignedDuration::from_secs(-1));
        assert!(matches!(
            accept_documents(&mut ctx, &[], Some(&a9), Some(&r9)).unwrap(),
            Accepting::Refused { ref code, .. } if code == "expired"
        ));
        assert_eq!(
            refusals(&ctx),
            vec!["replay".to_string(), "expired".to_string()]
        );
        // The refused documents changed nothing.
        assert_eq!(ctx.store.assignment().unwrap().unwrap().assignment, a5);
    }

    #[test]
    fn an_agent_whose_state_predates_the_record_of_what_ran_learns_it_from_installed() {
        let fleet = fleet();
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        let release = |counter: u64, expires: Timestamp| {
            let doc = Release {
                id: format!("pos-{counter}"),
                name: "pos".into(),
                version: counter.to_string(),
                kind: ReleaseKind::App,
                counter,
                issued_at: now - SignedDuration::from_hours(48),
                expires,
                artifacts: vec![],
                install: Default::default(),
                min_agent_version: None,
            };
            Envelope::sign(
                RELEASE_TYPE,
                &serde_json::to_vec(&doc).unwrap(),
                &[&fleet.release],
            )
        };
        // Release 1 expired an hour ago; the box committed 1, then 2, with an older agent
        // whose trust state has no `ran_releases`.
        let r1 = release(1, now - SignedDuration::from_hours(1));
        let r2 = release(2, now + SignedDuration::from_hours(1));
        drop(context(&fleet, dir.path()));
        let store = Store::open(dir.path()).unwrap();
        let mut old = TrustState::from_anchor(&fleet.root).unwrap();
        old.release_high_water.insert("pos".into(), 2);
        old.rollback_floor.insert("pos".into(), 1);
        for (r, id) in [(&r1, "pos-1"), (&r2, "pos-2")] {
            store
                .record_commit("pos", id, id, r, &old.persisted(), now)
                .unwrap();
        }
        drop(store);

        let mut ctx = Context::open(
            Config::parse(
                &format!(
                    "[coordinator]\nurl = \"\"\n[agent]\nstate_dir = {:?}\nsite_id = \"s1\"\n",
                    dir.path().display().to_string()
                ),
                "test",
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            ctx.trust.ran_releases["pos"],
            vec![r1.digest(), r2.digest()]
        );
        // So the coordinator's rollback to release 1 is accepted although 1 expired.
        let rollback = Assignment {
            site_id: "s1".into(),
            rollout_id: "r-2".into(),
            wave: 0,
            release_sha256: r1.digest(),
            sequence: 3,
            not_before: now,
            issued_at: now - SignedDuration::from_mins(1),
            expires: now + SignedDuration::from_hours(1),
            rollback: true,
            window: None,
        };
        let rollback = Envelope::sign(
            ASSIGNMENT_TYPE,
            &serde_json::to_vec(&rollback).unwrap(),
            &[&fleet.coordinator],
        );
        assert!(matches!(
            accept_documents(&mut ctx, &[], Some(&rollback), Some(&r1)).unwrap(),
            Accepting::Accepted { sequence: 3, .. }
        ));
    }

    #[test]
    fn retry_after_is_a_floor_spread_upward_and_the_backoff_still_grows() {
        let secs = Duration::from_secs;
        // `Retry-After: 1` (a full long-poll limit) never brings a box back sooner than
        // its back-off says.
        assert_eq!(retry_delay(Some(secs(1)), secs(5), 0.2), secs(5));
        assert_eq!(retry_delay(None, secs(5), 0.2), secs(5));
        // A longer Retry-After wins and is never cut short, but is spread upward.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let d = retry_delay(Some(secs(100)), secs(5), 0.2);
            assert!(d >= secs(100) && d < secs(120), "{d:?}");
            seen.insert(d.as_millis());
        }
        assert!(
            seen.len() > 1,
            "boxes told the same Retry-After come back at different times"
        );
        // Refused again and again with `Retry-After: 1`, a box backs off further each time.
        let poll = crate::config::PollConfig {
            backoff_min_secs: 1,
            backoff_max_secs: 600,
            ..Default::default()
        };
        let mut backoff = new_backoff(&poll);
        let delays: Vec<Duration> = (0..6)
            .map(|_| backoff_delay(&mut backoff, &poll, Some(secs(1))))
            .collect();
        assert!(delays.iter().all(|d| *d >= secs(1)), "{delays:?}");
        assert!(delays[5] >= secs(32), "{delays:?}");
    }

    #[test]
    fn download_retries_back_off_per_install_and_reset_on_success() {
        let poll = crate::config::PollConfig {
            backoff_min_secs: 2,
            backoff_max_secs: 60,
            ..Default::default()
        };
        let secs = Duration::from_secs;
        let t0 = std::time::Instant::now();
        let mut pacer = StepPacer::downloads(&poll);
        assert_eq!(pacer.wait(Some(7), t0), None, "nothing failed yet");
        let delays: Vec<Duration> = (0..5).map(|_| pacer.failed(7, t0)).collect();
        assert!(delays[0] >= secs(2) && delays[0] < secs(4), "{delays:?}");
        assert!(delays[2] >= secs(8), "it grows: {delays:?}");
        assert!(delays[4] >= secs(32), "{delays:?}");
        // The install waits until its back-off has run, not after.
        let last = delays[4];
        assert_eq!(pacer.wait(Some(7), t0), Some(last));
        assert_eq!(pacer.wait(Some(7), t0 + last), None);
        // A different install starts from the minimum; so does a retry after a success.
        assert!(pacer.failed(8, t0) < secs(4));
        pacer.succeeded();
        assert_eq!(pacer.wait(Some(8), t0), None);
        assert!(pacer.failed(8, t0) < secs(4));
        // Another open install (or none) forgets the old back-off.
        assert_eq!(pacer.wait(None, t0), None);
        assert_eq!(pacer.wait(Some(8), t0), None);
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        let base = Duration::from_secs(100);
        for _ in 0..200 {
            let d = jittered(base, 0.2);
            assert!(
                d >= Duration::from_secs(80) && d <= Duration::from_secs(120),
                "{d:?}"
            );
        }
        assert_eq!(jittered(base, 0.0), base);
    }
}
