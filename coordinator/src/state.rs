//! The running coordinator's shared state: configuration, storage, the coordinator key,
//! agent sessions, the per-site assignment cache that the poll path reads, the wake-up
//! signals of long polls and the wave controller, and the report writer (group commit).
//!
//! The poll path must stay cheap: it reads only memory here. Nothing in this module
//! decides policy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use ed25519_dalek::SigningKey;
use fleetwave_shared::docs::{ASSIGNMENT_TYPE, Assignment, Root};
use fleetwave_shared::verify::{Verified, verify_root_anchor, verify_root_rotation};
use fleetwave_shared::{Envelope, sha256_hex};
use jiff::Timestamp;
use tokio::sync::{Notify, watch};

use crate::config::Config;
use crate::group_commit::{GroupLimits, GroupWriter, Weigh};
use crate::metrics::Metrics;
use crate::rollouts::facts::Update;
use crate::store::{AssignmentDraft, AssignmentRecord, Db, ReportInput, ReportOutcome, StoreError};

pub type AppState = Arc<App>;

/// Everything handlers and background tasks share.
pub struct App {
    pub config: Config,
    pub db: Db,
    pub signer: SigningKey,
    pub sessions: Sessions,
    pub sites: SiteCache,
    pub trust: RwLock<TrustChain>,
    /// Bumped when a root is added (wakes long polls of every site).
    pub roots_changed: watch::Sender<u64>,
    pub metrics: Metrics,
    /// Wakes the wave controller before its next tick.
    pub controller_wake: Notify,
    /// Last-seen times not yet written (flushed about once a second).
    pub seen: Mutex<HashMap<String, Timestamp>>,
    /// Turns true when the server shuts down (ends long polls at once).
    pub shutdown: watch::Receiver<bool>,
    pub engine: crate::rollouts::Engine,
    /// Whether the wave controller runs (`/readyz`, metrics, the dashboard's banner).
    pub controller: crate::supervisor::Liveness,
}

/// The root chain, oldest first, and the newest root verified along it.
pub struct TrustChain {
    pub envelopes: Vec<Envelope>,
    pub current: Verified<Root>,
}

impl TrustChain {
    /// Verifies a chain: the first is the anchor, each next one a rotation.
    pub fn verify(envelopes: Vec<Envelope>) -> Result<TrustChain, String> {
        let first = envelopes.first().ok_or("no root envelope is known")?;
        let mut current = verify_root_anchor(first).map_err(|e| format!("root 1: {e}"))?;
        for (i, next) in envelopes.iter().enumerate().skip(1) {
            current =
                verify_root_rotation(&current, next).map_err(|e| format!("root {}: {e}", i + 1))?;
        }
        Ok(TrustChain { envelopes, current })
    }

    pub fn latest_version(&self) -> u64 {
        self.current.version
    }

    /// Root envelopes newer than `version`.
    pub fn newer_than(&self, version: Option<u64>) -> Vec<Envelope> {
        let skip = version.unwrap_or(0) as usize;
        self.envelopes.iter().skip(skip).cloned().collect()
    }
}

/// An agent session: bearer tokens are kept only as SHA-256.
#[derive(Debug, Clone)]
pub struct Session {
    pub site_id: String,
    pub expires_at: Timestamp,
}

#[derive(Default)]
pub struct Sessions {
    by_hash: RwLock<HashMap<String, Session>>,
}

impl Sessions {
    /// Creates a session and returns its bearer token.
    pub fn open(&self, site_id: &str, expires_at: Timestamp) -> String {
        let token = random_hex(32);
        let mut map = self.by_hash.write().unwrap_or_else(|e| e.into_inner());
        // Expired sessions are swept now and then, not on every open (cheap at scale).
        if map.len() % 1024 == 1023 {
            let now = Timestamp::now();
            map.retain(|_, s| s.expires_at > now);
        }
        map.insert(
            sha256_hex(token.as_bytes()),
            Session {
                site_id: site_id.to_string(),
                expires_at,
            },
        );
        token
    }

    /// The live session of a bearer token.
    pub fn lookup(&self, token: &str, now: Timestamp) -> Option<Session> {
        let map = self.by_hash.read().unwrap_or_else(|e| e.into_inner());
        map.get(&sha256_hex(token.as_bytes()))
            .filter(|s| s.expires_at > now)
            .cloned()
    }

    /// Drops every session of a site (decommission, re-enrollment).
    pub fn drop_site(&self, site_id: &str) {
        let mut map = self.by_hash.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.site_id != site_id);
    }
}

/// What the poll path serves for one site.
#[derive(Debug, Clone, Default)]
pub struct SiteView {
    pub active: bool,
    /// Shared, so that copying the view (every poll) copies no envelope.
    pub assignment: Option<Arc<CachedAssignment>>,
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
                assignment_json: assignment_json.into(),
            }))
        });
    }

    pub fn clear_assignment(&self, site_id: &str) {
        if let Some(slot) = self.get(site_id) {
            slot.update(|v| v.assignment = None);
        }
    }

    pub fn set_active(&self, site_id: &str, active: bool) {
        self.slot(site_id).update(|v| v.active = active);
    }
}

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

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    hex::encode(bytes)
}

impl App {
    /// Signs an assignment draft with the coordinator key.
    pub fn sign_assignment(&self, draft: &AssignmentDraft, sequence: u64) -> Envelope {
        sign_assignment(&self.signer, draft, sequence)
    }

    /// Issues and stores assignments, then makes the poll path serve them and wakes the
    /// sites' long polls.
    pub async fn issue_assignments(
        &self,
        drafts: Vec<AssignmentDraft>,
        release: Arc<ServedRelease>,
    ) -> Result<Vec<AssignmentRecord>, StoreError> {
        if drafts.is_empty() {
            return Ok(Vec::new());
        }
        let signer = self.signer.clone();
        let records = self
            .db
            .run(move |s| s.issue_assignments(&drafts, &|d, seq| sign_assignment(&signer, d, seq)))
            .await?;
        for r in &records {
            self.sites.set_assignment(r.clone(), release.clone());
        }
        let mut by_rollout: HashMap<&str, Vec<Update>> = HashMap::new();
        for r in &records {
            by_rollout
                .entry(r.rollout_id.as_str())
                .or_default()
                .push(Update::Assigned {
                    site_id: r.site_id.clone(),
                    at: r.issued_at,
                    rollback_sequence: r.rollback.then_some(r.sequence),
                });
        }
        for (rollout, updates) in by_rollout {
            self.engine.facts.apply_all(rollout, updates);
        }
        Ok(records)
    }

    /// Applies one agent's report batch through the group-commit writer; answers after
    /// the transaction that holds it committed.
    pub async fn apply_reports(&self, input: ReportInput) -> Result<ReportOutcome, StoreError> {
        let (db, facts) = (self.db.clone(), self.engine.facts.clone());
        self.engine
            .reports
            .submit(input, REPORT_GROUP, move || {
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

    /// Wakes the wave controller.
    pub fn wake_controller(&self) {
        self.controller_wake.notify_one();
    }
}

pub fn sign_assignment(signer: &SigningKey, d: &AssignmentDraft, sequence: u64) -> Envelope {
    let doc = Assignment {
        site_id: d.site_id.clone(),
        rollout_id: d.rollout_id.clone(),
        wave: d.wave,
        release_sha256: d.release_digest.clone(),
        sequence,
        not_before: d.not_before,
        issued_at: d.issued_at,
        expires: d.expires,
        rollback: d.rollback,
        window: d.window.clone(),
    };
    let payload = serde_json::to_vec(&doc).expect("an assignment always serializes");
    Envelope::sign(ASSIGNMENT_TYPE, &payload, &[signer])
}
