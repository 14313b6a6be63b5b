//! Downloading ahead (`download.ahead`, on by default) with a real coordinator and a real
//! `fleetwave-agent` process: while the site waits (here a local deferral; a closed window
//! is the same wait), the release's artifact is downloaded and verified into the staging
//! directory and the site reports `staged`; nothing is installed until the wait ends, and
//! then the install uses the staged artifact and commits.
//! Needs `fleetwave-demo-app` built: `cargo build -p fleetwave-e2e --bin fleetwave-demo-app`.

mod common;

use common::{Coordinator, Site, eventually};
use fleetwave_shared::protocol::operator as api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_site_stages_the_artifact_and_installs_only_when_ready() {
    let coordinator = Coordinator::start().await;
    let site = Site::new("ahead-store", &coordinator);
    site.enroll(&coordinator).await;
    let (code, _, err) = site.cli(&["defer", "2h", "--reason", "lunch rush"]).await;
    assert_eq!(code, 0, "{err}");
    let mut agent = site.run(&[]);
    coordinator
        .publish_demo("1.0.0", 1, true, false, &site)
        .await;
    let sha = fleetwave_shared::sha256_hex(&common::demo_artifact("1.0.0", true));
    let rollout = coordinator.rollout("demo-1.0.0").await;

    // The coordinator sees the site staged, with the reason in words.
    let sites_path = format!("{}/{rollout}/sites", api::paths::ROLLOUTS);
    let staged = eventually("the site to report staged", || async {
        let list: api::RolloutSiteList = coordinator.get(&sites_path).await;
        list.sites
            .into_iter()
            .find(|s| s.phase.as_deref() == Some("staged"))
    })
    .await;
    assert_eq!(
        staged.state, "deferred",
        "the gate still counts it as waiting: {staged:?}"
    );
    let staged_file = site.dir.path().join("staging/artifacts").join(&sha);
    assert!(
        staged_file.is_file(),
        "the verified artifact is in the staging directory"
    );
    assert_eq!(
        site.app_version().await,
        None,
        "nothing installed while deferred"
    );
    assert!(
        site.state().journal_open().unwrap().is_none(),
        "no install begun"
    );

    // The wait ends: the install starts and commits with the staged artifact.
    let (code, _, err) = site.cli(&["resume"]).await;
    assert_eq!(code, 0, "{err}");
    let status = coordinator.rollout_finished(&rollout).await;
    assert_eq!(status, api::RolloutStatus::Completed, "{}", site.logs());
    eventually("demo 1.0.0 answers", || async {
        (site.app_version().await.as_deref() == Some("1.0.0")).then_some(())
    })
    .await;
    let logs = site.logs();
    assert!(logs.contains("downloaded and verified ahead"), "{logs}");
    assert_eq!(
        logs.matches("downloading ahead of the window").count(),
        1,
        "one download ahead: {logs}"
    );
    agent.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_downloaded_ahead_into_the_disk_reserve() {
    let coordinator = Coordinator::start().await;
    let site = Site::new("tight-store", &coordinator);
    // The reserve a lease's readiness asks for: artifacts x disk_margin + min_free. A
    // margin no disk can meet stands for a nearly full disk.
    let config = std::fs::read_to_string(&site.config).unwrap();
    std::fs::write(
        &site.config,
        config.replace("disk_margin = 1.0", "disk_margin = 1000000000000.0"),
    )
    .unwrap();
    site.enroll(&coordinator).await;
    let mut agent = site.run(&[]);
    coordinator
        .publish_demo("1.0.0", 1, true, false, &site)
        .await;
    let rollout = coordinator.rollout("demo-1.0.0").await;
    let sites_path = format!("{}/{rollout}/sites", api::paths::ROLLOUTS);
    eventually("the site to wait for readiness", || async {
        let list: api::RolloutSiteList = coordinator.get(&sites_path).await;
        list.sites
            .into_iter()
            .find(|s| s.phase.as_deref() == Some("waiting"))
    })
    .await;
    // The agent says why (the disk check, whose reserve counts the artifacts), and
    // downloads nothing ahead.
    let logs = eventually("the agent to name the disk check", || async {
        let logs = site.logs();
        logs.contains("readiness checks failing: disk:")
            .then_some(logs)
    })
    .await;
    assert!(logs.contains("for the artifact under"), "{logs}");
    assert!(
        !logs.contains("downloading ahead of the window"),
        "no download started: {logs}"
    );
    let sha = fleetwave_shared::sha256_hex(&common::demo_artifact("1.0.0", true));
    assert!(
        !site
            .dir
            .path()
            .join("staging/artifacts")
            .join(&sha)
            .exists()
    );
    agent.kill().await.unwrap();
}
