//! The signed documents: root of trust, release, assignment.
//!
//! These are plain data. They are only ever parsed from verified envelope payloads
//! (see [`crate::verify`]); nothing here checks a signature.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::keys::PublicKeyFile;

pub const ROOT_TYPE: &str = "application/vnd.fleetwave.root+json";
pub const RELEASE_TYPE: &str = "application/vnd.fleetwave.release+json";
pub const ASSIGNMENT_TYPE: &str = "application/vnd.fleetwave.assignment+json";

/// The three roles of the fleet's root of trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Offline keys; sign the root document and its rotations.
    Root,
    /// Offline (or HSM) keys; sign releases.
    Release,
    /// The coordinator's online key; signs assignments.
    Coordinator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Release => "release",
            Role::Coordinator => "coordinator",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role's keys and how many distinct ones must sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleKeys {
    pub keyids: Vec<String>,
    pub threshold: usize,
}

/// The fleet's root of trust. Version N+1 must be signed by a threshold of version N's
/// root keys and of its own root keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    pub version: u64,
    pub expires: Timestamp,
    /// Every key any role uses, by key id (lowercase hex SHA-256 of the raw key).
    pub keys: BTreeMap<String, PublicKeyFile>,
    pub roles: Roles,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roles {
    pub root: RoleKeys,
    pub release: RoleKeys,
    pub coordinator: RoleKeys,
}

impl Roles {
    pub fn get(&self, role: Role) -> &RoleKeys {
        match role {
            Role::Root => &self.root,
            Role::Release => &self.release,
            Role::Coordinator => &self.coordinator,
        }
    }
}

/// What a release upgrades.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseKind {
    /// An application directory switched through a `current` symlink.
    App,
    /// The site's own Kubernetes distribution (k3s first).
    Kubernetes,
    /// Operator-supplied scripts around the same contract.
    Command,
}

impl ReleaseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseKind::App => "app",
            ReleaseKind::Kubernetes => "kubernetes",
            ReleaseKind::Command => "command",
        }
    }
}

/// One file a release needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub name: String,
    /// A path on the coordinator (e.g. `/v1/artifacts/<sha256>`) or an absolute http(s) URL
    /// of any mirror; the signed length and SHA-256 make every mirror untrusted.
    pub url: String,
    pub length: u64,
    /// Lowercase hex SHA-256 of the artifact bytes.
    pub sha256: String,
}

/// An immutable, signed description of a target version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// Unique id, e.g. `pos-2.4.0`.
    pub id: String,
    /// The release stream (the application's name); counters increase per stream.
    pub name: String,
    pub version: String,
    pub kind: ReleaseKind,
    /// Strictly increasing per stream (`name`).
    pub counter: u64,
    pub issued_at: Timestamp,
    pub expires: Timestamp,
    pub artifacts: Vec<Artifact>,
    /// Executor parameters (e.g. `format = "tar.gz"`, `restart_command`); free-form.
    #[serde(default)]
    pub install: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_agent_version: Option<String>,
}

/// The coordinator's signed statement "site S should run release R".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    pub site_id: String,
    pub rollout_id: String,
    /// Zero-based wave index in the rollout's plan.
    pub wave: u32,
    /// [`crate::Envelope::digest`] of the release envelope.
    pub release_sha256: String,
    /// Per site, strictly increasing across all assignments the site receives.
    pub sequence: u64,
    pub not_before: Timestamp,
    pub issued_at: Timestamp,
    pub expires: Timestamp,
    /// An explicit rollback: allowed to go below the release high-water mark, but only as
    /// far as the release the site committed before its current one.
    #[serde(default)]
    pub rollback: bool,
    /// The site's maintenance window for this rollout, if the plan has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<crate::window::Window>,
}
