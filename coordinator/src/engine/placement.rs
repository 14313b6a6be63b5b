//! Wave membership again when a wave opens: [`crate::controller::place`] runs over the
//! rollout's sites that are not in an opened wave, with their labels as they are now, so
//! each share is a quota of the sites known when its wave opens (sites that enrolled,
//! came back or were relabelled since the rollout was created included).
//!
//! Only sites that were never assigned or leased, and not skipped, move; a site in an
//! opened wave never moves. A member the rollout's selector no longer selects, or that is
//! decommissioned, waits in the last wave and takes no share's place. The placing itself
//! is the controller's; this module only gathers its input and stores its answer.

use std::collections::HashMap;

use fleetwave_shared::protocol::operator::SiteState;

use super::facts::Update;
use super::{Engine, EngineError};
use crate::controller;

impl Engine {
    /// Places again the sites of `rollout_id` in waves `from..` that may still move.
    /// Call with the engine lock held, when wave `from` opens and before its sites are
    /// assigned. Returns a sentence for the timeline when any site moved.
    pub(super) async fn place_from_wave(
        &self,
        rollout_id: &str,
        from: u32,
    ) -> Result<Option<String>, EngineError> {
        let (plan, movable) = self
            .with_rollout(rollout_id, |l| {
                let movable: Vec<(String, u32)> = l
                    .sites
                    .iter()
                    .filter(|s| s.wave >= from && !s.skipped)
                    .filter(|s| s.assigned_at.is_none() && s.leased_at.is_none())
                    .map(|s| (s.site_id.clone(), s.wave))
                    .collect();
                (l.plan.clone(), movable)
            })
            .await?;
        if movable.is_empty() {
            return Ok(None);
        }
        // Every site's current labels, in one read (as creating the rollout does).
        let sites = self.db.run(|s| s.site_labels(None)).await?;
        let active: HashMap<&str, _> = sites
            .iter()
            .filter(|s| s.state == SiteState::Active)
            .map(|s| (s.id.as_str(), &s.labels))
            .collect();
        type Member<'a> = &'a (String, u32);
        let (known, gone): (Vec<Member>, Vec<Member>) = movable
            .iter()
            .partition(|(id, _)| active.contains_key(id.as_str()));
        let candidates: Vec<controller::Candidate> = known
            .iter()
            .map(|(id, _)| controller::Candidate {
                site_id: id,
                labels: active[id.as_str()],
            })
            .collect();
        let last = plan.waves.len().saturating_sub(1) as u32;
        let placed = controller::place(&plan, rollout_id, from, &candidates);
        let moves: Vec<(String, u32)> = known
            .iter()
            .zip(placed)
            .map(|((id, old), new)| (id, *old, new.unwrap_or(last)))
            .chain(gone.iter().map(|(id, old)| (id, *old, last)))
            .filter(|(_, old, new)| old != new)
            .map(|(id, _, new)| (id.clone(), new))
            .collect();
        if moves.is_empty() {
            return Ok(None);
        }
        let rid = rollout_id.to_string();
        let to_store = moves.clone();
        let moved = self
            .db
            .run(move |s| s.set_rollout_site_waves(&rid, &to_store))
            .await?;
        let wave_of: HashMap<&str, u32> = moves.iter().map(|(id, w)| (id.as_str(), *w)).collect();
        self.facts.apply_all(
            rollout_id,
            moved.iter().map(|id| Update::Moved {
                site_id: id.clone(),
                wave: wave_of[id.as_str()],
            }),
        );
        Ok((!moved.is_empty()).then(|| {
            format!(
                "wave {from} opens: membership of waves {from} to {last} placed again over the \
                 {} site(s) not yet in an opened wave, so each share is a quota of the sites \
                 known now; {} site(s) changed wave",
                movable.len(),
                moved.len()
            )
        }))
    }
}
