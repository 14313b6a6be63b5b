//! The rollout engine: gathers each rollout's facts, runs the pure wave controller
//! ([`crate::controller::tick`]) and applies what it decides (open a wave → sign its
//! sites' assignments; halt → with auto_rollback, sign rollback assignments; complete),
//! storing every decision with its reason. Operator actions and leases go through here
//! too, serialized by one lock so that no two changes to rollouts interleave.
//!
//! Each live rollout's facts are kept in memory ([`facts`]): loaded from SQLite once,
//! then updated by every path that changes them right after its commit, so a tick reads
//! memory. A wave's assignments are issued in chunks, each published to the poll cache
//! (waking its long polls) as soon as it commits.
//!
//! A rollout whose evaluation fails (an error or a panic) is halted with the reason in its
//! timeline, and the pass goes on with the others ([`App::tick_isolated`]); the
//! controller task as a whole is kept alive by [`crate::supervisor`].
//!
//! It never decides a gate or a lease itself: that is the controller's job.

pub mod facts;
mod placement;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use fleetwave_shared::protocol::operator::{
    self as op, RolloutStatus as WireStatus, SiteState as WireSiteState,
};
use jiff::{SignedDuration, Timestamp};

use crate::controller::{self, Decision, DecisionKey, RolloutStatus, SiteFacts, WaveView};
use crate::error::ApiError;
use crate::plan::{PlanFormat, RolloutPlan, parse_plan};
use crate::state::{App, random_hex};
use crate::store::{
    AssignmentDraft, DecisionRecord, LeaseRecord, ReleaseRecord, RolloutRecord, RolloutSiteRecord,
    SiteFilter, StoreError,
};
use facts::Update;

pub fn plan_format(f: op::PlanFormat) -> PlanFormat {
    match f {
        op::PlanFormat::Toml => PlanFormat::Toml,
        op::PlanFormat::Json => PlanFormat::Json,
    }
}

/// Assignments signed and stored per transaction when a wave opens: each chunk reaches
/// the poll cache (and wakes its sites' long polls) as soon as it commits.
pub const ISSUE_CHUNK: usize = 500;

/// At most this many lease grants go into one transaction.
pub const LEASE_GROUP: crate::group_commit::GroupLimits = crate::group_commit::GroupLimits {
    max_items: 512,
    max_weight: 512,
};

impl crate::group_commit::Weigh for LeaseRecord {}

/// Everything known about one rollout, loaded for a tick or an action.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub record: RolloutRecord,
    pub plan: Arc<RolloutPlan>,
    pub release: ReleaseRecord,
    pub sites: Vec<RolloutSiteRecord>,
}

impl Loaded {
    pub fn current_wave(&self) -> Option<u32> {
        current_wave(&self.record)
    }

    pub fn view(&self) -> controller::RolloutView {
        let mut waves: Vec<WaveView> = self
            .record
            .waves
            .iter()
            .map(|w| WaveView {
                opened_at: w.opened_at,
                approved_at: w.approved_at,
                sites: Vec::new(),
            })
            .collect();
        waves.resize(self.plan.waves.len(), WaveView::default());
        // Sized first: growing a wave's list of 40,000 sites by doubling copied it over
        // and over on every controller pass.
        let mut sizes = vec![0usize; waves.len()];
        for s in &self.sites {
            if let Some(n) = sizes.get_mut(s.wave as usize) {
                *n += 1;
            }
        }
        for (w, n) in waves.iter_mut().zip(sizes) {
            w.sites.reserve_exact(n);
        }
        for s in &self.sites {
            if let Some(w) = waves.get_mut(s.wave as usize) {
                w.sites.push(facts(s));
            }
        }
        controller::RolloutView {
            rollout_id: self.record.id.clone(),
            plan: (*self.plan).clone(),
            status: self.record.status,
            current_wave: self.current_wave(),
            waves,
        }
    }
}

/// The parts of a rollout that its assignment drafts need.
struct Head {
    id: String,
    plan: Arc<RolloutPlan>,
    release: ReleaseRecord,
}

impl Head {
    fn of(l: &Loaded) -> Head {
        Head {
            id: l.record.id.clone(),
            plan: l.plan.clone(),
            release: l.release.clone(),
        }
    }

    fn draft(
        &self,
        site_id: &str,
        wave: u32,
        now: Timestamp,
    ) -> Result<AssignmentDraft, crate::time::TimeOverflow> {
        let ttl = self.plan.assignment_ttl.max(SignedDuration::from_secs(300));
        Ok(AssignmentDraft {
            site_id: site_id.to_string(),
            rollout_id: self.id.clone(),
            wave,
            release_id: self.release.id.clone(),
            release_digest: self.release.digest.clone(),
            rollback: false,
            not_before: now,
            issued_at: now,
            expires: crate::time::later(
                now,
                ttl,
                "the assignment's expiry (now + assignment_ttl)",
            )?,
            window: self.plan.window.clone(),
        })
    }
}

/// The controller's facts from a stored rollout site.
/// The highest wave of a rollout that has opened.
fn current_wave(record: &RolloutRecord) -> Option<u32> {
    record
        .waves
        .iter()
        .rposition(|w| w.opened_at.is_some())
        .map(|i| i as u32)
}

/// What a lease decision reads of a rollout.
struct LeaseFacts {
    plan: Arc<RolloutPlan>,
    status: RolloutStatus,
    current_wave: Option<u32>,
    /// The site's wave and whether it was skipped (None: not a member).
    member: Option<(u32, bool)>,
}

impl LeaseFacts {
    fn of(l: &Loaded, site_id: &str) -> LeaseFacts {
        LeaseFacts {
            plan: l.plan.clone(),
            status: l.record.status,
            current_wave: l.current_wave(),
            member: l.site(site_id).map(|m| (m.wave, m.skipped)),
        }
    }
}

pub fn facts(s: &RolloutSiteRecord) -> SiteFacts {
    SiteFacts {
        site_id: s.site_id.clone(),
        assigned_at: s.assigned_at,
        leased_at: s.leased_at,
        last_phase: s.phase,
        last_phase_at: s.phase_at,
        last_report_at: s.last_report_at,
        committed_at: s.committed_at,
        last_healthy_at: s.last_healthy_at,
        first_unhealthy_after_commit_at: s.first_unhealthy_after_commit_at,
        failed_at: s.failed_at,
        failure: s.failure.clone(),
        rolled_back: s.rolled_back,
        deferred_until: s.deferred_until,
        skipped: s.skipped,
    }
}

/// The rollout engine's own state (live rollouts' facts, plan cache, last informational
/// decision per rollout, the report writer).
#[derive(Default)]
pub struct Engine {
    /// Serializes every change to rollouts, leases included.
    pub lock: tokio::sync::Mutex<()>,
    /// Live rollouts' facts in memory.
    pub facts: Arc<facts::FactsCache>,
    /// Group commit of agents' report batches.
    pub reports: crate::state::ReportWriter,
    /// Group commit of lease grants.
    pub leases: crate::group_commit::GroupWriter<LeaseRecord, ()>,
    plans: std::sync::Mutex<HashMap<String, Arc<RolloutPlan>>>,
    last_note: std::sync::Mutex<HashMap<String, DecisionKey>>,
    /// Consecutive passes whose evaluation of a rollout failed with a storage error.
    failed_passes: std::sync::Mutex<HashMap<String, u32>>,
}

impl Engine {
    fn plan(&self, record: &RolloutRecord) -> Result<Arc<RolloutPlan>, ApiError> {
        if let Some(p) = self
            .plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&record.id)
        {
            return Ok(p.clone());
        }
        let format = if record.plan_format == "json" {
            PlanFormat::Json
        } else {
            PlanFormat::Toml
        };
        let plan = Arc::new(parse_plan(&record.plan_source, format).map_err(|e| {
            ApiError::internal(format!(
                "stored plan of rollout {} no longer parses: {e}",
                record.id
            ))
        })?);
        self.plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(record.id.clone(), plan.clone());
        Ok(plan)
    }
}

impl App {
    /// A copy of a rollout with its plan, release and sites (from memory when the rollout
    /// is live).
    pub async fn load_rollout(&self, id: &str) -> Result<Loaded, ApiError> {
        self.with_rollout(id, Loaded::clone).await
    }

    /// Runs `f` on a rollout's facts: in memory for a live rollout (loaded from SQLite on
    /// first use), read from SQLite for a finished one.
    pub async fn with_rollout<R>(
        &self,
        id: &str,
        f: impl FnOnce(&Loaded) -> R,
    ) -> Result<R, ApiError> {
        let mut f = Some(f);
        let cache = &self.engine.facts;
        if let Some(r) = cache.with(id, |l| (f.take().expect("called once"))(l)) {
            return Ok(r);
        }
        let _load = cache.load.lock().await;
        if let Some(r) = cache.with(id, |l| (f.take().expect("called once"))(l)) {
            return Ok(r);
        }
        cache.begin_load(id);
        match self.read_rollout(id).await {
            Ok(l) => Ok(cache.finish_load(l, f.take().expect("called once"))),
            Err(e) => {
                cache.abandon_load(id);
                Err(e)
            }
        }
    }

    /// A rollout's stored record (404 when there is none).
    async fn rollout_record(&self, id: &str) -> Result<RolloutRecord, ApiError> {
        let rid = id.to_string();
        self.db
            .run(move |s| s.rollout(&rid))
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no rollout {id}")))
    }

    /// Reads a rollout with its plan, release and sites from SQLite.
    async fn read_rollout(&self, id: &str) -> Result<Loaded, ApiError> {
        let record = self.rollout_record(id).await?;
        let plan = self.engine.plan(&record)?;
        let release_id = record.release_id.clone();
        let release = self
            .db
            .run(move |s| s.release(&release_id))
            .await?
            .ok_or_else(|| {
                ApiError::internal(format!(
                    "release {} of rollout {id} is missing",
                    record.release_id
                ))
            })?;
        let rid = id.to_string();
        let sites = self.db.run(move |s| s.rollout_sites(&rid)).await?;
        Ok(Loaded {
            record,
            plan,
            release,
            sites,
        })
    }

    /// Issues `drafts` in chunks of [`ISSUE_CHUNK`], each published to the poll cache as
    /// soon as it commits.
    async fn issue_in_chunks(
        &self,
        drafts: Vec<AssignmentDraft>,
        release: &fleetwave_shared::Envelope,
    ) -> Result<(), ApiError> {
        let started = std::time::Instant::now();
        let mut first_published = None;
        let release = crate::state::ServedRelease::new(release.clone());
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
    async fn assign_open_waves(
        &self,
        head: &Head,
        record: &RolloutRecord,
        now: Timestamp,
    ) -> Result<usize, ApiError> {
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
    async fn roll_back(
        &self,
        head: &Head,
        sites: &[String],
        now: Timestamp,
    ) -> Result<(usize, Vec<String>), ApiError> {
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

    /// Saves the rollout's record with `decisions`, in one transaction: whoever reads
    /// the new status also finds the decision that set it.
    async fn save_rollout(
        &self,
        record: &RolloutRecord,
        decisions: Vec<(String, Option<u32>, String)>,
        now: Timestamp,
    ) -> Result<(), ApiError> {
        let r = record.clone();
        let records = self.decision_records(&record.id, decisions, now);
        self.db.run(move |s| s.update_rollout(&r, &records)).await?;
        self.engine
            .facts
            .apply(&record.id, Update::Record(record.clone()));
        Ok(())
    }

    async fn record_decisions(
        &self,
        rollout_id: &str,
        decisions: Vec<(String, Option<u32>, String)>,
        now: Timestamp,
    ) -> Result<(), ApiError> {
        let records = self.decision_records(rollout_id, decisions, now);
        self.db.run(move |s| s.add_decisions(&records)).await?;
        Ok(())
    }

    /// The timeline entries for `decisions`, counted in the decision metric.
    fn decision_records(
        &self,
        rollout_id: &str,
        decisions: Vec<(String, Option<u32>, String)>,
        now: Timestamp,
    ) -> Vec<DecisionRecord> {
        for (kind, _, _) in &decisions {
            self.metrics
                .gate_decisions
                .get_or_create(&crate::metrics::KindLabel { kind: kind.clone() })
                .inc();
        }
        decisions
            .into_iter()
            .map(|(kind, wave, reason)| DecisionRecord {
                id: 0,
                rollout_id: rollout_id.to_string(),
                at: now,
                kind,
                wave,
                reason,
            })
            .collect()
    }

    /// Runs the controller once for one rollout and applies the outcome. Call with the
    /// engine lock held.
    pub async fn tick_rollout(&self, id: &str, now: Timestamp) -> Result<(), ApiError> {
        let (mut record, head, view) = self
            .with_rollout(id, |l| (l.record.clone(), Head::of(l), l.view()))
            .await?;
        let outcome = controller::tick(&view, now);
        let mut to_store = Vec::new();
        let mut changed = false;
        for decision in &outcome.decisions {
            if !decision.changes_state() {
                let key = decision.key();
                let mut notes = self
                    .engine
                    .last_note
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if notes.get(id) == Some(&key) {
                    continue;
                }
                notes.insert(id.to_string(), key);
                to_store.push((
                    decision.kind().to_string(),
                    decision.wave(),
                    decision.reason().to_string(),
                ));
                continue;
            }
            self.engine
                .last_note
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
            changed = true;
            to_store.push((
                decision.kind().to_string(),
                decision.wave(),
                decision.reason().to_string(),
            ));
            match decision {
                Decision::OpenWave { wave, .. } => {
                    if let Some(why) = self.place_from_wave(id, *wave).await? {
                        to_store.push(("membership".into(), Some(*wave), why));
                    }
                    let w = *wave as usize;
                    if record.waves.len() <= w {
                        record.waves.resize(w + 1, Default::default());
                    }
                    if record.waves[w].opened_at.is_none() {
                        record.waves[w].opened_at = Some(now);
                    }
                    if w > 0 && record.waves[w - 1].passed_at.is_none() {
                        record.waves[w - 1].passed_at = Some(now);
                    }
                }
                Decision::Halt {
                    reason, rollback, ..
                } => {
                    record.status_reason = Some(reason.clone());
                    if !rollback.is_empty() {
                        let (issued, missing) = self.roll_back(&head, rollback, now).await?;
                        let mut why = format!(
                            "auto_rollback: {issued} site(s) sent back to their previous release"
                        );
                        if !missing.is_empty() {
                            why.push_str(&format!(
                                "; no previous release known for: {}",
                                missing.join(", ")
                            ));
                        }
                        to_store.push(("rollback".into(), None, why));
                    }
                }
                Decision::Complete { reason } => {
                    if let Some(last) = record.waves.last_mut()
                        && last.passed_at.is_none()
                    {
                        last.passed_at = Some(now);
                    }
                    record.status_reason = Some(reason.clone());
                }
                _ => {}
            }
        }
        let auto_rolled_back = outcome
            .decisions
            .iter()
            .any(|d| matches!(d, Decision::Halt { rollback, .. } if !rollback.is_empty()));
        if outcome.changes(&view) || changed {
            record.status = if auto_rolled_back {
                WireStatus::RolledBack
            } else {
                outcome.status
            };
            record.updated_at = now;
        }
        // Assignments first: whoever sees the wave open also finds its assignments.
        if matches!(record.status, WireStatus::Running | WireStatus::Paused) {
            self.assign_open_waves(&head, &record, now).await?;
        }
        if outcome.changes(&view) || changed {
            self.save_rollout(&record, to_store, now).await?;
        } else {
            self.record_decisions(id, to_store, now).await?;
        }
        Ok(())
    }

    /// One controller pass over every running or paused rollout. A rollout whose
    /// evaluation fails is dealt with by [`App::tick_isolated`]; the others go on.
    pub async fn tick_all(&self) -> Result<(), ApiError> {
        let _guard = self.engine.lock.lock().await;
        let rollouts = self.db.run(|s| s.list_rollouts()).await?;
        let now = Timestamp::now();
        for r in rollouts
            .iter()
            .filter(|r| matches!(r.status, WireStatus::Running | WireStatus::Paused))
        {
            self.tick_isolated(&r.id, now).await;
        }
        Ok(())
    }

    /// [`App::tick_rollout`], with its failure kept to this one rollout. A panic, or an
    /// error other than the storage being unavailable, halts the rollout at once with the
    /// reason as a `halt` decision in its timeline; a storage error is retried on the
    /// next passes and halts the rollout on the [`HALT_AFTER_FAILED_PASSES`]th in a row.
    /// Call with the engine lock held.
    pub async fn tick_isolated(&self, id: &str, now: Timestamp) {
        use futures_util::FutureExt as _;
        let outcome = std::panic::AssertUnwindSafe(self.tick_rollout(id, now))
            .catch_unwind()
            .await;
        let why = match outcome {
            Ok(Ok(())) => {
                self.failed_passes().remove(id);
                return;
            }
            Ok(Err(e)) if e.status == axum::http::StatusCode::SERVICE_UNAVAILABLE => {
                let n = {
                    let mut failed = self.failed_passes();
                    let n = failed.entry(id.to_string()).or_insert(0);
                    *n += 1;
                    *n
                };
                tracing::warn!(rollout = %id, error = %e, failed_passes = n, "wave controller tick failed");
                if n < HALT_AFTER_FAILED_PASSES {
                    return;
                }
                format!("{n} passes in a row failed, the last with: {}", e.message)
            }
            Ok(Err(e)) => e.message,
            Err(panic) => format!(
                "evaluating it panicked: {}",
                crate::supervisor::panic_message(&*panic)
            ),
        };
        self.failed_passes().remove(id);
        // Memory may be what is wrong: the next use of the rollout reads SQLite again.
        self.engine.facts.forget(id);
        tracing::error!(rollout = %id, reason = %why, "the wave controller could not evaluate a rollout; halting it");
        if let Err(e) = self.halt_unevaluable(id, &why, now).await {
            tracing::error!(rollout = %id, error = %e, "could not halt a rollout the wave controller cannot evaluate; retrying on the next pass");
        }
    }

    fn failed_passes(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.engine
            .failed_passes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Halts a running or paused rollout that the controller cannot evaluate, storing
    /// why as a `halt` decision. Reads the stored record, not memory.
    async fn halt_unevaluable(&self, id: &str, why: &str, now: Timestamp) -> Result<(), ApiError> {
        let mut record = self.rollout_record(id).await?;
        if !matches!(record.status, WireStatus::Running | WireStatus::Paused) {
            return Ok(());
        }
        let reason = format!(
            "halted: the wave controller could not evaluate this rollout: {why}. Nothing new \
             starts; fix the cause, then resume or abort the rollout"
        );
        record.status = WireStatus::Halted;
        record.status_reason = Some(reason.clone());
        record.updated_at = now;
        let halt = vec![("halt".into(), current_wave(&record), reason)];
        self.save_rollout(&record, halt, now).await?;
        self.engine
            .last_note
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.metrics.controller_rollout_failures.inc();
        Ok(())
    }

    /// Creates a rollout from a plan: validates it, computes every site's wave and refuses
    /// sites that already belong to an active rollout.
    pub async fn create_rollout(
        &self,
        plan_text: String,
        format: op::PlanFormat,
        actor: &str,
    ) -> Result<RolloutRecord, ApiError> {
        let plan = parse_plan(&plan_text, plan_format(format)).map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_plan",
                e.to_string(),
            )
        })?;
        let release_id = plan.release.clone();
        let release = self
            .db
            .run(move |s| s.release(&release_id))
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_plan",
                    format!(
                        "release: release {:?} is not published on this coordinator",
                        plan.release
                    ),
                )
            })?;
        let id = rollout_id(&plan.name);
        let sites = self
            .db
            .run(|s| {
                s.list_sites(&SiteFilter {
                    state: Some(WireSiteState::Active),
                    limit: usize::MAX >> 1,
                    ..SiteFilter::default()
                })
            })
            .await?;
        let candidates: Vec<controller::Candidate> = sites
            .iter()
            .map(|site| controller::Candidate {
                site_id: &site.id,
                labels: &site.labels,
            })
            .collect();
        let members: Vec<RolloutSiteRecord> = sites
            .iter()
            .zip(controller::place(&plan, &id, 0, &candidates))
            .filter_map(|(site, wave)| {
                Some(RolloutSiteRecord {
                    rollout_id: id.clone(),
                    site_id: site.id.clone(),
                    wave: wave?,
                    previous_release_id: previous_release(site, &release),
                    ..RolloutSiteRecord::default()
                })
            })
            .collect();
        let now = Timestamp::now();
        let record = RolloutRecord {
            id: id.clone(),
            release_id: release.id.clone(),
            plan_source: plan_text,
            plan_format: match format {
                op::PlanFormat::Json => "json".into(),
                op::PlanFormat::Toml => "toml".into(),
            },
            status: WireStatus::Pending,
            waves: vec![Default::default(); plan.waves.len()],
            created_at: now,
            created_by: actor.to_string(),
            updated_at: now,
            status_reason: None,
        };
        let _guard = self.engine.lock.lock().await;
        let (r, m) = (record.clone(), members);
        let n = m.len();
        self.db
            .run(move |s| s.create_rollout(&r, &m))
            .await
            .map_err(|e| match e {
                StoreError::Conflict(msg) => ApiError::conflict("rollout_conflict", msg),
                other => other.into(),
            })?;
        self.record_decisions(
            &id,
            vec![(
                "created".into(),
                None,
                format!(
                    "rollout created by {actor} for release {} with {n} site(s) in {} wave(s)",
                    release.id,
                    plan.waves.len()
                ),
            )],
            now,
        )
        .await?;
        Ok(record)
    }

    /// Adds a site that enrolled, was relabelled or re-enabled to every active rollout
    /// that selects it, in the first wave that still takes it
    /// ([`controller::wave_for_joiner`]: an opened share wave does not); assigns it at
    /// once if that wave is open. A wave that has not opened places it again with the
    /// others when it opens.
    pub async fn join_rollouts(&self, site_id: &str) -> Result<(), ApiError> {
        let sid = site_id.to_string();
        let Some(site) = self.db.run(move |s| s.site(&sid)).await? else {
            return Ok(());
        };
        if site.state != WireSiteState::Active {
            return Ok(());
        }
        let _guard = self.engine.lock.lock().await;
        let rollouts = self.db.run(|s| s.list_rollouts()).await?;
        for r in rollouts.into_iter().filter(|r| r.status.is_active()) {
            let (member_already, head, opened) = self
                .with_rollout(&r.id, |l| {
                    (l.site(&site.id).is_some(), Head::of(l), l.current_wave())
                })
                .await?;
            if member_already {
                continue;
            }
            let Some(wave) = controller::wave_for_joiner(&head.plan, &site.labels, opened) else {
                continue;
            };
            let member = RolloutSiteRecord {
                rollout_id: r.id.clone(),
                site_id: site.id.clone(),
                wave,
                previous_release_id: previous_release(&site, &head.release),
                deferred_until: site.deferred_until,
                ..RolloutSiteRecord::default()
            };
            let m = member.clone();
            let added = self.db.run(move |s| s.add_rollout_sites(&[m])).await?;
            if added.is_empty() {
                continue;
            }
            self.engine.facts.apply(&r.id, Update::Joined(member));
            let now = Timestamp::now();
            self.record_decisions(
                &r.id,
                vec![(
                    "site_joined".into(),
                    Some(wave),
                    format!("site {} joined wave {wave}", site.id),
                )],
                now,
            )
            .await?;
            if matches!(r.status, WireStatus::Running | WireStatus::Paused) {
                let record = self.with_rollout(&r.id, |l| l.record.clone()).await?;
                self.assign_open_waves(&head, &record, now).await?;
            }
            break;
        }
        Ok(())
    }

    /// Applies an operator action to a rollout. Returns the rollout after the action.
    pub async fn rollout_action(
        &self,
        id: &str,
        action: Action,
        actor: &str,
    ) -> Result<(), ApiError> {
        let _guard = self.engine.lock.lock().await;
        let now = Timestamp::now();
        let mut l = self.load_rollout(id).await?;
        let status = l.record.status;
        status
            .allows(action.kind())
            .map_err(|refused| ApiError::conflict("invalid_state", refused.for_rollout(id)))?;
        let note: Option<(String, Option<u32>, String)>;
        match &action {
            Action::Start => {
                l.record.status = WireStatus::Running;
                note = Some(("started".into(), None, format!("started by {actor}")));
            }
            Action::Pause(reason) => {
                l.record.status = WireStatus::Paused;
                l.record.status_reason = Some(format!("paused by {actor}{}", reason_tail(reason)));
                note = Some((
                    "paused".into(),
                    None,
                    l.record.status_reason.clone().unwrap_or_default(),
                ));
            }
            Action::Resume => {
                l.record.status = WireStatus::Running;
                l.record.status_reason = None;
                note = Some(("resumed".into(), None, format!("resumed by {actor}")));
            }
            Action::Approve(wave) => {
                let w = l.record.waves.get_mut(*wave as usize).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "wave {wave} does not exist: the plan has {} wave(s)",
                        l.plan.waves.len()
                    ))
                })?;
                if w.opened_at.is_none() {
                    return Err(ApiError::conflict(
                        "wave_not_open",
                        format!(
                            "wave {wave} has not opened yet; approve it once its gate waits for approval"
                        ),
                    ));
                }
                w.approved_at = Some(now);
                w.approved_by = Some(actor.to_string());
                note = Some((
                    "approved".into(),
                    Some(*wave),
                    format!("wave {wave} approved by {actor}"),
                ));
            }
            Action::Abort(reason) => {
                l.record.status = WireStatus::Aborted;
                l.record.status_reason = Some(format!("aborted by {actor}{}", reason_tail(reason)));
                note = Some((
                    "aborted".into(),
                    None,
                    l.record.status_reason.clone().unwrap_or_default(),
                ));
                for s in &l.sites {
                    if let Some(slot) = self.sites.get(&s.site_id)
                        && slot
                            .view()
                            .assignment
                            .is_some_and(|a| a.record.rollout_id == id && !a.record.rollback)
                    {
                        self.sites.clear_assignment(&s.site_id);
                    }
                }
            }
            Action::Rollback(reason) => {
                let sites = controller::sites_to_roll_back(&l.view());
                let (issued, missing) = self.roll_back(&Head::of(&l), &sites, now).await?;
                l.record.status = WireStatus::RolledBack;
                let mut why = format!(
                    "rolled back by {actor}{}: {issued} site(s) sent back to their previous release",
                    reason_tail(reason)
                );
                if !missing.is_empty() {
                    why.push_str(&format!(
                        "; no previous release known for: {}",
                        missing.join(", ")
                    ));
                }
                l.record.status_reason = Some(why.clone());
                note = Some(("rollback".into(), None, why));
            }
            Action::Skip(site_id) => {
                let (rid, sid) = (id.to_string(), site_id.clone());
                self.db
                    .run(move |s| s.set_rollout_site_skipped(&rid, &sid))
                    .await?;
                self.engine.facts.apply(
                    id,
                    Update::Skipped {
                        site_id: site_id.clone(),
                    },
                );
                note = Some((
                    "skipped".into(),
                    None,
                    format!("site {site_id} skipped by {actor}"),
                ));
            }
        }
        l.record.updated_at = now;
        self.save_rollout(&l.record, note.into_iter().collect(), now)
            .await?;
        if matches!(l.record.status, WireStatus::Running | WireStatus::Paused) {
            self.tick_isolated(id, now).await;
        }
        Ok(())
    }

    /// Decides and, if granted, records a lease for `site_id`.
    ///
    /// The decision is made under the engine lock from memory (plus, for a wave with a
    /// concurrency or compartment limit, the active leases in SQLite). The grant is
    /// written through the lease group commit: a wave opening on 40,000 sites makes
    /// 40,000 requests within seconds, and one fsync each would queue them past the
    /// request limit. A grant that counts against a limit is committed before the lock is
    /// released, so the next decision sees it; any other grant after.
    pub async fn lease(
        &self,
        site_id: &str,
        req: &fleetwave_shared::protocol::LeaseRequest,
    ) -> Result<fleetwave_shared::protocol::LeaseGrant, ApiError> {
        // The site's labels and deferral, read before the engine lock: a reader
        // connection, never the writer.
        let site_rec = {
            let sid = site_id.to_string();
            self.db
                .run(move |s| s.site(&sid))
                .await?
                .ok_or_else(|| ApiError::not_found(format!("no site {site_id}")))?
        };
        let guard = self.engine.lock.lock().await;
        let now = Timestamp::now();
        let deny = |d: controller::LeaseDenial| {
            crate::metrics::Metrics::count(&self.metrics.leases, d.reason.as_str(), 1);
            ApiError::conflict("lease_denied", d.to_string()).with_retry_after(d.retry_after_secs)
        };
        let facts = match self.lease_facts(&req.rollout_id, site_id).await {
            Ok(f) => f,
            Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => {
                return Err(deny(controller::LeaseDenial {
                    reason: controller::LeaseDenialReason::NotAssigned,
                    message: format!("rollout {} does not exist", req.rollout_id),
                    retry_after_secs: controller::leases::NOT_OPEN_RETRY_SECS,
                }));
            }
            Err(e) => return Err(e),
        };
        let rollout_id = req.rollout_id.as_str();
        let (plan, status, current_wave, me) =
            (facts.plan, facts.status, facts.current_wave, facts.member);
        let current = self
            .sites
            .get(site_id)
            .and_then(|slot| slot.view().assignment)
            .filter(|a| a.record.rollout_id == req.rollout_id);
        // A rollback assignment is installed at once: no window, limit or status applies.
        if let Some(a) = &current
            && a.record.rollback
            && a.record.sequence == req.sequence
        {
            drop(guard);
            return self
                .grant(site_id, rollout_id, me.map_or(0, |m| m.0), now)
                .await;
        }
        let site_wave = me.map(|m| m.0);
        // Active leases only count against a wave's or compartment's limit: without one,
        // reading them (thousands while a large wave installs) for every lease would make
        // granting a wave's leases quadratic.
        let limited = site_wave
            .and_then(|w| plan.wave(w))
            .is_some_and(|w| w.max_concurrent.is_some() || w.compartment.is_some());
        let leases = if limited {
            let rid = req.rollout_id.clone();
            self.db.run(move |s| s.active_leases(&rid, now)).await?
        } else {
            Vec::new()
        };
        let holds_lease = leases.iter().any(|x| x.site_id == site_id);
        let wave_active = leases
            .iter()
            .filter(|x| x.site_id != site_id && Some(x.wave) == site_wave)
            .count() as u32;
        let (mut comp_active, mut comp_sites) = (0u32, 0u32);
        if let Some(w) = site_wave
            && let Some((label, value)) =
                controller::leases::compartment_of(&plan, w, &site_rec.labels)
        {
            let (rid, label, sid) = (
                req.rollout_id.clone(),
                label.to_string(),
                site_id.to_string(),
            );
            (comp_sites, comp_active) = self
                .db
                .run(move |s| s.compartment_counts(&rid, &label, &value, &sid, now))
                .await?;
        }
        let ctx = controller::LeaseContext {
            plan: &plan,
            status,
            current_wave,
            site_wave: if me.is_some_and(|m| m.1) {
                None
            } else {
                site_wave
            },
            site_labels: &site_rec.labels,
            assignment_sequence: current
                .as_ref()
                .filter(|a| !a.record.rollback)
                .map(|a| a.record.sequence),
            requested_sequence: req.sequence,
            deferred_until: site_rec.deferred_until,
            freezes: &self.config.freezes,
            holds_lease,
            wave_active_leases: wave_active,
            compartment_active_leases: comp_active,
            compartment_sites: comp_sites,
        };
        controller::lease_decision(&ctx, now).map_err(deny)?;
        if limited {
            let granted = self
                .grant(site_id, rollout_id, site_wave.unwrap_or(0), now)
                .await;
            drop(guard);
            granted
        } else {
            // Nothing counts this grant: decide the next lease while it commits. Should
            // the rollout end before the commit, the lease row is left behind inert: no
            // lease of a finished rollout is ever read.
            drop(guard);
            self.grant(site_id, rollout_id, site_wave.unwrap_or(0), now)
                .await
        }
    }

    /// What a lease decision needs of a rollout: from memory for a live rollout. A
    /// finished rollout is not kept in memory, yet a completed one still grants leases to
    /// late sites: for it, read its record and this site's row only, never all its sites.
    async fn lease_facts(&self, id: &str, site_id: &str) -> Result<LeaseFacts, ApiError> {
        if let Some(f) = self.engine.facts.with(id, |l| LeaseFacts::of(l, site_id)) {
            return Ok(f);
        }
        let record = self.rollout_record(id).await?;
        if record.status.is_active() {
            // Live but not loaded yet (after a restart): load it into memory once.
            return self.with_rollout(id, |l| LeaseFacts::of(l, site_id)).await;
        }
        let plan = self.engine.plan(&record)?;
        let (rid, sid) = (id.to_string(), site_id.to_string());
        let member = self.db.run(move |s| s.rollout_site(&rid, &sid)).await?;
        Ok(LeaseFacts {
            plan,
            status: record.status,
            current_wave: current_wave(&record),
            member: member.map(|m| (m.wave, m.skipped)),
        })
    }

    /// Writes a granted lease through the lease group commit, then notes it in the
    /// rollout's facts.
    async fn grant(
        &self,
        site_id: &str,
        rollout_id: &str,
        wave: u32,
        now: Timestamp,
    ) -> Result<fleetwave_shared::protocol::LeaseGrant, ApiError> {
        let lease = LeaseRecord {
            id: format!("lease-{}", random_hex(12)),
            site_id: site_id.to_string(),
            rollout_id: rollout_id.to_string(),
            wave,
            granted_at: now,
            expires_at: crate::time::later(
                now,
                SignedDuration::from_secs(
                    i64::try_from(self.config.assignments.lease_ttl_secs).unwrap_or(i64::MAX),
                ),
                "the lease's expiry (now + assignments.lease_ttl_secs)",
            )?,
        };
        let (db, facts) = (self.db.clone(), self.engine.facts.clone());
        self.engine
            .leases
            .submit(lease.clone(), LEASE_GROUP, move || {
                move |leases: Vec<LeaseRecord>| {
                    let (db, facts) = (db.clone(), facts.clone());
                    async move {
                        let noted: Vec<(String, String, Timestamp)> = leases
                            .iter()
                            .map(|l| (l.rollout_id.clone(), l.site_id.clone(), l.granted_at))
                            .collect();
                        let outcomes = db.run(move |s| s.grant_leases(&leases)).await?;
                        for ((rollout, site_id, at), o) in noted.into_iter().zip(&outcomes) {
                            if o.is_ok() {
                                facts.apply(&rollout, Update::Leased { site_id, at });
                            }
                        }
                        Ok(outcomes)
                    }
                }
            })
            .await?;
        crate::metrics::Metrics::count(&self.metrics.leases, "granted", 1);
        // No controller wake-up: a grant changes no gate input (only reports do), and at
        // 100,000 sites a pass per grant held the engine lock between every two grants.
        Ok(fleetwave_shared::protocol::LeaseGrant {
            lease_id: lease.id,
            rollout_id: lease.rollout_id,
            expires_at: lease.expires_at,
        })
    }

    /// Re-signs assignments that have less than half their lifetime left (rollouts still
    /// running, paused, halted or completed; rollbacks too).
    pub async fn refresh_assignments(&self) -> Result<(), ApiError> {
        let _guard = self.engine.lock.lock().await;
        let now = Timestamp::now();
        let mut due: BTreeMap<String, Vec<Arc<crate::state::CachedAssignment>>> = BTreeMap::new();
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
            if matches!(status, WireStatus::Aborted | WireStatus::Pending) {
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

/// An operator action on a rollout.
#[derive(Debug, Clone)]
pub enum Action {
    Start,
    Pause(Option<String>),
    Resume,
    Approve(u32),
    Abort(Option<String>),
    Rollback(Option<String>),
    Skip(String),
}

impl Action {
    /// The action without its arguments, as [`RolloutStatus::allows`] judges it.
    pub fn kind(&self) -> op::ActionKind {
        match self {
            Action::Start => op::ActionKind::Start,
            Action::Pause(_) => op::ActionKind::Pause,
            Action::Resume => op::ActionKind::Resume,
            Action::Approve(_) => op::ActionKind::Approve,
            Action::Abort(_) => op::ActionKind::Abort,
            Action::Rollback(_) => op::ActionKind::Rollback,
            Action::Skip(_) => op::ActionKind::Skip,
        }
    }
}

fn reason_tail(reason: &Option<String>) -> String {
    reason
        .as_deref()
        .filter(|r| !r.is_empty())
        .map(|r| format!(": {r}"))
        .unwrap_or_default()
}

/// The release a site ran in the rollout's stream before it, if it said.
fn previous_release(site: &crate::store::SiteRecord, release: &ReleaseRecord) -> Option<String> {
    site.installed
        .get(&release.name)
        .and_then(|i| i.release_id.clone())
        .filter(|id| *id != release.id)
}

/// A rollout id from the plan's name: a slug plus a random suffix (unique).
fn rollout_id(name: &str) -> String {
    let mut slug: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    slug.truncate(40);
    let slug = slug.trim_matches('-');
    let slug = if slug.is_empty() { "rollout" } else { slug };
    format!("{slug}-{}", random_hex(4))
}

/// A rollout whose evaluation fails with a storage error on so many passes in a row is
/// halted (other failures halt it at once).
pub const HALT_AFTER_FAILED_PASSES: u32 = 3;

/// The least time between the end of one controller pass and the next woken pass.
/// Gates are about minutes (bakes, report deadlines); a quarter second later changes no
/// decision, while woken passes back to back re-evaluated a 20,000-site wave about 40
/// times a second during its reports.
pub const MIN_PASS_GAP: Duration = Duration::from_millis(250);

/// How long a wake-up waits after a pass that took `took`: four times as long, so the
/// controller holds the engine lock (which leases take too) at most a fifth of the time,
/// and at least [`MIN_PASS_GAP`]. Reports wake the controller all through a wave; at
/// 100,000 sites a pass takes tens of milliseconds, and back-to-back passes took a core
/// and let leases through at under one per second.
pub fn pass_gap(took: Duration) -> Duration {
    took.saturating_mul(4).max(MIN_PASS_GAP)
}

/// Runs the wave controller every tick and whenever woken (paced by [`pass_gap`]), until
/// shutdown.
pub async fn run_controller(app: Arc<App>) {
    let tick = Duration::from_millis(app.config.controller.tick_millis);
    let mut shutdown = app.shutdown.clone();
    let mut refresh_at = tokio::time::Instant::now();
    loop {
        let started = tokio::time::Instant::now();
        match app.tick_all().await {
            Ok(()) => app.controller.pass_completed(Timestamp::now()),
            Err(e) => tracing::warn!(error = %e, "wave controller pass failed"),
        }
        let earliest = tokio::time::Instant::now() + pass_gap(started.elapsed());
        if tokio::time::Instant::now() >= refresh_at {
            if let Err(e) = app.refresh_assignments().await {
                tracing::warn!(error = %e, "assignment refresh failed");
            }
            refresh_at = tokio::time::Instant::now() + Duration::from_secs(60);
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = app.controller_wake.notified() => {
                tokio::select! {
                    _ = tokio::time::sleep_until(earliest) => {}
                    _ = shutdown.changed() => return,
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}
