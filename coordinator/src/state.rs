//! The running coordinator's HTTP- and session-level state: configuration, the store
//! handle for the API's own records, agent sessions, the root chain, the shutdown signal
//! and the wave controller's liveness, next to the rollout engine
//! ([`crate::engine::Engine`]), which owns the poll cache and every write that changes
//! rollouts, assignments, leases and reports.
//!
//! Nothing in this module decides policy.

use std::sync::{Arc, RwLock};

use fleetwave_shared::Envelope;
use fleetwave_shared::docs::Root;
use fleetwave_shared::verify::{Verified, verify_root_anchor, verify_root_rotation};
use jiff::Timestamp;
use sha2::Digest as _;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::Config;
use crate::engine::Engine;
use crate::liveness::{Liveness, stale_after};
use crate::metrics::Metrics;
use crate::store::Db;

pub use crate::ids::random_hex;

pub type AppState = Arc<App>;

/// Everything handlers and background tasks share.
pub struct App {
    pub config: Config,
    /// The store, for what the API keeps itself (tokens, audit, sites, artifacts).
    pub db: Db,
    pub sessions: Sessions,
    pub trust: RwLock<TrustChain>,
    /// Bumped when a root is added (wakes long polls of every site).
    pub roots_changed: watch::Sender<u64>,
    pub metrics: Arc<Metrics>,
    /// Turns true when the server shuts down (ends long polls at once).
    pub shutdown: watch::Receiver<bool>,
    /// The rollout engine: rollouts, assignments (and the poll cache), leases, reports.
    pub engine: Engine,
    /// Where every "now" is read.
    pub clock: Clock,
    /// Whether the wave controller runs (`/readyz`, metrics, the dashboard's banner).
    pub controller: Liveness,
    /// Where artifact bytes live (files or an object store).
    pub artifacts: crate::artifact_store::ArtifactStore,
}

impl App {
    /// The time now, from the injected clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Why the wave controller is not doing its job now, or None (see [`Liveness`]).
    pub fn controller_problem(&self) -> Option<String> {
        let tick = std::time::Duration::from_millis(self.config.controller.tick_millis);
        self.controller
            .status()
            .problem(std::time::Instant::now(), stale_after(tick))
    }
}

/// The root chain, oldest first, and the newest root verified along it.
pub struct TrustChain {
    pub envelopes: Vec<Envelope>,
    pub current: Verified<Root>,
}

impl TrustChain {
    /// Verifies a chain: the first is the anchor, each next one a rotation.
    pub fn verify(envelopes: Vec<Envelope>) -> Result<TrustChain, String> {
        let first = envelopes.first().ok_or("no root envelope is known")?;
        let mut current = verify_root_anchor(first).map_err(|e| format!("root 1: {e}"))?;
        for (i, next) in envelopes.iter().enumerate().skip(1) {
            current =
                verify_root_rotation(&current, next).map_err(|e| format!("root {}: {e}", i + 1))?;
        }
        Ok(TrustChain { envelopes, current })
    }

    pub fn latest_version(&self) -> u64 {
        self.current.version
    }

    /// Root envelopes newer than `version`.
    pub fn newer_than(&self, version: Option<u64>) -> Vec<Envelope> {
        let skip = version.unwrap_or(0) as usize;
        self.envelopes.iter().skip(skip).cloned().collect()
    }
}

/// An agent session, as its bearer token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub site_id: String,
    /// The box of the site that opened the session, when its agent names one (`[box]
    /// id`); None: the site's first box of an agent that names none.
    pub box_id: Option<String>,
    pub expires_at: Timestamp,
    /// [`device_key_fingerprint`] of the key the session was opened with: a session ends
    /// when the site's key changes (re-enrollment, re-key).
    pub key_fingerprint: u64,
}

/// Agent session tokens, signed rather than stored: `fws1.<site id, base64url>.<expiry,
/// Unix seconds>.<key fingerprint, hex>.<HMAC-SHA256, base64url>`; a box that names
/// itself gets `fws2.<site id>.<box id, base64url>.<expiry>.<key fingerprint>.<HMAC>`.
///
/// The HMAC key is derived from the coordinator's signing key, which every coordinator of
/// a fleet holds (it signs the assignments): so any coordinator process checks a session
/// another one opened, and sessions outlive a restart (no handshake storm when 100,000
/// agents come back). A token carries no secret beyond its MAC; what it grants is checked
/// on every request against the live site (active, same device key), so decommissioning
/// or re-keying a site ends its sessions at once.
pub struct Sessions {
    key: [u8; 32],
}

const SESSION_PREFIX: &str = "fws1";
const BOX_SESSION_PREFIX: &str = "fws2";

impl Sessions {
    /// Sessions signed with a key derived from `signing_key`'s secret.
    pub fn new(signing_key: &ed25519_dalek::SigningKey) -> Sessions {
        use hmac::Mac as _;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&signing_key.to_bytes())
            .expect("HMAC takes any key length");
        mac.update(b"fleetwave agent session key v1");
        Sessions {
            key: mac.finalize().into_bytes().into(),
        }
    }

    fn mac(&self, payload: &str) -> hmac::Hmac<sha2::Sha256> {
        use hmac::Mac as _;
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(payload.as_bytes());
        mac
    }

    /// A session token for `site_id` (and its box `box_id`, when the agent names one),
    /// opened with `device_key`, valid until `expires_at`.
    pub fn open(
        &self,
        site_id: &str,
        box_id: Option<&str>,
        device_key: &str,
        expires_at: Timestamp,
    ) -> String {
        use base64::Engine as _;
        use hmac::Mac as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let rest = format!(
            "{}.{:016x}",
            expires_at.as_second(),
            device_key_fingerprint(device_key)
        );
        let payload = match box_id {
            None => format!("{SESSION_PREFIX}.{}.{rest}", b64.encode(site_id)),
            Some(b) => format!(
                "{BOX_SESSION_PREFIX}.{}.{}.{rest}",
                b64.encode(site_id),
                b64.encode(b)
            ),
        };
        let tag = b64.encode(self.mac(&payload).finalize().into_bytes());
        format!("{payload}.{tag}")
    }

    /// The session a bearer token carries, when its MAC checks and it has not expired.
    pub fn lookup(&self, token: &str, now: Timestamp) -> Option<Session> {
        use base64::Engine as _;
        use hmac::Mac as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        if token.len() > 512 {
            return None;
        }
        let (payload, tag) = token.rsplit_once('.')?;
        let tag = b64.decode(tag).ok()?;
        self.mac(payload).verify_slice(&tag).ok()?;
        let mut parts = payload.split('.');
        let (prefix, site) = (parts.next()?, parts.next()?);
        let box_part = match prefix {
            SESSION_PREFIX => None,
            BOX_SESSION_PREFIX => Some(parts.next()?),
            _ => return None,
        };
        let (expires, fp) = (parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let site_id = String::from_utf8(b64.decode(site).ok()?).ok()?;
        let box_id = match box_part {
            None => None,
            Some(b) => Some(String::from_utf8(b64.decode(b).ok()?).ok()?),
        };
        let expires_at = Timestamp::from_second(expires.parse().ok()?).ok()?;
        let key_fingerprint = u64::from_str_radix(fp, 16).ok()?;
        (expires_at > now).then_some(Session {
            site_id,
            box_id,
            expires_at,
            key_fingerprint,
        })
    }
}

/// The first 64 bits of the SHA-256 of a device key as stored (its text form).
pub fn device_key_fingerprint(device_key: &str) -> u64 {
    let digest = sha2::Sha256::digest(device_key.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod session_tests {
    use super::*;

    fn key(seed: u8) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_token_carries_its_site_expiry_and_key_and_nothing_else_passes() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let until = Timestamp::from_second(1_800_003_600).unwrap();
        let sessions = Sessions::new(&key(1));
        let token = sessions.open("store.0042/b", None, "ed25519:abc", until);
        let s = sessions.lookup(&token, now).expect("a fresh token");
        assert_eq!(s.site_id, "store.0042/b");
        assert_eq!(s.box_id, None);
        assert_eq!(s.expires_at, until);
        assert_eq!(s.key_fingerprint, device_key_fingerprint("ed25519:abc"));
        assert_ne!(s.key_fingerprint, device_key_fingerprint("ed25519:abd"));
        // Another coordinator with the same signing key checks it; one with another key not.
        assert_eq!(Sessions::new(&key(1)).lookup(&token, now), Some(s));
        assert_eq!(Sessions::new(&key(2)).lookup(&token, now), None);
        // Expired.
        assert_eq!(sessions.lookup(&token, until), None);
        // Any changed character is refused.
        for i in 0..token.len() {
            let mut b = token.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(b).unwrap();
            if t != token {
                assert_eq!(sessions.lookup(&t, now), None, "{t}");
            }
        }
        // Another site's payload with this token's MAC is refused.
        let (_, tag) = token.rsplit_once('.').unwrap();
        let other = sessions.open("store-0043", None, "ed25519:abc", until);
        let (payload, _) = other.rsplit_once('.').unwrap();
        assert_eq!(sessions.lookup(&format!("{payload}.{tag}"), now), None);
        for junk in [
            "",
            ".",
            "fws1",
            "fws1....",
            "not-a-session",
            &"a".repeat(600),
        ] {
            assert_eq!(sessions.lookup(junk, now), None, "{junk}");
        }
    }

    #[test]
    fn a_box_token_carries_its_box_and_cannot_be_turned_into_another_box() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let until = Timestamp::from_second(1_800_003_600).unwrap();
        let sessions = Sessions::new(&key(1));
        let token = sessions.open("store-1", Some("node-2"), "ed25519:abc", until);
        let s = sessions.lookup(&token, now).expect("a fresh box token");
        assert_eq!(
            (s.site_id.as_str(), s.box_id.as_deref()),
            ("store-1", Some("node-2"))
        );
        // Another box's payload with this token's MAC, or the site's without a box: refused.
        let (_, tag) = token.rsplit_once('.').unwrap();
        for other in [
            sessions.open("store-1", Some("node-1"), "ed25519:abc", until),
            sessions.open("store-1", None, "ed25519:abc", until),
        ] {
            let (payload, _) = other.rsplit_once('.').unwrap();
            assert_eq!(sessions.lookup(&format!("{payload}.{tag}"), now), None);
        }
        assert_eq!(sessions.lookup("fws2.....", now), None);
    }
}
