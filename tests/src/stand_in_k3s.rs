//! STAND-IN k3s nodes for the boxes of a site, not a real k3s: no real k3s (or any
//! Kubernetes) can run here. Each box gets the same strict stand-in scripts the agent's
//! executor tests use (`agent/tests/fixtures/kubernetes/`, read from there, not copied): a
//! stand-in `k3s` binary (prints its version, records snapshots), a stand-in restart
//! command and a stand-in `kubectl` that records every cordon, drain and uncordon in order
//! and refuses a drain without `--timeout`, a forced drain and a drain before the cordon.
//!
//! Layout, under a box's site root: `k3s/bin/{k3s,restart-k3s,kubectl}` and `k3s/state/`
//! (what the node "runs", whether it is cordoned, its `events` log, its name in `node`). The nodes of one site
//! form one cluster: each node's `state/cluster` lists every node, its role and its state
//! directory, so `kubectl get nodes` answers with the versions the nodes run now and the
//! executor's cluster skew check (servers first) is exercised for real.
//!
//! A [`K3sRelease`]'s artifact is a stand-in `k3s` binary too; it finds its node's state
//! directory next to itself (`<bin>/../state`), so one signed artifact serves every box.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::bins;
use crate::error::{HarnessError, Result};

/// The release stream (release `name`) of the stand-in k3s.
pub const K3S_STREAM: &str = "k3s";

/// How a stand-in `k3s` binary of a release finds its node's state directory: beside the
/// directory it lives in (it is `<site root>/k3s/bin/k3s`, or `k3s.previous` there).
const STATE_OF_BINARY: &str = "$(dirname \"$0\")/../state";

/// One of the agent tests' stand-in scripts, `agent/tests/fixtures/kubernetes/<name>.in`,
/// with each `__KEY__` replaced.
pub fn render_fixture(name: &str, vars: &[(&str, &str)]) -> Result<String> {
    let path = bins::workspace_root()
        .join("agent/tests/fixtures/kubernetes")
        .join(format!("{name}.in"));
    let mut text = std::fs::read_to_string(&path)
        .map_err(|e| HarnessError::io(format!("reading {}", path.display()), e))?;
    for (k, v) in vars {
        text = text.replace(&format!("__{k}__"), v);
    }
    if let Some(at) = text.find("__") {
        let rest = &text[at..];
        if rest[2..].starts_with(|c: char| c.is_ascii_uppercase()) {
            return Err(HarnessError::Fleet(format!(
                "{}: placeholder left unrendered near {:?}",
                path.display(),
                &rest[..rest.len().min(20)]
            )));
        }
    }
    Ok(text)
}

fn write_script(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)))
        .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e))
}

/// The stand-in `k3s` binary of `version` whose node comes up `health` (`ready`, `broken`,
/// or a shell expression that prints one of them), finding its state directory beside
/// itself.
pub fn stand_in_binary(version: &str, health: &str) -> Result<String> {
    render_fixture(
        "k3s",
        &[
            ("VERSION", version),
            ("HEALTH", health),
            ("STATE", STATE_OF_BINARY),
        ],
    )
}

/// One stand-in node: a box's `k3s/` directory.
#[derive(Debug, Clone)]
pub struct StandInNode {
    /// The node's name in the cluster (the box id).
    pub name: String,
    /// `server` (control plane) or `agent`.
    pub role: String,
    pub bin: PathBuf,
    pub state: PathBuf,
}

impl StandInNode {
    /// The layout under `site_root` (nothing is written).
    pub fn at(site_root: &Path, name: &str, role: &str) -> StandInNode {
        let dir = site_root.join("k3s");
        StandInNode {
            name: name.to_string(),
            role: role.to_string(),
            bin: dir.join("bin"),
            state: dir.join("state"),
        }
    }

    /// Writes the node's stand-in scripts with `version` as its k3s, "starts" it (the
    /// stand-in restart) and forgets that start, so its `events` log begins empty.
    pub fn install(&self, version: &str) -> Result<()> {
        for dir in [&self.bin, &self.state] {
            std::fs::create_dir_all(dir)
                .map_err(|e| HarnessError::io(format!("creating {}", dir.display()), e))?;
        }
        let k3s = self.bin.join("k3s");
        let st = self.state.display().to_string();
        write_script(&k3s, &stand_in_binary(version, "ready")?)?;
        write_script(
            &self.bin.join("restart-k3s"),
            &render_fixture(
                "restart",
                &[("BINARY", &k3s.display().to_string()), ("STATE", &st)],
            )?,
        )?;
        write_script(
            &self.bin.join("kubectl"),
            &render_fixture("kubectl", &[("STATE", &st)])?,
        )?;
        let name = self.state.join("node");
        std::fs::write(&name, &self.name)
            .map_err(|e| HarnessError::io(format!("writing {}", name.display()), e))?;
        let out = std::process::Command::new(self.bin.join("restart-k3s"))
            .output()
            .map_err(|e| HarnessError::io("running the stand-in restart", e))?;
        if !out.status.success() {
            return Err(HarnessError::Fleet(format!(
                "stand-in restart of node {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        self.forget_events();
        Ok(())
    }

    /// Empties the node's `events` log (e.g. after a baseline install).
    pub fn forget_events(&self) {
        for f in ["restarts", "events"] {
            let _ = std::fs::remove_file(self.state.join(f));
        }
    }

    /// Makes this node one of the cluster `nodes` (their names, roles and state dirs).
    pub fn join(&self, nodes: &[StandInNode]) -> Result<()> {
        let mut text = String::new();
        for n in nodes {
            let _ = writeln!(text, "{} {} {}", n.name, n.role, n.state.display());
        }
        let path = self.state.join("cluster");
        std::fs::write(&path, text)
            .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e))
    }

    /// What the stand-ins recorded on this node, in order (cordon, drain, snapshot,
    /// restart, uncordon).
    pub fn events(&self) -> Vec<String> {
        std::fs::read_to_string(self.state.join("events"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Whether the node is cordoned now.
    pub fn cordoned(&self) -> bool {
        self.state.join("cordoned").exists()
    }

    /// The version the node runs (what the stand-in restart last started).
    pub fn running(&self) -> String {
        std::fs::read_to_string(self.state.join("running"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

/// The agent configuration (`[executor.kubernetes]`) of a box whose node is a
/// [`StandInNode`] under its site root, for [`crate::FleetOptions::agent_extra`]
/// (`{site_root}` and `{box_id}` are filled in per box): cordon and drain (with a
/// timeout), and the cluster skew check on.
pub fn agent_config() -> String {
    "
[executor.kubernetes]
# STAND-IN k3s scripts (tests/src/stand_in_k3s.rs), not a real k3s.
binary = \"{site_root}/k3s/bin/k3s\"
restart_command = [\"{site_root}/k3s/bin/restart-k3s\"]
kubectl = { command = [\"{site_root}/k3s/bin/kubectl\"] }
node_name = \"{box_id}\"
cordon = true
drain = true
drain_timeout_secs = 60
ready_timeout_secs = 10
command_timeout_secs = 60
cluster_skew_check = true
"
    .to_string()
}

/// A release of the stand-in k3s: `kind = "kubernetes"`, its artifact a stand-in `k3s`
/// binary of `version`.
#[derive(Debug, Clone, PartialEq)]
pub struct K3sRelease {
    /// `k3s-<version>`.
    pub id: String,
    /// A Kubernetes version, e.g. `v1.31.2+k3s1`.
    pub version: String,
    pub counter: u64,
    /// `ready`, `broken` for a version whose node never becomes Ready, or a shell
    /// expression printing one of them ([`K3sRelease::broken_on`]).
    pub health: String,
    pub install: BTreeMap<String, serde_json::Value>,
}

impl K3sRelease {
    /// A release whose node comes up Ready, verified for one second.
    pub fn ready(version: &str, counter: u64) -> K3sRelease {
        K3sRelease {
            id: format!("{K3S_STREAM}-{version}"),
            version: version.to_string(),
            counter,
            health: "ready".to_string(),
            install: BTreeMap::from([("verify_period_secs".to_string(), serde_json::json!(1))]),
        }
    }

    /// The same release, except that its node never becomes Ready on the node named
    /// `node` (the stand-in binary reads its node's name from `<state>/node`).
    pub fn broken_on(mut self, node: &str) -> K3sRelease {
        self.health = format!(
            "$(if [ \"$(cat \"{STATE_OF_BINARY}/node\")\" = {node} ]; then echo broken; else echo ready; fi)"
        );
        self
    }

    /// Writes `<dir>/k3s-<version>` (the stand-in binary).
    pub fn write_artifact(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(&self.id);
        write_script(&path, &stand_in_binary(&self.version, &self.health)?)?;
        Ok(path)
    }

    /// The release manifest for `fleetwave release sign`.
    pub fn manifest_toml(&self, artifact: &Path) -> String {
        let q = |s: &str| serde_json::to_string(s).expect("string");
        let mut out = String::new();
        let _ = writeln!(out, "id = {}", q(&self.id));
        let _ = writeln!(out, "name = {}", q(K3S_STREAM));
        let _ = writeln!(out, "version = {}", q(&self.version));
        let _ = writeln!(out, "kind = \"kubernetes\"");
        let _ = writeln!(out, "counter = {}", self.counter);
        let _ = writeln!(out, "expires_in = \"1d\"");
        let _ = writeln!(out, "\n[install]");
        for (k, v) in &self.install {
            let _ = writeln!(out, "{} = {v}", q(k));
        }
        let _ = writeln!(out, "\n[[artifacts]]");
        let _ = writeln!(out, "name = \"k3s\"");
        let _ = writeln!(out, "url = \"/v1/artifacts/{{sha256}}\"");
        let _ = writeln!(out, "file = {}", q(&artifact.display().to_string()));
        out
    }
}
