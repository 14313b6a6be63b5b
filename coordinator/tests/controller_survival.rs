//! The wave controller survives what used to stop it for good (issue 15, item 1): a plan
//! with a duration past a year is refused with the key named; a rollout the controller
//! cannot evaluate is halted with the reason while the others advance; a controller task
//! that dies is restarted, and while it is down `/readyz`, `/metrics` and the dashboard
//! say so. Nothing here waits for time to pass: tests wait for the state they expect.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Harness, WebClient};
use fleetwave_coordinator::config::Config;
use fleetwave_coordinator::state::App;
use fleetwave_coordinator::supervisor::run_controller;
use fleetwave_coordinator::supervisor::{Backoff, ControllerStatus, supervise};
use fleetwave_shared::protocol::operator::{PlanFormat, RolloutStatus};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Waits (at most a minute: a hang guard, not a timing assertion) until the controller's
/// status satisfies `ok`.
async fn until_controller(app: &App, what: &str, ok: impl FnMut(&ControllerStatus) -> bool) {
    let mut rx = app.controller.subscribe();
    tokio::time::timeout(Duration::from_secs(60), rx.wait_for(ok))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for the controller to be {what}"))
        .unwrap();
}

#[tokio::test]
async fn a_plan_with_a_duration_longer_than_a_year_is_refused_with_422_naming_the_key() {
    let h = Harness::new().await;
    let release = h.publish("2.4.0", 2).await;
    let cases = [
        (
            format!(
                "name = \"huge bake\"\nrelease = \"{release}\"\n[[waves]]\nname = \"pigs\"\nshare = 10\n[[waves]]\nname = \"rest\"\ngate = {{ bake = \"100000000000d\" }}\n"
            ),
            "waves[1].gate.bake: 100000000000d is longer than the maximum 365d",
        ),
        (
            format!(
                "name = \"huge ttl\"\nrelease = \"{release}\"\nassignment_ttl = \"1000000000d\"\n[[waves]]\nname = \"all\"\n"
            ),
            "assignment_ttl: 1000000000d is longer than the maximum 365d",
        ),
    ];
    for (plan, message) in cases {
        let (s, v) = h
            .post(
                "/v1/rollouts",
                &h.admin,
                json!({"plan": plan, "format": "toml"}),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(v["error"]["code"], "invalid_plan", "{v}");
        let text = v["error"]["message"].as_str().unwrap();
        assert!(text.ends_with(message), "{text}");
    }
    // Nothing was created, and the coordinator is ready.
    let (s, v) = h.get("/v1/rollouts", &h.admin).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["rollouts"], json!([]), "{v}");
    let res = h.http.get(h.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    h.stop().await;
}

/// A coordinator in-process (no listener, no controller task) with `sites` (id, group
/// label) and release `app-2`: (dir, app, stop, admin token).
async fn app_with_sites(
    sites: &[(&str, &str)],
) -> (
    tempfile::TempDir,
    Arc<App>,
    tokio::sync::watch::Sender<bool>,
    String,
) {
    let sites: Vec<_> = sites
        .iter()
        .map(|(id, group)| (id.to_string(), json!({"group": group})))
        .collect();
    let p = common::InProcess::with_sites(&sites).await;
    (p.dir, p.app, p.stop, p.admin)
}

fn plan(name: &str, group: &str, bake: &str) -> String {
    format!(
        "name = \"{name}\"\nrelease = \"app-2\"\nselector = {{ group = \"{group}\" }}\n[[waves]]\nname = \"all\"\ngate = {{ bake = \"{bake}\" }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_the_controller_cannot_evaluate_is_halted_with_the_reason_while_another_advances()
{
    let (dir, app, _stop, _) = app_with_sites(&[("a-1", "a"), ("a-2", "a"), ("b-1", "b")]).await;
    let good = app
        .engine
        .create_rollout(plan("good", "a", "10m"), PlanFormat::Toml, "test")
        .await
        .unwrap()
        .id;
    let broken = app
        .engine
        .create_rollout(plan("broken", "b", "10m"), PlanFormat::Toml, "test")
        .await
        .unwrap()
        .id;
    // As a coordinator that did not bound durations left it: a running rollout whose
    // stored plan bakes for 100,000,000,000 days (the controller panicked on it).
    let db = Config::load(&dir.path().join("coordinator.toml"))
        .unwrap()
        .database_path();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE rollouts SET plan_source = ?2, status = 'running' WHERE id = ?1",
        rusqlite::params![broken, plan("broken", "b", "100000000000d")],
    )
    .unwrap();
    conn.execute(
        "UPDATE rollouts SET status = 'running' WHERE id = ?1",
        [&good],
    )
    .unwrap();
    drop(conn);

    // Two passes: the first opens the waves, the second judges their gates.
    for _ in 0..2 {
        app.engine.tick_all().await.expect("a pass completes");
    }

    let (g, b) = (good.clone(), broken.clone());
    let (good_record, broken_record) = app
        .db
        .run(move |s| Ok((s.rollout(&g)?.unwrap(), s.rollout(&b)?.unwrap())))
        .await
        .unwrap();
    // The good rollout advanced: its wave opened and its sites were assigned.
    assert_eq!(good_record.status, RolloutStatus::Running);
    assert!(good_record.waves[0].opened_at.is_some());
    let assigned = app
        .engine
        .load_rollout(&good)
        .await
        .unwrap()
        .sites
        .iter()
        .filter(|s| s.assigned_at.is_some())
        .count();
    assert_eq!(assigned, 2);
    // The broken one is halted, with the reason on the record and in the timeline.
    assert_eq!(broken_record.status, RolloutStatus::Halted);
    let reason = broken_record.status_reason.unwrap();
    assert!(
        reason.contains("the wave controller could not evaluate this rollout"),
        "{reason}"
    );
    assert!(
        reason.contains("waves[0].gate.bake: 100000000000d is longer than the maximum 365d"),
        "{reason}"
    );
    let b = broken.clone();
    let decisions = app.db.run(move |s| s.decisions(&b)).await.unwrap();
    let last = decisions.last().unwrap();
    assert_eq!(
        (last.kind.as_str(), last.reason.as_str()),
        ("halt", reason.as_str())
    );
    assert_eq!(
        decisions.iter().filter(|d| d.kind == "halt").count(),
        1,
        "halted once, not on every pass: {decisions:?}"
    );
    let metrics = app.metrics.encode();
    assert!(
        metrics.contains("fleetwave_controller_rollout_failures_total 1"),
        "{metrics}"
    );
}

/// Serves the API and the dashboard of `app` over plain HTTP on a loopback port.
async fn serve(app: Arc<App>) -> String {
    let router = fleetwave_coordinator::server::router(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    base
}

async fn get(base: &str, path: &str) -> (StatusCode, String) {
    let res = reqwest::get(format!("{base}{path}")).await.unwrap();
    (res.status(), res.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_controller_shows_on_readyz_metrics_and_the_dashboard() {
    let (_dir, app, stop, admin) = app_with_sites(&[]).await;
    // A controller that panics every time, and a restart far away: it stays down.
    let supervisor = tokio::spawn(supervise(
        app.clone(),
        |_app| async { panic!("adding signed duration to timestamp overflowed") },
        Backoff {
            first: Duration::from_secs(3600),
            max: Duration::from_secs(3600),
            reset_after: Duration::from_secs(3600),
        },
    ));
    until_controller(&app, "down", |s| !s.running).await;
    let base = serve(app.clone()).await;

    let (s, body) = get(&base, "/readyz").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "controller_not_running", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("the wave controller is not running: it panicked: adding signed duration to timestamp overflowed"),
        "{message}"
    );
    assert!(message.contains("restart 1 in 3600s"), "{message}");
    // Liveness is still the process's: /healthz answers.
    assert_eq!(get(&base, "/healthz").await.0, StatusCode::OK);

    let (s, metrics) = get(&base, "/metrics").await;
    assert_eq!(s, StatusCode::OK);
    assert!(metrics.contains("fleetwave_controller_up 0"), "{metrics}");
    assert!(
        metrics.contains("fleetwave_controller_restarts_total 0"),
        "{metrics}"
    );

    // Every dashboard page carries the banner with the reason.
    let mut web = WebClient {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        base: base.clone(),
        cookies: BTreeMap::new(),
    };
    web.login(&admin).await;
    for page in ["/ui/", "/ui/rollouts", "/ui/sites"] {
        let (s, _, html) = web.get(page).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        assert!(html.contains("id=\"controller-banner\""), "{page}: {html}");
        assert!(html.contains("Wave controller not running."), "{page}");
        assert!(
            html.contains("it panicked: adding signed duration"),
            "{page}"
        );
    }

    stop.send(true).unwrap();
    supervisor.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_that_panics_is_restarted_and_the_coordinator_is_ready_again() {
    let (_dir, app, stop, admin) = app_with_sites(&[]).await;
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    // Panics on its first run; the real controller after that.
    let supervisor = tokio::spawn(supervise(
        app.clone(),
        move |app| {
            let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    panic!("first run dies");
                }
                run_controller(app).await
            }
        },
        Backoff {
            first: Duration::from_millis(1),
            max: Duration::from_millis(1),
            reset_after: Duration::from_secs(3600),
        },
    ));
    until_controller(&app, "restarted with a completed pass", |s| {
        s.running && s.restarts == 1 && s.last_pass.is_some()
    })
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let base = serve(app.clone()).await;
    let (s, body) = get(&base, "/readyz").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (_, metrics) = get(&base, "/metrics").await;
    assert!(metrics.contains("fleetwave_controller_up 1"), "{metrics}");
    assert!(
        metrics.contains("fleetwave_controller_restarts_total 1"),
        "{metrics}"
    );
    let mut web = WebClient {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        base,
        cookies: BTreeMap::new(),
    };
    web.login(&admin).await;
    let (_, _, html) = web.get("/ui/").await;
    assert!(!html.contains("controller-banner"), "{html}");

    stop.send(true).unwrap();
    supervisor.await.unwrap();
}
