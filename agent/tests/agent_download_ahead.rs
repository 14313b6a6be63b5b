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
