//! The air-gapped bundle's manifest and the export request: one definition for the
//! coordinator that writes bundles (`POST /v1/bundles`), the agent that imports them
//! (`fleetwave-agent import-bundle`) and the CLI (`fleetwave bundle export`).
//!
//! The manifest only says where the documents are; nothing in it is trusted. The signed
//! envelopes decide, and the agent checks every artifact against the verified release.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `format` value of a version-1 bundle manifest.
pub const BUNDLE_FORMAT: &str = "fleetwave-bundle-v1";

/// Most sites one exported bundle may carry: each site's assignment is one tar entry, and
/// the agent reads at most 4,096 entries (`MAX_BUNDLE_ENTRIES` in the agent), which must
/// leave room for the manifest, the release, the roots and the artifacts.
pub const MAX_BUNDLE_SITES: usize = 3_900;

/// `manifest.json`, the first entry of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    /// Root envelopes, oldest first (entry names).
    #[serde(default)]
    pub roots: Vec<String>,
    /// A bundle for one site: its assignment envelope's entry name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<String>,
    /// A bundle for several sites: each site's assignment envelope's entry name, by site id.
    /// An agent reads only its own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub assignments: BTreeMap<String, String>,
    /// The release envelope's entry name.
    pub release: String,
    /// Every other entry's SHA-256 and size, for a courier or an operator to check a copy
    /// (`sha256sum`); the agent does not need them (the signed release decides).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, FileDigest>,
}

impl Manifest {
    /// The entry name of `site_id`'s assignment: the single-site `assignment`, or the
    /// site's entry of `assignments`.
    pub fn assignment_for(&self, site_id: &str) -> Option<&str> {
        self.assignment
            .as_deref()
            .or_else(|| self.assignments.get(site_id).map(String::as_str))
    }
}

/// One entry's SHA-256 (lowercase hex) and size in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    pub sha256: String,
    pub size: u64,
}

/// `POST /v1/bundles`: either `site`, or `rollout` with `wave` (and optionally a label
/// selector `labels`, every `key=value` of which must match).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExportBundle {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Header of a bundle answer: how many sites the bundle carries.
pub const BUNDLE_SITES_HEADER: &str = "x-fleetwave-bundle-sites";
