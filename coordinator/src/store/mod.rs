//! Storage behind one trait: the SQLite file of a single coordinator ([`sqlite`]) or a
//! PostgreSQL database ([`postgres`]), chosen by `[storage] backend` ([`open_configured`]);
//! [`migrate`] moves a file's state into PostgreSQL.
//!
//! [`Store`] is a *synchronous* trait: every call may block on disk, so async code calls it
//! only through [`Db::run`], which moves the call onto tokio's blocking pool. A method
//! returns only after its transaction committed: an `Ok` is an acknowledged, durable write.
//! The store never decides policy (who may do what, gates, leases): it keeps facts.

pub mod boxes;
pub mod fence;
pub mod fold;
pub mod migrate;
pub mod postgres;
pub mod read;
pub mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;

use fleetwave_shared::Envelope;
use fleetwave_shared::protocol::operator::{OperatorRole, RolloutStatus, SiteState};
use fleetwave_shared::protocol::{Event, EventBody, Phase};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use postgres::{PgOptions, PgStore};
pub use sqlite::SqliteStore;

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, SQL, constraint...): its own error, kept as the source.
    #[error("database error: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync + 'static>),
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// An enrollment named a site that is already enrolled, with a token that may not
    /// replace its device key (not bound to it, or issued before its current key).
    #[error("site {0} is already enrolled")]
    SiteExists(String),
    /// An enrollment named a box its site has already, with a token that may not replace
    /// that box's device key (not a rekey token of the site, or issued before the box's
    /// current key).
    #[error("box {box_id} of site {site_id} is already enrolled")]
    BoxExists { site_id: String, box_id: String },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database task failed: {0}")]
    Task(String),
    /// A write of the wave controller carried a fencing token that is no longer the
    /// leadership's: another replica took over (see [`fence`]).
    #[error("{0}")]
    Fenced(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A site as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteRecord {
    pub id: String,
    /// Device public key, 64 lowercase hex.
    pub device_key: String,
    pub labels: BTreeMap<String, String>,
    pub state: SiteState,
    pub agent_version: String,
    pub enrolled_at: Timestamp,
    pub last_seen: Option<Timestamp>,
    /// What the agent last said it runs, per release stream.
    pub installed: BTreeMap<String, InstalledRelease>,
    pub healthy: Option<bool>,
    pub health_at: Option<Timestamp>,
    pub deferred_until: Option<Timestamp>,
}

/// A site's id, state and device key ([`Store::site_keys`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteKey {
    pub id: String,
    pub state: SiteState,
    /// Device public key, 64 lowercase hex.
    pub device_key: String,
}

/// A site's id, state, labels and what it runs of one stream ([`Store::site_labels`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SiteLabels {
    pub id: String,
    pub state: SiteState,
    pub labels: BTreeMap<String, String>,
    /// What the agent last said it runs of the stream asked for (None: nothing, or no
    /// stream asked for).
    pub installed: Option<InstalledRelease>,
}

impl SiteLabels {
    /// From the columns as stored: `labels` and `installed` are JSON objects; only the
    /// entry of `stream` is kept of `installed`.
    pub fn from_columns(
        id: String,
        state: &str,
        labels: &str,
        installed: &str,
        stream: Option<&str>,
    ) -> StoreResult<SiteLabels> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("site {id}: {what}: {e}"))
        };
        let installed = match stream {
            Some(stream) => serde_json::from_str::<BTreeMap<String, InstalledRelease>>(installed)
                .map_err(|e| corrupt("installed", &e))?
                .remove(stream),
            None => None,
        };
        Ok(SiteLabels {
            state: SiteState::parse(state).ok_or_else(|| corrupt("state", &state))?,
            labels: serde_json::from_str(labels).map_err(|e| corrupt("labels", &e))?,
            installed,
            id,
        })
    }
}

/// A channel (`channels`): the release that the sites a stream and selector name should
/// run. See [`crate::engine::channels`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelRecord {
    pub name: String,
    /// The release stream (a release's `name`).
    pub stream: String,
    pub selector: crate::plan::Selector,
    /// None: no release yet, nothing converges.
    pub release_id: Option<String>,
    /// At most this many of the channel's sites install at once.
    pub max_concurrent: u32,
    /// Failures tolerated before the channel's convergence pauses.
    pub failure_budget: u32,
    pub window: Option<fleetwave_shared::window::Window>,
    /// Who or what set the release last (an operator, or `rollout <id>`), when and why.
    pub set_by: String,
    pub set_at: Timestamp,
    pub set_reason: String,
    pub created_at: Timestamp,
    pub created_by: String,
}

/// An active site that does not run a given version of a stream (or says nothing of it),
/// as [`Store::sites_off_version`] finds it.
#[derive(Debug, Clone, PartialEq)]
pub struct OffVersionSite {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    /// The version the site last said it runs in the stream (None: none).
    pub version: Option<String>,
    pub last_seen: Option<Timestamp>,
    pub deferred_until: Option<Timestamp>,
    /// The active rollout the site belongs to, if any.
    pub rollout_id: Option<String>,
}

/// An operator's hold on a site (`site_holds`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteHold {
    pub site_id: String,
    pub reason: String,
    pub held_by: String,
    pub held_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledRelease {
    pub release_id: Option<String>,
    pub version: Option<String>,
    pub previous_release_id: Option<String>,
    pub at: Timestamp,
}

/// Which sites to list.
#[derive(Debug, Clone, Default)]
pub struct SiteFilter {
    /// Every `key=value` must match.
    pub labels: BTreeMap<String, String>,
    pub state: Option<SiteState>,
    /// Sites that run this version (in any stream).
    pub version: Option<String>,
    /// Page after this site id.
    pub after: Option<String>,
    pub limit: usize,
}

/// A site that an import registers with its device key: active at once, enrolled at
/// `at`, what it runs unknown until its agent says (see [`Store::import_sites`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedSite {
    pub id: String,
    /// Device public key, 64 lowercase hex.
    pub device_key: String,
    pub labels: BTreeMap<String, String>,
    pub at: Timestamp,
}

/// An enrollment token that an import creates: its record and the hash of its secret.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedToken {
    pub token_hash: String,
    pub record: EnrollmentTokenRecord,
}

/// The box id of a site's box when its agent names none: a one-box site's only box.
pub const DEFAULT_BOX: &str = "main";

/// One machine of a site, with its own agent and device key. A site's first box is kept
/// in its `sites` row (so a one-box site is one row, as before boxes); the boxes that
/// joined later in `site_boxes`.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteBox {
    pub site_id: String,
    pub box_id: String,
    /// Role label (`server`, `agent`, ...); empty when the box has none.
    pub role: String,
    /// Device public key, 64 lowercase hex.
    pub device_key: String,
    pub agent_version: String,
    pub enrolled_at: Timestamp,
    /// Whether this is the box the site was enrolled with (its key is the site's
    /// `device_key`, which air-gapped report files are verified against).
    pub first: bool,
}

/// What an enrollment changes, checked and applied in one transaction.
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub token_hash: String,
    pub site_id: String,
    /// The box of the site that enrolls ([`DEFAULT_BOX`] for a one-box site).
    pub box_id: String,
    /// The box's role label (`server`, `agent`, ...; empty: none).
    pub role: String,
    pub device_key: String,
    pub agent_version: String,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentTokenRecord {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub site_id: Option<String>,
    pub expires_at: Timestamp,
    pub uses_total: u32,
    pub uses_left: u32,
    pub revoked: bool,
    pub created_at: Timestamp,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorTokenRecord {
    pub id: String,
    pub name: String,
    pub role: OperatorRole,
    pub created_at: Timestamp,
    pub created_by: String,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseRecord {
    pub id: String,
    /// `Envelope::digest()` of the envelope as published.
    pub digest: String,
    pub name: String,
    pub version: String,
    pub kind: String,
    pub counter: u64,
    pub envelope: Envelope,
    pub published_at: Timestamp,
    pub published_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRecord {
    pub sha256: String,
    pub length: u64,
    pub uploaded_at: Timestamp,
    pub uploaded_by: String,
}

/// Per-wave bookkeeping of a rollout, stored with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveRecord {
    pub opened_at: Option<Timestamp>,
    pub approved_at: Option<Timestamp>,
    pub approved_by: Option<String>,
    pub passed_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRecord {
    pub id: String,
    pub release_id: String,
    /// The plan as the operator wrote it.
    pub plan_source: String,
    /// `toml` or `json`.
    pub plan_format: String,
    pub status: RolloutStatus,
    pub waves: Vec<WaveRecord>,
    pub created_at: Timestamp,
    pub created_by: String,
    pub updated_at: Timestamp,
    /// Why the rollout is halted, aborted or complete.
    pub status_reason: Option<String>,
}

/// One site's facts within one rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSiteRecord {
    pub rollout_id: String,
    pub site_id: String,
    pub wave: u32,
    pub skipped: bool,
    /// When the site's assignment for this rollout was issued.
    pub assigned_at: Option<Timestamp>,
    pub leased_at: Option<Timestamp>,
    pub phase: Option<Phase>,
    pub phase_at: Option<Timestamp>,
    pub detail: Option<String>,
    /// Latest time the site reported the target release committed (or installed).
    pub committed_at: Option<Timestamp>,
    /// Latest time the install of the target release failed.
    pub failed_at: Option<Timestamp>,
    /// The failure as the agent described it.
    pub failure: Option<String>,
    /// The site rolled the target release back by itself.
    pub rolled_back: bool,
    /// Latest healthy heartbeat.
    pub last_healthy_at: Option<Timestamp>,
    /// First unhealthy heartbeat at or after `committed_at`.
    pub first_unhealthy_after_commit_at: Option<Timestamp>,
    /// Latest event of any kind.
    pub last_report_at: Option<Timestamp>,
    /// A rollback assignment was issued (sequence).
    pub rollback_sequence: Option<u64>,
    /// The release the site ran before this rollout, if known.
    pub previous_release_id: Option<String>,
    /// The site is deferred (by its staff) until then (from the site's own record).
    pub deferred_until: Option<Timestamp>,
    /// Which attempt at the release the site is on: 1 for the first install, one more
    /// for each retry.
    pub attempts: u32,
    /// When the site's next automatic attempt starts, once scheduled.
    pub retry_at: Option<Timestamp>,
    /// When the assignment carried to the site in a bundle expires (None: not served by
    /// bundle); the gate counts its silence from then.
    pub bundle_until: Option<Timestamp>,
}

impl Default for RolloutSiteRecord {
    fn default() -> Self {
        RolloutSiteRecord {
            rollout_id: String::new(),
            site_id: String::new(),
            wave: 0,
            skipped: false,
            assigned_at: None,
            leased_at: None,
            phase: None,
            phase_at: None,
            detail: None,
            committed_at: None,
            failed_at: None,
            failure: None,
            rolled_back: false,
            last_healthy_at: None,
            first_unhealthy_after_commit_at: None,
            last_report_at: None,
            rollback_sequence: None,
            previous_release_id: None,
            deferred_until: None,
            attempts: 1,
            retry_at: None,
            bundle_until: None,
        }
    }
}

/// An assignment to sign: the store gives it the site's next sequence.
#[derive(Debug, Clone)]
pub struct AssignmentDraft {
    pub site_id: String,
    pub rollout_id: String,
    pub wave: u32,
    pub release_id: String,
    pub release_digest: String,
    pub rollback: bool,
    pub not_before: Timestamp,
    pub issued_at: Timestamp,
    pub expires: Timestamp,
    pub window: Option<fleetwave_shared::window::Window>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AssignmentRecord {
    pub site_id: String,
    pub sequence: u64,
    pub rollout_id: String,
    pub wave: u32,
    pub release_id: String,
    pub release_digest: String,
    pub rollback: bool,
    pub envelope: Envelope,
    pub issued_at: Timestamp,
    pub expires: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub id: String,
    pub site_id: String,
    pub rollout_id: String,
    pub wave: u32,
    pub granted_at: Timestamp,
    pub expires_at: Timestamp,
}

/// Whether a box may take its lease, asked of the site's box facts (by box id) as the
/// granting transaction reads them ([`Store::lease_box`]).
pub type BoxLeaseCheck<'a> = dyn Fn(&[(String, boxes::BoxFacts)]) -> bool + Sync + 'a;

/// Active leases a lease decision counts, read at one moment: the wave's other sites',
/// and for a compartment its member sites and their active leases (other than the
/// asking site's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseCounts {
    pub wave_active: u32,
    /// (member sites, active leases) of the compartment, when the wave has one.
    pub compartment: Option<(u32, u32)>,
}

/// A change another coordinator replica committed to rows this process keeps in memory
/// (PostgreSQL notifications; see `store/postgres/schema_notify.sql`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Change {
    /// The site's state or device key changed, or it was enrolled.
    Site(String),
    /// The site's boxes changed.
    Boxes(String),
    /// The site got an assignment.
    Assignment(String),
    /// The rollout's record changed.
    Rollout(String),
    /// The site's row in the rollout changed.
    Member { rollout_id: String, site_id: String },
    /// The stored freezes changed.
    Freezes,
}

/// Where a replica hears [`Change`]s (see [`Store::change_feed`]).
pub trait ChangeFeed: Send {
    /// Waits up to `wait` for the first change, then takes whatever else has arrived (at
    /// most `max`). An error means the connection broke: changes may have been missed,
    /// and the caller reloads what it keeps.
    fn next(&mut self, wait: std::time::Duration, max: usize) -> StoreResult<Vec<Change>>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRecord {
    pub id: i64,
    pub rollout_id: String,
    pub at: Timestamp,
    pub kind: String,
    pub wave: Option<u32>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: i64,
    pub at: Timestamp,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    pub remote: String,
}

/// A dashboard sign-in (its cookie's id is known to the store only as SHA-256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardSession {
    /// SHA-256 of the operator token it signed in with.
    pub token_hash: String,
    pub csrf: String,
    pub created_at: Timestamp,
    pub last_used: Timestamp,
}

/// A fleet freeze created through the API (the configuration file's are not stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreezeRecord {
    pub id: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub reason: String,
    pub created_by: String,
    pub created_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub ended_by: Option<String>,
}

/// A webhook endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    pub id: String,
    pub url: String,
    /// `whsec_...`: the signing secret.
    pub secret: String,
    /// The event types it receives ([`crate::webhooks::EventKind`] names).
    pub kinds: Vec<String>,
    /// `json` or `slack`.
    pub format: String,
    pub allow_insecure_http: bool,
    pub description: String,
    pub created_at: Timestamp,
    pub created_by: String,
}

/// A webhook endpoint's deliveries, counted by state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    pub pending: u64,
    pub delivered: u64,
    pub failed: u64,
}

/// One delivery (an event to one endpoint) as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// The `webhook-id`.
    pub id: String,
    pub endpoint_id: String,
    pub event_type: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub attempts: u32,
    pub created_at: Timestamp,
    pub next_attempt_at: Timestamp,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub finished_at: Option<Timestamp>,
}

/// A delivery due now, with what sending it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueDelivery {
    pub delivery: DeliveryRecord,
    pub url: String,
    pub secret: String,
    pub format: String,
    /// The stored JSON event.
    pub event_body: String,
}

/// One attempt to deliver, as the endpoint's delivery log shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub id: i64,
    pub endpoint_id: String,
    pub delivery_id: String,
    pub event_type: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub at: Timestamp,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
    /// `delivered`, `retrying` or `failed` (gave up).
    pub outcome: String,
}

/// A site found silent in a rollout (nothing heard for the wave's report deadline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSilence {
    pub rollout_id: String,
    pub release_id: String,
    pub wave: u32,
    pub site_id: String,
    /// Its last sign of life: the silence is counted from here (and known by it).
    pub since: Timestamp,
    /// When the silence was found.
    pub at: Timestamp,
    /// In words, e.g. `nothing heard for 12m (report deadline 10m)`.
    pub reason: String,
}

/// Outcome of one report batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportOutcome {
    pub accepted: u32,
    pub duplicates: u32,
    /// Rollouts whose facts changed (the controller should look at them now).
    pub rollouts_touched: Vec<String>,
    /// The rollout-site rows the batch changed, as committed (read back in the same
    /// transaction): what the engine's in-memory facts take over.
    pub facts: Vec<RolloutSiteRecord>,
}

/// The time a report event counts at in a site's facts: its own `at`, but never later
/// than `received_at`, when the coordinator received it. Nothing happens after it is
/// reported, so a later `at` is a clock running ahead (or a lie); since facts never go
/// backwards, an event dated in the future would hide every real event until that date
/// (a site's health frozen, a bake closed early). Every backend folds events at this time.
pub fn event_time(at: Timestamp, received_at: Timestamp) -> Timestamp {
    at.min(received_at)
}

/// The kind of a stored report: one per [`EventBody`] variant (its `kind` on the wire).
/// Backends store it with [`ReportKind::as_str`] and read it back with
/// [`ReportKind::parse`]; everywhere else it is this enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReportKind {
    Phase,
    Health,
    Deferral,
    Installed,
    Refusal,
}

impl ReportKind {
    /// Every kind (what retention walks).
    pub const ALL: [ReportKind; 5] = [
        ReportKind::Phase,
        ReportKind::Health,
        ReportKind::Deferral,
        ReportKind::Installed,
        ReportKind::Refusal,
    ];

    /// The kind of an event.
    pub fn of(body: &EventBody) -> ReportKind {
        match body {
            EventBody::Phase { .. } => ReportKind::Phase,
            EventBody::Health { .. } => ReportKind::Health,
            EventBody::Deferral { .. } => ReportKind::Deferral,
            EventBody::Installed { .. } => ReportKind::Installed,
            EventBody::Refusal { .. } => ReportKind::Refusal,
        }
    }

    /// The stored (and wire) name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Phase => "phase",
            ReportKind::Health => "health",
            ReportKind::Deferral => "deferral",
            ReportKind::Installed => "installed",
            ReportKind::Refusal => "refusal",
        }
    }

    pub fn parse(s: &str) -> Option<ReportKind> {
        ReportKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for ReportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One agent's report batch, as [`Store::apply_report_group`] takes it.
#[derive(Debug, Clone)]
pub struct ReportInput {
    pub site_id: String,
    /// The box that sent the batch, when its agent names one: in a site of several boxes
    /// its events fold into that box's facts ([`boxes::BoxFacts`]) and the site's rows are
    /// made from its boxes'. None: the site's facts, as for a one-box site.
    pub box_id: Option<String>,
    pub events: Vec<Event>,
    pub received_at: Timestamp,
}

/// Most release streams whose signals one site may have stored; minutes of further
/// streams are dropped and counted (`fleetwave_signal_minutes_total{outcome="dropped_streams"}`).
pub const MAX_SIGNAL_STREAMS_PER_SITE: usize = 8;

/// One site's value of one signal in one minute (schema v9), as the gate reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalSample {
    pub site_id: String,
    /// Start of the minute.
    pub minute: Timestamp,
    pub value: f64,
    /// The release the site ran in that minute, as its agent said.
    pub release_id: Option<String>,
}

/// What [`Store::put_signals`] did with a batch of minutes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignalsStored {
    /// Minutes stored (or stored again: a minute sent twice replaces itself).
    pub minutes: u32,
    /// Minutes dropped: their stream would have gone beyond
    /// [`MAX_SIGNAL_STREAMS_PER_SITE`] for the site.
    pub dropped_streams: u32,
}

/// Signs `drafts` with their `sequences` (same order), on every core when there are many:
/// a wave opening on thousands of sites signs them while its chunk's transaction is open,
/// so this is on the path to the first site hearing of it. The order of the result is the
/// order of the drafts.
pub fn sign_all(
    drafts: &[AssignmentDraft],
    sequences: &[u64],
    sign: &(dyn Fn(&AssignmentDraft, u64) -> Envelope + Sync),
) -> Vec<Envelope> {
    assert_eq!(drafts.len(), sequences.len(), "one sequence per draft");
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(drafts.len() / 64)
        .max(1);
    if threads == 1 {
        return drafts
            .iter()
            .zip(sequences)
            .map(|(d, &seq)| sign(d, seq))
            .collect();
    }
    let per = drafts.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = drafts
            .chunks(per)
            .zip(sequences.chunks(per))
            .map(|(ds, ss)| {
                scope.spawn(move || {
                    ds.iter()
                        .zip(ss)
                        .map(|(d, &seq)| sign(d, seq))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().expect("signing does not panic"))
            .collect()
    })
}

/// What a claim of the wave controller's leadership found ([`Store::claim_leadership`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The claimant leads, with this fencing token.
    Leader { token: i64 },
    /// Another replica leads, with this token, for this long yet.
    Follower {
        holder: String,
        token: i64,
        expires_in: std::time::Duration,
    },
}

/// All of fleetwave's persistent state. Every method is blocking; call through [`Db::run`].
pub trait Store: Send + Sync + 'static {
    /// Cheap read that proves the database answers (for `/readyz`).
    fn ping(&self) -> StoreResult<()>;

    /// Claims or renews the wave controller's leadership for `holder`, for `lease` from
    /// now by the database's clock: granted when nobody holds it, its holder's lease has
    /// expired (a takeover: the token goes up by one) or `holder` holds it already (a
    /// renewal: same token). The default is for a backend only one process opens
    /// (SQLite): the leadership is always held, with token 0, and nothing is fenced.
    fn claim_leadership(&self, holder: &str, lease: std::time::Duration) -> StoreResult<Claim> {
        let _ = (holder, lease);
        Ok(Claim::Leader { token: 0 })
    }

    /// Ends `holder`'s lease now, if it holds it (a replica shutting down): another
    /// replica takes over at its next claim instead of after the lease. The default (one
    /// process) has nothing to end.
    fn resign_leadership(&self, holder: &str) -> StoreResult<()> {
        let _ = holder;
        Ok(())
    }

    /// Whether other coordinator processes may write to this store at the same time
    /// (PostgreSQL): their changes reach this process's memory through
    /// [`Store::change_feed`], and lease limits are counted in the granting transaction
    /// ([`Store::grant_lease_counted`]). SQLite is one process: false.
    fn shared_by_replicas(&self) -> bool {
        false
    }

    /// At most this many requests go into one group-committed transaction (report
    /// batches, lease grants). No bound of its own on SQLite (one writer); PostgreSQL keeps
    /// groups small, see [`crate::store::postgres::MAX_GROUP_ITEMS`].
    fn max_group_items(&self) -> usize {
        usize::MAX
    }

    /// A connection that hears the changes other replicas commit (see [`Change`]); None
    /// for a backend only one process opens. Blocking: run it on a thread of its own.
    fn change_feed(&self) -> StoreResult<Option<Box<dyn ChangeFeed>>> {
        Ok(None)
    }

    /// Grants `lease` if `allow` accepts the counts of active leases read in the same
    /// transaction ([`LeaseCounts`] for the lease's wave and `compartment`), so that two
    /// replicas granting at once never both take a wave's last place: Ok(Ok(())) when
    /// granted, Ok(Err(counts)) when `allow` refused. The default reads, decides and
    /// writes one after the other, which is enough for a backend only one process opens
    /// (the engine's lock already serializes its grants).
    fn grant_lease_counted(
        &self,
        lease: &LeaseRecord,
        compartment: Option<(&str, &str)>,
        allow: &(dyn Fn(&LeaseCounts) -> bool + Sync),
    ) -> StoreResult<Result<(), LeaseCounts>> {
        let now = lease.granted_at;
        let wave_active = self
            .active_leases(&lease.rollout_id, now)?
            .iter()
            .filter(|x| x.site_id != lease.site_id && x.wave == lease.wave)
            .count() as u32;
        let compartment = match compartment {
            Some((label, value)) => Some(self.compartment_counts(
                &lease.rollout_id,
                label,
                value,
                &lease.site_id,
                now,
            )?),
            None => None,
        };
        let counts = LeaseCounts {
            wave_active,
            compartment,
        };
        if !allow(&counts) {
            return Ok(Err(counts));
        }
        self.grant_leases(std::slice::from_ref(lease))?
            .pop()
            .unwrap_or(Ok(()))?;
        Ok(Ok(()))
    }

    // Roots
    fn roots(&self) -> StoreResult<Vec<Envelope>>;
    fn add_root(&self, version: u64, envelope: &Envelope, at: Timestamp) -> StoreResult<()>;

    // Operator tokens
    fn create_operator_token(
        &self,
        token_hash: &str,
        record: &OperatorTokenRecord,
    ) -> StoreResult<()>;
    fn operator_token_by_hash(&self, token_hash: &str) -> StoreResult<Option<OperatorTokenRecord>>;
    fn list_operator_tokens(&self) -> StoreResult<Vec<OperatorTokenRecord>>;
    fn revoke_operator_token(&self, id: &str) -> StoreResult<()>;

    // Enrollment
    fn create_enrollment_token(
        &self,
        token_hash: &str,
        record: &EnrollmentTokenRecord,
    ) -> StoreResult<()>;
    fn list_enrollment_tokens(&self) -> StoreResult<Vec<EnrollmentTokenRecord>>;
    fn revoke_enrollment_token(&self, id: &str) -> StoreResult<()>;
    /// Looks the token up (for its fixed site id and labels) without using it.
    fn enrollment_token_by_hash(
        &self,
        token_hash: &str,
    ) -> StoreResult<Option<EnrollmentTokenRecord>>;
    /// Uses one of the token's uses and creates the site, adds a box to it or re-keys one
    /// of its boxes, in one transaction. Refuses (Conflict) a token that is used up,
    /// revoked or expired at `enrollment.at`, and a decommissioned site. A token not bound
    /// to an existing site neither adds a box to it nor re-keys one (SiteExists): a batch
    /// token never takes over an enrolled site. A box the site has already is re-keyed only
    /// with a token bound to the site and issued no earlier than that box's enrollment
    /// (what a rekey issues), otherwise BoxExists. A refused enrollment keeps the token's
    /// use.
    fn enroll(&self, enrollment: &Enrollment) -> StoreResult<SiteRecord>;
    /// The site's boxes, its first box first, then by box id (empty: no such site).
    fn site_boxes(&self, site_id: &str) -> StoreResult<Vec<SiteBox>>;
    /// The boxes of every site that has more than one box (the poll cache's session keys).
    fn boxes_of_multi_box_sites(&self) -> StoreResult<Vec<SiteBox>>;
    /// The facts of the boxes of a site in a rollout (the boxes that have any), by box id.
    fn rollout_boxes(
        &self,
        rollout_id: &str,
        site_id: &str,
    ) -> StoreResult<Vec<(String, boxes::BoxFacts)>>;
    /// Records that box `box_id` of a site holds a lease for the rollout from `at` until
    /// `until` (a grant or a renewal), if `allow` accepts the site's box facts read in the
    /// same transaction (false: refused, nothing written): two boxes of one site asking
    /// two replicas at once never both take the site's last place.
    fn lease_box(
        &self,
        rollout_id: &str,
        site_id: &str,
        box_id: &str,
        at: Timestamp,
        until: Timestamp,
        allow: &BoxLeaseCheck<'_>,
    ) -> StoreResult<bool>;
    /// Records a session nonce; false if the site already used it (a replay).
    fn record_session_nonce(
        &self,
        site_id: &str,
        nonce: &str,
        expires_at: Timestamp,
    ) -> StoreResult<bool>;

    // Site imports
    /// Which of `ids` are sites already (enrolled or pre-registered, in any state).
    fn existing_sites(&self, ids: &[String]) -> StoreResult<Vec<String>>;
    /// One chunk of an import, in one transaction: the sites with device keys and the
    /// enrollment tokens of the sites without. Refuses (SiteExists, nothing of the chunk
    /// stored) when one of the chunk's sites exists already.
    fn import_sites(&self, sites: &[ImportedSite], tokens: &[ImportedToken]) -> StoreResult<()>;
    /// Removes what earlier chunks of a failed import stored: its sites (with their
    /// indexed labels and session nonces) and its tokens, in one transaction.
    fn undo_site_import(&self, site_ids: &[String], token_ids: &[String]) -> StoreResult<()>;

    // Sites
    fn site(&self, id: &str) -> StoreResult<Option<SiteRecord>>;
    fn list_sites(&self, filter: &SiteFilter) -> StoreResult<Vec<SiteRecord>>;
    /// Every site's id, state and device key, and nothing else (the poll cache's start:
    /// at a million sites, whole records with their labels and versions cost gigabytes).
    fn site_keys(&self) -> StoreResult<Vec<SiteKey>>;
    /// Every site's id, state and labels, and what it runs of release stream `stream` if
    /// one is named: what wave membership reads. Placing a million sites from whole
    /// records took about 2.5 GB more for the read alone.
    fn site_labels(&self, stream: Option<&str>) -> StoreResult<Vec<SiteLabels>>;
    fn set_site_labels(&self, id: &str, labels: &BTreeMap<String, String>) -> StoreResult<()>;
    fn set_site_state(&self, id: &str, state: SiteState) -> StoreResult<()>;
    /// Holds a site (replacing an earlier hold's reason) or, with `None`, lifts its hold.
    /// Returns whether the site was held before.
    fn set_site_hold(&self, site_id: &str, hold: Option<&SiteHold>) -> StoreResult<bool>;
    /// Every held site's hold, by site id.
    fn site_holds(&self) -> StoreResult<BTreeMap<String, SiteHold>>;

    // Channels
    fn channels(&self) -> StoreResult<Vec<ChannelRecord>>;
    /// Creates or replaces a channel, with its audit entry, in one transaction.
    fn put_channel(&self, channel: &ChannelRecord, audit: &AuditRecord) -> StoreResult<()>;
    /// Deletes a channel with its audit entry; NotFound when there is none.
    fn delete_channel(&self, name: &str, audit: &AuditRecord) -> StoreResult<()>;
    /// Active sites that do not run `version` in `stream` (or say nothing of it), by id,
    /// after `after`, at most `limit`. With `free_only`, sites in an active rollout are
    /// left out. Walks every active site.
    fn sites_off_version(
        &self,
        stream: &str,
        version: &str,
        free_only: bool,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<OffVersionSite>>;
    /// The active sites that run another version of `stream` or say nothing of what they
    /// run at all (with `free_only`, those in no active rollout), by id, through indexes
    /// only: what a convergence pass reads every few seconds. It misses a site that
    /// reports other streams but none of `stream` (or a release without a version), which
    /// [`Store::sites_off_version`] finds.
    fn sites_off_version_indexed(
        &self,
        stream: &str,
        version: &str,
        free_only: bool,
    ) -> StoreResult<Vec<OffVersionSite>>;
    fn touch_sites(&self, seen: &[(String, Timestamp)]) -> StoreResult<()>;
    fn count_sites_by_state(&self) -> StoreResult<Vec<(SiteState, u64)>>;
    /// Sites whose newest reported install phase is `rollback_failed`: their agent gave up
    /// rolling back and the box needs an operator.
    fn count_sites_rollback_failed(&self) -> StoreResult<u64>;
    /// Active sites that have not polled since each of `cutoffs` (or never did), in the
    /// order given.
    fn count_sites_not_seen_since(&self, cutoffs: &[Timestamp]) -> StoreResult<Vec<u64>>;

    // Releases and artifacts
    /// Stores a verified release; refuses (Conflict) a counter not above the stream's
    /// highest and a duplicate id.
    fn publish_release(&self, record: &ReleaseRecord) -> StoreResult<()>;
    fn release(&self, id: &str) -> StoreResult<Option<ReleaseRecord>>;
    fn list_releases(&self) -> StoreResult<Vec<ReleaseRecord>>;
    fn add_artifact(&self, record: &ArtifactRecord) -> StoreResult<()>;
    fn artifact(&self, sha256: &str) -> StoreResult<Option<ArtifactRecord>>;

    // Rollouts
    /// Creates the rollout and its member sites; refuses (Conflict) sites that already
    /// belong to an active rollout.
    fn create_rollout(
        &self,
        rollout: &RolloutRecord,
        members: &[RolloutSiteRecord],
    ) -> StoreResult<()>;
    fn rollout(&self, id: &str) -> StoreResult<Option<RolloutRecord>>;
    fn list_rollouts(&self) -> StoreResult<Vec<RolloutRecord>>;
    /// Saves the rollout's record and adds `decisions` to its timeline in one
    /// transaction, so whoever sees the new status also sees the decision that set it.
    fn update_rollout(
        &self,
        rollout: &RolloutRecord,
        decisions: &[DecisionRecord],
    ) -> StoreResult<()>;
    fn rollout_sites(&self, rollout_id: &str) -> StoreResult<Vec<RolloutSiteRecord>>;
    /// One site's row of a rollout (None: the site is not a member).
    fn rollout_site(
        &self,
        rollout_id: &str,
        site_id: &str,
    ) -> StoreResult<Option<RolloutSiteRecord>>;
    /// The rows of these (rollout, site) pairs that exist, in any order (a replica
    /// re-reading the members other replicas changed). One read at a time by default.
    fn rollout_site_rows(&self, keys: &[(String, String)]) -> StoreResult<Vec<RolloutSiteRecord>> {
        let mut out = Vec::with_capacity(keys.len());
        for (rollout_id, site_id) in keys {
            out.extend(self.rollout_site(rollout_id, site_id)?);
        }
        Ok(out)
    }
    /// Adds late joiners; sites already in an active rollout are left out (returns the added).
    fn add_rollout_sites(&self, members: &[RolloutSiteRecord]) -> StoreResult<Vec<String>>;
    fn set_rollout_site_skipped(&self, rollout_id: &str, site_id: &str) -> StoreResult<()>;
    /// Starts a new attempt for `site_ids` of a rollout: their install facts (phase,
    /// lease, assignment, commit, failure, self-rollback, unhealthy-after-commit) and any
    /// scheduled retry are cleared, their leases dropped and their `attempts` counted up
    /// by one, all in one transaction, so the next pass signs a new assignment and the
    /// gate judges the new attempt alone. Health and last-report times stay. The boxes of
    /// a site of several boxes start afresh the same way ([`boxes::BoxFacts::for_new_attempt`]).
    /// Returns each site's new attempt number, in the order given.
    fn reset_rollout_sites_for_retry(
        &self,
        rollout_id: &str,
        site_ids: &[String],
    ) -> StoreResult<Vec<u32>>;
    /// Marks `sites` of a rollout as served by bundle until `until`.
    fn serve_by_bundle(
        &self,
        rollout_id: &str,
        sites: &[String],
        until: Timestamp,
    ) -> StoreResult<()>;
    /// Records when the next automatic attempt of each `(site, time)` of a rollout starts.
    fn schedule_rollout_site_retries(
        &self,
        rollout_id: &str,
        retries: &[(String, Timestamp)],
    ) -> StoreResult<()>;
    /// Moves members to other waves (`(site id, wave)`), only those with no assignment and
    /// no lease: a site that was assigned or leased keeps its wave. Returns the moved.
    fn set_rollout_site_waves(
        &self,
        rollout_id: &str,
        moves: &[(String, u32)],
    ) -> StoreResult<Vec<String>>;
    /// The active (created, running, paused or halted) rollout a site belongs to.
    fn active_rollout_of_site(&self, site_id: &str) -> StoreResult<Option<String>>;

    // Assignments
    /// Gives each draft the site's next sequence, signs it with `sign` and stores it, all in
    /// one transaction; also records `assigned_at` (or the rollback sequence) for the
    /// rollout's site.
    fn issue_assignments(
        &self,
        drafts: &[AssignmentDraft],
        sign: &(dyn Fn(&AssignmentDraft, u64) -> Envelope + Sync),
    ) -> StoreResult<Vec<AssignmentRecord>>;
    /// Each site's newest assignment.
    fn current_assignments(&self) -> StoreResult<Vec<AssignmentRecord>> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.current_assignments_after(after.as_deref(), 10_000)?;
            let Some(last) = page.last() else {
                return Ok(all);
            };
            after = Some(last.site_id.clone());
            all.extend(page);
        }
    }
    /// [`Store::current_assignments`] a page at a time: the newest assignment of each of
    /// the first `limit` sites (by id) after `after`, in site order.
    fn current_assignments_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<AssignmentRecord>>;
    /// One site's newest assignment.
    fn current_assignment_of(&self, site_id: &str) -> StoreResult<Option<AssignmentRecord>>;

    // Leases
    fn active_leases(&self, rollout_id: &str, now: Timestamp) -> StoreResult<Vec<LeaseRecord>>;
    /// Stores leases in one transaction, each replacing the site's earlier lease for the
    /// same rollout; one result per lease (a failing lease is undone alone).
    fn grant_leases(&self, leases: &[LeaseRecord]) -> StoreResult<Vec<StoreResult<()>>>;
    /// A compartment of a rollout (sites whose `label` has `value`; `""`: sites without
    /// it): how many member sites it has, and how many active leases other than
    /// `except_site`'s.
    fn compartment_counts(
        &self,
        rollout_id: &str,
        label: &str,
        value: &str,
        except_site: &str,
        now: Timestamp,
    ) -> StoreResult<(u32, u32)>;

    // Reports
    /// Applies each new event once (by site and event id) and updates the facts, in one
    /// transaction. Facts follow the events' times ([`event_time`]: the `at`, never later
    /// than `received_at`) and never go backwards. The event is stored as sent.
    fn apply_reports(
        &self,
        site_id: &str,
        events: &[Event],
        received_at: Timestamp,
    ) -> StoreResult<ReportOutcome> {
        let input = ReportInput {
            site_id: site_id.to_string(),
            box_id: None,
            events: events.to_vec(),
            received_at,
        };
        self.apply_report_group(std::slice::from_ref(&input))?
            .pop()
            .unwrap_or_else(|| Err(StoreError::Task("no outcome for the report batch".into())))
    }
    /// Group commit: applies several sites' batches in one transaction, each batch as
    /// [`Store::apply_reports`] would. A batch that fails is undone on its own (the others
    /// still apply) and answered with its error, in the order of `batches`. `Err` means
    /// the transaction itself failed and nothing was applied.
    fn apply_report_group(
        &self,
        batches: &[ReportInput],
    ) -> StoreResult<Vec<StoreResult<ReportOutcome>>>;

    /// Deletes at most `limit` stored reports of `kind` received before `before`, oldest
    /// first, in one transaction; returns how many. Applying a report again later is
    /// harmless: every report's effect is guarded by its time (see [`crate::retention`]).
    fn prune_reports(
        &self,
        kind: ReportKind,
        before: Timestamp,
        limit: usize,
    ) -> StoreResult<usize>;

    // Golden signals (schema v9)
    /// Stores a site's signal minutes (already checked against the per-batch bounds), by
    /// (site, stream, signal, minute): a minute stored again replaces itself.
    fn put_signals(
        &self,
        site_id: &str,
        minutes: &[fleetwave_shared::protocol::signals::SignalMinute],
        received_at: Timestamp,
    ) -> StoreResult<SignalsStored>;
    /// The latest minute of each of a site's streams, with when it arrived (by stream).
    fn latest_signals(
        &self,
        site_id: &str,
    ) -> StoreResult<Vec<(fleetwave_shared::protocol::signals::SignalMinute, Timestamp)>>;
    /// The values of one signal of one stream of `sites` for the minutes in `[from, to)`
    /// (read site by site through the table's key).
    fn signal_samples(
        &self,
        sites: &[String],
        stream: &str,
        signal: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> StoreResult<Vec<SignalSample>>;
    /// [`Store::signal_samples`] of several signals of one stream at once: one list per
    /// signal of `signals`, in that order. The gate reads its ten signals of 400 sites
    /// every minute; a backend may read all the signals of a site in one statement (the
    /// SQLite store does); this default asks signal by signal.
    fn signals_samples(
        &self,
        sites: &[String],
        stream: &str,
        signals: &[String],
        from: Timestamp,
        to: Timestamp,
    ) -> StoreResult<Vec<Vec<SignalSample>>> {
        signals
            .iter()
            .map(|signal| self.signal_samples(sites, stream, signal, from, to))
            .collect()
    }
    /// Deletes at most `limit` signal values of minutes before `before`, oldest first, in
    /// one transaction; returns how many (latest minutes that old go when the values are
    /// done).
    fn prune_signals(&self, before: Timestamp, limit: usize) -> StoreResult<usize>;

    // Decisions and audit
    fn add_decisions(&self, decisions: &[DecisionRecord]) -> StoreResult<()>;
    fn decisions(&self, rollout_id: &str) -> StoreResult<Vec<DecisionRecord>>;
    fn audit(&self, entry: &AuditRecord) -> StoreResult<()>;
    /// Audit entries with id below `before` (newest first), at most `limit`.
    fn list_audit(&self, before: Option<i64>, limit: usize) -> StoreResult<Vec<AuditRecord>>;
    /// Audit entries about `target` (e.g. a rollout id), oldest first, at most `limit`.
    fn audit_of(&self, target: &str, limit: usize) -> StoreResult<Vec<AuditRecord>>;

    // Dashboard sessions
    /// Stores a new session under `id_hash` and deletes those created before
    /// `created_before` or last used before `used_before` (expired).
    fn open_dashboard_session(
        &self,
        id_hash: &str,
        session: &DashboardSession,
        created_before: Timestamp,
        used_before: Timestamp,
    ) -> StoreResult<()>;
    fn dashboard_session(&self, id_hash: &str) -> StoreResult<Option<DashboardSession>>;
    /// Records a use of the session at `at` (never moves `last_used` back).
    fn touch_dashboard_session(&self, id_hash: &str, at: Timestamp) -> StoreResult<()>;
    /// Ends a session (nothing when there is none).
    fn close_dashboard_session(&self, id_hash: &str) -> StoreResult<()>;

    // Freezes
    fn create_freeze(&self, freeze: &FreezeRecord) -> StoreResult<()>;
    /// Freezes not ended early whose end is after `now` (in force or to come), earliest
    /// start first.
    fn open_freezes(&self, now: Timestamp) -> StoreResult<Vec<FreezeRecord>>;
    /// Ends a freeze at `at`, recording `by`; NotFound without one, Conflict when it was
    /// already ended or is over. Returns it as ended.
    fn end_freeze(&self, id: &str, at: Timestamp, by: &str) -> StoreResult<FreezeRecord>;

    // Webhooks
    /// Stores an endpoint and its audit entry in one transaction.
    fn create_webhook(&self, webhook: &WebhookRecord, audit: &AuditRecord) -> StoreResult<()>;
    fn webhooks(&self) -> StoreResult<Vec<WebhookRecord>>;
    fn webhook(&self, id: &str) -> StoreResult<Option<WebhookRecord>>;
    /// Deletes an endpoint with its deliveries and log, and stores the audit entry, in one
    /// transaction; NotFound without one.
    fn delete_webhook(&self, id: &str, audit: &AuditRecord) -> StoreResult<()>;
    /// Stores `event` for the one endpoint `id` (whatever its filter) with its audit entry;
    /// returns the delivery's `webhook-id`.
    fn enqueue_webhook_test(
        &self,
        id: &str,
        event: &crate::webhooks::WebhookEvent,
        audit: &AuditRecord,
    ) -> StoreResult<String>;
    /// Records silences not recorded before (by rollout, site and `since`), each with its
    /// `site.silent` event in the outbox, in one transaction; returns how many were new.
    fn record_site_silences(&self, silences: &[SiteSilence]) -> StoreResult<usize>;
    /// Whether some endpoint receives events of type `kind`.
    fn webhook_subscribed(&self, kind: &str) -> StoreResult<bool>;
    /// Each endpoint's deliveries by state.
    fn webhook_delivery_counts(&self) -> StoreResult<BTreeMap<String, DeliveryCounts>>;
    /// Pending deliveries due at `now`: the earliest of each endpoint not in `busy`, the
    /// earliest first, at most `limit`.
    fn due_webhook_deliveries(
        &self,
        now: Timestamp,
        busy: &[String],
        limit: usize,
    ) -> StoreResult<Vec<DueDelivery>>;
    /// Records an attempt and the delivery's new state (`next_attempt_at` for a retry;
    /// `delivered` or `failed` when `finished`), in one transaction; keeps the endpoint's
    /// newest [`crate::webhooks::ATTEMPTS_KEPT`] attempts and finished deliveries.
    fn record_webhook_attempt(
        &self,
        attempt: &AttemptRecord,
        next_attempt_at: Option<Timestamp>,
    ) -> StoreResult<()>;
    /// An endpoint's newest attempts first, at most `limit`.
    fn webhook_attempts(&self, endpoint_id: &str, limit: usize) -> StoreResult<Vec<AttemptRecord>>;
    /// An endpoint's newest deliveries first, at most `limit`.
    fn webhook_deliveries(
        &self,
        endpoint_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<DeliveryRecord>>;

    // The dashboard
    /// The dashboard's read model over this store's data, on access that never blocks the
    /// store's writer (see [`read`]).
    fn dashboard_read(&self) -> Arc<dyn read::DashboardRead>;
}

/// Opens the store the configuration names (`[storage]`): the SQLite file, or the
/// PostgreSQL database (reading `storage.password_file`); runs pending migrations.
/// Blocking: call it on the blocking pool.
pub fn open_configured(config: &crate::config::Config) -> StoreResult<Arc<dyn Store>> {
    use crate::config::StorageBackend;
    match config.storage.backend {
        StorageBackend::Sqlite => Ok(Arc::new(SqliteStore::open(&config.database_path())?)),
        StorageBackend::Postgres => {
            let storage = &config.storage;
            let url = storage.url.clone().ok_or_else(|| {
                StoreError::Migration("storage.url is required with backend = \"postgres\"".into())
            })?;
            let password = storage
                .password_file
                .as_ref()
                .map(|path| {
                    std::fs::read_to_string(path)
                        .map(|p| p.trim_end_matches(['\r', '\n']).to_string())
                        .map_err(|e| {
                            StoreError::Migration(format!(
                                "storage.password_file {}: cannot read: {e}",
                                path.display()
                            ))
                        })
                })
                .transpose()?;
            let options = PgOptions {
                url,
                password,
                pool_size: storage.pool_size,
                ca_file: storage.ca_file.clone(),
                connect_timeout: std::time::Duration::from_secs(storage.connect_timeout_secs),
            };
            Ok(Arc::new(PgStore::open(&options)?))
        }
    }
}

/// The async face of a [`Store`]: runs each call on tokio's blocking pool so that the
/// runtime's worker threads never wait for SQLite.
#[derive(Clone)]
pub struct Db {
    store: Arc<dyn Store>,
}

impl Db {
    pub fn new(store: Arc<dyn Store>) -> Db {
        Db { store }
    }

    /// See [`Store::shared_by_replicas`].
    pub fn shared_by_replicas(&self) -> bool {
        self.store.shared_by_replicas()
    }

    /// `limits` bounded by the store's [`Store::max_group_items`].
    pub fn group_limits(
        &self,
        limits: crate::group_commit::GroupLimits,
    ) -> crate::group_commit::GroupLimits {
        crate::group_commit::GroupLimits {
            max_items: limits.max_items.min(self.store.max_group_items()).max(1),
            ..limits
        }
    }

    /// See [`Store::change_feed`] (blocking: connects).
    pub fn change_feed(&self) -> StoreResult<Option<Box<dyn ChangeFeed>>> {
        self.store.change_feed()
    }

    pub async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> StoreResult<T> + Send + 'static,
    {
        let store = self.store.clone();
        // A write of the wave controller carries its fencing token to the store.
        let fence = fence::of_task();
        tokio::task::spawn_blocking(move || fence::on_thread(fence, || f(store.as_ref())))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// The store's [`read::DashboardRead`] (see [`Store::dashboard_read`]).
    pub fn dashboard_read(&self) -> Arc<dyn read::DashboardRead> {
        self.store.dashboard_read()
    }
}

/// A stored phase name back to its [`Phase`] (None: not a phase name).
pub(crate) fn parse_phase(s: &str) -> Option<Phase> {
    Some(match s {
        "accepted" => Phase::Accepted,
        "waiting" => Phase::Waiting,
        "staged" => Phase::Staged,
        "leased" => Phase::Leased,
        "downloading" => Phase::Downloading,
        "installing" => Phase::Installing,
        "verifying" => Phase::Verifying,
        "committed" => Phase::Committed,
        "failed" => Phase::Failed,
        "rolled_back" => Phase::RolledBack,
        "rollback_failed" => Phase::RollbackFailed,
        _ => return None,
    })
}

/// Milliseconds since the Unix epoch: how times are stored (sortable as integers).
pub fn to_millis(t: Timestamp) -> i64 {
    t.as_millisecond()
}

pub fn from_millis(ms: i64) -> StoreResult<Timestamp> {
    Timestamp::from_millisecond(ms).map_err(|e| StoreError::Corrupt(format!("timestamp {ms}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_all_signs_each_draft_with_its_own_sequence_in_order() {
        for n in [0usize, 1, 63, 64, 129, 1000] {
            let drafts: Vec<AssignmentDraft> = (0..n)
                .map(|i| AssignmentDraft {
                    site_id: format!("site-{i}"),
                    rollout_id: "r".into(),
                    wave: 0,
                    release_id: "rel".into(),
                    release_digest: "d".into(),
                    rollback: false,
                    not_before: Timestamp::UNIX_EPOCH,
                    issued_at: Timestamp::UNIX_EPOCH,
                    expires: Timestamp::UNIX_EPOCH,
                    window: None,
                })
                .collect();
            let sequences: Vec<u64> = (0..n as u64).map(|i| 1000 + i * 7).collect();
            let sign = |d: &AssignmentDraft, seq: u64| Envelope {
                payload_type: "test".into(),
                payload: format!("{}:{seq}", d.site_id),
                signatures: Vec::new(),
            };
            let out = sign_all(&drafts, &sequences, &sign);
            let want: Vec<String> = (0..n)
                .map(|i| format!("site-{i}:{}", 1000 + i as u64 * 7))
                .collect();
            let got: Vec<String> = out.into_iter().map(|e| e.payload).collect();
            assert_eq!(got, want, "{n} drafts");
        }
    }
}
