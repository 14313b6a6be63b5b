//! Readiness and health: is this box fit to install now, and is it healthy after an install?
//!
//! - Built-in checks read the system through sysinfo, refreshing only what each check
//!   needs: free disk on the filesystem holding a path (against the artifact's size times a
//!   margin), available memory, load average per CPU, and optionally the hottest
//!   temperature sensor.
//! - Configured probes ([`config::ProbeConfig`]): HTTP, command, systemd unit, Kubernetes
//!   node Ready and system pods ready (through kubectl, see [`kube`]).
//! - A [`HealthSample`] holds every check's name, pass/fail and a short reason, and
//!   compacts to the protocol's [`HealthSummary`].
//! - [`watch`] samples through an install's verify period and decides pass or fail.
//!
//! Everything is async with a timeout; nothing here loops by itself or wakes up on its own
//! (the daemon decides when to sample). This module never changes the system.

pub mod config;
pub mod kube;
pub mod probes;
pub mod process;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use fleetwave_shared::protocol::HealthSummary;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use config::{HealthConfig, KubectlConfig, ProbeConfig, WatchConfig};
pub use process::CommandLine;
pub use watch::{WatchFailure, WatchState, watch};

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// `disk`, `memory`, `load`, `temperature`, or `type:name` for a probe (`http:pos`).
    pub name: String,
    pub passed: bool,
    /// Short, human: `status 500`, `1.2 GiB free, need 3.0 GiB`, `exit code 1: not ready`.
    pub reason: String,
}

impl CheckResult {
    pub fn pass(name: impl Into<String>, reason: impl Into<String>) -> CheckResult {
        CheckResult {
            name: name.into(),
            passed: true,
            reason: reason.into(),
        }
    }

    pub fn fail(name: impl Into<String>, reason: impl Into<String>) -> CheckResult {
        CheckResult {
            name: name.into(),
            passed: false,
            reason: reason.into(),
        }
    }
}

/// One health sample: every check that ran, plus the raw figures the summary carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthSample {
    pub at: Timestamp,
    pub checks: Vec<CheckResult>,
    pub disk_free_bytes: Option<u64>,
    pub mem_available_bytes: Option<u64>,
    pub load1: Option<f64>,
}

impl HealthSample {
    /// An empty sample taken now, by the system clock (every check added with
    /// [`Self::push`]).
    pub fn new() -> HealthSample {
        HealthSample::at(Timestamp::now())
    }

    /// An empty sample taken at `at`.
    pub fn at(at: Timestamp) -> HealthSample {
        HealthSample {
            at,
            checks: Vec::new(),
            disk_free_bytes: None,
            mem_available_bytes: None,
            load1: None,
        }
    }

    pub fn push(&mut self, check: CheckResult) {
        self.checks.push(check);
    }

    /// Every check passed (an empty sample is healthy).
    pub fn healthy(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The failing checks.
    pub fn failing(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| !c.passed)
    }

    /// `name: reason` of every failing check, joined with `; ` (for phase details).
    pub fn failing_text(&self) -> String {
        self.failing()
            .map(|c| format!("{}: {}", c.name, c.reason))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The compact form reported to the coordinator (one sample).
    pub fn summary(&self) -> HealthSummary {
        let failed = self.failing().count() as u32;
        HealthSummary {
            passed: self.checks.len() as u32 - failed,
            failed,
            failing: self
                .failing()
                .take(16)
                .map(|c| process::truncate_chars(&format!("{}: {}", c.name, c.reason), 200))
                .collect(),
            disk_free_bytes: self.disk_free_bytes,
            mem_available_bytes: self.mem_available_bytes,
            load1: self.load1,
            samples: 1,
        }
    }
}

impl Default for HealthSample {
    fn default() -> Self {
        HealthSample::new()
    }
}

/// Disk space an install needs before it may start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskNeed {
    /// A path on the filesystem that will hold the artifact and its unpacked copy (the
    /// staging or apps directory; need not exist yet, its nearest existing parent counts).
    pub path: PathBuf,
    /// Total signed length of the release's artifacts.
    pub artifact_bytes: u64,
}

/// Errors building a [`Health`] from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum ReadinessError {
    #[error("invalid [health] configuration: {0}")]
    Config(String),
    #[error("health probe {probe}: cannot read ca_file {path}: {message}")]
    CaFile {
        probe: String,
        path: PathBuf,
        message: String,
    },
    #[error("cannot build the HTTP client for health probes: {0}")]
    Client(String),
}

/// The health checker: configuration, HTTP clients for the probes and the little sysinfo
/// state the built-in checks need. Cheap to share behind an `Arc`.
pub struct Health {
    config: HealthConfig,
    disk_path: PathBuf,
    probes: probes::ProbeSet,
    system: Mutex<sysinfo::System>,
    /// What samples are stamped with.
    clock: crate::clock::Clock,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("config", &self.config)
            .field("disk_path", &self.disk_path)
            .finish_non_exhaustive()
    }
}

impl Health {
    /// Validates `config` and prepares the probes. `default_disk_path` is used when
    /// `health.disk_path` is not set (the daemon passes its staging directory).
    pub fn new(config: HealthConfig, default_disk_path: &Path) -> Result<Health, ReadinessError> {
        config.validate().map_err(ReadinessError::Config)?;
        let probes = probes::ProbeSet::new(&config.probes, config.probe_timeout_secs)?;
        let disk_path = config
            .disk_path
            .clone()
            .unwrap_or_else(|| default_disk_path.to_path_buf());
        Ok(Health {
            config,
            disk_path,
            probes,
            system: Mutex::new(sysinfo::System::new()),
            clock: crate::clock::Clock::system(),
        })
    }

    /// The same checker, stamping its samples with the time of `clock`.
    pub fn with_clock(self, clock: crate::clock::Clock) -> Health {
        Health { clock, ..self }
    }

    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// One health sample: memory, load, temperature (if configured), free disk on the
    /// configured filesystem (against `min_free_disk_bytes`) and every configured probe.
    pub async fn sample(&self) -> HealthSample {
        self.sample_with(&[]).await
    }

    /// Like [`Self::sample`], plus `extra` probes (an executor's own checks, e.g. the
    /// release's `health_url` or the Kubernetes checks during verify).
    pub async fn sample_with(&self, extra: &[ProbeConfig]) -> HealthSample {
        let mut sample = HealthSample::at(self.clock.now());
        self.builtin_checks(&mut sample, None).await;
        self.probes.run_all(&mut sample, extra).await;
        sample
    }

    /// Readiness before asking for a lease: a full sample plus free disk for the artifact
    /// (`artifact_bytes × disk_margin + min_free_disk_bytes` on `need.path`'s filesystem).
    pub async fn readiness(&self, need: &DiskNeed) -> HealthSample {
        let mut sample = HealthSample::at(self.clock.now());
        self.builtin_checks(&mut sample, Some(need)).await;
        self.probes.run_all(&mut sample, &[]).await;
        sample
    }

    /// Bytes an install of `artifact_bytes` needs free.
    pub fn disk_required(&self, artifact_bytes: u64) -> u64 {
        let scaled = (artifact_bytes as f64 * self.config.disk_margin).ceil();
        let scaled = if scaled >= u64::MAX as f64 {
            u64::MAX
        } else {
            scaled as u64
        };
        scaled.saturating_add(self.config.min_free_disk_bytes)
    }

    async fn builtin_checks(&self, sample: &mut HealthSample, need: Option<&DiskNeed>) {
        // Disk: statvfs through sysinfo's disk list, off the async threads.
        let (path, required) = match need {
            Some(n) => (n.path.clone(), self.disk_required(n.artifact_bytes)),
            None => (self.disk_path.clone(), self.config.min_free_disk_bytes),
        };
        let free = tokio::task::spawn_blocking(move || free_space(&path))
            .await
            .ok()
            .flatten();
        sample.push(disk_check(free, required, need.map(|n| &n.path)));
        sample.disk_free_bytes = free;

        // Memory and load: refresh RAM figures only.
        let mem = {
            let mut sys = self.system.lock().unwrap_or_else(|e| e.into_inner());
            sys.refresh_memory_specifics(sysinfo::MemoryRefreshKind::nothing().with_ram());
            sys.available_memory()
        };
        sample.mem_available_bytes = Some(mem);
        if self.config.min_mem_available_bytes > 0 {
            sample.push(memory_check(mem, self.config.min_mem_available_bytes));
        }
        let load1 = sysinfo::System::load_average().one;
        sample.load1 = Some(load1);
        if self.config.max_load_per_cpu > 0.0 {
            let cpus = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            sample.push(load_check(load1, cpus, self.config.max_load_per_cpu));
        }
        if let Some(max) = self.config.max_cpu_temp_celsius {
            let hottest = tokio::task::spawn_blocking(hottest_sensor)
                .await
                .ok()
                .flatten();
            sample.push(temperature_check(hottest, max));
        }
    }
}

/// Available bytes on the filesystem holding `path` (its nearest existing ancestor), from
/// the mount with the longest matching mount point.
pub fn free_space(path: &Path) -> Option<u64> {
    let mut p = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    while !p.exists() {
        if !p.pop() {
            return None;
        }
    }
    let p = p.canonicalize().ok()?;
    let disks = sysinfo::Disks::new_with_refreshed_list_specifics(
        sysinfo::DiskRefreshKind::nothing().with_storage(),
    );
    disks
        .list()
        .iter()
        .filter(|d| p.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| d.available_space())
}

fn hottest_sensor() -> Option<f32> {
    let components = sysinfo::Components::new_with_refreshed_list();
    components
        .list()
        .iter()
        .filter_map(|c| c.temperature())
        .filter(|t| t.is_finite())
        .reduce(f32::max)
}

/// Human size: `512 B`, `3.4 MiB`, `1.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The disk check from its figures (pure).
pub fn disk_check(free: Option<u64>, required: u64, for_path: Option<&PathBuf>) -> CheckResult {
    let what = match for_path {
        Some(p) => format!(" for the artifact under {}", p.display()),
        None => String::new(),
    };
    match free {
        None => CheckResult::fail("disk", "cannot read free space of the filesystem"),
        Some(f) if f >= required => CheckResult::pass(
            "disk",
            format!(
                "{} free, need {}{what}",
                human_bytes(f),
                human_bytes(required)
            ),
        ),
        Some(f) => CheckResult::fail(
            "disk",
            format!(
                "{} free, need {}{what}",
                human_bytes(f),
                human_bytes(required)
            ),
        ),
    }
}

/// The memory check from its figures (pure).
pub fn memory_check(available: u64, min: u64) -> CheckResult {
    let reason = format!(
        "{} available, need {}",
        human_bytes(available),
        human_bytes(min)
    );
    if available >= min {
        CheckResult::pass("memory", reason)
    } else {
        CheckResult::fail("memory", reason)
    }
}

/// The load check from its figures (pure).
pub fn load_check(load1: f64, cpus: usize, max_per_cpu: f64) -> CheckResult {
    let limit = max_per_cpu * cpus.max(1) as f64;
    let reason = format!("load {load1:.2}, limit {limit:.2} ({cpus} CPUs)");
    if load1 <= limit {
        CheckResult::pass("load", reason)
    } else {
        CheckResult::fail("load", reason)
    }
}

/// The temperature check from the hottest sensor (pure); no sensors passes.
pub fn temperature_check(hottest: Option<f32>, max: f32) -> CheckResult {
    match hottest {
        None => CheckResult::pass("temperature", "no sensors"),
        Some(t) if t <= max => CheckResult::pass("temperature", format!("{t:.0} °C, max {max:.0}")),
        Some(t) => CheckResult::fail("temperature", format!("{t:.0} °C, max {max:.0}")),
    }
}

/// A probe's timeout: its own, else the configured default.
pub(crate) fn probe_timeout(probe: &ProbeConfig, default_secs: u64) -> Duration {
    Duration::from_secs(probe.timeout_secs().unwrap_or(default_secs).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_checks_decide_on_their_figures() {
        assert!(disk_check(Some(10), 10, None).passed);
        assert!(!disk_check(Some(9), 10, None).passed);
        assert!(!disk_check(None, 0, None).passed);
        assert!(memory_check(100, 100).passed);
        assert!(!memory_check(99, 100).passed);
        assert!(load_check(7.9, 2, 4.0).passed);
        assert!(!load_check(8.1, 2, 4.0).passed);
        assert!(temperature_check(None, 80.0).passed);
        assert!(!temperature_check(Some(81.0), 80.0).passed);
    }

    #[test]
    fn summary_counts_and_names_failures() {
        let mut s = HealthSample::new();
        s.push(CheckResult::pass("disk", "ok"));
        s.push(CheckResult::fail("http:pos", "status 500"));
        s.load1 = Some(0.5);
        let sum = s.summary();
        assert_eq!((sum.passed, sum.failed), (1, 1));
        assert_eq!(sum.failing, vec!["http:pos: status 500".to_string()]);
        assert_eq!(sum.load1, Some(0.5));
        assert!(!s.healthy());
    }

    #[test]
    fn disk_requirement_scales_with_margin() {
        let h = Health::new(HealthConfig::default(), Path::new("/")).unwrap();
        assert_eq!(h.disk_required(0), 256 * 1024 * 1024);
        assert_eq!(h.disk_required(100), 300 + 256 * 1024 * 1024);
        assert_eq!(h.disk_required(u64::MAX), u64::MAX);
    }

    #[test]
    fn free_space_of_a_missing_path_uses_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_space(&dir.path().join("not/yet/there"));
        assert!(free.is_some());
    }

    #[tokio::test]
    async fn a_sample_has_the_builtin_checks() {
        let dir = tempfile::tempdir().unwrap();
        let h = Health::new(HealthConfig::default(), dir.path()).unwrap();
        let s = h.sample().await;
        let names: Vec<_> = s.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["disk", "memory", "load"]);
        assert!(s.mem_available_bytes.unwrap() > 0);
        let need = DiskNeed {
            path: dir.path().to_path_buf(),
            artifact_bytes: u64::MAX / 4,
        };
        let r = h.readiness(&need).await;
        let disk = r.checks.iter().find(|c| c.name == "disk").unwrap();
        assert!(!disk.passed, "{disk:?}");
    }
}
