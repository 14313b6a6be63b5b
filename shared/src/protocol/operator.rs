//! Operator API shapes (`/v1/` routes used by the `fleetwave` CLI and the dashboard).
//! Owned by the coordinator; the CLI deserializes the same types.
//!
//! Every operator request carries `Authorization: Bearer <operator token>`. Roles:
//! `viewer` reads; `operator` also manages sites, enrollment tokens and rollouts;
//! `release_manager` also publishes releases and artifacts; `admin` may do everything,
//! including operator tokens and root rotation. Pure data: no I/O here.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use super::rollout::{ActionKind, ActionRefused, RolloutStatus};

/// Operator route paths.
pub mod paths {
    pub const ENROLLMENT_TOKENS: &str = "/v1/enrollment-tokens";
    pub const OPERATOR_TOKENS: &str = "/v1/operator-tokens";
    pub const SITES: &str = "/v1/sites";
    pub const SITE_IMPORT: &str = "/v1/sites/import";
    pub const RELEASES: &str = "/v1/releases";
    pub const ROOTS: &str = "/v1/roots";
    pub const ROLLOUTS: &str = "/v1/rollouts";
    pub const AUDIT: &str = "/v1/audit";
    pub const FREEZES: &str = "/v1/freezes";
    pub const WEBHOOKS: &str = "/v1/webhooks";
}

/// What an operator token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OperatorRole {
    Viewer,
    Operator,
    ReleaseManager,
    Admin,
}

/// The kinds of operator action a role may be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read anything (sites, releases, rollouts, audit log).
    Read,
    /// Sites, enrollment tokens, rollouts.
    Operate,
    /// Releases and artifacts.
    Publish,
    /// Operator tokens and root rotation.
    Admin,
}

impl OperatorRole {
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorRole::Viewer => "viewer",
            OperatorRole::Operator => "operator",
            OperatorRole::ReleaseManager => "release_manager",
            OperatorRole::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<OperatorRole> {
        Some(match s {
            "viewer" => OperatorRole::Viewer,
            "operator" => OperatorRole::Operator,
            "release_manager" => OperatorRole::ReleaseManager,
            "admin" => OperatorRole::Admin,
            _ => return None,
        })
    }

    pub fn permits(self, permission: Permission) -> bool {
        matches!(
            (self, permission),
            (OperatorRole::Admin, _)
                | (_, Permission::Read)
                | (OperatorRole::Operator, Permission::Operate)
                | (OperatorRole::ReleaseManager, Permission::Publish)
        )
    }
}

/// Whether a site may talk to the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SiteState {
    Active,
    /// Refused at once (sessions dropped); `re-enable` brings it back.
    Decommissioned,
}

impl SiteState {
    pub fn as_str(self) -> &'static str {
        match self {
            SiteState::Active => "active",
            SiteState::Decommissioned => "decommissioned",
        }
    }

    pub fn parse(s: &str) -> Option<SiteState> {
        match s {
            "active" => Some(SiteState::Active),
            "decommissioned" => Some(SiteState::Decommissioned),
            _ => None,
        }
    }
}

/// `POST /v1/enrollment-tokens`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollmentToken {
    /// Labels given to sites that enroll with this token.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// If set, the token enrolls only this site id, which must not be enrolled yet (an
    /// enrolled site gets a new device key only with a token from
    /// `POST /v1/sites/{id}/rekey`). Without it, the token only creates new sites.
    #[serde(default)]
    pub site_id: Option<String>,
    /// Seconds until the token expires (default 86400).
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
    /// How many enrollments the token allows (default 1).
    #[serde(default)]
    pub uses: Option<u32>,
}

/// The answer to a token creation: the secret appears only here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollmentTokenCreated {
    pub id: String,
    pub token: String,
    pub expires_at: Timestamp,
    pub uses: u32,
}

/// `POST /v1/sites/{id}/rekey`: a one-use enrollment token bound to an existing site, the
/// only kind that can replace its device key (a re-imaged or replaced box). Answered with
/// [`EnrollmentTokenCreated`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RekeySite {
    /// Seconds until the token expires (default 86400).
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

/// The largest `POST /v1/sites/import` request body: 64 MiB, about 400,000 sites with
/// device keys. A larger fleet is imported as several files (each all or nothing).
pub const MAX_SITE_IMPORT_BYTES: usize = 64 * 1024 * 1024;

/// The format of a site import file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SiteImportFormat {
    /// A header `site_id[,device_key][,label:KEY...]`, then one site per line.
    Csv,
    /// One JSON object per line: `{"site_id", "labels"?, "device_key"?}`.
    Jsonl,
}

/// `POST /v1/sites/import`: many sites at once, all or nothing. Each line either
/// pre-registers a site with its device key (the box opens sessions with that key; no
/// token) or, without a key, gets a one-use enrollment token bound to the site and its
/// labels. Answered with [`SiteImportResult`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SiteImport {
    pub format: SiteImportFormat,
    /// The file's text (UTF-8); line numbers in refusals count its lines from 1.
    pub text: String,
    /// Seconds until the enrollment tokens expire (default 86400, at most a year).
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

/// One enrollment token of an import: the secret appears only in this answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImportedToken {
    pub site_id: String,
    pub token: String,
}

/// What an import stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SiteImportResult {
    /// The import's id, the target of its one audit entry (`site.import`).
    pub import_id: String,
    /// Sites in the file.
    pub sites: u64,
    /// Sites pre-registered with their device keys (active now, no token).
    pub registered: u64,
    /// One-use enrollment tokens, one per site without a key, in file order.
    pub tokens: Vec<ImportedToken>,
    /// When the tokens expire (none: the file had no site without a key).
    pub tokens_expire_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollmentTokenInfo {
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollmentTokenList {
    pub tokens: Vec<EnrollmentTokenInfo>,
}

/// `POST /v1/operator-tokens` (admin)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateOperatorToken {
    /// Who or what uses the token (shown in the audit log), e.g. `ci-deploy` or `alice`.
    pub name: String,
    pub role: OperatorRole,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OperatorTokenCreated {
    pub id: String,
    /// The secret; shown only here.
    pub token: String,
    pub name: String,
    pub role: OperatorRole,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OperatorTokenInfo {
    pub id: String,
    pub name: String,
    pub role: OperatorRole,
    pub created_at: Timestamp,
    pub created_by: String,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OperatorTokenList {
    pub tokens: Vec<OperatorTokenInfo>,
}

/// `GET /v1/sites?label=k=v,k2=v2&state=active&version=2.4.0&after=ID&limit=N`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams))]
#[serde(deny_unknown_fields)]
pub struct SiteListQuery {
    /// Comma-separated `key=value` pairs; every one must match.
    #[serde(default)]
    pub label: Option<String>,
    /// `active` or `decommissioned`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", param(value_type = Option<SiteState>))]
    pub state: Option<String>,
    /// Sites that report this version installed.
    #[serde(default)]
    pub version: Option<String>,
    /// Page: sites with ids after this one.
    #[serde(default)]
    pub after: Option<String>,
    /// Page size (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// What a site said it runs in one release stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InstalledInfo {
    pub release_id: Option<String>,
    pub version: Option<String>,
    pub previous_release_id: Option<String>,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SiteInfo {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub state: SiteState,
    pub agent_version: String,
    pub device_key: String,
    pub enrolled_at: Timestamp,
    pub last_seen: Option<Timestamp>,
    /// By release stream.
    pub installed: BTreeMap<String, InstalledInfo>,
    pub healthy: Option<bool>,
    pub health_at: Option<Timestamp>,
    pub deferred_until: Option<Timestamp>,
    /// The active rollout the site belongs to, if any.
    pub rollout_id: Option<String>,
    /// The site is held at what it runs: no rollout takes it until the hold is lifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<SiteHoldInfo>,
    /// The latest golden-signal minute of each release stream the agent scrapes (only in
    /// `GET /v1/sites/{id}`; absent when the site sends no signals).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signals: Vec<SiteSignals>,
    /// A site of several boxes: each box, in the order its site's active rollout installs
    /// them (box id order without one). Only in `GET /v1/sites/{id}`; absent for a one-box
    /// site.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boxes: Vec<SiteBoxInfo>,
}

/// One box of a site of several boxes, as `GET /v1/sites/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SiteBoxInfo {
    pub box_id: String,
    /// The box's role label (`server`, `agent`, ...); empty when it has none.
    pub role: String,
    /// What the box last reported installed in the site's active rollout: release stream
    /// to version (empty outside a rollout or before its first report).
    #[serde(default)]
    pub installed: BTreeMap<String, String>,
    /// The box's last install phase in the active rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The box's last report in the active rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report_at: Option<Timestamp>,
    /// In the active rollout: `idle` (no active rollout), `waiting` (its turn has not
    /// come), `installing` (holds its lease), `committed` (not yet reported healthy
    /// since), `succeeded` (committed and healthy), `failed`.
    pub state: String,
}

/// A site's latest golden-signal minute of one release stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SiteSignals {
    pub stream: String,
    /// Start of the minute.
    pub minute: Timestamp,
    /// When the coordinator received it.
    pub received_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_id: Option<String>,
    /// Signal name → the minute's value.
    pub values: BTreeMap<String, f64>,
    /// What went wrong in the minute (failed scrapes, counter resets, no values), in
    /// words; absent for a clean minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl SiteSignals {
    pub fn new(m: super::signals::SignalMinute, received_at: Timestamp) -> SiteSignals {
        SiteSignals {
            problem: m.trouble(),
            stream: m.stream,
            minute: m.minute,
            received_at,
            release_id: m.release_id,
            values: m.values,
        }
    }
}

/// Why, by whom and since when a site is held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SiteHoldInfo {
    pub reason: String,
    pub held_by: String,
    pub held_at: Timestamp,
}

/// `POST /v1/sites/{id}/hold`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HoldSite {
    /// Why (shown wherever the site is): 1 to 500 characters.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SiteList {
    pub sites: Vec<SiteInfo>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

/// `POST /v1/sites/{id}/labels`: set and remove labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RelabelSite {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseInfo {
    pub id: String,
    /// `Envelope::digest()` of the envelope as published; assignments reference this.
    pub digest: String,
    pub name: String,
    pub version: String,
    pub kind: String,
    pub counter: u64,
    pub published_at: Timestamp,
    pub published_by: String,
    pub envelope: crate::dsse::Envelope,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseList {
    pub releases: Vec<ReleaseInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ArtifactInfo {
    pub sha256: String,
    pub length: u64,
    pub uploaded_at: Timestamp,
    /// Path to download it from this coordinator.
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RootInfo {
    pub version: u64,
    pub expires: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RootList {
    pub roots: Vec<RootInfo>,
}

/// How a rollout plan is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum PlanFormat {
    Toml,
    Json,
}

/// `POST /v1/rollouts`: the plan file as text (it names the release and the waves).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateRollout {
    pub plan: String,
    pub format: PlanFormat,
}

/// `POST /v1/rollouts/{id}/approve`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ApproveWave {
    /// Zero-based wave index.
    pub wave: u32,
}

/// `POST /v1/rollouts/{id}/skip`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SkipSite {
    pub site_id: String,
}

/// `POST /v1/rollouts/{id}/retry`: exactly one of `site_id` (one failed site) or `wave`
/// (every failed site of that wave).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RetrySites {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<u32>,
}

/// Optional reason for pause, abort and rollback.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ActionReason {
    #[serde(default)]
    pub reason: Option<String>,
}

/// How many sites of a wave stand where.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WaveTally {
    pub sites: u32,
    pub pending: u32,
    pub in_progress: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub silent: u32,
    pub skipped: u32,
    pub rolled_back: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WaveView {
    pub index: u32,
    pub name: String,
    pub opened_at: Option<Timestamp>,
    pub passed_at: Option<Timestamp>,
    pub approval_required: bool,
    pub approved_at: Option<Timestamp>,
    pub tally: WaveTally,
    /// The gate's standing in words, e.g. `waiting for bake: 3 of 5 sites baked`.
    pub gate: String,
    /// The golden-signal analysis of the wave (the plan's `[[analysis]]`), one entry per
    /// signal, as the controller last judged it (every minute while the wave bakes; the
    /// last verdicts after it passed or halted). Absent when the plan has no analysis or
    /// no site of the wave has committed yet; kept in the coordinator's memory, so a
    /// restart forgets the verdicts of waves no longer judged (the timeline keeps their
    /// reasons).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis: Vec<super::analysis::SignalAnalysis>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DecisionView {
    pub at: Timestamp,
    pub kind: String,
    pub wave: Option<u32>,
    pub reason: String,
}

/// The state words of a site in a rollout ([`RolloutSiteView::state`]), in the order a
/// site usually passes through them. `deferred` counts as pending in a [`WaveTally`].
pub const ROLLOUT_SITE_STATES: &[&str] = &[
    "pending",
    "deferred",
    "in_progress",
    "succeeded",
    "failed",
    "silent",
    "skipped",
    "rolled_back",
];

/// At most this many sites are listed in [`RolloutView::sites`]; the rest are counted in
/// [`RolloutView::sites_omitted`] and listed by `GET /v1/rollouts/{id}/sites`.
pub const ROLLOUT_VIEW_SITES: usize = 200;

/// One site's standing in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutSiteView {
    pub site_id: String,
    pub wave: u32,
    /// `pending`, `deferred`, `in_progress`, `succeeded`, `failed`, `silent`, `skipped`,
    /// `rolled_back` (see [`ROLLOUT_SITE_STATES`]).
    pub state: String,
    pub phase: Option<String>,
    pub detail: Option<String>,
    /// Served by bundle (`fleetwave bundle export`): when its carried assignment expires;
    /// the gate counts its silence from then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_until: Option<Timestamp>,
}

/// A rollout's status: waves with complete tallies and gate standing, the sites that need
/// attention, and the decision timeline.
///
/// `sites` is bounded so that the answer stays small at any fleet size: it lists only
/// sites that are `failed`, `silent`, `rolled_back` or `in_progress`, in that order (within
/// a state by wave, then site id), at most [`ROLLOUT_VIEW_SITES`] of them.
/// `sites_omitted` counts the rollout's sites not listed (every pending, succeeded,
/// deferred and skipped site, and attention sites beyond the cap); the wave tallies count
/// every site. `GET /v1/rollouts/{id}/sites` ([`RolloutSiteList`]) pages through all of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutView {
    pub id: String,
    pub release_id: String,
    pub status: RolloutStatus,
    pub status_reason: Option<String>,
    pub created_at: Timestamp,
    pub created_by: String,
    pub updated_at: Timestamp,
    pub waves: Vec<WaveView>,
    /// The sites that need attention (see above), at most [`ROLLOUT_VIEW_SITES`].
    pub sites: Vec<RolloutSiteView>,
    /// How many of the rollout's sites are not in `sites`.
    pub sites_omitted: u64,
    /// Every decision, oldest first.
    pub decisions: Vec<DecisionView>,
    pub plan: String,
    pub plan_format: PlanFormat,
    /// When the rollout starts itself (its plan's `start_at`); absent when the plan has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<StartAtView>,
}

/// A plan's `start_at`: the instant in UTC, and as the plan wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StartAtView {
    /// The instant (UTC).
    pub at: Timestamp,
    /// The IANA zone the plan named it in; absent when given as RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The instant in that zone, e.g. `2026-12-05 02:00 CET (Europe/Berlin)` (UTC when the
    /// plan gave no zone).
    pub local: String,
    /// The value as the plan wrote it.
    pub text: String,
}

/// How many site ids a plan preview lists per wave and per exclusion reason (the counts
/// are always complete).
pub const PREVIEW_SITES: usize = 50;

/// `POST /v1/rollouts/plan` and `GET /v1/rollouts/{id}/plan`: what a plan would do now,
/// computed without storing anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanPreview {
    /// The plan's name.
    pub name: String,
    pub release_id: String,
    /// When the preview was computed.
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<StartAtView>,
    /// Every enrolled site considered (active and decommissioned).
    pub fleet: u64,
    /// The sites that would take part (the sum of the waves' counts).
    pub selected: u64,
    pub waves: Vec<WavePreview>,
    /// The sites left out, grouped by why.
    pub excluded: Vec<ExclusionGroup>,
    /// Whether creating this plan now would be refused, and why (sites it selects already
    /// belong to another active rollout); absent when creation would succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// What the figures mean (earliest opens are lower bounds; share waves' members).
    pub notes: Vec<String>,
}

/// One wave of a plan preview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WavePreview {
    pub index: u32,
    pub name: String,
    /// How many sites fall in the wave now.
    pub count: u64,
    /// The first [`PREVIEW_SITES`] of them by site id.
    pub sites: Vec<String>,
    /// How many are not listed in `sites`.
    pub sites_omitted: u64,
    /// The earliest the wave could open: a lower bound that assumes every earlier gate
    /// passes the moment it can (sites install as soon as their window and the freezes
    /// let them, none fails, approvals are immediate). Absent when it cannot be known
    /// (an earlier wave's sites can never install, e.g. a `tz` label that is no zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earliest_open: Option<Timestamp>,
    /// What sets `earliest_open`, in words.
    pub earliest_open_reason: String,
}

/// Why a site is left out of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ExclusionReason {
    /// The site is decommissioned.
    Decommissioned,
    /// The site belongs to another active rollout (one active rollout per site).
    InAnotherRollout,
    /// The site's labels do not match the plan's selector.
    NoMatch,
    /// An operator holds the site at what it runs (`fleetwave site hold`).
    Held,
    /// A reason this build does not know (a newer coordinator).
    #[serde(other)]
    Unknown,
}

impl ExclusionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExclusionReason::Decommissioned => "decommissioned",
            ExclusionReason::InAnotherRollout => "in_another_rollout",
            ExclusionReason::NoMatch => "no_match",
            ExclusionReason::Held => "held",
            ExclusionReason::Unknown => "unknown",
        }
    }
}

/// The sites a plan leaves out for one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExclusionGroup {
    pub reason: ExclusionReason,
    pub count: u64,
    /// The first [`PREVIEW_SITES`] of them by site id, each with its detail.
    pub sites: Vec<ExcludedSite>,
    pub sites_omitted: u64,
}

/// One site left out of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExcludedSite {
    pub site_id: String,
    /// E.g. `in rollout pos-2-4-1a2b`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `GET /v1/rollouts/{id}/sites?wave=N&state=S&after=ID&limit=N`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams))]
#[serde(deny_unknown_fields)]
pub struct RolloutSiteQuery {
    /// Only sites of this wave (zero-based index).
    #[serde(default)]
    pub wave: Option<u32>,
    /// Only sites in this state (one of [`ROLLOUT_SITE_STATES`]).
    #[serde(default)]
    pub state: Option<String>,
    /// Page: sites with ids after this one.
    #[serde(default)]
    pub after: Option<String>,
    /// Page size (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// One page of a rollout's sites, ordered by site id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutSiteList {
    pub sites: Vec<RolloutSiteView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutSummary {
    pub id: String,
    pub release_id: String,
    pub status: RolloutStatus,
    pub status_reason: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutList {
    pub rollouts: Vec<RolloutSummary>,
}

/// `GET /v1/audit?before=ID&limit=N`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams))]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    #[serde(default)]
    pub before: Option<i64>,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    pub id: i64,
    pub at: Timestamp,
    /// `token-name (role, token id)` of the operator.
    pub actor: String,
    /// e.g. `rollout.start`, `site.decommission`.
    pub action: String,
    pub target: String,
    pub detail: String,
    /// The client address.
    pub remote: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditList {
    pub entries: Vec<AuditEntry>,
    /// Pass as `before` for the next (older) page.
    pub next_before: Option<i64>,
}

/// Where a fleet freeze comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FreezeSource {
    /// `[[freezes]]` in the coordinator's configuration file: read-only through the API.
    Config,
    /// Created through the API, CLI or dashboard; stored, and ended the same ways.
    Api,
}

/// A fleet-wide freeze: no lease is granted from `start` (inclusive) to `end` (exclusive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FreezeInfo {
    /// `frz-...` for a stored freeze, `config-N` for the configuration file's N-th.
    pub id: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub reason: String,
    pub source: FreezeSource,
    /// Whether it is in force now.
    pub active: bool,
    /// Who created it (stored freezes only).
    pub created_by: Option<String>,
    pub created_at: Option<Timestamp>,
    /// When and by whom it was ended early (stored freezes only).
    pub ended_at: Option<Timestamp>,
    pub ended_by: Option<String>,
}

/// `GET /v1/freezes`: the freezes in force now and those to come, earliest start first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FreezeList {
    pub freezes: Vec<FreezeInfo>,
}

/// `POST /v1/freezes`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateFreeze {
    /// When it begins (RFC 3339); now when left out.
    #[serde(default)]
    pub start: Option<Timestamp>,
    /// When it ends (RFC 3339): after `start` and after now, at most 365 days after `start`.
    pub end: Timestamp,
    /// Why (shown to operators and in the audit log): 1 to 500 characters.
    pub reason: String,
}

/// How a webhook endpoint's body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The JSON event (`type`, `timestamp`, `data`).
    #[default]
    Json,
    /// `{"text": "..."}`: one line for Slack's (or a compatible) incoming webhook.
    Slack,
}

/// `POST /v1/webhooks` (admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where events are POSTed: https, without user name or password.
    pub url: String,
    /// The event types to send (at least one): rollout.created, rollout.started,
    /// rollout.completed, rollout.halted, rollout.rolled_back, rollout.aborted,
    /// wave.opened, gate.awaiting_approval, site.failed, site.silent, freeze.added, freeze.ended.
    pub events: Vec<String>,
    #[serde(default)]
    pub format: WebhookFormat,
    /// Accept a plain `http://` URL (a receiver on a trusted network only).
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// What it is for (up to 200 characters).
    #[serde(default)]
    pub description: String,
}

/// A webhook endpoint. Its secret is never shown again after creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookInfo {
    /// `wh-...`
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub format: WebhookFormat,
    pub allow_insecure_http: bool,
    pub description: String,
    /// The secret's prefix and last 4 characters, to tell secrets apart.
    pub secret_hint: String,
    pub created_at: Timestamp,
    pub created_by: String,
    /// Deliveries waiting to be sent or retried.
    pub pending: u64,
    /// Deliveries answered 2xx (of those kept).
    pub delivered: u64,
    /// Deliveries given up after the last retry (of those kept).
    pub failed: u64,
}

/// `POST /v1/webhooks`'s answer: the endpoint and its signing secret, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedWebhook {
    pub webhook: WebhookInfo,
    /// `whsec_` and the base64 of the key: verify each delivery's `webhook-signature` with
    /// it. Store it now: it is never shown again.
    pub secret: String,
}

/// `GET /v1/webhooks`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookList {
    pub webhooks: Vec<WebhookInfo>,
}

/// One event on its way to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookDeliveryView {
    /// The `webhook-id` header: the same on every attempt.
    pub id: String,
    pub event_type: String,
    /// `pending`, `delivered` or `failed` (gave up).
    pub state: String,
    pub attempts: u32,
    pub created_at: Timestamp,
    /// When it is tried next (pending only).
    pub next_attempt_at: Option<Timestamp>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub finished_at: Option<Timestamp>,
}

/// One attempt of the delivery log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookAttemptView {
    pub delivery_id: String,
    pub event_type: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub at: Timestamp,
    /// The receiver's HTTP status (none: no answer).
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
    /// `delivered`, `retrying` or `failed` (the last attempt failed).
    pub outcome: String,
}

/// `GET /v1/webhooks/{id}/deliveries`: the newest deliveries and attempts first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookDeliveries {
    pub deliveries: Vec<WebhookDeliveryView>,
    pub attempts: Vec<WebhookAttemptView>,
}

/// `POST /v1/webhooks/{id}/test`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookTestQueued {
    /// The `webhook-id` of the test delivery (see the delivery log).
    pub webhook_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_permit_what_the_docs_say() {
        use OperatorRole::*;
        use Permission::*;
        assert!(Viewer.permits(Read) && !Viewer.permits(Operate) && !Viewer.permits(Publish));
        assert!(
            Operator.permits(Operate)
                && !Operator.permits(Publish)
                && !Operator.permits(Permission::Admin)
        );
        assert!(ReleaseManager.permits(Publish) && !ReleaseManager.permits(Operate));
        let admin = OperatorRole::Admin;
        assert!(
            admin.permits(Permission::Admin) && admin.permits(Operate) && admin.permits(Publish)
        );
    }
}
