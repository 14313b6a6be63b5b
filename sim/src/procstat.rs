//! Resource figures of a process from `/proc/<pid>/stat` and `/proc/<pid>/status`: CPU time
//! (user + system), resident memory now and at its peak.
//!
//! It only reads `/proc`; it never signals or changes the process it looks at.

use std::time::Instant;

/// Why a process could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read /proc/{pid}/{file}: {source} (is the process still running?)")]
    Read {
        pid: u32,
        file: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("/proc/{pid}/{file} has an unexpected format")]
    Format { pid: u32, file: &'static str },
}

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions; _SC_CLK_TCK is always defined on Linux.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Reads `pid` now.
pub fn sample(pid: u32) -> Result<Sample, ProcError> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|source| ProcError::Read {
            pid,
            file: "stat",
            source,
        })?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or(ProcError::Format { pid, file: "stat" })?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let num = |i: usize| -> Result<u64, ProcError> {
        fields
            .get(i - 3)
            .and_then(|v| v.parse().ok())
            .ok_or(ProcError::Format { pid, file: "stat" })
    };
    let cpu_ticks = num(14)? + num(15)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|source| {
        ProcError::Read {
            pid,
            file: "status",
            source,
        }
    })?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok(Sample {
        at: Instant::now(),
        cpu_ticks,
        rss_bytes: kib("VmRSS:"),
        peak_rss_bytes: kib("VmHWM:"),
    })
}

/// CPU used between two samples, in percent of one core.
pub fn cpu_percent(from: &Sample, to: &Sample) -> f64 {
    let secs = to.at.duration_since(from.at).as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    let cpu = to.cpu_ticks.saturating_sub(from.cpu_ticks) as f64 / ticks_per_sec();
    100.0 * cpu / secs
}

/// CPU seconds between two samples.
pub fn cpu_secs(from: &Sample, to: &Sample) -> f64 {
    to.cpu_ticks.saturating_sub(from.cpu_ticks) as f64 / ticks_per_sec()
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The machine's load average (1, 5, 15 minutes) as `/proc/loadavg` says.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0);
        assert!(s.peak_rss_bytes >= s.rss_bytes);
    }

    #[test]
    fn a_missing_process_is_named() {
        let err = sample(u32::MAX - 1).unwrap_err();
        assert!(err.to_string().contains("/stat"), "{err}");
    }
}
