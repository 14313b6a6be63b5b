//! Dashboard sign-in: an operator token is exchanged once for a server-side session whose
//! random id travels in a `__Host-` cookie (HttpOnly, Secure, SameSite=Strict, Path=/).
//! Each session carries its own CSRF token (synchronizer token) that every form that
//! changes something must send back.
//!
//! The session keeps only the SHA-256 of the operator token, and the token record is
//! looked up again on every request, so a revoked token signs its sessions out at once.
//! Session ids are kept only as SHA-256 too. Nothing here logs or renders a secret.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};

use crate::state::random_hex;

pub use crate::http::cookie::{SESSION_COOKIE, cookie};

/// The pre-login cookie that ties the login form's CSRF token to the browser.
pub const LOGIN_COOKIE: &str = "__Host-fleetwave-login";
/// A session ends this long after sign-in, whatever happens.
pub const SESSION_LIFETIME: SignedDuration = SignedDuration::from_hours(8);
/// A session ends after this long without a request.
pub const SESSION_IDLE: SignedDuration = SignedDuration::from_mins(60);

/// One signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// SHA-256 of the operator token it signed in with.
    pub token_hash: String,
    pub csrf: String,
    pub created_at: Timestamp,
    pub last_used: Timestamp,
}

impl Session {
    fn live(&self, now: Timestamp) -> bool {
        now < self.created_at + SESSION_LIFETIME && now < self.last_used + SESSION_IDLE
    }
}

/// Every live dashboard session, by SHA-256 of its id.
#[derive(Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Starts a session and returns its id (to put in the cookie).
    pub fn open(&self, token_hash: String, now: Timestamp) -> String {
        let id = random_hex(32);
        let mut map = self.by_hash.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.live(now));
        map.insert(
            fleetwave_shared::sha256_hex(id.as_bytes()),
            Session {
                token_hash,
                csrf: random_hex(32),
                created_at: now,
                last_used: now,
            },
        );
        id
    }

    /// The live session of a cookie value; marks it used.
    pub fn lookup(&self, id: &str, now: Timestamp) -> Option<Session> {
        let key = fleetwave_shared::sha256_hex(id.as_bytes());
        let mut map = self.by_hash.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(&key) {
            Some(s) if s.live(now) => {
                s.last_used = now;
                Some(s.clone())
            }
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Whether a session is still live, without counting this as use (live streams).
    pub fn is_live(&self, id: &str, now: Timestamp) -> bool {
        let key = fleetwave_shared::sha256_hex(id.as_bytes());
        self.by_hash
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .is_some_and(|s| s.live(now))
    }

    /// Ends a session (logout).
    pub fn close(&self, id: &str) {
        let key = fleetwave_shared::sha256_hex(id.as_bytes());
        self.by_hash
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }
}

/// A `Set-Cookie` value for a secret cookie; `max_age` 0 deletes it.
pub fn set_cookie(name: &str, value: &str, max_age_secs: i64) -> String {
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}")
}

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle_and_close() {
        let s = Sessions::default();
        let t0 = Timestamp::now();
        let id = s.open("h".into(), t0);
        assert!(s.lookup(&id, t0 + SignedDuration::from_mins(59)).is_some());
        // Used at 59 min: still live at 118 min; idle for 62 min at 180: gone.
        assert!(s.lookup(&id, t0 + SignedDuration::from_mins(118)).is_some());
        assert!(s.lookup(&id, t0 + SignedDuration::from_mins(180)).is_none());
        let id = s.open("h".into(), t0);
        s.close(&id);
        assert!(s.lookup(&id, t0).is_none());
        assert!(s.lookup("not-a-session", t0).is_none());
    }

    #[test]
    fn cookies_are_parsed_and_secrets_compared() {
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            "a=1; __Host-fleetwave-session=abc".parse().unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "b"), None);
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("a", "ab"));
        assert!(set_cookie("x", "y", 5).contains("HttpOnly; SameSite=Strict"));
    }
}
