//! Outgoing webhooks: the outbox is written in the transaction of the decision that causes
//! it and survives a reopen (store); endpoints are admin-only, validated, audited, their
//! secret shown once (API); deliveries are signed, retried on the clock with the same
//! webhook-id, never follow a redirect, and a huge answer does not hurt (a real HTTP
//! receiver on loopback, in-process). The store's part runs on both backends (a real
//! SQLite file, a real PostgreSQL database).

mod backend;
mod common;

use backend::{Backend, TestDb};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::{IntoResponse, Response};
use common::*;
use fleetwave_coordinator::store::*;
use fleetwave_coordinator::webhooks::{self, WebhookEvent};
use fleetwave_shared::Envelope;
use fleetwave_shared::protocol::operator::RolloutStatus;
use jiff::{SignedDuration, Timestamp};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn endpoint(id: &str, kinds: &[&str]) -> WebhookRecord {
    WebhookRecord {
        id: id.into(),
        url: format!("https://hooks.example.com/{id}"),
        secret: webhooks::new_secret(),
        kinds: kinds.iter().map(|k| k.to_string()).collect(),
        format: "json".into(),
        allow_insecure_http: false,
        description: String::new(),
        created_at: ts("2026-01-01T00:00:00Z"),
        created_by: "test".into(),
    }
}

fn audit(action: &str, target: &str) -> AuditRecord {
    AuditRecord {
        id: 0,
        at: ts("2026-01-01T00:00:00Z"),
        actor: "test".into(),
        action: action.into(),
        target: target.into(),
        detail: String::new(),
        remote: "test".into(),
    }
}

fn rollout_store(db: &TestDb) -> Arc<dyn Store> {
    let store = db.open();
    let at = ts("2026-01-01T00:00:00Z");
    let env = Envelope::sign("x", b"{}", &[&fleetwave_shared::keys::generate()]);
    store
        .publish_release(&ReleaseRecord {
            id: "pos-2".into(),
            digest: env.digest(),
            name: "pos".into(),
            version: "2".into(),
            kind: "app".into(),
            counter: 2,
            envelope: env,
            published_at: at,
            published_by: "test".into(),
        })
        .unwrap();
    store
        .create_rollout(
            &RolloutRecord {
                id: "r1".into(),
                release_id: "pos-2".into(),
                plan_source: String::new(),
                plan_format: "toml".into(),
                status: RolloutStatus::Running,
                waves: vec![WaveRecord::default()],
                created_at: at,
                created_by: "test".into(),
                updated_at: at,
                status_reason: None,
            },
            &[],
        )
        .unwrap();
    store
}

fn decision(kind: &str, at: Timestamp) -> DecisionRecord {
    DecisionRecord {
        id: 0,
        rollout_id: "r1".into(),
        at,
        kind: kind.into(),
        wave: Some(0),
        reason: format!("{kind}: 3 of 4 sites committed"),
    }
}

fn the_outbox_is_written_with_the_decision_and_survives_a_reopen(backend: Backend) {
    let db = TestDb::new(backend);
    let store = rollout_store(&db);
    store
        .create_webhook(
            &endpoint("wh-halts", &["rollout.halted"]),
            &audit("webhook.create", "wh-halts"),
        )
        .unwrap();
    store
        .create_webhook(
            &endpoint("wh-waves", &["wave.opened"]),
            &audit("webhook.create", "wh-waves"),
        )
        .unwrap();
    let at = ts("2026-01-01T01:00:00Z");
    // A decision no event follows, and one only wh-halts wants.
    let mut record = store.rollout("r1").unwrap().unwrap();
    record.status = RolloutStatus::Halted;
    store
        .update_rollout(&record, &[decision("waiting", at), decision("halt", at)])
        .unwrap();
    // A decision whose transaction fails stores no event: a rollout that does not exist.
    let mut ghost = record.clone();
    ghost.id = "r-ghost".into();
    assert!(
        store
            .update_rollout(&ghost, &[decision("open_wave", at)])
            .is_err()
    );
    let due = store.due_webhook_deliveries(at, &[], 10).unwrap();
    assert_eq!(due.len(), 1, "{due:#?}");
    let d = &due[0];
    assert_eq!(d.delivery.endpoint_id, "wh-halts");
    assert_eq!(d.delivery.event_type, "rollout.halted");
    assert!(d.delivery.id.starts_with("msg_"), "{}", d.delivery.id);
    let body: Value = serde_json::from_str(&d.event_body).unwrap();
    assert_eq!(body["type"], "rollout.halted");
    assert_eq!(body["data"]["rollout_id"], "r1");
    assert_eq!(body["data"]["release_id"], "pos-2");
    assert_eq!(body["data"]["wave"], 0);
    // Not due before its time; a busy endpoint is left out.
    assert!(
        store
            .due_webhook_deliveries(at - SignedDuration::from_secs(1), &[], 10)
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .due_webhook_deliveries(at, &["wh-halts".into()], 10)
            .unwrap()
            .is_empty()
    );
    let id = d.delivery.id.clone();
    drop(store);

    // Reopened: the same delivery, with the same webhook-id, is still due.
    let store = db.open();
    let due = store.due_webhook_deliveries(at, &[], 10).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].delivery.id, id);
    // A failed attempt is retried at the stored time, then delivered.
    let retry_at = at + SignedDuration::from_secs(5);
    let attempt = |n: u32, outcome: &str, status: u16| AttemptRecord {
        id: 0,
        endpoint_id: "wh-halts".into(),
        delivery_id: id.clone(),
        event_type: "rollout.halted".into(),
        attempt: n,
        at,
        status: Some(status),
        error: (status != 200).then(|| format!("answered {status}")),
        duration_ms: 3,
        outcome: outcome.into(),
    };
    store
        .record_webhook_attempt(&attempt(1, "retrying", 500), Some(retry_at))
        .unwrap();
    assert!(
        store
            .due_webhook_deliveries(at, &[], 10)
            .unwrap()
            .is_empty()
    );
    drop(store);
    let store = db.open();
    let due = store.due_webhook_deliveries(retry_at, &[], 10).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].delivery.id.as_str(), due[0].delivery.attempts),
        (id.as_str(), 1)
    );
    store
        .record_webhook_attempt(&attempt(2, "delivered", 200), None)
        .unwrap();
    assert!(
        store
            .due_webhook_deliveries(retry_at, &[], 10)
            .unwrap()
            .is_empty()
    );
    let counts = store.webhook_delivery_counts().unwrap();
    assert_eq!(counts["wh-halts"].delivered, 1);
    assert_eq!(counts["wh-halts"].pending, 0);
    let log = store.webhook_attempts("wh-halts", 10).unwrap();
    assert_eq!(
        log.iter()
            .map(|a| (a.attempt, a.outcome.as_str(), a.status))
            .collect::<Vec<_>>(),
        vec![(2, "delivered", Some(200)), (1, "retrying", Some(500))]
    );
    // Deleting the endpoint deletes its deliveries and log.
    store
        .delete_webhook("wh-halts", &audit("webhook.delete", "wh-halts"))
        .unwrap();
    assert!(store.webhook_attempts("wh-halts", 10).unwrap().is_empty());
    assert!(store.webhook_deliveries("wh-halts", 10).unwrap().is_empty());
    assert!(matches!(
        store.delete_webhook("wh-halts", &audit("webhook.delete", "wh-halts")),
        Err(StoreError::NotFound(_))
    ));
}

fn freeze_audit_entries_reach_the_outbox_and_an_endpoint_gets_one_at_a_time(backend: Backend) {
    let db = TestDb::new(backend);
    let store = rollout_store(&db);
    store
        .create_webhook(
            &endpoint("wh-all", &["freeze.added", "site.failed"]),
            &audit("webhook.create", "wh-all"),
        )
        .unwrap();
    let mut a = audit("freeze.create", "frz-1");
    a.detail = "maintenance".into();
    store.audit(&a).unwrap();
    let mut later = audit("freeze.create", "frz-2");
    later.at = ts("2026-01-01T00:30:00Z");
    store.audit(&later).unwrap();
    // Two pending for the endpoint: one at a time, the earliest first.
    assert_eq!(
        store.webhook_delivery_counts().unwrap()["wh-all"].pending,
        2
    );
    let due = store
        .due_webhook_deliveries(ts("2026-01-02T00:00:00Z"), &[], 10)
        .unwrap();
    assert_eq!(due.len(), 1);
    let event: WebhookEvent = serde_json::from_str(&due[0].event_body).unwrap();
    assert_eq!(event.kind.as_str(), "freeze.added");
    assert_eq!(event.data.freeze_id.as_deref(), Some("frz-1"));
}

fn a_site_failure_reaches_the_outbox_with_its_report(backend: Backend) {
    use fleetwave_shared::protocol::{Event, EventBody, Phase};
    let db = TestDb::new(backend);
    let store = rollout_store(&db);
    let at = ts("2026-01-01T00:00:00Z");
    store
        .create_enrollment_token(
            "hash",
            &EnrollmentTokenRecord {
                id: "et-1".into(),
                labels: Default::default(),
                site_id: None,
                expires_at: at + SignedDuration::from_hours(1),
                uses_total: 1,
                uses_left: 1,
                revoked: false,
                created_at: at,
                created_by: "test".into(),
            },
        )
        .unwrap();
    store
        .enroll(&Enrollment {
            token_hash: "hash".into(),
            site_id: "s1".into(),
            box_id: DEFAULT_BOX.into(),
            role: String::new(),
            device_key: "00".repeat(32),
            agent_version: "1".into(),
            at,
        })
        .unwrap();
    store
        .add_rollout_sites(&[RolloutSiteRecord {
            rollout_id: "r1".into(),
            site_id: "s1".into(),
            ..Default::default()
        }])
        .unwrap();
    store
        .create_webhook(
            &endpoint("wh-sites", &["site.failed"]),
            &audit("webhook.create", "wh-sites"),
        )
        .unwrap();
    let phase = |id: &str, phase: Phase| Event {
        id: id.into(),
        at: ts("2026-01-01T00:10:00Z"),
        body: EventBody::Phase {
            rollout_id: Some("r1".into()),
            release_id: "pos-2".into(),
            phase,
            detail: Some("install script exited 3".into()),
        },
    };
    let received = ts("2026-01-01T00:10:01Z");
    store
        .apply_reports("s1", &[phase("p1", Phase::Installing)], received)
        .unwrap();
    assert!(
        store
            .due_webhook_deliveries(received, &[], 10)
            .unwrap()
            .is_empty()
    );
    store
        .apply_reports("s1", &[phase("p2", Phase::Failed)], received)
        .unwrap();
    // The same report again changes nothing and stores no second event.
    store
        .apply_reports("s1", &[phase("p2", Phase::Failed)], received)
        .unwrap();
    assert_eq!(
        store.webhook_delivery_counts().unwrap()["wh-sites"].pending,
        1
    );
    let due = store.due_webhook_deliveries(received, &[], 10).unwrap();
    let event: WebhookEvent = serde_json::from_str(&due[0].event_body).unwrap();
    assert_eq!(event.kind.as_str(), "site.failed");
    assert_eq!(event.data.site_id.as_deref(), Some("s1"));
    assert_eq!(event.data.rollout_id.as_deref(), Some("r1"));
    assert_eq!(event.data.release_id.as_deref(), Some("pos-2"));
    assert_eq!(
        event.data.reason.as_deref(),
        Some("install script exited 3")
    );
}

/// What the in-process receiver saw: (path, webhook-id, webhook-timestamp, signature, body).
type Seen = Arc<Mutex<Vec<(String, String, String, String, String)>>>;

async fn receive(
    State(seen): State<Seen>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let path = uri.path().to_string();
    let earlier = {
        let mut seen = seen.lock().unwrap();
        let earlier = seen.iter().filter(|s| s.0 == path).count();
        seen.push((
            path.clone(),
            h("webhook-id"),
            h("webhook-timestamp"),
            h("webhook-signature"),
            body,
        ));
        earlier
    };
    match path.as_str() {
        // 500 the first time, then 200.
        "/flaky" if earlier == 0 => AxumStatus::INTERNAL_SERVER_ERROR.into_response(),
        "/redirect" => (AxumStatus::FOUND, [("location", "/ok")]).into_response(),
        "/huge" => (AxumStatus::OK, vec![b'x'; 8 << 20]).into_response(),
        _ => AxumStatus::OK.into_response(),
    }
}

async fn receiver() -> (String, Seen) {
    let seen: Seen = Default::default();
    let app = axum::Router::new()
        .fallback(axum::routing::post(receive))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, seen)
}

async fn create(h: &Harness, body: Value) -> (String, String) {
    let (s, v) = h.post("/v1/webhooks", &h.admin, body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    (
        v["webhook"]["id"].as_str().unwrap().to_string(),
        v["secret"].as_str().unwrap().to_string(),
    )
}

async fn attempts(h: &Harness, id: &str) -> Vec<Value> {
    let (s, v) = h
        .get(&format!("/v1/webhooks/{id}/deliveries"), &h.admin)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["attempts"].as_array().unwrap().clone()
}

#[tokio::test]
async fn endpoints_are_admin_only_validated_audited_and_show_their_secret_once() {
    let h = Harness::new().await;
    let olga = h.token("olga", "operator").await;
    let body = json!({"url": "https://hooks.example.com/a", "events": ["rollout.halted"]});
    let (s, v) = h.post("/v1/webhooks", &olga, body.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = h.get("/v1/webhooks", &olga).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");

    for (bad, field, words) in [
        (
            json!({"url": "http://hooks.example.com/a", "events": ["rollout.halted"]}),
            "url",
            "allow_insecure_http",
        ),
        (
            json!({"url": "https://u:p@hooks.example.com/a", "events": ["rollout.halted"]}),
            "url",
            "user name or password",
        ),
        (
            json!({"url": "https://hooks.example.com/a", "events": []}),
            "events",
            "at least one",
        ),
        (
            json!({"url": "https://hooks.example.com/a", "events": ["rollout.exploded"]}),
            "events",
            "rollout.exploded",
        ),
    ] {
        let (s, v) = h.post("/v1/webhooks", &h.admin, bad.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {v}");
        assert_eq!(v["error"]["code"], "invalid_webhook");
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.starts_with(field) && m.contains(words), "{bad}: {m}");
    }
    let (s, v) = h
        .post(
            "/v1/webhooks",
            &h.admin,
            json!({"url": "https://x.example/", "events": ["rollout.halted"], "colour": "red"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    let (id, secret) = create(&h, body).await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    let (s, one) = h.get(&format!("/v1/webhooks/{id}"), &h.admin).await;
    assert_eq!(s, StatusCode::OK, "{one}");
    assert!(!one.to_string().contains(&secret), "{one}");
    assert_eq!(
        one["secret_hint"].as_str().unwrap(),
        webhooks::secret_hint(&secret)
    );
    assert_eq!(one["events"], json!(["rollout.halted"]));
    let (_, list) = h.get("/v1/webhooks", &h.admin).await;
    assert!(!list.to_string().contains(&secret), "{list}");
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 1);

    let (s, v) = h
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/webhooks/{id}"),
            &olga,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, _) = h
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/webhooks/{id}"),
            &h.admin,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = h.get(&format!("/v1/webhooks/{id}"), &h.admin).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (_, audit) = h.get("/v1/audit", &h.admin).await;
    let actions: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["target"].as_str().unwrap()))
        .collect();
    assert!(
        actions.contains(&("webhook.create", id.as_str())),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("webhook.delete", id.as_str())),
        "{actions:?}"
    );
    assert!(!audit.to_string().contains(&secret));

    // The event a receiver gets is described in the OpenAPI document.
    let doc: Value = h
        .http
        .get(h.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemas = &doc["components"]["schemas"];
    let event = &schemas["WebhookEvent"];
    for field in ["type", "timestamp", "data"] {
        assert!(event["properties"].get(field).is_some(), "{event}");
    }
    let kinds = schemas["WebhookEventType"].to_string();
    for k in webhooks::EventKind::ALL {
        assert!(kinds.contains(k.as_str()), "{k} missing from {kinds}");
    }
    assert!(
        schemas["WebhookEventData"]["properties"]
            .get("rollout_id")
            .is_some()
    );
    h.stop().await;
}

const PLAN: &str = r#"
name = "pos 2.5"
release = "pos-2.5.0"

[[waves]]
name = "all"
gate = { bake = "10m" }
"#;

#[tokio::test]
async fn deliveries_are_signed_retried_on_the_clock_and_never_redirected() {
    let h = Harness::new().await;
    let (base, seen) = receiver().await;
    let hook = |path: &str, format: &str| {
        json!({
            "url": format!("{base}{path}"),
            "events": ["rollout.created"],
            "allow_insecure_http": true,
            "format": format,
        })
    };
    let (flaky, flaky_secret) = create(&h, hook("/flaky", "json")).await;
    let (redirect, _) = create(&h, hook("/redirect", "json")).await;
    let (huge, _) = create(&h, hook("/huge", "json")).await;
    let (slack, slack_secret) = create(&h, hook("/slack", "slack")).await;
    h.publish("2.5.0", 25).await;
    let rollout = h.create_rollout(PLAN).await;

    // The first attempt to /flaky is answered 500: logged, to be retried.
    let first = eventually("the first attempt to /flaky to be logged", || async {
        attempts(&h, &flaky).await.into_iter().next()
    })
    .await;
    assert_eq!(first["status"], 500, "{first}");
    assert_eq!(first["outcome"], "retrying", "{first}");
    assert_eq!(first["attempt"], 1);
    // Moving the clock past the first retry delay sends it again.
    h.clock.advance(Duration::from_secs(6));
    eventually("/flaky to be delivered on the retry", || async {
        let a = attempts(&h, &flaky).await;
        (a.first()?["outcome"] == "delivered").then_some(())
    })
    .await;
    let to_flaky: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.0 == "/flaky")
        .cloned()
        .collect();
    assert_eq!(to_flaky.len(), 2, "{to_flaky:?}");
    // The same webhook-id on both attempts, each signed over its own timestamp.
    assert_eq!(to_flaky[0].1, to_flaky[1].1);
    assert!(to_flaky[0].1.starts_with("msg_"));
    assert_ne!(to_flaky[0].2, to_flaky[1].2);
    let key = webhooks::secret_key(&flaky_secret).unwrap();
    for (_, id, t, sig, body) in &to_flaky {
        assert_eq!(sig, &webhooks::sign(&key, id, t.parse().unwrap(), body));
        let event: Value = serde_json::from_str(body).unwrap();
        assert_eq!(event["type"], "rollout.created");
        assert_eq!(event["data"]["rollout_id"], rollout.as_str());
        assert_eq!(event["data"]["release_id"], "pos-2.5.0");
        assert_eq!(event["data"]["link"], format!("/ui/rollouts/{rollout}"));
    }

    // A redirect is a failed attempt, never followed.
    let a = eventually("the redirect to be logged", || async {
        attempts(&h, &redirect).await.into_iter().next()
    })
    .await;
    assert_eq!(a["status"], 302, "{a}");
    assert!(
        a["error"]
            .as_str()
            .unwrap()
            .contains("redirects are not followed"),
        "{a}"
    );
    assert!(!seen.lock().unwrap().iter().any(|s| s.0 == "/ok"));

    // A huge answer is delivered (read up to the limit, then dropped).
    eventually("/huge to be delivered", || async {
        let a = attempts(&h, &huge).await;
        (a.first()?["outcome"] == "delivered").then_some(())
    })
    .await;

    // Slack format: {"text"}, signed as well.
    eventually("/slack to be delivered", || async {
        let a = attempts(&h, &slack).await;
        (a.first()?["outcome"] == "delivered").then_some(())
    })
    .await;
    let (_, id, t, sig, body) = seen
        .lock()
        .unwrap()
        .iter()
        .find(|s| s.0 == "/slack")
        .cloned()
        .unwrap();
    let key = webhooks::secret_key(&slack_secret).unwrap();
    assert_eq!(sig, webhooks::sign(&key, &id, t.parse().unwrap(), &body));
    let text: Value = serde_json::from_str(&body).unwrap();
    assert!(
        text["text"]
            .as_str()
            .unwrap()
            .contains(&format!("rollout.created rollout {rollout}")),
        "{text}"
    );

    // A test event goes to the one endpoint asked, whatever its filter.
    let (s, v) = h
        .post(&format!("/v1/webhooks/{slack}/test"), &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let test_id = v["webhook_id"].as_str().unwrap().to_string();
    eventually("the test event to arrive", || async {
        seen.lock()
            .unwrap()
            .iter()
            .any(|s| s.1 == test_id && s.4.contains("webhook.test"))
            .then_some(())
    })
    .await;
    let (_, list) = h.get("/v1/webhooks", &h.admin).await;
    let counts: Vec<(String, u64, u64)> = list["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["id"].as_str().unwrap().to_string(),
                w["delivered"].as_u64().unwrap(),
                w["pending"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(counts.contains(&(flaky.clone(), 1, 0)), "{counts:?}");
    assert!(counts.contains(&(redirect.clone(), 0, 1)), "{counts:?}");
    let (_, metrics) = {
        let res = h.http.get(h.url("/metrics")).send().await.unwrap();
        (res.status(), res.text().await.unwrap())
    };
    assert!(
        metrics.contains("fleetwave_webhook_deliveries_total{result=\"retrying\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("fleetwave_webhook_backlog"), "{metrics}");
    h.stop().await;
}

fn a_silence_is_stored_once_with_its_event_across_reopens(backend: Backend) {
    let db = TestDb::new(backend);
    let store = rollout_store(&db);
    assert!(!store.webhook_subscribed("site.silent").unwrap());
    store
        .create_webhook(
            &endpoint("wh-quiet", &["site.silent"]),
            &audit("webhook.create", "wh-quiet"),
        )
        .unwrap();
    assert!(store.webhook_subscribed("site.silent").unwrap());
    assert!(!store.webhook_subscribed("site.failed").unwrap());
    let silence = |since: &str| SiteSilence {
        rollout_id: "r1".into(),
        release_id: "pos-2".into(),
        wave: 0,
        site_id: "s1".into(),
        since: ts(since),
        at: ts("2026-01-01T03:00:00Z"),
        reason: "nothing heard for 2h (report deadline 2h)".into(),
    };
    assert_eq!(
        store
            .record_site_silences(&[silence("2026-01-01T00:10:00Z")])
            .unwrap(),
        1
    );
    drop(store);
    let store = db.open();
    // The same silence again (after a restart): nothing new.
    assert_eq!(
        store
            .record_site_silences(&[silence("2026-01-01T00:10:00Z")])
            .unwrap(),
        0
    );
    assert_eq!(
        store.webhook_delivery_counts().unwrap()["wh-quiet"].pending,
        1
    );
    // The site spoke, then fell silent again: a new silence.
    assert_eq!(
        store
            .record_site_silences(&[silence("2026-01-01T01:00:00Z")])
            .unwrap(),
        1
    );
    assert_eq!(
        store.webhook_delivery_counts().unwrap()["wh-quiet"].pending,
        2
    );
    let due = store
        .due_webhook_deliveries(ts("2026-01-01T03:00:00Z"), &[], 10)
        .unwrap();
    let event: WebhookEvent = serde_json::from_str(&due[0].event_body).unwrap();
    assert_eq!(event.kind.as_str(), "site.silent");
    assert_eq!(event.data.site_id.as_deref(), Some("s1"));
    assert_eq!(event.data.wave, Some(0));
}

const QUIET_PLAN: &str = r#"
name = "pos 2.5"
release = "pos-2.5.0"

[[waves]]
name = "all"
gate = { report_deadline = "1m", failure_budget = 5, success_ratio = 0.0, min_sample = 3 }
"#;

#[tokio::test]
async fn a_site_gone_silent_is_sent_once_as_site_silent() {
    let h = Harness::new().await;
    let (base, seen) = receiver().await;
    create(
        &h,
        json!({"url": format!("{base}/quiet"), "events": ["site.silent"], "allow_insecure_http": true}),
    )
    .await;
    let mut quiet = Agent::enroll(&h, "quiet-1", json!({})).await;
    let mut later = Agent::enroll(&h, "later-1", json!({})).await;
    // Keeps reporting: the wave never has the three finished sites its gate needs.
    let mut keeper = Agent::enroll(&h, "keeper-1", json!({})).await;
    h.publish("2.5.0", 25).await;
    let rollout = h.create_rollout(QUIET_PLAN).await;
    let (s, v) = h
        .post(
            &format!("/v1/rollouts/{rollout}/start"),
            &h.admin,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    quiet.assignment(&h).await;
    later.assignment(&h).await;
    keeper.assignment(&h).await;
    quiet.phase(&h, &rollout, "pos-2.5.0", "accepted").await;
    later.phase(&h, &rollout, "pos-2.5.0", "accepted").await;
    keeper.phase(&h, &rollout, "pos-2.5.0", "accepted").await;
    let silent_events = |site: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|s| {
                let e: Value = serde_json::from_str(&s.4).unwrap();
                e["type"] == "site.silent" && e["data"]["site_id"] == site
            })
            .map(|s| s.4.clone())
            .collect::<Vec<_>>()
    };
    // The clock moves in steps of 45 s, each followed by a report from keeper-1, which so
    // is never more than 45 s quiet (the deadline is 1m).
    let step = Duration::from_secs(45);

    // quiet-1 passes its report deadline; later-1 spoke after the first step.
    h.clock.advance(step);
    later.phase(&h, &rollout, "pos-2.5.0", "accepted").await;
    keeper.phase(&h, &rollout, "pos-2.5.0", "accepted").await;
    h.clock.advance(step);
    keeper.phase(&h, &rollout, "pos-2.5.0", "accepted").await;
    let first = eventually("quiet-1's site.silent", || async {
        silent_events("quiet-1").into_iter().next()
    })
    .await;
    let event: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(event["data"]["rollout_id"], rollout.as_str());
    assert_eq!(event["data"]["wave"], 0);
    assert!(
        event["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("report deadline 1m"),
        "{event}"
    );

    // Then later-1 falls silent too: the passes that find it also see quiet-1 still
    // silent, and do not send that silence again.
    h.clock.advance(step);
    keeper.phase(&h, &rollout, "pos-2.5.0", "accepted").await;
    eventually("later-1's site.silent", || async {
        silent_events("later-1").into_iter().next()
    })
    .await;
    assert_eq!(silent_events("quiet-1").len(), 1);
    assert!(silent_events("keeper-1").is_empty());
    let (_, v) = h.get(&format!("/v1/rollouts/{rollout}"), &h.admin).await;
    assert_eq!(v["status"], "running", "{v}");
    h.stop().await;
}

both_backends!(
    the_outbox_is_written_with_the_decision_and_survives_a_reopen,
    freeze_audit_entries_reach_the_outbox_and_an_endpoint_gets_one_at_a_time,
    a_site_failure_reaches_the_outbox_with_its_report,
    a_silence_is_stored_once_with_its_event_across_reopens,
);
