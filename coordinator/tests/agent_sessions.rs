//! Agent sessions are signed, not stored: a session outlives a coordinator restart (no
//! handshake storm when every agent comes back), ends at its expiry, and a token signed by
//! another fleet's coordinator key, or altered, is refused.

mod common;

use common::{Agent, Harness};
use reqwest::StatusCode;
use serde_json::json;

fn code(v: &serde_json::Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no error code>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_outlives_a_restart_and_ends_at_its_expiry() {
    let mut h = Harness::new().await;
    let a = Agent::enroll(&h, "store-1", json!({})).await;
    let (s, _) = h.get("/v1/agent/poll", &a.token).await;
    assert_eq!(s, StatusCode::OK);

    h.restart().await;
    let (s, v) = h.get("/v1/agent/poll", &a.token).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "the session did not survive the restart: {v}"
    );

    // An altered token is refused, whatever was changed.
    let mut altered = a.token.clone();
    altered.insert(5, 'x');
    let (s, v) = h.get("/v1/agent/poll", &altered).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNAUTHORIZED, "session_expired"),
        "{v}"
    );

    // Past its expiry (one hour by default) the token is refused.
    h.clock.advance(std::time::Duration::from_secs(61 * 60));
    let (s, v) = h.get("/v1/agent/poll", &a.token).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNAUTHORIZED, "session_expired"),
        "{v}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_coordinators_session_is_refused() {
    let h1 = Harness::new().await;
    let h2 = Harness::new().await;
    // The same site id enrolled in both fleets, with different device keys.
    let a1 = Agent::enroll(&h1, "store-1", json!({})).await;
    let _a2 = Agent::enroll(&h2, "store-1", json!({})).await;
    let (s, v) = h2.get("/v1/agent/poll", &a1.token).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNAUTHORIZED, "session_expired"),
        "{v}"
    );
    h1.stop().await;
    h2.stop().await;
}
