//! API tests over real TLS against a real SQLite file: the coordinator runs in-process on
//! 127.0.0.1:0 with the setup `fleetwave-coordinator init --dev-root` creates. The two
//! flows through every part of the API (a rollout with long polls, reports and a restart;
//! rollbacks, tokens and root rotation) run on both backends, the second on a real
//! PostgreSQL database.

mod backend;
mod common;

use backend::{Backend, TestDb};

use futures_util::StreamExt;
use std::time::Duration;

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use fleetwave_shared::docs::RELEASE_TYPE;
use fleetwave_shared::protocol::*;
use fleetwave_shared::{Envelope, keys};
use jiff::{SignedDuration, Timestamp};
use reqwest::StatusCode;
use serde_json::{Value, json};

use common::{Harness, eventually};

/// An agent as the protocol describes it.
struct Agent {
    site: String,
    key: SigningKey,
    token: String,
}

fn enroll_body(site: &str, token: &str, key: &SigningKey) -> Value {
    let device = hex::encode(key.verifying_key().as_bytes());
    let proof = base64::engine::general_purpose::STANDARD
        .encode(key.sign(&enroll_message(site, token, &device)).to_bytes());
    json!({"token": token, "site_id": site, "device_key": device, "agent_version": "0.1.0", "proof": proof})
}

fn session_body(site: &str, key: &SigningKey, at: Timestamp, nonce: &str) -> Value {
    let sig = base64::engine::general_purpose::STANDARD
        .encode(key.sign(&session_message(site, at, nonce)).to_bytes());
    json!({"site_id": site, "timestamp": at, "nonce": nonce, "signature": sig})
}

fn box_enroll_body(site: &str, box_id: &str, role: &str, token: &str, key: &SigningKey) -> Value {
    let device = hex::encode(key.verifying_key().as_bytes());
    let proof = base64::engine::general_purpose::STANDARD.encode(
        key.sign(&box_enroll_message(site, box_id, role, token, &device))
            .to_bytes(),
    );
    json!({"token": token, "site_id": site, "box_id": box_id, "role": role, "device_key": device, "agent_version": "0.1.0", "proof": proof})
}

async fn box_session(
    h: &Harness,
    site: &str,
    box_id: &str,
    key: &SigningKey,
) -> (StatusCode, Value) {
    let mut body = session_body(site, key, Timestamp::now(), &nonce());
    body["box_id"] = json!(box_id);
    h.post("/v1/agent/session", "", body).await
}

fn nonce() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).unwrap();
    hex::encode(b)
}

async fn agent(h: &Harness, site: &str, labels: Value) -> Agent {
    let token = h.enrollment_token_expiring(labels, 1, 3600).await;
    let key = keys::generate();
    let (s, v) = h
        .post("/v1/enroll", "", enroll_body(site, &token, &key))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let token = session(h, site, &key).await;
    Agent {
        site: site.into(),
        key,
        token,
    }
}

async fn session(h: &Harness, site: &str, key: &SigningKey) -> String {
    let (s, v) = h
        .post(
            "/v1/agent/session",
            "",
            session_body(site, key, Timestamp::now(), &nonce()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["token"].as_str().unwrap().to_string()
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no error code>")
}

#[tokio::test]
async fn enrollment_tokens_proofs_sessions_and_replays() {
    let h = Harness::new().await;
    // A token with two uses enrolls two sites, then is used up.
    let token = h
        .enrollment_token_expiring(json!({"region": "eu", "cohort": "pig"}), 2, 3600)
        .await;
    for site in ["store-1", "store-2"] {
        let (s, v) = h
            .post(
                "/v1/enroll",
                "",
                enroll_body(site, &token, &keys::generate()),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["labels"]["region"], "eu");
        assert_eq!(v["roots"].as_array().unwrap().len(), 1);
    }
    let (s, v) = h
        .post(
            "/v1/enroll",
            "",
            enroll_body("store-3", &token, &keys::generate()),
        )
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "invalid_token"),
        "{v}"
    );

    // A proof signed by another key is refused.
    let t2 = h.enrollment_token_expiring(json!({}), 1, 3600).await;
    let mut body = enroll_body("store-4", &t2, &keys::generate());
    body["device_key"] = json!(hex::encode(keys::generate().verifying_key().as_bytes()));
    let (s, v) = h.post("/v1/enroll", "", body).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "bad_proof"),
        "{v}"
    );
    // ...and did not use the token up.
    let (s, _) = h
        .post(
            "/v1/enroll",
            "",
            enroll_body("store-4", &t2, &keys::generate()),
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    // An expired token is refused.
    let t3 = h.enrollment_token_expiring(json!({}), 1, 1).await;
    let key = keys::generate();
    eventually("the token to expire", || {
        let body = enroll_body("store-5", &t3, &key);
        let h = &h;
        async move {
            let (s, v) = h.post("/v1/enroll", "", body).await;
            (s == StatusCode::UNAUTHORIZED
                && v["error"]["message"].as_str().unwrap().contains("expired"))
            .then_some(())
        }
    })
    .await;

    // Sessions: a replayed handshake, a skewed clock and a wrong key are refused.
    let a = agent(&h, "store-6", json!({})).await;
    let handshake = session_body(&a.site, &a.key, Timestamp::now(), &nonce());
    let (s, _) = h.post("/v1/agent/session", "", handshake.clone()).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = h.post("/v1/agent/session", "", handshake).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "replayed"),
        "{v}"
    );
    let skewed = session_body(
        &a.site,
        &a.key,
        Timestamp::now() - SignedDuration::from_mins(10),
        &nonce(),
    );
    let (s, v) = h.post("/v1/agent/session", "", skewed).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "clock_skew"),
        "{v}"
    );
    let wrong = session_body(&a.site, &keys::generate(), Timestamp::now(), &nonce());
    let (s, v) = h.post("/v1/agent/session", "", wrong).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "bad_signature"),
        "{v}"
    );

    // Authentication failures on the poll path.
    let (s, v) = h.get("/v1/agent/poll", "not-a-session").await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "session_expired"),
        "{v}"
    );
    let (s, _) = h.get("/v1/agent/poll", &a.token).await;
    assert_eq!(s, StatusCode::OK);
    // An agent session is not an operator token.
    let (s, _) = h.get("/v1/sites", &a.token).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Decommission: refused at once, sessions dropped; re-enable and re-enroll.
    let (s, _) = h
        .post(
            &format!("/v1/sites/{}/decommission", a.site),
            &h.admin,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = h.get("/v1/agent/poll", &a.token).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::FORBIDDEN, "site_decommissioned"),
        "{v}"
    );
    let (s, v) = h
        .post(
            "/v1/agent/session",
            "",
            session_body(&a.site, &a.key, Timestamp::now(), &nonce()),
        )
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::FORBIDDEN, "site_decommissioned"),
        "{v}"
    );
    let (s, _) = h
        .post(
            &format!("/v1/sites/{}/reenable", a.site),
            &h.admin,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // A new device key for the site needs a token from `site rekey`.
    let new_key = keys::generate();
    let (s, v) = h
        .post(&format!("/v1/sites/{}/rekey", a.site), &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let t4 = v["token"].as_str().unwrap().to_string();
    let (s, v) = h
        .post("/v1/enroll", "", enroll_body(&a.site, &t4, &new_key))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The session the old key opened ends with the re-key.
    let (s, v) = h.get("/v1/agent/poll", &a.token).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "session_expired"),
        "{v}"
    );
    // The old device key no longer opens sessions; the new one does.
    let (s, _) = h
        .post(
            "/v1/agent/session",
            "",
            session_body(&a.site, &a.key, Timestamp::now(), &nonce()),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    session(&h, &a.site, &new_key).await;
}

/// The device key of `site` as the coordinator has it.
async fn device_key_of(h: &Harness, site: &str) -> String {
    let (s, v) = h.get(&format!("/v1/sites/{site}"), &h.admin).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["device_key"].as_str().unwrap().to_string()
}

/// Boxes within a site: a token bound to the site enrolls its boxes (each with its own key
/// and role), each box opens its own sessions; the same box id again is refused (409
/// box_exists) unless the operator re-keys, which ends only that box's sessions; an agent
/// naming no box cannot join a site whose first box is named.
#[tokio::test]
async fn a_site_of_several_boxes_enrolls_each_box_once_and_rekeys_one_box() {
    let h = Harness::new().await;
    let (s, v) = h
        .post(
            "/v1/enrollment-tokens",
            &h.admin,
            json!({"site_id": "store-7", "uses": 3, "labels": {"format": "k3s"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    let server = keys::generate();
    let agent1 = keys::generate();
    for (box_id, role, key) in [("srv", "server", &server), ("agt-1", "agent", &agent1)] {
        let (s, v) = h
            .post(
                "/v1/enroll",
                "",
                box_enroll_body("store-7", box_id, role, &token, key),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["site_id"], "store-7");
    }
    // The same box id again, with the site's own token: refused, naming the box and the way out.
    let (s, v) = h
        .post(
            "/v1/enroll",
            "",
            box_enroll_body("store-7", "agt-1", "agent", &token, &keys::generate()),
        )
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::CONFLICT, "box_exists"),
        "{v}"
    );
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("already has a box agt-1")
            && message.contains("fleetwave site rekey store-7"),
        "{message}"
    );
    // An agent that names no box is box `main`: it cannot join a site whose first box is `srv`.
    let (s, v) = h
        .post(
            "/v1/enroll",
            "",
            enroll_body("store-7", &token, &keys::generate()),
        )
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::CONFLICT, "box_unnamed"),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("srv, agt-1"),
        "{v}"
    );
    // A proof over another role does not verify (the role is part of what is signed).
    let mut body = box_enroll_body("store-7", "agt-2", "agent", &token, &keys::generate());
    body["role"] = json!("server");
    let (s, v) = h.post("/v1/enroll", "", body).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "bad_proof"),
        "{v}"
    );
    let (s, v) = h
        .post(
            "/v1/enroll",
            "",
            box_enroll_body("store-7", "Bad Box", "", &token, &keys::generate()),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("box_id \"Bad Box\""),
        "{v}"
    );

    // Each box opens sessions with its own key; the key of another box does not pass.
    let (s, v) = box_session(&h, "store-7", "srv", &server).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let server_session = v["token"].as_str().unwrap().to_string();
    let (s, v) = box_session(&h, "store-7", "agt-1", &agent1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let agent_session = v["token"].as_str().unwrap().to_string();
    let (s, v) = box_session(&h, "store-7", "agt-1", &server).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "bad_signature"),
        "{v}"
    );
    let (s, v) = box_session(&h, "store-7", "agt-9", &agent1).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "unknown_box"),
        "{v}"
    );
    for t in [&server_session, &agent_session] {
        let (s, v) = h.get("/v1/agent/poll?wait=0&root_version=1", t).await;
        assert!(s.is_success(), "{s} {v}");
    }

    // The operator re-keys: a new key for agt-1 ends agt-1's sessions only.
    let (s, v) = h.post("/v1/sites/store-7/rekey", &h.admin, json!({})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let rekey = v["token"].as_str().unwrap().to_string();
    let replaced = keys::generate();
    let (s, v) = h
        .post(
            "/v1/enroll",
            "",
            box_enroll_body("store-7", "agt-1", "agent", &rekey, &replaced),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = h
        .get("/v1/agent/poll?wait=0&root_version=1", &agent_session)
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "session_expired"),
        "{v}"
    );
    let (s, v) = h
        .get("/v1/agent/poll?wait=0&root_version=1", &server_session)
        .await;
    assert!(s.is_success(), "{s} {v}");
    let (s, _) = box_session(&h, "store-7", "agt-1", &agent1).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = box_session(&h, "store-7", "agt-1", &replaced).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The site's key is its first box's, as before boxes.
    assert_eq!(
        device_key_of(&h, "store-7").await,
        hex::encode(server.verifying_key().as_bytes())
    );
}

/// A batch token (no site) must not let anyone who holds it replace an enrolled site's
/// device key: that would lock the real box out. Only `site rekey` makes a token that can.
#[tokio::test]
async fn an_unbound_token_cannot_take_over_an_enrolled_site() {
    let h = Harness::new().await;
    // An installer's batch token: 50 uses, no site.
    let batch = h
        .enrollment_token_expiring(json!({"cohort": "general"}), 50, 3600)
        .await;
    let real = keys::generate();
    let (s, v) = h
        .post("/v1/enroll", "", enroll_body("store-1", &batch, &real))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let real_key = device_key_of(&h, "store-1").await;

    // Someone else with the same batch token claims store-1: refused, nothing changes.
    let intruder = keys::generate();
    let (s, v) = h
        .post("/v1/enroll", "", enroll_body("store-1", &batch, &intruder))
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::CONFLICT, "site_exists"),
        "{v}"
    );
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("fleetwave site rekey store-1"),
        "{message}"
    );
    assert_eq!(device_key_of(&h, "store-1").await, real_key);
    session(&h, "store-1", &real).await;
    let (s, _) = h
        .post(
            "/v1/agent/session",
            "",
            session_body("store-1", &intruder, Timestamp::now(), &nonce()),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // The refusal did not spend a use: 49 left after one enrollment.
    let (_, list) = h.get("/v1/enrollment-tokens", &h.admin).await;
    let uses: Vec<u64> = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["uses_left"].as_u64().unwrap())
        .collect();
    assert_eq!(uses, [49]);
    // The batch token still creates new sites.
    let (s, v) = h
        .post(
            "/v1/enroll",
            "",
            enroll_body("store-2", &batch, &keys::generate()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // A token bound to a site that was not enrolled yet, with uses to spare, cannot
    // re-key the site's box once it has enrolled (it could add another box: boxes).
    let (s, v) = h
        .post(
            "/v1/enrollment-tokens",
            &h.admin,
            json!({"site_id": "store-3", "uses": 2}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let early = v["token"].as_str().unwrap().to_string();
    let (s, v) = h
        .post(
            "/v1/enroll",
            "",
            enroll_body("store-3", &early, &keys::generate()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = h
        .post(
            "/v1/enroll",
            "",
            enroll_body("store-3", &early, &keys::generate()),
        )
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::CONFLICT, "box_exists"),
        "{v}"
    );
    // Nor can an operator mint a site-bound token for an enrolled site by the token
    // route: that is a rekey.
    let (s, v) = h
        .post(
            "/v1/enrollment-tokens",
            &h.admin,
            json!({"site_id": "store-1"}),
        )
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::CONFLICT, "site_exists"),
        "{v}"
    );

    // `site rekey`: operators only, enrolled sites only, one use, audited.
    let viewer = h.token("test-viewer", "viewer").await;
    let (s, _) = h.post("/v1/sites/store-1/rekey", &viewer, json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = h
        .post("/v1/sites/store-99/rekey", &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let operator = h.token("test-operator", "operator").await;
    let (s, v) = h
        .post(
            "/v1/sites/store-1/rekey",
            &operator,
            json!({"expires_in_secs": 600}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["uses"], 1);
    let rekey = v["token"].as_str().unwrap().to_string();
    let rekey_id = v["id"].as_str().unwrap().to_string();
    // Bound to store-1: no other site enrolls with it.
    let (s, v) = h
        .post(
            "/v1/enroll",
            "",
            enroll_body("store-4", &rekey, &keys::generate()),
        )
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::FORBIDDEN, "token_site_mismatch"),
        "{v}"
    );
    // The re-imaged box enrolls its new key; the old one is locked out, labels stay.
    let reimaged = keys::generate();
    let (s, v) = h
        .post("/v1/enroll", "", enroll_body("store-1", &rekey, &reimaged))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["labels"]["cohort"], "general");
    assert_ne!(device_key_of(&h, "store-1").await, real_key);
    session(&h, "store-1", &reimaged).await;
    let (s, _) = h
        .post(
            "/v1/agent/session",
            "",
            session_body("store-1", &real, Timestamp::now(), &nonce()),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Once only.
    let (s, v) = h
        .post(
            "/v1/enroll",
            "",
            enroll_body("store-1", &rekey, &keys::generate()),
        )
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "invalid_token"),
        "{v}"
    );
    // Audited: who asked for it, for which site, which token.
    let (_, audit) = h.get("/v1/audit", &h.admin).await;
    let entry = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "site.rekey")
        .expect("a site.rekey audit entry");
    assert_eq!(entry["target"], "store-1");
    assert!(
        entry["actor"].as_str().unwrap().contains("test-operator"),
        "{entry}"
    );
    assert!(
        entry["detail"].as_str().unwrap().contains(&rekey_id),
        "{entry}"
    );

    // A decommissioned site is re-enabled before it is re-keyed.
    let (s, _) = h
        .post("/v1/sites/store-2/decommission", &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = h.post("/v1/sites/store-2/rekey", &h.admin, json!({})).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::CONFLICT, "site_decommissioned"),
        "{v}"
    );
}

const PLAN: &str = r#"
name = "pos 2.4"
release = "pos-2.4.0"

[[waves]]
name = "pigs"
selector = { cohort = "pig" }
gate = { bake = "1s", min_sample = 1, success_ratio = 1.0 }

[[waves]]
name = "rest"
gate = { bake = "1s" }
"#;

async fn rollout_status(h: &Harness, id: &str) -> Value {
    let (s, v) = h.get(&format!("/v1/rollouts/{id}"), &h.admin).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn poll(
    h: &Harness,
    a: &Agent,
    etag: Option<&str>,
    wait: u32,
) -> (StatusCode, Option<String>, Value) {
    let mut req = h
        .http
        .get(h.url(&format!("/v1/agent/poll?wait={wait}&root_version=1")))
        .bearer_auth(&a.token);
    if let Some(e) = etag {
        req = req.header("if-none-match", e);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    assert!(res.headers().get(NEXT_POLL_HEADER).is_some());
    let etag = res
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_string());
    if status != StatusCode::OK {
        return (status, etag, Value::Null);
    }
    assert_eq!(
        res.headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        Some("application/json")
    );
    let bytes = res.bytes().await.unwrap();
    // The coordinator writes this body from cached JSON, not through `PollResponse`: it must
    // still be exactly what serializing the `PollResponse` it reads as gives.
    let typed: PollResponse = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "poll body is not a PollResponse ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert_eq!(
        &bytes[..],
        &serde_json::to_vec(&typed).unwrap()[..],
        "poll body drifted from PollResponse's wire format"
    );
    let body = serde_json::from_slice::<Value>(&bytes).unwrap();
    (status, etag, body)
}

fn event(id: &str, at: Timestamp, body: Value) -> Value {
    let mut e = body;
    e["id"] = json!(id);
    e["at"] = json!(at);
    e
}

async fn releases_artifacts_rollout_long_poll_reports_and_restart(backend: Backend) {
    let db = TestDb::new(backend);
    let mut h = Harness::with_config(&db.storage_config()).await;
    let pig = agent(&h, "pig-1", json!({"cohort": "pig"})).await;
    let other = agent(&h, "store-9", json!({"cohort": "general"})).await;

    // Artifacts: hash checked, Range served.
    let artifact = b"pretend this is a tarball of pos 2.4.0".to_vec();
    let sha = fleetwave_shared::sha256_hex(&artifact);
    let res = h
        .http
        .put(h.url(&format!("/v1/artifacts/{sha}")))
        .bearer_auth(&h.admin)
        .body(b"other bytes".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let res = h
        .http
        .put(h.url(&format!("/v1/artifacts/{sha}")))
        .bearer_auth(&h.admin)
        .body(artifact.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = h
        .http
        .get(h.url(&format!("/v1/artifacts/{sha}")))
        .bearer_auth(&pig.token)
        .header("range", "bytes=7-10")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(res.bytes().await.unwrap().as_ref(), &artifact[7..=10]);
    let res = h
        .http
        .get(h.url(&format!("/v1/artifacts/{sha}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // Releases: bad signature and counters going back are refused.
    let good = h.release_envelope("pos-2.4.0", 5, &artifact);
    let mut forged = h.release_envelope("pos-2.4.1", 6, &artifact);
    forged.signatures =
        Envelope::sign(RELEASE_TYPE, b"{}", &[&h.offline_key("root.key")]).signatures;
    let (s, v) = h.publish_envelope(&forged).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "release_refused"),
        "{v}"
    );
    let (s, v) = h.publish_envelope(&good).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["digest"], good.digest());
    let (s, v) = h
        .publish_envelope(&h.release_envelope("pos-2.3.9", 5, &artifact))
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::CONFLICT, "release_conflict"),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("counters must go up"),
        "{v}"
    );

    // A bad plan names its field.
    let (s, v) = h
        .post(
            "/v1/rollouts",
            &h.admin,
            json!({"plan": PLAN.replace("1.0", "1.5"), "format": "toml"}),
        )
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_plan"),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("success_ratio"),
        "{v}"
    );

    let (s, v) = h
        .post(
            "/v1/rollouts",
            &h.admin,
            json!({"plan": PLAN, "format": "toml"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["status"], "pending");
    // One active rollout per site.
    let (s, v) = h
        .post(
            "/v1/rollouts",
            &h.admin,
            json!({"plan": PLAN, "format": "toml"}),
        )
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::CONFLICT, "rollout_conflict"),
        "{v}"
    );

    // Nothing to do yet; a long poll with that ETag wakes when the wave opens.
    let (s, etag, body) = poll(&h, &pig, None, 0).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body["assignment"].is_null());
    let etag = etag.unwrap();
    let (s, _, _) = poll(&h, &pig, Some(&etag), 0).await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    let waiting = {
        let (http, url, token, etag) = (
            h.http.clone(),
            h.url("/v1/agent/poll?wait=50&root_version=1"),
            pig.token.clone(),
            etag.clone(),
        );
        tokio::spawn(async move {
            http.get(url)
                .bearer_auth(token)
                .header("if-none-match", etag)
                .send()
                .await
                .unwrap()
        })
    };
    let (s, v) = h
        .post(&format!("/v1/rollouts/{id}/start"), &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let res = waiting.await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: PollResponse = res.json().await.unwrap();
    let trust = fleetwave_shared::verify::verify_root_anchor(
        &Envelope::from_json(&std::fs::read(h.dir.path().join("root.1.json")).unwrap()).unwrap(),
    )
    .unwrap();
    let assignment = fleetwave_shared::verify::verify_assignment(
        &trust,
        body.assignment.as_ref().unwrap(),
        Timestamp::now(),
    )
    .unwrap();
    assert_eq!(assignment.site_id, "pig-1");
    assert_eq!(
        assignment.release_sha256,
        body.release.as_ref().unwrap().digest()
    );
    assert_eq!(body.release.unwrap(), good);
    // The other site (wave 1) has nothing: a site reads only its own assignment.
    let (_, _, other_body) = poll(&h, &other, None, 0).await;
    assert!(other_body["assignment"].is_null());

    // A site that enrolls mid-rollout joins the wave its labels and seed give it, at once.
    let late = agent(&h, "pig-2", json!({"cohort": "pig"})).await;
    let (_, _, late_body) = poll(&h, &late, None, 0).await;
    assert!(late_body["assignment"].is_object(), "{late_body}");
    // Skipped, it no longer holds wave 0's gate (success_ratio 1.0) back.
    let (s, v) = h
        .post(
            &format!("/v1/rollouts/{id}/skip"),
            &h.admin,
            json!({"site_id": "pig-2"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Lease, then reports: the same batch twice is applied once.
    let (s, v) = h
        .post(
            "/v1/agent/lease",
            &pig.token,
            json!({"rollout_id": id, "sequence": assignment.sequence}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = h
        .post(
            "/v1/agent/lease",
            &pig.token,
            json!({"rollout_id": id, "sequence": assignment.sequence + 7}),
        )
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::CONFLICT, "lease_denied"),
        "{v}"
    );
    // The reason is machine-readable (agents act on it, not on the message text).
    assert_eq!(v["error"]["reason"], "stale_assignment", "{v}");
    assert!(v["error"]["retry_after_secs"].as_u64().unwrap() >= 1, "{v}");
    let now = Timestamp::now();
    let batch = json!({"events": [
        event("e1", now, json!({"kind": "phase", "rollout_id": id, "release_id": "pos-2.4.0", "phase": "installing"})),
        event("e2", now + SignedDuration::from_millis(10), json!({"kind": "phase", "rollout_id": id, "release_id": "pos-2.4.0", "phase": "committed"})),
    ]});
    let (s, v) = h.post("/v1/agent/reports", &pig.token, batch.clone()).await;
    assert_eq!(
        (s, v["accepted"].as_u64(), v["duplicates"].as_u64()),
        (StatusCode::OK, Some(2), Some(0)),
        "{v}"
    );
    let (_, v) = h.post("/v1/agent/reports", &pig.token, batch).await;
    assert_eq!(
        (v["accepted"].as_u64(), v["duplicates"].as_u64()),
        (Some(0), Some(2)),
        "{v}"
    );

    // Restart mid-rollout: nothing lost.
    h.restart().await;
    let pig = Agent {
        token: session(&h, &pig.site, &pig.key).await,
        ..pig
    };
    let other = Agent {
        token: session(&h, &other.site, &other.key).await,
        ..other
    };
    let (s, _, body) = poll(&h, &pig, None, 0).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        body["assignment"],
        serde_json::to_value(assignment.envelope()).unwrap()
    );
    let (_, v) = h.post("/v1/agent/reports", &pig.token, json!({"events": [event("e2", now, json!({"kind": "phase", "rollout_id": id, "release_id": "pos-2.4.0", "phase": "committed"}))]})).await;
    assert_eq!(v["duplicates"].as_u64(), Some(1), "{v}");
    assert_eq!(rollout_status(&h, &id).await["status"], "running");

    // Healthy heartbeats, as the agent sends them, close the bake once it has run (an
    // event counts at its arrival at the latest, so none can be dated past the bake):
    // wave 0 passes and wave 1 opens for the other site.
    let beats = std::sync::atomic::AtomicU32::new(0);
    eventually("wave 1 to open", || {
        let (h, id, pig, beats) = (&h, id.clone(), &pig, &beats);
        async move {
            let n = beats.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (s, _) = h.post("/v1/agent/reports", &pig.token, json!({"events": [event(&format!("beat-{n}"), Timestamp::now(), json!({"kind": "health", "healthy": true, "summary": {"passed": 3, "failed": 0}}))]})).await;
            assert_eq!(s, StatusCode::OK);
            rollout_status(h, &id).await["waves"][1]["opened_at"]
                .is_string()
                .then_some(())
        }
    })
    .await;
    eventually("the wave-1 site's assignment", || {
        let (h, other) = (&h, &other);
        async move {
            poll(h, other, None, 0).await.2["assignment"]
                .is_object()
                .then_some(())
        }
    })
    .await;
    let view = rollout_status(&h, &id).await;
    let kinds: Vec<&str> = view["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"open_wave") && kinds.contains(&"started"),
        "{kinds:?}"
    );

    // Operator actions: pause, resume, skip, abort.
    for (action, body, status) in [
        ("pause", json!({"reason": "lunch"}), "paused"),
        ("resume", json!({}), "running"),
    ] {
        let (s, v) = h
            .post(&format!("/v1/rollouts/{id}/{action}"), &h.admin, body)
            .await;
        assert_eq!(
            (s, v["status"].as_str()),
            (StatusCode::OK, Some(status)),
            "{v}"
        );
    }
    let (s, v) = h
        .post(
            &format!("/v1/rollouts/{id}/skip"),
            &h.admin,
            json!({"site_id": "store-9"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = h
        .post(
            &format!("/v1/rollouts/{id}/approve"),
            &h.admin,
            json!({"wave": 9}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = h
        .post(&format!("/v1/rollouts/{id}/abort"), &h.admin, json!({}))
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("aborted")),
        "{v}"
    );
    let (s, v) = h
        .post(&format!("/v1/rollouts/{id}/start"), &h.admin, json!({}))
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::CONFLICT, "invalid_state"),
        "{v}"
    );
    let (_, audit) = h.get("/v1/audit", &h.admin).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "rollout.create",
        "rollout.start",
        "rollout.pause",
        "rollout.abort",
        "release.publish",
        "artifact.upload",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
}

#[tokio::test]
async fn roles_are_enforced() {
    let h = Harness::new().await;
    let viewer = h.token("test-viewer", "viewer").await;
    let operator = h.token("test-operator", "operator").await;
    let release_manager = h.token("test-release_manager", "release_manager").await;
    let artifact = b"x".to_vec();
    let (s, v) = h.post("/v1/enrollment-tokens", &viewer, json!({})).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::FORBIDDEN, "forbidden"),
        "{v}"
    );
    let (s, _) = h.get("/v1/sites", &viewer).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = h
        .post(
            "/v1/releases",
            &operator,
            serde_json::to_value(h.release_envelope("pos-1", 1, &artifact)).unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = h
        .post(
            "/v1/releases",
            &release_manager,
            serde_json::to_value(h.release_envelope("pos-1", 1, &artifact)).unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = h
        .post(
            "/v1/rollouts",
            &release_manager,
            json!({"plan": PLAN, "format": "toml"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = h
        .post(
            "/v1/operator-tokens",
            &operator,
            json!({"name": "x", "role": "admin"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = h
        .post(
            "/v1/enrollment-tokens",
            &operator,
            json!({"labels": {"cohort": "pig"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = h.get("/v1/sites", "fwo_unknown").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Revoked tokens stop working at once.
    let (_, list) = h.get("/v1/operator-tokens", &h.admin).await;
    let vid = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == "viewer")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _) = h
        .post(
            &format!("/v1/operator-tokens/{vid}/revoke"),
            &h.admin,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = h.get("/v1/sites", &viewer).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // The audit log records who did what from where.
    let (_, audit) = h.get("/v1/audit", &h.admin).await;
    let e = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "operator_token.revoke")
        .unwrap()
        .clone();
    assert!(e["actor"].as_str().unwrap().contains("bootstrap-admin"));
    assert!(
        e["remote"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{e}"
    );
}

#[tokio::test]
async fn bad_input_gets_clear_json_errors_never_500() {
    let h = Harness::new().await;
    let send = |req: reqwest::RequestBuilder| async move {
        let res = req.send().await.unwrap();
        let status = res.status();
        (status, res.json::<Value>().await.unwrap_or(Value::Null))
    };
    let (s, v) = send(
        h.http
            .post(h.url("/v1/enrollment-tokens"))
            .bearer_auth(&h.admin)
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::BAD_REQUEST, "bad_request"),
        "{v}"
    );
    let (s, v) = send(
        h.http
            .post(h.url("/v1/enrollment-tokens"))
            .bearer_auth(&h.admin)
            .json(&json!({"labels": {}, "colour": "red"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("colour"),
        "{v}"
    );
    let big = "x".repeat(3 * 1024 * 1024);
    let (s, v) = send(
        h.http
            .post(h.url("/v1/enroll"))
            .header("content-type", "application/json")
            .body(big),
    )
    .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        "{v}"
    );
    let (s, v) = send(h.http.get(h.url("/v1/nope"))).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::NOT_FOUND, "not_found"),
        "{v}"
    );
    let (s, v) = send(h.http.delete(h.url("/v1/enroll"))).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        "{v}"
    );
    let (s, v) = send(
        h.http
            .get(h.url("/v1/sites?limit=lots"))
            .bearer_auth(&h.admin),
    )
    .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::BAD_REQUEST, "bad_request"),
        "{v}"
    );
    let (s, v) = send(
        h.http
            .post(h.url("/v1/agent/reports"))
            .bearer_auth("x")
            .json(&json!({"events": []})),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, _) = send(h.http.get(h.url("/healthz"))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = send(h.http.get(h.url("/readyz"))).await;
    assert_eq!(s, StatusCode::OK);
    let metrics = h
        .http
        .get(h.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("fleetwave_http_request_duration_seconds"),
        "{metrics}"
    );
    assert!(metrics.contains("fleetwave_sites"), "{metrics}");
    // The OpenAPI document describes every /v1 route with the error shape.
    let (s, doc) = send(h.http.get(h.url("/openapi.json"))).await;
    assert_eq!(s, StatusCode::OK);
    for (method, path) in fleetwave_coordinator::api::openapi::documented_routes() {
        assert!(
            doc["paths"][&path][method.to_lowercase()].is_object(),
            "{method} {path} missing"
        );
    }
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    assert!(doc["paths"]["/v1/rollouts/{id}/approve"]["post"]["requestBody"].is_object());
}

async fn auto_rollback_manual_rollback_sites_tokens_and_root_rotation(backend: Backend) {
    let db = TestDb::new(backend);
    let h = Harness::with_config(&db.storage_config()).await;
    let a = agent(&h, "site-a", json!({"cohort": "pig", "region": "eu"})).await;
    let _b = agent(&h, "site-b", json!({"cohort": "dog", "region": "eu"})).await;
    // The site says what it runs before the rollout: that is where a rollback goes.
    let (s, _) = h.post("/v1/agent/reports", &a.token, json!({"events": [event("i0", Timestamp::now(), json!({"kind": "installed", "name": "pos", "release_id": "pos-2.3.0", "version": "2.3.0"}))]})).await;
    assert_eq!(s, StatusCode::OK);
    let artifact = b"tarball".to_vec();
    let old = h.release_envelope("pos-2.3.0", 4, &artifact);
    for env in [
        &old,
        &h.release_envelope("pos-2.4.0", 5, &artifact),
        &h.release_envelope("pos-2.5.0", 6, &artifact),
    ] {
        assert_eq!(h.publish_envelope(env).await.0, StatusCode::CREATED);
    }

    // Sites: relabel, filter, paginate.
    let (s, v) = h
        .post(
            "/v1/sites/site-b/labels",
            &h.admin,
            json!({"set": {"region": "us"}, "remove": ["cohort"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["labels"], json!({"region": "us"}));
    let (_, v) = h
        .get("/v1/sites?label=region=eu&state=active", &h.admin)
        .await;
    let ids: Vec<&str> = v["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["site-a"]);
    let (_, v) = h.get("/v1/sites?limit=1", &h.admin).await;
    assert_eq!(v["next_after"], "site-a");
    let (_, v) = h.get("/v1/sites?limit=1&after=site-a", &h.admin).await;
    assert_eq!(v["sites"][0]["id"], "site-b");

    // Enrollment tokens: list and revoke.
    let t = h.enrollment_token_expiring(json!({}), 5, 3600).await;
    let (_, list) = h.get("/v1/enrollment-tokens", &h.admin).await;
    let id = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["uses_left"] == 5)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _) = h
        .post(
            &format!("/v1/enrollment-tokens/{id}/revoke"),
            &h.admin,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = h
        .post(
            "/v1/enroll",
            "",
            enroll_body("site-c", &t, &keys::generate()),
        )
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "invalid_token"),
        "{v}"
    );

    // Failure budget 0: one failure halts the rollout and auto_rollback sends the site back.
    let plan = r#"
name = "risky"
release = "pos-2.4.0"
auto_rollback = true
selector = { cohort = "pig" }

[[waves]]
name = "all"
gate = { bake = "1h", failure_budget = 0 }
"#;
    let (s, v) = h
        .post(
            "/v1/rollouts",
            &h.admin,
            json!({"plan": plan, "format": "toml"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    // Its one site is pending: counted in the tally, not listed as needing attention.
    assert_eq!(v["waves"][0]["tally"]["sites"], 1, "{v}");
    assert_eq!(v["sites"], json!([]), "{v}");
    assert_eq!(v["sites_omitted"], 1, "{v}");
    h.post(&format!("/v1/rollouts/{id}/start"), &h.admin, json!({}))
        .await;
    let (_, _, body) = poll(&h, &a, None, 0).await;
    assert!(body["assignment"].is_object());
    let (s, _) = h.post("/v1/agent/reports", &a.token, json!({"events": [event("f1", Timestamp::now(), json!({"kind": "phase", "rollout_id": id, "release_id": "pos-2.4.0", "phase": "failed", "detail": "health check failed"}))]})).await;
    assert_eq!(s, StatusCode::OK);
    eventually("the rollout to halt and roll back", || {
        let (h, id) = (&h, id.clone());
        async move { (rollout_status(h, &id).await["status"] == "rolled_back").then_some(()) }
    })
    .await;
    let view = rollout_status(&h, &id).await;
    let kinds: Vec<&str> = view["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"halt") && kinds.contains(&"rollback"),
        "{kinds:?}"
    );
    let (_, _, body) = poll(&h, &a, None, 0).await;
    let body: PollResponse = serde_json::from_value(body).unwrap();
    let trust = fleetwave_shared::verify::verify_root_anchor(
        &Envelope::from_json(&std::fs::read(h.dir.path().join("root.1.json")).unwrap()).unwrap(),
    )
    .unwrap();
    let rollback = fleetwave_shared::verify::verify_assignment(
        &trust,
        body.assignment.as_ref().unwrap(),
        Timestamp::now(),
    )
    .unwrap();
    assert!(rollback.rollback);
    assert_eq!(body.release.as_ref().unwrap(), &old);
    assert_eq!(rollback.release_sha256, old.digest());

    // The rolled-back rollout freed the site: a new rollout may take it; roll it back by hand.
    let plan2 = plan
        .replace("pos-2.4.0", "pos-2.5.0")
        .replace("risky", "second");
    let (s, v) = h
        .post(
            "/v1/rollouts",
            &h.admin,
            json!({"plan": plan2, "format": "toml"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id2 = v["id"].as_str().unwrap().to_string();
    h.post(&format!("/v1/rollouts/{id2}/start"), &h.admin, json!({}))
        .await;
    let (_, _, body) = poll(&h, &a, None, 0).await;
    let seq: u64 = {
        let env: Envelope = serde_json::from_value(body["assignment"].clone()).unwrap();
        fleetwave_shared::verify::verify_assignment(&trust, &env, Timestamp::now())
            .unwrap()
            .sequence
    };
    assert!(seq > rollback.sequence, "sequences go up per site");
    let (s, v) = h
        .post(
            "/v1/agent/lease",
            &a.token,
            json!({"rollout_id": id2, "sequence": seq}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = h
        .post(
            &format!("/v1/rollouts/{id2}/rollback"),
            &h.admin,
            json!({"reason": "bad smell"}),
        )
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("rolled_back")),
        "{v}"
    );
    assert!(
        v["status_reason"].as_str().unwrap().contains("1 site(s)"),
        "{v}"
    );
    let (_, _, body) = poll(&h, &a, None, 0).await;
    assert_eq!(body["release"], serde_json::to_value(&old).unwrap());

    // Root rotation: the next version, signed by the root key, reaches agents; a gap is refused.
    use base64::Engine as _;
    let root_env =
        Envelope::from_json(&std::fs::read(h.dir.path().join("root.1.json")).unwrap()).unwrap();
    let mut root: fleetwave_shared::Root = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(&root_env.payload)
            .unwrap(),
    )
    .unwrap();
    let root_key = h.offline_key("root.key");
    root.version = 3;
    let gap = Envelope::sign(
        fleetwave_shared::docs::ROOT_TYPE,
        &serde_json::to_vec(&root).unwrap(),
        &[&root_key],
    );
    let (s, v) = h
        .post("/v1/roots", &h.admin, serde_json::to_value(&gap).unwrap())
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "root_refused"),
        "{v}"
    );
    root.version = 2;
    let next = Envelope::sign(
        fleetwave_shared::docs::ROOT_TYPE,
        &serde_json::to_vec(&root).unwrap(),
        &[&root_key],
    );
    let viewer = h.token("test-viewer", "viewer").await;
    let (s, _) = h
        .post("/v1/roots", &viewer, serde_json::to_value(&next).unwrap())
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = h
        .post("/v1/roots", &h.admin, serde_json::to_value(&next).unwrap())
        .await;
    assert_eq!(
        (s, v["version"].as_u64()),
        (StatusCode::CREATED, Some(2)),
        "{v}"
    );
    let (_, _, body) = poll(&h, &a, None, 0).await;
    assert_eq!(
        body["roots"].as_array().unwrap().len(),
        1,
        "roots newer than version 1"
    );
    assert_eq!(body["roots"][0], serde_json::to_value(&next).unwrap());
}

#[tokio::test]
async fn overload_is_answered_with_503_and_retry_after() {
    let h = Harness::with_config("\n[limits]\nmax_concurrent_requests = 1\n").await;
    let a = agent(&h, "site-a", json!({})).await;
    // A report whose body never finishes holds the only request slot...
    let holder = {
        let (http, url, token) = (h.http.clone(), h.url("/v1/agent/reports"), a.token.clone());
        tokio::spawn(async move {
            // Shed itself if it arrives while a probe holds the slot: then try again.
            loop {
                let body = futures_util::stream::once(async {
                    Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{\"events\": ["))
                })
                .chain(futures_util::stream::pending());
                let res = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(reqwest::Body::wrap_stream(body))
                    .send()
                    .await;
                if !matches!(&res, Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE) {
                    return;
                }
            }
        })
    };
    // ...so another request is shed with 503 and Retry-After once the slot is taken.
    let res = eventually("a request to be shed", || {
        let h = &h;
        async move {
            let res = h
                .http
                .get(h.url("/v1/sites"))
                .bearer_auth(&h.admin)
                .send()
                .await
                .unwrap();
            (res.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(res)
        }
    })
    .await;
    assert_eq!(res.headers().get("retry-after").unwrap(), "1");
    let v: Value = res.json().await.unwrap();
    assert_eq!(error_code(&v), "overloaded");
    // Health and readiness are never shed.
    let res = h.http.get(h.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    holder.abort();
}

#[tokio::test]
async fn long_polls_have_their_own_limit_and_never_take_request_slots() {
    let h =
        Harness::with_config("\n[limits]\nmax_concurrent_requests = 1\nmax_long_polls = 1\n").await;
    let a = agent(&h, "site-a", json!({})).await;
    let b = agent(&h, "site-b", json!({})).await;
    let (_, etag, _) = poll(&h, &a, None, 0).await;
    // A long poll with a matching ETag parks in the only long-poll slot...
    let parked = {
        let (http, url, token, etag) = (
            h.http.clone(),
            h.url("/v1/agent/poll?wait=60&root_version=1"),
            a.token.clone(),
            etag.unwrap(),
        );
        tokio::spawn(async move {
            // Shed itself if it arrives while a probe holds the slot: then try again.
            loop {
                let res = http
                    .get(&url)
                    .bearer_auth(&token)
                    .header("if-none-match", &etag)
                    .send()
                    .await;
                if !matches!(&res, Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE) {
                    return;
                }
            }
        })
    };
    // ...so a second poll is shed with 503 and Retry-After...
    let res = eventually("a second long poll to be shed", || {
        let (h, b) = (&h, &b);
        async move {
            let res = h
                .http
                .get(h.url("/v1/agent/poll?wait=0&root_version=1"))
                .bearer_auth(&b.token)
                .send()
                .await
                .unwrap();
            (res.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(res)
        }
    })
    .await;
    assert_eq!(res.headers().get("retry-after").unwrap(), "1");
    let v: Value = res.json().await.unwrap();
    assert_eq!(error_code(&v), "overloaded");
    // ...while the one request slot stays free for operators and reports.
    for _ in 0..3 {
        let res = h
            .http
            .get(h.url("/v1/sites"))
            .bearer_auth(&h.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "operator request while a poll waits"
        );
    }
    // The shed request is counted by its budget (what the overload alert reads).
    let text = metrics_text(&h).await;
    let shed = text
        .lines()
        .find_map(|l| l.strip_prefix(r#"fleetwave_requests_shed_total{budget="long_polls"} "#))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(shed.is_some_and(|n| n >= 1.0), "{text}");
    parked.abort();
}

/// Sends `body` as raw JSON text.
async fn post_text(h: &Harness, path: &str, token: &str, body: &str) -> (StatusCode, Value) {
    let res = h
        .http
        .post(h.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn request_bodies_must_be_json_objects_never_arrays_mapped_by_position() {
    let h = Harness::new().await;
    let a = agent(&h, "site-a", json!({})).await;
    let (_, before) = h.get("/v1/enrollment-tokens", &h.admin).await;
    let tokens_before = before["tokens"].as_array().unwrap().len();
    let refused = |s: StatusCode, v: &Value, what: &str| {
        assert_eq!(
            (s, error_code(v)),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{what}: {v}"
        );
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("request body must be a JSON object"),
            "{what}: {v}"
        );
    };
    // The same fields as an array (serde maps them by position) are refused...
    for (path, token, body) in [
        (
            "/v1/enrollment-tokens",
            h.admin.as_str(),
            r#"[{"region":"x"},"pig-1",60,5]"#,
        ),
        (
            "/v1/operator-tokens",
            h.admin.as_str(),
            r#"["intruder","admin"]"#,
        ),
        (
            "/v1/enroll",
            "",
            r#"["fwe_x","site-b","00","0.1.0","AA=="]"#,
        ),
        (
            "/v1/agent/session",
            "",
            r#"["site-a","2026-06-01T00:00:00Z","00","AA=="]"#,
        ),
        ("/v1/agent/lease", a.token.as_str(), r#"["r-1", 1]"#),
        ("/v1/agent/reports", a.token.as_str(), r#"[[]]"#),
        ("/v1/rollouts/r-1/approve", h.admin.as_str(), r#"[0]"#),
        // The optional reason of pause, abort and rollback (found by the API fuzzer: `[]`
        // was taken as "no reason").
        ("/v1/rollouts/r-1/pause", h.admin.as_str(), r#"[]"#),
        (
            "/v1/rollouts/r-1/abort",
            h.admin.as_str(),
            r#"["wrong build"]"#,
        ),
        ("/v1/rollouts/r-1/rollback", h.admin.as_str(), r#"[null]"#),
    ] {
        let (s, v) = post_text(&h, path, token, body).await;
        refused(s, &v, &format!("{path} {body}"));
    }
    // ...and so is any other JSON value that is not an object.
    for body in [r#""x""#, "5", "null", "true", " \n [] "] {
        let (s, v) = post_text(&h, "/v1/enrollment-tokens", &h.admin, body).await;
        refused(s, &v, body);
    }
    let (_, after) = h.get("/v1/enrollment-tokens", &h.admin).await;
    assert_eq!(
        after["tokens"].as_array().unwrap().len(),
        tokens_before,
        "{after}"
    );
    // An object after leading white space is still an object.
    let (s, v) = post_text(
        &h,
        "/v1/enrollment-tokens",
        &h.admin,
        " \r\n\t{\"labels\": {\"region\": \"x\"}}",
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

#[tokio::test]
async fn report_events_with_unknown_fields_are_refused_by_name() {
    let h = Harness::new().await;
    let a = agent(&h, "site-a", json!({})).await;
    let now = Timestamp::now();
    let health = event(
        "ev-health",
        now,
        json!({"kind": "health", "healthy": true, "summary": {"passed": 1, "failed": 0}}),
    );
    let mut phase = event(
        "ev-phase",
        now,
        json!({"kind": "phase", "release_id": "pos-2.4.0", "phase": "accepted"}),
    );
    phase["colour"] = json!("red");
    let (s, v) = h
        .post(
            "/v1/agent/reports",
            &a.token,
            json!({"events": [health.clone(), phase]}),
        )
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::BAD_REQUEST, "bad_request"),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("colour"),
        "{v}"
    );
    let mut summary = health.clone();
    summary["summary"]["temperature"] = json!(41);
    let (s, v) = h
        .post("/v1/agent/reports", &a.token, json!({"events": [summary]}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("temperature"),
        "{v}"
    );
    // Nothing of a refused batch was applied: the valid event is new when sent alone.
    let (s, v) = h
        .post("/v1/agent/reports", &a.token, json!({"events": [health]}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["accepted"].as_u64(), v["duplicates"].as_u64()),
        (Some(1), Some(0)),
        "{v}"
    );
}

async fn metrics_text(h: &Harness) -> String {
    let res = h.http.get(h.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.text().await.unwrap()
}

#[tokio::test]
async fn metrics_labels_stay_bounded_whatever_clients_send() {
    let h = Harness::new().await;
    // Invented methods (long ones, as an attacker would send) on real routes, the API's
    // and the dashboard's, and invented paths: the labels must not take them in.
    let round = |n: usize| {
        let h = &h;
        async move {
            for i in 0..8 {
                let invented = format!("INVENTED{n}X{i}{}", "Q".repeat(2000));
                let method = reqwest::Method::from_bytes(invented.as_bytes()).unwrap();
                for path in ["/v1/sites", "/healthz", "/v1/enroll", "/ui/login", "/ui/"] {
                    let res = h
                        .http
                        .request(method.clone(), h.url(path))
                        .bearer_auth(&h.admin)
                        .send()
                        .await
                        .unwrap();
                    assert!(res.status().is_client_error(), "{path}: {}", res.status());
                }
                for path in [
                    format!("/v1/nope-{n}-{i}"),
                    format!("/ui/sites/nope-{n}-{i}"),
                ] {
                    h.http
                        .get(h.url(&path))
                        .bearer_auth(&h.admin)
                        .send()
                        .await
                        .unwrap();
                }
            }
        }
    };
    round(0).await;
    // (The first fetch of /metrics is itself counted from the second on.)
    metrics_text(&h).await;
    let first = metrics_text(&h).await;
    for n in 1..4 {
        round(n).await;
    }
    let text = metrics_text(&h).await;
    assert!(
        !text.contains("INVENTED"),
        "an invented method became a label"
    );
    assert!(!text.contains("nope-"), "a raw path became a label");
    assert!(text.contains(r#"method="other""#), "{text}");
    assert!(
        text.contains(r#"route="/ui/sites/{id}""#),
        "dashboard routes are labelled by their template: {text}"
    );
    // Three more rounds of new methods and paths add no series: only counts change.
    let series = |t: &str| {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.rsplit_once(' ').map_or(l, |(name, _)| name).to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let (before, after) = (series(&first), series(&text));
    assert_eq!(
        after.difference(&before).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "series added by invented methods and paths"
    );
    assert!(
        text.len() < first.len() + 1024,
        "{} -> {}",
        first.len(),
        text.len()
    );
}

/// A body that sends `start` and then nothing, never ending.
fn endless_body(start: &'static [u8]) -> reqwest::Body {
    let body = futures_util::stream::once(async move {
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(start))
    })
    .chain(futures_util::stream::pending());
    reqwest::Body::wrap_stream(body)
}

#[tokio::test]
async fn the_dashboard_sign_in_has_the_request_time_and_body_limits() {
    let h =
        Harness::with_config("\n[limits]\nrequest_timeout_secs = 1\nmax_body_bytes = 4096\n").await;
    let form = "application/x-www-form-urlencoded";
    // A body that never ends is cut off at limits.request_timeout_secs...
    let answer = tokio::time::timeout(
        Duration::from_secs(60),
        h.http
            .post(h.url("/ui/login"))
            .header("content-type", form)
            .body(endless_body(b"csrf=x&token="))
            .send(),
    )
    .await
    .expect("a sign-in whose body never ends got no answer in 60 s");
    assert_eq!(answer.unwrap().status(), StatusCode::REQUEST_TIMEOUT);
    // ...and a body over limits.max_body_bytes is refused.
    let res = h
        .http
        .post(h.url("/ui/login"))
        .header("content-type", form)
        .body(format!("csrf=x&token={}", "t".repeat(10_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn unauthenticated_requests_cannot_take_the_slots_of_agents_and_operators() {
    let h = Harness::with_config(
        // (A time limit far above the test's length: the held request must not end in 408.)
        "\n[limits]\nmax_concurrent_requests = 2\nmax_unauthenticated_requests = 1\n\
         request_timeout_secs = 600\n",
    )
    .await;
    let a = agent(&h, "site-a", json!({})).await;
    // Sign-ins and enrollments whose bodies never end, more of them than there are
    // request slots; each tries again when it is shed.
    let holders: Vec<_> = [
        (
            "/ui/login",
            "application/x-www-form-urlencoded",
            &b"csrf="[..],
        ),
        ("/v1/enroll", "application/json", &b"{\"token\": "[..]),
        ("/v1/enroll", "application/json", &b"{\"token\": "[..]),
    ]
    .into_iter()
    .map(|(path, content_type, start)| {
        let (http, url) = (h.http.clone(), h.url(path));
        tokio::spawn(async move {
            loop {
                let res = http
                    .post(&url)
                    .header("content-type", content_type)
                    .body(endless_body(start))
                    .send()
                    .await;
                if !matches!(&res, Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    })
    .collect();
    // Once they hold the unauthenticated budget, one more is shed with 503...
    let res = eventually("an unauthenticated request to be shed", || {
        let h = &h;
        async move {
            let res = h.http.get(h.url("/ui/login")).send().await.unwrap();
            (res.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(res)
        }
    })
    .await;
    assert_eq!(res.headers().get("retry-after").unwrap(), "1");
    let (s, v) = post_text(&h, "/v1/enroll", "", "{}").await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
        "{v}"
    );
    // ...while operators and agents keep their request slots.
    for _ in 0..3 {
        let (s, v) = h.get("/v1/sites", &h.admin).await;
        assert_eq!(s, StatusCode::OK, "operator request: {v}");
        let health = event(
            &nonce(),
            Timestamp::now(),
            json!({"kind": "health", "healthy": true, "summary": {"passed": 1, "failed": 0}}),
        );
        let (s, v) = h
            .post("/v1/agent/reports", &a.token, json!({"events": [health]}))
            .await;
        assert_eq!(s, StatusCode::OK, "agent report: {v}");
    }
    for holder in holders {
        holder.abort();
    }
}

/// Requests that carry credentials take the slots agents and operators need, so a route
/// counted that way must check the credentials before it reads a body: a made-up token and
/// a body that never ends get their refusal at once, and the slot is free again.
#[tokio::test]
async fn credentials_are_checked_before_a_body_is_read() {
    let h = Harness::with_config(
        "\n[limits]\nmax_concurrent_requests = 1\nrequest_timeout_secs = 600\n",
    )
    .await;
    let artifact = format!("/v1/artifacts/{}", "0".repeat(64));
    for (method, path) in [
        (reqwest::Method::POST, "/v1/agent/reports"),
        (reqwest::Method::POST, "/v1/agent/lease"),
        (reqwest::Method::POST, "/v1/enrollment-tokens"),
        (reqwest::Method::POST, "/v1/rollouts/r-1/approve"),
        (reqwest::Method::PUT, artifact.as_str()),
        (reqwest::Method::POST, "/ui/logout"),
        (reqwest::Method::POST, "/ui/rollouts/r-1/actions/pause"),
        (reqwest::Method::POST, "/ui/sites/s-1/actions/hold"),
    ] {
        let answer = tokio::time::timeout(
            Duration::from_secs(60),
            h.http
                .request(method.clone(), h.url(path))
                .bearer_auth("made-up")
                .header("cookie", "__Host-fleetwave-session=made-up")
                .header("content-type", "application/json")
                .body(endless_body(b"{"))
                .send(),
        )
        .await
        .unwrap_or_else(|_| panic!("{method} {path} read the body before the credentials"));
        let res = answer.unwrap();
        if path.starts_with("/ui/") {
            // Sent to the sign-in page (the harness's client does not follow redirects).
            assert!(
                res.status().is_redirection(),
                "{method} {path}: {}",
                res.status()
            );
            let to = res.headers().get("location").and_then(|l| l.to_str().ok());
            assert_eq!(to, Some("/ui/login"), "{method} {path}");
        } else {
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        }
        let (s, v) = h.get("/v1/sites", &h.admin).await;
        assert_eq!(s, StatusCode::OK, "after {method} {path}: {v}");
    }
}

#[tokio::test]
async fn an_oversized_request_head_gets_the_json_error() {
    let h = Harness::new().await;
    let padded = |path: &str, n: usize| {
        h.http
            .get(h.url(path))
            .bearer_auth(&h.admin)
            .header("x-padding", "p".repeat(n))
            .send()
    };
    // limits.max_header_bytes is 16 KiB by default.
    for path in ["/v1/sites", "/ui/login", "/healthz"] {
        let res = padded(path, 20_000).await.unwrap();
        assert_eq!(
            res.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "{path}"
        );
        let v: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!(error_code(&v), "headers_too_large", "{path}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("limits.max_header_bytes")
        );
    }
    let res = padded("/v1/sites", 12_000).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// Enrolls `site` with a shared enrollment token and opens its session.
async fn enrolled(h: &Harness, site: String, token: &str) -> Agent {
    let key = keys::generate();
    let (s, v) = h
        .post("/v1/enroll", "", enroll_body(&site, token, &key))
        .await;
    assert_eq!(s, StatusCode::OK, "{site}: {v}");
    let token = session(h, &site, &key).await;
    Agent { site, key, token }
}

/// Every site of a rollout through `GET /v1/rollouts/{id}/sites`, `limit` at a time, with
/// `filter` (e.g. `&state=failed`) on every page.
async fn page_through(h: &Harness, id: &str, filter: &str, limit: u32) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = String::new();
    loop {
        let (s, v) = h
            .get(
                &format!("/v1/rollouts/{id}/sites?limit={limit}{filter}{after}"),
                &h.admin,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let page = v["sites"].as_array().unwrap();
        assert!(page.len() <= limit as usize, "{v}");
        all.extend(page.iter().cloned());
        match v["next_after"].as_str() {
            Some(next) => {
                assert_eq!(page.len(), limit as usize, "a page before the last is full");
                assert_eq!(page.last().unwrap()["site_id"], next);
                after = format!("&after={next}");
            }
            None => return all,
        }
    }
}

fn site_ids(sites: &[Value]) -> Vec<String> {
    sites
        .iter()
        .map(|s| s["site_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn rollout_view_lists_only_sites_needing_attention_and_the_site_list_pages_through_all() {
    use fleetwave_shared::protocol::operator::ROLLOUT_VIEW_SITES;
    let h = Harness::new().await;
    // More sites in the first wave than the view lists; ten more in a wave never opened.
    let first = ROLLOUT_VIEW_SITES + 30;
    let later = 10;
    let id_of = |i: usize| format!("s-{i:03}");
    let t_first = h
        .enrollment_token_expiring(json!({"tier": "first"}), first as u32, 3600)
        .await;
    let t_later = h
        .enrollment_token_expiring(json!({"tier": "later"}), later as u32, 3600)
        .await;
    let agents: Vec<Agent> = futures_util::stream::iter(0..first)
        .map(|i| enrolled(&h, id_of(i), &t_first))
        .buffered(8)
        .collect()
        .await;
    for i in first..first + later {
        enrolled(&h, id_of(i), &t_later).await;
    }
    let artifact = b"tarball".to_vec();
    assert_eq!(
        h.publish_envelope(&h.release_envelope("pos-2.4.0", 5, &artifact))
            .await
            .0,
        StatusCode::CREATED
    );
    let plan = r#"
name = "big"
release = "pos-2.4.0"

[[waves]]
name = "first"
selector = { tier = "first" }
gate = { bake = "1h", failure_budget = 1000 }

[[waves]]
name = "later"
"#;
    let (s, v) = h
        .post(
            "/v1/rollouts",
            &h.admin,
            json!({"plan": plan, "format": "toml"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    // Every site is pending: none listed, all counted.
    assert_eq!(v["sites"], json!([]), "{v}");
    assert_eq!(v["sites_omitted"], (first + later) as u64);
    let (s, v) = h
        .post(&format!("/v1/rollouts/{id}/start"), &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Five sites fail, the other first-wave sites but five are installing.
    let failing = 5;
    let installing = first - failing - 5;
    for (i, a) in agents.iter().enumerate().take(failing + installing) {
        let (phase, detail) = if i < failing {
            ("failed", "disk full")
        } else {
            ("installing", "")
        };
        let (s, v) = h.post("/v1/agent/reports", &a.token, json!({"events": [event("p1", Timestamp::now(), json!({"kind": "phase", "rollout_id": id, "release_id": "pos-2.4.0", "phase": phase, "detail": detail}))]})).await;
        assert_eq!(s, StatusCode::OK, "{}: {v}", a.site);
    }
    let view = eventually("the reports in the tallies", || {
        let (h, id) = (&h, id.clone());
        async move {
            let v = rollout_status(h, &id).await;
            let t = &v["waves"][0]["tally"];
            (t["failed"] == failing && t["in_progress"] == installing).then_some(v)
        }
    })
    .await;
    let tally = &view["waves"][0]["tally"];
    assert_eq!(tally["sites"], first as u64, "{tally}");
    assert_eq!(tally["pending"], 5, "{tally}");
    assert_eq!(view["waves"][1]["tally"]["pending"], later as u64);

    // The view: failed sites first, then in-progress ones, by site id, at most the cap;
    // everything else is counted as omitted.
    let listed = view["sites"].as_array().unwrap();
    assert_eq!(listed.len(), ROLLOUT_VIEW_SITES);
    assert_eq!(
        view["sites_omitted"],
        (first + later - ROLLOUT_VIEW_SITES) as u64
    );
    let expected: Vec<String> = (0..ROLLOUT_VIEW_SITES).map(id_of).collect();
    assert_eq!(site_ids(listed), expected);
    for (i, s) in listed.iter().enumerate() {
        let state = if i < failing { "failed" } else { "in_progress" };
        assert_eq!(s["state"], state, "{s}");
        assert_eq!(s["wave"], 0, "{s}");
    }
    assert_eq!(listed[0]["detail"], "install failed: disk full");
    assert_eq!(listed[failing]["phase"], "installing");

    // The site list: every site once, in site id order, whatever the page size.
    let all_ids: Vec<String> = (0..first + later).map(id_of).collect();
    for limit in [7, 1000] {
        let all = page_through(&h, &id, "", limit).await;
        assert_eq!(site_ids(&all), all_ids, "limit {limit}");
    }
    // Filtered by wave, by state, by both.
    let wave1 = page_through(&h, &id, "&wave=1", 4).await;
    assert_eq!(site_ids(&wave1), all_ids[first..]);
    assert!(
        wave1.iter().all(|s| s["state"] == "pending"
            && s["detail"] == "wave not open yet"
            && s["wave"] == 1)
    );
    let failed = page_through(&h, &id, "&state=failed", 2).await;
    assert_eq!(site_ids(&failed), all_ids[..failing]);
    let pending = page_through(&h, &id, "&state=pending&wave=0", 100).await;
    assert_eq!(site_ids(&pending), all_ids[first - 5..first]);
    assert!(
        page_through(&h, &id, "&state=failed&wave=1", 100)
            .await
            .is_empty()
    );
    // The limit is clamped to 1..=1000, like the site list's.
    let (s, v) = h
        .get(&format!("/v1/rollouts/{id}/sites?limit=0"), &h.admin)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["sites"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["next_after"], "s-000", "{v}");
    // A viewer may read it.
    let viewer = h.token("test-viewer", "viewer").await;
    let (s, v) = h
        .get(&format!("/v1/rollouts/{id}/sites?limit=1"), &viewer)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Bad input is named.
    for (query, words) in [
        (
            "state=broken",
            &["\"broken\"", "in_progress", "rolled_back"][..],
        ),
        ("wave=2", &["wave 2", "2 waves"][..]),
        ("limit=lots", &["query string", "limit"][..]),
        ("colour=red", &["query string", "colour"][..]),
    ] {
        let (s, v) = h
            .get(&format!("/v1/rollouts/{id}/sites?{query}"), &h.admin)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        for w in words {
            assert!(message.contains(w), "{query}: {w} not in {message}");
        }
    }
    let (s, v) = h.get("/v1/rollouts/ro-unknown/sites", &h.admin).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
}

both_backends_async!(
    releases_artifacts_rollout_long_poll_reports_and_restart,
    auto_rollback_manual_rollback_sites_tokens_and_root_rotation,
);
