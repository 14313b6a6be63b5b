//! Releases of the demo app for scenarios: the artifact (a tar.gz holding `app.toml` with
//! the version and whether that version is healthy) and the release manifest an operator
//! would write, signed by the real `fleetwave release sign`.
//!
//! This module builds inputs only. It never signs a release itself (the CLI does, with the
//! offline key the scenario picks) and never talks to the coordinator.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{HarnessError, Result};

/// The release stream (release `name`) of the demo app.
pub const DEMO_STREAM: &str = "demo";

/// One version of the demo app.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoRelease {
    /// Release id, e.g. `demo-2.0.0`.
    pub id: String,
    pub version: String,
    pub counter: u64,
    /// Whether this version answers its health check with 200.
    pub healthy: bool,
    /// How long the signed release stays valid, e.g. `1d` (unless `expires` is set).
    pub expires_in: String,
    /// When the release was signed (`issued_at`, RFC 3339); default: when it is signed.
    pub issued_at: Option<String>,
    /// The expiry as a time (RFC 3339); replaces `expires_in`.
    pub expires: Option<String>,
    /// Site labels (`label = value`) on which this otherwise healthy version fails its
    /// health check: every pair must match the site's labels.
    pub unhealthy_on: BTreeMap<String, String>,
    /// Extra `install` parameters (e.g. `verify_period_secs`).
    pub install: BTreeMap<String, serde_json::Value>,
    /// Incompressible filler added to the artifact (`padding.bin`), to make a download
    /// take a while behind a slowed link.
    pub padding: usize,
    /// The app's simulated traffic (`[metrics]` of `app.toml`: `requests_per_second`,
    /// `error_ratio`, `latency_seconds`); unset keys keep the demo app's defaults.
    pub metrics: BTreeMap<String, f64>,
}

impl DemoRelease {
    /// A healthy release `demo-<version>` with counter `counter`.
    pub fn good(version: &str, counter: u64) -> DemoRelease {
        DemoRelease {
            id: format!("{DEMO_STREAM}-{version}"),
            version: version.to_string(),
            counter,
            healthy: true,
            expires_in: "1d".to_string(),
            issued_at: None,
            expires: None,
            unhealthy_on: BTreeMap::new(),
            install: BTreeMap::new(),
            padding: 0,
            metrics: BTreeMap::new(),
        }
    }

    /// A release whose app fails its health check once installed.
    pub fn bad(version: &str, counter: u64) -> DemoRelease {
        DemoRelease {
            healthy: false,
            ..DemoRelease::good(version, counter)
        }
    }

    /// A release whose app serves traffic with `key` (`error_ratio`, `latency_seconds`,
    /// `requests_per_second`) set to `value`: health checks still pass.
    pub fn metric(mut self, key: &str, value: f64) -> DemoRelease {
        self.metrics.insert(key.to_string(), value);
        self
    }

    /// A release that is healthy except on sites labelled `label = value`.
    pub fn unhealthy_on(mut self, label: &str, value: &str) -> DemoRelease {
        self.unhealthy_on
            .insert(label.to_string(), value.to_string());
        self
    }

    /// Signed as issued at `issued_at` (RFC 3339) rather than when it is signed.
    pub fn issued_at(mut self, issued_at: &str) -> DemoRelease {
        self.issued_at = Some(issued_at.to_string());
        self
    }

    /// Expires at `expires` (RFC 3339) rather than `expires_in` after it was issued.
    pub fn expires(mut self, expires: &str) -> DemoRelease {
        self.expires = Some(expires.to_string());
        self
    }

    pub fn install_param(mut self, key: &str, value: serde_json::Value) -> DemoRelease {
        self.install.insert(key.to_string(), value);
        self
    }

    /// The `app.toml` the demo app reads.
    pub fn app_toml(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).expect("string");
        let mut out = format!(
            "version = {}\nhealthy = {}\n",
            q(&self.version),
            self.healthy
        );
        if !self.unhealthy_on.is_empty() {
            out.push_str("\n[unhealthy_on]\n");
            for (label, value) in &self.unhealthy_on {
                let _ = writeln!(out, "{} = {}", q(label), q(value));
            }
        }
        if !self.metrics.is_empty() {
            out.push_str("\n[metrics]\n");
            for (key, value) in &self.metrics {
                let _ = writeln!(out, "{key} = {value:?}");
            }
        }
        out
    }

    /// The artifact's `padding.bin` (`padding` bytes): xorshift, incompressible,
    /// deterministic, no extra dependency.
    pub fn filler(&self) -> Vec<u8> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ self.counter;
        (0..self.padding)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Writes `<dir>/<id>.tar.gz` holding `app.toml`; returns its path.
    pub fn write_artifact(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(format!("{}.tar.gz", self.id));
        let io = |e: std::io::Error| HarnessError::io(format!("writing {}", path.display()), e);
        let file = std::fs::File::create(&path).map_err(io)?;
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let body = self.app_toml();
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, "app.toml", body.as_bytes())
            .map_err(io)?;
        if self.padding > 0 {
            let filler = self.filler();
            let mut header = tar::Header::new_gnu();
            header.set_size(filler.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_cksum();
            tar.append_data(&mut header, "padding.bin", filler.as_slice())
                .map_err(io)?;
        }
        tar.into_inner().map_err(io)?.finish().map_err(io)?;
        Ok(path)
    }

    /// The release manifest for `fleetwave release sign`; the artifact is served by the
    /// coordinator at `/v1/artifacts/<sha256>`.
    pub fn manifest_toml(&self, artifact: &Path) -> String {
        let q = |s: &str| serde_json::to_string(s).expect("string");
        let mut out = String::new();
        let _ = writeln!(out, "id = {}", q(&self.id));
        let _ = writeln!(out, "name = {}", q(DEMO_STREAM));
        let _ = writeln!(out, "version = {}", q(&self.version));
        let _ = writeln!(out, "kind = \"app\"");
        let _ = writeln!(out, "counter = {}", self.counter);
        if let Some(issued_at) = &self.issued_at {
            let _ = writeln!(out, "issued_at = {}", q(issued_at));
        }
        match &self.expires {
            Some(expires) => {
                let _ = writeln!(out, "expires = {}", q(expires));
            }
            None => {
                let _ = writeln!(out, "expires_in = {}", q(&self.expires_in));
            }
        }
        let _ = writeln!(out, "\n[install]\nformat = \"tar.gz\"");
        for (k, v) in &self.install {
            let _ = writeln!(out, "{} = {}", q(k), toml_value(v));
        }
        let _ = writeln!(out, "\n[[artifacts]]");
        let _ = writeln!(out, "name = \"app.tar.gz\"");
        let _ = writeln!(out, "url = \"/v1/artifacts/{{sha256}}\"");
        let _ = writeln!(out, "file = {}", q(&artifact.display().to_string()));
        out
    }
}

/// A `command` release: operator scripts (its install parameters: `prepare`, `install`,
/// `verify`, `commit`, `rollback`, each run by `/bin/sh -c`) around one small artifact, in
/// a stream of its own so it never touches the demo app.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRelease {
    /// Release id, e.g. `tool-1.0.0`.
    pub id: String,
    /// The release stream (release `name`).
    pub name: String,
    pub version: String,
    pub counter: u64,
    /// Install parameters: the scripts and e.g. `verify_period_secs`.
    pub install: BTreeMap<String, serde_json::Value>,
}

impl CommandRelease {
    /// `<name>-<version>` with no scripts yet, a one-second verify period and a rollback
    /// that succeeds (`true`).
    pub fn new(name: &str, version: &str, counter: u64) -> CommandRelease {
        CommandRelease {
            id: format!("{name}-{version}"),
            name: name.to_string(),
            version: version.to_string(),
            counter,
            install: BTreeMap::from([
                ("verify_period_secs".to_string(), serde_json::json!(1)),
                ("rollback".to_string(), serde_json::json!("true")),
            ]),
        }
    }

    /// Sets the script of `step` (`install`, `rollback`...).
    pub fn script(mut self, step: &str, script: &str) -> CommandRelease {
        self.install
            .insert(step.to_string(), serde_json::json!(script));
        self
    }

    /// Writes `<dir>/<id>.txt` (the version: what the scripts get as their artifact).
    pub fn write_artifact(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(format!("{}.txt", self.id));
        std::fs::write(&path, format!("{}\n", self.version))
            .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e))?;
        Ok(path)
    }

    /// The release manifest for `fleetwave release sign`.
    pub fn manifest_toml(&self, artifact: &Path) -> String {
        let q = |s: &str| serde_json::to_string(s).expect("string");
        let mut out = String::new();
        let _ = writeln!(out, "id = {}", q(&self.id));
        let _ = writeln!(out, "name = {}", q(&self.name));
        let _ = writeln!(out, "version = {}", q(&self.version));
        let _ = writeln!(out, "kind = \"command\"");
        let _ = writeln!(out, "counter = {}", self.counter);
        let _ = writeln!(out, "expires_in = \"1d\"");
        let _ = writeln!(out, "\n[install]");
        for (k, v) in &self.install {
            let _ = writeln!(out, "{} = {}", q(k), toml_value(v));
        }
        let _ = writeln!(out, "\n[[artifacts]]");
        let _ = writeln!(out, "name = \"payload.txt\"");
        let _ = writeln!(out, "url = \"/v1/artifacts/{{sha256}}\"");
        let _ = writeln!(out, "file = {}", q(&artifact.display().to_string()));
        out
    }
}

fn toml_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => serde_json::to_string(s).expect("string"),
        other => other.to_string(),
    }
}

/// The total signed length of a published release's artifacts (read from its envelope).
pub fn artifact_bytes(info: &fleetwave_shared::protocol::operator::ReleaseInfo) -> Result<u64> {
    use base64::Engine as _;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(&info.envelope.payload)
        .map_err(|e| HarnessError::Fleet(format!("release {} payload: {e}", info.id)))?;
    let release: fleetwave_shared::Release = serde_json::from_slice(&payload)
        .map_err(|e| HarnessError::Fleet(format!("release {} payload: {e}", info.id)))?;
    Ok(release.artifacts.iter().map(|a| a.length).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn the_artifact_holds_app_toml_with_version_and_health() {
        let dir = tempfile::tempdir().unwrap();
        let release = DemoRelease::bad("2.0.0", 2);
        let path = release.write_artifact(dir.path()).unwrap();
        let gz = flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap());
        let mut archive = tar::Archive::new(gz);
        let mut entries = archive.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("app.toml"));
        let mut text = String::new();
        entry.read_to_string(&mut text).unwrap();
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(value["version"].as_str(), Some("2.0.0"));
        assert_eq!(value["healthy"].as_bool(), Some(false));
        assert!(entries.next().is_none());
    }

    #[test]
    fn a_release_can_fail_on_some_labels_and_carry_its_own_times() {
        let release = DemoRelease::good("2.0.0", 2)
            .unhealthy_on("hardware", "gen2")
            .issued_at("2030-01-01T00:00:00Z")
            .expires("2030-01-02T00:00:00Z");
        let app: toml::Value = toml::from_str(&release.app_toml()).unwrap();
        assert_eq!(app["healthy"].as_bool(), Some(true));
        assert_eq!(app["unhealthy_on"]["hardware"].as_str(), Some("gen2"));
        let manifest: toml::Value =
            toml::from_str(&release.manifest_toml(Path::new("/tmp/x.tar.gz"))).unwrap();
        assert_eq!(manifest["issued_at"].as_str(), Some("2030-01-01T00:00:00Z"));
        assert_eq!(manifest["expires"].as_str(), Some("2030-01-02T00:00:00Z"));
        assert!(manifest.get("expires_in").is_none());
    }

    #[test]
    fn a_command_release_manifest_carries_its_scripts() {
        let release = CommandRelease::new("tool", "1.0.0", 3).script("install", "exit 1");
        let text = release.manifest_toml(Path::new("/tmp/x.txt"));
        let value: toml::Value = toml::from_str(&text).expect(&text);
        assert_eq!(value["kind"].as_str(), Some("command"));
        assert_eq!(value["name"].as_str(), Some("tool"));
        assert_eq!(value["install"]["install"].as_str(), Some("exit 1"));
        assert_eq!(value["install"]["rollback"].as_str(), Some("true"));
    }

    #[test]
    fn the_manifest_is_toml_naming_the_artifact_file() {
        let release =
            DemoRelease::good("1.0.0", 1).install_param("verify_period_secs", serde_json::json!(2));
        let text = release.manifest_toml(Path::new("/tmp/x.tar.gz"));
        let value: toml::Value = toml::from_str(&text).expect(&text);
        assert_eq!(value["id"].as_str(), Some("demo-1.0.0"));
        assert_eq!(value["kind"].as_str(), Some("app"));
        assert_eq!(value["install"]["verify_period_secs"].as_integer(), Some(2));
        assert_eq!(
            value["artifacts"][0]["file"].as_str(),
            Some("/tmp/x.tar.gz")
        );
    }
}
