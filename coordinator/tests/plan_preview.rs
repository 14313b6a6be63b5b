//! Plans checked before they run and rollouts that start themselves: `POST
//! /v1/rollouts/plan` answers which sites each wave would take, which are left out and
//! why, and when each wave could open, storing nothing; a rollout whose plan has a
//! `start_at` waits as `scheduled` and the wave controller starts it then (the clock is
//! moved, not waited for); an operator can abort it or start it early.

mod common;

use std::time::Duration;

use common::*;
use fleetwave_coordinator::config::Config;
use jiff::SignedDuration;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or_default()
}

/// Rows of every table a rollout or an action would write.
fn stored_rows(h: &Harness) -> Vec<(String, i64)> {
    let path = Config::load(&h.dir.path().join("coordinator.toml"))
        .unwrap()
        .database_path();
    let conn = rusqlite::Connection::open(path).unwrap();
    [
        "rollouts",
        "rollout_sites",
        "decisions",
        "audit_log",
        "assignments",
        "leases",
    ]
    .iter()
    .map(|t| {
        let n: i64 = conn
            .query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
            .unwrap();
        (t.to_string(), n)
    })
    .collect()
}

const PLAN: &str = r#"
name = "pos 2.5"
release = "pos-2.5.0"
selector = { format = "store" }

[[waves]]
name = "pigs"
selector = { cohort = "pig" }
gate = { bake = "1h" }

[[waves]]
name = "rest"
"#;

#[tokio::test]
async fn a_plan_preview_names_waves_and_exclusions_and_stores_nothing() {
    let h = Harness::new().await;
    let alice = h.token("alice", "operator").await;
    let victor = h.token("victor", "viewer").await;
    h.publish("2.4.9", 24).await;
    h.publish("2.5.0", 25).await;
    for (site, labels) in [
        ("pig-1", json!({"format": "store", "cohort": "pig"})),
        ("store-1", json!({"format": "store"})),
        ("store-2", json!({"format": "store"})),
        ("kiosk-1", json!({"format": "kiosk"})),
        ("store-old", json!({"format": "store"})),
        ("store-busy", json!({"format": "store", "team": "other"})),
    ] {
        Agent::enroll(&h, site, labels).await;
    }
    let (s, v) = h
        .post("/v1/sites/store-old/decommission", &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let other = h
        .create_rollout(
            "name = \"other\"\nrelease = \"pos-2.4.9\"\nselector = { team = \"other\" }\n\
             [[waves]]\nname = \"all\"\n",
        )
        .await;

    let before = stored_rows(&h);
    let (s, v) = h
        .post(
            "/v1/rollouts/plan",
            &alice,
            json!({"plan": PLAN, "format": "toml"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(stored_rows(&h), before, "a preview stores nothing");

    assert_eq!(v["fleet"], 6, "{v}");
    assert_eq!(v["selected"], 3, "{v}");
    assert_eq!(v["waves"][0]["name"], "pigs");
    assert_eq!(v["waves"][0]["sites"], json!(["pig-1"]));
    assert_eq!(v["waves"][1]["sites"], json!(["store-1", "store-2"]));
    assert_eq!(v["waves"][1]["count"], 2);
    let excluded: Vec<(String, String, String)> = v["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| {
            g["sites"].as_array().unwrap().iter().map(move |s| {
                (
                    g["reason"].as_str().unwrap().to_string(),
                    s["site_id"].as_str().unwrap().to_string(),
                    s["detail"].as_str().unwrap_or_default().to_string(),
                )
            })
        })
        .collect();
    assert_eq!(
        excluded,
        [
            ("decommissioned".into(), "store-old".into(), String::new()),
            (
                "in_another_rollout".into(),
                "store-busy".into(),
                format!("in rollout {other}")
            ),
            (
                "no_match".into(),
                "kiosk-1".into(),
                "the rollout's selector is format=store".into()
            ),
        ]
    );
    assert!(
        v["refused"].as_str().unwrap().contains("would be refused"),
        "{v}"
    );
    // Wave 1 opens an hour (wave 0's bake) after the rollout could start: now.
    let w0: jiff::Timestamp = v["waves"][0]["earliest_open"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let w1: jiff::Timestamp = v["waves"][1]["earliest_open"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(w1.duration_since(w0), SignedDuration::from_hours(1), "{v}");
    assert!(
        v["notes"][0].as_str().unwrap().contains("lower bound"),
        "{v}"
    );

    // Creating it is indeed refused (the busy site), and so the preview said.
    let (s, v) = h
        .post(
            "/v1/rollouts",
            &alice,
            json!({"plan": PLAN, "format": "toml"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");

    // Viewers cannot preview a submitted plan (it is the operator's step before creating).
    let (s, _) = h
        .post(
            "/v1/rollouts/plan",
            &victor,
            json!({"plan": PLAN, "format": "toml"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // A created rollout's preview: its own sites are not "in another rollout".
    let (s, v) = h.get(&format!("/v1/rollouts/{other}/plan"), &victor).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["waves"][0]["sites"], json!(["store-busy"]), "{v}");
    assert!(v["refused"].is_null(), "{v}");
    h.stop().await;
}

#[tokio::test]
async fn an_invalid_plan_gets_the_same_422_as_creation_and_nothing_is_stored() {
    let h = Harness::new().await;
    h.publish("2.5.0", 25).await;
    let past = (h.clock.now() - SignedDuration::from_hours(1)).to_string();
    for (plan, want) in [
        (PLAN.replace("pos-2.5.0", "pos-9.9.9"), "release: release \"pos-9.9.9\" is not published"),
        (
            PLAN.replace("[[waves]]\nname = \"pigs\"", &format!("start_at = \"{past}\"\n[[waves]]\nname = \"pigs\"")),
            "start_at:",
        ),
        (
            PLAN.replace("selector = { format = \"store\" }", "selector = { format = \"store\" }\nstart_at = \"2026-12-05T02:00:00[Mars/Olympus]\""),
            "line 5, column 12: start_at:",
        ),
        (PLAN.replace("1h", "forever"), "waves[0].gate.bake"),
    ] {
        let before = stored_rows(&h);
        let body = json!({"plan": plan, "format": "toml"});
        let (s, preview) = h.post("/v1/rollouts/plan", &h.admin, body.clone()).await;
        assert_eq!(stored_rows(&h), before, "nothing stored for {want}");
        let (s2, created) = h.post("/v1/rollouts", &h.admin, body).await;
        assert_eq!(
            (s, code(&preview)),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_plan"),
            "{preview}"
        );
        assert_eq!((s2, message(&created)), (s, message(&preview)), "same answer as creation");
        assert!(message(&preview).contains(want), "{want}: {preview}");
    }
    h.stop().await;
}

const SCHEDULED: &str = r#"
name = "pos 2.5"
release = "pos-2.5.0"
start_at = "START"

[[waves]]
name = "all"
"#;

/// Runs one wave controller pass now (the controller loop runs its own too).
async fn controller_pass(h: &Harness) {
    let app = h.running.as_ref().unwrap().app.clone();
    app.engine.tick_all().await.unwrap();
}

async fn status(h: &Harness, id: &str) -> Value {
    h.rollout(id).await
}

#[tokio::test]
async fn a_scheduled_rollout_starts_itself_at_its_start_at() {
    let h = Harness::new().await;
    h.publish("2.5.0", 25).await;
    let agent = Agent::enroll(&h, "store-1", json!({"format": "store"})).await;
    // Two hours ahead, written as a local time in New York.
    let ny = jiff::tz::TimeZone::get("America/New_York").unwrap();
    let start = (h.clock.now() + SignedDuration::from_hours(2))
        .round(jiff::Unit::Second)
        .unwrap();
    let local = start.to_zoned(ny).datetime().to_string();
    let plan = SCHEDULED.replace("START", &format!("{local}[America/New_York]"));
    let id = h.create_rollout(&plan).await;
    let v = status(&h, &id).await;
    assert_eq!(v["status"], "pending");
    assert_eq!(v["start_at"]["at"], json!(start), "{v}");
    assert_eq!(v["start_at"]["zone"], "America/New_York");

    let (s, v) = h
        .post(&format!("/v1/rollouts/{id}/start"), &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "scheduled", "{v}");
    assert!(
        v["status_reason"]
            .as_str()
            .unwrap()
            .starts_with("starts at"),
        "{v}"
    );
    // Nothing is assigned while it waits, whatever the controller passes in between.
    controller_pass(&h).await;
    h.clock.advance(Duration::from_secs(30 * 60));
    controller_pass(&h).await;
    assert_eq!(agent.poll(&h).await, None);
    assert_eq!(status(&h, &id).await["status"], "scheduled");

    // Its start_at comes: the controller starts it and says so in the timeline.
    h.clock.advance(Duration::from_secs(90 * 60 + 1));
    let v = eventually("the controller to start the rollout", || {
        let (h, id) = (&h, &id);
        async move {
            let v = status(h, id).await;
            v["waves"][0]["opened_at"].is_string().then_some(v)
        }
    })
    .await;
    assert_eq!(v["status"], "running", "{v}");
    let started: Vec<&str> = v["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] == "started")
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    assert_eq!(started.len(), 2, "{v}");
    assert!(started[0].contains("scheduled"), "{started:?}");
    assert!(
        started[1].starts_with(&format!("started at its start_at {start}"))
            && started[1].contains("(America/New_York)"),
        "{started:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_scheduled_rollout_can_be_aborted_or_started_early() {
    let h = Harness::new().await;
    h.publish("2.5.0", 25).await;
    let alice = h.token("alice", "operator").await;
    let start = (h.clock.now() + SignedDuration::from_hours(5))
        .round(jiff::Unit::Second)
        .unwrap();
    let plan = SCHEDULED.replace("START", &start.to_string());

    // Aborted before its time: it never starts.
    let id = h.create_rollout(&plan).await;
    h.post(&format!("/v1/rollouts/{id}/start"), &alice, json!({}))
        .await;
    let (s, v) = h
        .post(&format!("/v1/rollouts/{id}/abort"), &alice, json!({}))
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("aborted")),
        "{v}"
    );
    h.clock.advance(Duration::from_secs(6 * 3600));
    controller_pass(&h).await;
    assert_eq!(status(&h, &id).await["status"], "aborted");

    // Started early by an operator: runs at once, audited, and the timeline says so.
    let start = (h.clock.now() + SignedDuration::from_hours(5))
        .round(jiff::Unit::Second)
        .unwrap();
    let agent = Agent::enroll(&h, "store-1", json!({})).await;
    let plan = SCHEDULED.replace("START", &start.to_string());
    let id2 = h.create_rollout(&plan).await;
    let (_, v) = h
        .post(&format!("/v1/rollouts/{id2}/start"), &alice, json!({}))
        .await;
    assert_eq!(v["status"], "scheduled", "{v}");
    let (s, v) = h
        .post(&format!("/v1/rollouts/{id2}/start"), &alice, json!({}))
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("running")),
        "{v}"
    );
    let last = v["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|d| d["kind"] == "started")
        .unwrap()
        .clone();
    let why = last["reason"].as_str().unwrap();
    assert!(
        why.starts_with("started early by alice")
            && why.ends_with(&format!("ahead of its start_at {start}")),
        "{last}"
    );
    assert_eq!(agent.assignment(&h).await.0, id2);
    let (_, audit) = h.get("/v1/audit", &h.admin).await;
    let starts = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "rollout.start" && e["target"] == id2.as_str())
        .count();
    assert_eq!(starts, 2, "{audit}");
    assert_eq!(status(&h, &id).await["status"], "aborted", "still aborted");
    h.stop().await;
}
