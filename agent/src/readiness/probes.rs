//! Running configured probes: HTTP, command, systemd unit, Kubernetes node and pods.
//!
//! Each probe has a timeout and yields one [`CheckResult`]; a probe never panics and never
//! hangs. Probes only look: they never change the system.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;

use super::config::{CommandProbe, HttpProbe, ProbeConfig, SystemdProbe};
use super::process::{self, RunOptions};
use super::{CheckResult, HealthSample, ReadinessError, kube, probe_timeout};

/// Most body bytes an HTTP probe reads when it looks for `body_contains`.
const MAX_PROBE_BODY: usize = 64 * 1024;

/// The configured probes and the HTTP clients they need (one shared client, plus one per
/// probe with its own `ca_file`).
pub(crate) struct ProbeSet {
    probes: Vec<ProbeConfig>,
    default_timeout_secs: u64,
    client: Option<reqwest::Client>,
    ca_clients: BTreeMap<String, reqwest::Client>,
}

impl ProbeSet {
    pub(crate) fn new(
        probes: &[ProbeConfig],
        default_timeout_secs: u64,
    ) -> Result<ProbeSet, ReadinessError> {
        let mut ca_clients = BTreeMap::new();
        let mut need_client = false;
        for p in probes {
            if let ProbeConfig::Http(h) = p {
                match &h.ca_file {
                    Some(path) => {
                        ca_clients.insert(p.check_name(), client_with_ca(&p.check_name(), path)?);
                    }
                    None => need_client = true,
                }
            }
        }
        let client = if need_client {
            Some(http_client(None)?)
        } else {
            None
        };
        Ok(ProbeSet {
            probes: probes.to_vec(),
            default_timeout_secs,
            client,
            ca_clients,
        })
    }

    /// Runs every configured probe and then `extra`, one after the other, into `sample`.
    pub(crate) async fn run_all(&self, sample: &mut HealthSample, extra: &[ProbeConfig]) {
        for p in self.probes.iter().chain(extra) {
            let result = self.run_one(p).await;
            sample.push(result);
        }
    }

    async fn run_one(&self, probe: &ProbeConfig) -> CheckResult {
        let timeout = probe_timeout(probe, self.default_timeout_secs);
        let name = probe.check_name();
        match probe {
            ProbeConfig::Http(h) => {
                let client = match self.ca_clients.get(&name) {
                    Some(c) => c.clone(),
                    None => match (&self.client, &h.ca_file) {
                        (Some(c), None) => c.clone(),
                        (_, ca) => {
                            let built = match ca {
                                Some(path) => client_with_ca(&name, path),
                                None => http_client(None),
                            };
                            match built {
                                Ok(c) => c,
                                Err(e) => return CheckResult::fail(name, e.to_string()),
                            }
                        }
                    },
                };
                http_probe(&client, &name, h, timeout).await
            }
            ProbeConfig::Command(c) => command_probe(&name, c, timeout).await,
            ProbeConfig::Systemd(s) => systemd_probe(&name, s, timeout).await,
            ProbeConfig::KubeNode(k) => {
                let node = match &k.node {
                    Some(n) => n.clone(),
                    None => match sysinfo::System::host_name() {
                        Some(h) => h,
                        None => {
                            return CheckResult::fail(
                                name,
                                "cannot read this box's host name; set node",
                            );
                        }
                    },
                };
                kube::node_ready(&name, &k.kubectl, &node, timeout).await
            }
            ProbeConfig::KubeSystemPods(k) => {
                kube::pods_ready(&name, &k.kubectl, &k.namespace, timeout).await
            }
        }
    }
}

fn http_client(ca: Option<reqwest::Certificate>) -> Result<reqwest::Client, ReadinessError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(3))
        .pool_max_idle_per_host(1)
        .pool_idle_timeout(Duration::from_secs(30))
        .no_proxy();
    if let Some(ca) = ca {
        b = b.add_root_certificate(ca);
    }
    b.build().map_err(|e| ReadinessError::Client(e.to_string()))
}

fn client_with_ca(probe: &str, path: &std::path::Path) -> Result<reqwest::Client, ReadinessError> {
    let err = |message: String| ReadinessError::CaFile {
        probe: probe.to_string(),
        path: path.to_path_buf(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| err(e.to_string()))?;
    http_client(Some(cert))
}

/// GET `probe.url`; pass when the status matches and the body (first 64 KiB) contains
/// `body_contains`.
pub async fn http_probe(
    client: &reqwest::Client,
    name: &str,
    probe: &HttpProbe,
    timeout: Duration,
) -> CheckResult {
    let attempt = async {
        let resp = client
            .get(&probe.url)
            .send()
            .await
            .map_err(|e| short_reqwest_error(&e))?;
        let status = resp.status().as_u16();
        if status != probe.expect_status {
            return Err(format!("status {status}, expected {}", probe.expect_status));
        }
        if let Some(needle) = &probe.body_contains {
            let mut body = Vec::new();
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| short_reqwest_error(&e))?;
                let room = MAX_PROBE_BODY - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= MAX_PROBE_BODY {
                    break;
                }
            }
            let text = String::from_utf8_lossy(&body);
            if !text.contains(needle.as_str()) {
                return Err(format!("status {status}, body lacks {needle:?}"));
            }
        }
        Ok(format!("status {status}"))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(reason)) => CheckResult::pass(name, reason),
        Ok(Err(reason)) => CheckResult::fail(name, reason),
        Err(_) => CheckResult::fail(name, format!("no answer within {} s", timeout.as_secs())),
    }
}

fn short_reqwest_error(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "connection failed"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "reading the body failed"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        process::truncate_chars(&format!("{kind}: {detail}"), 160)
    }
}

/// Run the command; exit code 0 passes.
pub async fn command_probe(name: &str, probe: &CommandProbe, timeout: Duration) -> CheckResult {
    match process::run(&probe.command, &RunOptions::with_timeout(timeout)).await {
        Ok(out) if out.success() => CheckResult::pass(name, "exit code 0"),
        Ok(out) => {
            let brief = out.brief();
            if brief.is_empty() {
                CheckResult::fail(name, out.status_text())
            } else {
                CheckResult::fail(name, format!("{}: {brief}", out.status_text()))
            }
        }
        Err(e) => CheckResult::fail(name, e.to_string()),
    }
}

/// `systemctl is-active UNIT` prints `active` (exit 0).
pub async fn systemd_probe(name: &str, probe: &SystemdProbe, timeout: Duration) -> CheckResult {
    let cmd = probe
        .systemctl
        .with_args(&["is-active", probe.unit.as_str()]);
    match process::run(&cmd, &RunOptions::with_timeout(timeout)).await {
        Ok(out) => {
            let state = out.stdout.trim().to_string();
            if out.success() && state == "active" {
                CheckResult::pass(name, format!("{} active", probe.unit))
            } else if state.is_empty() {
                CheckResult::fail(name, format!("{}: {}", probe.unit, out.status_text()))
            } else {
                CheckResult::fail(name, format!("{} {state}", probe.unit))
            }
        }
        Err(e) => CheckResult::fail(name, e.to_string()),
    }
}
