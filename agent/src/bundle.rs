//! Air-gapped bundles: a tar file (optionally gzip-compressed) carrying root envelopes, an
//! assignment, its release and the release's artifacts, imported with
//! `fleetwave-agent import-bundle FILE`.
//!
//! Layout (see docs/agent.md):
//!
//! ```text
//! manifest.json        {"format": "fleetwave-bundle-v1", "roots": ["roots/1.json", ...],
//!                       "assignment": "assignment.json", "release": "release.json"}
//! roots/<n>.json       root envelopes, oldest first (may be none)
//! assignment.json      the assignment envelope
//! release.json         the release envelope
//! artifacts/<sha256>   every artifact of the release, named by its SHA-256
//! ```
//!
//! The documents are verified by the trust core exactly like a poll answer; artifacts are
//! written to the executor's staging directory only after their length and SHA-256 match the
//! verified release, so the executor's download step finds them ready. Nothing in the file
//! is trusted before that; entry names are looked up, never used as paths.

use std::collections::BTreeMap;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};

use fleetwave_shared::Envelope;
use fleetwave_shared::dsse::MAX_ENVELOPE_BYTES;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::daemon::{Accepting, Context, accept_documents};
use crate::executor::download::staged_path;
use crate::state::StateError;

/// The `format` value of a version-1 bundle manifest.
pub const BUNDLE_FORMAT: &str = "fleetwave-bundle-v1";
/// Most root envelopes a bundle may carry.
pub const MAX_BUNDLE_ROOTS: usize = 64;

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    #[serde(default)]
    pub roots: Vec<String>,
    pub assignment: String,
    pub release: String,
}

/// Why a bundle was not imported.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read bundle {path}: {message}")]
    Read { path: String, message: String },
    #[error("bundle is malformed: {0}")]
    Malformed(String),
    #[error("bundle refused: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("bundle artifact {name} ({sha256}): {message}")]
    Artifact {
        name: String,
        sha256: String,
        message: String,
    },
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
    #[error(transparent)]
    State(#[from] StateError),
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Imported {
    pub rollout_id: Option<String>,
    pub sequence: Option<u64>,
    pub release_id: Option<String>,
    /// Artifacts placed in the staging directory (verified).
    pub artifacts: Vec<String>,
    /// False when the bundle held the assignment the agent already had.
    pub new_assignment: bool,
}

fn open(path: &Path) -> Result<tar::Archive<Box<dyn Read>>, BundleError> {
    let read_err = |e: std::io::Error| BundleError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic).map_err(read_err)?;
    let file = std::fs::File::open(path).map_err(read_err)?;
    let reader: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(tar::Archive::new(reader))
}

fn entry_name(entry: &tar::Entry<'_, Box<dyn Read>>) -> Option<String> {
    let path = entry.path().ok()?;
    let name = path.to_str()?.trim_start_matches("./").to_string();
    Some(name)
}

/// First pass: the small JSON documents, each capped at the envelope limit.
fn read_documents(path: &Path) -> Result<BTreeMap<String, Vec<u8>>, BundleError> {
    let mut archive = open(path)?;
    let mut docs = BTreeMap::new();
    let entries = archive
        .entries()
        .map_err(|e| BundleError::Malformed(format!("not a tar file: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| BundleError::Malformed(format!("bad tar entry: {e}")))?;
        let Some(name) = entry_name(&entry) else {
            continue;
        };
        if !name.ends_with(".json") || !entry.header().entry_type().is_file() {
            continue;
        }
        if docs.len() > MAX_BUNDLE_ROOTS + 3 {
            return Err(BundleError::Malformed("too many JSON documents".into()));
        }
        let mut bytes = Vec::new();
        (&mut entry)
            .take(MAX_ENVELOPE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| BundleError::Malformed(format!("{name}: {e}")))?;
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(BundleError::Malformed(format!(
                "{name} is over the {MAX_ENVELOPE_BYTES}-byte limit"
            )));
        }
        docs.insert(name, bytes);
    }
    Ok(docs)
}

fn envelope(docs: &BTreeMap<String, Vec<u8>>, name: &str) -> Result<Envelope, BundleError> {
    let bytes = docs.get(name.trim_start_matches("./")).ok_or_else(|| {
        BundleError::Malformed(format!("manifest names {name}, which is not in the bundle"))
    })?;
    Envelope::from_json(bytes).map_err(|e| BundleError::Malformed(format!("{name}: {e}")))
}

/// Imports `path`: verifies, stages the artifacts, accepts the assignment.
pub fn import(ctx: &mut Context, path: &Path) -> Result<Imported, BundleError> {
    let docs = read_documents(path)?;
    let manifest: Manifest = serde_json::from_slice(
        docs.get("manifest.json")
            .ok_or_else(|| BundleError::Malformed("no manifest.json".into()))?,
    )
    .map_err(|e| BundleError::Malformed(format!("manifest.json: {e}")))?;
    if manifest.format != BUNDLE_FORMAT {
        return Err(BundleError::Malformed(format!(
            "manifest.json format is {:?}, this agent reads {BUNDLE_FORMAT:?}",
            manifest.format
        )));
    }
    if manifest.roots.len() > MAX_BUNDLE_ROOTS {
        return Err(BundleError::Malformed(format!(
            "more than {MAX_BUNDLE_ROOTS} roots"
        )));
    }
    let roots = manifest
        .roots
        .iter()
        .map(|r| envelope(&docs, r))
        .collect::<Result<Vec<_>, _>>()?;
    let assignment = envelope(&docs, &manifest.assignment)?;
    let release = envelope(&docs, &manifest.release)?;

    // Verify first (on a copy of the trust state): nothing is staged for a refused bundle.
    let mut trial = ctx.trust.clone();
    if !roots.is_empty() {
        trial
            .update_root(&roots)
            .map_err(|r| refused(ctx, &r, None))?;
    }
    let accepted = trial
        .evaluate(
            &ctx.site_id,
            &assignment,
            &release,
            jiff::Timestamp::now(),
            crate::daemon::AGENT_VERSION,
        )
        .map_err(|r| refused(ctx, &r, Some(&assignment)))?;

    let staging = ctx.config.staging_dir();
    let mut placed = Vec::new();
    for artifact in &accepted.release.artifacts {
        stage_artifact(
            path,
            &staging,
            &artifact.name,
            &artifact.sha256,
            artifact.length,
        )?;
        placed.push(artifact.name.clone());
    }
    match accept_documents(ctx, &roots, Some(&assignment), Some(&release))? {
        Accepting::Accepted {
            rollout_id,
            sequence,
            release_id,
        } => Ok(Imported {
            rollout_id: Some(rollout_id),
            sequence: Some(sequence),
            release_id: Some(release_id),
            artifacts: placed,
            new_assignment: true,
        }),
        Accepting::Unchanged => Ok(Imported {
            rollout_id: Some(accepted.assignment.rollout_id.clone()),
            sequence: Some(accepted.assignment.sequence),
            release_id: Some(accepted.release.id.clone()),
            artifacts: placed,
            new_assignment: false,
        }),
        Accepting::NoAssignment => Err(BundleError::Malformed("no assignment".into())),
        Accepting::Refused { code, message } => Err(BundleError::Refused { code, message }),
    }
}

fn refused(
    ctx: &Context,
    refusal: &fleetwave_shared::Refusal,
    assignment: Option<&Envelope>,
) -> BundleError {
    if let Err(e) = ctx.refuse(refusal, assignment) {
        tracing::error!("cannot queue the refusal report: {e}");
    }
    BundleError::Refused {
        code: refusal.code().to_string(),
        message: refusal.to_string(),
    }
}

/// Second pass: copies `artifacts/<sha256>` to the staging directory, checking length and
/// SHA-256 while copying; the file appears under its final name only when both match.
fn stage_artifact(
    bundle: &Path,
    staging: &Path,
    name: &str,
    sha256: &str,
    length: u64,
) -> Result<PathBuf, BundleError> {
    let fail = |message: String| BundleError::Artifact {
        name: name.to_string(),
        sha256: sha256.to_string(),
        message,
    };
    let target = staged_path(staging, sha256);
    if target.exists() {
        // Staged before (a previous import or download); the executor checks it again.
        return Ok(target);
    }
    let dir = target
        .parent()
        .expect("staged path has a parent")
        .to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|e| BundleError::Write {
        path: dir.display().to_string(),
        message: e.to_string(),
    })?;
    let wanted = format!("artifacts/{sha256}");
    let mut archive = open(bundle)?;
    let entries = archive
        .entries()
        .map_err(|e| BundleError::Malformed(format!("not a tar file: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| BundleError::Malformed(format!("bad tar entry: {e}")))?;
        if entry_name(&entry).as_deref() != Some(wanted.as_str()) {
            continue;
        }
        if entry.header().size().unwrap_or(u64::MAX) != length {
            return Err(fail(format!(
                "is {} bytes in the bundle, the signed length is {length}",
                entry.header().size().unwrap_or(0)
            )));
        }
        let tmp = dir.join(format!("{sha256}.import"));
        let write_err = |e: std::io::Error| BundleError::Write {
            path: tmp.display().to_string(),
            message: e.to_string(),
        };
        let mut out = std::fs::File::create(&tmp).map_err(write_err)?;
        let mut hasher = Sha256::new();
        let mut reader = entry.take(length + 1);
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(|e| fail(e.to_string()))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(write_err)?;
        }
        out.sync_all().map_err(write_err)?;
        let got = hex::encode(hasher.finalize());
        if total != length || got != sha256 {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail(format!(
                "content does not match the signed release (length {total}, sha256 {got})"
            )));
        }
        std::fs::rename(&tmp, &target).map_err(write_err)?;
        return Ok(target);
    }
    Err(fail(format!("{wanted} is not in the bundle")))
}
