//! Filling the poll cache from the store: at start, and when this replica takes over the
//! wave controller's leadership from another (which issued assignments this replica's
//! memory never saw).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use fleetwave_shared::protocol::operator::{RolloutStatus, SiteState};

use super::{Engine, EngineError};
use crate::poll_cache::ServedRelease;
use crate::store::SiteFilter;

impl Engine {
    /// Sets every site's state, device key and newest assignment in the poll cache from
    /// the store (an aborted rollout's assignments are not served, its rollback ones are),
    /// and drops cached assignments the store no longer serves.
    pub async fn load_poll_cache(&self) -> Result<(), EngineError> {
        let sites = self
            .db
            .run(|s| {
                s.list_sites(&SiteFilter {
                    limit: usize::MAX >> 1,
                    ..Default::default()
                })
            })
            .await?;
        for s in &sites {
            self.sites.set_active(&s.id, s.state == SiteState::Active);
            self.sites.set_device_key(&s.id, &s.device_key);
        }
        // Sites of several boxes: every box's key opens the site's sessions.
        let boxes = self.db.run(|s| s.boxes_of_multi_box_sites()).await?;
        for site in boxes.chunk_by(|a, b| a.site_id == b.site_id) {
            self.sites.set_boxes(&site[0].site_id, site);
        }
        let assignments = self.db.run(|s| s.current_assignments()).await?;
        let rollouts = self.db.run(|s| s.list_rollouts()).await?;
        let aborted: HashSet<&str> = rollouts
            .iter()
            .filter(|r| matches!(r.status, RolloutStatus::Aborted))
            .map(|r| r.id.as_str())
            .collect();
        let mut served: HashSet<String> = HashSet::new();
        // One shared copy per release, read once (not once per site).
        let mut releases: HashMap<String, Arc<ServedRelease>> = HashMap::new();
        for a in assignments {
            if aborted.contains(a.rollout_id.as_str()) && !a.rollback {
                continue;
            }
            served.insert(a.site_id.clone());
            // A site's sequence numbers only go up: the same one is the same assignment,
            // already served (its long polls are not woken for nothing).
            let cached = self.sites.get(&a.site_id).and_then(|s| s.view().assignment);
            if cached.is_some_and(|c| c.record.sequence == a.sequence) {
                continue;
            }
            let release = match releases.get(&a.release_id) {
                Some(r) => r.clone(),
                None => {
                    let rid = a.release_id.clone();
                    let Some(release) = self.db.run(move |s| s.release(&rid)).await? else {
                        served.remove(&a.site_id);
                        continue;
                    };
                    let r = ServedRelease::new(release.envelope);
                    releases.insert(a.release_id.clone(), r.clone());
                    r
                }
            };
            self.sites.set_assignment(a, release);
        }
        for (site, slot) in self.sites.all() {
            if !served.contains(&site) && slot.view().assignment.is_some() {
                self.sites.clear_assignment(&site);
            }
        }
        Ok(())
    }
}
