//! An operator retries a site whose install failed (`POST /v1/rollouts/{id}/retry`),
//! against a real coordinator and a real `fleetwave-agent` process: the install script
//! fails on its first run (a transient fault), the agent rolls back and reports it, the
//! rollout halts on its failure budget; the operator retries the site and resumes, the
//! agent receives a new assignment (a higher sequence), installs again and commits, and
//! the rollout completes with the site counted once.

mod common;

use common::{Coordinator, Site, eventually};
use fleetwave_shared::protocol::operator as api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_site_installs_again_and_the_rollout_completes() {
    let coordinator = Coordinator::start().await;
    let site = Site::new("retry-store", &coordinator);
    site.enroll(&coordinator).await;
    let mut agent = site.run(&[]);
    let runs = site.dir.path().join("install-runs");
    let install = format!(
        "n=$(cat '{runs}' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '{runs}'; \
         if [ $n -eq 1 ]; then echo 'mkdir: no space left on device' >&2; exit 1; fi; \
         echo installed",
        runs = runs.display()
    );
    let release = coordinator
        .publish_command(
            "edge-stack",
            "2.0.0",
            serde_json::json!({"install": install, "rollback": "true", "verify_period_secs": 1}),
        )
        .await;
    let rollout = coordinator.rollout(&release).await;
    let path = format!("{}/{rollout}", api::paths::ROLLOUTS);

    // The first attempt fails; the rollout (failure budget 0) halts.
    eventually("the rollout halts on the failed install", || async {
        let view: api::RolloutView = coordinator.get(&path).await;
        (view.status == api::RolloutStatus::Halted).then_some(())
    })
    .await;
    let first = site.status().await["last_install"].clone();
    assert_eq!(first["outcome"], "rolled_back", "{}", site.logs());

    // Retry the site, then resume: a new attempt.
    let view: api::RolloutView = coordinator
        .post(
            &format!("{path}/retry"),
            &api::RetrySites {
                site_id: Some("retry-store".into()),
                wave: None,
            },
        )
        .await;
    assert!(
        view.decisions
            .iter()
            .any(|d| d.kind == "retried" && d.reason.contains("(attempt 2)")),
        "{:?}",
        view.decisions
    );
    let _: api::RolloutView = coordinator
        .post(&format!("{path}/resume"), &serde_json::json!({}))
        .await;
    let status = coordinator.rollout_finished(&rollout).await;
    assert_eq!(status, api::RolloutStatus::Completed, "{}", site.logs());
    let last = site.status().await["last_install"].clone();
    assert_eq!(last["outcome"], "committed", "{}", site.logs());
    assert!(
        last["sequence"].as_u64() > first["sequence"].as_u64(),
        "a new assignment: {first} then {last}"
    );
    assert_eq!(std::fs::read_to_string(&runs).unwrap().trim(), "2");
    let view: api::RolloutView = coordinator.get(&path).await;
    let wave = &view.waves[0];
    assert_eq!(
        (wave.tally.succeeded, wave.tally.failed),
        (1, 0),
        "counted once, by its last attempt"
    );
    agent.kill().await.unwrap();
}
