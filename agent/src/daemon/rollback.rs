//! Going back: rolling an install back through the executor, and the bound on failed
//! rollback attempts.

use fleetwave_shared::protocol::{EventBody, Phase};
use jiff::Timestamp;

use super::{Daemon, DaemonError, Next, status};
use crate::executor::{ExecError, Executor};
use crate::lifecycle::{self, Event, State};
use crate::state::journal::{JournalEntry, Outcome, Step, StepState};
use crate::state::{StateError, Store};

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

    pub(super) fn save(&self, store: &Store) -> Result<(), StateError> {
        let text = serde_json::to_string(self).expect("rollback record serializes");
        store.set_meta(Self::META_KEY, &text)
    }
}

impl Daemon {
    /// Switches back to the previous release through the executor and reports it.
    pub(super) async fn rollback(
        &mut self,
        entry: &JournalEntry,
        why: &str,
    ) -> Result<Next, DaemonError> {
        self.step(entry, Step::Rollback, StepState::Started).await?;
        // The attempts that failed before this one (kept across restarts).
        let prior = RollbackFailing::load(&self.ctx.store, entry.id)?.map_or(0, |f| f.failures);
        let release = self.release_to_roll_back(entry);
        let mut ended = None;
        let (event, error) = match &release {
            None => (Event::Refused, None),
            Some(release) => {
                match Executor::for_release(&self.ctx.config.executor, release, true) {
                    Err(e) => (Event::NoExecutor, Some(e)),
                    Ok(ex) => match ex.rollback().await {
                        Ok(()) => {
                            // A recovery after a restart says how it ended.
                            if let Some(r) = self.recovery.take() {
                                ended = Some(r.ended("rolled back", &ex).await);
                            }
                            (Event::Succeeded, None)
                        }
                        Err(e) => (
                            Event::Failed {
                                retryable: e.is_retryable(),
                            },
                            Some(e),
                        ),
                    },
                }
            }
        };
        let t = lifecycle::next(State::Rollback { failures: prior }, event, self.policy());
        let release = match (t.state, release, error) {
            (State::Done(Outcome::RolledBack), Some(release), None) => release,
            (State::Done(Outcome::RolledBack), None, _) => {
                tracing::error!(
                    "cannot read the release of the interrupted install; nothing to roll back with"
                );
                self.ctx.store.journal_finish(
                    entry.id,
                    Outcome::RolledBack,
                    Some("release unreadable"),
                    self.ctx.clock.now(),
                )?;
                return Ok(Next::Idle);
            }
            (next, _, Some(e)) => return self.rollback_failed(entry, why, &e, prior, next),
            (next, _, None) => unreachable!("rollback: {next:?} without an error"),
        };
        self.rollbacks.succeeded();
        let why = match &ended {
            // `why` already names the recovery when the recovery itself rolled back.
            Some(ended) if why.starts_with("recovered after restart") => ended.clone(),
            Some(ended) => format!("{why}; {ended}"),
            None => why.to_string(),
        };
        let why = why.as_str();
        if RollbackFailing::load(&self.ctx.store, entry.id)?.is_some() {
            self.ctx.store.delete_meta(RollbackFailing::META_KEY)?;
        }
        self.ctx.store.journal_finish(
            entry.id,
            Outcome::RolledBack,
            Some(why),
            self.ctx.clock.now(),
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

    /// The release of the install being rolled back, verified again against the trusted
    /// root: at the trusted time, or, once it has expired, as of when the install began (it
    /// verified then, and expiry does not matter for going back). Its signature still
    /// decides which executor handles it; nothing unverified reaches an executor.
    pub(super) fn release_to_roll_back(
        &self,
        entry: &JournalEntry,
    ) -> Option<fleetwave_shared::Verified<fleetwave_shared::Release>> {
        let root = self.ctx.trust.root();
        let now = self.ctx.trust.effective_now(self.ctx.clock.now());
        fleetwave_shared::verify::verify_release(root, &entry.release, now)
            .or_else(|_| {
                fleetwave_shared::verify::verify_release(root, &entry.release, entry.started_at)
            })
            .ok()
    }

    /// A rollback attempt failed (`prior` attempts failed before it; the state machine
    /// moved to `next`): logs it with the end of the command's output and tries
    /// again after the rollback back-off; after `install.rollback_attempts` failed attempts
    /// (counted across restarts) it gives up: the install is closed as `rollback_failed`
    /// and reported as phase `rollback_failed` with the error and output, and the agent
    /// does not try again by itself (a new assignment, e.g. a rollback from the
    /// coordinator, starts a new install).
    pub(super) fn rollback_failed(
        &mut self,
        entry: &JournalEntry,
        why: &str,
        e: &ExecError,
        prior: u32,
        next: State,
    ) -> Result<Next, DaemonError> {
        let attempts = self.ctx.config.install.rollback_attempts;
        let now = self.ctx.clock.now();
        let output = e.output().unwrap_or_default().to_string();
        let failures = prior + 1;
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
        if next == State::Done(Outcome::RollbackFailed) {
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
        let wait = self.rollbacks.failed(entry.id, self.ctx.clock.instant());
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
