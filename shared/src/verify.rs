//! Verification of signed documents against the fleet's root of trust.
//!
//! [`Verified<T>`] can only be built here, after the envelope's signatures met the role's
//! threshold and the payload parsed from the verified bytes. Pure logic: no I/O, and the
//! current time is always an argument.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use jiff::Timestamp;
use serde::de::DeserializeOwned;

use crate::docs::{
    ASSIGNMENT_TYPE, Assignment, RELEASE_TYPE, ROOT_TYPE, Release, Role, RoleKeys, Root,
};
use crate::dsse::{Envelope, EnvelopeError, KeyRing};
use crate::keys::KeyId;

/// Which kind of document a refusal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocKind {
    Root,
    Release,
    Assignment,
}

impl fmt::Display for DocKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DocKind::Root => "root",
            DocKind::Release => "release",
            DocKind::Assignment => "assignment",
        })
    }
}

/// Why a document (or an install decision) was refused. Each variant has a stable
/// [`Refusal::code`] that agents report to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{doc} envelope refused: {source}")]
    Envelope {
        doc: DocKind,
        #[source]
        source: EnvelopeError,
    },
    #[error("{doc} envelope not signed by enough {role} keys: {source}")]
    Signature {
        doc: DocKind,
        role: Role,
        #[source]
        source: EnvelopeError,
    },
    #[error("{doc} payload is signed but not a valid {doc} document: {message}")]
    Payload { doc: DocKind, message: String },
    #[error("root document version {version} is invalid: {message}")]
    InvalidRoot { version: u64, message: String },
    #[error("{doc} {id} expired at {expires} (trusted time is {now})")]
    Expired {
        doc: DocKind,
        id: String,
        expires: Timestamp,
        now: Timestamp,
    },
    #[error(
        "rollback to release {id} refused: it expired at {expires} (trusted time is {now}) and \
         this site never committed it; after its expiry a release can only be gone back to by \
         a site that ran it before"
    )]
    ExpiredRollback {
        id: String,
        expires: Timestamp,
        now: Timestamp,
    },
    #[error(
        "root version {version} expired at {expires} (trusted time is {now}); a newer root is needed"
    )]
    RootExpired {
        version: u64,
        expires: Timestamp,
        now: Timestamp,
    },
    #[error(
        "root version {got} cannot follow version {current}: versions must increase by exactly one"
    )]
    RootVersion { current: u64, got: u64 },
    #[error("assignment is for site {got:?}, this is site {expected:?}")]
    WrongSite { expected: String, got: String },
    #[error("assignment references release envelope {expected}, but the release offered is {got}")]
    ReleaseMismatch { expected: String, got: String },
    #[error(
        "release {id} has counter {counter}, below the high-water mark {high_water} of stream {stream:?}; only an explicit rollback assignment may go back"
    )]
    Rollback {
        id: String,
        stream: String,
        counter: u64,
        high_water: u64,
    },
    #[error(
        "rollback to release {id} (counter {counter}) goes below the previous release of stream {stream:?} (counter {floor})"
    )]
    RollbackTooFar {
        id: String,
        stream: String,
        counter: u64,
        floor: u64,
    },
    #[error("assignment sequence {sequence} is a replay: sequence {last} was already seen")]
    Replay { sequence: u64, last: u64 },
    #[error("release {id} needs agent version {required} or newer; this agent is {have}")]
    AgentTooOld {
        id: String,
        required: String,
        have: String,
    },
}

impl Refusal {
    /// A stable machine-readable code for reports and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Envelope { .. } => "bad_envelope",
            Refusal::Signature { .. } => "threshold_not_met",
            Refusal::Payload { .. } => "bad_payload",
            Refusal::InvalidRoot { .. } => "invalid_root",
            Refusal::Expired { .. } | Refusal::ExpiredRollback { .. } => "expired",
            Refusal::RootExpired { .. } => "root_expired",
            Refusal::RootVersion { .. } => "root_version",
            Refusal::WrongSite { .. } => "wrong_site",
            Refusal::ReleaseMismatch { .. } => "release_mismatch",
            Refusal::Rollback { .. } => "rollback",
            Refusal::RollbackTooFar { .. } => "rollback_too_far",
            Refusal::Replay { .. } => "replay",
            Refusal::AgentTooOld { .. } => "agent_too_old",
        }
    }
}

/// A document whose envelope verified against the trusted keys of its role. Only this
/// module constructs it. It keeps the envelope it came from, to store or forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified<T> {
    doc: T,
    envelope: Envelope,
    digest: String,
}

impl<T> Verified<T> {
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// [`Envelope::digest`] of the envelope this document came from.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn into_inner(self) -> T {
        self.doc
    }
}

impl<T> std::ops::Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.doc
    }
}

fn parse<T: DeserializeOwned>(doc: DocKind, bytes: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(bytes).map_err(|e| Refusal::Payload {
        doc,
        message: e.to_string(),
    })
}

fn envelope_payload_type(doc: DocKind) -> &'static str {
    match doc {
        DocKind::Root => ROOT_TYPE,
        DocKind::Release => RELEASE_TYPE,
        DocKind::Assignment => ASSIGNMENT_TYPE,
    }
}

/// The key ring of one role of `root`.
fn role_ring(root: &Root, role: &RoleKeys) -> KeyRing {
    let mut ring = KeyRing::new();
    for keyid in &role.keyids {
        if let Some(key) = root.keys.get(keyid).and_then(|k| k.to_key().ok()) {
            ring.insert(keyid.clone(), key);
        }
    }
    ring
}

fn verify_with_role(
    doc: DocKind,
    envelope: &Envelope,
    root: &Root,
    role: Role,
) -> Result<Vec<u8>, Refusal> {
    let keys = root.roles.get(role);
    envelope
        .verify(
            envelope_payload_type(doc),
            &role_ring(root, keys),
            keys.threshold,
        )
        .map_err(|source| match source {
            EnvelopeError::ThresholdNotMet { .. } | EnvelopeError::InvalidThreshold => {
                Refusal::Signature { doc, role, source }
            }
            source => Refusal::Envelope { doc, source },
        })
}

/// Checks a root document's structure: thresholds at least one and reachable, every key id
/// known and equal to its key's SHA-256, no weak keys.
pub fn check_root_structure(root: &Root) -> Result<(), Refusal> {
    let invalid = |message: String| Refusal::InvalidRoot {
        version: root.version,
        message,
    };
    if root.version == 0 {
        return Err(invalid("version must start at 1".into()));
    }
    // First: one key under one key id only, so that no key can count twice.
    let mut distinct = std::collections::BTreeMap::new();
    let mut parsed_keys = Vec::with_capacity(root.keys.len());
    for (keyid, key) in &root.keys {
        // The map key is the id; a `keyid` inside the entry, if present, must agree.
        let mut entry = key.clone();
        entry.keyid = None;
        let parsed = entry
            .to_key()
            .map_err(|e| invalid(format!("keys.{keyid}: {e}")))?;
        if let Some(other) = distinct.insert(crate::keys::canonical_bytes(&parsed), keyid) {
            return Err(invalid(format!(
                "keys.{keyid}: the same public key is also listed as keys.{other}; \
                 a key may appear under one key id only"
            )));
        }
        parsed_keys.push((keyid, key, parsed));
    }
    for (keyid, key, parsed) in parsed_keys {
        let actual = KeyId::of(&parsed).0;
        if *keyid != actual || key.keyid.as_ref().is_some_and(|inner| *inner != actual) {
            return Err(invalid(format!(
                "keys.{keyid}: key id does not match the key, whose id is {actual}"
            )));
        }
    }
    for role in [Role::Root, Role::Release, Role::Coordinator] {
        let keys = root.roles.get(role);
        if keys.threshold == 0 {
            return Err(invalid(format!(
                "roles.{role}.threshold must be at least 1"
            )));
        }
        let mut known: BTreeSet<&String> = BTreeSet::new();
        if let Some(dup) = keys.keyids.iter().find(|id| !known.insert(*id)) {
            return Err(invalid(format!(
                "roles.{role}.keyids lists {dup} twice; each key counts once"
            )));
        }
        if let Some(missing) = keys.keyids.iter().find(|id| !root.keys.contains_key(*id)) {
            return Err(invalid(format!(
                "roles.{role}.keyids lists {missing}, which is not in keys"
            )));
        }
        if known.len() < keys.threshold {
            return Err(invalid(format!(
                "roles.{role}.threshold is {} but only {} distinct keys are listed",
                keys.threshold,
                known.len()
            )));
        }
    }
    Ok(())
}

/// Verifies a root document signed by a threshold of its own root keys. This is how a
/// trust anchor installed out of band (a file shipped with the agent) is checked.
pub fn verify_root_anchor(envelope: &Envelope) -> Result<Verified<Root>, Refusal> {
    // A self-signed root names its own keys, so they are only known after reading the
    // payload: read the candidate keys, verify with them, then parse again from the verified
    // bytes so that nothing unverified is ever returned.
    let bytes = base64_payload(envelope)?;
    let candidate: Root = parse(DocKind::Root, &bytes)?;
    check_root_structure(&candidate)?;
    let verified_bytes = verify_with_role(DocKind::Root, envelope, &candidate, Role::Root)?;
    let root: Root = parse(DocKind::Root, &verified_bytes)?;
    Ok(Verified {
        digest: envelope.digest(),
        doc: root,
        envelope: envelope.clone(),
    })
}

fn base64_payload(envelope: &Envelope) -> Result<Vec<u8>, Refusal> {
    use base64::Engine as _;
    if envelope.payload_type != ROOT_TYPE {
        return Err(Refusal::Envelope {
            doc: DocKind::Root,
            source: EnvelopeError::WrongPayloadType {
                expected: ROOT_TYPE.into(),
                got: envelope.payload_type.clone(),
            },
        });
    }
    if envelope.payload.len() > crate::dsse::MAX_ENVELOPE_BYTES {
        return Err(Refusal::Envelope {
            doc: DocKind::Root,
            source: EnvelopeError::TooLarge {
                size: envelope.payload.len(),
                limit: crate::dsse::MAX_ENVELOPE_BYTES,
            },
        });
    }
    base64::engine::general_purpose::STANDARD
        .decode(&envelope.payload)
        .map_err(|_| Refusal::Envelope {
            doc: DocKind::Root,
            source: EnvelopeError::BadPayloadEncoding,
        })
}

/// Verifies root version N+1 against the trusted version N: it must be signed by a
/// threshold of N's root keys *and* of its own root keys, and its version must be N+1.
pub fn verify_root_rotation(
    current: &Verified<Root>,
    next: &Envelope,
) -> Result<Verified<Root>, Refusal> {
    // First the old keys: an attacker's document is refused before its contents matter.
    verify_with_role(DocKind::Root, next, current, Role::Root)?;
    let rotated = verify_root_anchor(next)?;
    if rotated.version != current.version + 1 {
        return Err(Refusal::RootVersion {
            current: current.version,
            got: rotated.version,
        });
    }
    Ok(rotated)
}

/// Verifies a release envelope against the root's release role, and its expiry.
pub fn verify_release(
    root: &Verified<Root>,
    envelope: &Envelope,
    now: Timestamp,
) -> Result<Verified<Release>, Refusal> {
    verify_release_expiring(root, envelope, now, Expiry::Enforced)
}

/// How [`verify_release_expiring`] treats a release past its `expires`.
#[derive(Debug, Clone, Copy)]
enum Expiry<'a> {
    /// Refused (`expired`): every new install, every stateless check.
    Enforced,
    /// An explicit rollback: accepted when the site committed this very envelope before,
    /// refused as [`Refusal::ExpiredRollback`] otherwise.
    Rollback(RanBefore<'a>),
}

fn verify_release_expiring(
    root: &Verified<Root>,
    envelope: &Envelope,
    now: Timestamp,
    expiry: Expiry<'_>,
) -> Result<Verified<Release>, Refusal> {
    let bytes = verify_with_role(DocKind::Release, envelope, root, Role::Release)?;
    let release: Release = parse(DocKind::Release, &bytes)?;
    check_release(&release)?;
    let digest = envelope.digest();
    if release.expires <= now {
        match expiry {
            Expiry::Rollback(ran) if ran.contains(&release.name, &digest) => {}
            Expiry::Rollback(_) => {
                return Err(Refusal::ExpiredRollback {
                    id: release.id.clone(),
                    expires: release.expires,
                    now,
                });
            }
            Expiry::Enforced => {
                return Err(Refusal::Expired {
                    doc: DocKind::Release,
                    id: release.id.clone(),
                    expires: release.expires,
                    now,
                });
            }
        }
    }
    Ok(Verified {
        digest,
        doc: release,
        envelope: envelope.clone(),
    })
}

/// Checks a release document's fields: non-empty id, name and version, artifact SHA-256s
/// in lowercase hex, artifact names that are plain file names. The CLI runs it before
/// signing; [`verify_release`] runs it on every verified release.
pub fn check_release(release: &Release) -> Result<(), Refusal> {
    let bad = |message: String| Refusal::Payload {
        doc: DocKind::Release,
        message,
    };
    if release.id.is_empty() || release.name.is_empty() || release.version.is_empty() {
        return Err(bad("id, name and version must not be empty".into()));
    }
    for (i, artifact) in release.artifacts.iter().enumerate() {
        let hex_ok = artifact.sha256.len() == 64
            && artifact
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex_ok {
            return Err(bad(format!(
                "artifacts[{i}].sha256 must be 64 lowercase hex characters"
            )));
        }
        if artifact.name.is_empty()
            || artifact.name.contains('/')
            || artifact.name.contains('\\')
            || artifact.name == ".."
            || artifact.name == "."
        {
            return Err(bad(format!(
                "artifacts[{i}].name {:?} must be a plain file name",
                artifact.name
            )));
        }
    }
    Ok(())
}

/// Verifies an assignment envelope against the root's coordinator role, and its expiry.
pub fn verify_assignment(
    root: &Verified<Root>,
    envelope: &Envelope,
    now: Timestamp,
) -> Result<Verified<Assignment>, Refusal> {
    let bytes = verify_with_role(DocKind::Assignment, envelope, root, Role::Coordinator)?;
    let assignment: Assignment = parse(DocKind::Assignment, &bytes)?;
    if assignment.expires <= now {
        return Err(Refusal::Expired {
            doc: DocKind::Assignment,
            id: format!("{}#{}", assignment.rollout_id, assignment.sequence),
            expires: assignment.expires,
            now,
        });
    }
    Ok(Verified {
        digest: envelope.digest(),
        doc: assignment,
        envelope: envelope.clone(),
    })
}

/// The releases a site committed before, by the SHA-256 of their envelopes, per release
/// stream: the releases an explicit rollback may go back to after they expired.
///
/// Expiry limits *new* installs. Going back to a release this site itself installed,
/// verified healthy and committed is allowed past that release's `expires` (auto-rollback to
/// a release signed 90 days ago must work), with every other check kept.
#[derive(Debug, Clone, Copy, Default)]
pub struct RanBefore<'a> {
    by_stream: Option<&'a BTreeMap<String, Vec<String>>>,
}

impl<'a> RanBefore<'a> {
    /// No release ran before: every expired release is refused.
    pub fn none() -> RanBefore<'static> {
        RanBefore { by_stream: None }
    }

    /// Envelope SHA-256s of committed releases, per stream (release `name`).
    pub fn new(by_stream: &'a BTreeMap<String, Vec<String>>) -> RanBefore<'a> {
        RanBefore {
            by_stream: Some(by_stream),
        }
    }

    /// Whether the release envelope `digest` of `stream` was committed before.
    pub fn contains(&self, stream: &str, digest: &str) -> bool {
        self.by_stream
            .and_then(|m| m.get(stream))
            .is_some_and(|digests| digests.iter().any(|d| d == digest))
    }
}

/// Verifies an assignment and the release it names, as one pair: the assignment against
/// the coordinator role, then (when `site_id` is given) that it names this site, then the
/// release against the release role, then that the assignment names exactly this release
/// envelope by its SHA-256. Expiry is checked at `now` for both. Stateful checks (replay,
/// release counter) are [`crate::TrustState::evaluate`]'s.
pub fn verify_assigned_release(
    root: &Verified<Root>,
    assignment: &Envelope,
    release: &Envelope,
    now: Timestamp,
    site_id: Option<&str>,
) -> Result<(Verified<Assignment>, Verified<Release>), Refusal> {
    verify_assigned_release_ran_before(root, assignment, release, now, site_id, RanBefore::none())
}

/// [`verify_assigned_release`] for a site that remembers what it ran: an explicit rollback
/// assignment (`rollback = true`) may name a release past its `expires` when `ran_before`
/// holds that release envelope's SHA-256 for its stream. Every other check is the same,
/// and the assignment itself must not have expired. An expired release the site never ran
/// is refused ([`Refusal::ExpiredRollback`], code `expired`).
pub fn verify_assigned_release_ran_before(
    root: &Verified<Root>,
    assignment: &Envelope,
    release: &Envelope,
    now: Timestamp,
    site_id: Option<&str>,
    ran_before: RanBefore<'_>,
) -> Result<(Verified<Assignment>, Verified<Release>), Refusal> {
    let assignment = verify_assignment(root, assignment, now)?;
    if let Some(site_id) = site_id
        && assignment.site_id != site_id
    {
        return Err(Refusal::WrongSite {
            expected: site_id.to_string(),
            got: assignment.site_id.clone(),
        });
    }
    let expiry = if assignment.rollback {
        Expiry::Rollback(ran_before)
    } else {
        Expiry::Enforced
    };
    let release = verify_release_expiring(root, release, now, expiry)?;
    if release.digest() != assignment.release_sha256 {
        return Err(Refusal::ReleaseMismatch {
            expected: assignment.release_sha256.clone(),
            got: release.digest().to_string(),
        });
    }
    Ok((assignment, release))
}
