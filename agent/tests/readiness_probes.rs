//! Configured health probes against real things: an HTTP server on loopback (the demo app
//! and the test file server), real commands, a stand-in `systemctl` and the stand-in
//! `kubectl` of the kubernetes fixtures.

#[path = "fixtures/support.rs"]
mod support;

use fleetwave_agent::readiness::{Health, HealthConfig, ProbeConfig};
use support::{Behaviour, DemoAppGuard, FileServer, render_fixture, write_script};

fn health(probes: &str) -> (Health, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg: HealthConfig = toml::from_str(probes).unwrap();
    let quiet = support::quiet_health(1, 1);
    cfg.min_free_disk_bytes = quiet.min_free_disk_bytes;
    cfg.min_mem_available_bytes = quiet.min_mem_available_bytes;
    cfg.max_load_per_cpu = quiet.max_load_per_cpu;
    (Health::new(cfg, tmp.path()).unwrap(), tmp)
}

fn check<'a>(
    s: &'a fleetwave_agent::readiness::HealthSample,
    name: &str,
) -> &'a fleetwave_agent::readiness::CheckResult {
    s.checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name} in {s:?}"))
}

#[tokio::test]
async fn http_probes_pass_and_fail_on_status_body_and_connection() {
    let server = FileServer::start().await;
    server.put("/ok", b"status: ok, db: up".to_vec(), Behaviour::Normal);
    server.put("/gone", Vec::new(), Behaviour::NotFound);
    let closed = support::free_port();
    let (h, _t) = health(&format!(
        r#"
        [[probes]]
        type = "http"
        name = "ok"
        url = "{base}/ok"
        body_contains = "db: up"
        [[probes]]
        type = "http"
        name = "body"
        url = "{base}/ok"
        body_contains = "db: down"
        [[probes]]
        type = "http"
        name = "status"
        url = "{base}/gone"
        [[probes]]
        type = "http"
        name = "expect404"
        url = "{base}/gone"
        expect_status = 404
        [[probes]]
        type = "http"
        name = "closed"
        url = "http://127.0.0.1:{closed}/healthz"
        timeout_secs = 3
        "#,
        base = server.base_url
    ));
    let s = h.sample().await;
    assert!(check(&s, "http:ok").passed);
    assert!(check(&s, "http:expect404").passed);
    let body = check(&s, "http:body");
    assert!(
        !body.passed && body.reason.contains("body lacks"),
        "{body:?}"
    );
    let status = check(&s, "http:status");
    assert!(
        !status.passed && status.reason.contains("status 404"),
        "{status:?}"
    );
    let closed = check(&s, "http:closed");
    assert!(
        !closed.passed && closed.reason.contains("connection"),
        "{closed:?}"
    );
    assert!(!s.healthy());
    let summary = s.summary();
    assert_eq!(summary.failed, 3);
    assert!(
        summary
            .failing
            .iter()
            .any(|f| f.starts_with("http:status: status 404"))
    );
}

#[tokio::test]
async fn an_http_probe_follows_the_demo_app_health() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("app.json"),
        r#"{"version": "1.2.3", "healthy": false}"#,
    )
    .unwrap();
    let port = support::free_port();
    let pid_file = dir.path().join("pid");
    let _guard = DemoAppGuard {
        pid_file: pid_file.clone(),
    };
    let restart = || {
        std::process::Command::new(support::demo_app())
            .args(["restart", "--dir", app.to_str().unwrap(), "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--pid-file")
            .arg(&pid_file)
            .status()
            .unwrap()
    };
    assert!(restart().success());
    let (h, _t) = health(&format!(
        "[[probes]]\ntype = \"http\"\nname = \"app\"\nurl = \"http://127.0.0.1:{port}/healthz\"\n"
    ));
    let s = h.sample().await;
    assert_eq!(check(&s, "http:app").reason, "status 500, expected 200");
    std::fs::write(
        app.join("app.json"),
        r#"{"version": "1.2.3", "healthy": true}"#,
    )
    .unwrap();
    assert!(restart().success());
    assert!(h.sample().await.healthy());
}

#[tokio::test]
async fn command_probes_pass_on_exit_0_and_fail_with_the_last_output_line_or_timeout() {
    let (h, _t) = health(
        r#"
        [[probes]]
        type = "command"
        name = "true"
        command = ["true"]
        [[probes]]
        type = "command"
        name = "disk-ro"
        command = "echo checking; echo 'filesystem is read-only' >&2; exit 4"
        [[probes]]
        type = "command"
        name = "slow"
        command = ["sleep", "30"]
        timeout_secs = 1
        "#,
    );
    let s = h.sample().await;
    assert!(check(&s, "command:true").passed);
    assert_eq!(
        check(&s, "command:disk-ro").reason,
        "exit code 4: filesystem is read-only"
    );
    let slow = check(&s, "command:slow");
    assert!(
        !slow.passed && slow.reason.contains("did not finish within 1 s"),
        "{slow:?}"
    );
}

#[tokio::test]
async fn systemd_probe_asks_systemctl_is_active() {
    let tmp = tempfile::tempdir().unwrap();
    let systemctl = tmp.path().join("systemctl");
    // Stand-in systemctl: pos.service is active, anything else failed.
    write_script(
        &systemctl,
        "#!/bin/sh\n[ \"$1\" = is-active ] || exit 2\nif [ \"$2\" = pos.service ]; then echo active; else echo failed; exit 3; fi\n",
    );
    let s = systemctl.to_str().unwrap();
    let (h, _t) = health(&format!(
        r#"
        [[probes]]
        type = "systemd"
        name = "pos"
        unit = "pos.service"
        systemctl = ["{s}"]
        [[probes]]
        type = "systemd"
        name = "printer"
        unit = "printer.service"
        systemctl = ["{s}"]
        "#
    ));
    let sample = h.sample().await;
    assert!(check(&sample, "systemd:pos").passed);
    assert_eq!(
        check(&sample, "systemd:printer").reason,
        "printer.service failed"
    );
}

#[tokio::test]
async fn kube_probes_read_node_and_pods_through_a_stand_in_kubectl() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let kubectl = tmp.path().join("kubectl");
    write_script(
        &kubectl,
        &render_fixture(
            "kubernetes/kubectl.in",
            &[("STATE", state.to_str().unwrap())],
        ),
    );
    let k = kubectl.to_str().unwrap();
    let (h, _t) = health(&format!(
        r#"
        [[probes]]
        type = "kube_node"
        name = "node"
        node = "edge-1"
        kubectl = {{ command = ["{k}"] }}
        [[probes]]
        type = "kube_system_pods"
        name = "system"
        kubectl = {{ command = ["{k}"] }}
        "#
    ));
    // API server down: both fail with kubectl's message.
    let s = h.sample().await;
    assert!(
        check(&s, "kube_node:node")
            .reason
            .contains("connection to the server")
    );
    assert!(!check(&s, "kube_system_pods:system").passed);

    std::fs::write(state.join("running"), "v1.31.2+k3s1\n").unwrap();
    std::fs::write(state.join("node-health"), "broken\n").unwrap();
    let s = h.sample().await;
    let node = check(&s, "kube_node:node");
    assert!(
        !node.passed && node.reason.contains("Ready=False"),
        "{node:?}"
    );
    assert_eq!(
        check(&s, "kube_system_pods:system").reason,
        "2 pods ready in kube-system"
    );

    std::fs::write(state.join("node-health"), "ready\n").unwrap();
    let s = h.sample().await;
    assert_eq!(
        check(&s, "kube_node:node").reason,
        "node edge-1 Ready (v1.31.2+k3s1)"
    );
    assert!(s.healthy());
}

#[tokio::test]
async fn extra_probes_from_an_executor_join_the_sample() {
    let (h, _t) = health("");
    let extra = vec![ProbeConfig::Command(
        toml::from_str::<fleetwave_agent::readiness::config::CommandProbe>(
            "name = \"x\"\ncommand = [\"false\"]\n",
        )
        .unwrap(),
    )];
    let s = h.sample_with(&extra).await;
    assert!(!check(&s, "command:x").passed);
}

#[test]
fn a_ca_file_that_does_not_exist_is_a_clear_start_up_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg: HealthConfig = toml::from_str(
        "[[probes]]\ntype = \"http\"\nname = \"a\"\nurl = \"https://x\"\nca_file = \"/nonexistent/ca.pem\"\n",
    )
    .unwrap();
    let err = Health::new(cfg, tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("http:a") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
}
