//! Filling the poll cache from the store: at start, and when this replica takes over the
//! wave controller's leadership from another (which issued assignments this replica's
//! memory never saw). And keeping it, the live rollouts' facts and the freezes coherent
//! with what other replicas commit ([`Engine::apply_changes`], fed by
//! [`crate::coherence`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use fleetwave_shared::protocol::operator::{RolloutStatus, SiteState};

use super::facts::Update;
use super::{Engine, EngineError};
use crate::poll_cache::ServedRelease;
use crate::store::{AssignmentRecord, Change, RolloutSiteRecord, SiteBox, SiteRecord};

/// Assignments read per query while the poll cache fills.
const ASSIGNMENT_PAGE: usize = 10_000;

/// What one batch of changes read back from the store.
#[derive(Default)]
struct Reread {
    sites: Vec<(String, Option<SiteRecord>)>,
    boxes: Vec<(String, Vec<SiteBox>)>,
    assignments: Vec<(String, Option<AssignmentRecord>)>,
    members: Vec<(String, RolloutSiteRecord)>,
    releases: HashMap<String, Option<fleetwave_shared::Envelope>>,
    aborted: HashSet<String>,
}

impl Engine {
    /// Sets every site's state, device key and newest assignment in the poll cache from
    /// the store (an aborted rollout's assignments are not served, its rollback ones are),
    /// and drops cached assignments the store no longer serves.
    ///
    /// It reads only what the cache keeps (ids, states, keys), and the assignments a page
    /// at a time: at a million sites, reading whole site records and every assignment at
    /// once peaked at 5.4 GB resident, for a cache of under 3 GB.
    pub async fn load_poll_cache(&self) -> Result<(), EngineError> {
        for s in self.db.run(|s| s.site_keys()).await? {
            self.sites.set_active(&s.id, s.state == SiteState::Active);
            self.sites.set_device_key(&s.id, &s.device_key);
        }
        // Sites of several boxes: every box's key opens the site's sessions.
        let boxes = self.db.run(|s| s.boxes_of_multi_box_sites()).await?;
        for site in boxes.chunk_by(|a, b| a.site_id == b.site_id) {
            self.sites.set_boxes(&site[0].site_id, site);
        }
        let rollouts = self.db.run(|s| s.list_rollouts()).await?;
        let aborted: HashSet<&str> = rollouts
            .iter()
            .filter(|r| matches!(r.status, RolloutStatus::Aborted))
            .map(|r| r.id.as_str())
            .collect();
        let mut served: HashSet<String> = HashSet::new();
        // One shared copy per release, read once (not once per site).
        let mut releases: HashMap<String, Arc<ServedRelease>> = HashMap::new();
        let mut after: Option<String> = None;
        loop {
            let from = after.clone();
            let page = self
                .db
                .run(move |s| s.current_assignments_after(from.as_deref(), ASSIGNMENT_PAGE))
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.site_id.clone());
            for a in page {
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
        }
        for (site, slot) in self.sites.all() {
            if !served.contains(&site) && slot.view().assignment.is_some() {
                self.sites.clear_assignment(&site);
            }
        }
        Ok(())
    }
}

impl Engine {
    /// Brings this replica's memory up to date with changes other replicas committed:
    /// re-reads the rows they name and puts them where this process keeps them (the poll
    /// cache, waking long polls whose site got an assignment; the live rollouts' facts;
    /// the freezes), then wakes the wave controller if a rollout's facts changed.
    /// Reading the rows again (instead of trusting the notification) makes a change
    /// applied twice, or late, harmless.
    pub async fn apply_changes(&self, changes: Vec<Change>) -> Result<(), EngineError> {
        let changes: BTreeSet<Change> = changes.into_iter().collect();
        if changes.is_empty() {
            return Ok(());
        }
        let freezes = changes.contains(&Change::Freezes);
        let rollout_ids: Vec<String> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Rollout(id) => Some(id.clone()),
                _ => None,
            })
            .collect();
        let records_changed = !rollout_ids.is_empty();
        let got = self
            .db
            .run(move |s| {
                let mut r = Reread::default();
                let mut rollout_status: HashMap<String, bool> = HashMap::new();
                for c in &changes {
                    match c {
                        Change::Site(id) => r.sites.push((id.clone(), s.site(id)?)),
                        Change::Boxes(id) => r.boxes.push((id.clone(), s.site_boxes(id)?)),
                        Change::Assignment(id) => {
                            let a = s.current_assignment_of(id)?;
                            if let Some(a) = &a {
                                if !rollout_status.contains_key(&a.rollout_id) {
                                    let aborted = s.rollout(&a.rollout_id)?.is_some_and(|x| {
                                        matches!(x.status, RolloutStatus::Aborted)
                                    });
                                    rollout_status.insert(a.rollout_id.clone(), aborted);
                                }
                                if !r.releases.contains_key(&a.release_id) {
                                    let rel = s.release(&a.release_id)?.map(|x| x.envelope);
                                    r.releases.insert(a.release_id.clone(), rel);
                                }
                            }
                            r.assignments.push((id.clone(), a));
                        }
                        // Read below, under the engine lock.
                        Change::Rollout(_) => {}
                        // Read below, all in one query.
                        Change::Member { .. } => {}
                        Change::Freezes => {}
                    }
                }
                let members: Vec<(String, String)> = changes
                    .iter()
                    .filter_map(|c| match c {
                        Change::Member {
                            rollout_id,
                            site_id,
                        } => Some((rollout_id.clone(), site_id.clone())),
                        _ => None,
                    })
                    .collect();
                for chunk in members.chunks(1000) {
                    for row in s.rollout_site_rows(chunk)? {
                        r.members.push((row.rollout_id.clone(), row));
                    }
                }
                r.aborted = rollout_status
                    .into_iter()
                    .filter(|(_, aborted)| *aborted)
                    .map(|(id, _)| id)
                    .collect();
                Ok(r)
            })
            .await?;
        for (id, site) in &got.sites {
            if let Some(site) = site {
                self.sites.set_active(id, site.state == SiteState::Active);
                self.sites.set_device_key(id, &site.device_key);
            }
        }
        for (id, boxes) in &got.boxes {
            self.sites.set_boxes(id, boxes);
        }
        let mut served: HashMap<String, Arc<ServedRelease>> = HashMap::new();
        for (site_id, a) in got.assignments {
            let Some(a) = a else {
                continue;
            };
            if got.aborted.contains(&a.rollout_id) && !a.rollback {
                self.sites.clear_assignment(&site_id);
                continue;
            }
            let cached = self.sites.get(&site_id).and_then(|s| s.view().assignment);
            if cached.is_some_and(|c| c.record.sequence >= a.sequence) {
                continue;
            }
            let release = match served.get(&a.release_id) {
                Some(r) => r.clone(),
                None => match got.releases.get(&a.release_id).cloned().flatten() {
                    Some(envelope) => {
                        let r = ServedRelease::new(envelope);
                        served.insert(a.release_id.clone(), r.clone());
                        r
                    }
                    None => continue,
                },
            };
            self.sites.set_assignment(a, release);
        }
        // Rollouts' records are read and applied under the engine lock, which every local
        // change to a record holds from its commit to its update in memory: a record read
        // here is never older than one this replica already holds.
        let mut aborted_now = false;
        if !rollout_ids.is_empty() {
            let _guard = self.lock.lock().await;
            let records = self
                .db
                .run(move |s| {
                    let mut out = Vec::new();
                    for id in &rollout_ids {
                        if let Some(rec) = s.rollout(id)? {
                            out.push(rec);
                        }
                    }
                    Ok(out)
                })
                .await?;
            for record in records {
                aborted_now |= matches!(record.status, RolloutStatus::Aborted);
                let id = record.id.clone();
                self.facts.apply(&id, Update::Record(record));
            }
        }
        let facts_changed = records_changed || !got.members.is_empty();
        for (rollout_id, row) in got.members {
            self.facts.apply(&rollout_id, Update::Row(row));
        }
        if aborted_now {
            // Another replica aborted a rollout: its sites' assignments stop being served.
            self.load_poll_cache().await?;
        }
        if freezes {
            self.load_freezes().await?;
        }
        if facts_changed {
            self.controller_wake.notify_one();
        }
        Ok(())
    }

    /// After the change feed broke (changes may have been missed): everything this
    /// replica keeps is read again.
    pub async fn resync(&self) -> Result<(), EngineError> {
        self.facts.clear();
        self.load_poll_cache().await?;
        self.load_freezes().await
    }
}
