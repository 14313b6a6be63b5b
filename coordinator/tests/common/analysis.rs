//! Golden-signal analysis fixtures shared by the gate tests (`analysis_gate.rs`) and the
//! dashboard's picture test (`dashboard_http.rs`): a canary wave on a new release against
//! sites on the previous one, and per-minute `error_ratio` samples sent as agents send
//! them.

use std::time::Duration;

use jiff::Timestamp;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Agent, Harness};

/// A two-wave plan (canary, rest; 30 minutes of bake each, `auto_rollback`) judging
/// `error_ratio` (absolute tolerance 0.01, 20 samples and `min_sites` sites per group).
pub fn plan(min_sites: u32) -> String {
    format!(
        r#"
name = "pos 2.5"
release = "pos-2.5.0"
auto_rollback = true

[[waves]]
name = "canary"
selector = {{ cohort = "canary" }}
gate = {{ bake = "30m", success_ratio = 0.5 }}

[[waves]]
name = "rest"
gate = {{ bake = "30m" }}

[[analysis]]
signal = "error_ratio"
direction = "increase_is_bad"
tolerance = {{ absolute = 0.01 }}
min_sites = {min_sites}
min_samples = 20
"#
    )
}

pub struct Fleet {
    pub canary: Vec<Agent>,
    pub rest: Vec<Agent>,
    pub rollout: String,
    pub release: String,
}

/// `canaries` canary and 6 other sites on pos 2.4.0; a rollout of pos 2.5.0 started, and
/// every canary has committed it (at the clock's current time).
pub async fn fleet(h: &Harness, canaries: usize, min_sites: u32) -> Fleet {
    let mut canary = Vec::new();
    let mut rest = Vec::new();
    for i in 0..canaries {
        let mut a = Agent::enroll(h, &format!("canary-{i}"), json!({"cohort": "canary"})).await;
        a.installed(h, "pos-2.4.0", "2.4.0").await;
        canary.push(a);
    }
    for i in 0..6 {
        let mut a = Agent::enroll(h, &format!("store-{i}"), json!({"cohort": "general"})).await;
        a.installed(h, "pos-2.4.0", "2.4.0").await;
        rest.push(a);
    }
    let release = h.publish("2.5.0", 25).await;
    let rollout = h.create_rollout(&plan(min_sites)).await;
    let (s, v) = h
        .post(
            &format!("/v1/rollouts/{rollout}/start"),
            &h.admin,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for a in canary.iter_mut() {
        a.install(h, &release).await;
    }
    Fleet {
        canary,
        rest,
        rollout,
        release,
    }
}

pub fn minute_after(t: Timestamp, m: i64) -> Timestamp {
    let s = t.as_second();
    Timestamp::from_second(s - s.rem_euclid(60) + 60 * m).unwrap()
}

/// Each site sends `minutes` minutes of `error_ratio` after the canaries' commit: the
/// canaries `canary_ratio` and the others 1 %, each with a little site- and
/// minute-dependent noise (the same for every run).
pub async fn send_minutes(h: &Harness, f: &Fleet, minutes: i64, canary_ratio: f64) {
    let start = h.clock.now();
    // The minutes pass first: agents send only finished minutes.
    h.clock.advance(Duration::from_secs(60 * minutes as u64));
    let groups = [
        (&f.canary, canary_ratio, f.release.as_str()),
        (&f.rest, 0.01, "pos-2.4.0"),
    ];
    for (agents, ratio, release) in groups {
        for (i, a) in agents.iter().enumerate() {
            let list: Vec<Value> = (1..=minutes)
                .map(|m| {
                    let noise = ((i as i64 * 7 + m * 3) % 10) as f64 * 0.0004;
                    json!({
                        "stream": "pos",
                        "release_id": release,
                        "minute": minute_after(start, m),
                        "values": {"error_ratio": ratio + noise, "requests_per_second": 20.0},
                        "scrapes": 4,
                    })
                })
                .collect();
            let (s, v) = h
                .post(
                    "/v1/agent/reports",
                    &a.token,
                    json!({"events": [], "signals": list}),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{}: {v}", a.site);
        }
    }
    // A new minute: the controller judges again, with every minute sent (it judges at
    // most once a minute, and may have judged this one before the samples arrived).
    h.clock.advance(Duration::from_secs(60));
}

pub fn decisions(rollout: &Value) -> Vec<(String, String)> {
    rollout["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_string(),
                d["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}
