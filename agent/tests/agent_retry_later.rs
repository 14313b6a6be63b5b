//! An operator script that exits 21 ("retry this step later") against a real coordinator
//! and a real `fleetwave-agent` process: the daemon runs the same step again a bounded
//! number of times (`max_retries`, with the `retry_delay_secs` back-off), and only then
//! counts the step as failed and rolls back, as for any other failure of that step.

mod common;

use std::path::Path;

use common::{Coordinator, Site, eventually};

/// A command release whose install script counts its runs in `<dir>/install-runs` and
/// exits 21 for the first `retry_later_runs` runs (every run when `None`), then 0; its
/// rollback script appends a line to `<dir>/rolled-back`.
async fn publish_command_release(
    coordinator: &Coordinator,
    dir: &Path,
    retry_later_runs: Option<u32>,
    max_retries: u32,
) -> String {
    let runs = dir.join("install-runs");
    let until = retry_later_runs.map_or("1000000".to_string(), |n| n.to_string());
    let install = format!(
        "n=$(cat '{runs}' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '{runs}'; \
         if [ $n -le {until} ]; then echo \"helm: another operation is in progress (run $n)\" >&2; exit 21; fi; \
         echo installed",
        runs = runs.display()
    );
    let rollback = format!("echo rollback >> '{}'", dir.join("rolled-back").display());
    coordinator
        .publish_command(
            "edge-stack",
            "2.0.0",
            serde_json::json!({
                "install": install,
                "rollback": rollback,
                "verify_period_secs": 1,
                "max_retries": max_retries,
                "retry_delay_secs": 1,
                "retry_max_delay_secs": 1,
            }),
        )
        .await
}

async fn last_outcome(site: &Site, release_id: &str) -> serde_json::Value {
    eventually(&format!("the install of {release_id} ends"), || async {
        let last = site.status().await["last_install"].clone();
        (last["release_id"] == release_id && last["outcome"].is_string()).then_some(last)
    })
    .await
}

fn runs(site: &Site) -> u32 {
    std::fs::read_to_string(site.dir.path().join("install-runs"))
        .map(|t| t.trim().parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_script_that_exits_21_twice_is_retried_and_commits_without_rollback() {
    let coordinator = Coordinator::start().await;
    let site = Site::new("retry-later-ok", &coordinator);
    site.enroll(&coordinator).await;
    let mut agent = site.run(&[]);
    let release = publish_command_release(&coordinator, site.dir.path(), Some(2), 3).await;
    coordinator.rollout(&release).await;

    let last = last_outcome(&site, &release).await;
    assert_eq!(last["outcome"], "committed", "{}", site.logs());
    assert_eq!(
        runs(&site),
        3,
        "two runs asked to retry, the third installed"
    );
    assert!(
        !site.dir.path().join("rolled-back").exists(),
        "nothing was rolled back: {}",
        site.logs()
    );
    let status = site.status().await;
    assert_eq!(status["installed"][0]["release_id"], release.as_str());
    // Each retry was said, with the script's own words.
    let logs = site.logs();
    assert_eq!(
        logs.matches("step asked to be retried later").count(),
        2,
        "{logs}"
    );
    assert!(logs.contains("another operation is in progress"), "{logs}");
    // The coordinator was told of each retry, with the wait.
    let db =
        rusqlite::Connection::open(coordinator.dir.path().join("data/coordinator.db")).unwrap();
    let retries: Vec<i64> = db
        .prepare(
            "SELECT at FROM reports WHERE site_id = 'retry-later-ok' AND kind = 'phase' \
             AND body LIKE '%retry_later%retry % of 3 in 1 s%' ORDER BY at",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(retries.len(), 2, "{retries:?}");
    agent.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_script_that_always_exits_21_fails_after_its_retries_and_rolls_back() {
    let coordinator = Coordinator::start().await;
    let site = Site::new("retry-later-never", &coordinator);
    site.enroll(&coordinator).await;
    let mut agent = site.run(&[]);
    let release = publish_command_release(&coordinator, site.dir.path(), None, 2).await;
    coordinator.rollout(&release).await;

    let last = last_outcome(&site, &release).await;
    assert_eq!(last["outcome"], "rolled_back", "{}", site.logs());
    assert_eq!(runs(&site), 3, "the first run and max_retries = 2 retries");
    assert!(
        site.dir.path().join("rolled-back").exists(),
        "the rollback script ran: {}",
        site.logs()
    );
    let detail = last["detail"].as_str().unwrap_or_default().to_string();
    assert!(
        detail.contains("retry_later") && detail.contains("no retry left"),
        "{detail}"
    );
    assert!(
        site.status().await["installed"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    agent.kill().await.unwrap();
}
