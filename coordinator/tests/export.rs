//! `GET /v1/rollouts/{id}/export` over real TLS: a rollout that halted on a failed site is
//! exported with its timeline, the failed site in the agent's own words with its reports
//! around the failure, the audit entries about it, and the versions before and now.

mod common;

use common::{Agent, Harness};
use reqwest::StatusCode;
use serde_json::{Value, json};

const PLAN: &str = r#"
name = "pos 2.5"
release = "pos-2.5.0"
auto_rollback = false

[[waves]]
name = "all"
gate = { bake = "10m", failure_budget = 0 }
"#;

#[tokio::test]
async fn a_halted_rollout_exports_its_story() {
    let h = Harness::new().await;
    let viewer = h.token("victor", "viewer").await;
    h.publish("2.5.0", 25).await;
    let mut good = Agent::enroll(&h, "store-1", json!({"region": "eu"})).await;
    let mut bad = Agent::enroll(&h, "store-2", json!({"region": "eu"})).await;
    let id = h.create_rollout(PLAN).await;
    let (s, v) = h
        .post(&format!("/v1/rollouts/{id}/start"), &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    good.install(&h, "pos-2.5.0").await;
    let (rollout, seq) = bad.assignment(&h).await;
    bad.lease(&h, &rollout, seq).await;
    bad.phase(&h, &rollout, "pos-2.5.0", "downloading").await;
    bad.failed(
        &h,
        &rollout,
        "pos-2.5.0",
        "disk full: 12 MiB free, 80 MiB needed",
    )
    .await;
    bad.health(&h, true).await;
    common::eventually("the rollout to halt", || async {
        (h.rollout(&id).await["status"] == "halted").then_some(())
    })
    .await;

    // A viewer may export; the answer is one self-contained document.
    let (s, x) = h.get(&format!("/v1/rollouts/{id}/export"), &viewer).await;
    assert_eq!(s, StatusCode::OK, "{x}");
    assert_eq!(x["rollout"]["id"], id);
    assert_eq!(x["rollout"]["status"], "halted");
    assert!(
        x["exported_by"].as_str().unwrap().starts_with("victor"),
        "{x}"
    );
    assert_eq!(x["release"]["id"], "pos-2.5.0");
    assert!(
        x["rollout"]["plan"]
            .as_str()
            .unwrap()
            .contains("failure_budget = 0")
    );
    let halt = x["rollout"]["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "halt")
        .unwrap_or_else(|| panic!("no halt decision: {x}"));
    assert!(!halt["reason"].as_str().unwrap().is_empty());

    // Only the site that went wrong, in its own words, with the reports around it.
    let sites = x["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 1, "{x}");
    let s2 = &sites[0];
    assert_eq!(s2["site_id"], "store-2");
    assert_eq!(s2["state"], "failed");
    assert_eq!(s2["failure"], "disk full: 12 MiB free, 80 MiB needed");
    let kinds: Vec<(String, String)> = s2["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or("").to_string(),
                e["phase"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds.first(),
        Some(&("phase".to_string(), "downloading".to_string())),
        "oldest first: {kinds:?}"
    );
    assert!(
        kinds.contains(&("phase".to_string(), "failed".to_string())),
        "{kinds:?}"
    );
    assert!(
        kinds.iter().any(|(k, _)| k == "health"),
        "the report after the failure is there too: {kinds:?}"
    );
    assert_eq!(x["sites_omitted"], 0);

    // Who did what to it.
    let actions: Vec<&str> = x["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"rollout.start"), "{actions:?}");
    assert!(
        x["audit"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["target"] == id),
        "only entries about this rollout"
    );

    // Versions: store-1 runs 2.5.0 now; store-2 reports nothing installed.
    let now: Value = x["versions_now"].clone();
    assert_eq!(now["2.5.0"], 1, "{now}");
    assert_eq!(now["none"], 1, "{now}");
    assert_eq!(x["releases_before"]["unknown"], 2, "{x}");

    // Unknown rollout: 404; no token: 401.
    let (s, _) = h.get("/v1/rollouts/nope/export", &viewer).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h.get(&format!("/v1/rollouts/{id}/export"), "").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    h.stop().await;
}
