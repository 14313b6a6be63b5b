//! A rollback that keeps failing, against a real coordinator and a real `fleetwave-agent`
//! process: the agent tries again with a growing back-off, logs every failed attempt with
//! the command's output, and after `install.rollback_attempts` gives up: the install ends
//! as `rollback_failed`, the coordinator gets phase `rollback_failed` with the output and
//! counts the site as failed, `status` says so, and the agent does not try again.

mod common;

use common::{Coordinator, Site, eventually};
use fleetwave_shared::protocol::operator as api;

/// A command release whose verify script fails (so the install rolls back) and whose
/// rollback script counts its runs in `<dir>/rollback-runs` and always fails, saying why.
async fn publish_unrollbackable(coordinator: &Coordinator, site: &Site) -> String {
    let runs = site.dir.path().join("rollback-runs");
    let rollback = format!(
        "n=$(cat '{runs}' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '{runs}'; \
         echo \"stopping edge-stack 2.0.0 (run $n)\"; \
         echo 'Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress' >&2; \
         exit 1",
        runs = runs.display()
    );
    coordinator
        .publish_command(
            "edge-stack",
            "2.0.0",
            serde_json::json!({
                "install": "echo installed",
                "verify": "echo 'readiness probe failed' >&2; exit 3",
                "rollback": rollback,
                "verify_period_secs": 1,
            }),
        )
        .await
}

fn rollback_runs(site: &Site) -> u32 {
    std::fs::read_to_string(site.dir.path().join("rollback-runs"))
        .map(|t| t.trim().parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_that_keeps_failing_backs_off_then_gives_up_and_reports_rollback_failed() {
    let coordinator = Coordinator::start().await;
    let site = Site::new("rollback-fails", &coordinator);
    site.configure(
        "[install]\nrollback_attempts = 3\nrollback_retry_min_secs = 1\nrollback_retry_max_secs = 2\n",
    );
    site.enroll(&coordinator).await;
    let mut agent = site.run(&[]);
    let release = publish_unrollbackable(&coordinator, &site).await;
    let rollout = coordinator.rollout(&release).await;

    let last = eventually("the install to end", || async {
        let last = site.status().await["last_install"].clone();
        (last["release_id"] == release.as_str() && last["outcome"].is_string()).then_some(last)
    })
    .await;
    assert_eq!(last["outcome"], "rollback_failed", "{}", site.logs());
    assert_eq!(rollback_runs(&site), 3, "install.rollback_attempts = 3");
    let detail = last["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("rollback failed 3 times, giving up")
            && detail.contains("another operation (install/upgrade/rollback) is in progress")
            && detail.contains("stopping edge-stack 2.0.0 (run 3)"),
        "the detail carries the error and the command's output: {detail}"
    );

    // Never silent: every failed attempt logged with the output, a back-off between them.
    let logs = site.logs();
    assert_eq!(
        logs.matches("rollback failed, will retry").count(),
        2,
        "{logs}"
    );
    assert!(logs.contains("retry_in_secs="), "{logs}");
    assert!(
        logs.contains("(run 1)") && logs.contains("(run 2)"),
        "{logs}"
    );
    assert!(
        logs.contains("rollback failed 3 times; giving up"),
        "{logs}"
    );

    // `status` says so, in JSON and in words.
    let status = site.status().await;
    assert_eq!(status["rollback_failing"]["failures"], 3);
    assert!(status["rollback_failing"]["next_try_at"].is_null());
    let (code, text, err) = site.cli(&["status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("rollback      FAILED 3 times") && text.contains("| Error: UPGRADE FAILED"),
        "{text}"
    );

    // The coordinator folded it: phase rollback_failed, the site failed, the rollout halted.
    let view = eventually("the coordinator to see the failed rollback", || async {
        let view: api::RolloutView = coordinator
            .get(&format!("{}/{rollout}", api::paths::ROLLOUTS))
            .await;
        let site_view = view.sites.iter().find(|s| s.site_id == site.id)?;
        (site_view.phase.as_deref() == Some("rollback_failed")).then_some(view)
    })
    .await;
    let listed = view.sites.iter().find(|s| s.site_id == site.id).unwrap();
    assert_eq!(listed.state, "failed");
    assert!(
        listed
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains("its rollback failed"),
        "{listed:?}"
    );

    // And it does not try again by itself: more rounds go by, the count stays.
    let rounds = |logs: &str| logs.matches("round done").count();
    let before = rounds(&site.logs());
    eventually("three more rounds of the agent", || async {
        (rounds(&site.logs()) >= before + 3).then_some(())
    })
    .await;
    assert_eq!(rollback_runs(&site), 3, "{}", site.logs());
    agent.kill().await.unwrap();
}
