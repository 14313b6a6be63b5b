//! Assignments: signing them with the coordinator key, issuing them (stored, then
//! published to the poll cache, which wakes the sites' long polls), in chunks when a wave
//! opens, as rollbacks, and again before they expire.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use fleetwave_shared::Envelope;
use fleetwave_shared::docs::{ASSIGNMENT_TYPE, Assignment};
use fleetwave_shared::protocol::operator::RolloutStatus as WireStatus;
use jiff::Timestamp;

use super::facts::Update;
use super::{Engine, EngineError, Head, ISSUE_CHUNK};
use crate::poll_cache::ServedRelease;
use crate::store::{AssignmentDraft, AssignmentRecord, RolloutRecord, StoreError};

impl Engine {
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
            self.facts.apply_all(rollout, updates);
        }
        Ok(records)
    }

    /// Issues `drafts` in chunks of [`ISSUE_CHUNK`], each published to the poll cache as
    /// soon as it commits.
    pub(super) async fn issue_in_chunks(
        &self,
        drafts: Vec<AssignmentDraft>,
        release: &fleetwave_shared::Envelope,
    ) -> Result<(), EngineError> {
        let started = std::time::Instant::now();
        let mut first_published = None;
        let release = crate::poll_cache::ServedRelease::new(release.clone());
        for chunk in drafts.chunks(ISSUE_CHUNK) {
            self.issue_assignments(chunk.to_vec(), release.clone())
                .await?;
            first_published.get_or_insert_with(|| started.elapsed());
        }
        if let Some(first) = first_published {
            tracing::info!(
                assignments = drafts.len(),
                chunks = drafts.len().div_ceil(ISSUE_CHUNK),
                first_chunk_ms = first.as_millis() as u64,
                all_ms = started.elapsed().as_millis() as u64,
                "assignments issued and published"
            );
        }
        Ok(())
    }

    /// Signs assignments for every non-skipped site of opened waves (as `record` says)
    /// that has none yet.
    pub(super) async fn assign_open_waves(
        &self,
        head: &Head,
        record: &RolloutRecord,
        now: Timestamp,
    ) -> Result<usize, EngineError> {
        let opened: Vec<bool> = record.waves.iter().map(|w| w.opened_at.is_some()).collect();
        if !opened.contains(&true) {
            return Ok(0);
        }
        let drafts: Vec<AssignmentDraft> = self
            .with_rollout(&record.id, |l| {
                l.sites
                    .iter()
                    .filter(|s| !s.skipped && s.assigned_at.is_none())
                    .filter(|s| opened.get(s.wave as usize) == Some(&true))
                    .map(|s| head.draft(&s.site_id, s.wave, now))
                    .collect::<Result<_, _>>()
            })
            .await??;
        let n = drafts.len();
        self.issue_in_chunks(drafts, &head.release.envelope).await?;
        Ok(n)
    }

    /// Signs rollback assignments sending `sites` back to the release each ran before.
    /// Returns a sentence about sites that could not be rolled back.
    pub(super) async fn roll_back(
        &self,
        head: &Head,
        sites: &[String],
        now: Timestamp,
    ) -> Result<(usize, Vec<String>), EngineError> {
        let mut by_release: BTreeMap<String, Vec<AssignmentDraft>> = BTreeMap::new();
        let mut missing = Vec::new();
        let members: Vec<(String, u32, Option<String>)> = self
            .with_rollout(&head.id, |l| {
                sites
                    .iter()
                    .filter_map(|id| l.site(id))
                    .map(|s| (s.site_id.clone(), s.wave, s.previous_release_id.clone()))
                    .collect()
            })
            .await?;
        for (site_id, wave, previous) in members {
            match previous {
                Some(prev) => {
                    let mut d = head.draft(&site_id, wave, now)?;
                    d.rollback = true;
                    d.release_id = prev.clone();
                    by_release.entry(prev).or_default().push(d);
                }
                None => missing.push(site_id),
            }
        }
        let mut issued = 0;
        for (release_id, mut drafts) in by_release {
            let rid = release_id.clone();
            match self.db.run(move |s| s.release(&rid)).await? {
                Some(release) => {
                    for d in &mut drafts {
                        d.release_digest = release.digest.clone();
                    }
                    issued += drafts.len();
                    self.issue_in_chunks(drafts, &release.envelope).await?;
                }
                None => {
                    missing.extend(drafts.into_iter().map(|d| {
                        format!("{} (release {release_id} not published here)", d.site_id)
                    }))
                }
            }
        }
        Ok((issued, missing))
    }

    /// Re-signs assignments that have less than half their lifetime left (rollouts still
    /// running, paused, halted or completed; rollbacks too).
    pub async fn refresh_assignments(&self) -> Result<(), EngineError> {
        let _guard = self.lock.lock().await;
        let now = self.clock.now();
        let mut due: BTreeMap<String, Vec<Arc<crate::poll_cache::CachedAssignment>>> =
            BTreeMap::new();
        for (_, slot) in self.sites.all() {
            let v = slot.view();
            if let Some(a) = v.assignment
                && v.active
            {
                let life = a.record.expires.duration_since(a.record.issued_at);
                if a.record.expires.duration_since(now) < life / 2 {
                    due.entry(a.record.rollout_id.clone()).or_default().push(a);
                }
            }
        }
        for (rollout_id, items) in due {
            let (status, head) = self
                .with_rollout(&rollout_id, |l| (l.record.status, Head::of(l)))
                .await?;
            if matches!(
                status,
                WireStatus::Aborted | WireStatus::Pending | WireStatus::Scheduled
            ) {
                continue;
            }
            for a in items {
                let mut d = head.draft(&a.record.site_id, a.record.wave, now)?;
                d.rollback = a.record.rollback;
                d.release_id = a.record.release_id.clone();
                d.release_digest = a.record.release_digest.clone();
                self.issue_assignments(vec![d], a.release.clone()).await?;
            }
        }
        Ok(())
    }
}

/// Signs an assignment draft with `signer`.
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
