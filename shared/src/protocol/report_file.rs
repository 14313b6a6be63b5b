//! Reports carried back from an air-gapped site by file: `fleetwave-agent export-reports`
//! writes the agent's queued outbox as a DSSE envelope signed with the box's device key;
//! `POST /v1/sites/{id}/reports/import` (CLI `fleetwave site import-reports`) verifies it
//! against the site's enrolled key and applies the events like an online report batch
//! (same event ids: importing twice, or the site reporting the same events online later,
//! changes nothing).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::Event;

/// The DSSE payload type of a report file.
pub const REPORT_FILE_TYPE: &str = "application/vnd.fleetwave.report-file+json";
/// The `format` of a version-1 report file.
pub const REPORT_FILE_FORMAT: &str = "fleetwave-reports-v1";
/// Most events one report file carries (its payload is also bounded by the envelope limit,
/// `dsse::MAX_ENVELOPE_BYTES`).
pub const MAX_REPORT_FILE_EVENTS: usize = 10_000;

/// The signed payload of a report file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportFile {
    pub format: String,
    /// The site whose device key signed the file.
    pub site_id: String,
    /// When the agent wrote the file (its clock).
    pub created_at: Timestamp,
    /// The queued events, oldest first, each with the id it would have been sent with.
    pub events: Vec<Event>,
}

/// What an import applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReportImport {
    pub site_id: String,
    /// Events in the file.
    pub events: u32,
    /// Events applied now.
    pub applied: u32,
    /// Events the coordinator had already (an earlier import, or the site online).
    pub duplicates: u32,
}
