//! Controller passes: one rollout ([`Engine::tick_rollout`]), every live rollout
//! ([`Engine::tick_all`]), a failure kept to one rollout ([`Engine::tick_isolated`]: a
//! rollout whose evaluation fails, by an error or a panic, is halted with the reason in its
//! timeline and the pass goes on with the others), and the controller loop
//! ([`Engine::run_controller`]). The controller task as a whole is kept alive by
//! [`crate::supervisor`].

use std::collections::HashMap;
use std::time::Duration;

use fleetwave_shared::protocol::operator::RolloutStatus as WireStatus;
use jiff::Timestamp;
use tokio::sync::watch;

use super::{Engine, EngineError, Head, current_wave};
use crate::controller::{self, Decision};

impl Engine {
    /// Runs the controller once for one rollout and applies the outcome. Call with the
    /// engine lock held.
    pub async fn tick_rollout(&self, id: &str, now: Timestamp) -> Result<(), EngineError> {
        // A plan without golden-signal analysis runs the controller on the kept view,
        // under the facts lock, with no copy of the sites; with analysis, the view is
        // copied and the wave's verdicts read into it first.
        let (mut record, head, ticked) = self
            .with_rollout(id, |l| {
                let ticked = if l.plan.analysis.is_empty() {
                    Ok(l.with_view(|v| (v.status, v.current_wave, controller::tick(v, now))))
                } else {
                    Err(l.view())
                };
                (l.record.clone(), Head::of(l), ticked)
            })
            .await?;
        let (was, mut outcome) = match ticked {
            Ok((status, current_wave, outcome)) => ((status, current_wave), outcome),
            Err(view) => {
                let view = self.with_analysis(id, view, now).await?;
                let outcome = controller::tick(&view, now);
                ((view.status, view.current_wave), outcome)
            }
        };
        let changes = |o: &controller::TickOutcome| (o.status, o.current_wave) != was;
        self.drop_retries_of_held_sites(&mut outcome).await?;
        let mut to_store = Vec::new();
        let mut changed = false;
        let mut completed = false;
        let (mut retry_scheduled, mut retry_due) = (Vec::new(), Vec::new());
        for decision in &outcome.decisions {
            if !decision.changes_state() {
                let key = decision.key();
                let mut notes = self.last_note.lock().unwrap_or_else(|e| e.into_inner());
                if notes.get(id) == Some(&key) {
                    continue;
                }
                notes.insert(id.to_string(), key);
                to_store.push((
                    decision.kind().to_string(),
                    decision.wave(),
                    decision.reason().to_string(),
                ));
                continue;
            }
            self.last_note
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
            changed = true;
            to_store.push((
                decision.kind().to_string(),
                decision.wave(),
                decision.reason().to_string(),
            ));
            match decision {
                Decision::OpenWave { wave, .. } => {
                    if let Some(why) = self.place_from_wave(id, *wave).await? {
                        to_store.push(("membership".into(), Some(*wave), why));
                    }
                    let w = *wave as usize;
                    if record.waves.len() <= w {
                        record.waves.resize(w + 1, Default::default());
                    }
                    if record.waves[w].opened_at.is_none() {
                        record.waves[w].opened_at = Some(now);
                    }
                    if w > 0 && record.waves[w - 1].passed_at.is_none() {
                        record.waves[w - 1].passed_at = Some(now);
                    }
                }
                Decision::Halt {
                    reason, rollback, ..
                } => {
                    record.status_reason = Some(reason.clone());
                    if !rollback.is_empty() {
                        let (issued, missing) = self.roll_back(&head, rollback, now).await?;
                        let mut why = format!(
                            "auto_rollback: {issued} site(s) sent back to their previous release"
                        );
                        if !missing.is_empty() {
                            why.push_str(&format!(
                                "; no previous release known for: {}",
                                missing.join(", ")
                            ));
                        }
                        to_store.push(("rollback".into(), None, why));
                    }
                }
                Decision::Complete { reason } => {
                    if let Some(last) = record.waves.last_mut()
                        && last.passed_at.is_none()
                    {
                        last.passed_at = Some(now);
                    }
                    record.status_reason = Some(reason.clone());
                    completed = true;
                }
                Decision::ScheduleRetry { site_id, at, .. } => {
                    retry_scheduled.push((site_id.clone(), *at));
                }
                Decision::Retry { site_id, .. } => retry_due.push(site_id.clone()),
                _ => {}
            }
        }
        self.apply_automatic_retries(id, retry_scheduled, retry_due)
            .await?;
        let auto_rolled_back = outcome
            .decisions
            .iter()
            .any(|d| matches!(d, Decision::Halt { rollback, .. } if !rollback.is_empty()));
        if changes(&outcome) || changed {
            record.status = if auto_rolled_back {
                WireStatus::RolledBack
            } else {
                outcome.status
            };
            record.updated_at = now;
        }
        // Assignments first: whoever sees the wave open also finds its assignments.
        if matches!(record.status, WireStatus::Running | WireStatus::Paused) {
            self.assign_open_waves(&head, &record, now).await?;
        }
        if changes(&outcome) || changed {
            self.save_rollout(&record, to_store, now).await?;
            if completed {
                let l = self.load_rollout(id).await?;
                if let Some(note) = self.channel_after_completion(&l, now).await? {
                    self.record_decisions(id, vec![("channel".into(), None, note)], now)
                        .await?;
                }
            }
        } else {
            self.record_decisions(id, to_store, now).await?;
        }
        let awaiting = outcome.decisions.iter().find_map(|d| match d {
            Decision::RequestApproval { wave, .. } => Some(*wave),
            _ => None,
        });
        self.note_approval_wait(id, awaiting, now).await;
        Ok(())
    }

    /// One controller pass over every running or paused rollout. A rollout whose
    /// evaluation fails is dealt with by [`Engine::tick_isolated`]; the others go on.
    pub async fn tick_all(&self) -> Result<(), EngineError> {
        let _guard = self.lock.lock().await;
        let rollouts = self.db.run(|s| s.list_rollouts()).await?;
        let now = self.clock.now();
        for r in rollouts
            .iter()
            .filter(|r| r.status == WireStatus::Scheduled)
        {
            if let Err(e) = self.start_if_due(&r.id, now).await {
                tracing::warn!(rollout = %r.id, error = %e, "could not start a scheduled rollout; retrying on the next pass");
            }
        }
        let live: Vec<&str> = rollouts
            .iter()
            .filter(|r| matches!(r.status, WireStatus::Running | WireStatus::Paused))
            .map(|r| r.id.as_str())
            .collect();
        for id in &live {
            self.tick_isolated(id, now).await;
        }
        self.forget_approval_waits_except(&live);
        Ok(())
    }

    /// Starts a scheduled rollout whose plan's `start_at` has come, with a `started`
    /// decision saying so, and runs its first pass. Call with the engine lock held.
    async fn start_if_due(&self, id: &str, now: Timestamp) -> Result<(), EngineError> {
        let (mut record, start_at) = self
            .with_rollout(id, |l| (l.record.clone(), l.plan.start_at.clone()))
            .await?;
        if record.status != WireStatus::Scheduled {
            return Ok(());
        }
        let why = match &start_at {
            Some(s) if s.at > now => return Ok(()),
            Some(s) => format!(
                "started at its start_at {} ({}) by the wave controller",
                s.at,
                s.local()
            ),
            None => "started by the wave controller: scheduled without a start_at".to_string(),
        };
        record.status = WireStatus::Running;
        record.status_reason = None;
        record.updated_at = now;
        self.save_rollout(&record, vec![("started".into(), None, why)], now)
            .await?;
        self.tick_isolated(id, now).await;
        Ok(())
    }

    /// [`Engine::tick_rollout`], with its failure kept to this one rollout. A panic, or an
    /// error other than the storage being unavailable, halts the rollout at once with the
    /// reason as a `halt` decision in its timeline; a storage error is retried on the
    /// next passes and halts the rollout on the [`HALT_AFTER_FAILED_PASSES`]th in a row.
    /// Call with the engine lock held.
    pub async fn tick_isolated(&self, id: &str, now: Timestamp) {
        use futures_util::FutureExt as _;
        let outcome = std::panic::AssertUnwindSafe(self.tick_rollout(id, now))
            .catch_unwind()
            .await;
        let why = match outcome {
            Ok(Ok(())) => {
                self.failed_passes().remove(id);
                return;
            }
            Ok(Err(e)) if e.is_fenced() => {
                // Another replica leads now: its controller evaluates the rollout.
                tracing::warn!(rollout = %id, error = %e, "wave controller pass refused");
                return;
            }
            Ok(Err(e)) if e.is_storage_unavailable() => {
                let n = {
                    let mut failed = self.failed_passes();
                    let n = failed.entry(id.to_string()).or_insert(0);
                    *n += 1;
                    *n
                };
                tracing::warn!(rollout = %id, error = %e, failed_passes = n, "wave controller tick failed");
                if n < HALT_AFTER_FAILED_PASSES {
                    return;
                }
                format!("{n} passes in a row failed, the last with: {e}")
            }
            Ok(Err(e)) => e.to_string(),
            Err(panic) => format!("evaluating it panicked: {}", panic_message(&*panic)),
        };
        self.failed_passes().remove(id);
        // Memory may be what is wrong: the next use of the rollout reads SQLite again.
        self.facts.forget(id);
        tracing::error!(rollout = %id, reason = %why, "the wave controller could not evaluate a rollout; halting it");
        if let Err(e) = self.halt_unevaluable(id, &why, now).await {
            tracing::error!(rollout = %id, error = %e, "could not halt a rollout the wave controller cannot evaluate; retrying on the next pass");
        }
    }

    pub(super) fn failed_passes(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failed_passes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Halts a running or paused rollout that the controller cannot evaluate, storing
    /// why as a `halt` decision. Reads the stored record, not memory.
    pub(super) async fn halt_unevaluable(
        &self,
        id: &str,
        why: &str,
        now: Timestamp,
    ) -> Result<(), EngineError> {
        let mut record = self.rollout_record(id).await?;
        if !matches!(record.status, WireStatus::Running | WireStatus::Paused) {
            return Ok(());
        }
        let reason = format!(
            "halted: the wave controller could not evaluate this rollout: {why}. Nothing new \
             starts; fix the cause, then resume or abort the rollout"
        );
        record.status = WireStatus::Halted;
        record.status_reason = Some(reason.clone());
        record.updated_at = now;
        let halt = vec![("halt".into(), current_wave(&record), reason)];
        self.save_rollout(&record, halt, now).await?;
        self.last_note
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.metrics.controller_rollout_failures.inc();
        Ok(())
    }
}

/// How often the controller loop runs a convergence pass ([`Engine::converge`]); a channel
/// change, an enrollment, a relabel or a lifted hold asks for one sooner. Every
/// [`super::channels::FULL_SWEEP_EVERY`] the pass walks every site; otherwise it reads
/// indexes only.
pub const CONVERGE_EVERY: Duration = Duration::from_secs(5);

/// A rollout whose evaluation fails with a storage error on so many passes in a row is
/// halted (other failures halt it at once).
pub const HALT_AFTER_FAILED_PASSES: u32 = 3;

/// The least time between the end of one controller pass and the next woken pass.
/// Gates are about minutes (bakes, report deadlines); a quarter second later changes no
/// decision, while woken passes back to back re-evaluated a 20,000-site wave about 40
/// times a second during its reports.
pub const MIN_PASS_GAP: Duration = Duration::from_millis(250);

/// How long a wake-up waits after a pass that took `took`: four times as long, so the
/// controller holds the engine lock (which leases take too) at most a fifth of the time,
/// and at least [`MIN_PASS_GAP`]. Reports wake the controller all through a wave; at
/// 100,000 sites a pass takes tens of milliseconds, and back-to-back passes took a core
/// and let leases through at under one per second.
pub fn pass_gap(took: Duration) -> Duration {
    took.saturating_mul(4).max(MIN_PASS_GAP)
}

/// The message a panic was raised with (`panic!("...")`), or a placeholder.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_string()
    }
}

impl Engine {
    /// Runs the wave controller every `tick` and whenever woken (paced by [`pass_gap`]),
    /// until `shutdown` turns true; calls `pass_completed` with the time after each
    /// completed pass.
    pub async fn run_controller(
        &self,
        tick: Duration,
        mut shutdown: watch::Receiver<bool>,
        pass_completed: impl Fn(Timestamp),
    ) {
        let mut refresh_at = tokio::time::Instant::now();
        let mut converge_at = tokio::time::Instant::now();
        let mut full_sweep_at = tokio::time::Instant::now();
        loop {
            let started = tokio::time::Instant::now();
            match self.tick_all().await {
                Ok(()) => pass_completed(self.clock.now()),
                Err(e) => tracing::warn!(error = %e, "wave controller pass failed"),
            }
            let earliest = tokio::time::Instant::now() + pass_gap(started.elapsed());
            if tokio::time::Instant::now() >= converge_at
                || self
                    .converge_soon
                    .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                let started = std::time::Instant::now();
                let full = tokio::time::Instant::now() >= full_sweep_at;
                if full {
                    full_sweep_at = tokio::time::Instant::now() + super::channels::FULL_SWEEP_EVERY;
                }
                match self.converge(full).await {
                    Ok(pass) => {
                        self.metrics
                            .convergence_pass_seconds
                            .observe(started.elapsed().as_secs_f64());
                        if pass.found > 0 {
                            tracing::info!(
                                found = pass.found,
                                added = pass.added,
                                created = pass.created,
                                "convergence pass"
                            );
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "convergence pass failed"),
                }
                converge_at = tokio::time::Instant::now() + CONVERGE_EVERY;
            }
            if tokio::time::Instant::now() >= refresh_at {
                if let Err(e) = self.refresh_assignments().await {
                    tracing::warn!(error = %e, "assignment refresh failed");
                }
                refresh_at = tokio::time::Instant::now() + Duration::from_secs(60);
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = self.controller_wake.notified() => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(earliest) => {}
                        _ = shutdown.changed() => return,
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
