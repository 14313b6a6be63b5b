//! A coordinator that does not lead the wave controller, over real HTTPS on a real
//! PostgreSQL server: with `storage.followers = "stand_by"` it answers 503 `standby` with
//! Retry-After (and `/readyz` says who leads) while another replica holds the
//! leadership, serves once it took over, and resigns when it stops; by default it serves
//! and is ready while another leads. With PostgreSQL down it answers 503 with Retry-After
//! and is unready, and resumes when the database is back.

mod backend;
mod common;

use std::sync::Arc;
use std::time::Duration;

use backend::{Backend, TestDb};
use common::Harness;
use fleetwave_coordinator::leadership::{Leadership, Role};
use fleetwave_coordinator::store::{Claim, Db};
use fleetwave_testkit::eventually;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::watch;

async fn get(h: &Harness, path: &str) -> (StatusCode, Option<String>, Value) {
    let res = h
        .http
        .get(h.url(path))
        .bearer_auth(&h.admin)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body = res.json().await.unwrap_or(Value::Null);
    (status, retry, body)
}

/// Another replica ("replica-rival", a 3 s lease) leads before the coordinator under test
/// starts; it leads until the returned sender is dropped or its renewals are paused.
async fn rival_leads(t: &TestDb) -> (Arc<Leadership>, watch::Sender<bool>) {
    let rival = Arc::new(Leadership::new(
        Db::new(tokio::task::block_in_place(|| t.open())),
        "replica-rival".into(),
        Duration::from_secs(3),
    ));
    let (stop, shutdown) = watch::channel(false);
    let r = rival.clone();
    tokio::spawn(async move {
        r.lead(shutdown, |_| {}, |_| std::future::pending::<()>())
            .await
    });
    eventually("the rival leads", || {
        let role = rival.role();
        async move { matches!(role, Role::Leader { .. }).then_some(()) }
    })
    .await;
    (rival, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_refuses_with_retry_after_until_it_takes_over() {
    let t = TestDb::new(Backend::Postgres);
    // Another replica leads before this coordinator starts.
    let (rival, _stop) = rival_leads(&t).await;

    let h = Harness::with_config(&format!(
        "{}leader_lease_secs = 3\nfollowers = \"stand_by\"\n",
        t.storage_config()
    ))
    .await;
    let (status, _, body) = eventually("the coordinator stands by", || {
        let h = &h;
        async move {
            let got = get(h, "/readyz").await;
            (got.0 == StatusCode::SERVICE_UNAVAILABLE).then_some(got)
        }
    })
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "standby", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("replica-rival leads the wave controller"),
        "{message}"
    );
    // Its health and metrics still answer; the API refuses with Retry-After.
    assert_eq!(get(&h, "/healthz").await.0, StatusCode::OK);
    assert_eq!(get(&h, "/metrics").await.0, StatusCode::OK);
    let (status, retry, body) = get(&h, "/v1/rollouts").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "standby", "{body}");
    assert_eq!(retry.as_deref(), Some("1"), "a third of the 3 s lease");

    // The rival stops renewing (dies): the coordinator takes over and serves.
    rival.pause_renewal(true);
    eventually("the coordinator takes over and is ready", || {
        let h = &h;
        async move { (get(h, "/readyz").await.0 == StatusCode::OK).then_some(()) }
    })
    .await;
    let (status, _, body) = get(&h, "/v1/rollouts").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Shutting down, it hands the leadership over at once, not after its lease.
    h.stop().await;
    assert_eq!(
        rival.claim().await.unwrap(),
        Claim::Leader { token: 3 },
        "the stopped coordinator resigned"
    );
}

/// Another replica leads: this one, a follower, serves the API and is ready (its memory
/// follows the database through its change feed), and `/readyz` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_follower_serves_while_another_replica_leads() {
    let t = TestDb::new(Backend::Postgres);
    let (_rival, _stop) = rival_leads(&t).await;
    let h = Harness::with_config(&format!("{}leader_lease_secs = 3\n", t.storage_config())).await;
    eventually("the follower is ready", || {
        let h = &h;
        async move { (get(h, "/readyz").await.0 == StatusCode::OK).then_some(()) }
    })
    .await;
    let status = h.running.as_ref().unwrap().app.controller.status();
    assert!(status.follower, "{status:?}");
    assert!(
        status.standby.is_some(),
        "another replica leads: {status:?}"
    );
    let (status, _, body) = get(&h, "/v1/rollouts").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgresql_is_down_requests_get_503_with_retry_after_and_all_resumes() {
    let t = TestDb::new(Backend::Postgres);
    let h = Harness::with_config(&format!(
        "{}leader_lease_secs = 3\nconnect_timeout_secs = 1\n",
        t.storage_config()
    ))
    .await;
    assert_eq!(get(&h, "/readyz").await.0, StatusCode::OK);
    assert_eq!(get(&h, "/v1/rollouts").await.0, StatusCode::OK);

    tokio::task::block_in_place(|| t.server().stop());
    let (status, retry, body) = get(&h, "/v1/rollouts").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let retry: u32 = retry.expect("a Retry-After").parse().unwrap();
    assert!(retry >= 1, "{retry}");
    let (status, _, body) = get(&h, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        get(&h, "/healthz").await.0,
        StatusCode::OK,
        "alive, only not ready"
    );

    tokio::task::block_in_place(|| t.server().restart());
    eventually("ready again once PostgreSQL is back", || {
        let h = &h;
        async move {
            let ready = get(h, "/readyz").await.0 == StatusCode::OK;
            let served = get(h, "/v1/rollouts").await.0 == StatusCode::OK;
            (ready && served).then_some(())
        }
    })
    .await;
    h.stop().await;
}
