//! The engine's in-memory copy of each live rollout's facts (its record, plan, release and
//! every member site's row), so that a controller tick, a lease or a status view reads
//! memory instead of reloading every site from SQLite.
//!
//! SQLite stays the durable truth: a rollout is loaded from it on first use (and again
//! after a restart), and every path that changes a rollout's rows applies the same change
//! here right after its transaction committed ([`Update`]). Updates that arrive while a
//! rollout is being loaded are kept and replayed on top of what was read, so none is lost
//! to the race between the read and the commit. Finished rollouts (completed, aborted,
//! rolled back) are not kept: their views read SQLite.
//!
//! This module never writes to the database and never decides anything.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::Timestamp;

use super::Loaded;
use super::view::Touched;
use crate::store::{RolloutRecord, RolloutSiteRecord};

/// A committed change to a rollout's facts.
#[derive(Debug, Clone)]
pub enum Update {
    /// A report batch changed the site's row: the row as committed (report-owned facts
    /// are taken over; `leased_at` only moves forward).
    Reported(RolloutSiteRecord),
    /// An assignment was issued (`rollback_sequence` for a rollback assignment).
    Assigned {
        site_id: String,
        at: Timestamp,
        rollback_sequence: Option<u64>,
    },
    /// A lease was granted.
    Leased { site_id: String, at: Timestamp },
    /// An operator skipped the site.
    Skipped { site_id: String },
    /// A new attempt started on the site (its install facts and scheduled retry were
    /// cleared; `attempts` is its new attempt number).
    Retried { site_id: String, attempts: u32 },
    /// The site's next automatic attempt was scheduled.
    RetryScheduled { site_id: String, at: Timestamp },
    /// The site was served by bundle, its assignment valid until `until`.
    Bundled { site_id: String, until: Timestamp },
    /// The site joined the rollout (late enrollment, relabel, re-enable).
    Joined(RolloutSiteRecord),
    /// The site was placed in another wave that has not opened (a wave opened and
    /// membership ran again).
    Moved { site_id: String, wave: u32 },
    /// The rollout's own record was saved.
    Record(RolloutRecord),
    /// The site's row as another replica committed it: taken over whole (a new member
    /// joins).
    Row(RolloutSiteRecord),
}

enum Entry {
    /// Being read from SQLite: updates wait here and are replayed on the result.
    Loading(Vec<Update>),
    Ready(Box<Loaded>),
}

/// See the module documentation.
#[derive(Default)]
pub struct FactsCache {
    rollouts: Mutex<HashMap<String, Entry>>,
    /// One load at a time (loads are rare: first use, restart).
    pub(super) load: tokio::sync::Mutex<()>,
}

/// Whether a rollout in this status is kept in memory.
fn kept(record: &RolloutRecord) -> bool {
    record.status.is_active()
}

impl FactsCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.rollouts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the rollout's facts if they are in memory.
    pub fn with<R>(&self, id: &str, f: impl FnOnce(&Loaded) -> R) -> Option<R> {
        match self.lock().get(id) {
            Some(Entry::Ready(l)) => Some(f(l)),
            _ => None,
        }
    }

    /// Marks the rollout as being loaded (from now on its updates are kept for replay).
    pub fn begin_load(&self, id: &str) {
        self.lock()
            .entry(id.to_string())
            .or_insert_with(|| Entry::Loading(Vec::new()));
    }

    /// Finishes a load: replays the updates that arrived meanwhile on `loaded`, keeps it
    /// (if the rollout is still live) and runs `f` on the result.
    pub fn finish_load<R>(&self, mut loaded: Loaded, f: impl FnOnce(&Loaded) -> R) -> R {
        let mut map = self.lock();
        let id = loaded.record.id.clone();
        if let Some(Entry::Loading(pending)) = map.remove(&id) {
            for u in pending {
                apply(&mut loaded, u);
            }
        }
        let out = f(&loaded);
        if kept(&loaded.record) {
            map.insert(id, Entry::Ready(Box::new(loaded)));
        }
        out
    }

    /// Gives up a load that failed.
    pub fn abandon_load(&self, id: &str) {
        let mut map = self.lock();
        if matches!(map.get(id), Some(Entry::Loading(_))) {
            map.remove(id);
        }
    }

    /// Applies a committed change. Rollouts not in memory are left alone (their next
    /// load reads the change from SQLite).
    pub fn apply(&self, rollout_id: &str, update: Update) {
        let mut map = self.lock();
        match map.get_mut(rollout_id) {
            Some(Entry::Loading(pending)) => pending.push(update),
            Some(Entry::Ready(l)) => {
                apply(l, update);
                if !kept(&l.record) {
                    map.remove(rollout_id);
                }
            }
            None => {}
        }
    }

    /// Applies many changes to one rollout under one lock.
    pub fn apply_all(&self, rollout_id: &str, updates: impl IntoIterator<Item = Update>) {
        let mut map = self.lock();
        match map.get_mut(rollout_id) {
            Some(Entry::Loading(pending)) => pending.extend(updates),
            Some(Entry::Ready(l)) => {
                for u in updates {
                    apply(l, u);
                }
                if !kept(&l.record) {
                    map.remove(rollout_id);
                }
            }
            None => {}
        }
    }

    /// Forgets one rollout's facts (its next use reloads them from SQLite): after its
    /// evaluation failed, memory may be the part that is wrong.
    pub fn forget(&self, id: &str) {
        let mut map = self.lock();
        if matches!(map.get(id), Some(Entry::Ready(_))) {
            map.remove(id);
        }
    }

    /// Forgets everything (tests of the rebuild after a restart).
    pub fn clear(&self) {
        self.lock().clear();
    }
}

impl Loaded {
    /// The row of a member site (sites are kept sorted by id).
    pub fn site(&self, site_id: &str) -> Option<&RolloutSiteRecord> {
        self.sites
            .binary_search_by(|s| s.site_id.as_str().cmp(site_id))
            .ok()
            .map(|i| &self.sites[i])
    }

    fn site_mut(&mut self, site_id: &str) -> Option<&mut RolloutSiteRecord> {
        self.sites
            .binary_search_by(|s| s.site_id.as_str().cmp(site_id))
            .ok()
            .map(|i| &mut self.sites[i])
    }
}

/// A time as SQLite keeps it (whole milliseconds), so memory and the rows agree.
fn as_stored(t: Timestamp) -> Timestamp {
    Timestamp::from_millisecond(t.as_millisecond()).unwrap_or(t)
}

/// Applies `update` to the rows, then to the controller's kept view ([`super::view`]).
fn apply(l: &mut Loaded, update: Update) {
    let site = match &update {
        Update::Reported(row) if l.site(&row.site_id).is_some() => Some(row.site_id.clone()),
        Update::Assigned { site_id, .. }
        | Update::Leased { site_id, .. }
        | Update::Skipped { site_id }
        | Update::Retried { site_id, .. }
        | Update::RetryScheduled { site_id, .. }
        | Update::Bundled { site_id, .. } => Some(site_id.clone()),
        // A row from another replica whose wave is unchanged changes that site only.
        Update::Row(row) if l.site(&row.site_id).is_some_and(|s| s.wave == row.wave) => {
            Some(row.site_id.clone())
        }
        Update::Reported(_)
        | Update::Joined(_)
        | Update::Moved { .. }
        | Update::Record(_)
        | Update::Row(_) => None,
    };
    let record = matches!(update, Update::Record(_));
    apply_row(l, update);
    l.note_change(match &site {
        Some(id) => Touched::Site(id),
        None if record => Touched::Record,
        None => Touched::Members,
    });
}

fn apply_row(l: &mut Loaded, update: Update) {
    match update {
        Update::Reported(row) => match l
            .sites
            .binary_search_by(|s| s.site_id.as_str().cmp(&row.site_id))
        {
            Ok(i) => {
                let s = &mut l.sites[i];
                s.leased_at = s.leased_at.max(row.leased_at);
                s.phase = row.phase;
                s.phase_at = row.phase_at;
                s.detail = row.detail;
                s.committed_at = row.committed_at;
                s.failed_at = row.failed_at;
                s.failure = row.failure;
                s.rolled_back = row.rolled_back;
                s.last_healthy_at = row.last_healthy_at;
                s.first_unhealthy_after_commit_at = row.first_unhealthy_after_commit_at;
                s.last_report_at = row.last_report_at;
                s.previous_release_id = row.previous_release_id;
                s.deferred_until = row.deferred_until;
            }
            Err(i) => l.sites.insert(i, row),
        },
        Update::Assigned {
            site_id,
            at,
            rollback_sequence,
        } => {
            if let Some(s) = l.site_mut(&site_id) {
                match rollback_sequence {
                    Some(seq) => s.rollback_sequence = Some(seq),
                    None => s.assigned_at = s.assigned_at.or(Some(as_stored(at))),
                }
            }
        }
        Update::Leased { site_id, at } => {
            if let Some(s) = l.site_mut(&site_id) {
                s.leased_at = s.leased_at.max(Some(as_stored(at)));
            }
        }
        Update::Skipped { site_id } => {
            if let Some(s) = l.site_mut(&site_id) {
                s.skipped = true;
            }
        }
        Update::Bundled { site_id, until } => {
            if let Some(s) = l.site_mut(&site_id) {
                s.bundle_until = Some(as_stored(until));
            }
        }
        Update::RetryScheduled { site_id, at } => {
            if let Some(s) = l.site_mut(&site_id) {
                s.retry_at = Some(as_stored(at));
            }
        }
        Update::Retried { site_id, attempts } => {
            if let Some(s) = l.site_mut(&site_id) {
                s.attempts = attempts;
                s.retry_at = None;
                s.assigned_at = None;
                s.leased_at = None;
                s.phase = None;
                s.phase_at = None;
                s.detail = None;
                s.committed_at = None;
                s.failed_at = None;
                s.failure = None;
                s.rolled_back = false;
                s.first_unhealthy_after_commit_at = None;
            }
        }
        Update::Joined(row) => {
            if let Err(i) = l
                .sites
                .binary_search_by(|s| s.site_id.as_str().cmp(&row.site_id))
            {
                l.sites.insert(i, row);
            }
        }
        Update::Moved { site_id, wave } => {
            if let Some(s) = l.site_mut(&site_id) {
                s.wave = wave;
            }
        }
        Update::Record(record) => l.record = record,
        Update::Row(row) => match l
            .sites
            .binary_search_by(|s| s.site_id.as_str().cmp(&row.site_id))
        {
            Ok(i) => l.sites[i] = row,
            Err(i) => l.sites.insert(i, row),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn loaded(ids: &[&str]) -> Loaded {
        let plan = crate::plan::parse_plan(
            "name = \"t\"\nrelease = \"r\"\nselector = { sim = \"1\" }\n\n[[waves]]\nname = \"all\"\ngate = { success_ratio = 0.5, bake = \"0s\" }\n",
            crate::plan::PlanFormat::Toml,
        )
        .expect("plan");
        let now = Timestamp::now();
        Loaded {
            record: RolloutRecord {
                id: "r1".into(),
                release_id: "rel".into(),
                plan_source: String::new(),
                plan_format: "toml".into(),
                status: fleetwave_shared::protocol::operator::RolloutStatus::Running,
                waves: vec![],
                created_at: now,
                created_by: "t".into(),
                updated_at: now,
                status_reason: None,
            },
            plan: Arc::new(plan),
            release: crate::store::ReleaseRecord {
                id: "rel".into(),
                digest: "d".into(),
                name: "app".into(),
                version: "1".into(),
                kind: "app".into(),
                counter: 1,
                envelope: fleetwave_shared::Envelope {
                    payload: String::new(),
                    payload_type: String::new(),
                    signatures: vec![],
                },
                published_at: now,
                published_by: "t".into(),
            },
            sites: ids
                .iter()
                .map(|id| RolloutSiteRecord {
                    rollout_id: "r1".into(),
                    site_id: id.to_string(),
                    ..Default::default()
                })
                .collect(),
            views: Default::default(),
        }
    }

    #[test]
    fn updates_during_a_load_are_replayed_on_what_was_read() {
        let cache = FactsCache::default();
        let t = as_stored(Timestamp::now());
        cache.begin_load("r1");
        cache.apply(
            "r1",
            Update::Assigned {
                site_id: "b".into(),
                at: t,
                rollback_sequence: None,
            },
        );
        cache.apply(
            "r1",
            Update::Joined(RolloutSiteRecord {
                rollout_id: "r1".into(),
                site_id: "c".into(),
                ..Default::default()
            }),
        );
        let n = cache.finish_load(loaded(&["a", "b"]), |l| l.sites.len());
        assert_eq!(n, 3);
        let b = cache
            .with("r1", |l| l.site("b").cloned())
            .flatten()
            .expect("b");
        assert_eq!(b.assigned_at, Some(t));
        assert!(cache.with("r1", |l| l.site("c").is_some()).unwrap());
    }

    #[test]
    fn a_report_never_moves_a_lease_back_and_never_touches_assignment_facts() {
        let cache = FactsCache::default();
        cache.begin_load("r1");
        cache.finish_load(loaded(&["a"]), |_| ());
        let t = as_stored(Timestamp::now());
        let later = t + jiff::SignedDuration::from_secs(5);
        cache.apply(
            "r1",
            Update::Assigned {
                site_id: "a".into(),
                at: t,
                rollback_sequence: None,
            },
        );
        cache.apply(
            "r1",
            Update::Leased {
                site_id: "a".into(),
                at: later,
            },
        );
        // A report read back before the lease committed: older leased_at, no assignment.
        cache.apply(
            "r1",
            Update::Reported(RolloutSiteRecord {
                rollout_id: "r1".into(),
                site_id: "a".into(),
                leased_at: Some(t),
                committed_at: Some(later),
                ..Default::default()
            }),
        );
        let a = cache
            .with("r1", |l| l.site("a").cloned())
            .flatten()
            .unwrap();
        assert_eq!(a.leased_at, Some(later));
        assert_eq!(a.assigned_at, Some(t));
        assert_eq!(a.committed_at, Some(later));
    }

    #[test]
    fn a_finished_rollout_is_dropped_from_memory() {
        let cache = FactsCache::default();
        cache.begin_load("r1");
        let l = loaded(&["a"]);
        let mut record = l.record.clone();
        cache.finish_load(l, |_| ());
        assert!(cache.with("r1", |_| ()).is_some());
        record.status = fleetwave_shared::protocol::operator::RolloutStatus::Completed;
        cache.apply("r1", Update::Record(record));
        assert!(cache.with("r1", |_| ()).is_none());
    }

    #[test]
    fn the_kept_view_follows_every_change_and_equals_a_fresh_one() {
        let cache = FactsCache::default();
        cache.begin_load("r1");
        cache.finish_load(loaded(&["a", "b", "d"]), |_| ());
        let built = |cache: &FactsCache| {
            cache
                .with("r1", |l| l.with_view(|v| (v.clone(), l.view())))
                .expect("in memory")
        };
        let (kept, fresh) = built(&cache);
        assert_eq!(kept, fresh);
        let t = as_stored(Timestamp::now());
        cache.apply_all(
            "r1",
            [
                Update::Assigned {
                    site_id: "b".into(),
                    at: t,
                    rollback_sequence: None,
                },
                Update::Reported(RolloutSiteRecord {
                    rollout_id: "r1".into(),
                    site_id: "a".into(),
                    failed_at: Some(t),
                    failure: Some("disk full".into()),
                    ..Default::default()
                }),
                Update::Skipped {
                    site_id: "d".into(),
                },
            ],
        );
        let (kept, fresh) = built(&cache);
        assert_eq!(kept, fresh);
        let sites = &kept.waves[0].sites;
        assert_eq!(sites[0].failure.as_deref(), Some("disk full"));
        assert_eq!(sites[1].assigned_at, Some(t));
        assert!(sites[2].skipped);
        // A joiner and a report of a site that is no member yet change the members.
        cache.apply(
            "r1",
            Update::Joined(RolloutSiteRecord {
                rollout_id: "r1".into(),
                site_id: "c".into(),
                ..Default::default()
            }),
        );
        cache.apply(
            "r1",
            Update::Reported(RolloutSiteRecord {
                rollout_id: "r1".into(),
                site_id: "e".into(),
                committed_at: Some(t),
                ..Default::default()
            }),
        );
        let (kept, fresh) = built(&cache);
        assert_eq!(kept, fresh);
        let ids: Vec<&str> = kept.waves[0]
            .sites
            .iter()
            .map(|s| s.site_id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b", "c", "d", "e"]);
        // A copy of the facts does not take the kept view along.
        let copy = cache.with("r1", Loaded::clone).expect("in memory");
        assert!(format!("{:?}", copy.views).contains("built: false"));
    }
}
