//! Crash safety and offline behaviour of a real `fleetwave-agent` process against a real
//! coordinator: kill -9 at each journal step followed by a correct recovery, reports
//! queued while the coordinator is down delivered exactly once when it returns, and
//! `install.install_offline`: whether a leased install resumes while the coordinator is down.
//!
//! The kill points use the agent's test hooks (`FLEETWAVE_TEST_HOOKS=1` with
//! `FLEETWAVE_TEST_PAUSE_AT=<step>`), which make the agent stop right after it journalled
//! the step as started.
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
    let mut agent = site.run(&[
        ("FLEETWAVE_TEST_HOOKS", "1"),
        ("FLEETWAVE_TEST_PAUSE_AT", step),
    ]);
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
    let mut agent = site.run(&[
        ("FLEETWAVE_TEST_HOOKS", "1"),
        ("FLEETWAVE_TEST_PAUSE_AT", "rollback"),
    ]);
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

/// The `next_round_in_secs` values the daemon logged, in order.
fn round_delays(logs: &str) -> Vec<f64> {
    logs.lines()
        .filter_map(|l| {
            let key = "next_round_in_secs=";
            let rest = &l[l.find(key)? + key.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
        .collect()
}

/// Appends `[install] install_offline = <value>` to the site's configuration.
fn set_install_offline(site: &Site, value: bool) {
    let mut text = std::fs::read_to_string(&site.config).unwrap();
    text.push_str(&format!("\n[install]\ninstall_offline = {value}\n"));
    std::fs::write(&site.config, text).unwrap();
}

/// An install holding a lease is cut by a power loss right after its download completed
/// (the artifact is whole in `.part`, the journal still says `prepare` started), and the
/// box comes back while the coordinator is down, so the lease cannot be renewed.
/// Returns the coordinator (stopped), the site and the restarted agent.
async fn leased_install_interrupted_then_coordinator_down(
    name: &str,
    install_offline: bool,
) -> (Coordinator, Site, tokio::process::Child) {
    let mut coordinator = Coordinator::start().await;
    let site = Site::new(name, &coordinator);
    set_install_offline(&site, install_offline);
    site.enroll(&coordinator).await;
    let mut agent = site.run(&[
        ("FLEETWAVE_TEST_HOOKS", "1"),
        ("FLEETWAVE_TEST_PAUSE_AT", "prepare"),
    ]);
    coordinator
        .publish_demo("1.0.0", 1, true, false, &site)
        .await;
    coordinator.rollout("demo-1.0.0").await;
    kill_at(&site, &mut agent, "prepare").await;
    let open = site
        .state()
        .journal_open()
        .unwrap()
        .expect("an open install");
    assert_eq!(open.step.as_str(), "prepare");
    assert!(open.lease_id.is_some(), "the install held a lease");

    // The download had finished before the power cut; only `prepare done` was not recorded.
    let artifact = common::demo_artifact("1.0.0", true);
    let sha = fleetwave_shared::sha256_hex(&artifact);
    let artifacts = site.dir.path().join("staging/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join(format!("{sha}.part")), &artifact).unwrap();

    coordinator.stop().await;
    let agent = site.run(&[]);
    (coordinator, site, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_offline_true_finishes_a_leased_install_while_the_coordinator_is_down() {
    let (_coordinator, site, mut agent) =
        leased_install_interrupted_then_coordinator_down("offline-finish", true).await;
    let last = last_outcome(&site, "demo-1.0.0").await;
    assert_eq!(last["outcome"], "committed", "{}", site.logs());
    eventually("demo 1.0.0 answers", || async {
        (site.app_version().await.as_deref() == Some("1.0.0")).then_some(())
    })
    .await;
    let logs = site.logs();
    assert!(
        logs.contains("continuing offline (install.install_offline = true)"),
        "{logs}"
    );
    agent.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_offline_false_waits_for_the_coordinator_to_renew_the_lease() {
    let (mut coordinator, site, mut agent) =
        leased_install_interrupted_then_coordinator_down("offline-wait", false).await;
    // The agent decides to wait, and still waits on its next rounds.
    eventually("the agent waits for the coordinator twice", || async {
        let logs = site.logs();
        (logs
            .matches("waiting for the coordinator (install.install_offline = false)")
            .count()
            >= 2)
            .then_some(())
    })
    .await;
    let open = site.state().journal_open().unwrap().expect("still open");
    assert_eq!(
        (open.step.as_str(), open.state.as_str()),
        ("prepare", "started"),
        "nothing went on while the lease could not be renewed: {}",
        site.logs()
    );
    assert_eq!(site.app_version().await, None, "nothing was installed");
    assert!(!site.dir.path().join("apps/demo/current").exists());

    // Once the coordinator renews the lease, the install goes on and commits.
    coordinator.restart().await;
    let last = last_outcome(&site, "demo-1.0.0").await;
    assert_eq!(last["outcome"], "committed", "{}", site.logs());
    eventually("demo 1.0.0 answers", || async {
        (site.app_version().await.as_deref() == Some("1.0.0")).then_some(())
    })
    .await;
    agent.kill().await.unwrap();
}

/// `install_offline` only lets an install that already holds a lease go on: an assignment
/// the agent has stored but never got a lease for is not started while the coordinator is
/// unreachable, even with the default `true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_assignment_without_a_lease_is_not_started_offline() {
    let mut coordinator = Coordinator::start().await;
    let site = Site::new("offline-no-lease", &coordinator);
    set_install_offline(&site, true);
    let config = std::fs::read_to_string(&site.config).unwrap().replace(
        "backoff_min_secs = 1\nbackoff_max_secs = 2",
        "backoff_min_secs = 1\nbackoff_max_secs = 60",
    );
    std::fs::write(&site.config, config).unwrap();
    site.enroll(&coordinator).await;
    let (code, out, err) = site.cli(&["defer", "2h", "--reason", "hold"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let mut agent = site.run(&[]);
    coordinator
        .publish_demo("1.0.0", 1, true, false, &site)
        .await;
    coordinator.rollout("demo-1.0.0").await;
    eventually(
        "the assignment is stored and waits on the deferral",
        || async {
            let s = site.status().await;
            (s["assignment"]["valid"] == true && site.logs().contains("deferred locally until"))
                .then_some(())
        },
    )
    .await;

    coordinator.stop().await;
    let (code, out, err) = site.cli(&["resume"]).await;
    assert_eq!(code, 0, "{out}{err}");
    // It keeps asking, backing off further each round (1-2 s, 2-4 s, 4-8 s, ...), not
    // every `backoff_min_secs` for as long as the outage lasts.
    let rounds = eventually("the agent fails to get a lease three times", || async {
        let logs = site.logs();
        let after = &logs[logs.find("lease request failed")?..];
        let rounds = round_delays(after);
        (after.matches("lease request failed").count() >= 3 && rounds.len() >= 3).then_some(rounds)
    })
    .await;
    assert!(rounds[2] >= 4.0, "{rounds:?}\n{}", site.logs());
    assert!(
        site.state().journal_open().unwrap().is_none(),
        "no install was started without a lease: {}",
        site.logs()
    );
    assert_eq!(site.app_version().await, None, "nothing was installed");
    agent.kill().await.unwrap();
}

/// An install cut at `prepare` (leased, nothing changed yet) whose rollout an operator
/// aborted while the box was down: on restart the lease renewal is refused with the final
/// reason `rollout_halted`, read from the answer's `error.reason`, and the agent abandons
/// the install at once instead of waiting an hour to ask again. Nothing is installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_lease_denial_abandons_an_install_that_changed_nothing() {
    let coordinator = Coordinator::start().await;
    let site = Site::new("final-denial", &coordinator);
    site.enroll(&coordinator).await;
    let mut agent = site.run(&[
        ("FLEETWAVE_TEST_HOOKS", "1"),
        ("FLEETWAVE_TEST_PAUSE_AT", "prepare"),
    ]);
    coordinator
        .publish_demo("1.0.0", 1, true, false, &site)
        .await;
    let rollout = coordinator.rollout("demo-1.0.0").await;
    kill_at(&site, &mut agent, "prepare").await;
    let open = site
        .state()
        .journal_open()
        .unwrap()
        .expect("an open install");
    assert!(open.lease_id.is_some(), "the install held a lease");

    let _: serde_json::Value = coordinator
        .post(
            &format!("/v1/rollouts/{rollout}/abort"),
            &serde_json::json!({"reason": "wrong release"}),
        )
        .await;
    let mut agent = site.run(&[]);
    let last = last_outcome(&site, "demo-1.0.0").await;
    assert_eq!(last["outcome"], "abandoned", "{}", site.logs());
    let detail = last["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("rollout_halted") && detail.contains("aborted"),
        "the agent acted on the lease's final reason: {detail}\n{}",
        site.logs()
    );
    assert_eq!(site.app_version().await, None, "nothing was installed");
    assert!(!site.dir.path().join("apps/demo/current").exists());
    agent.kill().await.unwrap();
}
