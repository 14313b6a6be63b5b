//! Waves waiting for an operator's approval, and since when: what
//! `fleetwave_waves_awaiting_approval` and `fleetwave_approval_wait_seconds` report, so an
//! alert can say "a wave has waited 4 hours" instead of guessing from decision counters.
//!
//! The start of a wait is the first `request_approval` decision stored for that wave, so
//! a coordinator restart does not reset it (the decision is in the timeline).

use std::collections::HashMap;

use jiff::Timestamp;

use super::Engine;

impl Engine {
    /// Records whether rollout `id` waits for approval of `wave` after a controller pass.
    pub(super) async fn note_approval_wait(&self, id: &str, wave: Option<u32>, now: Timestamp) {
        let Some(wave) = wave else {
            self.approval_waits().remove(id);
            return;
        };
        if self
            .approval_waits()
            .get(id)
            .is_some_and(|(w, _)| *w == wave)
        {
            return;
        }
        let rid = id.to_string();
        let since = match self.db.run(move |s| s.decisions(&rid)).await {
            Ok(timeline) => timeline
                .iter()
                .filter(|d| d.kind == "request_approval" && d.wave == Some(wave))
                .map(|d| d.at)
                .min()
                .unwrap_or(now),
            // Only a metric depends on it: the next pass reads the timeline again.
            Err(e) => {
                tracing::warn!(rollout = %id, error = %e, "cannot read when the approval wait began");
                return;
            }
        };
        self.approval_waits()
            .insert(id.to_string(), (wave, since.min(now)));
    }

    /// Drops the waits of rollouts that are no longer running or paused.
    pub(super) fn forget_approval_waits_except(&self, live: &[&str]) {
        self.approval_waits()
            .retain(|id, _| live.contains(&id.as_str()));
    }

    /// How many waves wait for approval now, and the longest wait so far.
    pub fn approval_waits_at(&self, now: Timestamp) -> (usize, jiff::SignedDuration) {
        let waits = self.approval_waits();
        let longest = waits
            .values()
            .map(|(_, since)| now.duration_since(*since))
            .max()
            .unwrap_or_default()
            .max(jiff::SignedDuration::ZERO);
        (waits.len(), longest)
    }

    fn approval_waits(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, Timestamp)>> {
        self.approval_waits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}
