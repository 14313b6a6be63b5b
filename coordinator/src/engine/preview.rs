//! Dry runs of plans: gathers the fleet, the active rollouts' members and the freezes,
//! and hands them to the pure [`crate::plan_preview::preview`]. Stores nothing and takes
//! no engine lock: a preview never changes a rollout.

use std::collections::HashMap;

use fleetwave_shared::protocol::operator::{self as op, PlanPreview};

use super::{Engine, EngineError, plan_format};
use crate::plan::{RolloutPlan, parse_new_plan};
use crate::plan_preview::{PreviewSite, preview};
use crate::store::SiteFilter;

/// The seed a plan that is not created yet is placed with (a created rollout's seeds come
/// from its id, drawn at creation).
const PREVIEW_SEED: &str = "plan-preview";

impl Engine {
    /// What a submitted plan would do now: the same validation as creating it (the same
    /// [`EngineError::InvalidPlan`] messages), then the preview. Stores nothing.
    pub async fn preview_plan(
        &self,
        plan_text: &str,
        format: op::PlanFormat,
    ) -> Result<PlanPreview, EngineError> {
        let plan = parse_new_plan(plan_text, plan_format(format), self.clock.now())
            .map_err(|e| EngineError::InvalidPlan(e.to_string()))?;
        let release_id = plan.release.clone();
        if self
            .db
            .run(move |s| s.release(&release_id))
            .await?
            .is_none()
        {
            return Err(EngineError::InvalidPlan(format!(
                "release: release {:?} is not published on this coordinator",
                plan.release
            )));
        }
        self.preview_of(&plan, PREVIEW_SEED, None).await
    }

    /// What a created rollout's plan would do now, placed with the rollout's own seeds
    /// (its own sites do not count as "in another rollout").
    pub async fn preview_rollout(&self, id: &str) -> Result<PlanPreview, EngineError> {
        let plan = self.with_rollout(id, |l| l.plan.clone()).await?;
        self.preview_of(&plan, id, Some(id)).await
    }

    async fn preview_of(
        &self,
        plan: &RolloutPlan,
        seed_id: &str,
        itself: Option<&str>,
    ) -> Result<PlanPreview, EngineError> {
        let sites = self
            .db
            .run(|s| {
                s.list_sites(&SiteFilter {
                    limit: usize::MAX >> 1,
                    ..SiteFilter::default()
                })
            })
            .await?;
        // Which active rollout holds each site (other than the one previewed).
        let rollouts = self.db.run(|s| s.list_rollouts()).await?;
        let mut held: HashMap<String, String> = HashMap::new();
        for r in rollouts
            .iter()
            .filter(|r| r.status.is_active() && Some(r.id.as_str()) != itself)
        {
            let members: Vec<String> = self
                .with_rollout(&r.id, |l| {
                    l.sites.iter().map(|s| s.site_id.clone()).collect()
                })
                .await?;
            for m in members {
                held.entry(m).or_insert_with(|| r.id.clone());
            }
        }
        let holds = self.db.run(|s| s.site_holds()).await?;
        let fleet: Vec<PreviewSite> = sites
            .iter()
            .map(|s| PreviewSite {
                site_id: &s.id,
                labels: &s.labels,
                active: s.state == op::SiteState::Active,
                deferred_until: s.deferred_until,
                in_rollout: held.get(&s.id).map(String::as_str),
                held: holds
                    .get(&s.id)
                    .map(|h| (h.held_by.as_str(), h.reason.as_str())),
            })
            .collect();
        let freezes = self.effective_freezes();
        Ok(preview(plan, seed_id, &fleet, &freezes, self.clock.now()))
    }
}
