//! The local command line of the real `fleetwave-agent` binary: configuration errors name
//! the key, exit codes mean something, deferrals are bounded, `check` reports failing
//! checks, `status` is readable by people and scripts.

mod common;

use common::{Coordinator, Site};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_prints_defaults_and_names_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[coordinator]\nurl = \"https://fleet.test:8443\"\n").unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetwave-agent"))
        .args(["config", "check", "--config"])
        .arg(&good)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("interval_secs = 300"), "{text}");
    assert!(text.contains("max_defer_secs = 259200"), "{text}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[coordinator]\nurl = \"https://x\"\n[outbox]\nmax_event = 5\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetwave-agent"))
        .args(["config", "check", "--config"])
        .arg(&bad)
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "invalid configuration is exit code 2"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_event"), "{err}");

    // Not enrolled: exit code 3 (systemd does not restart it).
    let unenrolled = dir.path().join("unenrolled.toml");
    std::fs::write(
        &unenrolled,
        format!(
            "[coordinator]\nurl = \"https://x\"\n[agent]\nstate_dir = {:?}\n",
            dir.path().join("state").display().to_string()
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetwave-agent"))
        .args(["status", "--config"])
        .arg(&unenrolled)
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defer_is_bounded_check_reports_failures_and_status_reads_well() {
    let coordinator = Coordinator::start().await;
    let site = Site::new("cli-1", &coordinator);
    site.enroll(&coordinator).await;

    let (code, _, err) = site.cli(&["defer", "73h"]).await;
    assert_eq!(code, 4, "over the 72 h maximum: {err}");
    assert!(err.contains("install.max_defer_secs"), "{err}");
    let (code, _, err) = site.cli(&["defer", "soon"]).await;
    assert_eq!(code, 4, "{err}");

    let (code, out, err) = site.cli(&["defer", "6h", "--reason", "inventory"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deferred until"), "{out}");
    let status = site.status().await;
    assert_eq!(status["deferral"]["reason"], "inventory");
    let (code, human, _) = site.cli(&["status"]).await;
    assert_eq!(code, 0);
    assert!(human.contains("deferred      until"), "{human}");
    assert!(human.contains("site          cli-1"), "{human}");
    let (code, out, _) = site.cli(&["resume"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("deferral lifted"), "{out}");
    assert!(site.status().await["deferral"].is_null());

    // check: passes with the test's modest limits...
    let (code, out, err) = site.cli(&["check"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok  "), "{out}");
    // ...and fails (exit 5) when a check cannot pass.
    let config = std::fs::read_to_string(&site.config).unwrap();
    std::fs::write(
        &site.config,
        config.replace(
            "min_free_disk_bytes = 1048576",
            "min_free_disk_bytes = 18446744073709551615",
        ),
    )
    .unwrap();
    let (code, out, _) = site.cli(&["check", "--json"]).await;
    assert_eq!(code, 5, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["healthy"], false);
    assert!(
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "disk" && c["passed"] == false),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_update_guard_stands_down_once_the_new_agent_committed() {
    use fleetwave_agent::state::journal::{NewInstall, Outcome};
    let coordinator = Coordinator::start().await;
    let site = Site::new("guard-1", &coordinator);
    site.enroll(&coordinator).await;
    // The new agent's journal: the self-update release committed.
    let store = site.state();
    let env = fleetwave_shared::Envelope {
        payload: String::new(),
        payload_type: "t".into(),
        signatures: vec![],
    };
    let now = jiff::Timestamp::now();
    let id = store
        .journal_begin(
            &NewInstall {
                rollout_id: "r-agent",
                sequence: 3,
                release_id: "agent-0.2.0",
                stream: "fleetwave-agent",
                assignment: &env,
                release: &env,
                lease_id: None,
            },
            now,
        )
        .unwrap();
    store
        .journal_finish(id, Outcome::Committed, None, now)
        .unwrap();
    let (code, out, err) = site
        .cli(&[
            "self-update-guard",
            "--sha256",
            &"ab".repeat(32),
            "--rollout",
            "r-agent",
            "--sequence",
            "3",
        ])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("Confirmed"), "{err}");
}
