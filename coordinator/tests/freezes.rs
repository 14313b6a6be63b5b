//! Fleet freezes as data: listed (the configuration file's too, read-only), created and
//! ended through the API, audited, validated like the configuration's, and in force for
//! leases at once and after a restart.

mod common;

use std::time::Duration;

use common::*;
use jiff::SignedDuration;
use reqwest::StatusCode;
use serde_json::{Value, json};

const PLAN: &str = r#"
name = "pos 2.5"
release = "pos-2.5.0"

[[waves]]
name = "all"
gate = { bake = "10m" }
"#;

/// A freeze in the configuration file, years ahead: listed as upcoming.
const CONFIG: &str = r#"
[[freezes]]
start = "2036-11-23T00:00:00Z"
end = "2036-11-30T00:00:00Z"
reason = "thanksgiving"
"#;

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or_default()
}

fn at(h: &Harness, from_now: SignedDuration) -> String {
    (h.clock.now() + from_now).to_string()
}

async fn freezes(h: &Harness, token: &str) -> Vec<Value> {
    let (s, v) = h.get("/v1/freezes", token).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["freezes"].as_array().unwrap().clone()
}

async fn lease(h: &Harness, agent: &Agent, rollout: &str, sequence: u64) -> (StatusCode, Value) {
    h.post(
        "/v1/agent/lease",
        &agent.token,
        json!({"rollout_id": rollout, "sequence": sequence}),
    )
    .await
}

#[tokio::test]
async fn freezes_are_created_listed_enforced_ended_and_audited() {
    let mut h = Harness::with_config(CONFIG).await;
    let alice = h.token("alice", "operator").await;
    let victor = h.token("victor", "viewer").await;
    let hour = SignedDuration::from_hours(1);

    // The configuration file's freeze is listed, read-only.
    let list = freezes(&h, &victor).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], "config-0");
    assert_eq!(list[0]["source"], "config");
    assert_eq!(list[0]["reason"], "thanksgiving");
    assert_eq!(list[0]["active"], false);
    let (s, v) = h.post("/v1/freezes/config-0/end", &alice, json!({})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "freeze_from_config"));
    assert!(message(&v).contains("configuration file"), "{v}");

    // Viewers cannot create or end one.
    let body = json!({"end": at(&h, hour), "reason": "incident 42"});
    let (s, v) = h.post("/v1/freezes", &victor, body.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");

    // Validation: the same rules as the configuration's, each naming its field.
    let now = h.clock.now();
    for (body, field) in [
        (
            json!({"start": at(&h, hour), "end": now.to_string(), "reason": "x"}),
            "end: end must be after start",
        ),
        (
            json!({"start": now.to_string(), "end": (now + SignedDuration::from_hours(24 * 400)).to_string(), "reason": "x"}),
            "end: lasts 400 days, more than the maximum 365",
        ),
        (
            json!({"start": at(&h, -hour * 3), "end": at(&h, -hour), "reason": "x"}),
            "end: must be in the future",
        ),
        (json!({"end": at(&h, hour), "reason": "  "}), "reason:"),
        (
            json!({"end": at(&h, hour), "reason": "x".repeat(501)}),
            "reason:",
        ),
    ] {
        let (s, v) = h.post("/v1/freezes", &alice, body.clone()).await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_freeze"),
            "{body}: {v}"
        );
        assert!(message(&v).starts_with(field), "{body}: {v}");
    }
    let (s, v) = h.post("/v1/freezes", &alice, json!({"reason": "x"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "no end: {v}");
    assert_eq!(freezes(&h, &victor).await.len(), 1, "nothing stored");

    // A site with an assignment of a running rollout.
    h.publish("2.5.0", 25).await;
    let agent = Agent::enroll(&h, "store-1", json!({"region": "eu"})).await;
    let id = h.create_rollout(PLAN).await;
    let (s, v) = h
        .post(&format!("/v1/rollouts/{id}/start"), &alice, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (rollout, sequence) = agent.assignment(&h).await;
    assert_eq!(rollout, id);

    // A freeze from now: the next lease is refused at once, without a restart.
    let (s, created) = h.post("/v1/freezes", &alice, body).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let fid = created["id"].as_str().unwrap().to_string();
    assert!(fid.starts_with("frz-"), "{created}");
    assert_eq!(created["source"], "api");
    assert_eq!(created["active"], true);
    assert_eq!(created["reason"], "incident 42");
    assert!(
        created["created_by"].as_str().unwrap().contains("alice"),
        "{created}"
    );
    let list = freezes(&h, &victor).await;
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["id"], fid.as_str(), "earliest start first");
    let (s, v) = lease(&h, &agent, &id, sequence).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "lease_denied"), "{v}");
    assert!(message(&v).contains("(frozen)"), "{v}");
    assert_eq!(v["error"]["reason"], "frozen", "{v}");
    assert!(message(&v).contains("incident 42"), "{v}");

    // Viewers cannot end it; operators can, and the next lease is granted.
    let end = format!("/v1/freezes/{fid}/end");
    let (s, _) = h.post(&end, &victor, json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, ended) = h.post(&end, &alice, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{ended}");
    assert_eq!(ended["active"], false);
    assert!(ended["ended_at"].is_string(), "{ended}");
    assert!(
        ended["ended_by"].as_str().unwrap().contains("alice"),
        "{ended}"
    );
    let (s, v) = lease(&h, &agent, &id, sequence).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        freezes(&h, &victor).await.len(),
        1,
        "ended: no longer listed"
    );
    let (s, v) = h.post(&end, &alice, json!({})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "conflict"), "{v}");
    let (s, v) = h.post("/v1/freezes/frz-nope/end", &alice, json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");

    // Both changes are in the audit log, with who and what.
    let (_, v) = h.get("/v1/audit", &h.admin).await;
    let entries = v["entries"].as_array().unwrap();
    for action in ["freeze.create", "freeze.end"] {
        let e = entries
            .iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("no {action} in {v}"));
        assert_eq!(e["target"], fid.as_str());
        assert!(e["actor"].as_str().unwrap().contains("alice"), "{e}");
        assert!(e["detail"].as_str().unwrap().contains("incident 42"), "{e}");
    }

    // An upcoming freeze survives a restart and comes into force when its start passes.
    let (s, upcoming) = h
        .post(
            "/v1/freezes",
            &alice,
            json!({"start": at(&h, hour), "end": at(&h, hour * 2), "reason": "store opening"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{upcoming}");
    assert_eq!(upcoming["active"], false);
    h.restart().await;
    let list = freezes(&h, &victor).await;
    let stored = list
        .iter()
        .find(|f| f["id"] == upcoming["id"])
        .expect("loaded at start");
    assert_eq!(stored["active"], false);
    h.clock.advance(Duration::from_secs(3600 + 60));
    let list = freezes(&h, &victor).await;
    let stored = list.iter().find(|f| f["id"] == upcoming["id"]).unwrap();
    assert_eq!(stored["active"], true, "{stored}");
    // Past its end it is no longer listed.
    h.clock.advance(Duration::from_secs(3600));
    assert!(
        !freezes(&h, &victor)
            .await
            .iter()
            .any(|f| f["id"] == upcoming["id"])
    );
    h.stop().await;
}
