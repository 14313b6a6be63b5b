//! The coordinator's configuration file (TOML), with every default in one place.
//!
//! Loading validates everything a running server depends on and names the key at fault.
//! It must never read key material or open the database: that is `server`'s job.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fleetwave_shared::window::Freeze;
use serde::{Deserialize, Serialize};

/// Why a configuration file was refused.
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
    #[error("config key {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The whole configuration. Relative paths are resolved against the config file's directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address and port to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Directory for the database and the artifact store.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// SQLite database file; default `<data_dir>/coordinator.db`.
    #[serde(default)]
    pub database: Option<PathBuf>,
    /// Which database holds the coordinator's state: the SQLite file (default) or
    /// PostgreSQL.
    #[serde(default)]
    pub storage: StorageConfig,
    /// The coordinator's online signing key (role `coordinator` in the root), a fleetwave
    /// private key file.
    pub signing_key: PathBuf,
    /// Root envelope chain, oldest first (version 1, 2, ...). Needed on the first start;
    /// afterwards the roots stored in the database are used and these files may add newer
    /// versions.
    #[serde(default)]
    pub roots: Vec<PathBuf>,
    /// File holding a bootstrap admin operator token (one line). Registered (hashed) at
    /// start if it is not known yet. Optional.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub poll: PollConfig,
    #[serde(default)]
    pub sessions: SessionConfig,
    #[serde(default)]
    pub assignments: AssignmentConfig,
    #[serde(default)]
    pub controller: ControllerConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Fleet-wide freeze periods: no lease is granted inside them.
    #[serde(default)]
    pub freezes: Vec<Freeze>,
    /// Where uploaded artifacts live: `<data_dir>/artifacts` (default) or an S3-compatible
    /// object store.
    #[serde(default)]
    pub artifacts: ArtifactsConfig,
}

/// Where artifacts are kept (`[artifacts]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsConfig {
    /// `"local"` (files under `<data_dir>/artifacts`) or `"s3"`.
    #[serde(default)]
    pub store: ArtifactStoreKind,
    /// The object store, when `store = "s3"`.
    #[serde(default)]
    pub s3: Option<S3Config>,
}

/// Which artifact store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactStoreKind {
    #[default]
    Local,
    S3,
}

/// An S3-compatible bucket for artifacts (`[artifacts.s3]`). Credentials come from
/// `access_key_id` + `secret_access_key_file`, or else from the usual `AWS_*` environment
/// variables. The bucket is untrusted like any mirror: agents check every artifact's
/// signed length and SHA-256.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Bucket name (it must exist).
    pub bucket: String,
    /// Region (`us-east-1` for most S3-compatible servers).
    #[serde(default = "default_s3_region")]
    pub region: String,
    /// Endpoint URL the coordinator uses, e.g. `https://s3.internal:8333`; empty: AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Endpoint put into the presigned URLs handed to agents, when agents reach the store
    /// by another name than the coordinator does. Default: `endpoint`.
    #[serde(default)]
    pub public_endpoint: Option<String>,
    /// Key prefix inside the bucket; objects are `<prefix><sha256>`.
    #[serde(default = "default_s3_prefix")]
    pub prefix: String,
    /// Access key id (not a secret). Without it, `AWS_ACCESS_KEY_ID` etc. are read.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// File holding the secret access key (one line).
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) trusted for the endpoint, besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Allow a plain-HTTP endpoint (tests and private networks only). Agents never follow
    /// plain-HTTP presigned URLs: they fetch through the coordinator instead.
    #[serde(default)]
    pub allow_http: bool,
    /// Answer agents' artifact downloads with a redirect to a presigned URL (the bytes then
    /// come from the store, not through the coordinator). Off: the coordinator streams
    /// from the store itself.
    #[serde(default = "default_true")]
    pub redirect: bool,
    /// How long a presigned URL is valid. An agent whose download outlives it asks the
    /// coordinator again (and resumes).
    #[serde(default = "default_presign_secs")]
    pub presign_secs: u64,
}

fn default_s3_region() -> String {
    "us-east-1".into()
}

fn default_s3_prefix() -> String {
    "artifacts/".into()
}

fn default_true() -> bool {
    true
}

fn default_presign_secs() -> u64 {
    900
}

/// Which store backend to use (`[storage]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// One SQLite file (`database`), for one coordinator.
    #[default]
    Sqlite,
    /// A PostgreSQL database (`storage.url`), which several coordinators can share.
    Postgres,
}

/// What a replica that does not lead the wave controller does (`storage.followers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Followers {
    /// Serves agents, operators and the dashboard like the leader, its memory kept
    /// coherent through PostgreSQL notifications (every replica is active).
    #[default]
    Serve,
    /// Answers 503 `standby` to everything but its health, readiness and metrics (one
    /// replica serves at a time).
    StandBy,
}

/// `[storage]`: the database backend and, for PostgreSQL, how to reach it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// PostgreSQL connection URL, `postgres://user@host:5432/fleetwave?sslmode=require`
    /// (or `host=... user=... dbname=...`). Keep the password out of it: use
    /// `password_file`.
    pub url: Option<String>,
    /// File holding the database password (one line); read at start.
    pub password_file: Option<PathBuf>,
    /// Connections to PostgreSQL kept at most.
    pub pool_size: u32,
    /// PEM file of the certificate authorities for the database server's certificate
    /// (default: the system's roots). TLS is used as the URL's `sslmode` says.
    pub ca_file: Option<PathBuf>,
    /// How long a request waits for a database connection before failing.
    pub connect_timeout_secs: u64,
    /// PostgreSQL: how long the replica that runs the wave controller holds its
    /// leadership without renewing it (renewed every third of it). When the leader dies,
    /// another replica takes over within about this long. SQLite is one process: its
    /// coordinator always leads.
    pub leader_lease_secs: u64,
    /// PostgreSQL: whether replicas that do not run the wave controller serve too
    /// (`"serve"`, the default) or stand by (`"stand_by"`).
    pub followers: Followers,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: StorageBackend::Sqlite,
            url: None,
            password_file: None,
            pool_size: 16,
            ca_file: None,
            connect_timeout_secs: 10,
            leader_lease_secs: 10,
            followers: Followers::Serve,
        }
    }
}

/// Most connections one coordinator keeps to PostgreSQL.
pub const MAX_STORAGE_POOL_SIZE: u32 = 1000;

/// Server certificate and key (PEM). Required unless `--insecure-plain-http` is given.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest JSON request body.
    pub max_body_bytes: usize,
    /// Largest artifact upload.
    pub max_artifact_bytes: u64,
    /// Largest request head (request line and headers); larger gets 431.
    pub max_header_bytes: usize,
    /// Time limit for a whole request (except long polls and artifact transfers).
    pub request_timeout_secs: u64,
    /// Time limit for an artifact upload or download.
    pub artifact_timeout_secs: u64,
    /// Longest long-poll `wait` honoured.
    pub long_poll_cap_secs: u32,
    /// Requests handled at once, long polls excepted; beyond that the answer is 503 with
    /// `Retry-After`. Reports and lease requests spend most of their time waiting for a
    /// group commit, where waiting is cheap and a retry is not: set this well above the
    /// number of agents that report in the same few seconds.
    pub max_concurrent_requests: usize,
    /// Long polls parked at once (their own limit: waiting agents never take the slots of
    /// reports, leases or operator actions); beyond that a poll gets 503 with `Retry-After`.
    pub max_long_polls: usize,
    /// Requests without credentials, or to a route that reads a body before checking any
    /// (enrollment, the session handshake, the dashboard's sign-in), handled at once. Their
    /// own, smaller limit: a flood of them gets 503 with `Retry-After` while agents and
    /// operators with credentials keep their `max_concurrent_requests` slots.
    pub max_unauthenticated_requests: usize,
    /// Open client connections at once; beyond that new connections wait in the listen
    /// backlog. The process's open-file limit must be higher (the unit sets 262144).
    pub max_connections: usize,
    /// How long a keep-alive connection may sit idle, and how long a client may take to
    /// send a request head. Longer than the poll interval plus jitter, so a polling agent
    /// keeps its TLS connection instead of a handshake per poll.
    pub keepalive_idle_secs: u64,
    /// Connections kept open between requests. While more connections than this are
    /// open, each ends after its answer (`Connection: close`) and the agent reconnects
    /// at its next poll, resuming its TLS session with a ticket. An idle keep-alive TLS
    /// connection holds 25-27 KiB of the coordinator's memory (docs/benchmarks.md).
    pub max_keepalive_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 2 * 1024 * 1024,
            max_artifact_bytes: 4 * 1024 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            request_timeout_secs: 30,
            artifact_timeout_secs: 3600,
            long_poll_cap_secs: fleetwave_shared::protocol::MAX_POLL_WAIT_SECS,
            max_concurrent_requests: 16384,
            max_long_polls: 100_000,
            max_unauthenticated_requests: 1024,
            max_connections: 200_000,
            keepalive_idle_secs: 90,
            max_keepalive_connections: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollConfig {
    /// Suggested seconds between polls.
    pub interval_secs: u32,
    /// Random spread added to or taken from the interval, in percent (0-100).
    pub jitter_percent: u32,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            interval_secs: 60,
            jitter_percent: 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Lifetime of an agent session token.
    pub ttl_secs: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig { ttl_secs: 3600 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssignmentConfig {
    /// Lifetime of a signed assignment; re-signed when less than half remains.
    pub ttl_secs: u64,
    /// Lifetime of an install lease.
    pub lease_ttl_secs: u64,
}

impl Default for AssignmentConfig {
    fn default() -> Self {
        AssignmentConfig {
            ttl_secs: 7 * 24 * 3600,
            lease_ttl_secs: 1800,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// How often the wave controller evaluates every active rollout (it also runs at once
    /// after reports and operator actions).
    pub tick_millis: u64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig { tick_millis: 1000 }
    }
}

/// `[retention]`: how long agents' reports are kept. A site's current state (health,
/// installed releases, its place in each rollout) lives elsewhere and is never pruned;
/// these rows are its history (the dashboard's site page) and the memory that makes a
/// resent report count once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Health heartbeats are deleted this many hours after they arrived (0: never).
    /// They are most of the rows: a site sends one every 5 minutes, 288 a day.
    pub health_hours: u64,
    /// Every other report (install phases, installed releases, deferrals, refusals) is
    /// deleted this many days after it arrived (0: never).
    pub reports_days: u64,
    /// Golden-signal values are deleted this many days after their minute (0: never).
    /// One site with ten signals adds 14,400 rows a day.
    pub signals_days: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            health_hours: 48,
            reports_days: 90,
            signals_days: 7,
        }
    }
}

/// The longest `limits.request_timeout_secs`: an hour.
pub const MAX_REQUEST_TIMEOUT_SECS: u64 = 3600;
/// The longest `limits.artifact_timeout_secs`: a day (4 GiB at 1 Mbit/s takes 9.5 h).
pub const MAX_ARTIFACT_TIMEOUT_SECS: u64 = 86_400;
/// The longest `poll.interval_secs`: a day.
pub const MAX_POLL_INTERVAL_SECS: u64 = 86_400;
/// The longest `sessions.ttl_secs`: a week.
pub const MAX_SESSION_TTL_SECS: u64 = 7 * 86_400;
/// The longest `assignments.ttl_secs`: a year, as a plan's `assignment_ttl`.
pub const MAX_ASSIGNMENT_TTL_SECS: u64 = 365 * 86_400;
/// The longest `assignments.lease_ttl_secs`: a week.
pub const MAX_LEASE_TTL_SECS: u64 = 7 * 86_400;
/// The longest `controller.tick_millis`: a minute (`/readyz` expects a controller pass
/// at least every ten ticks).
pub const MAX_TICK_MILLIS: u64 = 60_000;

/// The longest freeze: a year.
pub const MAX_FREEZE_DAYS: i64 = 365;

/// What is wrong with a freeze from `start` to `end` (always about its `end`), if anything:
/// the one rule for the configuration file's freezes and those created through the API.
pub fn freeze_problem(start: jiff::Timestamp, end: jiff::Timestamp) -> Option<String> {
    if end <= start {
        return Some("end must be after start".into());
    }
    let days = end.duration_since(start).as_hours() / 24;
    (days > MAX_FREEZE_DAYS).then(|| {
        format!(
            "lasts {days} days, more than the maximum {MAX_FREEZE_DAYS} \
             (a typo in a year stops every install for good)"
        )
    })
}

/// Refuses `value` above `max`, naming the key: every duration in the file is bounded,
/// so that no time plus a configured duration can overflow the calendar.
fn at_most(key: &'static str, value: u64, max: u64) -> Result<(), ConfigError> {
    if value > max {
        return Err(ConfigError::Invalid {
            key,
            message: format!("must be at most {max} (got {value})"),
        });
    }
    Ok(())
}

fn default_listen() -> SocketAddr {
    "0.0.0.0:8443".parse().expect("valid address")
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/fleetwave-coordinator")
}

impl Config {
    /// Reads, parses and validates `path`; relative paths inside become relative to the
    /// file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Parses and validates TOML text (paths are left as written).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<text>".into(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        if let Some(db) = &mut self.database {
            fix(db);
        }
        fix(&mut self.signing_key);
        if let Some(p) = &mut self.storage.password_file {
            fix(p);
        }
        if let Some(p) = &mut self.storage.ca_file {
            fix(p);
        }
        for root in &mut self.roots {
            fix(root);
        }
        if let Some(p) = &mut self.admin_token_file {
            fix(p);
        }
        if let Some(tls) = &mut self.tls {
            fix(&mut tls.cert);
            fix(&mut tls.key);
        }
        if let Some(s3) = &mut self.artifacts.s3 {
            if let Some(p) = &mut s3.secret_access_key_file {
                fix(p);
            }
            if let Some(p) = &mut s3.ca_file {
                fix(p);
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| ConfigError::Invalid {
            key,
            message: message.to_string(),
        };
        let l = &self.limits;
        if l.max_body_bytes < 1024 {
            return Err(invalid("limits.max_body_bytes", "must be at least 1024"));
        }
        if l.max_header_bytes < 8192 {
            return Err(invalid("limits.max_header_bytes", "must be at least 8192"));
        }
        if l.request_timeout_secs == 0 || l.artifact_timeout_secs == 0 {
            return Err(invalid(
                "limits.request_timeout_secs",
                "timeouts must be at least 1 second",
            ));
        }
        at_most(
            "limits.request_timeout_secs",
            l.request_timeout_secs,
            MAX_REQUEST_TIMEOUT_SECS,
        )?;
        at_most(
            "limits.artifact_timeout_secs",
            l.artifact_timeout_secs,
            MAX_ARTIFACT_TIMEOUT_SECS,
        )?;
        if l.long_poll_cap_secs > fleetwave_shared::protocol::MAX_POLL_WAIT_SECS {
            return Err(invalid(
                "limits.long_poll_cap_secs",
                &format!(
                    "must be at most {}",
                    fleetwave_shared::protocol::MAX_POLL_WAIT_SECS
                ),
            ));
        }
        if l.max_concurrent_requests == 0 {
            return Err(invalid(
                "limits.max_concurrent_requests",
                "must be at least 1",
            ));
        }
        if l.max_long_polls == 0 {
            return Err(invalid("limits.max_long_polls", "must be at least 1"));
        }
        if l.max_unauthenticated_requests == 0 {
            return Err(invalid(
                "limits.max_unauthenticated_requests",
                "must be at least 1",
            ));
        }
        if l.max_connections < 2 {
            return Err(invalid("limits.max_connections", "must be at least 2"));
        }
        if !(5..=3600).contains(&l.keepalive_idle_secs) {
            return Err(invalid(
                "limits.keepalive_idle_secs",
                "must be between 5 and 3600",
            ));
        }
        if self.poll.interval_secs == 0 {
            return Err(invalid("poll.interval_secs", "must be at least 1"));
        }
        at_most(
            "poll.interval_secs",
            u64::from(self.poll.interval_secs),
            MAX_POLL_INTERVAL_SECS,
        )?;
        if self.poll.jitter_percent > 100 {
            return Err(invalid("poll.jitter_percent", "must be between 0 and 100"));
        }
        if self.sessions.ttl_secs < 60 {
            return Err(invalid("sessions.ttl_secs", "must be at least 60"));
        }
        at_most(
            "sessions.ttl_secs",
            self.sessions.ttl_secs,
            MAX_SESSION_TTL_SECS,
        )?;
        if self.assignments.ttl_secs < 300 {
            return Err(invalid("assignments.ttl_secs", "must be at least 300"));
        }
        at_most(
            "assignments.ttl_secs",
            self.assignments.ttl_secs,
            MAX_ASSIGNMENT_TTL_SECS,
        )?;
        if self.assignments.lease_ttl_secs < 30 {
            return Err(invalid("assignments.lease_ttl_secs", "must be at least 30"));
        }
        at_most(
            "assignments.lease_ttl_secs",
            self.assignments.lease_ttl_secs,
            MAX_LEASE_TTL_SECS,
        )?;
        if self.controller.tick_millis < 50 {
            return Err(invalid("controller.tick_millis", "must be at least 50"));
        }
        at_most(
            "controller.tick_millis",
            self.controller.tick_millis,
            MAX_TICK_MILLIS,
        )?;
        if self.retention.health_hours > 24 * 36_500 {
            return Err(invalid(
                "retention.health_hours",
                "at most 876000 (100 years); use 0 to keep heartbeats forever",
            ));
        }
        if self.retention.reports_days > 36_500 {
            return Err(invalid(
                "retention.reports_days",
                "at most 36500 (100 years); use 0 to keep reports forever",
            ));
        }
        if self.retention.signals_days > 36_500 {
            return Err(invalid(
                "retention.signals_days",
                "at most 36500 (100 years); use 0 to keep golden signals forever",
            ));
        }
        self.storage.validate()?;
        match (self.artifacts.store, &self.artifacts.s3) {
            (ArtifactStoreKind::S3, None) => {
                return Err(invalid(
                    "artifacts.s3",
                    "store = \"s3\" needs an [artifacts.s3] section with at least `bucket`",
                ));
            }
            (ArtifactStoreKind::S3, Some(s3)) => {
                if s3.bucket.is_empty() {
                    return Err(invalid("artifacts.s3.bucket", "must not be empty"));
                }
                if !(60..=7 * 24 * 3600).contains(&s3.presign_secs) {
                    return Err(invalid(
                        "artifacts.s3.presign_secs",
                        "must be between 60 and 604800 (S3 signs for at most 7 days)",
                    ));
                }
                for (key, url) in [
                    ("artifacts.s3.endpoint", &s3.endpoint),
                    ("artifacts.s3.public_endpoint", &s3.public_endpoint),
                ] {
                    if let Some(u) = url
                        && !(u.starts_with("https://")
                            || (s3.allow_http && u.starts_with("http://")))
                    {
                        return Err(invalid(
                            key,
                            "must be an https:// URL (http:// only with allow_http = true)",
                        ));
                    }
                }
                if s3.access_key_id.is_some() != s3.secret_access_key_file.is_some() {
                    return Err(invalid(
                        "artifacts.s3.access_key_id",
                        "give both access_key_id and secret_access_key_file, or neither \
                         (then the AWS_* environment variables are used)",
                    ));
                }
            }
            (ArtifactStoreKind::Local, _) => {}
        }
        for (i, f) in self.freezes.iter().enumerate() {
            if let Some(problem) = freeze_problem(f.start, f.end) {
                return Err(ConfigError::Invalid {
                    key: "freezes",
                    message: format!("freezes[{i}]: {problem}"),
                });
            }
        }
        Ok(())
    }

    /// The database in effect, in words (for logs and errors).
    pub fn database_name(&self) -> String {
        match self.storage.backend {
            StorageBackend::Sqlite => self.database_path().display().to_string(),
            StorageBackend::Postgres => format!(
                "PostgreSQL {}",
                self.storage
                    .url
                    .as_deref()
                    .map(redact_url)
                    .unwrap_or_default()
            ),
        }
    }

    /// The database file in effect.
    pub fn database_path(&self) -> PathBuf {
        self.database
            .clone()
            .unwrap_or_else(|| self.data_dir.join("coordinator.db"))
    }

    /// Where uploaded artifacts live, by SHA-256.
    pub fn artifact_dir(&self) -> PathBuf {
        self.data_dir.join("artifacts")
    }

    /// The effective configuration as TOML (defaults filled in, paths resolved).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the configuration always serializes")
    }
}

impl StorageConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| ConfigError::Invalid {
            key,
            message: message.to_string(),
        };
        match self.backend {
            StorageBackend::Sqlite => {
                if self.url.is_some() {
                    return Err(invalid(
                        "storage.url",
                        "is only for backend = \"postgres\" (the SQLite file is `database`)",
                    ));
                }
            }
            StorageBackend::Postgres => {
                let Some(url) = &self.url else {
                    return Err(invalid(
                        "storage.url",
                        "is required with backend = \"postgres\", e.g. \"postgres://fleetwave@db.example:5432/fleetwave?sslmode=require\"",
                    ));
                };
                if let Err(e) = url.parse::<postgres::Config>() {
                    return Err(invalid(
                        "storage.url",
                        &format!("is not a PostgreSQL connection URL: {e}"),
                    ));
                }
            }
        }
        if !(1..=MAX_STORAGE_POOL_SIZE).contains(&self.pool_size) {
            return Err(invalid(
                "storage.pool_size",
                &format!("must be between 1 and {MAX_STORAGE_POOL_SIZE}"),
            ));
        }
        if !(1..=300).contains(&self.connect_timeout_secs) {
            return Err(invalid(
                "storage.connect_timeout_secs",
                "must be between 1 and 300",
            ));
        }
        if !(1..=300).contains(&self.leader_lease_secs) {
            return Err(invalid(
                "storage.leader_lease_secs",
                "must be between 1 and 300 (seconds a dead leader's wave controller waits \
                 for another replica to take over)",
            ));
        }
        Ok(())
    }
}

/// A connection URL without its password (for logs).
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}@{host}")
            }
            None => url.to_string(),
        },
        // key=value form: drop a password=... pair.
        None => url
            .split_whitespace()
            .filter(|kv| !kv.starts_with("password="))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_defaults_to_sqlite_and_postgres_needs_a_url() {
        let c = Config::parse("signing_key = \"k\"\n").unwrap();
        assert_eq!(c.storage.backend, StorageBackend::Sqlite);
        let c = Config::parse(
            "signing_key = \"k\"\n[storage]\nbackend = \"postgres\"\nurl = \"postgres://fw@db:5432/fleetwave?sslmode=require\"\npool_size = 8\n",
        )
        .unwrap();
        assert_eq!(c.storage.backend, StorageBackend::Postgres);
        assert_eq!(c.storage.pool_size, 8);
        let refused = |text: &str, key: &str| {
            let err =
                Config::parse(&format!("signing_key = \"k\"\n[storage]\n{text}")).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { key: k, .. } if *k == key),
                "{text}: {err}"
            );
        };
        refused("backend = \"postgres\"\n", "storage.url");
        refused(
            "backend = \"postgres\"\nurl = \"postgres://h/db?sslmode=sometimes\"\n",
            "storage.url",
        );
        refused("url = \"postgres://h/db\"\n", "storage.url");
        refused(
            "backend = \"postgres\"\nurl = \"postgres://h/db\"\npool_size = 0\n",
            "storage.pool_size",
        );
        assert_eq!(c.storage.leader_lease_secs, 10);
        refused(
            "backend = \"postgres\"\nurl = \"postgres://h/db\"\nleader_lease_secs = 0\n",
            "storage.leader_lease_secs",
        );
        let err =
            Config::parse("signing_key = \"k\"\n[storage]\nbackend = \"mysql\"\n").unwrap_err();
        assert!(err.to_string().contains("backend"), "{err}");
        assert_eq!(
            redact_url("postgres://fw:secret@db:5432/x"),
            "postgres://fw@db:5432/x"
        );
        assert_eq!(
            redact_url("host=db password=secret user=fw"),
            "host=db user=fw"
        );
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse("signing_key = \"k\"\n").unwrap();
        assert_eq!(c.listen.port(), 8443);
        assert_eq!(c.limits.long_poll_cap_secs, 60);
        assert_eq!(
            c.database_path(),
            PathBuf::from("/var/lib/fleetwave-coordinator/coordinator.db")
        );
    }

    #[test]
    fn documented_example_parses_with_the_defaults() {
        let text = include_str!("../../deploy/examples/coordinator.toml");
        let c = Config::parse(text).unwrap();
        let d = Config::parse("signing_key = \"k\"\n").unwrap();
        assert_eq!(c.limits.max_body_bytes, d.limits.max_body_bytes);
        assert_eq!(c.limits.max_artifact_bytes, d.limits.max_artifact_bytes);
        assert_eq!(c.limits.request_timeout_secs, d.limits.request_timeout_secs);
        assert_eq!(c.poll.interval_secs, d.poll.interval_secs);
        assert_eq!(c.sessions.ttl_secs, d.sessions.ttl_secs);
        assert_eq!(c.assignments.ttl_secs, d.assignments.ttl_secs);
        assert_eq!(c.assignments.lease_ttl_secs, d.assignments.lease_ttl_secs);
        assert_eq!(c.controller.tick_millis, d.controller.tick_millis);
        assert_eq!(c.limits.max_long_polls, d.limits.max_long_polls);
        assert_eq!(
            c.limits.max_unauthenticated_requests,
            d.limits.max_unauthenticated_requests
        );
        assert_eq!(c.limits.max_connections, d.limits.max_connections);
        assert_eq!(c.limits.keepalive_idle_secs, d.limits.keepalive_idle_secs);
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.retention, d.retention);
    }

    #[test]
    fn the_artifact_store_is_local_by_default_and_s3_settings_are_checked() {
        let c = Config::parse("signing_key = \"k\"\n").unwrap();
        assert_eq!(c.artifacts.store, ArtifactStoreKind::Local);
        let s3 = |extra: &str| {
            Config::parse(&format!(
                "signing_key = \"k\"\n[artifacts]\nstore = \"s3\"\n[artifacts.s3]\nbucket = \"b\"\n{extra}"
            ))
        };
        let c = s3("endpoint = \"https://s3.example:8333\"\n").unwrap();
        let b = c.artifacts.s3.unwrap();
        assert_eq!(
            (
                b.region.as_str(),
                b.prefix.as_str(),
                b.redirect,
                b.presign_secs
            ),
            ("us-east-1", "artifacts/", true, 900)
        );
        for (extra, key) in [
            (
                "endpoint = \"http://s3.example\"\n",
                "artifacts.s3.endpoint",
            ),
            (
                "public_endpoint = \"ftp://s3.example\"\n",
                "artifacts.s3.public_endpoint",
            ),
            ("presign_secs = 10\n", "artifacts.s3.presign_secs"),
            ("presign_secs = 999999999\n", "artifacts.s3.presign_secs"),
            ("access_key_id = \"id\"\n", "artifacts.s3.access_key_id"),
            ("bucket_name = \"x\"\n", "bucket_name"),
        ] {
            let err = s3(extra).unwrap_err().to_string();
            assert!(err.contains(key), "{extra}: {err}");
        }
        s3("endpoint = \"http://127.0.0.1:8333\"\nallow_http = true\n").unwrap();
        let err = Config::parse("signing_key = \"k\"\n[artifacts]\nstore = \"s3\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("artifacts.s3"), "{err}");
        let err = Config::parse("signing_key = \"k\"\n[artifacts]\nstore = \"ftp\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("store"), "{err}");
    }

    #[test]
    fn retention_defaults_and_bounds() {
        let c = Config::parse("signing_key = \"k\"\n").unwrap();
        assert_eq!(
            (c.retention.health_hours, c.retention.reports_days),
            (48, 90)
        );
        let c = Config::parse("signing_key = \"k\"\n[retention]\nhealth_hours = 0\n").unwrap();
        assert_eq!(
            (c.retention.health_hours, c.retention.reports_days),
            (0, 90)
        );
        let err = Config::parse("signing_key = \"k\"\n[retention]\nreports_days = 99999999\n")
            .unwrap_err();
        assert!(err.to_string().contains("retention.reports_days"), "{err}");
        let err = Config::parse("signing_key = \"k\"\n[retention]\nhealth_hours = 99999999\n")
            .unwrap_err();
        assert!(err.to_string().contains("retention.health_hours"), "{err}");
        let err = Config::parse("signing_key = \"k\"\n[retention]\nhealth_days = 2\n").unwrap_err();
        assert!(err.to_string().contains("health_days"), "{err}");
    }

    #[test]
    fn every_duration_is_bounded_and_the_error_names_its_key() {
        let cases = [
            (
                "[limits]\nrequest_timeout_secs",
                "limits.request_timeout_secs",
                3600,
            ),
            (
                "[limits]\nartifact_timeout_secs",
                "limits.artifact_timeout_secs",
                86_400,
            ),
            ("[poll]\ninterval_secs", "poll.interval_secs", 86_400),
            ("[sessions]\nttl_secs", "sessions.ttl_secs", 604_800),
            (
                "[assignments]\nttl_secs",
                "assignments.ttl_secs",
                31_536_000,
            ),
            (
                "[assignments]\nlease_ttl_secs",
                "assignments.lease_ttl_secs",
                604_800,
            ),
            (
                "[controller]\ntick_millis",
                "controller.tick_millis",
                60_000,
            ),
        ];
        for (key, name, max) in cases {
            let ok = format!("signing_key = \"k\"\n{key} = {max}\n");
            Config::parse(&ok).unwrap_or_else(|e| panic!("{name} = {max}: {e}"));
            let text = format!("signing_key = \"k\"\n{key} = {}\n", max + 1);
            let err = Config::parse(&text).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("config key {name}: must be at most {max} (got {})", max + 1)
            );
        }
        let freeze = |end: &str| {
            format!(
                "signing_key = \"k\"\n[[freezes]]\nstart = \"2026-11-23T00:00:00Z\"\nend = \"{end}\"\nreason = \"thanksgiving\"\n"
            )
        };
        Config::parse(&freeze("2027-11-23T00:00:00Z")).unwrap();
        let err = Config::parse(&freeze("2206-11-30T00:00:00Z")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("config key freezes: freezes[0]: lasts 65750 days"),
            "{err}"
        );
        // The value that used to overflow a timestamp in every session handshake.
        let err =
            Config::parse("signing_key = \"k\"\n[sessions]\nttl_secs = 9223372036854775807\n")
                .unwrap_err();
        assert!(err.to_string().contains("sessions.ttl_secs"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("signing_key = \"k\"\nlisten_addr = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }

    #[test]
    fn bad_value_names_the_key() {
        let err = Config::parse("signing_key = \"k\"\n[poll]\njitter_percent = 300\n").unwrap_err();
        assert!(err.to_string().contains("poll.jitter_percent"), "{err}");
    }

    #[test]
    fn keep_alive_must_outlast_a_request_head_but_stay_bounded() {
        for bad in ["0", "4", "3601"] {
            let text = format!("signing_key = \"k\"\n[limits]\nkeepalive_idle_secs = {bad}\n");
            let err = Config::parse(&text).unwrap_err();
            assert!(
                err.to_string().contains("limits.keepalive_idle_secs"),
                "{err}"
            );
        }
        let err = Config::parse("signing_key = \"k\"\n[limits]\nmax_long_polls = 0\n").unwrap_err();
        assert!(err.to_string().contains("limits.max_long_polls"), "{err}");
    }
}
