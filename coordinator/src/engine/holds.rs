//! Holds: an operator keeps a site at what it runs (a store under investigation, a box
//! the vendor asked not to touch). A held site is placed by no new rollout and joins
//! none; an active rollout that had not started on it leaves it out of its gate (as a
//! skip, with the hold's reason in the timeline). An install already under way is not
//! stopped by a hold: the answer and the timeline say so. Lifting the hold lets the site
//! join the active rollouts that select it.

use jiff::Timestamp;

use super::facts::Update;
use super::{Engine, EngineError, facts};
use crate::store::SiteHold;

/// Longest reason accepted for a hold.
pub const MAX_HOLD_REASON: usize = 500;

/// What a hold did to the active rollouts the site was in.
#[derive(Debug, Default)]
pub struct HoldOutcome {
    /// Rollouts that had not started on the site: it is left out of their gates now.
    pub skipped_in: Vec<String>,
    /// Rollouts whose install on the site had already started: it goes on.
    pub started_in: Vec<String>,
}

impl Engine {
    /// Holds `site_id` with `reason` (replacing an earlier hold's reason).
    pub async fn hold_site(
        &self,
        site_id: &str,
        reason: &str,
        actor: &str,
    ) -> Result<HoldOutcome, EngineError> {
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > MAX_HOLD_REASON {
            return Err(EngineError::InvalidHold(format!(
                "reason: say why the site is held, in 1 to {MAX_HOLD_REASON} characters"
            )));
        }
        let sid = site_id.to_string();
        if self.db.run(move |s| s.site(&sid)).await?.is_none() {
            return Err(EngineError::SiteNotFound(site_id.to_string()));
        }
        let _guard = self.lock.lock().await;
        let now: Timestamp = self.clock.now();
        let hold = SiteHold {
            site_id: site_id.to_string(),
            reason: reason.to_string(),
            held_by: actor.to_string(),
            held_at: now,
        };
        self.db
            .run(move |s| s.set_site_hold(&hold.site_id, Some(&hold)))
            .await?;

        let mut outcome = HoldOutcome::default();
        let rollouts = self.db.run(|s| s.list_rollouts()).await?;
        for r in rollouts.into_iter().filter(|r| r.status.is_active()) {
            let member = self
                .with_rollout(&r.id, |l| {
                    l.site(site_id).map(|m| {
                        (
                            m.skipped,
                            m.rollback_sequence.is_some(),
                            facts(m).attempted(),
                        )
                    })
                })
                .await?;
            match member {
                None | Some((true, _, _)) => {}
                Some((_, rolled_back, started)) if started || rolled_back => {
                    outcome.started_in.push(r.id.clone());
                    self.record_decisions(
                        &r.id,
                        vec![(
                            "held".into(),
                            None,
                            format!(
                                "site {site_id} held by {actor}: {reason}; its install had already started and goes on"
                            ),
                        )],
                        now,
                    )
                    .await?;
                }
                Some(_) => {
                    let (rid, sid) = (r.id.clone(), site_id.to_string());
                    self.db
                        .run(move |s| s.set_rollout_site_skipped(&rid, &sid))
                        .await?;
                    self.facts.apply(
                        &r.id,
                        Update::Skipped {
                            site_id: site_id.to_string(),
                        },
                    );
                    self.record_decisions(
                        &r.id,
                        vec![(
                            "skipped".into(),
                            None,
                            format!(
                                "site {site_id} held by {actor}: {reason}; left out of the gate"
                            ),
                        )],
                        now,
                    )
                    .await?;
                    outcome.skipped_in.push(r.id.clone());
                }
            }
        }
        Ok(outcome)
    }

    /// Lifts the hold on `site_id`; the site then joins the active rollouts that select it.
    /// Returns whether it was held.
    pub async fn release_hold(&self, site_id: &str) -> Result<bool, EngineError> {
        let sid = site_id.to_string();
        if self.db.run(move |s| s.site(&sid)).await?.is_none() {
            return Err(EngineError::SiteNotFound(site_id.to_string()));
        }
        let sid = site_id.to_string();
        let was = {
            let _guard = self.lock.lock().await;
            self.db.run(move |s| s.set_site_hold(&sid, None)).await?
        };
        if was {
            self.join_rollouts(site_id).await?;
        }
        Ok(was)
    }

    /// Whether `site_id` is held.
    pub(super) async fn is_held(&self, site_id: &str) -> Result<bool, EngineError> {
        let holds = self.db.run(|s| s.site_holds()).await?;
        Ok(holds.contains_key(site_id))
    }
}
