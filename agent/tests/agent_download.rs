//! Download retries against a real coordinator over TLS on 127.0.0.1: a download that
//! fails in a retryable way (the artifact is not on the coordinator yet) is tried again
//! after the poll back-off, which grows with every failure, and the install goes on once
//! the artifact is there.
//!
//! Needs `fleetwave-demo-app` built: `cargo build -p fleetwave-e2e --bin fleetwave-demo-app`.

mod common;

use common::{Coordinator, Site, eventually};
use fleetwave_shared::protocol::operator as api;

/// The `retry_in_secs` values of the agent's "prepare failed, will retry" log lines.
fn download_retry_delays(logs: &str) -> Vec<f64> {
    logs.lines()
        .filter(|l| l.contains("prepare failed, will retry"))
        .filter_map(|l| {
            let key = "retry_in_secs=";
            let rest = &l[l.find(key)? + key.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
        .collect()
}

/// The release names an artifact nobody uploaded: every download gets a 404. The agent
/// keeps polling but tries the download again only after a back-off that grows (1-2 s,
/// 2-4 s, 4-8 s, ...) instead of every `max(backoff_min_secs, 30)` s for as long as the
/// artifact is missing. Once the artifact is uploaded, the install commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_artifact_is_retried_with_a_growing_back_off_then_installed() {
    let coordinator = Coordinator::start().await;
    let site = Site::new("download-1", &coordinator);
    let config = std::fs::read_to_string(&site.config).unwrap().replace(
        "backoff_min_secs = 1\nbackoff_max_secs = 2",
        "backoff_min_secs = 1\nbackoff_max_secs = 60",
    );
    std::fs::write(&site.config, config).unwrap();
    site.enroll(&coordinator).await;
    let mut agent = site.run(&[]);

    let artifact = common::demo_artifact("1.0.0", true);
    let sha = fleetwave_shared::sha256_hex(&artifact);
    let release = coordinator.sign_demo_release("1.0.0", 1, &artifact, &sha, &site);
    let _: serde_json::Value = coordinator.post(api::paths::RELEASES, &release).await;
    coordinator.rollout("demo-1.0.0").await;

    let delays = eventually("the download failed four times", || async {
        let d = download_retry_delays(&site.logs());
        (d.len() >= 4).then_some(d)
    })
    .await;
    let logs = site.logs();
    assert!(logs.contains("404"), "the artifact is missing: {logs}");
    // From `backoff_min_secs` (1 s, jittered up to 2 s), doubling with every failure.
    assert!(delays[0] >= 1.0 && delays[0] < 2.0, "{delays:?}");
    assert!(delays[1] >= 2.0, "{delays:?}");
    assert!(delays[2] >= 4.0, "{delays:?}");
    assert!(delays[3] >= 8.0, "{delays:?}");
    // The wait is kept: the rounds go on (polls every ~2 s here), but between the third
    // failure and the fourth (a 4-8 s back-off) the download was not tried in each of
    // them. Without the wait every round would try it once.
    let failures: Vec<usize> = logs
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("prepare failed, will retry"))
        .map(|(i, _)| i)
        .collect();
    let rounds_between = logs
        .lines()
        .skip(failures[2])
        .take(failures[3] - failures[2])
        .filter(|l| l.contains("round done"))
        .count();
    assert!(rounds_between >= 2, "{rounds_between} rounds\n{logs}");

    // The artifact arrives: the next try downloads it and the install commits.
    coordinator.upload(artifact).await;
    eventually("demo 1.0.0 committed", || async {
        let s = site.status().await;
        s["installed"]
            .as_array()
            .is_some_and(|i| i.iter().any(|r| r["release_id"] == "demo-1.0.0"))
            .then_some(())
    })
    .await;
    assert_eq!(
        site.app_version().await.as_deref(),
        Some("1.0.0"),
        "{}",
        site.logs()
    );
    agent.kill().await.unwrap();
}
