//! ed25519 keys in the securesystemslib/TUF JSON form.
//!
//! A key id is the lowercase hex SHA-256 of the 32 raw public key bytes. Weak
//! (small-order) public keys are refused when parsed. The only file I/O in this crate is
//! [`write_key_pair`] and [`read_private_key`], used by the CLI and the agent at enrollment;
//! verification never touches the disk.

use std::fmt;
use std::path::Path;

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The lowercase hex SHA-256 of a public key's 32 raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub String);

impl KeyId {
    pub fn of(key: &VerifyingKey) -> KeyId {
        KeyId(crate::sha256_hex(key.as_bytes()))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("keytype is {0:?}; only \"ed25519\" is supported")]
    UnsupportedKeyType(String),
    #[error("scheme is {0:?}; only \"ed25519\" is supported")]
    UnsupportedScheme(String),
    #[error("keyval.public must be 64 lowercase hex characters")]
    BadPublicHex,
    #[error("keyval.private must be 64 lowercase hex characters (the 32-byte seed)")]
    BadPrivateHex,
    #[error("keyval.public is not a valid ed25519 point")]
    InvalidPoint,
    #[error("keyval.public is a weak (small-order) ed25519 key and is refused")]
    WeakKey,
    #[error("keyval.public is not the canonical encoding of its ed25519 point")]
    NonCanonical,
    #[error("keyid {listed} does not match the key, whose keyid is {actual}")]
    KeyIdMismatch { listed: String, actual: String },
    #[error("private key does not match its public key")]
    PrivatePublicMismatch,
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

/// The public part of a key, as stored in `.pub` files and in root documents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyFile {
    pub keytype: String,
    pub scheme: String,
    pub keyval: PublicKeyVal,
    /// Present in key files; optional inside a root document's `keys` map (the map key is the id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyVal {
    pub public: String,
}

/// A private key file: the public form plus the 32-byte seed in hex. Mode 0600 on disk.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateKeyFile {
    pub keytype: String,
    pub scheme: String,
    pub keyval: PrivateKeyVal,
    pub keyid: String,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateKeyVal {
    pub public: String,
    pub private: String,
}

impl fmt::Debug for PrivateKeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKeyFile")
            .field("keyid", &self.keyid)
            .finish_non_exhaustive()
    }
}

impl PublicKeyFile {
    pub fn from_key(key: &VerifyingKey) -> PublicKeyFile {
        PublicKeyFile {
            keytype: "ed25519".into(),
            scheme: "ed25519".into(),
            keyval: PublicKeyVal {
                public: hex::encode(key.as_bytes()),
            },
            keyid: Some(KeyId::of(key).0),
        }
    }

    /// Checks type, scheme, encoding, weakness and (when present) the key id.
    pub fn to_key(&self) -> Result<VerifyingKey, KeyError> {
        if self.keytype != "ed25519" {
            return Err(KeyError::UnsupportedKeyType(self.keytype.clone()));
        }
        if self.scheme != "ed25519" {
            return Err(KeyError::UnsupportedScheme(self.scheme.clone()));
        }
        let key = parse_public_key(&self.keyval.public)?;
        if let Some(listed) = &self.keyid {
            let actual = KeyId::of(&key).0;
            if *listed != actual {
                return Err(KeyError::KeyIdMismatch {
                    listed: listed.clone(),
                    actual,
                });
            }
        }
        Ok(key)
    }
}

impl PrivateKeyFile {
    pub fn from_key(key: &SigningKey) -> PrivateKeyFile {
        let public = key.verifying_key();
        PrivateKeyFile {
            keytype: "ed25519".into(),
            scheme: "ed25519".into(),
            keyval: PrivateKeyVal {
                public: hex::encode(public.as_bytes()),
                private: hex::encode(key.to_bytes()),
            },
            keyid: KeyId::of(&public).0,
        }
    }

    /// Checks type, scheme, encoding, that the seed matches the public key and that the
    /// key id is the public key's.
    pub fn to_key(&self) -> Result<SigningKey, KeyError> {
        if self.keytype != "ed25519" {
            return Err(KeyError::UnsupportedKeyType(self.keytype.clone()));
        }
        if self.scheme != "ed25519" {
            return Err(KeyError::UnsupportedScheme(self.scheme.clone()));
        }
        let seed = decode_hex32(&self.keyval.private).ok_or(KeyError::BadPrivateHex)?;
        let key = SigningKey::from_bytes(&seed);
        if hex::encode(key.verifying_key().as_bytes()) != self.keyval.public {
            return Err(KeyError::PrivatePublicMismatch);
        }
        let actual = KeyId::of(&key.verifying_key()).0;
        if self.keyid != actual {
            return Err(KeyError::KeyIdMismatch {
                listed: self.keyid.clone(),
                actual,
            });
        }
        Ok(key)
    }
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Parses 64 lowercase hex characters into a public key, refusing weak (small-order) keys
/// and non-canonical point encodings. A non-canonical encoding would give one point a
/// second key id, so that one key could pass for two toward a threshold.
pub fn parse_public_key(hex_str: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = decode_hex32(hex_str).ok_or(KeyError::BadPublicHex)?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::InvalidPoint)?;
    if key.is_weak() {
        return Err(KeyError::WeakKey);
    }
    if canonical_bytes(&key) != bytes {
        return Err(KeyError::NonCanonical);
    }
    Ok(key)
}

/// The canonical 32-byte encoding of a key's point. Two [`VerifyingKey`]s are the same key
/// exactly when these bytes are equal, whatever bytes they were decoded from.
pub fn canonical_bytes(key: &VerifyingKey) -> [u8; 32] {
    key.to_edwards().compress().to_bytes()
}

/// A new random signing key from the operating system's generator.
pub fn generate() -> SigningKey {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the operating system's random generator failed");
    SigningKey::from_bytes(&seed)
}

/// Writes `path` (private, created with mode 0600) and `path.pub`. Neither file is ever
/// overwritten: if either exists, nothing is written.
pub fn write_key_pair(path: &Path, key: &SigningKey) -> Result<PublicKeyFile, KeyError> {
    use std::io::Write as _;
    let file_err = |p: &Path, e: std::io::Error| KeyError::File {
        path: p.display().to_string(),
        message: e.to_string(),
    };
    let pub_path = public_path(path);
    for existing in [path, pub_path.as_path()] {
        if existing.symlink_metadata().is_ok() {
            return Err(KeyError::File {
                path: existing.display().to_string(),
                message: "already exists; refusing to overwrite a key file".into(),
            });
        }
    }
    let private = serde_json::to_vec_pretty(&PrivateKeyFile::from_key(key)).expect("serializes");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| file_err(path, e))?;
    file.write_all(&private)
        .and_then(|_| file.write_all(b"\n"))
        .and_then(|_| file.sync_all())
        .map_err(|e| file_err(path, e))?;
    let public = PublicKeyFile::from_key(&key.verifying_key());
    let mut text = serde_json::to_vec_pretty(&public).expect("serializes");
    text.push(b'\n');
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&pub_path)
        .and_then(|mut f| f.write_all(&text))
        .map_err(|e| file_err(&pub_path, e))?;
    Ok(public)
}

/// `PATH.pub` for a private key at `PATH`.
pub fn public_path(path: &Path) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".pub");
    s.into()
}

/// Reads a private key file written by [`write_key_pair`].
pub fn read_private_key(path: &Path) -> Result<SigningKey, KeyError> {
    let text = std::fs::read(path).map_err(|e| KeyError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let file: PrivateKeyFile = serde_json::from_slice(&text).map_err(|e| KeyError::File {
        path: path.display().to_string(),
        message: format!("not a fleetwave private key file: {e}"),
    })?;
    file.to_key().map_err(|e| KeyError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Reads a public key file (`.pub`).
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = std::fs::read(path).map_err(|e| KeyError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let file: PublicKeyFile = serde_json::from_slice(&text).map_err(|e| KeyError::File {
        path: path.display().to_string(),
        message: format!("not a public key file: {e}"),
    })?;
    file.to_key().map_err(|e| KeyError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}
