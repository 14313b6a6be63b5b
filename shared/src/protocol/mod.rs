//! The JSON shapes of fleetwave's HTTP API (`/v1/`), shared by the coordinator, the agent
//! and the operator CLI.
//!
//! Agent side ([`agent`] routes): enroll once with a one-time token and the device key;
//! open a short-lived session with a signed, replay-protected handshake; then poll, lease
//! and report with the session's bearer token (no signature verification per request).
//! Operator side: see [`operator`].

pub mod analysis;
pub mod bundle;
pub mod channels;
pub mod export;
pub mod operator;
pub mod report_file;
pub mod rollout;
pub mod signals;

pub use rollout::{ActionKind, ActionRefused, LeaseDenialReason, RolloutStatus};

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::dsse::Envelope;

/// Header carrying the suggested seconds until the next poll (also on 304 answers).
pub const NEXT_POLL_HEADER: &str = "x-fleetwave-next-poll";
/// Longest long-poll `wait` the coordinator honours, in seconds.
pub const MAX_POLL_WAIT_SECS: u32 = 60;
/// Most events in one report batch.
pub const MAX_REPORT_EVENTS: usize = 500;
/// Longest client-generated event id.
pub const MAX_EVENT_ID_LEN: usize = 64;
/// How far a session handshake's timestamp may be from the coordinator's clock.
pub const SESSION_SKEW_SECS: i64 = 300;

/// Route paths, so that both sides name them the same way.
pub mod paths {
    pub const ENROLL: &str = "/v1/enroll";
    pub const SESSION: &str = "/v1/agent/session";
    pub const POLL: &str = "/v1/agent/poll";
    pub const LEASE: &str = "/v1/agent/lease";
    pub const REPORTS: &str = "/v1/agent/reports";
    /// `GET /v1/artifacts/{sha256}` (Range supported), `PUT` to upload (operators).
    pub const ARTIFACTS: &str = "/v1/artifacts";
}

/// The error body of every non-2xx answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `bad_request`, `unauthorized`, `lease_denied`.
    pub code: String,
    /// What went wrong and what to do, for a human.
    pub message: String,
    /// Only on 409 `lease_denied`: why the lease was refused. Agents act on it (a final
    /// reason such as `rollout_halted` means "do not ask again for this assignment"); a
    /// reason they do not know reads as `unknown` ("ask again later").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<LeaseDenialReason>,
    /// Only on 409 `lease_denied`: seconds until asking again makes sense (the same value
    /// as the `Retry-After` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u32>,
}

/// The bytes an enrolling agent signs with its device key (proof of possession).
pub fn enroll_message(site_id: &str, token: &str, device_key_hex: &str) -> Vec<u8> {
    format!("fleetwave-enroll-v1\n{site_id}\n{token}\n{device_key_hex}").into_bytes()
}

/// The bytes an enrolling agent that names its box signs with its device key: the site,
/// the box and its role are all part of what it proves.
pub fn box_enroll_message(
    site_id: &str,
    box_id: &str,
    role: &str,
    token: &str,
    device_key_hex: &str,
) -> Vec<u8> {
    format!("fleetwave-enroll-v2\n{site_id}\n{box_id}\n{role}\n{token}\n{device_key_hex}")
        .into_bytes()
}

/// The bytes an agent signs to open a session.
pub fn session_message(site_id: &str, timestamp: Timestamp, nonce: &str) -> Vec<u8> {
    format!("fleetwave-session-v1\n{site_id}\n{timestamp}\n{nonce}").into_bytes()
}

/// `POST /v1/enroll`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The one-time enrollment token an operator created.
    pub token: String,
    /// The site id this box asks for (`[a-z0-9][a-z0-9._-]{0,62}`); a token may fix it.
    pub site_id: String,
    /// The device's ed25519 public key, 64 lowercase hex.
    pub device_key: String,
    pub agent_version: String,
    /// Base64 ed25519 signature by the device key over [`enroll_message`], or over
    /// [`box_enroll_message`] when `box_id` is given.
    pub proof: String,
    /// Which box of the site this is (same rule as a site id); absent: `main`, a one-box
    /// site's box. A site's boxes each have their own device key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub box_id: Option<String>,
    /// The box's role label (`server`, `agent`, ...), which a plan's `box_order` names;
    /// absent: none. Only with `box_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollResponse {
    pub site_id: String,
    pub labels: BTreeMap<String, String>,
    /// Every root version the coordinator has, oldest first.
    pub roots: Vec<Envelope>,
}

/// `POST /v1/agent/session`: a signed handshake; the nonce is never accepted twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    pub site_id: String,
    pub timestamp: Timestamp,
    /// 32 lowercase hex characters (16 random bytes).
    pub nonce: String,
    /// Base64 ed25519 signature by the device key over [`session_message`].
    pub signature: String,
    /// The box whose device key signed (absent: the box the site enrolled with first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub box_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionResponse {
    /// Bearer token for `Authorization: Bearer ...` on every agent request.
    pub token: String,
    pub expires_at: Timestamp,
    /// The most signal minutes this coordinator accepts in one report batch
    /// ([`ReportBatch::signals`]). Absent (an older coordinator): it accepts none, and the
    /// agent keeps its minutes queued instead of sending a field the coordinator would
    /// refuse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_minutes_per_report: Option<u32>,
}

/// `GET /v1/agent/poll?wait=SECS&root_version=N` with `If-None-Match`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams))]
pub struct PollQuery {
    /// Long-poll: hold the request up to this many seconds (capped at
    /// [`MAX_POLL_WAIT_SECS`]) until something changes.
    #[serde(default)]
    pub wait: Option<u32>,
    /// The newest root version the agent trusts; newer ones are sent in `roots`.
    #[serde(default)]
    pub root_version: Option<u64>,
}

/// The answer to a poll (200). A 304 carries only `ETag` and [`NEXT_POLL_HEADER`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PollResponse {
    /// The site's signed assignment, or none: nothing to do.
    pub assignment: Option<Envelope>,
    /// The release envelope the assignment references.
    pub release: Option<Envelope>,
    /// Root versions newer than the agent's `root_version`, oldest first.
    #[serde(default)]
    pub roots: Vec<Envelope>,
    /// Suggested seconds until the next poll, jittered by the coordinator.
    pub next_poll_secs: u32,
}

/// `POST /v1/agent/lease`: permission to start installing now. Asking again while holding
/// a lease for the same rollout renews it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    pub rollout_id: String,
    /// The sequence of the assignment the agent acts on.
    pub sequence: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseGrant {
    pub lease_id: String,
    pub rollout_id: String,
    pub expires_at: Timestamp,
}

/// Body of a 409 `lease_denied` answer (inside `error`, plus `Retry-After`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseDenied {
    pub reason: LeaseDenialReason,
    pub message: String,
    pub retry_after_secs: u32,
}

/// `POST /v1/agent/reports`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReportBatch {
    pub events: Vec<Event>,
    /// Finished per-minute golden-signal summaries, oldest first (at most the session's
    /// `signal_minutes_per_report`). Absent or empty from an agent without signals. Stored
    /// by (site, stream, signal, minute): sending a minute again replaces it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signals: Vec<signals::SignalMinute>,
}

/// The coordinator applied every event of the batch (new ones) or had already (duplicates).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReportAck {
    pub accepted: u32,
    pub duplicates: u32,
}

/// One report. `id` is generated by the agent and stable across retries: the coordinator
/// applies each id at most once per site. `at` is the agent's clock when it happened.
///
/// On the wire `id`, `at`, `kind` and the kind's own fields are members of one object.
/// Parsing refuses any other member (see the `Deserialize` impl below: `serde(flatten)`
/// would accept them silently).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    pub id: String,
    pub at: Timestamp,
    #[serde(flatten)]
    pub body: EventBody,
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        // `id` and `at` are taken out; what remains must be exactly one `EventBody`, whose
        // variants refuse unknown fields.
        let mut members = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        let mut take = |name: &'static str| {
            members
                .remove(name)
                .ok_or_else(|| D::Error::missing_field(name))
        };
        let id = String::deserialize(take("id")?).map_err(D::Error::custom)?;
        let at = Timestamp::deserialize(take("at")?).map_err(D::Error::custom)?;
        let body =
            EventBody::deserialize(serde_json::Value::Object(members)).map_err(D::Error::custom)?;
        Ok(Event { id, at, body })
    }
}

/// What happened, tagged by `kind`. Each kind refuses fields it does not have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum EventBody {
    /// The install of a release moved to a new phase.
    Phase {
        #[serde(default)]
        rollout_id: Option<String>,
        release_id: String,
        phase: Phase,
        #[serde(default)]
        detail: Option<String>,
    },
    /// A health heartbeat (compact summary of every check).
    Health {
        healthy: bool,
        summary: HealthSummary,
    },
    /// Local deferral set (`until`) or lifted (`until = null`).
    Deferral {
        #[serde(default)]
        until: Option<Timestamp>,
        #[serde(default)]
        reason: Option<String>,
    },
    /// What the agent found installed (at start, after recovery, after commit or rollback).
    Installed {
        /// The release stream (release `name`).
        name: String,
        #[serde(default)]
        release_id: Option<String>,
        #[serde(default)]
        version: Option<String>,
        #[serde(default)]
        previous_release_id: Option<String>,
    },
    /// A document was refused (tampered, expired, replayed, wrong site...).
    Refusal {
        /// [`crate::Refusal::code`] or an executor code such as `artifact_mismatch`.
        code: String,
        message: String,
        #[serde(default)]
        rollout_id: Option<String>,
        #[serde(default)]
        sequence: Option<u64>,
    },
}

/// Install phases, in the order they normally happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Assignment verified and accepted; waiting for readiness.
    Accepted,
    /// Not ready yet (window, deferral, failing check, not_before); `detail` says why.
    Waiting,
    /// Waiting, with the artifacts already downloaded and verified ahead of the window
    /// (`download.ahead`): the install needs no download when it starts.
    Staged,
    Leased,
    Downloading,
    Installing,
    Verifying,
    /// Installed and healthy through the verify period; the previous version is kept.
    Committed,
    /// The install failed; `detail` says where. Usually followed by `rolled_back`.
    Failed,
    /// The box is back on the previous release.
    RolledBack,
    /// The rollback failed again and again (`install.rollback_attempts` times) and the agent
    /// gave up: the box runs neither release for sure and needs an operator. `detail` has
    /// the last error and the end of the failing command's output. Counts as failed.
    RollbackFailed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Accepted => "accepted",
            Phase::Waiting => "waiting",
            Phase::Staged => "staged",
            Phase::Leased => "leased",
            Phase::Downloading => "downloading",
            Phase::Installing => "installing",
            Phase::Verifying => "verifying",
            Phase::Committed => "committed",
            Phase::Failed => "failed",
            Phase::RolledBack => "rolled_back",
            Phase::RollbackFailed => "rollback_failed",
        }
    }
}

/// A compact summary of one health sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HealthSummary {
    pub passed: u32,
    pub failed: u32,
    /// Names of the failing checks with a short reason, e.g. `http:app: status 500`.
    #[serde(default)]
    pub failing: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_free_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_available_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load1: Option<f64>,
    /// How many samples this summary stands for (compacted heartbeats in the outbox).
    #[serde(default = "one")]
    pub samples: u32,
}

fn one() -> u32 {
    1
}
