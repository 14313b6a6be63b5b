//! The `kubernetes` executor: upgrade the site's own Kubernetes distribution (k3s first).
//!
//! Steps: prepare = download and verify the new binary, pre-flight (current version from
//! `k3s --version`, skew policy), stage it beside the old one; install = datastore snapshot,
//! replace the binary atomically keeping `<binary>.previous`, restart the service; verify =
//! wait for the API server, node `Ready` and the system pods, then watch health for the
//! verify period; rollback = restore `<binary>.previous`, restart, wait for the cluster.
//!
//! Skew policy: the major version never changes; no minor version is skipped (1.30 → 1.31
//! ok, 1.30 → 1.32 refused); a downgrade only from an explicit rollback assignment, and by
//! at most one minor version. Across the cluster (`cluster_skew_check`): servers first, an
//! agent node never goes past the oldest server, and a server never leaves a node more than
//! three minor versions behind (the kubelet skew Kubernetes supports). Every command and
//! path is configurable so other distributions fit.
//!
//! The node's workloads: before the binary is replaced the node is cordoned (`cordon`,
//! default on) and, when configured, drained (`drain`: `kubectl drain` with a timeout,
//! through the eviction API so PodDisruptionBudgets hold, never forced; a drain that cannot
//! finish fails the install, which rolls back). Once the node is Ready again on the new
//! version it is uncordoned; a rollback uncordons it too. A marker file in the staging
//! directory remembers the cordon across a crash, so recovery (which rolls back or
//! finishes) always uncordons.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetwave_shared::{Artifact, Release};
use serde::{Deserialize, Serialize};

use super::app::{path_str, pick_artifact, remove_staged, run_checked};
use super::download::{self, ArtifactSource};
use super::params::Params;
use super::{ExecError, ExecutorConfig, InstallOutcome, InstalledVersion, Step, binary};
use crate::readiness::process::{self, CommandLine, RunOptions};
use crate::readiness::{CheckResult, Health, HealthSample, KubectlConfig, kube};

/// `[executor.kubernetes]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// The distribution's binary, replaced by the upgrade. Default `/usr/local/bin/k3s`.
    pub binary: PathBuf,
    /// Prints the running version (first `vX.Y.Z` found is used). Default
    /// `<binary> --version`.
    pub version_command: Option<CommandLine>,
    /// Datastore snapshot taken before the binary is replaced. Default
    /// `<binary> etcd-snapshot save` (k3s with embedded etcd; for a single-node k3s on
    /// SQLite, point this at a copy of `/var/lib/rancher/k3s/server/db` or set
    /// `skip_snapshot`).
    pub snapshot_command: Option<CommandLine>,
    /// Do not take a snapshot. Default false.
    pub skip_snapshot: bool,
    /// Restarts the service after the binary changed. Default
    /// `["systemctl", "restart", "k3s"]` (use `k3s-agent` on agent nodes).
    pub restart_command: CommandLine,
    /// kubectl command and kubeconfig for the readiness checks. Default `<binary> kubectl`
    /// with k3s's own kubeconfig.
    pub kubectl: Option<KubectlConfig>,
    /// This node's name in the cluster. Default: the host name.
    pub node_name: Option<String>,
    /// Namespace whose pods must all be ready. Default `kube-system`.
    pub system_namespace: String,
    /// Longest wait after a restart for the API server, node and system pods before the
    /// verify period starts, seconds. Default 600.
    pub ready_timeout_secs: u64,
    /// Timeout of the version, snapshot and restart commands, seconds. Default 600.
    pub command_timeout_secs: u64,
    /// Cordon the node before replacing the binary and uncordon it once it is Ready again,
    /// so nothing new is scheduled on it meanwhile. Default true.
    pub cordon: bool,
    /// Also drain it (`kubectl drain`): its pods are evicted through the eviction API, so
    /// PodDisruptionBudgets hold; a drain that cannot finish within `drain_timeout_secs`
    /// fails the install, which rolls back. Never forced. Default false: on a one-node
    /// cluster the pods have nowhere to go (and keep running through a k3s restart).
    pub drain: bool,
    /// Arguments of `kubectl drain` besides the node and `--timeout`. Default
    /// `["--ignore-daemonsets", "--delete-emptydir-data"]`. `--force`,
    /// `--disable-eviction` and `--timeout` are refused.
    pub drain_args: Vec<String>,
    /// Longest drain, seconds (passed as `--timeout`). Default 300.
    pub drain_timeout_secs: u64,
    /// Check the cluster's version skew before an upgrade (`kubectl get nodes`): servers
    /// first, an agent node never past the oldest server, no node left more than three
    /// minor versions behind a server. Default true.
    pub cluster_skew_check: bool,
}

impl KubernetesConfig {
    /// What is wrong with this configuration: the key and why.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        for a in &self.drain_args {
            let flag = a.split('=').next().unwrap_or_default();
            if matches!(flag, "--force" | "--disable-eviction" | "--timeout") {
                return Some((
                    "executor.kubernetes.drain_args",
                    format!(
                        "{a:?} is not allowed (a drain is never forced, always goes through \
                         the eviction API, and its timeout is drain_timeout_secs)"
                    ),
                ));
            }
        }
        if self.drain && self.drain_timeout_secs == 0 {
            return Some((
                "executor.kubernetes.drain_timeout_secs",
                "must be at least 1".into(),
            ));
        }
        if self.drain && !self.cordon {
            return Some((
                "executor.kubernetes.cordon",
                "a drained node is cordoned: set cordon = true with drain = true".into(),
            ));
        }
        None
    }
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            binary: PathBuf::from("/usr/local/bin/k3s"),
            version_command: None,
            snapshot_command: None,
            skip_snapshot: false,
            restart_command: CommandLine::argv(&["systemctl", "restart", "k3s"]),
            kubectl: None,
            node_name: None,
            system_namespace: "kube-system".into(),
            ready_timeout_secs: 600,
            command_timeout_secs: 600,
            cordon: true,
            drain: false,
            drain_args: vec![
                "--ignore-daemonsets".into(),
                "--delete-emptydir-data".into(),
            ],
            drain_timeout_secs: 300,
            cluster_skew_check: true,
        }
    }
}

/// The cluster-wide skew policy for upgrading node `node` to `target`: servers first; an
/// agent node never past the oldest server; no node more than three minor versions behind
/// the target of a server. Nodes whose version cannot be read are named.
pub fn cluster_skew_check(
    nodes: &[kube::ClusterNode],
    node: &str,
    target: &KubeVersion,
) -> Result<(), String> {
    let me = nodes
        .iter()
        .find(|n| n.name == node)
        .ok_or_else(|| format!("node {node} is not in the cluster's node list"))?;
    let parsed = |n: &kube::ClusterNode| {
        KubeVersion::parse(&n.kubelet_version).ok_or_else(|| {
            format!(
                "node {} reports version {:?}, not a Kubernetes version",
                n.name, n.kubelet_version
            )
        })
    };
    if me.server {
        for n in nodes.iter().filter(|n| n.name != node) {
            let v = parsed(n)?;
            if v.major == target.major && target.minor > v.minor + 3 {
                return Err(format!(
                    "node {} runs {}: a server on {} would be more than three minor versions \
                     ahead of it (upgrade it first)",
                    n.name, n.kubelet_version, target.text
                ));
            }
        }
        return Ok(());
    }
    let mut servers = nodes.iter().filter(|n| n.server).peekable();
    if servers.peek().is_none() {
        return Err("the cluster lists no server (control-plane) node".into());
    }
    for s in servers {
        let v = parsed(s)?;
        if (target.major, target.minor, target.patch) > (v.major, v.minor, v.patch) {
            return Err(format!(
                "server {} runs {}: agent nodes are upgraded after the servers, never past \
                 them (upgrade the servers to {} first)",
                s.name, s.kubelet_version, target.text
            ));
        }
    }
    Ok(())
}

/// A Kubernetes version `major.minor.patch` plus its distribution suffix (`+k3s1`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubeVersion {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    /// Build suffix after `+` (`k3s1`), compared numerically by its trailing digits.
    pub build: u64,
    pub text: String,
}

impl KubeVersion {
    /// The first `vX.Y.Z[+suffix]` (or `X.Y.Z`) token in `s`.
    pub fn find(s: &str) -> Option<KubeVersion> {
        s.split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
            .find_map(KubeVersion::parse)
    }

    /// Same major, minor, patch and build (the text may differ, e.g. a leading `v`).
    pub fn same_release(&self, other: &KubeVersion) -> bool {
        (self.major, self.minor, self.patch, self.build)
            == (other.major, other.minor, other.patch, other.build)
    }

    /// Parses `v1.31.2+k3s1` or `1.31.2`.
    pub fn parse(token: &str) -> Option<KubeVersion> {
        let t = token.trim().trim_start_matches('v');
        let (core, suffix) = match t.split_once('+') {
            Some((c, s)) => (c, s),
            None => (t, ""),
        };
        let core = core.split('-').next()?;
        let mut parts = core.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        let digits: String = suffix
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_digit())
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Some(KubeVersion {
            major,
            minor,
            patch,
            build: digits.parse().unwrap_or(0),
            text: token.trim().to_string(),
        })
    }
}

/// The skew policy: may a box running `current` move to `target`?
pub fn skew_check(
    current: &KubeVersion,
    target: &KubeVersion,
    rollback: bool,
) -> Result<(), String> {
    if target.major != current.major {
        return Err(format!(
            "{} → {}: the major version may not change",
            current.text, target.text
        ));
    }
    if target < current {
        if !rollback {
            return Err(format!(
                "{} → {} is a downgrade; only an explicit rollback assignment may downgrade",
                current.text, target.text
            ));
        }
        if current.minor > target.minor + 1 {
            return Err(format!(
                "{} → {}: a rollback may go back at most one minor version",
                current.text, target.text
            ));
        }
        return Ok(());
    }
    if target.minor > current.minor + 1 {
        return Err(format!(
            "{} → {} skips minor version {}.{}; upgrade one minor version at a time",
            current.text,
            target.text,
            current.major,
            current.minor + 1
        ));
    }
    Ok(())
}

/// The `kubernetes` executor for one release.
#[derive(Debug, Clone)]
pub struct KubernetesExecutor {
    release: Release,
    artifact: Artifact,
    target: KubeVersion,
    rollback: bool,
    config: KubernetesConfig,
    kubectl: KubectlConfig,
    staging_dir: PathBuf,
}

impl KubernetesExecutor {
    /// Install parameters: `artifact` (which artifact is the binary; default the first),
    /// `verify_period_secs`. The release `version` is the target (`v1.31.2+k3s1`).
    pub fn new(
        config: &ExecutorConfig,
        release: &Release,
        rollback: bool,
    ) -> Result<KubernetesExecutor, ExecError> {
        let params = Params::new(&release.install);
        let artifact = pick_artifact(release, &params)?;
        params.u64("verify_period_secs")?;
        let target = KubeVersion::parse(&release.version).ok_or_else(|| ExecError::BadParams {
            key: "version".into(),
            message: format!(
                "{:?} is not a Kubernetes version such as v1.31.2+k3s1",
                release.version
            ),
        })?;
        let k = &config.kubernetes;
        let kubectl = k.kubectl.clone().unwrap_or_else(|| KubectlConfig {
            command: CommandLine::Argv(vec![path_str(&k.binary), "kubectl".into()]),
            kubeconfig: None,
        });
        Ok(KubernetesExecutor {
            release: release.clone(),
            artifact,
            target,
            rollback,
            config: k.clone(),
            kubectl,
            staging_dir: config.staging_dir.clone(),
        })
    }

    pub fn version(&self) -> &str {
        &self.release.version
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.config.command_timeout_secs.max(1))
    }

    fn env(&self, step: Step) -> Vec<(String, String)> {
        let mut env = super::release_env(&self.release, step);
        env.push(("FLEETWAVE_K8S_BINARY".into(), path_str(&self.config.binary)));
        env.push(("FLEETWAVE_K8S_TARGET".into(), self.target.text.clone()));
        env
    }

    /// The running version, from the version command.
    pub async fn current_version(&self) -> Result<KubeVersion, ExecError> {
        self.version_of(&self.config.binary, self.config.version_command.as_ref())
            .await
    }

    async fn version_of(
        &self,
        bin: &Path,
        configured: Option<&CommandLine>,
    ) -> Result<KubeVersion, ExecError> {
        let cmd = configured
            .cloned()
            .unwrap_or_else(|| CommandLine::Argv(vec![path_str(bin), "--version".into()]));
        let mut opts = RunOptions::with_timeout(self.timeout());
        opts.env = self.env(Step::Prepare);
        let out = process::run(&cmd, &opts)
            .await
            .map_err(|e| ExecError::Preflight(format!("cannot read the current version: {e}")))?;
        if !out.success() {
            return Err(ExecError::Preflight(format!(
                "`{}` failed ({}): {}",
                cmd.display(),
                out.status_text(),
                out.brief()
            )));
        }
        KubeVersion::find(&out.stdout).ok_or_else(|| {
            ExecError::Preflight(format!(
                "`{}` printed no version: {}",
                cmd.display(),
                process::truncate_chars(out.stdout.trim(), 120)
            ))
        })
    }

    /// Pre-flight (current version, skew policy), download, verify, stage the new binary.
    pub async fn prepare(&self, source: &ArtifactSource<'_>) -> Result<(), ExecError> {
        let current = self.current_version().await?;
        if binary::file_sha256(&self.config.binary).await.as_deref()
            != Some(self.artifact.sha256.as_str())
        {
            skew_check(&current, &self.target, self.rollback).map_err(ExecError::Preflight)?;
            // A rollback goes back to what the node ran: never refused for the cluster.
            if self.config.cluster_skew_check && !self.rollback {
                let node = self.node()?;
                let nodes = kube::cluster_nodes(&self.kubectl, self.timeout())
                    .await
                    .map_err(|e| {
                        ExecError::Preflight(format!("cannot list the cluster's nodes: {e}"))
                    })?;
                cluster_skew_check(&nodes, &node, &self.target).map_err(ExecError::Preflight)?;
            }
        }
        let staged = download::fetch(source, &self.artifact, &self.staging_dir).await?;
        binary::stage(&self.config.binary, &staged, &self.artifact.sha256).await
    }

    /// Snapshot, replace the binary (keeping `<binary>.previous`), restart the service.
    /// Once the binary is the target only the restart runs again.
    pub async fn install(&self) -> Result<InstallOutcome, ExecError> {
        let on_target = binary::file_sha256(&self.config.binary).await.as_deref()
            == Some(self.artifact.sha256.as_str());
        if !on_target {
            self.cordon_and_drain().await?;
            if !self.config.skip_snapshot {
                let snap = self.config.snapshot_command.clone().unwrap_or_else(|| {
                    CommandLine::Argv(vec![
                        path_str(&self.config.binary),
                        "etcd-snapshot".into(),
                        "save".into(),
                    ])
                });
                run_checked(
                    Step::Install,
                    &snap,
                    self.timeout(),
                    self.env(Step::Install),
                    None,
                )
                .await?;
            }
            binary::replace(&self.config.binary, &self.artifact.sha256, Step::Install).await?;
            crate::test_hooks::pause(crate::test_hooks::KUBERNETES_REPLACED).await;
        }
        run_checked(
            Step::Install,
            &self.config.restart_command,
            self.timeout(),
            self.env(Step::Install),
            None,
        )
        .await?;
        Ok(InstallOutcome::Done)
    }

    /// The marker that says this node was cordoned for this release (kept across a crash).
    fn cordon_marker(&self) -> PathBuf {
        self.staging_dir
            .join(format!("kubernetes-cordoned-{}", self.artifact.sha256))
    }

    /// Cordons the node (marker first, so a crash in between still uncordons) and drains
    /// it when configured.
    async fn cordon_and_drain(&self) -> Result<(), ExecError> {
        if !self.config.cordon {
            return Ok(());
        }
        let node = self.node()?;
        tokio::fs::create_dir_all(&self.staging_dir)
            .await
            .map_err(|e| ExecError::io("creating", &self.staging_dir, e))?;
        super::app::write_synced(&self.cordon_marker(), node.as_bytes()).await?;
        kube::kubectl_action(&self.kubectl, &["cordon", &node], self.timeout())
            .await
            .map_err(|message| ExecError::Failed {
                step: Step::Install,
                message: format!("cordoning node {node}: {message}"),
            })?;
        tracing::info!(%node, "node cordoned");
        crate::test_hooks::pause(crate::test_hooks::KUBERNETES_CORDONED).await;
        if self.config.drain {
            let timeout = format!("--timeout={}s", self.config.drain_timeout_secs);
            let mut args = vec!["drain", node.as_str()];
            args.extend(self.config.drain_args.iter().map(String::as_str));
            args.push(&timeout);
            // kubectl gives up at --timeout; its own process gets a minute more.
            let limit = Duration::from_secs(self.config.drain_timeout_secs + 60);
            kube::kubectl_action(&self.kubectl, &args, limit)
                .await
                .map_err(|message| ExecError::Failed {
                    step: Step::Install,
                    message: format!(
                        "draining node {node} (nothing was changed; it is uncordoned by the \
                         rollback): {message}"
                    ),
                })?;
            tracing::info!(%node, "node drained");
        }
        Ok(())
    }

    /// Uncordons the node if this upgrade cordoned it (the marker says so), then forgets
    /// the marker. Safe to call again.
    async fn uncordon(&self, step: Step) -> Result<(), ExecError> {
        let marker = self.cordon_marker();
        let Ok(node) = tokio::fs::read_to_string(&marker).await else {
            return Ok(());
        };
        kube::kubectl_action(&self.kubectl, &["uncordon", node.trim()], self.timeout())
            .await
            .map_err(|message| ExecError::Failed {
                step,
                message: format!("uncordoning node {}: {message}", node.trim()),
            })?;
        tracing::info!(node = %node.trim(), "node uncordoned");
        tokio::fs::remove_file(&marker)
            .await
            .map_err(|e| ExecError::io("removing", &marker, e))
    }

    /// What an interrupted run of this release left on the node, for the agent's recovery
    /// report: whether the node is still cordoned by it and whether the binary was
    /// already replaced.
    pub async fn recovery_found(&self) -> String {
        let cordoned = tokio::fs::read_to_string(self.cordon_marker())
            .await
            .ok()
            .map(|n| n.trim().to_string());
        let replaced = binary::file_sha256(&self.config.binary).await.as_deref()
            == Some(self.artifact.sha256.as_str());
        let node = match cordoned {
            Some(node) => format!("node {node} left cordoned by this upgrade"),
            None => "no node left cordoned by this upgrade".into(),
        };
        let binary = if replaced {
            format!(
                "{} is the new binary ({}, <binary>.previous kept)",
                self.config.binary.display(),
                self.target.text
            )
        } else {
            format!("{} is the previous binary", self.config.binary.display())
        };
        format!("{node}, {binary}")
    }

    fn node(&self) -> Result<String, ExecError> {
        self.config
            .node_name
            .clone()
            .or_else(sysinfo::System::host_name)
            .ok_or_else(|| ExecError::BadParams {
                key: "executor.kubernetes.node_name".into(),
                message: "cannot read the host name; set node_name".into(),
            })
    }

    /// The cluster checks: API server, this node Ready (running `want` when given), system
    /// pods ready.
    async fn cluster_checks(
        &self,
        health: &Health,
        want: Option<&KubeVersion>,
    ) -> Vec<CheckResult> {
        let t = Duration::from_secs(health.config().probe_timeout_secs.max(1));
        let mut out = vec![kube::api_ready("kube:api", &self.kubectl, t).await];
        out.push(match self.node() {
            // While this upgrade holds the node cordoned, cordoned is expected.
            Ok(node) => {
                match kube::node_status_with(&self.kubectl, &node, t, self.cordon_marker().exists())
                    .await
                {
                    Ok(kubelet) => match (want, KubeVersion::parse(&kubelet)) {
                        (Some(w), Some(k)) if !w.same_release(&k) => CheckResult::fail(
                            "kube:node",
                            format!("node {node} runs {kubelet}, want {}", w.text),
                        ),
                        _ => {
                            CheckResult::pass("kube:node", format!("node {node} Ready ({kubelet})"))
                        }
                    },
                    Err(e) => CheckResult::fail("kube:node", e),
                }
            }
            Err(e) => CheckResult::fail("kube:node", e.to_string()),
        });
        out.push(
            kube::pods_ready("kube:pods", &self.kubectl, &self.config.system_namespace, t).await,
        );
        out
    }

    /// Waits (every `health.verify.interval_secs`, at most `ready_timeout_secs`) until the
    /// API server answers, the node is Ready running `want`, and the system pods are ready.
    async fn wait_ready(&self, health: &Health, want: &KubeVersion) -> Result<(), ExecError> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.config.ready_timeout_secs);
        let every = Duration::from_secs(health.config().verify.interval_secs.max(1));
        loop {
            let mut sample = HealthSample::new();
            for c in self.cluster_checks(health, Some(want)).await {
                sample.push(c);
            }
            if sample.healthy() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let mut w = crate::readiness::WatchState::new(1);
                let failure = w.observe(&sample).unwrap_err();
                return Err(ExecError::Unhealthy(failure));
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Wait for the cluster, then watch the cluster checks and the configured probes for
    /// the verify period.
    pub async fn verify<F>(&self, health: &Health, on_sample: F) -> Result<HealthSample, ExecError>
    where
        F: FnMut(&HealthSample) + Send,
    {
        let params = Params::new(&self.release.install);
        let period = super::verify_period(&params, health)?;
        self.wait_ready(health, &self.target).await?;
        // Ready again on the new version: the node takes pods again while it is watched.
        self.uncordon(Step::Verify).await?;
        crate::readiness::watch(
            &health.config().verify,
            Some(period),
            async || {
                let mut s = health.sample().await;
                for c in self.cluster_checks(health, Some(&self.target)).await {
                    s.push(c);
                }
                s
            },
            on_sample,
        )
        .await
        .map_err(ExecError::Unhealthy)
    }

    /// Keep `<binary>.previous`, remove the staged files.
    pub async fn commit(&self) -> Result<(), ExecError> {
        if binary::file_sha256(&self.config.binary).await.as_deref()
            != Some(self.artifact.sha256.as_str())
        {
            return Err(ExecError::Failed {
                step: Step::Commit,
                message: format!("{} is not the target binary", self.config.binary.display()),
            });
        }
        self.uncordon(Step::Commit).await?;
        binary::clean_staged(&self.config.binary).await;
        remove_staged(&self.staging_dir, &self.artifact).await;
        Ok(())
    }

    fn rollback_marker(&self) -> PathBuf {
        self.staging_dir
            .join(format!("kubernetes-rollback-{}", self.artifact.sha256))
    }

    /// Restore `<binary>.previous` and restart, then wait for the cluster. Does nothing
    /// when the target binary was never put in place.
    pub async fn rollback(&self) -> Result<(), ExecError> {
        let on_target = binary::file_sha256(&self.config.binary).await.as_deref()
            == Some(self.artifact.sha256.as_str());
        let marker = self.rollback_marker();
        let resumed = tokio::fs::try_exists(&marker).await.unwrap_or(false);
        if !on_target && !resumed {
            // The binary was never replaced (e.g. the drain failed): only the cordon to undo.
            self.uncordon(Step::Rollback).await?;
            binary::clean_staged(&self.config.binary).await;
            return Ok(());
        }
        if on_target {
            tokio::fs::create_dir_all(&self.staging_dir)
                .await
                .map_err(|e| ExecError::io("creating", &self.staging_dir, e))?;
            super::app::write_synced(&marker, self.release.id.as_bytes()).await?;
            binary::restore_previous(&self.config.binary, Step::Rollback).await?;
        }
        run_checked(
            Step::Rollback,
            &self.config.restart_command,
            self.timeout(),
            self.env(Step::Rollback),
            None,
        )
        .await?;
        let _ = tokio::fs::remove_file(&marker).await;
        binary::clean_staged(&self.config.binary).await;
        // The scheduler places nothing on a node until it is Ready: uncordoning now is safe.
        self.uncordon(Step::Rollback).await
    }

    /// Like [`Self::rollback`], then waits until the restored version runs and the cluster
    /// is ready (bounded by `ready_timeout_secs`).
    pub async fn rollback_and_wait(&self, health: &Health) -> Result<(), ExecError> {
        self.rollback().await?;
        let previous = self.current_version().await?;
        self.wait_ready(health, &previous).await
    }

    /// The running version and, when readable, the version of `<binary>.previous`.
    pub async fn installed(&self) -> Result<Option<InstalledVersion>, ExecError> {
        if !tokio::fs::try_exists(&self.config.binary)
            .await
            .unwrap_or(false)
            && self.config.version_command.is_none()
        {
            return Ok(None);
        }
        let current = self.current_version().await?;
        let prev_path = binary::previous_path(&self.config.binary);
        let previous = if tokio::fs::try_exists(&prev_path).await.unwrap_or(false) {
            self.version_of(&prev_path, None).await.ok().map(|v| v.text)
        } else {
            None
        };
        Ok(Some(InstalledVersion {
            version: current.text,
            previous,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> KubeVersion {
        KubeVersion::parse(s).unwrap()
    }

    #[test]
    fn versions_are_found_in_k3s_output() {
        let k = KubeVersion::find("k3s version v1.31.2+k3s1 (6da20424)\ngo version go1.22.8\n")
            .unwrap();
        assert_eq!((k.major, k.minor, k.patch, k.build), (1, 31, 2, 1));
        assert!(v("v1.31.2+k3s2") > v("v1.31.2+k3s1"));
        assert!(v("v1.31.10") > v("v1.31.9"));
        assert!(KubeVersion::parse("latest").is_none());
    }

    #[test]
    fn skew_policy() {
        assert!(skew_check(&v("v1.30.4+k3s1"), &v("v1.31.2+k3s1"), false).is_ok());
        assert!(skew_check(&v("v1.30.4+k3s1"), &v("v1.30.5+k3s1"), false).is_ok());
        assert!(skew_check(&v("v1.30.4+k3s1"), &v("v1.30.4+k3s1"), false).is_ok());
        let e = skew_check(&v("v1.30.4+k3s1"), &v("v1.32.0+k3s1"), false).unwrap_err();
        assert!(e.contains("skips minor version 1.31"), "{e}");
        assert!(skew_check(&v("v1.31.2+k3s1"), &v("v1.30.4+k3s1"), false).is_err());
        assert!(skew_check(&v("v1.31.2+k3s1"), &v("v1.30.4+k3s1"), true).is_ok());
        assert!(skew_check(&v("v1.32.2+k3s1"), &v("v1.30.4+k3s1"), true).is_err());
        assert!(skew_check(&v("v1.31.2"), &v("v2.0.0"), false).is_err());
    }
}
