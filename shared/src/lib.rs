//! fleetwave's protocol types and trust core.
//!
//! Everything here is pure: no network, no disk I/O in verification, and the current time
//! is always an argument. The coordinator, the agent and the operator CLI all build on it.
//!
//! - [`dsse`]: DSSE v1 envelopes (sign, verify against a key ring and a threshold).
//! - [`keys`]: ed25519 keys, key ids and the securesystemslib/TUF key file form.
//! - [`docs`]: the signed documents (root, release, assignment).
//! - [`verify`]: `Verified<T>`, which only the verifier can construct, and root rotation.
//! - [`trust`]: the agent's trust state and the decision "install R" or a precise refusal.
//! - [`window`]: maintenance windows in site-local time (IANA zones, daylight saving).
//! - [`protocol`]: the JSON shapes of the HTTP API between agents, operators and the coordinator.

pub mod docs;
pub mod dsse;
pub mod keys;
#[cfg(feature = "man")]
pub mod man;
pub mod protocol;
#[cfg(feature = "service")]
pub mod service;
pub mod trust;
pub mod verify;
pub mod window;

pub use docs::{Artifact, Assignment, Release, ReleaseKind, Role, Root};
pub use dsse::Envelope;
pub use keys::{KeyId, PrivateKeyFile, PublicKeyFile};
pub use trust::{Accepted, Refusal, TrustState};
pub use verify::Verified;

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}
