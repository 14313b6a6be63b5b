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
//!
//! A bundle is read in two passes over the (decompressed) tar stream, each through
//! [`walk`], which reads tar headers raw and decides on each before the tar reader reads
//! what it announces: GNU long names and PAX headers are bounded ([`MAX_ENTRY_NAME_BYTES`],
//! [`MAX_EXTENSION_BYTES`]); links, devices, sparse files and names that leave the bundle
//! (`/…`, `..`) are refused; a name may appear once; at most [`MAX_BUNDLE_ENTRIES`] headers.
//! The first pass reads the JSON documents (each at most [`MAX_ENVELOPE_BYTES`]) and stops as
//! soon as the manifest and every document it names are read, within
//! [`MAX_BUNDLE_BYTES`] of unpacked stream. The documents are verified before the second
//! pass copies the artifacts, which may unpack no more than the signed artifact lengths plus
//! [`MAX_BUNDLE_OVERHEAD_BYTES`]. This module must never allocate on a size the file
//! announces without a cap, nor stage a byte of an unverified release.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write as _};
use std::path::{Component, Path};
use std::rc::Rc;

use fleetwave_shared::Envelope;
use fleetwave_shared::dsse::MAX_ENVELOPE_BYTES;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::daemon::{Accepting, Context, accept_documents};
use crate::executor::download::staged_path;
use crate::state::StateError;

pub use fleetwave_shared::protocol::bundle::{BUNDLE_FORMAT, Manifest};
/// Most root envelopes a bundle may carry.
pub const MAX_BUNDLE_ROOTS: usize = 64;
/// Most tar headers (files, directories, long names, PAX headers) in a bundle.
pub const MAX_BUNDLE_ENTRIES: usize = 4096;
/// Longest entry name, GNU long names included.
pub const MAX_ENTRY_NAME_BYTES: u64 = 4096;
/// Largest PAX extended header (`x` or `g`).
pub const MAX_EXTENSION_BYTES: u64 = 64 * 1024;
/// Most bytes of unpacked tar stream read before the release is verified (16 GiB).
pub const MAX_BUNDLE_BYTES: u64 = 16 * 1024 * 1024 * 1024;
/// Once the release is verified: most unpacked bytes beyond its signed artifact lengths
/// (documents, headers, padding, files the agent ignores) (256 MiB).
pub const MAX_BUNDLE_OVERHEAD_BYTES: u64 = 256 * 1024 * 1024;

/// Every document of the manifest `site_id` needs, as entry names: the roots, its
/// assignment, the release.
fn documents<'a>(m: &'a Manifest, site_id: &str) -> impl Iterator<Item = &'a str> {
    m.roots
        .iter()
        .map(String::as_str)
        .chain(m.assignment_for(site_id))
        .chain([m.release.as_str()])
        .map(|n| n.trim_start_matches("./"))
}

/// Why a bundle was not imported.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read bundle {path}: {message}")]
    Read { path: String, message: String },
    #[error("bundle is malformed: {0}")]
    Malformed(String),
    /// The bundle asks for more than the limits allow, or holds an entry that is not a
    /// plain file (a link, a device) or whose name leaves the bundle. Nothing was read past
    /// the header at fault.
    #[error("bundle refused: {0}")]
    Unsafe(String),
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

/// A reader that fails once more than `limit` bytes were asked of it, and says so in
/// `exceeded` (the tar reader may wrap the error in its own).
struct Capped<R> {
    inner: R,
    left: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // At the cap: only the end of the stream is still fine.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.exceeded.set(true);
            return Err(std::io::Error::other("the bundle's unpacked size limit"));
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Opens the bundle (gzip-compressed or not) for reading at most `limit` unpacked bytes.
fn open(path: &Path, limit: u64) -> Result<Capped<Box<dyn Read>>, BundleError> {
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
    Ok(Capped {
        inner: reader,
        left: limit,
        exceeded: Rc::new(Cell::new(false)),
    })
}

/// Whether [`walk`] goes on after a file.
enum Walk {
    Next,
    Stop,
}

/// The name an entry's GNU long name or PAX header gave it, waiting for the entry.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    pax_path: Option<Vec<u8>>,
    pax_size: Option<u64>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.pax_path.is_none() && self.pax_size.is_none()
    }
}

/// Reads an extension entry's content, which the caller bounded by `limit` already.
fn read_extension(
    entry: &mut impl Read,
    size: u64,
    what: &str,
    limit: u64,
) -> Result<Vec<u8>, BundleError> {
    if size > limit {
        return Err(BundleError::Unsafe(format!(
            "{what} of {size} bytes is over the {limit}-byte limit"
        )));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    entry
        .take(size)
        .read_to_end(&mut bytes)
        .map_err(|e| BundleError::Malformed(format!("{what}: {e}")))?;
    Ok(bytes)
}

/// The entry name to look up: UTF-8, relative, never leaving the bundle (`..`), without a
/// leading `./`.
fn entry_name(raw: &[u8]) -> Result<String, BundleError> {
    let raw = raw.split(|b| *b == 0).next().unwrap_or_default();
    let name = std::str::from_utf8(raw).map_err(|_| {
        BundleError::Malformed(format!(
            "entry name {:?} is not UTF-8",
            String::from_utf8_lossy(raw)
        ))
    })?;
    let path = Path::new(name);
    if name.is_empty()
        || path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(BundleError::Unsafe(format!(
            "entry {name:?} leaves the bundle (an absolute name or `..`)"
        )));
    }
    Ok(name
        .trim_start_matches("./")
        .trim_end_matches('/')
        .to_string())
}

/// Walks the bundle's tar stream, reading at most `limit` unpacked bytes, and calls
/// `visit(name, size, content)` for each regular file. Every header is checked before the
/// tar reader reads anything it announces (see the module documentation).
fn walk(
    path: &Path,
    limit: u64,
    mut visit: impl FnMut(&str, u64, &mut dyn Read) -> Result<Walk, BundleError>,
) -> Result<(), BundleError> {
    let reader = open(path, limit)?;
    let exceeded = reader.exceeded.clone();
    let over = || {
        BundleError::Unsafe(format!(
            "its unpacked content is over the {limit}-byte limit for this pass"
        ))
    };
    let mut archive = tar::Archive::new(reader);
    // Raw: the tar reader would read a GNU long name or a PAX header into memory whole,
    // whatever size it announces; here each is checked first.
    let entries = archive
        .entries()
        .map_err(|e| BundleError::Malformed(format!("not a tar file: {e}")))?
        .raw(true);
    let mut pending = Pending::default();
    let mut seen = BTreeSet::new();
    for (index, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| {
            if exceeded.get() {
                over()
            } else {
                BundleError::Malformed(format!("bad tar entry: {e}"))
            }
        })?;
        if index >= MAX_BUNDLE_ENTRIES {
            return Err(BundleError::Unsafe(format!(
                "more than {MAX_BUNDLE_ENTRIES} tar entries"
            )));
        }
        let header = entry.header();
        let kind = header.entry_type();
        let size = header
            .entry_size()
            .map_err(|e| BundleError::Malformed(format!("tar entry {index}: size: {e}")))?;
        let header_name = header.path_bytes().into_owned();
        let result = match kind {
            tar::EntryType::GNULongName => {
                if pending.long_name.is_some() {
                    return Err(BundleError::Malformed(format!(
                        "tar entry {index}: two GNU long names for one entry"
                    )));
                }
                let name = read_extension(
                    &mut entry,
                    size,
                    &format!("tar entry {index}: a GNU long name"),
                    MAX_ENTRY_NAME_BYTES,
                )?;
                pending.long_name = Some(name);
                Ok(Walk::Next)
            }
            tar::EntryType::XHeader => {
                if pending.pax_path.is_some() || pending.pax_size.is_some() {
                    return Err(BundleError::Malformed(format!(
                        "tar entry {index}: two PAX headers for one entry"
                    )));
                }
                let what = format!("tar entry {index}: a PAX header");
                let bytes = read_extension(&mut entry, size, &what, MAX_EXTENSION_BYTES)?;
                for ext in tar::PaxExtensions::new(&bytes) {
                    let ext = ext.map_err(|e| BundleError::Malformed(format!("{what}: {e}")))?;
                    match ext.key() {
                        Ok("path") => {
                            if ext.value_bytes().len() as u64 > MAX_ENTRY_NAME_BYTES {
                                return Err(BundleError::Unsafe(format!(
                                    "{what}: a path of {} bytes is over the \
                                     {MAX_ENTRY_NAME_BYTES}-byte limit",
                                    ext.value_bytes().len()
                                )));
                            }
                            pending.pax_path = Some(ext.value_bytes().to_vec());
                        }
                        Ok("size") => {
                            let value = ext.value().ok().and_then(|v| v.parse().ok());
                            pending.pax_size = Some(value.ok_or_else(|| {
                                BundleError::Malformed(format!("{what}: a size that is no number"))
                            })?);
                        }
                        Ok("linkpath") => {
                            return Err(BundleError::Unsafe(format!(
                                "{what} names a link target: a bundle holds regular files only"
                            )));
                        }
                        _ => {}
                    }
                }
                Ok(Walk::Next)
            }
            tar::EntryType::XGlobalHeader => {
                let what = format!("tar entry {index}: a PAX global header");
                read_extension(&mut entry, size, &what, MAX_EXTENSION_BYTES)?;
                Ok(Walk::Next)
            }
            tar::EntryType::Regular | tar::EntryType::Directory => {
                let raw = pending
                    .long_name
                    .take()
                    .or(pending.pax_path.take())
                    .unwrap_or(header_name);
                let name = entry_name(&raw)?;
                if let Some(pax_size) = pending.pax_size.take()
                    && pax_size != size
                {
                    return Err(BundleError::Unsafe(format!(
                        "entry {name:?}: its PAX size {pax_size} differs from its header's {size}"
                    )));
                }
                if kind.is_dir() {
                    Ok(Walk::Next)
                } else if !seen.insert(name.clone()) {
                    Err(BundleError::Unsafe(format!(
                        "entry {name:?} appears twice: which one counts would be ambiguous"
                    )))
                } else {
                    visit(&name, size, &mut entry)
                }
            }
            other => {
                let raw = pending.long_name.take().unwrap_or(header_name);
                let name = String::from_utf8_lossy(&raw).into_owned();
                Err(BundleError::Unsafe(format!(
                    "entry {name:?} is a {}: a bundle holds regular files and directories only \
                     (no links, devices, fifos or sparse files)",
                    kind_word(other)
                )))
            }
        };
        match result {
            _ if exceeded.get() => return Err(over()),
            Ok(Walk::Next) => {}
            Ok(Walk::Stop) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    if exceeded.get() {
        return Err(over());
    }
    if !pending.is_empty() {
        return Err(BundleError::Malformed(
            "a GNU long name or PAX header is not followed by an entry".into(),
        ));
    }
    Ok(())
}

fn kind_word(kind: tar::EntryType) -> String {
    match kind {
        tar::EntryType::Symlink => "symbolic link".into(),
        tar::EntryType::Link => "hard link".into(),
        tar::EntryType::GNULongLink => "GNU long link name".into(),
        tar::EntryType::Char => "character device".into(),
        tar::EntryType::Block => "block device".into(),
        tar::EntryType::Fifo => "fifo".into(),
        tar::EntryType::GNUSparse => "sparse file".into(),
        tar::EntryType::Continuous => "contiguous file".into(),
        other => format!("tar entry of type {:?}", other.as_byte() as char),
    }
}

/// First pass: the JSON documents, each capped at the envelope limit. Stops as soon as the
/// manifest and every document it names are read: when they come first in the file (as
/// they should), the artifacts are not read before the documents are verified.
///
/// In a bundle for several sites, once the manifest is read, the other sites'
/// assignments are passed over unread.
fn read_documents(path: &Path, site_id: &str) -> Result<BTreeMap<String, Vec<u8>>, BundleError> {
    let mut docs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut needed: Option<Vec<String>> = None;
    walk(path, MAX_BUNDLE_BYTES, |name, size, content| {
        if !name.ends_with(".json")
            || needed
                .as_ref()
                .is_some_and(|n: &Vec<String>| !n.iter().any(|d| d == name))
        {
            return Ok(Walk::Next);
        }
        if docs.len() >= MAX_BUNDLE_ROOTS + 3 {
            return Err(BundleError::Unsafe(format!(
                "more than {} JSON documents (a manifest, an assignment, a release and at \
                 most {MAX_BUNDLE_ROOTS} roots)",
                MAX_BUNDLE_ROOTS + 3
            )));
        }
        if size > MAX_ENVELOPE_BYTES as u64 {
            return Err(BundleError::Unsafe(format!(
                "{name} is {size} bytes, over the {MAX_ENVELOPE_BYTES}-byte limit on a document"
            )));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        content
            .take(size)
            .read_to_end(&mut bytes)
            .map_err(|e| BundleError::Malformed(format!("{name}: {e}")))?;
        if name == "manifest.json" {
            needed = serde_json::from_slice::<Manifest>(&bytes)
                .ok()
                .map(|m| documents(&m, site_id).map(str::to_string).collect());
        }
        docs.insert(name.to_string(), bytes);
        let complete = docs.contains_key("manifest.json")
            && needed
                .as_ref()
                .is_some_and(|n| n.iter().all(|d| docs.contains_key(d)));
        Ok(if complete { Walk::Stop } else { Walk::Next })
    })?;
    Ok(docs)
}

/// The entry name of `site_id`'s assignment: the manifest names either one `assignment`
/// (a bundle for one site) or `assignments` by site; a bundle for others is refused.
fn site_assignment<'a>(manifest: &'a Manifest, site_id: &str) -> Result<&'a str, BundleError> {
    // Exactly one of the two: a single `assignment`, or `assignments` by site.
    if manifest.assignment.is_some() != manifest.assignments.is_empty() {
        return Err(BundleError::Malformed(
            "manifest.json must name either one `assignment` or `assignments` by site".into(),
        ));
    }
    manifest
        .assignment_for(site_id)
        .ok_or_else(|| BundleError::Refused {
            code: "wrong_site".into(),
            message: format!(
                "the bundle carries no assignment for this site ({site_id}); it was exported \
                 for {} site(s): {}{}",
                manifest.assignments.len(),
                manifest
                    .assignments
                    .keys()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                if manifest.assignments.len() > 5 {
                    ", ..."
                } else {
                    ""
                }
            ),
        })
}

fn envelope(docs: &BTreeMap<String, Vec<u8>>, name: &str) -> Result<Envelope, BundleError> {
    let bytes = docs.get(name.trim_start_matches("./")).ok_or_else(|| {
        BundleError::Malformed(format!("manifest names {name}, which is not in the bundle"))
    })?;
    Envelope::from_json(bytes).map_err(|e| BundleError::Malformed(format!("{name}: {e}")))
}

/// Imports `path`: verifies, stages the artifacts, accepts the assignment.
pub fn import(ctx: &mut Context, path: &Path) -> Result<Imported, BundleError> {
    let docs = read_documents(path, &ctx.site_id)?;
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
    let assignment = envelope(&docs, site_assignment(&manifest, &ctx.site_id)?)?;
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
            ctx.clock.now(),
            crate::daemon::AGENT_VERSION,
        )
        .map_err(|r| refused(ctx, &r, Some(&assignment)))?;

    let staging = ctx.config.staging_dir();
    stage_artifacts(path, &staging, &accepted.release.artifacts)?;
    let placed = accepted
        .release
        .artifacts
        .iter()
        .map(|a| a.name.clone())
        .collect();
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

/// Second pass: copies each `artifacts/<sha256>` of the verified release to the staging
/// directory, checking its signed length on the header (before reading it) and length and
/// SHA-256 while copying; a file appears under its final name only when both match. Reads
/// at most the signed lengths plus [`MAX_BUNDLE_OVERHEAD_BYTES`] of unpacked stream, and
/// stops once every artifact is staged.
fn stage_artifacts(
    bundle: &Path,
    staging: &Path,
    artifacts: &[fleetwave_shared::Artifact],
) -> Result<(), BundleError> {
    // By entry name: (artifact name, signed SHA-256, signed length), only those not staged
    // before (a previous import or download; the executor checks them again).
    let mut wanted: BTreeMap<String, (&str, &str, u64)> = BTreeMap::new();
    for a in artifacts {
        if !staged_path(staging, &a.sha256).exists() {
            wanted.insert(
                format!("artifacts/{}", a.sha256),
                (&a.name, &a.sha256, a.length),
            );
        }
    }
    if wanted.is_empty() {
        return Ok(());
    }
    let limit = artifacts.iter().fold(MAX_BUNDLE_OVERHEAD_BYTES, |sum, a| {
        sum.saturating_add(a.length)
    });
    let dir = crate::executor::download::artifacts_dir(staging);
    std::fs::create_dir_all(&dir).map_err(|e| BundleError::Write {
        path: dir.display().to_string(),
        message: e.to_string(),
    })?;
    walk(bundle, limit, |name, size, content| {
        let Some((artifact, sha256, length)) = wanted.remove(name) else {
            return Ok(Walk::Next);
        };
        copy_artifact(&dir, artifact, sha256, length, size, content)?;
        std::fs::rename(
            dir.join(format!("{sha256}.import")),
            staged_path(staging, sha256),
        )
        .map_err(|e| BundleError::Write {
            path: staged_path(staging, sha256).display().to_string(),
            message: e.to_string(),
        })?;
        Ok(if wanted.is_empty() {
            Walk::Stop
        } else {
            Walk::Next
        })
    })?;
    match wanted.into_iter().next() {
        None => Ok(()),
        Some((entry, (name, sha256, _))) => Err(BundleError::Artifact {
            name: name.to_string(),
            sha256: sha256.to_string(),
            message: format!("{entry} is not in the bundle"),
        }),
    }
}

/// Copies one artifact entry to `<dir>/<sha256>.import`, checking the signed length before
/// reading and the length and SHA-256 while copying; removes the file on any failure.
fn copy_artifact(
    dir: &Path,
    name: &str,
    sha256: &str,
    length: u64,
    size: u64,
    content: &mut dyn Read,
) -> Result<(), BundleError> {
    let fail = |message: String| BundleError::Artifact {
        name: name.to_string(),
        sha256: sha256.to_string(),
        message,
    };
    if size != length {
        return Err(fail(format!(
            "is {size} bytes in the bundle, the signed length is {length}"
        )));
    }
    let tmp = dir.join(format!("{sha256}.import"));
    let write_err = |e: std::io::Error| BundleError::Write {
        path: tmp.display().to_string(),
        message: e.to_string(),
    };
    let copied = (|| {
        let mut out = std::fs::File::create(&tmp).map_err(write_err)?;
        let mut hasher = Sha256::new();
        let mut reader = content.take(length + 1);
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
            return Err(fail(format!(
                "content does not match the signed release (length {total}, sha256 {got})"
            )));
        }
        Ok(())
    })();
    if copied.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    copied
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use tar::{EntryType, Header};

    /// A header whose name is written as is (the tar builder refuses `..` and absolute
    /// names, which is exactly what these tests need to write).
    fn header(name: &str, kind: EntryType, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h
    }

    fn file(name: &str, bytes: &[u8]) -> (Header, Vec<u8>) {
        (
            header(name, EntryType::Regular, bytes.len() as u64),
            bytes.to_vec(),
        )
    }

    /// A plain tar of `entries`; a header may announce more than its data (nothing follows).
    fn bundle(dir: &Path, entries: Vec<(Header, Vec<u8>)>) -> PathBuf {
        let path = dir.join(format!("b{}.tar", std::fs::read_dir(dir).unwrap().count()));
        let mut tar = tar::Builder::new(std::fs::File::create(&path).unwrap());
        for (h, data) in entries {
            tar.append(&h, data.as_slice()).unwrap();
        }
        tar.into_inner().unwrap();
        path
    }

    fn documents() -> Vec<(Header, Vec<u8>)> {
        let manifest = serde_json::json!({
            "format": BUNDLE_FORMAT, "assignment": "assignment.json", "release": "release.json",
        });
        vec![
            file("manifest.json", manifest.to_string().as_bytes()),
            file("assignment.json", b"{}"),
            file("release.json", b"{}"),
        ]
    }

    fn refusal(result: Result<BTreeMap<String, Vec<u8>>, BundleError>) -> String {
        match result {
            Err(e @ BundleError::Unsafe(_)) => e.to_string(),
            other => panic!("expected an unsafe-bundle refusal, got {other:?}"),
        }
    }

    /// One PAX record, `"<length> <key>=<value>\n"`, its length counting itself.
    fn pax_record(key: &str, value: &str) -> String {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        format!("{len}{body}")
    }

    #[test]
    fn links_devices_and_names_leaving_the_bundle_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (entry, expected) in [
            (
                header("assignment.json", EntryType::Symlink, 0),
                "symbolic link",
            ),
            (header("release.json", EntryType::Link, 0), "hard link"),
            (header("manifest.json", EntryType::Fifo, 0), "fifo"),
            (header("dev.json", EntryType::Char, 0), "character device"),
            (
                header("sparse.json", EntryType::GNUSparse, 0),
                "sparse file",
            ),
            (
                header("../manifest.json", EntryType::Regular, 0),
                "leaves the bundle",
            ),
            (
                header("/etc/manifest.json", EntryType::Regular, 0),
                "leaves the bundle",
            ),
            (
                header("roots/../../x.json", EntryType::Regular, 0),
                "leaves the bundle",
            ),
            (
                header("../roots", EntryType::Directory, 0),
                "leaves the bundle",
            ),
        ] {
            let mut entries = vec![(entry, vec![])];
            entries.extend(documents());
            let message = refusal(read_documents(&bundle(dir.path(), entries), "s"));
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn long_names_and_pax_headers_over_their_limit_are_refused_before_they_are_read() {
        let dir = tempfile::tempdir().unwrap();
        // Headers only: each announces content that is not even there. What it announces
        // is refused on the header, before the tar reader would read (and allocate) it.
        for (entry, expected) in [
            (
                header("././@LongLink", EntryType::GNULongName, 1_000_000_000),
                "a GNU long name of 1000000000 bytes is over the 4096-byte limit",
            ),
            (
                header("pax", EntryType::XHeader, 1_000_000),
                "a PAX header of 1000000 bytes is over the 65536-byte limit",
            ),
            (
                header("pax", EntryType::XGlobalHeader, 1_000_000),
                "a PAX global header of 1000000 bytes is over the 65536-byte limit",
            ),
            (
                header("manifest.json", EntryType::Regular, 2 << 20),
                "manifest.json is 2097152 bytes, over the 1048576-byte limit on a document",
            ),
        ] {
            let message = refusal(read_documents(
                &bundle(dir.path(), vec![(entry, vec![])]),
                "s",
            ));
            assert!(message.contains(expected), "{message}");
        }
        // A PAX path over the name limit, and a PAX size that disagrees with the header.
        let long = pax_record("path", &"a".repeat(4097));
        let message = refusal(read_documents(
            &bundle(
                dir.path(),
                vec![(
                    header("pax", EntryType::XHeader, long.len() as u64),
                    long.into_bytes(),
                )],
            ),
            "s",
        ));
        assert!(message.contains("over the 4096-byte limit"), "{message}");
        let pax = pax_record("size", "99");
        let mut entries = vec![(
            header("pax", EntryType::XHeader, pax.len() as u64),
            pax.into_bytes(),
        )];
        entries.extend(documents());
        let message = refusal(read_documents(&bundle(dir.path(), entries), "s"));
        assert!(message.contains("PAX size 99 differs"), "{message}");
    }

    #[test]
    fn long_names_and_pax_paths_within_the_limits_name_their_entries() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("roots/{}.json", "r".repeat(200));
        let pax_name = format!("roots/{}.json", "p".repeat(150));
        let record = pax_record("path", &pax_name);
        let mut entries = vec![
            (
                header(
                    "././@LongLink",
                    EntryType::GNULongName,
                    long.len() as u64 + 1,
                ),
                format!("{long}\0").into_bytes(),
            ),
            file("ignored-short-name", b"{\"root\":1}"),
            (
                header("pax", EntryType::XHeader, record.len() as u64),
                record.into_bytes(),
            ),
            file("ignored-too", b"{\"root\":2}"),
            (header("roots", EntryType::Directory, 0), vec![]),
        ];
        entries.extend(documents());
        let docs = read_documents(&bundle(dir.path(), entries), "s").unwrap();
        assert_eq!(docs[&long], b"{\"root\":1}");
        assert_eq!(docs[&pax_name], b"{\"root\":2}");
        assert!(docs.contains_key("manifest.json"));
    }

    #[test]
    fn a_bundle_for_several_sites_gives_each_site_its_own_assignment_only() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = serde_json::json!({
            "format": BUNDLE_FORMAT, "release": "release.json",
            "assignments": {"s": "assignments/s.json", "t": "assignments/t.json"},
        });
        let entries = vec![
            file("manifest.json", manifest.to_string().as_bytes()),
            file("release.json", b"{}"),
            // Another site's assignment is passed over unread, even one over the limit.
            (
                header("assignments/t.json", EntryType::Regular, 2 << 20),
                vec![0u8; 2 << 20],
            ),
            file("assignments/s.json", b"{\"s\":1}"),
        ];
        let path = bundle(dir.path(), entries);
        let docs = read_documents(&path, "s").unwrap();
        assert_eq!(
            docs.keys().collect::<Vec<_>>(),
            ["assignments/s.json", "manifest.json", "release.json"]
        );
        let m: Manifest = serde_json::from_slice(&docs["manifest.json"]).unwrap();
        assert_eq!(site_assignment(&m, "s").unwrap(), "assignments/s.json");
        let refused = site_assignment(&m, "u").unwrap_err().to_string();
        assert!(
            refused.contains("wrong_site")
                && refused.contains("no assignment for this site (u)")
                && refused.contains("2 site(s): s, t"),
            "{refused}"
        );
        // One `assignment` (any site: the trust core checks the name), or both: malformed.
        let one: Manifest = serde_json::from_value(serde_json::json!({
            "format": BUNDLE_FORMAT, "release": "r.json", "assignment": "a.json",
        }))
        .unwrap();
        assert_eq!(site_assignment(&one, "u").unwrap(), "a.json");
        let both = Manifest {
            assignments: m.assignments.clone(),
            ..one.clone()
        };
        let neither = Manifest {
            assignment: None,
            ..one
        };
        for m in [both, neither] {
            assert!(matches!(
                site_assignment(&m, "s"),
                Err(BundleError::Malformed(_))
            ));
        }
    }

    #[test]
    fn an_entry_that_appears_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut entries = vec![file("assignment.json", b"{\"a\":1}")];
        entries.extend(documents());
        let message = refusal(read_documents(&bundle(dir.path(), entries), "s"));
        assert!(
            message.contains("\"assignment.json\" appears twice"),
            "{message}"
        );
    }

    #[test]
    fn too_many_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let entries = (0..=MAX_BUNDLE_ENTRIES)
            .map(|i| (header(&format!("d{i}"), EntryType::Directory, 0), vec![]))
            .collect();
        let message = refusal(read_documents(&bundle(dir.path(), entries), "s"));
        assert!(message.contains("more than 4096 tar entries"), "{message}");
    }

    #[test]
    fn the_unpacked_size_of_a_pass_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let mut entries = vec![file("notes.bin", &[7u8; 100 * 1024])];
        entries.extend(documents());
        let path = bundle(dir.path(), entries);
        let err = walk(&path, 64 * 1024, |_, _, _| Ok(Walk::Next)).unwrap_err();
        assert!(
            err.to_string()
                .contains("unpacked content is over the 65536-byte limit"),
            "{err}"
        );
        // Within the cap the same bundle reads.
        assert!(walk(&path, 1 << 20, |_, _, _| Ok(Walk::Next)).is_ok());
    }

    #[test]
    fn the_documents_are_read_before_anything_behind_them() {
        // Documents first, as bundles should be: the first pass stops once the manifest and
        // the documents it names are in, so what follows (here an entry that would be
        // refused) is not read before the documents are verified.
        let dir = tempfile::tempdir().unwrap();
        let mut entries = documents();
        entries.push((header("artifacts/x", EntryType::Symlink, 0), vec![]));
        let docs = read_documents(&bundle(dir.path(), entries), "s").unwrap();
        assert_eq!(docs.len(), 3);
    }
}
