//! Reports carried back by file (`POST /v1/sites/{id}/reports/import`) against a real
//! coordinator: a file signed with the site's device key is applied through the same path
//! as online reports, once per event id (importing twice, then the same events online,
//! changes nothing); the rollout's site view follows; a file from another site, an altered
//! one, one that is not a report file, and one over the body limit are each refused by
//! name; operators only, audited.

mod common;

use base64::Engine as _;
use common::{Agent, Harness};
use ed25519_dalek::SigningKey;
use fleetwave_shared::Envelope;
use fleetwave_shared::protocol::report_file::REPORT_FILE_TYPE;
use reqwest::StatusCode;
use serde_json::{Value, json};

const PLAN: &str = r#"
name = "pos 2.5"
release = "pos-2.5.0"
selector = { format = "store" }

[[waves]]
name = "all"
gate = { bake = "1h" }
"#;

/// A report file of `site` with `events`, signed with `key`.
fn report_file(site: &str, events: &[Value], key: &SigningKey) -> Envelope {
    let payload = json!({
        "format": "fleetwave-reports-v1",
        "site_id": site,
        "created_at": jiff::Timestamp::now(),
        "events": events,
    });
    Envelope::sign(
        REPORT_FILE_TYPE,
        &serde_json::to_vec(&payload).unwrap(),
        &[key],
    )
}

async fn import(h: &Harness, token: &str, site: &str, file: &Envelope) -> (StatusCode, Value) {
    h.post(
        &format!("/v1/sites/{site}/reports/import"),
        token,
        serde_json::to_value(file).unwrap(),
    )
    .await
}

async fn site_view(h: &Harness, rollout: &str, site: &str) -> Value {
    let (_, v) = h
        .get(&format!("/v1/rollouts/{rollout}/sites"), &h.admin)
        .await;
    v["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["site_id"] == site)
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_report_file_is_applied_once_and_refused_when_it_is_not_the_sites() {
    let h = Harness::new().await;
    let alice = h.token("alice", "operator").await;
    let victor = h.token("victor", "viewer").await;
    h.publish("2.5.0", 25).await;
    let mut store1 = Agent::enroll(&h, "store-1", json!({"format": "store"})).await;
    let store2 = Agent::enroll(&h, "store-2", json!({"format": "store"})).await;
    let id = h.create_rollout(PLAN).await;
    let (s, v) = h
        .post(&format!("/v1/rollouts/{id}/start"), &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    store1.assignment(&h).await;

    let at = h.clock.now();
    let events: Vec<Value> = ["downloading", "installing", "verifying", "committed"]
        .iter()
        .enumerate()
        .map(|(i, phase)| {
            json!({"id": format!("offline-{i}"), "at": at, "kind": "phase",
                   "rollout_id": id, "release_id": "pos-2.5.0", "phase": phase})
        })
        .chain([
            json!({"id": "offline-9", "at": at, "kind": "installed", "name": "pos",
                       "release_id": "pos-2.5.0", "version": "2.5.0"}),
        ])
        .collect();
    let file = report_file("store-1", &events, &store1.key);

    // Refusals first: nothing of them is applied.
    let (s, _) = import(&h, &victor, "store-1", &file).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = import(&h, &alice, "store-2", &file).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["code"], "other_site", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not signed by site store-2's device key"),
        "{v}"
    );
    // Signed by store-2's key for store-2, but naming store-1: the key decides, then the name.
    let (s, v) = import(
        &h,
        &alice,
        "store-2",
        &report_file("store-1", &events, &store2.key),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["code"], "other_site", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is of site store-1, not store-2"),
        "{v}"
    );
    let mut tampered = file.clone();
    let mut payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(&tampered.payload)
            .unwrap(),
    )
    .unwrap();
    payload["events"][3]["phase"] = json!("failed");
    tampered.payload =
        base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&payload).unwrap());
    let (s, v) = import(&h, &alice, "store-1", &tampered).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["code"], "bad_signature", "{v}");
    let not_reports = Envelope::sign(REPORT_FILE_TYPE, b"{\"hello\": 1}", &[&store1.key]);
    let (s, v) = import(&h, &alice, "store-1", &not_reports).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["code"], "malformed", "{v}");
    let huge = Envelope {
        payload: "A".repeat(3 * 1024 * 1024),
        ..file.clone()
    };
    let (s, _) = import(&h, &alice, "store-1", &huge).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, v) = import(&h, &alice, "nowhere", &file).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(site_view(&h, &id, "store-1").await["phase"], Value::Null);

    // The file: every event applied, the site's view follows.
    let (s, v) = import(&h, &alice, "store-1", &file).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"site_id": "store-1", "events": 5, "applied": 5, "duplicates": 0})
    );
    let view = site_view(&h, &id, "store-1").await;
    assert_eq!(view["phase"], "committed", "{view}");
    assert_eq!(view["state"], "in_progress", "{view}");

    // Again: nothing new. Online with the same ids: nothing new either.
    let (s, v) = import(&h, &alice, "store-1", &file).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["applied"], 0);
    assert_eq!(v["duplicates"], 5);
    store1.open_session(&h).await;
    let (s, v) = h
        .post(
            "/v1/agent/reports",
            &store1.token,
            json!({"events": events}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"accepted": 0, "duplicates": 5}));

    let (_, audit) = h.get("/v1/audit", &h.admin).await;
    let entries: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "site.import_reports")
        .collect();
    assert_eq!(entries.len(), 2, "{audit}");
    assert!(
        entries
            .iter()
            .any(|e| e["detail"].as_str().unwrap().contains("5 applied")),
        "{audit}"
    );
    h.stop().await;
}
