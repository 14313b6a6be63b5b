//! Installing: recovery of an open journal entry, the lease, and the executor steps from
//! prepare to commit, each written to the journal before and after it runs.

use std::time::Duration;

use fleetwave_shared::protocol::{EventBody, Phase};
use fleetwave_shared::trust::Accepted;

use super::{Daemon, DaemonError, Next, deliver_reports, status};
use crate::client::ClientError;
use crate::executor::{ArtifactSource, ExecError, Executor, InstallOutcome, RetryPolicy};
use crate::lifecycle::{self, Action, Event, State};
use crate::readiness::HealthSample;
use crate::state::journal::{self, JournalEntry, NewInstall, Outcome, Recovery, Step, StepState};

impl Daemon {
    /// Finishes or rolls back an install the journal shows as open.
    pub(super) async fn recover(&mut self) -> Result<Next, DaemonError> {
        let Some(entry) = self.ctx.store.journal_open()? else {
            return Ok(Next::Idle);
        };
        let current = self.ctx.evaluate(&entry.assignment, &entry.release);
        let decision = journal::recovery(entry.step, entry.state, current.is_ok());
        tracing::warn!(
            release = %entry.release_id, step = entry.step.as_str(), state = entry.state.as_str(),
            decision = ?decision, "found an unfinished install; recovering"
        );
        // What the interrupted run left on the box, as the executor sees it.
        let found = match current
            .as_ref()
            .ok()
            .map(|a| a.release.clone())
            .or_else(|| self.release_to_roll_back(&entry))
            .and_then(|r| Executor::for_release(&self.ctx.config.executor, &r, false).ok())
        {
            Some(executor) => executor.recovery_found().await,
            None => None,
        };
        let prefix = format!(
            "recovered after restart at step {} ({})",
            entry.step.as_str(),
            entry.state.as_str()
        );
        let detail = |what: &str| match &found {
            Some(f) => format!("{prefix}: {what} (found: {f})"),
            None => format!("{prefix}: {what}"),
        };
        self.recovery = match decision {
            Recovery::Abandon | Recovery::Resume | Recovery::FinishCommit => None,
            Recovery::RollBack
            | Recovery::FinishRollback
            | Recovery::Reinstall
            | Recovery::Reverify => Some(super::Recovering {
                prefix: prefix.clone(),
                found: found.clone(),
            }),
        };
        match decision {
            Recovery::Abandon => {
                let why = current.err().map(|r| r.to_string()).unwrap_or_default();
                let reported = detail(&format!("abandoned, nothing was changed: {why}"));
                self.abandon(&entry, &reported, &why)?;
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
    pub(super) async fn resume_at(
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
    pub(super) async fn renew_lease(
        &mut self,
        entry: &JournalEntry,
    ) -> Result<Option<Next>, DaemonError> {
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
                    let reported = format!("{detail}; abandoned, nothing was changed");
                    self.abandon(entry, &reported, &detail)?;
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

    pub(super) async fn lease_and_install(
        &mut self,
        accepted: &Accepted,
    ) -> Result<Next, DaemonError> {
        let a = &accepted.assignment;
        let r = &accepted.release;
        self.recovery = None;
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
                        self.waiting(&a.rollout_id, &r.id, detail)?;
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
            self.ctx.clock.now(),
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

    pub(super) async fn step(
        &self,
        entry: &JournalEntry,
        step: Step,
        state: StepState,
    ) -> Result<(), DaemonError> {
        self.ctx
            .store
            .journal_step(entry.id, step, state, self.ctx.clock.now())?;
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
    pub(super) async fn retrying_later<T, F, Fut>(
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

    /// Runs the executor steps from `from` to commit, rolling back on failure. The install
    /// state machine ([`lifecycle::next`]) decides what follows each step; this drives it:
    /// runs the steps, writes the journal, reports.
    pub(super) async fn run_steps(
        &mut self,
        entry: &JournalEntry,
        from: Step,
    ) -> Result<Next, DaemonError> {
        let mut state = State::at(from);
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
                let t = lifecycle::next(state, Event::Refused, self.policy());
                debug_assert!(matches!(t.state, State::Rollback { .. }));
                return self
                    .rollback(entry, &format!("assignment no longer valid: {refusal}"))
                    .await;
            }
        };
        let rollback = accepted
            .as_ref()
            .map(|a| a.assignment.rollback)
            .unwrap_or(false);
        let (executor, mut outcome) =
            match Executor::for_release(&self.ctx.config.executor, &release, rollback) {
                Ok(e) => (Some(e), None),
                Err(e) => (None, Some((Event::NoExecutor, Some(e)))),
            };
        loop {
            let (event, error) = match (outcome.take(), &executor) {
                (Some(happened), _) => happened,
                (None, Some(executor)) => self.run_step(entry, state, executor).await?,
                (None, None) => unreachable!("no executor is the event NoExecutor"),
            };
            let t = lifecycle::next(state, event, self.policy());
            // A download that ran and did not ask to be retried: its back-off is over.
            if state == State::Prepare
                && event != Event::NoExecutor
                && t.action != Action::RetryLater
            {
                self.downloads.succeeded();
            }
            match (t.action, t.state, error) {
                (Action::Run, State::Rollback { .. }, Some(e)) => {
                    return self.fail_and_roll_back(entry, &e).await;
                }
                (Action::Run, next, _) => {
                    if let Some(step) = state.step() {
                        self.step(entry, step, StepState::Done).await?;
                    }
                    state = next;
                }
                (Action::RetryLater, State::Prepare, Some(e)) => {
                    // The journal stays at `prepare`: a later round resumes it (renewing
                    // the lease first; see `recover`) once the back-off has run.
                    let wait = self.downloads.failed(entry.id, self.ctx.clock.instant());
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
                (Action::RetryLater, State::Commit, Some(e)) => {
                    // Verified healthy; a failed bookkeeping step is retried, not rolled back.
                    tracing::error!("commit failed, will retry: {e}");
                    return Ok(Next::RetryIn(Duration::from_secs(60)));
                }
                (Action::Exit, _, _) => {
                    self.step(entry, Step::Install, StepState::Done).await?;
                    self.step(entry, Step::Verify, StepState::Started).await?;
                    self.ctx.phase(
                        Some(&entry.rollout_id),
                        &entry.release_id,
                        Phase::Verifying,
                        Some("agent self-update: restarting into the new agent".into()),
                    )?;
                    self.deliver_reports().await;
                    return self.restart_into_new_agent(entry, &release).await;
                }
                (Action::Finish, State::Done(Outcome::Committed), _) => {
                    if let (Some(r), Some(executor)) = (self.recovery.take(), &executor) {
                        self.note = Some(r.ended("finished the upgrade", executor).await);
                    }
                    self.record_commit(entry, &release)?;
                    return Ok(Next::Idle);
                }
                (Action::Finish, State::Done(Outcome::Abandoned), Some(e)) => {
                    return self.fail_unchanged(entry, &e).await;
                }
                (action, next, error) => unreachable!(
                    "install state machine: {state:?} → {next:?} ({action:?}, error {error:?})"
                ),
            }
        }
    }

    /// What the install state machine depends on besides state and event.
    pub(super) fn policy(&self) -> lifecycle::Policy {
        lifecycle::Policy {
            rollback_attempts: self.ctx.config.install.rollback_attempts,
        }
    }

    /// Runs the step of `state` (journal `started` first) and says what happened.
    async fn run_step(
        &mut self,
        entry: &JournalEntry,
        state: State,
        executor: &Executor,
    ) -> Result<(Event, Option<ExecError>), DaemonError> {
        let rid = entry.rollout_id.as_str();
        let failed = |e: ExecError| {
            (
                Event::Failed {
                    retryable: e.is_retryable(),
                },
                Some(e),
            )
        };
        Ok(match state {
            State::Prepare => {
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
                // Relative artifact URLs are fetched from the coordinator in use now.
                let base_url = match &self.session {
                    Some(s) => s.base_url().to_string(),
                    None => self.ctx.config.coordinator.url.clone(),
                };
                let source = ArtifactSource {
                    client: &client,
                    base_url: &base_url,
                    bearer_token: bearer.as_deref(),
                    max_bytes_per_sec: self.ctx.config.download.max_bytes_per_sec,
                    peers: self.peers.as_deref(),
                };
                let prepared = self
                    .retrying_later(entry, Phase::Downloading, executor.retry_policy(), || {
                        executor.prepare(&source)
                    })
                    .await?;
                match prepared {
                    Ok(()) => (Event::Succeeded, None),
                    Err(e) => failed(e),
                }
            }
            State::Install => {
                self.step(entry, Step::Install, StepState::Started).await?;
                self.ctx
                    .phase(Some(rid), &entry.release_id, Phase::Installing, None)?;
                let installed = self
                    .retrying_later(entry, Phase::Installing, executor.retry_policy(), || {
                        executor.install()
                    })
                    .await?;
                match installed {
                    Ok(InstallOutcome::Done) => (Event::Succeeded, None),
                    Ok(InstallOutcome::RestartAgent) => (Event::RestartAgent, None),
                    Err(e) => failed(e),
                }
            }
            State::Verify => {
                self.step(entry, Step::Verify, StepState::Started).await?;
                self.ctx
                    .phase(Some(rid), &entry.release_id, Phase::Verifying, None)?;
                self.deliver_reports().await;
                let store = &self.ctx.store;
                let max = self.ctx.config.outbox.max_events;
                let health = &self.health;
                let clock = &self.ctx.clock;
                let result = self
                    .retrying_later(entry, Phase::Verifying, executor.retry_policy(), || {
                        executor.verify(health, move |s: &HealthSample| {
                            let _ = store.outbox_push(
                                EventBody::Health {
                                    healthy: s.healthy(),
                                    summary: s.summary(),
                                },
                                clock.now(),
                                max,
                            );
                        })
                    })
                    .await?;
                match result {
                    Ok(_) => (Event::Succeeded, None),
                    Err(e) => failed(e),
                }
            }
            State::Commit => {
                self.step(entry, Step::Commit, StepState::Started).await?;
                match executor.commit().await {
                    Ok(()) => (Event::Succeeded, None),
                    Err(e) => (Event::Failed { retryable: true }, Some(e)),
                }
            }
            State::Rollback { .. } | State::HandedOver | State::Done(_) => {
                unreachable!("run_steps runs {state:?} through rollback() or not at all")
            }
        })
    }

    /// Agent self-update: starts the guard (which restores the old binary if the new agent
    /// does not commit within the verify period), then restarts the service.
    pub(super) async fn restart_into_new_agent(
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

    pub(super) fn record_commit(
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
            self.ctx.clock.now(),
        )?;
        self.ctx
            .store
            .journal_finish(entry.id, Outcome::Committed, None, self.ctx.clock.now())?;
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
    pub(super) async fn commit_unverified(
        &mut self,
        entry: &JournalEntry,
    ) -> Result<Next, DaemonError> {
        let now = self.ctx.trust.effective_now(self.ctx.clock.now());
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
    pub(super) async fn fail_unchanged(
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
        self.abandon(entry, &format!("{}: {e}", e.code()), &e.to_string())?;
        Ok(Next::Idle)
    }

    /// Closes an install that changed nothing on the box: the `failed` phase with
    /// `reported` (the operator's words), and the journal entry abandoned with `why`.
    fn abandon(
        &mut self,
        entry: &JournalEntry,
        reported: &str,
        why: &str,
    ) -> Result<(), DaemonError> {
        self.ctx.phase(
            Some(&entry.rollout_id),
            &entry.release_id,
            Phase::Failed,
            Some(reported.to_string()),
        )?;
        self.ctx.store.journal_finish(
            entry.id,
            Outcome::Abandoned,
            Some(why),
            self.ctx.clock.now(),
        )?;
        Ok(())
    }

    pub(super) async fn fail_and_roll_back(
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
}
