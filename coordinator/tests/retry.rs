//! Retrying failed sites (`POST /v1/rollouts/{id}/retry`) against a real coordinator: a
//! failed site gets a new assignment with a higher sequence, installs again and counts
//! once in the gate by its last attempt; the timeline names the attempt; a whole wave's
//! failed sites are retried at once; what cannot be retried is refused with the reason.
//! The plan's `[retry]` policy does the same by itself after its back-off (the adjustable
//! clock moves time), until the site runs out of attempts; schema v8 takes the attempt
//! numbers of older databases from their timelines once.

mod common;

use std::time::Duration;

use common::{Agent, Harness, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};

const PLAN: &str = r#"
name = "pos 2.5"
release = "pos-2.5.0"

[[waves]]
name = "stores"
gate = { bake = "1s", success_ratio = 0.3, failure_budget = 2 }
"#;

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

async fn wave_counts(h: &Harness, id: &str) -> Value {
    h.rollout(id).await["waves"][0]["tally"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_site_installs_again_and_counts_once_by_its_last_attempt() {
    let h = Harness::new().await;
    let mut agents = Vec::new();
    for i in 0..3 {
        let mut a = Agent::enroll(&h, &format!("store-{i}"), json!({"cohort": "general"})).await;
        a.installed(&h, "pos-2.4.0", "2.4.0").await;
        agents.push(a);
    }
    let release = h.publish("2.5.0", 25).await;
    let id = h.create_rollout(PLAN).await;
    let (s, v) = h
        .post(&format!("/v1/rollouts/{id}/start"), &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // store-0 and store-1 fail (a full disk), store-2 installs.
    let mut first_sequence = 0;
    for a in agents.iter_mut().take(2) {
        let (rollout, seq) = a.assignment(&h).await;
        a.lease(&h, &rollout, seq).await;
        a.failed(&h, &rollout, &release, "prepare: no space left on device")
            .await;
        first_sequence = seq;
    }
    agents[2].install(&h, &release).await;
    eventually("two failed sites", || async {
        (wave_counts(&h, &id).await["failed"] == 2).then_some(())
    })
    .await;

    // Refused: a site that did not fail, an unknown site, both or neither target.
    for (body, want) in [
        (json!({"site_id": "store-2"}), "nothing_to_retry"),
        (json!({"site_id": "nowhere"}), "nothing_to_retry"),
        (json!({"site_id": "store-0", "wave": 0}), "bad_request"),
        (json!({}), "bad_request"),
        (json!({"wave": 7}), "bad_request"),
    ] {
        let (s, v) = h
            .post(&format!("/v1/rollouts/{id}/retry"), &h.admin, body.clone())
            .await;
        assert!(s.is_client_error(), "{body}: {s} {v}");
        assert_eq!(code(&v), want, "{body}: {v}");
    }
    let (_, v) = h
        .post(
            &format!("/v1/rollouts/{id}/retry"),
            &h.admin,
            json!({"site_id": "store-2"}),
        )
        .await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("store-2 has not failed"),
        "{v}"
    );
    // Viewers cannot retry.
    let viewer = h.token("victor", "viewer").await;
    let (s, _) = h
        .post(
            &format!("/v1/rollouts/{id}/retry"),
            &viewer,
            json!({"site_id": "store-0"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Retry store-0: a new attempt with a higher sequence, and the timeline says so.
    let (s, v) = h
        .post(
            &format!("/v1/rollouts/{id}/retry"),
            &h.admin,
            json!({"site_id": "store-0"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let timeline = h.rollout(&id).await["decisions"].clone();
    let note = timeline
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "retried")
        .unwrap_or_else(|| panic!("no retried decision: {timeline}"));
    let words = note["reason"].as_str().unwrap();
    assert!(
        words.contains("site store-0 (attempt 2) retried by") && words.contains("no space left"),
        "{words}"
    );
    assert_eq!(
        wave_counts(&h, &id).await["failed"],
        1,
        "store-0 is not failed any more"
    );
    let (rollout, _) = eventually("a new assignment for store-0", || async {
        agents[0]
            .poll(&h)
            .await
            .filter(|(_, s)| *s > first_sequence)
    })
    .await;
    assert_eq!(rollout, id);
    agents[0].install(&h, &release).await;

    // The audit log has it.
    let (_, audit) = h.get("/v1/audit", &h.admin).await;
    assert!(audit.to_string().contains("rollout.retry"), "{audit}");

    // The rest of wave 0 at once: store-1 is the only failed site left.
    let (s, v) = h
        .post(
            &format!("/v1/rollouts/{id}/retry"),
            &h.admin,
            json!({"wave": 0}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let words = h.rollout(&id).await["decisions"].to_string();
    assert!(
        words.contains("1 failed site(s) of wave 0 retried by")
            && words.contains("store-1 (attempt 2)"),
        "{words}"
    );
    let (s, v) = h
        .post(
            &format!("/v1/rollouts/{id}/retry"),
            &h.admin,
            json!({"wave": 0}),
        )
        .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "nothing_to_retry"),
        "{v}"
    );
    agents[1].install(&h, &release).await;

    // Every site baked healthy by its last attempt: the wave passes and the rollout
    // completes, each site counted once.
    h.clock.advance(Duration::from_millis(1100));
    for a in agents.iter_mut() {
        a.health(&h, true).await;
    }
    let view = eventually("the rollout to complete", || async {
        let v = h.rollout(&id).await;
        (v["status"] == "completed").then_some(v)
    })
    .await;
    let wave = &view["waves"][0]["tally"];
    assert_eq!(
        (wave["succeeded"].as_u64(), wave["failed"].as_u64()),
        (Some(3), Some(0)),
        "{wave}"
    );
}

/// Store-0 fails, store-1 installs; nothing tolerated, so only the policy keeps the
/// rollout going.
const RETRY_PLAN: &str = r#"
name = "pos 2.5 with retries"
release = "pos-2.5.0"

[retry]
max_attempts = 3
backoff = "5m"
max_backoff = "1h"

[[waves]]
name = "stores"
gate = { bake = "1s", success_ratio = 1.0, failure_budget = 0 }
"#;

fn decisions_of(view: &Value, kind: &str) -> Vec<String> {
    view["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| d["reason"].as_str().unwrap().to_string())
        .collect()
}

/// Pauses and resumes the rollout: the resume runs a controller pass at the clock's
/// current time before it answers, so what that pass decides is in the timeline after.
async fn controller_pass(h: &Harness, id: &str) {
    for action in ["pause", "resume"] {
        let (s, v) = h
            .post(&format!("/v1/rollouts/{id}/{action}"), &h.admin, json!({}))
            .await;
        assert_eq!(s, StatusCode::OK, "{action}: {v}");
    }
}

async fn started(h: &Harness, plan: &str) -> (Vec<Agent>, String, String) {
    let mut agents = Vec::new();
    for i in 0..2 {
        let mut a = Agent::enroll(h, &format!("store-{i}"), json!({"cohort": "general"})).await;
        a.installed(h, "pos-2.4.0", "2.4.0").await;
        agents.push(a);
    }
    let release = h.publish("2.5.0", 25).await;
    let id = h.create_rollout(plan).await;
    let (s, v) = h
        .post(&format!("/v1/rollouts/{id}/start"), &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    (agents, release, id)
}

/// Fails the site's current assignment; returns its sequence.
async fn fail_once(h: &Harness, a: &mut Agent, release: &str, after: u64) -> u64 {
    let (rollout, seq) = eventually("a new assignment", || async {
        a.poll(h).await.filter(|(_, s)| *s > after)
    })
    .await;
    // As a real agent does: `accepted` first for a new assignment, then the lease.
    a.phase(h, &rollout, release, "accepted").await;
    a.lease(h, &rollout, seq).await;
    a.phase(h, &rollout, release, "leased").await;
    a.failed(h, &rollout, release, "prepare: no space left on device")
        .await;
    seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_policy_tries_a_failed_site_again_after_its_back_off_until_it_runs_out() {
    let mut h = Harness::new().await;
    let (mut agents, release, id) = started(&h, RETRY_PLAN).await;
    agents[1].install(&h, &release).await;

    // Attempt 1 fails: scheduled once, in progress, the rollout runs on (budget 0).
    let seq1 = fail_once(&h, &mut agents[0], &release, 0).await;
    let view = eventually("the retry to be scheduled", || async {
        let v = h.rollout(&id).await;
        (!decisions_of(&v, "retry_scheduled").is_empty()).then_some(v)
    })
    .await;
    let note = &decisions_of(&view, "retry_scheduled")[0];
    assert!(
        note.starts_with(
            "site store-0 failed (attempt 1 of 3): prepare: no space left on device; retrying at"
        ) && note.ends_with("(back-off 5m)"),
        "{note}"
    );
    assert_eq!(view["status"], "running", "{view}");
    assert_eq!(view["waves"][0]["tally"]["failed"], 0, "{view}");

    // The schedule survives a restart and is not made again; nothing starts before it.
    h.restart().await;
    for a in agents.iter_mut() {
        a.open_session(&h).await;
    }
    controller_pass(&h, &id).await;
    let view = h.rollout(&id).await;
    assert_eq!(decisions_of(&view, "retry_scheduled").len(), 1, "{view}");
    assert!(decisions_of(&view, "retried").is_empty(), "{view}");
    assert_eq!(agents[0].poll(&h).await.map(|p| p.1), Some(seq1));
    // An operator cannot jump the queue: the site has not failed for good.
    let (s, v) = h
        .post(
            &format!("/v1/rollouts/{id}/retry"),
            &h.admin,
            json!({"site_id": "store-0"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("store-0 is waiting for its automatic retry at"),
        "{v}"
    );

    // The back-off passes: attempt 2 starts with a new assignment.
    h.clock.advance(Duration::from_secs(5 * 60 + 1));
    let view = eventually("attempt 2 to start", || async {
        let v = h.rollout(&id).await;
        (!decisions_of(&v, "retried").is_empty()).then_some(v)
    })
    .await;
    assert_eq!(
        decisions_of(&view, "retried"),
        [
            "site store-0 retried (attempt 2 of 3) by the plan's retry policy; attempt 1 of 3 \
          had failed: prepare: no space left on device"
        ]
    );
    let seq2 = fail_once(&h, &mut agents[0], &release, seq1).await;

    // Attempt 2 fails: twice the back-off.
    let view = eventually("the second retry to be scheduled", || async {
        let v = h.rollout(&id).await;
        (decisions_of(&v, "retry_scheduled").len() == 2).then_some(v)
    })
    .await;
    let note = &decisions_of(&view, "retry_scheduled")[1];
    assert!(
        note.contains("(attempt 2 of 3)") && note.ends_with("(back-off 10m)"),
        "{note}"
    );
    h.clock.advance(Duration::from_secs(5 * 60));
    controller_pass(&h, &id).await;
    assert_eq!(decisions_of(&h.rollout(&id).await, "retried").len(), 1);
    h.clock.advance(Duration::from_secs(5 * 60 + 1));
    fail_once(&h, &mut agents[0], &release, seq2).await;

    // Attempt 3 of 3 fails: no attempt left, it counts as failed once and the rollout
    // halts on its budget of 0.
    let view = eventually("the rollout to halt", || async {
        let v = h.rollout(&id).await;
        (v["status"] == "halted").then_some(v)
    })
    .await;
    assert_eq!(decisions_of(&view, "retry_scheduled").len(), 2, "{view}");
    let tally = &view["waves"][0]["tally"];
    assert_eq!(tally["failed"], 1, "{tally}");
    assert!(
        decisions_of(&view, "halt")[0].contains("1 failures of budget 0"),
        "{view}"
    );

    // An operator may still retry it: one more attempt, numbered from the same count.
    let (s, v) = h
        .post(
            &format!("/v1/rollouts/{id}/retry"),
            &h.admin,
            json!({"site_id": "store-0"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let view = h.rollout(&id).await;
    let by_hand = decisions_of(&view, "retried");
    assert!(
        by_hand[2].starts_with("site store-0 (attempt 4) retried by"),
        "{by_hand:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_succeeds_on_its_retry_counts_once_and_the_rollout_completes() {
    let h = Harness::new().await;
    let plan = RETRY_PLAN.replace("max_attempts = 3", "max_attempts = 2");
    let (mut agents, release, id) = started(&h, &plan).await;
    agents[1].install(&h, &release).await;
    let seq1 = fail_once(&h, &mut agents[0], &release, 0).await;
    eventually("the retry to be scheduled", || async {
        let v = h.rollout(&id).await;
        (!decisions_of(&v, "retry_scheduled").is_empty()).then_some(())
    })
    .await;
    h.clock.advance(Duration::from_secs(5 * 60 + 1));
    eventually("a new assignment for store-0", || async {
        agents[0].poll(&h).await.filter(|(_, s)| *s > seq1)
    })
    .await;
    agents[0].install(&h, &release).await;
    h.clock.advance(Duration::from_millis(1100));
    for a in agents.iter_mut() {
        a.health(&h, true).await;
    }
    let view = eventually("the rollout to complete", || async {
        let v = h.rollout(&id).await;
        (v["status"] == "completed").then_some(v)
    })
    .await;
    let wave = &view["waves"][0]["tally"];
    assert_eq!(
        (wave["succeeded"].as_u64(), wave["failed"].as_u64()),
        (Some(2), Some(0)),
        "{wave}"
    );
    assert_eq!(
        decisions_of(&view, "retried"),
        [
            "site store-0 retried (attempt 2 of 2) by the plan's retry policy; attempt 1 of 2 \
          had failed: prepare: no space left on device"
        ]
    );
}

#[test]
fn a_database_from_before_v8_takes_each_sites_attempt_from_its_timeline_once() {
    use fleetwave_coordinator::store::{SqliteStore, Store};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        for schema in [
            include_str!("../src/store/schema.sql"),
            include_str!("../src/store/schema_v2.sql"),
            include_str!("../src/store/schema_v3.sql"),
            include_str!("../src/store/schema_v4.sql"),
            include_str!("../src/store/schema_v5.sql"),
            include_str!("../src/store/schema_v6.sql"),
        ] {
            conn.execute_batch(schema).unwrap();
        }
        conn.execute_batch(
            "PRAGMA user_version = 6;
             INSERT INTO releases VALUES ('rel', 'd', 'pos', '2.5.0', 'app', 25, '{}', 0, 't');
             INSERT INTO rollouts VALUES ('r1', 'rel', '', 'toml', 'running', NULL, '[]', 0, 't', 0);
             INSERT INTO rollouts VALUES ('r2', 'rel', '', 'toml', 'completed', NULL, '[]', 0, 't', 0);",
        )
        .unwrap();
        for site in ["s-1", "xs-1", "s-2"] {
            conn.execute(
                "INSERT INTO sites (id, device_key, labels, state, agent_version, enrolled_at) \
                 VALUES (?1, 'k', '{}', 'active', '1', 0)",
                [site],
            )
            .unwrap();
            for rollout in ["r1", "r2"] {
                conn.execute(
                    "INSERT INTO rollout_sites (rollout_id, site_id, wave, active) VALUES (?1, ?2, 0, 0)",
                    [rollout, site],
                )
                .unwrap();
            }
        }
        for reason in [
            "site s-1 (attempt 2) retried by alice; it had failed: disk full",
            "2 failed site(s) of wave 0 retried by bob: s-1 (attempt 3), xs-1 (attempt 2)",
        ] {
            conn.execute(
                "INSERT INTO decisions (rollout_id, at, kind, wave, reason) VALUES ('r1', 0, 'retried', 0, ?1)",
                [reason],
            )
            .unwrap();
        }
    }
    let store = SqliteStore::open(&path).unwrap();
    let attempts = |rollout: &str| -> Vec<(String, u32)> {
        store
            .rollout_sites(rollout)
            .unwrap()
            .into_iter()
            .map(|s| (s.site_id, s.attempts))
            .collect()
    };
    let pairs = |v: &[(&str, u32)]| -> Vec<(String, u32)> {
        v.iter().map(|(s, n)| (s.to_string(), *n)).collect()
    };
    assert_eq!(
        attempts("r1"),
        pairs(&[("s-1", 3), ("s-2", 1), ("xs-1", 2)])
    );
    assert_eq!(
        attempts("r2"),
        pairs(&[("s-1", 1), ("s-2", 1), ("xs-1", 1)])
    );
    // Counted up from there by the next retry, in one statement.
    assert_eq!(
        store
            .reset_rollout_sites_for_retry("r1", &["s-1".to_string(), "s-2".to_string()])
            .unwrap(),
        [4, 2]
    );
    drop(store);
    assert_eq!(
        attempts_after_reopen(&path),
        pairs(&[("s-1", 4), ("s-2", 2), ("xs-1", 2)]),
        "migrated once: opening again keeps the counts"
    );
}

fn attempts_after_reopen(path: &std::path::Path) -> Vec<(String, u32)> {
    use fleetwave_coordinator::store::{SqliteStore, Store};
    SqliteStore::open(path)
        .unwrap()
        .rollout_sites("r1")
        .unwrap()
        .into_iter()
        .map(|s| (s.site_id, s.attempts))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_site_is_not_retried_by_the_policy_until_its_hold_is_lifted() {
    let h = Harness::new().await;
    let (mut agents, release, id) = started(&h, RETRY_PLAN).await;
    agents[1].install(&h, &release).await;
    let (rollout, seq1) = agents[0].assignment(&h).await;
    agents[0].lease(&h, &rollout, seq1).await;
    let (s, v) = h
        .post(
            "/v1/sites/store-0/hold",
            &h.admin,
            json!({"reason": "vendor is looking at the disk"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    agents[0]
        .failed(&h, &rollout, &release, "prepare: no space left on device")
        .await;

    // Held: nothing scheduled, nothing started, long past the back-off; still in progress.
    controller_pass(&h, &id).await;
    h.clock.advance(Duration::from_secs(6 * 60));
    controller_pass(&h, &id).await;
    let view = h.rollout(&id).await;
    assert!(decisions_of(&view, "retry_scheduled").is_empty(), "{view}");
    assert!(decisions_of(&view, "retried").is_empty(), "{view}");
    assert_eq!(view["status"], "running", "{view}");
    assert_eq!(agents[0].poll(&h).await.map(|p| p.1), Some(seq1));

    // Lifted: scheduled (its time has passed) and started.
    let (s, v) = h
        .post("/v1/sites/store-0/unhold", &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    controller_pass(&h, &id).await;
    controller_pass(&h, &id).await;
    let view = h.rollout(&id).await;
    assert_eq!(decisions_of(&view, "retry_scheduled").len(), 1, "{view}");
    assert_eq!(decisions_of(&view, "retried").len(), 1, "{view}");
    eventually("a new assignment for store-0", || async {
        agents[0].poll(&h).await.filter(|(_, s)| *s > seq1)
    })
    .await;
}
