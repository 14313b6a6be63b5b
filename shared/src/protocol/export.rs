//! `GET /v1/rollouts/{id}/export`: one self-contained document for a post-incident review
//! of a rollout, which `fleetwave rollout export` writes as JSON or Markdown.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::Event;
use super::operator::{AuditEntry, ReleaseInfo, RolloutView};

/// At most this many sites are described in [`RolloutExport::sites`]; the rest are counted
/// in `sites_omitted`.
pub const EXPORT_SITES: usize = 500;
/// Reports of a site at or before the moment that matters (its failure, or its last report).
pub const EXPORT_REPORTS_BEFORE: u32 = 20;
/// Reports of a site after that moment.
pub const EXPORT_REPORTS_AFTER: u32 = 10;
/// At most this many audit entries about the rollout.
pub const EXPORT_AUDIT: usize = 1000;

/// A rollout for a post-incident review.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutExport {
    pub exported_at: Timestamp,
    /// The operator who asked for it (`token-name (role, token id)`).
    pub exported_by: String,
    /// The status view: the plan, the waves with their tallies and gates, the timeline of
    /// decisions with the gate's numbers in each reason.
    pub rollout: RolloutView,
    pub release: ReleaseInfo,
    /// Every failed, silent or rolled-back site (at most [`EXPORT_SITES`]), by wave then
    /// site id, with the agent's own words and its reports around the failure.
    pub sites: Vec<ExportSite>,
    /// Failed, silent or rolled-back sites not described in `sites`.
    pub sites_omitted: u64,
    /// Audit entries whose target is the rollout, oldest first (at most [`EXPORT_AUDIT`]).
    pub audit: Vec<AuditEntry>,
    /// Sites of the rollout by the release they ran before it (`unknown` when they never
    /// said).
    pub releases_before: BTreeMap<String, u64>,
    /// Sites of the rollout by the version of the release's stream they report installed
    /// now (`none` when they report none).
    pub versions_now: BTreeMap<String, u64>,
}

/// One site that failed, went silent or was rolled back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExportSite {
    pub site_id: String,
    pub wave: u32,
    /// `failed`, `silent` or `rolled_back`.
    pub state: String,
    /// The last phase the site reported.
    pub phase: Option<String>,
    /// The gate's words for the site's state.
    pub detail: Option<String>,
    /// The failure in the agent's own words.
    pub failure: Option<String>,
    pub failed_at: Option<Timestamp>,
    pub last_report_at: Option<Timestamp>,
    pub previous_release_id: Option<String>,
    /// The version of the release's stream the site reports installed now.
    pub version_now: Option<String>,
    /// The site's reports around the failure (or its last report), oldest first: at most
    /// [`EXPORT_REPORTS_BEFORE`] at or before it and [`EXPORT_REPORTS_AFTER`] after.
    pub reports: Vec<Event>,
}
