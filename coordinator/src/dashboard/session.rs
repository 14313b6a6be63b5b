//! Dashboard sign-in: an operator token is exchanged once for a server-side session whose
//! random id travels in a `__Host-` cookie (HttpOnly, Secure, SameSite=Strict, Path=/).
//! Each session carries its own CSRF token (synchronizer token) that every form that
//! changes something must send back.
//!
//! Sessions live in the store (table `dashboard_sessions`), so every coordinator on the
//! database knows them: a browser signed in through one replica is signed in on all, and
//! signing out on one ends the session on all. Use is recorded at most once a minute
//! ([`TOUCH_EVERY`]), so reading pages does not write on every request.
//!
//! The session keeps only the SHA-256 of the operator token, and the token record is
//! looked up again on every request, so a revoked token signs its sessions out at once.
//! Session ids are kept only as SHA-256 too. Nothing here logs or renders a secret.

use jiff::{SignedDuration, Timestamp};

use crate::state::random_hex;
use crate::store::{DashboardSession, Db, StoreResult};

pub use crate::http::cookie::{SESSION_COOKIE, cookie};

/// The pre-login cookie that ties the login form's CSRF token to the browser.
pub const LOGIN_COOKIE: &str = "__Host-fleetwave-login";
/// A session ends this long after sign-in, whatever happens.
pub const SESSION_LIFETIME: SignedDuration = SignedDuration::from_hours(8);
/// A session ends after this long without a request.
pub const SESSION_IDLE: SignedDuration = SignedDuration::from_mins(60);
/// A session's use is stored when the stored one is older than this: the idle limit is
/// kept to within a minute without a write per page.
pub const TOUCH_EVERY: SignedDuration = SignedDuration::from_mins(1);

/// One signed-in browser.
pub type Session = DashboardSession;

fn live(s: &Session, now: Timestamp) -> bool {
    now < s.created_at + SESSION_LIFETIME && now < s.last_used + SESSION_IDLE
}

fn key(id: &str) -> String {
    fleetwave_shared::sha256_hex(id.as_bytes())
}

/// The dashboard sessions, in the store (by SHA-256 of their id).
#[derive(Clone)]
pub struct Sessions {
    db: Db,
}

impl Sessions {
    pub fn new(db: Db) -> Sessions {
        Sessions { db }
    }

    /// Starts a session and returns its id (to put in the cookie); forgets expired ones.
    pub async fn open(&self, token_hash: String, now: Timestamp) -> StoreResult<String> {
        let id = random_hex(32);
        let session = Session {
            token_hash,
            csrf: random_hex(32),
            created_at: now,
            last_used: now,
        };
        let k = key(&id);
        self.db
            .run(move |st| {
                st.open_dashboard_session(&k, &session, now - SESSION_LIFETIME, now - SESSION_IDLE)
            })
            .await?;
        Ok(id)
    }

    /// The live session of a cookie value; records the use.
    pub async fn lookup(&self, id: &str, now: Timestamp) -> StoreResult<Option<Session>> {
        let k = key(id);
        let found = self
            .db
            .run(move |st| {
                let Some(s) = st.dashboard_session(&k)? else {
                    return Ok(None);
                };
                if !live(&s, now) {
                    st.close_dashboard_session(&k)?;
                    return Ok(None);
                }
                if s.last_used + TOUCH_EVERY <= now {
                    st.touch_dashboard_session(&k, now)?;
                }
                Ok(Some(s))
            })
            .await?;
        Ok(found.map(|s| Session {
            last_used: now,
            ..s
        }))
    }

    /// Whether a session is still live, without counting this as use (live streams).
    /// A store error counts as not live (the stream ends; the browser reconnects).
    pub async fn is_live(&self, id: &str, now: Timestamp) -> bool {
        let k = key(id);
        self.db
            .run(move |st| st.dashboard_session(&k))
            .await
            .ok()
            .flatten()
            .is_some_and(|s| live(&s, now))
    }

    /// Ends a session (logout, or its operator token was revoked).
    pub async fn close(&self, id: &str) -> StoreResult<()> {
        let k = key(id);
        self.db.run(move |st| st.close_dashboard_session(&k)).await
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

    #[tokio::test]
    async fn sessions_expire_when_idle_and_close() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SqliteStore::open(&dir.path().join("db.sqlite")).unwrap();
        let s = Sessions::new(Db::new(std::sync::Arc::new(store)));
        let t0 = Timestamp::now();
        let id = s.open("h".into(), t0).await.unwrap();
        let at = |m| t0 + SignedDuration::from_mins(m);
        assert!(s.lookup(&id, at(59)).await.unwrap().is_some());
        // Used at 59 min: still live at 118 min; idle for 62 min at 180: gone.
        assert!(s.lookup(&id, at(118)).await.unwrap().is_some());
        assert!(s.is_live(&id, at(119)).await);
        assert!(s.lookup(&id, at(180)).await.unwrap().is_none());
        assert!(!s.is_live(&id, at(180)).await);
        // Used every 30 minutes: still ends 8 hours after sign-in.
        let id = s.open("h".into(), t0).await.unwrap();
        for m in (30..480).step_by(30) {
            assert!(s.lookup(&id, at(m)).await.unwrap().is_some(), "at {m} min");
        }
        assert!(s.lookup(&id, at(480)).await.unwrap().is_none());
        let id = s.open("h".into(), t0).await.unwrap();
        s.close(&id).await.unwrap();
        assert!(s.lookup(&id, t0).await.unwrap().is_none());
        assert!(s.lookup("not-a-session", t0).await.unwrap().is_none());
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
