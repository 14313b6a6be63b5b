//! DSSE v1 envelopes, exactly as the in-toto specification defines them.
//!
//! The signature covers `PAE(payloadType, payload)`:
//! `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, LEN as ASCII decimal.
//! Verification never parses the payload: callers get the verified bytes back and parse
//! only those. Envelopes over [`MAX_ENVELOPE_BYTES`] are refused before anything else.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature as EdSignature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::keys::KeyId;

/// Largest envelope (JSON bytes) any fleetwave component accepts.
pub const MAX_ENVELOPE_BYTES: usize = 1024 * 1024;
/// Most signatures an envelope may carry; more is refused as malformed.
pub const MAX_SIGNATURES: usize = 64;

/// A DSSE envelope. Field names and order follow the specification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Standard base64 (with padding) of the payload bytes.
    pub payload: String,
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    pub signatures: Vec<Signature>,
}

/// One signature in an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub keyid: String,
    /// Standard base64 (with padding) of the 64-byte ed25519 signature.
    pub sig: String,
}

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("envelope is not valid DSSE JSON: {0}")]
    Malformed(String),
    #[error("envelope payload is not valid standard base64")]
    BadPayloadEncoding,
    #[error("envelope carries {0} signatures, over the limit of {MAX_SIGNATURES}")]
    TooManySignatures(usize),
    #[error("payload type is {got:?}, expected {expected:?}")]
    WrongPayloadType { expected: String, got: String },
    #[error("threshold must be at least 1")]
    InvalidThreshold,
    #[error("signed by {valid} distinct trusted key(s), {threshold} needed")]
    ThresholdNotMet { valid: usize, threshold: usize },
}

/// Pre-authentication encoding: the exact bytes a DSSE signature covers.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + payload.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// Trusted public keys by key id. A key listed under several key ids still counts once.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: BTreeMap<String, VerifyingKey>,
}

impl KeyRing {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key under `keyid`. Weak keys must be refused before they get here
    /// (see [`crate::keys::parse_public_key`]); `verify_strict` refuses them as well.
    pub fn insert(&mut self, keyid: impl Into<String>, key: VerifyingKey) {
        self.keys.insert(keyid.into(), key);
    }

    pub fn get(&self, keyid: &str) -> Option<&VerifyingKey> {
        self.keys.get(keyid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl Envelope {
    /// Signs `payload` as `payload_type` with each key, one signature per key.
    pub fn sign(payload_type: &str, payload: &[u8], keys: &[&SigningKey]) -> Envelope {
        let message = pae(payload_type, payload);
        let signatures = keys
            .iter()
            .map(|key| Signature {
                keyid: KeyId::of(&key.verifying_key()).to_string(),
                sig: STANDARD.encode(key.sign(&message).to_bytes()),
            })
            .collect();
        Envelope {
            payload: STANDARD.encode(payload),
            payload_type: payload_type.to_string(),
            signatures,
        }
    }

    /// Parses envelope JSON, refusing oversize input before parsing.
    pub fn from_json(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::TooLarge {
                size: bytes.len(),
                limit: MAX_ENVELOPE_BYTES,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))
    }

    /// Compact JSON encoding; the form whose SHA-256 assignments reference.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serializes")
    }

    /// Lowercase hex SHA-256 of [`Envelope::to_json`]: how an assignment names a release.
    pub fn digest(&self) -> String {
        crate::sha256_hex(&self.to_json())
    }

    /// Verifies that at least `threshold` distinct keys of `ring` signed this envelope as
    /// `expected_type`, and returns the verified payload bytes. Signatures under unknown key
    /// ids, or that do not verify, are ignored, never counted.
    pub fn verify(
        &self,
        expected_type: &str,
        ring: &KeyRing,
        threshold: usize,
    ) -> Result<Vec<u8>, EnvelopeError> {
        if threshold == 0 {
            return Err(EnvelopeError::InvalidThreshold);
        }
        if self.payload.len() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::TooLarge {
                size: self.payload.len(),
                limit: MAX_ENVELOPE_BYTES,
            });
        }
        if self.signatures.len() > MAX_SIGNATURES {
            return Err(EnvelopeError::TooManySignatures(self.signatures.len()));
        }
        if self.payload_type != expected_type {
            return Err(EnvelopeError::WrongPayloadType {
                expected: expected_type.to_string(),
                got: self.payload_type.clone(),
            });
        }
        let payload = STANDARD
            .decode(&self.payload)
            .map_err(|_| EnvelopeError::BadPayloadEncoding)?;
        let message = pae(&self.payload_type, &payload);
        // Distinct keys by their canonical point encoding: a key listed under several key
        // ids, or signing several times, counts once.
        let mut signers: BTreeSet<[u8; 32]> = BTreeSet::new();
        for signature in &self.signatures {
            let Some(key) = ring.get(&signature.keyid) else {
                continue;
            };
            let Ok(raw) = STANDARD.decode(&signature.sig) else {
                continue;
            };
            let Ok(sig) = EdSignature::from_slice(&raw) else {
                continue;
            };
            if key.verify_strict(&message, &sig).is_ok() {
                signers.insert(crate::keys::canonical_bytes(key));
            }
        }
        if signers.len() < threshold {
            return Err(EnvelopeError::ThresholdNotMet {
                valid: signers.len(),
                threshold,
            });
        }
        Ok(payload)
    }
}
