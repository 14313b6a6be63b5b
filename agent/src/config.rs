//! The agent's configuration file (TOML): what it means, its defaults, and its validation.
//!
//! Every key has a default except `coordinator.url`; unknown keys are an error naming the
//! key (serde's `deny_unknown_fields` on every table). Validation checks what can be checked
//! without touching the network. This module must never read anything but the config file
//! itself: paths named here are opened by the parts that use them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::executor::ExecutorConfig;
use crate::readiness::HealthConfig;
use crate::signals::config::StreamSignals;

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/fleetwave-agent/agent.toml";

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub coordinator: CoordinatorConfig,
    #[serde(default)]
    pub agent: AgentConfig,
    /// `[box]`: which box of its site this is, and its role. A one-box site leaves it out.
    #[serde(rename = "box", default, skip_serializing_if = "BoxConfig::is_default")]
    pub site_box: BoxConfig,
    #[serde(default)]
    pub poll: PollConfig,
    #[serde(default)]
    pub install: InstallConfig,
    /// `[download]`: downloading ahead of the window, and the bandwidth limit.
    #[serde(default)]
    pub download: DownloadConfig,
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// `[health]`: heartbeat interval, built-in checks, probes and the verify-period watch
    /// (see the readiness module).
    #[serde(default)]
    pub health: HealthConfig,
    /// `[executor]`: staging and apps directories, restart commands, kubernetes, command
    /// and self-update settings (see the executor module).
    #[serde(default)]
    pub executor: ExecutorConfig,
    /// `[signals.<stream>]`: golden signals scraped from each release stream's application
    /// (see the signals module). None by default.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub signals: BTreeMap<String, StreamSignals>,
    /// `[peers]`: the LAN peer cache (serve verified artifacts to the site's other boxes,
    /// fetch from them first). Off by default.
    #[serde(default)]
    pub peers: PeersConfig,
}

/// `[coordinator]`: how to reach the coordinator and whom to trust.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Base URL, e.g. `https://fleet.example.com:8443`. Required (may be empty only for
    /// air-gapped sites that only import bundles).
    pub url: String,
    /// More coordinators of the same fleet (replicas behind other addresses), tried in
    /// order after `url` when it cannot be reached. The agent stays on the one that
    /// answered until it fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<String>,
    /// PEM file with the fleet CA that signed the coordinator's TLS certificate. The agent
    /// trusts only this CA unless `use_system_roots = true`.
    #[serde(default = "default_ca_file")]
    pub ca_file: PathBuf,
    /// Also trust the operating system's root store (for a coordinator behind a public CA).
    #[serde(default)]
    pub use_system_roots: bool,
    /// Timeout for one request (a long poll adds its `wait` on top).
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
}

impl CoordinatorConfig {
    /// Every coordinator URL, in the order they are tried: `url`, then `also`.
    pub fn urls(&self) -> Vec<String> {
        std::iter::once(&self.url)
            .chain(&self.also)
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect()
    }
}

/// `[agent]`: identity and local state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Directory with `agent.db` and `device.key`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// This box's site id. Empty: taken from the enrollment stored in the state directory.
    #[serde(default)]
    pub site_id: String,
    /// The fleet's root of trust installed out of band (a root envelope, JSON). Only read
    /// at enrollment; afterwards the stored, rotated root is used.
    #[serde(default = "default_root_file")]
    pub root_file: PathBuf,
    /// The site's IANA time zone; maintenance windows are read in it.
    #[serde(default = "default_time_zone")]
    pub site_time_zone: String,
}

/// `[box]`: this machine among the boxes of its site. Each box runs its own agent with its
/// own device key and enrolls under the site's id with its own box id; the coordinator
/// upgrades a site's boxes one at a time, in the order of the plan's `box_order` (which
/// names roles, e.g. servers before agents).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoxConfig {
    /// The box id, unique within the site (`[a-z0-9][a-z0-9._-]{0,62}`). Default `main`.
    #[serde(default = "default_box_id")]
    pub id: String,
    /// The box's role label (`server`, `agent`, or any word of the same form). Default:
    /// none.
    #[serde(default)]
    pub role: String,
}

impl Default for BoxConfig {
    fn default() -> Self {
        BoxConfig {
            id: default_box_id(),
            role: String::new(),
        }
    }
}

impl BoxConfig {
    fn is_default(&self) -> bool {
        *self == BoxConfig::default()
    }

    /// The box and role to name at enrollment: none for a one-box site's default box (so
    /// that it enrolls exactly as before boxes, with any coordinator).
    pub fn named(&self) -> Option<(&str, &str)> {
        (!self.is_default()).then_some((self.id.as_str(), self.role.as_str()))
    }
}

fn default_box_id() -> String {
    "main".into()
}

/// `[poll]`: how often and how patiently to ask the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    /// Seconds between polls when the coordinator suggests nothing.
    #[serde(default = "default_poll_interval")]
    pub interval_secs: u64,
    /// Long-poll: how long the coordinator may hold a poll open (capped at 60).
    #[serde(default = "default_poll_wait")]
    pub wait_secs: u32,
    /// Random spread applied to every interval, as a fraction (0.2 = ±20%).
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    /// First delay after a failed request.
    #[serde(default = "default_backoff_min")]
    pub backoff_min_secs: u64,
    /// Longest delay between attempts while the coordinator is unreachable.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_secs: u64,
}

/// `[install]`: the install policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallConfig {
    /// May an install that already holds a lease finish while the coordinator is
    /// unreachable? (An expired assignment is never acted on either way.)
    #[serde(default = "default_true")]
    pub install_offline: bool,
    /// Longest local deferral `fleetwave-agent defer` accepts.
    #[serde(default = "default_max_defer")]
    pub max_defer_secs: u64,
    /// How many times a rollback is tried before the agent gives up and reports
    /// `rollback_failed` (the box then needs an operator).
    #[serde(default = "default_rollback_attempts")]
    pub rollback_attempts: u32,
    /// Wait after the first failed rollback; it doubles (with jitter) after each further
    /// failure...
    #[serde(default = "default_rollback_retry_min")]
    pub rollback_retry_min_secs: u64,
    /// ...up to this.
    #[serde(default = "default_rollback_retry_max")]
    pub rollback_retry_max_secs: u64,
}

/// `[download]`: how artifacts are fetched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadConfig {
    /// Download and verify a verified assignment's artifacts as soon as it arrives, while
    /// the install waits (window closed, deferred, not yet due), so the window is spent
    /// installing, not downloading. The install itself still waits for its window and a
    /// lease. Not while a readiness check fails (e.g. too little disk).
    #[serde(default = "default_true")]
    pub ahead: bool,
    /// At most this many bytes a second for every download (ahead or in the window);
    /// 0: no limit. For stores whose uplink the till also needs.
    #[serde(default)]
    pub max_bytes_per_sec: u64,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            ahead: default_true(),
            max_bytes_per_sec: 0,
        }
    }
}

/// `[peers]`: the LAN peer cache. With `enabled = true` the agent serves the verified
/// artifacts it holds, by SHA-256 and read-only, on `listen`, and asks the boxes in
/// `addresses` for an artifact before it downloads it from the coordinator or a mirror.
/// What a peer sends is verified exactly like any download (a peer is untrusted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeersConfig {
    /// Serve and use peers. Off by default.
    #[serde(default)]
    pub enabled: bool,
    /// Address and port to listen on for the site's other boxes (plain HTTP on the LAN;
    /// integrity comes from the signed SHA-256, not from the connection).
    #[serde(default = "default_peer_listen")]
    pub listen: String,
    /// The site's other boxes, `host:port` each (their `peers.listen` as this box reaches
    /// it). Asked in this order.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Most peers served at once; a connection over the limit is answered 503 at once.
    #[serde(default = "default_peer_max_connections")]
    pub max_connections: usize,
    /// Seconds a connecting peer has to send its request, and the longest pause in a
    /// transfer either way (connecting to a peer, each read, each write).
    #[serde(default = "default_peer_timeout")]
    pub timeout_secs: u64,
    /// Slowest transfer accepted either way, in bytes a second (after `timeout_secs` of
    /// grace): a peer slower than this is dropped and the next source tried, and a
    /// transfer to a peer that reads slower is ended.
    #[serde(default = "default_peer_min_rate")]
    pub min_bytes_per_sec: u64,
    /// Longest wait for a peer that is itself downloading the artifact before this box
    /// downloads it from the coordinator anyway.
    #[serde(default = "default_peer_wait")]
    pub wait_secs: u64,
}

impl Default for PeersConfig {
    fn default() -> Self {
        PeersConfig {
            enabled: false,
            listen: default_peer_listen(),
            addresses: Vec::new(),
            max_connections: default_peer_max_connections(),
            timeout_secs: default_peer_timeout(),
            min_bytes_per_sec: default_peer_min_rate(),
            wait_secs: default_peer_wait(),
        }
    }
}

/// Most entries in `peers.addresses` (a site's boxes).
pub const MAX_PEERS: usize = 64;

/// `[outbox]`: the local queue of reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Soft limit of queued events. At the limit, health samples are merged into one
    /// summary; phase, refusal, installed and deferral events are always kept.
    #[serde(default = "default_outbox_max")]
    pub max_events: u64,
    /// Events per report request (at most 500).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

fn default_ca_file() -> PathBuf {
    PathBuf::from("/etc/fleetwave-agent/fleet-ca.pem")
}
fn default_request_timeout() -> u64 {
    30
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/fleetwave-agent")
}
fn default_root_file() -> PathBuf {
    PathBuf::from("/etc/fleetwave-agent/root.json")
}
fn default_time_zone() -> String {
    "UTC".into()
}
fn default_poll_interval() -> u64 {
    300
}
fn default_poll_wait() -> u32 {
    55
}
fn default_jitter() -> f64 {
    0.2
}
fn default_backoff_min() -> u64 {
    5
}
fn default_backoff_max() -> u64 {
    900
}
fn default_true() -> bool {
    true
}
fn default_max_defer() -> u64 {
    72 * 3600
}
fn default_rollback_attempts() -> u32 {
    8
}
fn default_rollback_retry_min() -> u64 {
    10
}
fn default_rollback_retry_max() -> u64 {
    600
}
fn default_peer_listen() -> String {
    "0.0.0.0:7390".into()
}
fn default_peer_max_connections() -> usize {
    8
}
fn default_peer_timeout() -> u64 {
    10
}
fn default_peer_min_rate() -> u64 {
    256 * 1024
}
fn default_peer_wait() -> u64 {
    900
}
fn default_outbox_max() -> u64 {
    10_000
}
fn default_batch() -> usize {
    fleetwave_shared::protocol::MAX_REPORT_EVENTS
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            state_dir: default_state_dir(),
            site_id: String::new(),
            root_file: default_root_file(),
            site_time_zone: default_time_zone(),
        }
    }
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            interval_secs: default_poll_interval(),
            wait_secs: default_poll_wait(),
            jitter: default_jitter(),
            backoff_min_secs: default_backoff_min(),
            backoff_max_secs: default_backoff_max(),
        }
    }
}

impl Default for InstallConfig {
    fn default() -> Self {
        InstallConfig {
            install_offline: default_true(),
            max_defer_secs: default_max_defer(),
            rollback_attempts: default_rollback_attempts(),
            rollback_retry_min_secs: default_rollback_retry_min(),
            rollback_retry_max_secs: default_rollback_retry_max(),
        }
    }
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_events: default_outbox_max(),
            batch_size: default_batch(),
        }
    }
}

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("config file {path}: {message}")]
    Section { path: String, message: String },
    #[error("config file {path}: key `{key}` {message}")]
    Invalid {
        path: String,
        key: &'static str,
        message: String,
    },
    #[error("config file {path}: key `{key}` {message}")]
    InvalidSignals {
        path: String,
        key: String,
        message: String,
    },
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |key: &'static str, message: String| ConfigError::Invalid {
            path: origin.to_string(),
            key,
            message,
        };
        let url = self.coordinator.url.trim();
        if !url.is_empty() && !url.starts_with("https://") {
            return Err(bad(
                "coordinator.url",
                format!("must be an https:// URL (the agent only talks TLS), got {url:?}"),
            ));
        }
        for (i, also) in self.coordinator.also.iter().enumerate() {
            if !also.trim().starts_with("https://") {
                return Err(bad(
                    "coordinator.also",
                    format!("also[{i}] must be an https:// URL, got {also:?}"),
                ));
            }
        }
        if url.is_empty() && !self.coordinator.also.is_empty() {
            return Err(bad(
                "coordinator.also",
                "needs coordinator.url (the first coordinator to try)".into(),
            ));
        }
        if let Some((key, message)) = self.executor.kubernetes.problem() {
            return Err(bad(key, message));
        }
        if self.coordinator.request_timeout_secs == 0 {
            return Err(bad(
                "coordinator.request_timeout_secs",
                "must be at least 1".into(),
            ));
        }
        if self.agent.state_dir.as_os_str().is_empty() {
            return Err(bad("agent.state_dir", "must not be empty".into()));
        }
        if !self.agent.site_id.is_empty() && !valid_site_id(&self.agent.site_id) {
            return Err(bad(
                "agent.site_id",
                format!(
                    "{:?} is not a site id ([a-z0-9][a-z0-9._-]{{0,62}})",
                    self.agent.site_id
                ),
            ));
        }
        if !valid_site_id(&self.site_box.id) {
            return Err(bad(
                "box.id",
                format!(
                    "{:?} is not a box id ([a-z0-9][a-z0-9._-]{{0,62}}, unique within the site)",
                    self.site_box.id
                ),
            ));
        }
        if !self.site_box.role.is_empty() && !valid_site_id(&self.site_box.role) {
            return Err(bad(
                "box.role",
                format!(
                    "{:?} is not a role ([a-z0-9][a-z0-9._-]{{0,62}}, e.g. server or agent)",
                    self.site_box.role
                ),
            ));
        }
        fleetwave_shared::window::zone(&self.agent.site_time_zone)
            .map_err(|e| bad("agent.site_time_zone", e.to_string()))?;
        if self.poll.interval_secs == 0 {
            return Err(bad("poll.interval_secs", "must be at least 1".into()));
        }
        if self.poll.wait_secs > fleetwave_shared::protocol::MAX_POLL_WAIT_SECS {
            return Err(bad(
                "poll.wait_secs",
                format!(
                    "is {}, the coordinator holds a poll at most {} seconds",
                    self.poll.wait_secs,
                    fleetwave_shared::protocol::MAX_POLL_WAIT_SECS
                ),
            ));
        }
        if !(0.0..=0.5).contains(&self.poll.jitter) {
            return Err(bad("poll.jitter", "must be between 0.0 and 0.5".into()));
        }
        if self.poll.backoff_min_secs == 0
            || self.poll.backoff_min_secs > self.poll.backoff_max_secs
        {
            return Err(bad(
                "poll.backoff_min_secs",
                "must be at least 1 and not above poll.backoff_max_secs".into(),
            ));
        }
        if self.install.max_defer_secs == 0 {
            return Err(bad("install.max_defer_secs", "must be at least 1".into()));
        }
        if self.install.rollback_attempts == 0 {
            return Err(bad(
                "install.rollback_attempts",
                "must be at least 1".into(),
            ));
        }
        if self.install.rollback_retry_min_secs == 0
            || self.install.rollback_retry_min_secs > self.install.rollback_retry_max_secs
        {
            return Err(bad(
                "install.rollback_retry_min_secs",
                "must be at least 1 and not above install.rollback_retry_max_secs".into(),
            ));
        }
        if let Err(message) = self.health.validate() {
            return Err(ConfigError::Section {
                path: origin.to_string(),
                message,
            });
        }
        if let Err((key, message)) = crate::signals::config::validate(&self.signals) {
            return Err(ConfigError::InvalidSignals {
                path: origin.to_string(),
                key,
                message,
            });
        }
        self.validate_peers(origin)?;
        if self.outbox.max_events < 10 {
            return Err(bad("outbox.max_events", "must be at least 10".into()));
        }
        if self.outbox.batch_size == 0
            || self.outbox.batch_size > fleetwave_shared::protocol::MAX_REPORT_EVENTS
        {
            return Err(bad(
                "outbox.batch_size",
                format!(
                    "must be between 1 and {}",
                    fleetwave_shared::protocol::MAX_REPORT_EVENTS
                ),
            ));
        }
        Ok(())
    }

    fn validate_peers(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |key: &'static str, message: String| ConfigError::Invalid {
            path: origin.to_string(),
            key,
            message,
        };
        let p = &self.peers;
        if p.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad(
                "peers.listen",
                format!(
                    "{:?} is not an address and port (e.g. \"0.0.0.0:7390\")",
                    p.listen
                ),
            ));
        }
        if p.addresses.len() > MAX_PEERS {
            return Err(bad(
                "peers.addresses",
                format!("lists {} boxes, at most {MAX_PEERS}", p.addresses.len()),
            ));
        }
        if let Some(a) = p.addresses.iter().find(|a| !valid_peer_address(a)) {
            return Err(bad(
                "peers.addresses",
                format!("{a:?} is not host:port (e.g. \"10.1.2.3:7390\")"),
            ));
        }
        if p.max_connections == 0 || p.max_connections > 1024 {
            return Err(bad(
                "peers.max_connections",
                "must be between 1 and 1024".into(),
            ));
        }
        if p.timeout_secs == 0 || p.timeout_secs > 300 {
            return Err(bad(
                "peers.timeout_secs",
                "must be between 1 and 300".into(),
            ));
        }
        if p.min_bytes_per_sec == 0 {
            return Err(bad("peers.min_bytes_per_sec", "must be at least 1".into()));
        }
        if p.enabled && p.addresses.is_empty() {
            return Err(bad(
                "peers.addresses",
                "is empty, but peers.enabled = true: list the site's other boxes".into(),
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML (defaults filled in).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the configuration serializes")
    }

    pub fn db_path(&self) -> PathBuf {
        self.agent.state_dir.join("agent.db")
    }

    pub fn device_key_path(&self) -> PathBuf {
        self.agent.state_dir.join("device.key")
    }

    /// Where downloads and imported bundle artifacts are staged (`executor.staging_dir`).
    pub fn staging_dir(&self) -> PathBuf {
        self.executor.staging_dir.clone()
    }

    pub fn time_zone(&self) -> jiff::tz::TimeZone {
        fleetwave_shared::window::zone(&self.agent.site_time_zone)
            .expect("validated when the configuration was loaded")
    }
}

/// `host:port`: a non-empty host without spaces, slashes or `@`, and a port from 1 up
/// (`[v6]:port` for IPv6).
pub fn valid_peer_address(address: &str) -> bool {
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)
}

/// `[a-z0-9][a-z0-9._-]{0,62}`, as the coordinator requires.
pub fn valid_site_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::parse("[coordinator]\nurl = \"https://fleet.test:8443\"\n", "t").unwrap();
        assert_eq!(c.poll.interval_secs, 300);
        assert_eq!(c.poll.wait_secs, 55);
        assert_eq!(c.install.max_defer_secs, 72 * 3600);
        assert_eq!(c.outbox.batch_size, 500);
        assert_eq!(c.agent.site_time_zone, "UTC");
        assert!(!c.coordinator.use_system_roots);
        // The effective config round-trips.
        let again = Config::parse(&c.to_toml(), "again").unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn example_config_is_valid_and_shows_the_defaults() {
        let text = include_str!("../../deploy/examples/agent.toml");
        let example = Config::parse(text, "deploy/examples/agent.toml").unwrap();
        let minimal = Config::parse(
            "[coordinator]\nurl = \"https://fleet.example.com:8443\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(example.coordinator, minimal.coordinator);
        assert_eq!(example.agent, minimal.agent);
        assert_eq!(example.poll, minimal.poll);
        assert_eq!(example.install, minimal.install);
        assert_eq!(example.outbox, minimal.outbox);
        assert_eq!(example.peers, minimal.peers);
        assert_eq!(example.health, minimal.health);
    }

    #[test]
    fn signals_are_read_with_their_defaults() {
        let text = r#"
[coordinator]
url = "https://x"
[signals.shop]
scrape_url = "http://127.0.0.1:9000/metrics"
[[signals.shop.signal]]
name = "error_ratio"
kind = "ratio"
numerator = "http_errors_total"
denominator = "http_requests_total"
[[signals.shop.signal]]
name = "latency_p95"
kind = "quantile"
metric = "http_request_duration_seconds"
quantile = 0.95
labels = { route = "/checkout" }
[[signals.shop.signal]]
name = "queue"
kind = "gauge"
metric = "queue_depth"
aggregate = "avg"
"#;
        let c = Config::parse(text, "agent.toml").unwrap();
        let s = &c.signals["shop"];
        assert_eq!((s.interval_secs, s.timeout_secs), (60, 10));
        assert_eq!((s.max_body_bytes, s.max_series), (1024 * 1024, 10_000));
        assert_eq!(s.signals.len(), 3);
        assert_eq!(s.signals[1].labels["route"], "/checkout");
        assert_eq!(Config::parse(&c.to_toml(), "again").unwrap(), c);
    }

    #[test]
    fn bad_signals_name_the_key() {
        let base = "[coordinator]\nurl = \"https://x\"\n[signals.shop]\n";
        let rate = "[[signals.shop.signal]]\nname = \"rps\"\nkind = \"rate\"\nmetric = \"http_requests_total\"\n";
        let cases = [
            (
                format!("{base}scrape_url = \"http://10.0.0.5:9000/metrics\"\n{rate}"),
                "signals.shop.scrape_url",
            ),
            (
                format!("{base}scrape_url = \"https://127.0.0.1/metrics\"\n{rate}"),
                "signals.shop.scrape_url",
            ),
            (
                format!("{base}scrape_url = \"http://127.0.0.1/m\"\ninterval_secs = 90\n{rate}"),
                "signals.shop.interval_secs",
            ),
            (
                format!("{base}scrape_url = \"http://[::1]/m\"\ntimeout_secs = 60\n{rate}"),
                "signals.shop.timeout_secs",
            ),
            (
                format!("{base}scrape_url = \"http://localhost/m\"\n"),
                "signals.shop.signal",
            ),
            (
                format!("{base}scrape_url = \"http://localhost/m\"\n{rate}{rate}"),
                "signals.shop.signal[1].name",
            ),
            (
                format!(
                    "{base}scrape_url = \"http://localhost/m\"\n[[signals.shop.signal]]\nname = \"p\"\nkind = \"quantile\"\nmetric = \"h\"\nquantile = 1.5\n"
                ),
                "signals.shop.signal[0].quantile",
            ),
        ];
        for (text, key) in cases {
            let err = Config::parse(&text, "agent.toml").unwrap_err().to_string();
            assert!(err.contains(&format!("key `{key}`")), "{key}: {err}");
        }
        let err = Config::parse(&format!("{base}scrape_url = \"http://localhost/m\"\n[[signals.shop.signal]]\nname = \"x\"\nkind = \"rates\"\nmetric = \"m\"\n"), "agent.toml").unwrap_err().to_string();
        assert!(err.contains("rates"), "{err}");
    }

    #[test]
    fn peers_are_off_by_default_and_bad_values_name_the_key() {
        let c = Config::parse("[coordinator]\nurl = \"https://x\"\n", "t").unwrap();
        assert!(!c.peers.enabled);
        assert_eq!(c.peers.listen, "0.0.0.0:7390");
        let on = Config::parse(
            "[coordinator]\nurl = \"https://x\"\n[peers]\nenabled = true\naddresses = [\"10.0.0.2:7390\", \"till-2.store.lan:7390\", \"[fe80::1]:7390\"]\n",
            "t",
        )
        .unwrap();
        assert_eq!(on.peers.addresses.len(), 3);
        assert_eq!(Config::parse(&on.to_toml(), "again").unwrap(), on);
        let base = "[coordinator]\nurl = \"https://x\"\n[peers]\n";
        let cases = [
            ("listen = \"7390\"\n", "peers.listen"),
            ("addresses = [\"10.0.0.2\"]\n", "peers.addresses"),
            (
                "addresses = [\"http://10.0.0.2:7390\"]\n",
                "peers.addresses",
            ),
            ("addresses = [\"10.0.0.2:0\"]\n", "peers.addresses"),
            ("enabled = true\n", "peers.addresses"),
            ("max_connections = 0\n", "peers.max_connections"),
            ("timeout_secs = 0\n", "peers.timeout_secs"),
            ("min_bytes_per_sec = 0\n", "peers.min_bytes_per_sec"),
        ];
        for (text, key) in cases {
            let err = Config::parse(&format!("{base}{text}"), "agent.toml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("key `{key}`")), "{key}: {err}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse(
            "[coordinator]\nurl = \"https://x\"\n[poll]\nintervall_secs = 3\n",
            "agent.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("intervall_secs"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("[coordinator]\nurl = \"http://x\"\n", "coordinator.url"),
            (
                "[coordinator]\nurl = \"https://x\"\n[agent]\nsite_time_zone = \"Mars/Base\"\n",
                "agent.site_time_zone",
            ),
            (
                "[coordinator]\nurl = \"https://x\"\n[poll]\nwait_secs = 600\n",
                "poll.wait_secs",
            ),
            (
                "[coordinator]\nurl = \"https://x\"\n[outbox]\nbatch_size = 501\n",
                "outbox.batch_size",
            ),
            (
                "[coordinator]\nurl = \"https://x\"\n[agent]\nsite_id = \"Bad Site\"\n",
                "agent.site_id",
            ),
            (
                "[coordinator]\nurl = \"https://x\"\n[box]\nid = \"Box 1\"\n",
                "box.id",
            ),
            (
                "[coordinator]\nurl = \"https://x\"\n[box]\nid = \"n1\"\nrole = \"control plane\"\n",
                "box.role",
            ),
        ];
        for (text, key) in cases {
            let err = Config::parse(text, "agent.toml").unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn a_one_box_site_names_no_box_and_a_box_of_several_names_itself_and_its_role() {
        let plain = Config::parse("[coordinator]\nurl = \"https://x\"\n", "agent.toml").unwrap();
        assert_eq!(plain.site_box.id, "main");
        assert_eq!(plain.site_box.named(), None);
        assert!(!plain.to_toml().contains("[box]"), "{}", plain.to_toml());
        let server = Config::parse(
            "[coordinator]\nurl = \"https://x\"\n[box]\nid = \"node-1\"\nrole = \"server\"\n",
            "agent.toml",
        )
        .unwrap();
        assert_eq!(server.site_box.named(), Some(("node-1", "server")));
        let again = Config::parse(&server.to_toml(), "agent.toml").unwrap();
        assert_eq!(again.site_box, server.site_box);
        // A role alone still names the box (main), so the coordinator learns the role.
        let role_only = Config::parse(
            "[coordinator]\nurl = \"https://x\"\n[box]\nrole = \"agent\"\n",
            "agent.toml",
        )
        .unwrap();
        assert_eq!(role_only.site_box.named(), Some(("main", "agent")));
    }
}
