//! The metrics the alert rules in `deploy/prometheus/` stand on, read from `/metrics` of a
//! real coordinator whose clock the test moves: how long a wave has waited for approval
//! (kept across a restart: it starts at the stored `request_approval` decision), and how
//! many active sites have not polled for 15 minutes, an hour, a day.

mod common;

use std::time::Duration;

use common::{Agent, Harness, eventually};
use serde_json::json;

const PLAN: &str = r#"
name = "pos 2.5 to the fleet"
release = "pos-2.5.0"

[[waves]]
name = "pigs"
selector = { cohort = "pig" }
gate = { bake = "1s", min_sample = 1, success_ratio = 1.0, approval = true }

[[waves]]
name = "everyone"
gate = { bake = "30m", success_ratio = 0.75, failure_budget = 1 }
"#;

async fn metrics(h: &Harness) -> String {
    let res = h.http.get(h.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    res.text().await.unwrap()
}

/// The value of the sample `series` (name and labels exactly as exported).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn wait_for(h: &Harness, what: &str, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
    eventually(what, || async {
        let text = metrics(h).await;
        sample(&text, series).filter(|v| ok(*v))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_wait_and_sites_not_seen_are_exported() {
    let mut h = Harness::new().await;
    let mut pig = Agent::enroll(&h, "pig-1", json!({"cohort": "pig"})).await;
    let mut store = Agent::enroll(&h, "store-1", json!({"cohort": "general"})).await;
    for a in [&mut pig, &mut store] {
        a.installed(&h, "pos-2.4.0", "2.4.0").await;
        a.health(&h, true).await;
    }
    let release = h.publish("2.5.0", 25).await;
    let id = h.create_rollout(PLAN).await;
    pig.poll(&h).await;
    store.poll(&h).await;
    // Both sites polled just now (last-seen times are written about once a second).
    wait_for(
        &h,
        "both sites seen",
        r#"fleetwave_sites_not_seen{since="15m"}"#,
        |v| v == 0.0,
    )
    .await;
    let text = metrics(&h).await;
    assert_eq!(
        sample(&text, "fleetwave_waves_awaiting_approval"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(sample(&text, "fleetwave_approval_wait_seconds"), Some(0.0));

    let (s, v) = h
        .post(&format!("/v1/rollouts/{id}/start"), &h.admin, json!({}))
        .await;
    assert_eq!(s, reqwest::StatusCode::OK, "{v}");
    pig.install(&h, &release).await;
    h.clock.advance(Duration::from_millis(1100));
    pig.health(&h, true).await;
    wait_for(
        &h,
        "the pigs' wave to wait for approval",
        "fleetwave_waves_awaiting_approval",
        |v| v == 1.0,
    )
    .await;

    // Three hours later (on the coordinator's clock) nobody approved and nobody polled.
    h.clock.advance(Duration::from_secs(3 * 3600));
    let waited = wait_for(
        &h,
        "the wait to be three hours",
        "fleetwave_approval_wait_seconds",
        |v| v >= 3.0 * 3600.0,
    )
    .await;
    assert!(waited < 4.0 * 3600.0, "{waited}");
    let text = metrics(&h).await;
    for (since, n) in [("15m", 2.0), ("1h", 2.0), ("24h", 0.0)] {
        let series = format!(r#"fleetwave_sites_not_seen{{since="{since}"}}"#);
        assert_eq!(sample(&text, &series), Some(n), "{series}\n{text}");
    }

    // One site polls again (its session expired meanwhile).
    store.open_session(&h).await;
    store.poll(&h).await;
    wait_for(
        &h,
        "one site seen again",
        r#"fleetwave_sites_not_seen{since="15m"}"#,
        |v| v == 1.0,
    )
    .await;

    // A restart does not reset the wait: it starts at the stored request_approval.
    h.restart().await;
    wait_for(
        &h,
        "the wait to survive the restart",
        "fleetwave_approval_wait_seconds",
        |v| v >= 3.0 * 3600.0,
    )
    .await;

    // Approving ends the wait.
    let (s, v) = h
        .post(
            &format!("/v1/rollouts/{id}/approve"),
            &h.admin,
            json!({"wave": 0}),
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::OK, "{v}");
    wait_for(
        &h,
        "no wave to wait for approval",
        "fleetwave_waves_awaiting_approval",
        |v| v == 0.0,
    )
    .await;
    let text = metrics(&h).await;
    assert_eq!(
        sample(&text, "fleetwave_approval_wait_seconds"),
        Some(0.0),
        "{text}"
    );
}
