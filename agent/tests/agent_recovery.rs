//! Crash safety and offline behaviour of a real `fleetwave-agent` process against a real
//! coordinator: kill -9 at each journal step followed by a correct recovery, and reports
//! queued while the coordinator is down delivered exactly once when it returns.
//!
//! The kill points use `FLEETWAVE_TEST_PAUSE_AT=<step>` (compiled into debug builds only),
//! which makes the agent stop right after it journalled the step as started.
//! Needs `fleetwave-demo-app` built: `cargo build -p fleetwave-e2e --bin fleetwave-demo-app`.

mod common;

use common::{Coordinator, Site, eventually};

/// Waits until the agent logged that it paused at `step`, then kills it with SIGKILL.
async fn kill_at(site: &Site, agent: &mut tokio::process::Child, step: &str) {
    let marker = format!("paused at step {step}");
    eventually(&format!("the agent pauses at {step}"), || async {
        site.logs().contains(&marker).then_some(())
    })
    .await;
    agent.kill().await.unwrap(); // SIGKILL
    agent.wait().await.unwrap();
}

async fn last_outcome(site: &Site, release_id: &str) -> serde_json::Value {
    eventually(&format!("the install of {release_id} ends"), || async {
        let last = site.status().await["last_install"].clone();
        (last["release_id"] == release_id && last["outcome"].is_string()).then_some(last)
    })
    .await
}

/// Kill at `step` while installing a healthy 1.0.0, restart, and expect it committed.
async fn kill_during_install_then_recover(step: &str) {
    let coordinator = Coordinator::start().await;
    let site = Site::new(&format!("kill-{step}"), &coordinator);
    site.enroll(&coordinator).await;
    let mut agent = site.run(&[("FLEETWAVE_TEST_PAUSE_AT", step)]);
    coordinator
        .publish_demo("1.0.0", 1, true, false, &site)
        .await;
    coordinator.rollout("demo-1.0.0").await;
    kill_at(&site, &mut agent, step).await;
    let open = site
        .state()
        .journal_open()
        .unwrap()
        .expect("an open install");
    assert_eq!(open.step.as_str(), step);

    let mut agent = site.run(&[]);
    let last = last_outcome(&site, "demo-1.0.0").await;
    assert_eq!(last["outcome"], "committed", "{}", site.logs());
    eventually("demo 1.0.0 answers", || async {
        (site.app_version().await.as_deref() == Some("1.0.0")).then_some(())
    })
    .await;
    // The recovery was reported as such.
    let logs = site.logs();
    assert!(logs.contains("recovered after restart at step"), "{logs}");
    agent.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_prepare_resumes_and_commits() {
    kill_during_install_then_recover("prepare").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_install_reinstalls_and_commits() {
    kill_during_install_then_recover("install").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_verify_verifies_again_and_commits() {
    kill_during_install_then_recover("verify").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_commit_finishes_the_commit() {
    kill_during_install_then_recover("commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_rollback_finishes_the_rollback() {
    let coordinator = Coordinator::start().await;
    let site = Site::new("kill-rollback", &coordinator);
    site.enroll(&coordinator).await;
    let mut agent = site.run(&[("FLEETWAVE_TEST_PAUSE_AT", "rollback")]);
    coordinator
        .publish_demo("1.0.0", 1, true, false, &site)
        .await;
    let first = coordinator.rollout("demo-1.0.0").await;
    assert_eq!(
        last_outcome(&site, "demo-1.0.0").await["outcome"],
        "committed"
    );
    coordinator.rollout_finished(&first).await;
    coordinator
        .publish_demo("2.0.0", 2, false, false, &site)
        .await;
    coordinator.rollout("demo-2.0.0").await;
    kill_at(&site, &mut agent, "rollback").await;

    let mut agent = site.run(&[]);
    let last = last_outcome(&site, "demo-2.0.0").await;
    assert_eq!(last["outcome"], "rolled_back", "{}", site.logs());
    let status = site.status().await;
    assert_eq!(status["installed"][0]["release_id"], "demo-1.0.0");
    eventually("demo 1.0.0 answers again", || async {
        (site.app_version().await.as_deref() == Some("1.0.0")).then_some(())
    })
    .await;
    agent.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_queued_while_the_coordinator_is_down_are_delivered_exactly_once() {
    let mut coordinator = Coordinator::start().await;
    let site = Site::new("offline-1", &coordinator);
    site.enroll(&coordinator).await;
    let mut agent = site.run(&[]);
    eventually("first contact and an empty outbox", || async {
        let s = site.status().await;
        (s["last_contact"].is_string() && s["queued_reports"]["total"] == 0).then_some(())
    })
    .await;

    coordinator.stop().await;
    let (code, out, err) = site
        .cli(&["defer", "2h", "--reason", "sale day", "--json"])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["reported"], false, "the coordinator is down");
    // Heartbeats pile up too while it is down.
    eventually("reports are queued", || async {
        let s = site.status().await;
        (s["queued_reports"]["by_kind"]["deferral"] == 1
            && s["queued_reports"]["by_kind"]["health"]
                .as_u64()
                .unwrap_or(0)
                >= 1)
            .then_some(())
    })
    .await;

    coordinator.restart().await;
    eventually("the outbox drains once the coordinator is back", || async {
        (site.status().await["queued_reports"]["total"] == 0).then_some(())
    })
    .await;
    let info = coordinator.site("offline-1").await;
    assert!(
        info.deferred_until.is_some(),
        "the coordinator saw the deferral"
    );
    let db =
        rusqlite::Connection::open(coordinator.dir.path().join("data/coordinator.db")).unwrap();
    let deferrals: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM reports WHERE site_id = 'offline-1' AND kind = 'deferral'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(deferrals, 1, "the deferral was applied exactly once");
    agent.kill().await.unwrap();
}
