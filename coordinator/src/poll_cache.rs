//! The poll cache: what the poll path serves for each site (whether it is active, and its
//! current assignment with the release it names), in memory, with a watch per site that
//! wakes the site's long polls when its view changes.
//!
//! The poll path must stay cheap: it reads only this memory. The engine
//! ([`crate::engine::Engine`]) keeps it current after every commit that changes a site's
//! assignment; enrollment and decommissioning set whether a site is active. Nothing in this
//! module decides policy.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use fleetwave_shared::{Envelope, sha256_hex};
use jiff::Timestamp;
use tokio::sync::watch;

use crate::store::AssignmentRecord;

/// What the poll path serves for one site.
#[derive(Debug, Clone, Default)]
pub struct SiteView {
    pub active: bool,
    /// Fingerprint of the site's device key ([`crate::state::device_key_fingerprint`]):
    /// agent sessions opened with another key are refused.
    pub key_fingerprint: Option<u64>,
    /// Fingerprints of the device keys of the site's other boxes (None: a one-box site):
    /// their sessions are the site's sessions too.
    pub other_box_keys: Option<Arc<[u64]>>,
    /// Shared, so that copying the view (every poll) copies no envelope.
    pub assignment: Option<Arc<CachedAssignment>>,
}

impl SiteView {
    /// Whether a session opened with the key of this fingerprint is one of the site's
    /// boxes' sessions (a one-box site compares one number).
    pub fn accepts_key(&self, fingerprint: u64) -> bool {
        self.key_fingerprint == Some(fingerprint)
            || self
                .other_box_keys
                .as_deref()
                .is_some_and(|keys| keys.contains(&fingerprint))
    }
}

#[derive(Debug, Clone)]
pub struct CachedAssignment {
    pub record: AssignmentMeta,
    /// Shared by every site assigned the release.
    pub release: Arc<ServedRelease>,
    /// `record.envelope.digest()`, computed once (the poll's ETag uses it).
    pub digest: String,
    /// The assignment envelope's compact JSON, serialized once here so that no poll
    /// serializes an envelope (see [`crate::api::agent::poll_head`]).
    pub assignment_json: bytes::Bytes,
}

/// An [`AssignmentRecord`] without its envelope: the cache keeps the envelope only as the
/// compact JSON that polls carry (keeping both cost about 0.8 KiB more per site).
#[derive(Debug, Clone)]
pub struct AssignmentMeta {
    pub site_id: String,
    pub sequence: u64,
    pub rollout_id: String,
    pub wave: u32,
    pub release_id: String,
    pub release_digest: String,
    pub rollback: bool,
    pub issued_at: Timestamp,
    pub expires: Timestamp,
}

/// A release as the poll path serves it: one copy for every site it is assigned to (a
/// copy per site cost about 3 KiB each, 300 MiB at 100,000 sites).
#[derive(Debug)]
pub struct ServedRelease {
    pub envelope: Envelope,
    /// The envelope's compact JSON, as poll bodies carry it.
    pub json: bytes::Bytes,
}

impl ServedRelease {
    pub fn new(envelope: Envelope) -> Arc<ServedRelease> {
        let json = bytes::Bytes::from(envelope.to_json());
        Arc::new(ServedRelease { envelope, json })
    }
}

pub struct SiteSlot {
    pub view: RwLock<SiteView>,
    /// Bumped whenever the view changes (wakes this site's long polls).
    pub changed: watch::Sender<u64>,
}

impl SiteSlot {
    fn new(view: SiteView) -> SiteSlot {
        SiteSlot {
            view: RwLock::new(view),
            changed: watch::channel(0).0,
        }
    }

    pub fn view(&self) -> SiteView {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The site's current assignment, without copying the rest of the view (the poll path).
    pub fn assignment(&self) -> Option<Arc<CachedAssignment>> {
        self.view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .assignment
            .clone()
    }

    /// Whether the site is active (enrolled, not decommissioned), without copying the view.
    pub fn active(&self) -> bool {
        self.view.read().unwrap_or_else(|e| e.into_inner()).active
    }

    pub fn update(&self, f: impl FnOnce(&mut SiteView)) {
        {
            let mut v = self.view.write().unwrap_or_else(|e| e.into_inner());
            f(&mut v);
        }
        self.changed.send_modify(|n| *n += 1);
    }
}

/// Per-site views, loaded at start and kept current by every change.
#[derive(Default)]
pub struct SiteCache {
    slots: RwLock<HashMap<String, Arc<SiteSlot>>>,
}

impl SiteCache {
    pub fn get(&self, site_id: &str) -> Option<Arc<SiteSlot>> {
        self.slots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(site_id)
            .cloned()
    }

    /// The slot of a site, created (inactive, empty) if missing.
    pub fn slot(&self, site_id: &str) -> Arc<SiteSlot> {
        if let Some(slot) = self.get(site_id) {
            return slot;
        }
        self.slots
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(site_id.to_string())
            .or_insert_with(|| Arc::new(SiteSlot::new(SiteView::default())))
            .clone()
    }

    pub fn all(&self) -> Vec<(String, Arc<SiteSlot>)> {
        self.slots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn set_assignment(&self, record: AssignmentRecord, release: Arc<ServedRelease>) {
        let slot = self.slot(&record.site_id);
        let assignment_json = record.envelope.to_json();
        let digest = sha256_hex(&assignment_json);
        let AssignmentRecord {
            site_id,
            sequence,
            rollout_id,
            wave,
            release_id,
            release_digest,
            rollback,
            envelope: _,
            issued_at,
            expires,
        } = record;
        let record = AssignmentMeta {
            site_id,
            sequence,
            rollout_id,
            wave,
            release_id,
            release_digest,
            rollback,
            issued_at,
            expires,
        };
        slot.update(|v| {
            v.assignment = Some(Arc::new(CachedAssignment {
                record,
                release,
                digest,
                // Exactly its length: serde's buffer grows by doubling, and the spare
                // capacity (about 190 bytes per site, 190 MB at a million) would stay.
                assignment_json: assignment_json.into_boxed_slice().into(),
            }))
        });
    }

    pub fn clear_assignment(&self, site_id: &str) {
        if let Some(slot) = self.get(site_id) {
            slot.update(|v| v.assignment = None);
        }
    }

    /// Whether the site is active; its long polls wake only when that changes.
    pub fn set_active(&self, site_id: &str, active: bool) {
        let slot = self.slot(site_id);
        if slot.view.read().unwrap_or_else(|e| e.into_inner()).active != active {
            slot.update(|v| v.active = active);
        }
    }

    /// Records the site's device key (as stored): sessions opened with another key end.
    /// Its long polls wake only when the key changes.
    pub fn set_device_key(&self, site_id: &str, device_key: &str) {
        let fp = Some(crate::state::device_key_fingerprint(device_key));
        let slot = self.slot(site_id);
        if slot
            .view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .key_fingerprint
            != fp
        {
            slot.update(|v| v.key_fingerprint = fp);
        }
    }

    /// Records the device keys of every box of a site (as [`crate::store::Store::site_boxes`]
    /// lists them, first box first): sessions opened with any other key end.
    pub fn set_boxes(&self, site_id: &str, boxes: &[crate::store::SiteBox]) {
        let fp = |b: &crate::store::SiteBox| crate::state::device_key_fingerprint(&b.device_key);
        let first = boxes.iter().find(|b| b.first).map(fp);
        let others: Vec<u64> = boxes.iter().filter(|b| !b.first).map(fp).collect();
        self.slot(site_id).update(|v| {
            if first.is_some() {
                v.key_fingerprint = first;
            }
            v.other_box_keys = (!others.is_empty()).then(|| others.into());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::device_key_fingerprint as fp;
    use crate::store::SiteBox;

    fn a_box(id: &str, key: &str, first: bool) -> SiteBox {
        SiteBox {
            site_id: "store-1".into(),
            box_id: id.into(),
            role: String::new(),
            device_key: key.into(),
            agent_version: "1".into(),
            enrolled_at: Timestamp::UNIX_EPOCH,
            first,
        }
    }

    #[test]
    fn every_box_key_of_a_site_opens_its_sessions_and_a_replaced_one_no_longer_does() {
        let cache = SiteCache::default();
        cache.set_device_key("store-1", "k-main");
        let one = cache.get("store-1").unwrap().view();
        assert!(one.accepts_key(fp("k-main")));
        assert!(!one.accepts_key(fp("k-other")));
        assert!(
            one.other_box_keys.is_none(),
            "a one-box site keeps one number"
        );

        cache.set_boxes(
            "store-1",
            &[a_box("srv", "k-srv", true), a_box("agt-1", "k-agt", false)],
        );
        let two = cache.get("store-1").unwrap().view();
        for key in ["k-srv", "k-agt"] {
            assert!(two.accepts_key(fp(key)), "{key}");
        }
        assert!(!two.accepts_key(fp("k-main")));

        // agt-1 re-keyed: its old key ends, the server's stays.
        cache.set_boxes(
            "store-1",
            &[
                a_box("srv", "k-srv", true),
                a_box("agt-1", "k-agt-new", false),
            ],
        );
        let after = cache.get("store-1").unwrap().view();
        assert!(after.accepts_key(fp("k-srv")));
        assert!(after.accepts_key(fp("k-agt-new")));
        assert!(!after.accepts_key(fp("k-agt")));
    }
}
