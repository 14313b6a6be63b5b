//! Agents' report batches (group commit, then taken over into the rollouts' facts) and
//! the batched last-seen times of sites.

use jiff::Timestamp;

use super::Engine;
use super::facts::Update;
use crate::group_commit::{GroupLimits, GroupWriter, Weigh};
use crate::store::{ReportInput, ReportOutcome, StoreError};

/// At most this many report batches go into one transaction, and at most about this many
/// events.
pub const REPORT_GROUP: GroupLimits = GroupLimits {
    max_items: 512,
    max_weight: 10_000,
};

/// Group commit of agents' report batches: one transaction per group of waiting batches,
/// each batch all-or-nothing on its own (see [`crate::group_commit`]). The committed facts
/// are taken over into the engine's memory before any request is answered.
pub type ReportWriter = GroupWriter<ReportInput, ReportOutcome>;

impl Weigh for ReportInput {
    fn weight(&self) -> usize {
        self.events.len()
    }
}

impl Engine {
    /// Applies one agent's report batch through the group-commit writer; answers after
    /// the transaction that holds it committed.
    pub async fn apply_reports(&self, input: ReportInput) -> Result<ReportOutcome, StoreError> {
        let (db, facts) = (self.db.clone(), self.facts.clone());
        self.reports
            .submit(input, self.db.group_limits(REPORT_GROUP), move || {
                move |inputs: Vec<ReportInput>| {
                    let (db, facts) = (db.clone(), facts.clone());
                    async move {
                        let mut outcomes = db.run(move |s| s.apply_report_group(&inputs)).await?;
                        for o in outcomes.iter_mut().flatten() {
                            for row in std::mem::take(&mut o.facts) {
                                let rollout = row.rollout_id.clone();
                                facts.apply(&rollout, Update::Reported(row));
                            }
                        }
                        Ok(outcomes)
                    }
                }
            })
            .await
    }

    /// Notes that a site was seen (flushed in batches).
    pub fn saw(&self, site_id: &str, at: Timestamp) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(site_id.to_string(), at);
    }

    /// Writes the batched last-seen times.
    pub async fn flush_seen(&self) -> Result<(), StoreError> {
        let batch: Vec<(String, Timestamp)> = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.drain().collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        self.db.run(move |s| s.touch_sites(&batch)).await
    }
}
