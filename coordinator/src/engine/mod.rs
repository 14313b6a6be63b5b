//! The rollout engine: gathers each rollout's facts, runs the pure wave controller
//! ([`crate::controller::tick`]) and applies what it decides (open a wave → sign its
//! sites' assignments; halt → with auto_rollback, sign rollback assignments; complete),
//! storing every decision with its reason. Operator actions, leases and agents' reports go
//! through here too; changes to rollouts are serialized by one lock so that no two
//! interleave.
//!
//! [`Engine`] owns its handles (the store, the poll cache, the coordinator key, the
//! metrics, the clock) and its group-commit writers. It knows nothing of HTTP: every
//! failure is an [`EngineError`], which `api/` and `dashboard/` turn into answers.
//!
//! - [`tick`]: controller passes (one rollout, all of them, a failure kept to one rollout)
//!   and the controller loop;
//! - [`actions`]: creating a rollout, operators' actions, sites joining rollouts;
//! - [`leases`]: lease decisions and grants;
//! - `preview`: dry runs of plans (gathers the fleet for [`crate::plan_preview`]);
//! - [`assign`]: signing, issuing and refreshing assignments (and publishing them to the
//!   poll cache);
//! - [`reports`]: agents' report batches and last-seen times;
//! - [`facts`]: each live rollout's facts in memory; [`placement`]: wave membership
//!   again when a wave opens;
//! - `warm`: the poll cache filled from the store (at start, and on taking over the
//!   controller's leadership from another replica).
//!
//! Each live rollout's facts are kept in memory ([`facts`]): loaded from SQLite once,
//! then updated by every path that changes them right after its commit, so a tick reads
//! memory. A wave's assignments are issued in chunks, each published to the poll cache
//! (waking its long polls) as soon as it commits.
//!
//! It never decides a gate or a lease itself: that is the controller's job.

pub mod actions;
mod analysis;
mod approvals;
pub mod assign;
pub mod bundles;
pub mod channels;
pub mod facts;
pub mod freezes;
pub mod holds;
pub mod leases;
mod placement;
mod preview;
pub mod reports;
mod retry;
pub mod tick;
pub mod view;
mod warm;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use ed25519_dalek::SigningKey;
use fleetwave_shared::protocol::operator::{self as op, ActionRefused};
use jiff::{SignedDuration, Timestamp};
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::controller::{self, DecisionKey, LeaseDenial, SiteFacts, WaveView};
use crate::group_commit::GroupWriter;
use crate::metrics::Metrics;
use crate::plan::{PlanFormat, RolloutPlan, parse_plan};
use crate::poll_cache::SiteCache;
use crate::store::{
    AssignmentDraft, Db, DecisionRecord, LeaseRecord, ReleaseRecord, RolloutRecord,
    RolloutSiteRecord, StoreError,
};
use crate::time::TimeOverflow;
use facts::Update;
use fleetwave_shared::window::Freeze;

pub use actions::{Action, RetryTarget};
pub use leases::LEASE_GROUP;
pub use reports::{REPORT_GROUP, ReportWriter};
pub use tick::{CONVERGE_EVERY, HALT_AFTER_FAILED_PASSES, MIN_PASS_GAP, panic_message, pass_gap};

pub fn plan_format(f: op::PlanFormat) -> PlanFormat {
    match f {
        op::PlanFormat::Toml => PlanFormat::Toml,
        op::PlanFormat::Json => PlanFormat::Json,
    }
}

/// Assignments signed and stored per transaction when a wave opens: each chunk reaches
/// the poll cache (and wakes its sites' long polls) as soon as it commits.
pub const ISSUE_CHUNK: usize = 500;

/// What the engine takes from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Change freezes: no lease is granted inside one.
    pub freezes: Vec<Freeze>,
    /// How long a granted lease lasts (`assignments.lease_ttl_secs`).
    pub lease_ttl_secs: u64,
}

impl Settings {
    pub fn of(config: &crate::config::Config) -> Settings {
        Settings {
            freezes: config.freezes.clone(),
            lease_ttl_secs: config.assignments.lease_ttl_secs,
        }
    }
}

/// The rollout engine: its handles, its writers and its memory.
pub struct Engine {
    /// The store.
    pub db: Db,
    /// What the poll path serves, per site.
    pub sites: SiteCache,
    /// The coordinator key, which signs assignments.
    signer: SigningKey,
    pub metrics: Arc<Metrics>,
    /// Where the engine reads the time.
    pub clock: Clock,
    settings: Settings,
    /// Serializes every change to rollouts, leases included.
    pub lock: tokio::sync::Mutex<()>,
    /// Live rollouts' facts in memory.
    pub facts: Arc<facts::FactsCache>,
    /// Group commit of agents' report batches.
    pub reports: ReportWriter,
    /// Group commit of lease grants.
    pub leases: GroupWriter<LeaseRecord, ()>,
    /// Wakes the wave controller before its next tick.
    controller_wake: Notify,
    /// Asks the controller loop for a convergence pass at its next wake-up.
    converge_soon: std::sync::atomic::AtomicBool,
    /// Last-seen times not yet written (flushed about once a second).
    seen: Mutex<HashMap<String, Timestamp>>,
    plans: Mutex<HashMap<String, Arc<RolloutPlan>>>,
    last_note: Mutex<HashMap<String, DecisionKey>>,
    /// The last golden-signal verdicts of each wave of recent rollouts (`analysis`).
    analyses: Mutex<HashMap<String, analysis::RolloutAnalyses>>,
    /// Rollouts whose next wave waits for approval now: the wave and since when.
    approval_waits: Mutex<HashMap<String, (u32, Timestamp)>>,
    /// Consecutive passes whose evaluation of a rollout failed with a storage error.
    failed_passes: Mutex<HashMap<String, u32>>,
    /// Stored freezes in force or to come, and the union leases read.
    freezes: RwLock<freezes::Freezes>,
    /// Serializes creating and ending freezes (store, then memory).
    freeze_lock: tokio::sync::Mutex<()>,
}

/// Why the engine could not do what it was asked, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed (or refused: not found, conflict).
    #[error(transparent)]
    Storage(#[from] StoreError),
    #[error("no rollout {0}")]
    RolloutNotFound(String),
    #[error("no site {0}")]
    SiteNotFound(String),
    /// The rollout's status does not allow the action.
    #[error("{}", refused_message(.rollout, .refused))]
    Refused {
        rollout: String,
        refused: ActionRefused,
    },
    #[error("wave {wave} does not exist: the plan has {waves} wave(s)")]
    NoSuchWave { wave: u32, waves: usize },
    #[error("wave {0} has not opened yet; approve it once its gate waits for approval")]
    WaveNotOpen(u32),
    /// A retry names a site or wave with nothing failed to install again.
    #[error("{0}")]
    NothingToRetry(String),
    /// A hold request breaks a rule (the message names the field).
    #[error("{0}")]
    InvalidHold(String),
    #[error("no channel {0}")]
    ChannelNotFound(String),
    /// A channel request breaks a rule (the message names the field).
    #[error("{0}")]
    InvalidChannel(String),
    /// A channel would take sites another channel of its stream has, or the name is taken.
    #[error("{0}")]
    ChannelConflict(String),
    /// A submitted plan does not parse, or names a release that is not published here.
    #[error("{0}")]
    InvalidPlan(String),
    /// Another rollout already holds some of the plan's sites (or the id is taken).
    #[error("{0}")]
    RolloutConflict(String),
    /// The controller refused a lease (carries when to ask again).
    #[error("{0}")]
    LeaseDenied(LeaseDenial),
    #[error("stored plan of rollout {rollout} no longer parses: {error}")]
    StoredPlan { rollout: String, error: String },
    #[error("release {release} of rollout {rollout} is missing")]
    ReleaseMissing { rollout: String, release: String },
    #[error(transparent)]
    Time(#[from] TimeOverflow),
    /// A bundle request names nothing exportable (the message names the field or site).
    #[error("{0}")]
    InvalidBundle(String),
    #[error("no freeze {0}")]
    FreezeNotFound(String),
    /// A freeze to create breaks a rule (`field` names the request's field).
    #[error("{field}: {message}")]
    InvalidFreeze {
        field: &'static str,
        message: String,
    },
    #[error(
        "freeze {0} comes from the coordinator's configuration file ([[freezes]]): it cannot \
         be ended through the API; edit the configuration file and restart the coordinator"
    )]
    FreezeFromConfig(String),
}

fn refused_message(rollout: &str, refused: &ActionRefused) -> String {
    refused.for_rollout(rollout)
}

impl EngineError {
    /// Whether the storage was unavailable (worth retrying later), as opposed to a refusal
    /// or a fault in the data.
    pub fn is_storage_unavailable(&self) -> bool {
        matches!(
            self,
            EngineError::Storage(e) if !matches!(
                e,
                StoreError::NotFound(_)
                    | StoreError::Conflict(_)
                    | StoreError::SiteExists(_)
                    | StoreError::Fenced(_)
                    | StoreError::BoxExists { .. }
            )
        )
    }

    /// Whether a write of the wave controller was refused because this replica no longer
    /// leads it (see [`crate::leadership`]): nothing about the rollout is wrong.
    pub fn is_fenced(&self) -> bool {
        matches!(self, EngineError::Storage(StoreError::Fenced(_)))
    }
}

impl Engine {
    pub fn new(
        db: Db,
        signer: SigningKey,
        metrics: Arc<Metrics>,
        clock: Clock,
        settings: Settings,
    ) -> Engine {
        let effective = Arc::new(settings.freezes.clone());
        Engine {
            db,
            sites: SiteCache::default(),
            signer,
            metrics,
            clock,
            settings,
            lock: Default::default(),
            facts: Default::default(),
            reports: Default::default(),
            leases: Default::default(),
            controller_wake: Notify::new(),
            converge_soon: Default::default(),
            seen: Default::default(),
            plans: Default::default(),
            last_note: Default::default(),
            analyses: Default::default(),
            approval_waits: Default::default(),
            failed_passes: Default::default(),
            freezes: RwLock::new(freezes::Freezes::new(effective)),
            freeze_lock: Default::default(),
        }
    }

    /// Wakes the wave controller.
    pub fn wake_controller(&self) {
        self.controller_wake.notify_one();
    }

    /// Wakes the wave controller for a convergence pass (a site enrolled, was relabelled
    /// or unheld, a channel changed).
    pub fn converge_soon(&self) {
        self.converge_soon
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.controller_wake.notify_one();
    }
    fn plan(&self, record: &RolloutRecord) -> Result<Arc<RolloutPlan>, EngineError> {
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
            EngineError::StoredPlan {
                rollout: record.id.clone(),
                error: e.to_string(),
            }
        })?);
        self.plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(record.id.clone(), plan.clone());
        Ok(plan)
    }

    /// A copy of a rollout with its plan, release and sites (from memory when the rollout
    /// is live).
    pub async fn load_rollout(&self, id: &str) -> Result<Loaded, EngineError> {
        self.with_rollout(id, Loaded::clone).await
    }

    /// Runs `f` on a rollout's facts: in memory for a live rollout (loaded from SQLite on
    /// first use), read from SQLite for a finished one.
    pub async fn with_rollout<R>(
        &self,
        id: &str,
        f: impl FnOnce(&Loaded) -> R,
    ) -> Result<R, EngineError> {
        let mut f = Some(f);
        let cache = &self.facts;
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

    /// A rollout's plan (from the plan cache, else its stored record).
    pub async fn rollout_plan(&self, id: &str) -> Result<Arc<RolloutPlan>, EngineError> {
        let record = self.rollout_record(id).await?;
        self.plan(&record)
    }

    /// A rollout's stored record ([`EngineError::RolloutNotFound`] when there is none).
    async fn rollout_record(&self, id: &str) -> Result<RolloutRecord, EngineError> {
        let rid = id.to_string();
        self.db
            .run(move |s| s.rollout(&rid))
            .await?
            .ok_or_else(|| EngineError::RolloutNotFound(id.to_string()))
    }

    /// Reads a rollout with its plan, release and sites from SQLite.
    async fn read_rollout(&self, id: &str) -> Result<Loaded, EngineError> {
        let record = self.rollout_record(id).await?;
        let plan = self.plan(&record)?;
        let release_id = record.release_id.clone();
        let release = self
            .db
            .run(move |s| s.release(&release_id))
            .await?
            .ok_or_else(|| EngineError::ReleaseMissing {
                rollout: id.to_string(),
                release: record.release_id.clone(),
            })?;
        let rid = id.to_string();
        let sites = self.db.run(move |s| s.rollout_sites(&rid)).await?;
        Ok(Loaded {
            record,
            plan,
            release,
            sites,
            views: Default::default(),
        })
    }

    /// Saves the rollout's record with `decisions`, in one transaction: whoever reads
    /// the new status also finds the decision that set it.
    async fn save_rollout(
        &self,
        record: &RolloutRecord,
        decisions: Vec<(String, Option<u32>, String)>,
        now: Timestamp,
    ) -> Result<(), EngineError> {
        let r = record.clone();
        let records = self.decision_records(&record.id, decisions, now);
        self.db.run(move |s| s.update_rollout(&r, &records)).await?;
        self.facts.apply(&record.id, Update::Record(record.clone()));
        Ok(())
    }

    async fn record_decisions(
        &self,
        rollout_id: &str,
        decisions: Vec<(String, Option<u32>, String)>,
        now: Timestamp,
    ) -> Result<(), EngineError> {
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
}

/// Everything known about one rollout, loaded for a tick or an action.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub record: RolloutRecord,
    pub plan: Arc<RolloutPlan>,
    pub release: ReleaseRecord,
    pub sites: Vec<RolloutSiteRecord>,
    /// The controller's view of these sites, kept up to date ([`view`]); not copied
    /// with the rest.
    pub views: view::KeptView,
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
                analysis: Vec::new(),
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
        attempt: s.attempts,
        retry_at: s.retry_at,
        bundle_until: s.bundle_until,
        rollback_assigned: s.rollback_sequence.is_some(),
    }
}
