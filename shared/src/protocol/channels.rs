//! Channels over the operator API (`/v1/channels`): the release a set of sites should run,
//! and the sites that do not run it yet, with why. See docs/waves.md, "Channels".

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::rollout::RolloutStatus;

/// `POST /v1/channels` (operator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateChannel {
    /// 1 to 64 characters of a-z, 0-9, '-', '_', '.'.
    pub name: String,
    /// The release stream (a release's name).
    pub stream: String,
    /// Which sites, in the plan's selector syntax: `{"region": "emea"}`,
    /// `{"ring": ["a", "b"]}`, `{"ring": {"not": "dog"}}`. Empty: every site.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub selector: BTreeMap<String, serde_json::Value>,
    /// The release its sites should run (published, of the stream). None: set it later.
    #[serde(default)]
    pub release: Option<String>,
    /// At most this many of its sites install at once (default 10).
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// Failures tolerated before its convergence pauses (default 0: the first pauses).
    #[serde(default)]
    pub failure_budget: Option<u32>,
    /// The maintenance window, in the plan's syntax (`{"start": "02:00", "end": "05:00"}`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub window: Option<serde_json::Value>,
}

/// `POST /v1/channels/{name}/set` (operator): a new release and/or limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ChangeChannel {
    #[serde(default)]
    pub release: Option<String>,
    /// Required to move the release to a lower counter (a rollback, audited as such).
    #[serde(default)]
    pub rollback: bool,
    /// Why (in the audit log).
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    #[serde(default)]
    pub failure_budget: Option<u32>,
    /// A new maintenance window, in the plan's syntax.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub window: Option<serde_json::Value>,
    /// Remove the window (any time).
    #[serde(default)]
    pub clear_window: bool,
}

/// A channel's convergence rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConvergenceInfo {
    pub rollout_id: String,
    pub status: RolloutStatus,
    #[serde(default)]
    pub reason: Option<String>,
}

/// A channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChannelInfo {
    pub name: String,
    pub stream: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub selector: serde_json::Value,
    /// The selector in words (`region=emea`, `every site`).
    pub selector_text: String,
    pub release_id: Option<String>,
    pub release_version: Option<String>,
    pub max_concurrent: u32,
    pub failure_budget: u32,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub window: Option<serde_json::Value>,
    /// Who or what set the release last (`rollout <id>` when a rollout completed).
    pub set_by: String,
    pub set_at: Timestamp,
    pub set_reason: String,
    pub created_at: Timestamp,
    pub created_by: String,
    /// Its active convergence rollout, if any.
    pub convergence: Option<ConvergenceInfo>,
    /// Whether its convergence is paused (its convergence rollout halted or paused).
    pub paused: bool,
    /// Sites it selects that do not run its release.
    pub off_release: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChannelList {
    pub channels: Vec<ChannelInfo>,
}

/// A site a channel selects that does not run its release, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OffChannelSite {
    pub site_id: String,
    /// What it runs in the stream (None: it said nothing of it).
    pub version: Option<String>,
    /// `held`, `ambiguous`, `in_rollout`, `paused`, `converging`, `failed` or `waiting`.
    pub reason: String,
    /// The reason in words (the hold's reason, the agent's words for a failure...).
    pub detail: String,
    pub last_seen: Option<Timestamp>,
    /// Not seen for 15 minutes or more (or never).
    pub offline: bool,
    /// Deferred by its site until then.
    pub deferred_until: Option<Timestamp>,
}

/// `GET /v1/channels/{name}`: the channel and its sites off its release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChannelDetail {
    pub channel: ChannelInfo,
    /// A page of the sites off its release, by id.
    pub off: Vec<OffChannelSite>,
    /// How many of all its sites off its release have each reason.
    pub off_by_reason: BTreeMap<String, u64>,
    /// The next page starts after this site id (None: last page).
    pub next_after: Option<String>,
}

/// `GET /v1/channels/{name}?after=ID&limit=N`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams))]
#[serde(deny_unknown_fields)]
pub struct ChannelQuery {
    /// Page: sites with ids after this one.
    #[serde(default)]
    pub after: Option<String>,
    /// Page size (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `POST /v1/channels/{name}/resume`: what resuming did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChannelResumed {
    pub channel: String,
    pub outcome: String,
}
