//! Kubernetes checks through kubectl: API server ready, node `Ready`, system pods ready.
//!
//! kubectl is run as a configured command (so `k3s kubectl`, `microk8s kubectl` or a plain
//! `kubectl` fit) with `KUBECONFIG` set when configured; its JSON output is parsed by the
//! pure functions [`node_ready_from_json`] and [`pods_ready_from_json`]. Only reads the
//! cluster; never changes it.

use std::time::Duration;

use serde_json::Value;

use super::CheckResult;
use super::config::KubectlConfig;
use super::process::{self, RunOptions};

/// Most kubectl output read (a node or a namespace's pods as JSON).
const MAX_KUBECTL_OUTPUT: usize = 8 * 1024 * 1024;

async fn kubectl(k: &KubectlConfig, args: &[&str], timeout: Duration) -> Result<String, String> {
    let cmd = k.command.with_args(args);
    let mut opts = RunOptions::with_timeout(timeout);
    opts.max_output = MAX_KUBECTL_OUTPUT;
    if let Some(kc) = &k.kubeconfig {
        opts.env
            .push(("KUBECONFIG".into(), kc.to_string_lossy().into_owned()));
    }
    let out = process::run(&cmd, &opts).await.map_err(|e| e.to_string())?;
    if out.success() {
        return Ok(out.stdout);
    }
    // A drain's last line is only "timed out": the line that says why a pod could not be
    // evicted goes into the message too.
    let why = out
        .stderr
        .lines()
        .find(|l| l.contains("Cannot evict") || l.contains("disruption budget"))
        .map(|l| format!(" ({})", process::truncate_chars(l.trim(), 200)))
        .unwrap_or_default();
    Err(format!(
        "`{}`: {} {}{why}",
        cmd.display(),
        out.status_text(),
        out.brief()
    )
    .trim_end()
    .to_string())
}

/// `kubectl get --raw /readyz` answers `ok`.
pub async fn api_ready(name: &str, k: &KubectlConfig, timeout: Duration) -> CheckResult {
    match kubectl(k, &["get", "--raw", "/readyz"], timeout).await {
        Ok(out) if out.trim() == "ok" => CheckResult::pass(name, "API server ready"),
        Ok(out) => CheckResult::fail(
            name,
            format!(
                "API server not ready: {}",
                process::truncate_chars(out.trim(), 120)
            ),
        ),
        Err(e) => CheckResult::fail(name, process::truncate_chars(&e, 200)),
    }
}

/// `kubectl get node NODE -o json` shows condition `Ready=True`.
pub async fn node_ready(
    name: &str,
    k: &KubectlConfig,
    node: &str,
    timeout: Duration,
) -> CheckResult {
    match node_status(k, node, timeout).await {
        Ok(kubelet) => CheckResult::pass(name, format!("node {node} Ready ({kubelet})")),
        Err(e) => CheckResult::fail(name, e),
    }
}

/// The node's kubelet version when it is `Ready`; otherwise why not.
pub async fn node_status(
    k: &KubectlConfig,
    node: &str,
    timeout: Duration,
) -> Result<String, String> {
    node_status_with(k, node, timeout, false).await
}

/// [`node_status`]; with `cordoned_ok`, a cordoned (unschedulable) node that is Ready
/// passes: the executor's own cordon during an upgrade.
pub async fn node_status_with(
    k: &KubectlConfig,
    node: &str,
    timeout: Duration,
    cordoned_ok: bool,
) -> Result<String, String> {
    match kubectl(k, &["get", "node", node, "-o", "json"], timeout).await {
        Ok(out) => {
            node_ready_from_json_with(&out, cordoned_ok).map_err(|e| format!("node {node}: {e}"))
        }
        Err(e) => Err(process::truncate_chars(&e, 200)),
    }
}

/// `kubectl get pods -n NAMESPACE -o json`: every pod ready or completed.
pub async fn pods_ready(
    name: &str,
    k: &KubectlConfig,
    namespace: &str,
    timeout: Duration,
) -> CheckResult {
    match kubectl(k, &["get", "pods", "-n", namespace, "-o", "json"], timeout).await {
        Ok(out) => match pods_ready_from_json(&out) {
            Ok(n) => CheckResult::pass(name, format!("{n} pods ready in {namespace}")),
            Err(e) => CheckResult::fail(name, format!("{namespace}: {e}")),
        },
        Err(e) => CheckResult::fail(name, process::truncate_chars(&e, 200)),
    }
}

/// Ok with the kubelet version when the node's `Ready` condition is `True`; otherwise the
/// condition's reason.
pub fn node_ready_from_json(json: &str) -> Result<String, String> {
    node_ready_from_json_with(json, false)
}

/// [`node_ready_from_json`]; with `cordoned_ok` a cordoned node is not a failure.
pub fn node_ready_from_json_with(json: &str, cordoned_ok: bool) -> Result<String, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("unreadable node JSON: {e}"))?;
    if v["kind"] != "Node" {
        return Err(format!("expected a Node, got kind {}", v["kind"]));
    }
    let conditions = v["status"]["conditions"]
        .as_array()
        .ok_or("node has no status.conditions")?;
    let ready = conditions
        .iter()
        .find(|c| c["type"] == "Ready")
        .ok_or("node has no Ready condition")?;
    let kubelet = v["status"]["nodeInfo"]["kubeletVersion"]
        .as_str()
        .unwrap_or("kubelet version unknown")
        .to_string();
    if v["spec"]["unschedulable"] == Value::Bool(true) && !cordoned_ok {
        return Err("node is cordoned (unschedulable)".into());
    }
    match ready["status"].as_str() {
        Some("True") => Ok(kubelet),
        other => Err(format!(
            "Ready={} ({})",
            other.unwrap_or("?"),
            ready["reason"]
                .as_str()
                .or(ready["message"].as_str())
                .unwrap_or("no reason given")
        )),
    }
}

/// Ok with the number of pods when every pod is `Running` with all containers ready, or
/// `Succeeded` (completed jobs such as k3s's helm-install); otherwise the first few
/// pods that are not.
pub fn pods_ready_from_json(json: &str) -> Result<usize, String> {
    let v: Value =
        serde_json::from_str(json).map_err(|e| format!("unreadable pod list JSON: {e}"))?;
    let items = v["items"].as_array().ok_or("pod list has no items")?;
    let mut not_ready = Vec::new();
    for pod in items {
        let name = pod["metadata"]["name"].as_str().unwrap_or("?");
        let phase = pod["status"]["phase"].as_str().unwrap_or("Unknown");
        match phase {
            "Succeeded" => {}
            "Running" => {
                let ready = pod["status"]["conditions"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                    .map(|c| c["status"] == "True")
                    .unwrap_or(false);
                if !ready {
                    not_ready.push(format!("{name} not ready"));
                }
            }
            other => not_ready.push(format!("{name} {other}")),
        }
    }
    if not_ready.is_empty() {
        Ok(items.len())
    } else {
        let n = not_ready.len();
        let shown: Vec<_> = not_ready.into_iter().take(3).collect();
        Err(format!(
            "{n} of {} pods not ready: {}",
            items.len(),
            shown.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(status: &str) -> String {
        serde_json::json!({
            "kind": "Node",
            "spec": {},
            "status": {
                "conditions": [
                    {"type": "MemoryPressure", "status": "False"},
                    {"type": "Ready", "status": status, "reason": "KubeletNotReady"}
                ],
                "nodeInfo": {"kubeletVersion": "v1.31.2+k3s1"}
            }
        })
        .to_string()
    }

    #[test]
    fn node_readiness_is_read_from_conditions() {
        assert_eq!(node_ready_from_json(&node("True")).unwrap(), "v1.31.2+k3s1");
        let e = node_ready_from_json(&node("False")).unwrap_err();
        assert!(
            e.contains("Ready=False") && e.contains("KubeletNotReady"),
            "{e}"
        );
        assert!(node_ready_from_json("{\"kind\":\"Pod\"}").is_err());
        assert!(node_ready_from_json("not json").is_err());
    }

    #[test]
    fn pods_ready_counts_running_and_completed() {
        let list = serde_json::json!({"items": [
            {"metadata": {"name": "coredns"}, "status": {"phase": "Running",
              "conditions": [{"type": "Ready", "status": "True"}]}},
            {"metadata": {"name": "helm-install-traefik"}, "status": {"phase": "Succeeded"}},
        ]});
        assert_eq!(pods_ready_from_json(&list.to_string()).unwrap(), 2);
        let list = serde_json::json!({"items": [
            {"metadata": {"name": "coredns"}, "status": {"phase": "Running",
              "conditions": [{"type": "Ready", "status": "False"}]}},
            {"metadata": {"name": "metrics"}, "status": {"phase": "Pending"}},
        ]});
        let e = pods_ready_from_json(&list.to_string()).unwrap_err();
        assert!(
            e.contains("2 of 2")
                && e.contains("coredns not ready")
                && e.contains("metrics Pending"),
            "{e}"
        );
    }
}

/// Runs a kubectl command that changes the cluster (`cordon`, `uncordon`, `drain`): Ok with
/// its output, or the command, its exit, its last error line and, for a drain, why a pod
/// could not be evicted.
pub async fn kubectl_action(
    k: &KubectlConfig,
    args: &[&str],
    timeout: Duration,
) -> Result<String, String> {
    kubectl(k, args, timeout).await
}

/// One node of the cluster as `kubectl get nodes -o json` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    pub name: String,
    /// A control-plane (server) node: label `node-role.kubernetes.io/control-plane` or
    /// `node-role.kubernetes.io/master`.
    pub server: bool,
    pub kubelet_version: String,
}

/// `kubectl get nodes -o json`.
pub async fn cluster_nodes(
    k: &KubectlConfig,
    timeout: Duration,
) -> Result<Vec<ClusterNode>, String> {
    let out = kubectl(k, &["get", "nodes", "-o", "json"], timeout).await?;
    nodes_from_json(&out)
}

/// The nodes of a `NodeList`.
pub fn nodes_from_json(json: &str) -> Result<Vec<ClusterNode>, String> {
    let v: Value =
        serde_json::from_str(json).map_err(|e| format!("unreadable node list JSON: {e}"))?;
    let items = v["items"].as_array().ok_or("the node list has no items")?;
    items
        .iter()
        .map(|n| {
            let name = n["metadata"]["name"]
                .as_str()
                .ok_or("a node has no metadata.name")?
                .to_string();
            let labels = &n["metadata"]["labels"];
            let server = [
                "node-role.kubernetes.io/control-plane",
                "node-role.kubernetes.io/master",
            ]
            .iter()
            .any(|l| !labels[*l].is_null());
            let kubelet_version = n["status"]["nodeInfo"]["kubeletVersion"]
                .as_str()
                .ok_or_else(|| format!("node {name} has no status.nodeInfo.kubeletVersion"))?
                .to_string();
            Ok(ClusterNode {
                name,
                server,
                kubelet_version,
            })
        })
        .collect()
}

#[cfg(test)]
mod nodes_tests {
    use super::*;

    #[test]
    fn servers_are_told_by_their_role_labels() {
        let json = r#"{"kind":"NodeList","items":[
          {"metadata":{"name":"s1","labels":{"node-role.kubernetes.io/control-plane":"true"}},"status":{"nodeInfo":{"kubeletVersion":"v1.31.2+k3s1"}}},
          {"metadata":{"name":"s2","labels":{"node-role.kubernetes.io/master":""}},"status":{"nodeInfo":{"kubeletVersion":"v1.31.2+k3s1"}}},
          {"metadata":{"name":"a1","labels":{}},"status":{"nodeInfo":{"kubeletVersion":"v1.30.4+k3s1"}}}]}"#;
        let nodes = nodes_from_json(json).unwrap();
        assert_eq!(
            nodes
                .iter()
                .map(|n| (n.name.as_str(), n.server))
                .collect::<Vec<_>>(),
            vec![("s1", true), ("s2", true), ("a1", false)]
        );
        assert!(nodes_from_json("{}").unwrap_err().contains("no items"));
        assert!(
            nodes_from_json(r#"{"items":[{"metadata":{"name":"x"}}]}"#)
                .unwrap_err()
                .contains("kubeletVersion")
        );
    }
}
