//! The `[health]` section of the agent's TOML configuration and its probes
//! (`[[health.probes]]`).
//!
//! Plain data with documented defaults; unknown keys are refused by serde with the key's
//! name. Nothing here runs a check.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::process::CommandLine;

/// `[health]`: built-in checks, configured probes and the verify-period watch.
///
/// ```toml
/// [health]
/// interval_secs = 300
/// min_free_disk_bytes = 268435456
/// disk_margin = 3.0
/// min_mem_available_bytes = 67108864
/// max_load_per_cpu = 4.0
/// # max_cpu_temp_celsius = 85.0
///
/// [health.verify]
/// period_secs = 120
/// interval_secs = 10
/// fail_after = 3
///
/// [[health.probes]]
/// type = "http"
/// name = "pos"
/// url = "http://127.0.0.1:8080/healthz"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Seconds between health heartbeats while idle (the daemon's sampler). Default 300.
    pub interval_secs: u64,
    /// Filesystem reported in heartbeats and checked for free space. Default: none here;
    /// the daemon passes its staging directory ([`super::Health::new`]).
    pub disk_path: Option<PathBuf>,
    /// Free bytes that must always remain on `disk_path`'s filesystem. Default 256 MiB.
    pub min_free_disk_bytes: u64,
    /// Before an install the filesystem needs `artifact length × disk_margin +
    /// min_free_disk_bytes` free (room for the download, the unpacked copy and the previous
    /// version). Default 3.0.
    pub disk_margin: f64,
    /// Least available memory (`MemAvailable`) for the box to count as healthy; 0 disables
    /// the check. Default 64 MiB.
    pub min_mem_available_bytes: u64,
    /// Highest 1-minute load average per CPU; 0 disables the check. Default 4.0.
    pub max_load_per_cpu: f64,
    /// Highest CPU/board temperature (°C, hottest sensor sysinfo reports); absent disables
    /// the check. Default: absent. Boxes without sensors pass with reason "no sensors".
    pub max_cpu_temp_celsius: Option<f32>,
    /// Timeout of a probe that sets none itself, seconds. Default 5.
    pub probe_timeout_secs: u64,
    /// The health watch during an install's verify period.
    pub verify: WatchConfig,
    /// Configured probes, checked in every sample (`[[health.probes]]`). Default: none.
    pub probes: Vec<ProbeConfig>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_secs: 300,
            disk_path: None,
            min_free_disk_bytes: 256 * 1024 * 1024,
            disk_margin: 3.0,
            min_mem_available_bytes: 64 * 1024 * 1024,
            max_load_per_cpu: 4.0,
            max_cpu_temp_celsius: None,
            probe_timeout_secs: 5,
            verify: WatchConfig::default(),
            probes: Vec::new(),
        }
    }
}

impl HealthConfig {
    /// Checks values serde cannot (names, ranges); the error names the key at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval_secs == 0 {
            return Err("health.interval_secs must be at least 1".into());
        }
        if !(self.disk_margin.is_finite() && self.disk_margin >= 1.0) {
            return Err("health.disk_margin must be a number >= 1.0".into());
        }
        if !(self.max_load_per_cpu.is_finite() && self.max_load_per_cpu >= 0.0) {
            return Err("health.max_load_per_cpu must be >= 0 (0 disables)".into());
        }
        self.verify.validate("health.verify")?;
        let mut names = std::collections::BTreeSet::new();
        for (i, p) in self.probes.iter().enumerate() {
            let name = p.name();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(format!(
                    "health.probes[{i}].name {name:?} must be non-empty letters, digits, '-', '_' or '.'"
                ));
            }
            if !names.insert(p.check_name()) {
                return Err(format!(
                    "health.probes[{i}]: a {} probe named {name:?} is configured twice",
                    p.type_name()
                ));
            }
            if let ProbeConfig::Http(h) = p
                && !(h.url.starts_with("http://") || h.url.starts_with("https://"))
            {
                return Err(format!(
                    "health.probes[{i}].url {:?} must start with http:// or https://",
                    h.url
                ));
            }
        }
        Ok(())
    }
}

/// `[health.verify]`: how an install's verify period is watched.
///
/// A sample is taken at the start and then every `interval_secs` until `period_secs` have
/// passed. The install fails as soon as `fail_after` samples in a row are unhealthy, or at
/// the end of the period if the last sample is still unhealthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// Length of the verify period, seconds. Default 120. A release may override it with
    /// the install parameter `verify_period_secs`.
    pub period_secs: u64,
    /// Seconds between samples during the verify period. Default 10.
    pub interval_secs: u64,
    /// Consecutive unhealthy samples that fail the install at once. Default 3.
    pub fail_after: u32,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            period_secs: 120,
            interval_secs: 10,
            fail_after: 3,
        }
    }
}

impl WatchConfig {
    /// `prefix` names the section in errors (e.g. `health.verify`).
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        if self.interval_secs == 0 {
            return Err(format!("{prefix}.interval_secs must be at least 1"));
        }
        if self.fail_after == 0 {
            return Err(format!("{prefix}.fail_after must be at least 1"));
        }
        Ok(())
    }
}

/// One configured probe (`[[health.probes]]`), selected by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProbeConfig {
    /// `type = "http"`: GET a URL, expect a status and optionally a body substring.
    Http(HttpProbe),
    /// `type = "command"`: run a command; exit code 0 passes.
    Command(CommandProbe),
    /// `type = "systemd"`: `systemctl is-active UNIT` must print `active`.
    Systemd(SystemdProbe),
    /// `type = "kube_node"`: the Kubernetes node's `Ready` condition is `True`.
    KubeNode(KubeNodeProbe),
    /// `type = "kube_system_pods"`: every pod in `kube-system` is ready (or completed).
    KubeSystemPods(KubePodsProbe),
}

impl ProbeConfig {
    /// The operator's name for the probe.
    pub fn name(&self) -> &str {
        match self {
            ProbeConfig::Http(p) => &p.name,
            ProbeConfig::Command(p) => &p.name,
            ProbeConfig::Systemd(p) => &p.name,
            ProbeConfig::KubeNode(p) => &p.name,
            ProbeConfig::KubeSystemPods(p) => &p.name,
        }
    }

    /// `http`, `command`, `systemd`, `kube_node` or `kube_system_pods`.
    pub fn type_name(&self) -> &'static str {
        match self {
            ProbeConfig::Http(_) => "http",
            ProbeConfig::Command(_) => "command",
            ProbeConfig::Systemd(_) => "systemd",
            ProbeConfig::KubeNode(_) => "kube_node",
            ProbeConfig::KubeSystemPods(_) => "kube_system_pods",
        }
    }

    /// The name used in samples and summaries: `type:name`, e.g. `http:pos`.
    pub fn check_name(&self) -> String {
        format!("{}:{}", self.type_name(), self.name())
    }

    /// The probe's own timeout, if it sets one.
    pub fn timeout_secs(&self) -> Option<u64> {
        match self {
            ProbeConfig::Http(p) => p.timeout_secs,
            ProbeConfig::Command(p) => p.timeout_secs,
            ProbeConfig::Systemd(p) => p.timeout_secs,
            ProbeConfig::KubeNode(p) => p.timeout_secs,
            ProbeConfig::KubeSystemPods(p) => p.timeout_secs,
        }
    }
}

fn default_status() -> u16 {
    200
}

/// `type = "http"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    /// Name in reports (`http:NAME`). Required.
    pub name: String,
    /// `http://` or `https://` URL to GET. Required. HTTPS uses the system's roots plus
    /// `ca_file`.
    pub url: String,
    /// Expected status code. Default 200.
    #[serde(default = "default_status")]
    pub expect_status: u16,
    /// Text the body must contain (first 64 KiB are read). Default: not checked.
    #[serde(default)]
    pub body_contains: Option<String>,
    /// Extra PEM CA certificate(s) to trust for this URL. Default: none.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Seconds before the probe fails. Default `health.probe_timeout_secs`.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// `type = "command"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandProbe {
    /// Name in reports (`command:NAME`). Required.
    pub name: String,
    /// The command (string: via `/bin/sh -c`; list: program and arguments). Exit code 0
    /// passes; anything else (or the timeout) fails with the last line of output as reason.
    pub command: CommandLine,
    /// Seconds before the command is killed and the probe fails. Default
    /// `health.probe_timeout_secs`.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

fn default_systemctl() -> CommandLine {
    CommandLine::argv(&["systemctl"])
}

/// `type = "systemd"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemdProbe {
    /// Name in reports (`systemd:NAME`). Required.
    pub name: String,
    /// The unit, e.g. `pos.service`. Required.
    pub unit: String,
    /// The systemctl command; `is-active UNIT` is appended. Default `["systemctl"]`.
    #[serde(default = "default_systemctl")]
    pub systemctl: CommandLine,
    /// Seconds before the probe fails. Default `health.probe_timeout_secs`.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// How to reach the cluster: kubectl command and kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubectlConfig {
    /// The kubectl command; arguments such as `get node NAME -o json` are appended.
    /// Default `["kubectl"]` (k3s: `["k3s", "kubectl"]`).
    #[serde(default = "default_kubectl")]
    pub command: CommandLine,
    /// Passed as `KUBECONFIG`. Default: kubectl's own default
    /// (k3s: `/etc/rancher/k3s/k3s.yaml`).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
}

impl Default for KubectlConfig {
    fn default() -> Self {
        KubectlConfig {
            command: default_kubectl(),
            kubeconfig: None,
        }
    }
}

fn default_kubectl() -> CommandLine {
    CommandLine::argv(&["kubectl"])
}

/// `type = "kube_node"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeNodeProbe {
    /// Name in reports (`kube_node:NAME`). Required.
    pub name: String,
    /// The node to check. Default: this box's host name.
    #[serde(default)]
    pub node: Option<String>,
    /// kubectl command and kubeconfig (`kubectl = { command = [...], kubeconfig = "..." }`).
    /// Default `["kubectl"]`, kubectl's default kubeconfig.
    #[serde(default)]
    pub kubectl: KubectlConfig,
    /// Seconds before the probe fails. Default `health.probe_timeout_secs`.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

fn default_namespace() -> String {
    "kube-system".to_string()
}

/// `type = "kube_system_pods"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubePodsProbe {
    /// Name in reports (`kube_system_pods:NAME`). Required.
    pub name: String,
    /// Namespace whose pods must be ready. Default `kube-system`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// kubectl command and kubeconfig. Default `["kubectl"]`, kubectl's default kubeconfig.
    #[serde(default)]
    pub kubectl: KubectlConfig,
    /// Seconds before the probe fails. Default `health.probe_timeout_secs`.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_parse_from_toml_and_unknown_keys_are_named() {
        let cfg: HealthConfig = toml::from_str(
            r#"
            max_cpu_temp_celsius = 80.0
            [verify]
            period_secs = 30
            [[probes]]
            type = "http"
            name = "pos"
            url = "http://127.0.0.1:8080/healthz"
            body_contains = "ok"
            [[probes]]
            type = "command"
            name = "disk-ro"
            command = ["test", "-w", "/var"]
            [[probes]]
            type = "kube_node"
            name = "node"
            kubectl = { command = ["k3s", "kubectl"], kubeconfig = "/etc/rancher/k3s/k3s.yaml" }
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.verify.period_secs, 30);
        assert_eq!(cfg.verify.fail_after, 3);
        assert_eq!(cfg.probes.len(), 3);
        assert_eq!(cfg.probes[0].check_name(), "http:pos");
        assert_eq!(cfg.probes[2].check_name(), "kube_node:node");

        let err = toml::from_str::<HealthConfig>(
            "[[probes]]\ntype = \"http\"\nname = \"a\"\nurl = \"http://x\"\nexpect = 200\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("expect"), "{err}");
        let err = toml::from_str::<HealthConfig>("disk_margine = 2.0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("disk_margine"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let mut cfg = HealthConfig::default();
        cfg.verify.fail_after = 0;
        assert!(
            cfg.validate()
                .unwrap_err()
                .contains("health.verify.fail_after")
        );
        let cfg: HealthConfig =
            toml::from_str("[[probes]]\ntype = \"http\"\nname = \"a\"\nurl = \"ftp://x\"\n")
                .unwrap();
        assert!(cfg.validate().unwrap_err().contains("health.probes[0].url"));
    }
}
