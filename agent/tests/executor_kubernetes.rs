//! The `kubernetes` executor driven against STAND-IN scripts, not a real k3s: a stand-in
//! `k3s` binary (prints its version, records snapshots), a stand-in restart command and a
//! stand-in `kubectl` (agent/tests/fixtures/kubernetes/). The binary swap, the skew policy,
//! the snapshot, the restart and the readiness waits are real; the cluster is not.

#[path = "fixtures/support.rs"]
mod support;

use std::path::PathBuf;

use fleetwave_agent::executor::{ArtifactSource, Executor, ExecutorConfig};
use fleetwave_agent::readiness::{CommandLine, Health, KubectlConfig};
use fleetwave_shared::{Release, ReleaseKind};
use serde_json::json;
use support::{Behaviour, FileServer, artifact, release, render_fixture, write_script};

struct Cluster {
    config: ExecutorConfig,
    health: Health,
    server: FileServer,
    client: reqwest::Client,
    state: PathBuf,
    binary: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// A box "running" stand-in k3s `version`.
    async fn running(version: &str) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let bin_dir = tmp.path().join("bin");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&bin_dir).unwrap();
        let binary = bin_dir.join("k3s");
        let st = state.to_str().unwrap();
        write_script(&binary, &stand_in_k3s(version, "ready", st));
        let restart = bin_dir.join("restart-k3s");
        write_script(
            &restart,
            &render_fixture(
                "kubernetes/restart.in",
                &[("BINARY", binary.to_str().unwrap()), ("STATE", st)],
            ),
        );
        let kubectl = bin_dir.join("kubectl");
        write_script(
            &kubectl,
            &render_fixture("kubernetes/kubectl.in", &[("STATE", st)]),
        );
        // The cluster is up on the current version.
        assert!(
            std::process::Command::new(&restart)
                .status()
                .unwrap()
                .success()
        );
        std::fs::remove_file(state.join("restarts")).unwrap();
        std::fs::remove_file(state.join("events")).unwrap();

        let mut config = ExecutorConfig {
            apps_dir: tmp.path().join("apps"),
            staging_dir: tmp.path().join("staging"),
            ..ExecutorConfig::default()
        };
        let k = &mut config.kubernetes;
        k.binary = binary.clone();
        k.restart_command = CommandLine::Argv(vec![restart.to_str().unwrap().into()]);
        k.kubectl = Some(KubectlConfig {
            command: CommandLine::Argv(vec![kubectl.to_str().unwrap().into()]),
            kubeconfig: Some(tmp.path().join("kubeconfig.yaml")),
        });
        k.node_name = Some("standin-node".into());
        k.ready_timeout_secs = 2;
        let health = Health::new(support::quiet_health(1, 1), &config.staging_dir).unwrap();
        let server = FileServer::start().await;
        Cluster {
            client: server.client(),
            server,
            config,
            health,
            state,
            binary,
            _tmp: tmp,
        }
    }

    /// A release of stand-in k3s `version` whose node comes up `health`.
    fn release(&self, version: &str, health: &str) -> Release {
        let bytes = stand_in_k3s(version, health, self.state.to_str().unwrap()).into_bytes();
        let path = format!("/v1/artifacts/k3s-{version}-{health}");
        let art = artifact("k3s", &path, &bytes);
        self.server.put(&path, bytes, Behaviour::Normal);
        release(
            "k3s",
            version,
            ReleaseKind::Kubernetes,
            vec![art],
            json!({"verify_period_secs": 1}),
        )
    }

    fn executor(&self, r: &Release, rollback: bool) -> Executor {
        Executor::for_release(&self.config, &support::verified(r), rollback).unwrap()
    }

    fn source(&self) -> ArtifactSource<'_> {
        ArtifactSource {
            client: &self.client,
            base_url: &self.server.base_url,
            bearer_token: None,
            max_bytes_per_sec: 0,
            peers: None,
        }
    }

    fn binary_version(&self, path: &std::path::Path) -> String {
        let out = std::process::Command::new(path)
            .arg("--version")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(2)
            .unwrap_or("")
            .to_string()
    }

    fn lines(&self, file: &str) -> usize {
        std::fs::read_to_string(self.state.join(file))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// What the stand-ins recorded, in order: kubectl changes, snapshots, restarts.
    fn events(&self) -> Vec<String> {
        std::fs::read_to_string(self.state.join("events"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn cordoned(&self) -> bool {
        self.state.join("cordoned").exists()
    }

    /// The cluster's node list: (name, server, kubelet version).
    fn nodes(&self, nodes: &[(&str, bool, &str)]) {
        let items: Vec<serde_json::Value> = nodes
            .iter()
            .map(|(name, server, version)| {
                let labels = if *server {
                    json!({"node-role.kubernetes.io/control-plane": "true"})
                } else {
                    json!({})
                };
                json!({"metadata": {"name": name, "labels": labels},
                       "status": {"nodeInfo": {"kubeletVersion": version}}})
            })
            .collect();
        std::fs::write(
            self.state.join("nodes.json"),
            json!({"kind": "NodeList", "items": items}).to_string(),
        )
        .unwrap();
    }

    fn running_version(&self) -> String {
        std::fs::read_to_string(self.state.join("running"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn previous(&self) -> PathBuf {
        let mut p = self.binary.as_os_str().to_owned();
        p.push(".previous");
        PathBuf::from(p)
    }
}

fn stand_in_k3s(version: &str, health: &str, state: &str) -> String {
    render_fixture(
        "kubernetes/k3s.in",
        &[("VERSION", version), ("HEALTH", health), ("STATE", state)],
    )
}

#[tokio::test]
async fn kubernetes_executor_with_stand_in_k3s_scripts_upgrades_one_minor_version_and_commits() {
    let c = Cluster::running("v1.30.4+k3s1").await;
    let r = c.release("v1.31.2+k3s1", "ready");
    let e = c.executor(&r, false);
    e.prepare(&c.source()).await.unwrap();
    assert_eq!(
        c.binary_version(&c.binary),
        "v1.30.4+k3s1",
        "prepare changes nothing"
    );
    e.install().await.unwrap();
    assert_eq!(c.binary_version(&c.binary), "v1.31.2+k3s1");
    assert_eq!(c.binary_version(&c.previous()), "v1.30.4+k3s1");
    assert_eq!(
        c.lines("snapshots"),
        1,
        "a datastore snapshot before the swap"
    );
    assert_eq!(c.lines("restarts"), 1);
    assert_eq!(c.running_version(), "v1.31.2+k3s1");
    let last = e.verify(&c.health, |_| {}).await.unwrap();
    for name in ["kube:api", "kube:node", "kube:pods"] {
        assert!(
            last.checks.iter().any(|k| k.name == name && k.passed),
            "{name}: {last:?}"
        );
    }
    e.commit().await.unwrap();
    let installed = e.installed().await.unwrap().unwrap();
    assert_eq!(installed.version, "v1.31.2+k3s1");
    assert_eq!(installed.previous.as_deref(), Some("v1.30.4+k3s1"));
    assert!(e.is_target_installed().await.unwrap());
}

#[tokio::test]
async fn kubernetes_executor_with_stand_in_k3s_scripts_refuses_a_skipped_minor_version() {
    let c = Cluster::running("v1.30.4+k3s1").await;
    let r = c.release("v1.32.0+k3s1", "ready");
    let err = c
        .executor(&r, false)
        .prepare(&c.source())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "preflight_refused", "{err}");
    assert!(
        err.to_string().contains("skips minor version 1.31"),
        "{err}"
    );
    assert_eq!(c.binary_version(&c.binary), "v1.30.4+k3s1");
    assert_eq!(c.lines("snapshots"), 0);
    assert!(
        c.server.seen().is_empty(),
        "nothing downloaded after a refused pre-flight"
    );
}

#[tokio::test]
async fn kubernetes_executor_with_stand_in_k3s_scripts_downgrades_only_for_a_rollback_assignment() {
    let c = Cluster::running("v1.31.2+k3s1").await;
    let r = c.release("v1.30.4+k3s1", "ready");
    let err = c
        .executor(&r, false)
        .prepare(&c.source())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "preflight_refused");
    assert!(err.to_string().contains("downgrade"), "{err}");
    let e = c.executor(&r, true);
    e.prepare(&c.source()).await.unwrap();
    e.install().await.unwrap();
    e.verify(&c.health, |_| {}).await.unwrap();
    e.commit().await.unwrap();
    assert_eq!(c.running_version(), "v1.30.4+k3s1");
}

#[tokio::test]
async fn kubernetes_executor_with_stand_in_k3s_scripts_restores_the_binary_when_the_node_fails_after_restart()
 {
    let c = Cluster::running("v1.30.4+k3s1").await;
    let r = c.release("v1.31.2+k3s1", "broken");
    let e = c.executor(&r, false);
    e.prepare(&c.source()).await.unwrap();
    e.install().await.unwrap();
    let err = e.verify(&c.health, |_| {}).await.unwrap_err();
    assert_eq!(err.code(), "unhealthy", "{err}");
    assert!(err.to_string().contains("kube:node"), "{err}");

    e.rollback().await.unwrap();
    assert_eq!(c.binary_version(&c.binary), "v1.30.4+k3s1");
    assert_eq!(c.running_version(), "v1.30.4+k3s1");
    assert_eq!(
        c.lines("restarts"),
        2,
        "restarted on the new, then on the restored binary"
    );
    // Recovery calls rollback again: nothing more happens.
    e.rollback().await.unwrap();
    assert_eq!(c.lines("restarts"), 2);
    assert_eq!(
        e.installed().await.unwrap().unwrap().version,
        "v1.30.4+k3s1"
    );
}

#[tokio::test]
async fn kubernetes_executor_with_stand_in_k3s_scripts_install_is_idempotent() {
    let c = Cluster::running("v1.30.4+k3s1").await;
    let r = c.release("v1.31.2+k3s1", "ready");
    let e = c.executor(&r, false);
    e.prepare(&c.source()).await.unwrap();
    e.prepare(&c.source()).await.unwrap();
    e.install().await.unwrap();
    e.install().await.unwrap();
    assert_eq!(
        c.lines("snapshots"),
        1,
        "no second snapshot once the binary is swapped"
    );
    assert_eq!(
        c.binary_version(&c.previous()),
        "v1.30.4+k3s1",
        "previous kept"
    );
    e.verify(&c.health, |_| {}).await.unwrap();
    e.commit().await.unwrap();
    e.commit().await.unwrap();
}

#[tokio::test]
async fn kubernetes_executor_with_stand_in_k3s_scripts_reports_a_failed_snapshot_before_any_change()
{
    let mut c = Cluster::running("v1.30.4+k3s1").await;
    c.config.kubernetes.snapshot_command = Some(CommandLine::Shell(
        "echo 'etcd: no space left' >&2; exit 1".into(),
    ));
    let r = c.release("v1.31.2+k3s1", "ready");
    let e = c.executor(&r, false);
    e.prepare(&c.source()).await.unwrap();
    let err = e.install().await.unwrap_err();
    assert_eq!(err.code(), "command_failed");
    assert!(err.to_string().contains("no space left"), "{err}");
    assert_eq!(c.binary_version(&c.binary), "v1.30.4+k3s1");
    e.rollback().await.unwrap();
    assert_eq!(c.lines("restarts"), 0, "nothing to undo, nothing restarted");
}

#[tokio::test]
async fn kubernetes_executor_with_stand_in_k3s_scripts_cordons_drains_upgrades_and_uncordons_in_order()
 {
    let mut c = Cluster::running("v1.30.4+k3s1").await;
    c.config.kubernetes.drain = true;
    c.config.kubernetes.drain_timeout_secs = 120;
    let r = c.release("v1.31.2+k3s1", "ready");
    let e = c.executor(&r, false);
    e.prepare(&c.source()).await.unwrap();
    assert!(
        c.events().is_empty(),
        "prepare changes nothing: {:?}",
        c.events()
    );
    e.install().await.unwrap();
    assert!(c.cordoned(), "cordoned through the restart");
    e.verify(&c.health, |_| {}).await.unwrap();
    assert!(!c.cordoned(), "uncordoned once Ready on the new version");
    e.commit().await.unwrap();
    assert_eq!(
        c.events(),
        vec![
            "kubectl cordon standin-node",
            "kubectl drain standin-node --ignore-daemonsets --delete-emptydir-data --timeout=120s",
            "snapshot v1.30.4+k3s1",
            "restart v1.31.2+k3s1",
            "kubectl uncordon standin-node",
        ]
    );
}

#[tokio::test]
async fn kubernetes_executor_with_stand_in_k3s_scripts_fails_a_drain_a_disruption_budget_blocks_and_the_rollback_uncordons()
 {
    let mut c = Cluster::running("v1.30.4+k3s1").await;
    c.config.kubernetes.drain = true;
    std::fs::write(c.state.join("drain-blocked"), "").unwrap();
    let r = c.release("v1.31.2+k3s1", "ready");
    let e = c.executor(&r, false);
    e.prepare(&c.source()).await.unwrap();
    let err = e.install().await.unwrap_err();
    assert_eq!(err.code(), "step_failed", "{err}");
    assert!(err.to_string().contains("disruption budget"), "{err}");
    assert!(
        err.to_string().contains("draining node standin-node"),
        "{err}"
    );
    assert_eq!(
        c.binary_version(&c.binary),
        "v1.30.4+k3s1",
        "nothing replaced"
    );
    assert_eq!(c.lines("snapshots"), 0);
    assert!(c.cordoned());
    // The agent's recovery (a new executor, as after a restart of the agent) rolls back:
    // nothing to restore, the cordon is undone.
    let recovered = c.executor(&r, false);
    recovered.rollback().await.unwrap();
    assert!(!c.cordoned());
    assert_eq!(c.lines("restarts"), 0);
    assert_eq!(
        c.events().last().map(String::as_str),
        Some("kubectl uncordon standin-node")
    );
    recovered.rollback().await.unwrap();
    assert_eq!(
        c.events()
            .iter()
            .filter(|e| e.starts_with("kubectl uncordon"))
            .count(),
        1,
        "a second recovery changes nothing"
    );
}

#[tokio::test]
async fn kubernetes_executor_with_stand_in_k3s_scripts_uncordons_when_a_crash_after_the_swap_is_rolled_back()
 {
    let c = Cluster::running("v1.30.4+k3s1").await;
    let r = c.release("v1.31.2+k3s1", "broken");
    let e = c.executor(&r, false);
    e.prepare(&c.source()).await.unwrap();
    e.install().await.unwrap();
    assert!(c.cordoned());
    // The agent dies here (before verify); recovery rolls back with a new executor.
    drop(e);
    c.executor(&r, false).rollback().await.unwrap();
    assert!(!c.cordoned());
    assert_eq!(c.running_version(), "v1.30.4+k3s1");
    assert_eq!(
        c.events(),
        vec![
            "kubectl cordon standin-node",
            "snapshot v1.30.4+k3s1",
            "restart v1.31.2+k3s1",
            "restart v1.30.4+k3s1",
            "kubectl uncordon standin-node",
        ]
    );
}

#[tokio::test]
async fn kubernetes_executor_with_stand_in_k3s_scripts_upgrades_agent_nodes_only_after_the_servers()
{
    let c = Cluster::running("v1.30.4+k3s1").await;
    // This node is an agent; the one server still runs 1.30.
    c.nodes(&[
        ("server-1", true, "v1.30.4+k3s1"),
        ("standin-node", false, "v1.30.4+k3s1"),
    ]);
    let r = c.release("v1.31.2+k3s1", "ready");
    let err = c
        .executor(&r, false)
        .prepare(&c.source())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "preflight_refused", "{err}");
    assert!(
        err.to_string()
            .contains("server server-1 runs v1.30.4+k3s1"),
        "{err}"
    );
    assert!(c.events().is_empty(), "nothing changed: {:?}", c.events());
    // Once the server runs 1.31.2, the agent follows.
    c.nodes(&[
        ("server-1", true, "v1.31.2+k3s1"),
        ("standin-node", false, "v1.30.4+k3s1"),
    ]);
    c.executor(&r, false).prepare(&c.source()).await.unwrap();

    // A server never leaves a node more than three minor versions behind.
    let c = Cluster::running("v1.30.4+k3s1").await;
    c.nodes(&[
        ("standin-node", true, "v1.30.4+k3s1"),
        ("old-agent", false, "v1.27.9+k3s1"),
    ]);
    let err = c
        .executor(&c.release("v1.31.2+k3s1", "ready"), false)
        .prepare(&c.source())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("old-agent"), "{err}");
}

#[test]
fn kubernetes_drain_settings_that_could_force_or_hang_a_drain_are_refused_with_their_key() {
    use fleetwave_agent::executor::kubernetes::KubernetesConfig;
    for (args, drain, timeout, cordon, key) in [
        (
            vec!["--force"],
            true,
            60,
            true,
            "executor.kubernetes.drain_args",
        ),
        (
            vec!["--disable-eviction"],
            true,
            60,
            true,
            "executor.kubernetes.drain_args",
        ),
        (
            vec!["--timeout=0s"],
            true,
            60,
            true,
            "executor.kubernetes.drain_args",
        ),
        (
            vec![],
            true,
            0,
            true,
            "executor.kubernetes.drain_timeout_secs",
        ),
        (vec![], true, 60, false, "executor.kubernetes.cordon"),
    ] {
        let k = KubernetesConfig {
            drain,
            drain_args: args.iter().map(|a| a.to_string()).collect(),
            drain_timeout_secs: timeout,
            cordon,
            ..KubernetesConfig::default()
        };
        assert_eq!(k.problem().map(|(k, _)| k), Some(key), "{args:?}");
    }
    assert_eq!(KubernetesConfig::default().problem(), None);
}
