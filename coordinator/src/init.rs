//! `fleetwave-coordinator init`: a ready-to-run local setup for development, the demo
//! and tests — a local CA and a server certificate for 127.0.0.1/localhost, the
//! coordinator's signing key, an admin operator token (0600), a config file and the root.
//!
//! Root keys are offline: `init` either takes a root envelope made with the `fleetwave`
//! CLI (`--root`, with the coordinator key that root lists) or, with `--dev-root`,
//! generates development root and release keys into `offline-keys/` with a loud warning.
//! It never overwrites an existing file.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use fleetwave_shared::docs::{ROOT_TYPE, RoleKeys, Roles, Root};
use fleetwave_shared::keys::{self, PublicKeyFile};
use fleetwave_shared::{Envelope, KeyId};
use jiff::{SignedDuration, Timestamp};

use crate::ids::random_hex;

pub struct InitOptions {
    pub dir: PathBuf,
    pub root: Option<PathBuf>,
    pub coordinator_key: Option<PathBuf>,
    pub dev_root: bool,
    pub listen: String,
}

impl InitOptions {
    /// A throw-away local setup in `dir`: a development root (keys kept in the directory)
    /// and a listen address on 127.0.0.1 with a port chosen at start: what tests and
    /// the simulator use.
    pub fn dev_loopback(dir: impl Into<PathBuf>) -> InitOptions {
        InitOptions {
            dir: dir.into(),
            root: None,
            coordinator_key: None,
            dev_root: true,
            listen: "127.0.0.1:0".into(),
        }
    }
}

/// What `init` created.
#[derive(Debug)]
pub struct InitOutput {
    pub config: PathBuf,
    pub ca_cert: PathBuf,
    pub admin_token_file: PathBuf,
    pub admin_token: String,
    pub offline_keys: Option<PathBuf>,
}

fn write_new(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut f = options
        .open(path)
        .with_context(|| format!("cannot create {} (init never overwrites)", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn local_tls(dir: &Path) -> anyhow::Result<PathBuf> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls)?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "fleetwave local development CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = rcgen::date_time_ymd(2024, 1, 1);
    ca.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()])?;
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse()?));
    leaf.subject_alt_names
        .push(SanType::IpAddress("::1".parse()?));
    leaf.distinguished_name
        .push(DnType::CommonName, "fleetwave coordinator (local)");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = rcgen::date_time_ymd(2024, 1, 1);
    leaf.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let leaf_key = KeyPair::generate()?;
    let issuer = Issuer::new(ca, ca_key);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    write_new(&tls.join("ca.pem"), ca_cert.pem().as_bytes(), false)?;
    write_new(&tls.join("server.pem"), leaf_cert.pem().as_bytes(), false)?;
    write_new(
        &tls.join("server.key"),
        leaf_key.serialize_pem().as_bytes(),
        true,
    )?;
    Ok(tls.join("ca.pem"))
}

/// Signs a version-1 root with `root_key` naming the three roles' keys.
pub fn dev_root(
    root_key: &ed25519_dalek::SigningKey,
    release: &ed25519_dalek::VerifyingKey,
    coordinator: &ed25519_dalek::VerifyingKey,
    now: Timestamp,
) -> Envelope {
    let mut keys = std::collections::BTreeMap::new();
    let mut ids = |k: &ed25519_dalek::VerifyingKey| {
        let id = KeyId::of(k).0;
        keys.insert(id.clone(), PublicKeyFile::from_key(k));
        id
    };
    let (r, rel, c) = (
        ids(&root_key.verifying_key()),
        ids(release),
        ids(coordinator),
    );
    let root = Root {
        version: 1,
        expires: now + SignedDuration::from_hours(24 * 365),
        keys,
        roles: Roles {
            root: RoleKeys {
                keyids: vec![r],
                threshold: 1,
            },
            release: RoleKeys {
                keyids: vec![rel],
                threshold: 1,
            },
            coordinator: RoleKeys {
                keyids: vec![c],
                threshold: 1,
            },
        },
    };
    Envelope::sign(
        ROOT_TYPE,
        &serde_json::to_vec(&root).expect("serializes"),
        &[root_key],
    )
}

pub fn init(o: &InitOptions) -> anyhow::Result<InitOutput> {
    std::fs::create_dir_all(&o.dir)
        .with_context(|| format!("cannot create {}", o.dir.display()))?;
    std::fs::create_dir_all(o.dir.join("data"))?;
    let key_path = o.dir.join("coordinator.key");
    let (root_env, offline) = match (&o.root, o.dev_root) {
        (Some(_), true) => anyhow::bail!("give either --root or --dev-root, not both"),
        (None, false) => anyhow::bail!(
            "the root of trust is offline: give --root FILE (made with `fleetwave`) and --coordinator-key FILE, or --dev-root for development"
        ),
        (Some(root_path), false) => {
            let ck = o.coordinator_key.as_ref().context("--root needs --coordinator-key FILE: the coordinator private key the root lists under role coordinator")?;
            let key = keys::read_private_key(ck)?;
            let env = Envelope::from_json(
                &std::fs::read(root_path)
                    .with_context(|| format!("--root: cannot read {}", root_path.display()))?,
            )?;
            let verified = fleetwave_shared::verify::verify_root_anchor(&env)
                .with_context(|| format!("--root {}", root_path.display()))?;
            let id = KeyId::of(&key.verifying_key()).0;
            if !verified.roles.coordinator.keyids.contains(&id) {
                anyhow::bail!(
                    "--coordinator-key {} (key id {id}) is not listed under role coordinator in {}",
                    ck.display(),
                    root_path.display()
                );
            }
            keys::write_key_pair(&key_path, &key)?;
            (env, None)
        }
        (None, true) => {
            let offline = o.dir.join("offline-keys");
            std::fs::create_dir_all(&offline)?;
            let root_key = keys::generate();
            let release_key = keys::generate();
            let coordinator = keys::generate();
            keys::write_key_pair(&offline.join("root.key"), &root_key)?;
            keys::write_key_pair(&offline.join("release.key"), &release_key)?;
            keys::write_key_pair(&key_path, &coordinator)?;
            let env = dev_root(
                &root_key,
                &release_key.verifying_key(),
                &coordinator.verifying_key(),
                Timestamp::now(),
            );
            (env, Some(offline))
        }
    };
    let mut root_json = serde_json::to_vec_pretty(&root_env)?;
    root_json.push(b'\n');
    write_new(&o.dir.join("root.1.json"), &root_json, false)?;
    let ca = local_tls(&o.dir)?;
    let token = format!("fwo_{}", random_hex(24));
    let token_file = o.dir.join("admin.token");
    write_new(&token_file, format!("{token}\n").as_bytes(), true)?;
    let config = format!(
        "# fleetwave coordinator, created by `fleetwave-coordinator init` for local use.\n\
         # Every key is documented in docs/coordinator.md.\n\
         listen = \"{}\"\n\
         data_dir = \"data\"\n\
         signing_key = \"coordinator.key\"\n\
         roots = [\"root.1.json\"]\n\
         admin_token_file = \"admin.token\"\n\n\
         [tls]\n\
         cert = \"tls/server.pem\"\n\
         key = \"tls/server.key\"\n",
        o.listen
    );
    crate::config::Config::parse(&config).context("init produced an invalid config (a bug)")?;
    let config_path = o.dir.join("coordinator.toml");
    write_new(&config_path, config.as_bytes(), false)?;
    Ok(InitOutput {
        config: config_path,
        ca_cert: ca,
        admin_token_file: token_file,
        admin_token: token,
        offline_keys: offline,
    })
}
