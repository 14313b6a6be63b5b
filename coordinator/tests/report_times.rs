//! Report events dated in the future (issue 15, item 10), through the agent API: an event
//! counts at its own time but never later than its arrival, so a clock running ahead (or
//! an agent that lies) can neither freeze a site's health until that date nor close a
//! bake early. The event is still accepted (the agent's outbox moves on) and stored as
//! sent.

mod common;

use common::{Agent, Harness};
use jiff::Timestamp;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Sends one event dated `at` as `agent`; returns the acknowledgement.
async fn report_at(h: &Harness, agent: &Agent, id: &str, at: Timestamp, body: Value) -> Value {
    let mut e = body;
    e["id"] = json!(id);
    e["at"] = json!(at);
    let (s, v) = h
        .post("/v1/agent/reports", &agent.token, json!({"events": [e]}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

fn health(healthy: bool) -> Value {
    json!({"kind": "health", "healthy": healthy, "summary": {"passed": 1, "failed": u32::from(!healthy), "failing": []}})
}

fn year_2099() -> Timestamp {
    "2099-01-01T00:00:00Z".parse().unwrap()
}

#[tokio::test]
async fn a_heartbeat_dated_in_2099_does_not_hide_the_sites_later_heartbeats() {
    let h = Harness::new().await;
    let agent = Agent::enroll(&h, "store-1", json!({"cohort": "general"})).await;

    let ack = report_at(&h, &agent, "hb-future", year_2099(), health(false)).await;
    assert_eq!(
        ack["accepted"], 1,
        "accepted, so the agent's outbox moves on"
    );
    let before_now = Timestamp::now();
    report_at(&h, &agent, "hb-now", before_now, health(true)).await;

    let (s, site) = h.get("/v1/sites/store-1", &h.admin).await;
    assert_eq!(s, StatusCode::OK, "{site}");
    assert_eq!(
        site["healthy"], true,
        "the later, real heartbeat counts: {site}"
    );
    let health_at: Timestamp = site["health_at"].as_str().unwrap().parse().unwrap();
    assert!(health_at <= Timestamp::now(), "{site}");

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
        metrics.contains("fleetwave_report_events_total{result=\"future_dated\"} 1"),
        "{metrics}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_healthy_report_dated_in_2099_does_not_close_the_bake() {
    let h = Harness::new().await;
    let release = h.publish("2.4.0", 2).await;
    let mut agent = Agent::enroll(&h, "pig-1", json!({"cohort": "pig"})).await;
    let id = h
        .create_rollout(&format!(
            "name = \"bake\"\nrelease = \"{release}\"\n[[waves]]\nname = \"all\"\ngate = {{ bake = \"1h\" }}\n"
        ))
        .await;
    let (s, v) = h
        .post(&format!("/v1/rollouts/{id}/start"), &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    agent.install(&h, &release).await;

    // Committed just now; a healthy report "from 2099" would be 75 years past the bake.
    report_at(&h, &agent, "healthy-future", year_2099(), health(true)).await;

    let (s, v) = h.get(&format!("/v1/rollouts/{id}/sites"), &h.admin).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let site = &v["sites"][0];
    assert_eq!(site["site_id"], "pig-1", "{v}");
    assert_eq!(
        site["state"], "in_progress",
        "still baking: the report counts at its arrival, minutes after the commit: {v}"
    );
    assert_eq!(h.rollout(&id).await["status"], "running");
    h.stop().await;
}
