//! The CLI's trust commands: `key generate`, `envelope sign|verify`, `root init|sign|verify`,
//! `release sign` and `verify`.
//!
//! All checking is done by `fleetwave_shared` (the same code the agent runs); this module
//! only reads and writes files and prints. It never talks to the network, never writes a
//! private key except in `key generate`, and never prints private key material.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Args;
use ed25519_dalek::{SigningKey, VerifyingKey};
use fleetwave_shared::docs::{RELEASE_TYPE, ROOT_TYPE, Release, Role, RoleKeys, Roles, Root};
use fleetwave_shared::dsse::{EnvelopeError, KeyRing, MAX_ENVELOPE_BYTES};
use fleetwave_shared::keys::{self, KeyId, PublicKeyFile};
use fleetwave_shared::verify::{
    DocKind, Verified, check_root_structure, verify_assigned_release, verify_release,
    verify_root_anchor, verify_root_rotation,
};
use fleetwave_shared::{Assignment, Envelope, Refusal, TrustState};
use jiff::Timestamp;
use serde::Serialize;

use crate::Refused;
use crate::manifest;

// ---------------------------------------------------------------------------------------
// key generate

pub const KEY_GENERATE_LONG_ABOUT: &str = "\
Generate an ed25519 key pair.

Writes PATH, the private key (created with mode 0600; never overwritten), and PATH.pub,
the public key in the securesystemslib/TUF form:

  {\"keytype\":\"ed25519\",\"scheme\":\"ed25519\",\"keyval\":{\"public\":\"<64 hex>\"},\"keyid\":\"<sha256 hex>\"}

The key id (the lowercase hex SHA-256 of the 32 raw public key bytes) is printed on stdout.
Generate root and release keys on an offline machine and keep the private files there (or
on removable media); only the .pub files travel.";

pub const KEY_GENERATE_EXAMPLES: &str = "\
Examples:
  fleetwave key generate --out /media/offline/root-alice.key
  fleetwave key generate --out release-bob.key    # prints the key id";

#[derive(Debug, Args)]
pub struct KeyGenerateArgs {
    /// Where to write the private key; the public key goes to PATH.pub. Neither may exist.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
}

pub fn key_generate(args: KeyGenerateArgs) -> Result<()> {
    let key = keys::generate();
    let public = keys::write_key_pair(&args.out, &key)?;
    let keyid = public
        .keyid
        .unwrap_or_else(|| KeyId::of(&key.verifying_key()).0);
    stdout_line(&keyid)?;
    eprintln!(
        "wrote {} (private key, mode 0600: keep it offline) and {}",
        args.out.display(),
        keys::public_path(&args.out).display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// envelope sign / verify

pub const ENVELOPE_SIGN_LONG_ABOUT: &str = "\
Sign FILE as a DSSE v1 envelope and print the envelope JSON on stdout.

Each --key adds one signature over PAE(TYPE, FILE's bytes):
  \"DSSEv1\" SP LEN(TYPE) SP TYPE SP LEN(body) SP body
FILE may be - for standard input. For fleetwave's own documents prefer `root sign` and
`release sign`, which check the document before signing it.";

pub const ENVELOPE_SIGN_EXAMPLES: &str = "\
Examples:
  fleetwave envelope sign --key alice.key --payload-type application/vnd.example+json doc.json
  fleetwave envelope sign --key alice.key --key bob.key --payload-type text/plain notes.txt > notes.envelope.json";

#[derive(Debug, Args)]
pub struct EnvelopeSignArgs {
    /// A private key file (from `key generate`); repeat for more signatures.
    #[arg(long = "key", value_name = "PATH", required = true)]
    pub keys: Vec<PathBuf>,
    /// The payload type the signature binds (e.g. application/vnd.fleetwave.release+json).
    #[arg(long, value_name = "TYPE")]
    pub payload_type: String,
    /// The payload to sign, or - for standard input.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

pub fn envelope_sign(args: EnvelopeSignArgs) -> Result<()> {
    let payload = read_input(&args.file)?;
    let keys = read_signing_keys(&args.keys)?;
    let refs: Vec<&SigningKey> = keys.iter().collect();
    let envelope = Envelope::sign(&args.payload_type, &payload, &refs);
    check_size(&envelope)?;
    stdout_json(&envelope)
}

pub const ENVELOPE_VERIFY_LONG_ABOUT: &str = "\
Verify a DSSE envelope and print its payload bytes on stdout.

Succeeds (exit 0) when at least --threshold distinct keys among the given public keys made
valid signatures over PAE(TYPE, payload) (ed25519, strict verification). A key counts once
however many signatures it made; signatures by other keys are ignored. Otherwise exits 1
with a one-line reason on stderr and prints nothing on stdout.";

pub const ENVELOPE_VERIFY_EXAMPLES: &str = "\
Examples:
  fleetwave envelope verify --key alice.key.pub --payload-type text/plain notes.envelope.json
  fleetwave envelope verify --key alice.key.pub --key bob.key.pub --threshold 2 \\
      --payload-type text/plain notes.envelope.json > notes.txt";

#[derive(Debug, Args)]
pub struct EnvelopeVerifyArgs {
    /// A public key file (.pub) to trust; repeat for more keys.
    #[arg(long = "key", value_name = "PUBFILE", required = true)]
    pub keys: Vec<PathBuf>,
    /// How many distinct trusted keys must have signed.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub threshold: u64,
    /// The payload type the envelope must carry.
    #[arg(long, value_name = "TYPE")]
    pub payload_type: String,
    /// The envelope JSON, or - for standard input.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

pub fn envelope_verify(args: EnvelopeVerifyArgs) -> Result<()> {
    let envelope = read_envelope(&args.file)?;
    let keys = read_public_keys(&args.keys)?;
    let distinct: std::collections::BTreeSet<[u8; 32]> =
        keys.iter().map(keys::canonical_bytes).collect();
    let threshold = usize::try_from(args.threshold).context("--threshold is too large")?;
    if threshold > distinct.len() {
        bail!(
            "--threshold {threshold} can never be met: only {} distinct key(s) were given",
            distinct.len()
        );
    }
    let mut ring = KeyRing::new();
    for key in &keys {
        ring.insert(KeyId::of(key).0, *key);
    }
    let payload = envelope
        .verify(&args.payload_type, &ring, threshold)
        .map_err(|e| refused(&args.file, envelope_code(&e), e.to_string()))?;
    let mut out = std::io::stdout().lock();
    out.write_all(&payload)
        .and_then(|_| out.flush())
        .context("writing the payload to stdout")
}

// ---------------------------------------------------------------------------------------
// root init / sign / verify

pub const ROOT_INIT_LONG_ABOUT: &str = "\
Write an unsigned root document (JSON) from public key files.

The root names the keys of the three roles and how many must sign:
  root         offline keys; sign this document and its rotations
  release      offline (or HSM) keys; sign releases
  coordinator  the coordinator's online key; signs assignments
Each threshold must be at least 1 and at most the number of keys of the role; a key counts
once. Review the file, then sign it with `fleetwave root sign`. For a rotation, write
version N+1 with the new keys and sign it with the old root keys and the new ones.";

pub const ROOT_INIT_EXAMPLES: &str = "\
Examples:
  fleetwave root init --root-key alice.key.pub --root-key bob.key.pub --root-threshold 2 \\
      --release-key release.key.pub --coordinator-key coordinator.key.pub \\
      --expires 365d --out root.json
  # rotation to version 2, expiring at a fixed time:
  fleetwave root init --version 2 --root-key carol.key.pub --root-key bob.key.pub --root-threshold 2 \\
      --release-key release.key.pub --coordinator-key coordinator.key.pub \\
      --expires 2027-12-31T00:00:00Z --out root-v2.json";

#[derive(Debug, Args)]
pub struct RootInitArgs {
    /// Public key file of a root key; repeat for each.
    #[arg(long = "root-key", value_name = "PUBFILE", required = true, num_args = 1..)]
    pub root_keys: Vec<PathBuf>,
    /// Public key file of a release key; repeat for each.
    #[arg(long = "release-key", value_name = "PUBFILE", required = true, num_args = 1..)]
    pub release_keys: Vec<PathBuf>,
    /// Public key file of a coordinator key; repeat for each.
    #[arg(long = "coordinator-key", value_name = "PUBFILE", required = true, num_args = 1..)]
    pub coordinator_keys: Vec<PathBuf>,
    /// Distinct root keys needed to sign a root (and, for a rotation, of the next one).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub root_threshold: usize,
    /// Distinct release keys needed to sign a release.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub release_threshold: usize,
    /// Distinct coordinator keys needed to sign an assignment.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub coordinator_threshold: usize,
    /// When the root expires: a duration from now (365d, 2y, 12h) or an RFC 3339 time.
    #[arg(long, value_name = "365d|RFC3339", default_value = "365d")]
    pub expires: String,
    /// The root's version: 1 for a new fleet, N+1 to rotate from version N.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub version: u64,
    /// Where to write the unsigned root document.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

pub fn root_init(args: RootInitArgs) -> Result<()> {
    let now = now_seconds();
    let expires = parse_expiry(&args.expires, now).context("--expires")?;
    if expires <= now {
        bail!("--expires {expires} is in the past");
    }
    let mut keys = BTreeMap::new();
    let mut role = |flag: &str, paths: &[PathBuf], threshold: usize| -> Result<RoleKeys> {
        let mut keyids = Vec::new();
        for path in paths {
            let key = keys::read_public_key(path)?;
            let file = PublicKeyFile::from_key(&key);
            let keyid = KeyId::of(&key).0;
            if keyids.contains(&keyid) {
                bail!(
                    "{}: the same key is given twice for --{flag} (key id {keyid})",
                    path.display()
                );
            }
            keys.insert(keyid.clone(), file);
            keyids.push(keyid);
        }
        Ok(RoleKeys { keyids, threshold })
    };
    let roles = Roles {
        root: role("root-key", &args.root_keys, args.root_threshold)?,
        release: role("release-key", &args.release_keys, args.release_threshold)?,
        coordinator: role(
            "coordinator-key",
            &args.coordinator_keys,
            args.coordinator_threshold,
        )?,
    };
    let root = Root {
        version: args.version,
        expires,
        keys,
        roles,
    };
    check_root_structure(&root).map_err(|refusal| anyhow::anyhow!("{refusal}"))?;
    let mut text = serde_json::to_vec_pretty(&root).expect("a root serializes");
    text.push(b'\n');
    std::fs::write(&args.out, text).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote {} (unsigned root version {}, expires {}; {}); review it, then: fleetwave root sign --key ROOT_KEY --out root-v{}.envelope.json {}",
        args.out.display(),
        root.version,
        root.expires,
        describe_roles(&root),
        root.version,
        args.out.display()
    );
    Ok(())
}

pub const ROOT_SIGN_LONG_ABOUT: &str = "\
Sign a root document (from `root init`) as a DSSE envelope, or add signatures to an
existing envelope of the same document (--envelope).

The exact bytes of the root file are signed, so every signer signs what they reviewed; an
existing envelope must carry exactly those bytes. This is how several people sign:
the first creates the envelope, the others add to it, each with their own key. For a
rotation to version N+1, sign with a threshold of version N's root keys and a threshold of
version N+1's root keys. The envelope goes to --out (which may be the --envelope file
itself) or stdout; a line on stderr says whether the root's own threshold is met yet.";

pub const ROOT_SIGN_EXAMPLES: &str = "\
Examples:
  fleetwave root sign --key alice.key --out root-v1.envelope.json root.json
  fleetwave root sign --key bob.key --envelope root-v1.envelope.json --out root-v1.envelope.json root.json
  # rotation: old and new root keys sign version 2
  fleetwave root sign --key alice.key --key bob.key --key carol.key --out root-v2.envelope.json root-v2.json";

#[derive(Debug, Args)]
pub struct RootSignArgs {
    /// A private root key file; repeat for each signer present.
    #[arg(long = "key", value_name = "PATH", required = true)]
    pub keys: Vec<PathBuf>,
    /// An existing envelope of the same root document to add signatures to.
    #[arg(long, value_name = "EXISTING")]
    pub envelope: Option<PathBuf>,
    /// Where to write the envelope (default: stdout). May be the --envelope file.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The root document (JSON, from `root init`).
    #[arg(value_name = "ROOT_JSON")]
    pub root: PathBuf,
}

pub fn root_sign(args: RootSignArgs) -> Result<()> {
    let bytes = read_input(&args.root)?;
    let root: Root = parse_json_named(&args.root, &bytes)?;
    check_root_structure(&root).map_err(|r| anyhow::anyhow!("{}: {r}", args.root.display()))?;
    let keys = read_signing_keys(&args.keys)?;
    let mut envelope = match &args.envelope {
        Some(path) => {
            let existing = read_envelope(path)?;
            if existing.payload_type != ROOT_TYPE {
                bail!(
                    "{}: payload type is {:?}, not a root envelope ({ROOT_TYPE})",
                    path.display(),
                    existing.payload_type
                );
            }
            let payload = STANDARD
                .decode(&existing.payload)
                .with_context(|| format!("{}: payload is not valid base64", path.display()))?;
            if payload != bytes {
                bail!(
                    "{}: signs a different document than {}; sign the root file the envelope was made from, or start a new envelope without --envelope",
                    path.display(),
                    args.root.display()
                );
            }
            existing
        }
        None => Envelope {
            payload: STANDARD.encode(&bytes),
            payload_type: ROOT_TYPE.to_string(),
            signatures: Vec::new(),
        },
    };
    for key in &keys {
        let keyid = KeyId::of(&key.verifying_key()).0;
        if envelope.signatures.iter().any(|s| s.keyid == keyid) {
            eprintln!("note: already signed by {keyid}; skipped");
            continue;
        }
        if !root.roles.root.keyids.contains(&keyid) {
            eprintln!(
                "note: {keyid} is not a root key of version {} (expected only for the previous version's keys during a rotation)",
                root.version
            );
        }
        envelope
            .signatures
            .extend(Envelope::sign(ROOT_TYPE, &bytes, &[key]).signatures);
    }
    check_size(&envelope)?;
    write_json_output(args.out.as_deref(), &envelope)?;
    match verify_root_anchor(&envelope) {
        Ok(root) if root.version > 1 => eprintln!(
            "root version {}: threshold of its own root keys met ({}); as a rotation, a threshold of version {}'s root keys must have signed too: check with `fleetwave root verify --previous`",
            root.version,
            describe_role(&root.roles.root),
            root.version - 1
        ),
        Ok(root) => eprintln!(
            "root version {}: threshold of its root keys met ({})",
            root.version,
            describe_role(&root.roles.root)
        ),
        Err(Refusal::Signature {
            source: EnvelopeError::ThresholdNotMet { valid, threshold },
            ..
        }) => eprintln!(
            "root version {}: {valid} of the {threshold} signatures its own root keys must give; more signers must add theirs with --envelope",
            root.version
        ),
        Err(refusal) => eprintln!("warning: the envelope does not verify yet: {refusal}"),
    }
    Ok(())
}

pub const ROOT_VERIFY_LONG_ABOUT: &str = "\
Verify a signed root.

Without --previous, the root must be signed by a threshold of its own root keys: this is
how a trust anchor shipped to agents is checked. With --previous, the root must also be
the next version of the previous one and be signed by a threshold of the previous
version's root keys, which is how agents follow a rotation. The root must not have
expired at --at (default: now).";

pub const ROOT_VERIFY_EXAMPLES: &str = "\
Examples:
  fleetwave root verify root-v1.envelope.json
  fleetwave root verify --previous root-v1.envelope.json root-v2.envelope.json";

#[derive(Debug, Args)]
pub struct RootVerifyArgs {
    /// The trusted previous version of the root (an envelope), for a rotation.
    #[arg(long, value_name = "ENVELOPE")]
    pub previous: Option<PathBuf>,
    /// The time to check expiry at (RFC 3339; default: now).
    #[arg(long, value_name = "TIME", value_parser = parse_timestamp)]
    pub at: Option<Timestamp>,
    /// The root envelope to verify.
    #[arg(value_name = "ENVELOPE")]
    pub file: PathBuf,
}

pub fn root_verify(args: RootVerifyArgs) -> Result<()> {
    let at = args.at.unwrap_or_else(now_seconds);
    let envelope = read_envelope(&args.file)?;
    let root = match &args.previous {
        Some(previous_path) => {
            let previous = verify_root_anchor(&read_envelope(previous_path)?)
                .map_err(|r| refusal(previous_path, &r))?;
            let root =
                verify_root_rotation(&previous, &envelope).map_err(|r| refusal(&args.file, &r))?;
            eprintln!(
                "rotation {} -> {}: signed by a threshold of version {}'s root keys and of its own",
                previous.version, root.version, previous.version
            );
            root
        }
        None => verify_root_anchor(&envelope).map_err(|r| refusal(&args.file, &r))?,
    };
    check_root_expiry(&root, at, &args.file)?;
    stdout_line(&format!(
        "valid: root version {} (expires {}; {}; envelope sha256 {})",
        root.version,
        root.expires,
        describe_roles(&root),
        root.digest()
    ))
}

// ---------------------------------------------------------------------------------------
// release sign

pub const RELEASE_SIGN_LONG_ABOUT: &str = "\
Build a release document from a manifest (TOML, or JSON if the file ends in .json) and
sign it with release keys. The envelope goes to --out or stdout; a summary with the
envelope's SHA-256 (how assignments name the release) goes to stderr.

Manifest fields:
  id, name, version     the release's id (unique), stream name and version
  kind                  app | kubernetes | command
  counter               release counter, strictly increasing within the stream (name)
  expires | expires_in  an RFC 3339 time, or a duration such as \"90d\" after issued_at
  issued_at             optional; default now
  min_agent_version     optional
  [install]             executor parameters (free-form table)
  [[artifacts]]         name (plain file name), url (a coordinator path or http(s) URL;
                        {sha256} is replaced by the artifact's SHA-256), and either
                        file = \"path\" (relative to the manifest; length and sha256 are
                        computed from it) or both length and sha256
Errors name the file, line and field, e.g. release.toml:12:10: artifacts[0].sha256: ...";

pub const RELEASE_SIGN_EXAMPLES: &str = "\
Example manifest (release.toml):
  id = \"pos-2.4.0\"
  name = \"pos\"
  version = \"2.4.0\"
  kind = \"app\"
  counter = 42
  expires_in = \"90d\"

  [install]
  format = \"tar.gz\"
  restart_command = \"systemctl restart pos\"

  [[artifacts]]
  name = \"pos-2.4.0.tar.gz\"
  url = \"/v1/artifacts/{sha256}\"
  file = \"dist/pos-2.4.0.tar.gz\"

Examples:
  fleetwave release sign --key release.key release.toml --out pos-2.4.0.envelope.json
  fleetwave release sign --key release-alice.key --key release-bob.key release.json > pos.envelope.json";

#[derive(Debug, Args)]
pub struct ReleaseSignArgs {
    /// A private release key file; repeat when the release role's threshold needs more.
    #[arg(long = "key", value_name = "PATH", required = true)]
    pub keys: Vec<PathBuf>,
    /// The release manifest (.toml, or .json).
    #[arg(value_name = "MANIFEST")]
    pub manifest: PathBuf,
    /// Where to write the envelope (default: stdout).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

pub fn release_sign(args: ReleaseSignArgs) -> Result<()> {
    let release = manifest::load(&args.manifest, now_seconds())?;
    let keys = read_signing_keys(&args.keys)?;
    let refs: Vec<&SigningKey> = keys.iter().collect();
    let payload = serde_json::to_vec(&release).expect("a release serializes");
    let envelope = Envelope::sign(RELEASE_TYPE, &payload, &refs);
    check_size(&envelope)?;
    write_json_output(args.out.as_deref(), &envelope)?;
    eprintln!(
        "signed release {} ({} {}, kind {}, counter {}, expires {}) with {} key(s); envelope sha256 {}",
        release.id,
        release.name,
        release.version,
        release.kind.as_str(),
        release.counter,
        release.expires,
        keys.len(),
        envelope.digest()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// verify

pub const VERIFY_LONG_ABOUT: &str = "\
Check a release, or an assignment with its release, against the fleet's root, with the
same code an agent runs.

The root envelope (--root) must be signed by a threshold of its own root keys; each --chain
envelope must be the next version, signed by the previous root keys and its own. Then:
  --release only          the release is signed by the release role and not expired
  --assignment --release  the assignment is signed by the coordinator role, names --site
                          (when given), is not expired, and names exactly this release
                          envelope by its SHA-256; the release is checked as above
Times are checked at --at (default: now). The agent's stateful checks (release counter,
rollback floor, sequence replay) need its state and are not made here.

Output is for humans unless --json. Exit codes: 0 valid, 1 refused (the reason on stderr
names the file; with --json also a JSON object on stdout), 2 usage or I/O error.";

pub const VERIFY_EXAMPLES: &str = "\
Examples:
  fleetwave verify --root root-v1.envelope.json --release pos-2.4.0.envelope.json
  fleetwave verify --root root-v1.envelope.json --chain root-v2.envelope.json \\
      --assignment assignment.json --release pos-2.4.0.envelope.json --site store-0042 --json";

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The trusted root envelope (the one agents were installed with).
    #[arg(long, value_name = "ROOT_ENVELOPE")]
    pub root: PathBuf,
    /// Newer root envelopes, in version order, to follow from --root.
    #[arg(long, value_name = "ENVELOPE", num_args = 1..)]
    pub chain: Vec<PathBuf>,
    /// The release envelope.
    #[arg(long, value_name = "FILE")]
    pub release: PathBuf,
    /// An assignment envelope that names the release.
    #[arg(long, value_name = "FILE")]
    pub assignment: Option<PathBuf>,
    /// The site the assignment must be for.
    #[arg(long, value_name = "ID", requires = "assignment")]
    pub site: Option<String>,
    /// The time to check expiry at (RFC 3339; default: now).
    #[arg(long, value_name = "TIME", value_parser = parse_timestamp)]
    pub at: Option<Timestamp>,
    /// Print a JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What `verify --json` prints for a valid document.
#[derive(Debug, Serialize)]
struct VerifyReport {
    valid: bool,
    checked_at: Timestamp,
    root: RootSummary,
    release: DocReport<Release>,
    #[serde(skip_serializing_if = "Option::is_none")]
    assignment: Option<DocReport<Assignment>>,
}

/// What `verify --json` prints for a refused document.
#[derive(Debug, Serialize)]
struct RefusedReport<'a> {
    valid: bool,
    code: &'a str,
    file: &'a str,
    reason: &'a str,
}

#[derive(Debug, Serialize)]
struct RootSummary {
    version: u64,
    expires: Timestamp,
    sha256: String,
}

#[derive(Debug, Serialize)]
struct DocReport<T> {
    file: String,
    sha256: String,
    document: T,
}

impl<T: Clone> DocReport<T> {
    fn of(file: &Path, verified: &Verified<T>) -> Self {
        DocReport {
            file: file.display().to_string(),
            sha256: verified.digest().to_string(),
            document: (**verified).clone(),
        }
    }
}

pub fn verify(args: VerifyArgs) -> Result<()> {
    let json = args.json;
    let result = verify_documents(&args);
    match result {
        Ok(report) if json => stdout_json(&report),
        Ok(report) => print_report(&report),
        Err(err) => {
            if json && let Some(refused) = err.downcast_ref::<Refused>() {
                stdout_json(&RefusedReport {
                    valid: false,
                    code: refused.code,
                    file: &refused.file,
                    reason: &refused.reason,
                })?;
            }
            Err(err)
        }
    }
}

fn verify_documents(args: &VerifyArgs) -> Result<VerifyReport> {
    let at = args.at.unwrap_or_else(now_seconds);
    let mut state = TrustState::from_anchor(&read_envelope(&args.root)?)
        .map_err(|r| refusal(&args.root, &r))?;
    let mut root_file = args.root.as_path();
    for path in &args.chain {
        let envelope = read_envelope(path)?;
        state
            .update_root(std::slice::from_ref(&envelope))
            .map_err(|r| refusal(path, &r))?;
        root_file = path;
    }
    let root = state.root();
    check_root_expiry(root, at, root_file)?;
    let release_envelope = read_envelope(&args.release)?;
    let (release, assignment) = match &args.assignment {
        None => {
            let release = verify_release(root, &release_envelope, at)
                .map_err(|r| refusal(&args.release, &r))?;
            (release, None)
        }
        Some(assignment_path) => {
            let assignment_envelope = read_envelope(assignment_path)?;
            let (assignment, release) = verify_assigned_release(
                root,
                &assignment_envelope,
                &release_envelope,
                at,
                args.site.as_deref(),
            )
            .map_err(|r| {
                let file = match &r {
                    Refusal::Envelope { doc, .. }
                    | Refusal::Signature { doc, .. }
                    | Refusal::Payload { doc, .. }
                    | Refusal::Expired { doc, .. }
                        if *doc == DocKind::Release =>
                    {
                        &args.release
                    }
                    _ => assignment_path,
                };
                refusal(file, &r)
            })?;
            (release, Some(DocReport::of(assignment_path, &assignment)))
        }
    };
    Ok(VerifyReport {
        valid: true,
        checked_at: at,
        root: RootSummary {
            version: root.version,
            expires: root.expires,
            sha256: root.digest().to_string(),
        },
        release: DocReport::of(&args.release, &release),
        assignment,
    })
}

fn print_report(report: &VerifyReport) -> Result<()> {
    let mut text = String::new();
    let r = &report.release.document;
    let subject = match &report.assignment {
        Some(a) => format!(
            "assignment of release {} to site {} (rollout {}, wave {}, sequence {})",
            r.id, a.document.site_id, a.document.rollout_id, a.document.wave, a.document.sequence
        ),
        None => format!("release {}", r.id),
    };
    text.push_str(&format!("valid: {subject}\n"));
    text.push_str(&format!(
        "  release      {} {} (kind {}, counter {}), issued {}, expires {}\n",
        r.name,
        r.version,
        r.kind.as_str(),
        r.counter,
        r.issued_at,
        r.expires
    ));
    text.push_str(&format!(
        "  envelope     sha256 {} ({})\n",
        report.release.sha256, report.release.file
    ));
    for artifact in &r.artifacts {
        text.push_str(&format!(
            "  artifact     {} {} bytes sha256 {} from {}\n",
            artifact.name, artifact.length, artifact.sha256, artifact.url
        ));
    }
    if let Some(min) = &r.min_agent_version {
        text.push_str(&format!("  needs agent  {min} or newer\n"));
    }
    if let Some(a) = &report.assignment {
        let d = &a.document;
        text.push_str(&format!(
            "  assignment   not before {}, issued {}, expires {}{}\n",
            d.not_before,
            d.issued_at,
            d.expires,
            if d.rollback {
                ", explicit rollback"
            } else {
                ""
            }
        ));
        text.push_str(&format!(
            "  envelope     sha256 {} ({})\n",
            a.sha256, a.file
        ));
    }
    text.push_str(&format!(
        "  root         version {}, expires {}\n",
        report.root.version, report.root.expires
    ));
    text.push_str(&format!("  checked at   {}\n", report.checked_at));
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .context("writing to stdout")
}

// ---------------------------------------------------------------------------------------
// shared helpers

fn refused(file: &Path, code: &'static str, reason: String) -> anyhow::Error {
    Refused {
        file: file.display().to_string(),
        code,
        reason,
    }
    .into()
}

fn refusal(file: &Path, refusal: &Refusal) -> anyhow::Error {
    refused(file, refusal.code(), refusal.to_string())
}

fn envelope_code(error: &EnvelopeError) -> &'static str {
    match error {
        EnvelopeError::ThresholdNotMet { .. } | EnvelopeError::InvalidThreshold => {
            "threshold_not_met"
        }
        _ => "bad_envelope",
    }
}

fn check_root_expiry(root: &Verified<Root>, at: Timestamp, file: &Path) -> Result<()> {
    if root.expires <= at {
        return Err(refusal(
            file,
            &Refusal::RootExpired {
                version: root.version,
                expires: root.expires,
                now: at,
            },
        ));
    }
    Ok(())
}

/// Reads a file, or standard input for `-`.
fn read_input(path: &Path) -> Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading standard input")?;
        return Ok(bytes);
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Reads an envelope; a file that is not a DSSE envelope is refused (exit 1).
fn read_envelope(path: &Path) -> Result<Envelope> {
    let bytes = read_input(path)?;
    Envelope::from_json(&bytes).map_err(|e| refused(path, "bad_envelope", e.to_string()))
}

fn parse_json_named<T: serde::de::DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        if field == "." || field.is_empty() {
            anyhow::anyhow!("{}: {inner}", path.display())
        } else {
            anyhow::anyhow!("{}: {field}: {inner}", path.display())
        }
    })
}

/// Reads private keys, refusing the same key given twice.
fn read_signing_keys(paths: &[PathBuf]) -> Result<Vec<SigningKey>> {
    let mut keys: Vec<SigningKey> = Vec::with_capacity(paths.len());
    for path in paths {
        let key = keys::read_private_key(path)?;
        if keys
            .iter()
            .any(|k| k.verifying_key() == key.verifying_key())
        {
            bail!(
                "{}: the same key is given twice (key id {})",
                path.display(),
                KeyId::of(&key.verifying_key())
            );
        }
        keys.push(key);
    }
    Ok(keys)
}

fn read_public_keys(paths: &[PathBuf]) -> Result<Vec<VerifyingKey>> {
    paths
        .iter()
        .map(|path| keys::read_public_key(path).map_err(Into::into))
        .collect()
}

fn check_size(envelope: &Envelope) -> Result<()> {
    let size = envelope.to_json().len();
    if size > MAX_ENVELOPE_BYTES {
        bail!(
            "the envelope would be {size} bytes; fleetwave refuses envelopes over {MAX_ENVELOPE_BYTES} bytes (put large content in artifacts)"
        );
    }
    Ok(())
}

/// The current time in whole seconds: documents carry readable times.
fn now_seconds() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).expect("the current time is in range")
}

fn parse_timestamp(s: &str) -> std::result::Result<Timestamp, String> {
    s.parse()
        .map_err(|e| format!("{s:?} is not an RFC 3339 time such as 2026-06-01T00:00:00Z: {e}"))
}

/// An RFC 3339 time, or a duration from `now` (`365d`, `2y`, `12h`).
fn parse_expiry(s: &str, now: Timestamp) -> Result<Timestamp> {
    if let Ok(at) = s.parse::<Timestamp>() {
        return Ok(at);
    }
    manifest::add_span(now, s).map_err(|e| anyhow::anyhow!("{e} (or give an RFC 3339 time)"))
}

fn describe_role(role: &RoleKeys) -> String {
    format!("{} of {}", role.threshold, role.keyids.len())
}

fn describe_roles(root: &Root) -> String {
    [Role::Root, Role::Release, Role::Coordinator]
        .iter()
        .map(|role| format!("{role} {}", describe_role(root.roles.get(*role))))
        .collect::<Vec<_>>()
        .join(", ")
}

fn stdout_line(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|_| out.flush())
        .context("writing to stdout")
}

fn stdout_json<T: Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("serializes");
    stdout_line(&text)
}

/// Writes pretty JSON to `out`, or stdout when `None`. The file is replaced atomically
/// (written beside it, then renamed), so `--out` may name the file that was just read.
fn write_json_output<T: Serialize>(out: Option<&Path>, value: &T) -> Result<()> {
    let Some(path) = out else {
        return stdout_json(value);
    };
    let mut text = serde_json::to_vec_pretty(value).expect("serializes");
    text.push(b'\n');
    let file_name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, &text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
