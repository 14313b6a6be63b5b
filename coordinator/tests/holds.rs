//! Holding a site (`POST /v1/sites/{id}/hold`, `/unhold`) against a real coordinator: a
//! held site is placed by no new rollout (and the dry run says why), an active rollout
//! that had not started on it leaves it out of its gate with the reason in its timeline,
//! lifting the hold lets it join; operators only, a reason required, audited.

mod common;

use common::{Agent, Harness};
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

fn members(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["site_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_held_site_is_left_out_until_its_hold_is_lifted() {
    let h = Harness::new().await;
    let alice = h.token("alice", "operator").await;
    let victor = h.token("victor", "viewer").await;
    h.publish("2.5.0", 25).await;
    for site in ["store-1", "store-2", "store-3"] {
        Agent::enroll(&h, site, json!({"format": "store"})).await;
    }

    // Refusals: a viewer, no reason, an unknown site.
    let (s, _) = h
        .post("/v1/sites/store-3/hold", &victor, json!({"reason": "x"}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = h
        .post("/v1/sites/store-3/hold", &alice, json!({"reason": "  "}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["code"], "invalid_hold");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("reason:"),
        "{v}"
    );
    let (s, _) = h
        .post("/v1/sites/nowhere/hold", &alice, json!({"reason": "x"}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Hold store-3: the site says so, the list too.
    let (s, v) = h
        .post(
            "/v1/sites/store-3/hold",
            &alice,
            json!({"reason": "till replaced by the vendor"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["hold"]["reason"], "till replaced by the vendor");
    assert!(
        v["hold"]["held_by"].as_str().unwrap().contains("alice"),
        "{v}"
    );
    let (_, list) = h.get("/v1/sites", &victor).await;
    let held: Vec<&str> = list["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["hold"].is_object())
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(held, ["store-3"]);

    // The dry run leaves it out and says why; creating places the others only.
    let (s, v) = h
        .post(
            "/v1/rollouts/plan",
            &alice,
            json!({"plan": PLAN, "format": "toml"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let group = v["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["reason"] == "held")
        .unwrap_or_else(|| panic!("no held group: {v}"))
        .clone();
    assert_eq!(group["sites"][0]["site_id"], "store-3");
    assert!(
        group["sites"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("till replaced by the vendor"),
        "{group}"
    );
    let id = h.create_rollout(PLAN).await;
    let (_, sites) = h.get(&format!("/v1/rollouts/{id}/sites"), &alice).await;
    assert_eq!(members(&sites), ["store-1", "store-2"]);

    // Holding store-2, which the rollout has not started on: it leaves the gate.
    let (s, v) = h
        .post(
            "/v1/sites/store-2/hold",
            &alice,
            json!({"reason": "flooded"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, sites) = h.get(&format!("/v1/rollouts/{id}/sites"), &alice).await;
    let store2 = sites["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["site_id"] == "store-2")
        .unwrap()
        .clone();
    assert_eq!(store2["state"], "skipped", "{sites}");
    let timeline = h.rollout(&id).await["decisions"].to_string();
    assert!(
        timeline.contains("site store-2 held by") && timeline.contains("flooded"),
        "{timeline}"
    );

    // Lifting store-3's hold: it joins the rollout that selects it.
    let (s, v) = h.post("/v1/sites/store-3/unhold", &alice, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["hold"].is_null(), "{v}");
    let (_, sites) = h.get(&format!("/v1/rollouts/{id}/sites"), &alice).await;
    assert_eq!(members(&sites), ["store-1", "store-2", "store-3"]);

    // Audited, with the reason.
    let (_, audit) = h.get("/v1/audit", &h.admin).await;
    let audit = audit.to_string();
    assert!(
        audit.contains("site.hold")
            && audit.contains("site.unhold")
            && audit.contains("flooded")
            && audit.contains(&format!("left out of {id}")),
        "{audit}"
    );
}
