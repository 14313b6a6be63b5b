//! Retrying failed sites (`POST /v1/rollouts/{id}/retry`) against a real coordinator: a
//! failed site gets a new assignment with a higher sequence, installs again and counts
//! once in the gate by its last attempt; the timeline names the attempt; a whole wave's
//! failed sites are retried at once; what cannot be retried is refused with the reason.

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
