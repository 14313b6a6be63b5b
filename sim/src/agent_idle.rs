//! The agent's cost on a small box: a real `fleetwave-agent`, enrolled with a real token
//! against a real coordinator on loopback, polling every 30 s; its RSS and CPU read from
//! `/proc/<pid>/stat` and `/proc/<pid>/status` over several minutes; and the size of the
//! binary given (normally the stripped `agent-release` build).
//!
//! It only observes the agent; it never changes its code paths.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::coordinator::{Coordinator, Setup, Tuning};
use crate::procstat::{self, mib};

fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// Runs the measurement for `minutes`; prints the figures.
pub async fn agent_idle(
    dir: &Path,
    coordinator_bin: &Path,
    agent_bin: &Path,
    minutes: f64,
    interval_secs: u64,
) -> anyhow::Result<()> {
    let size = std::fs::metadata(agent_bin)
        .with_context(|| format!("{}", agent_bin.display()))?
        .len();
    println!(
        "agent binary: {} ({:.2} MiB, {size} bytes)",
        agent_bin.display(),
        mib(size)
    );
    let setup = Setup::open_or_create(dir)?;
    let coordinator = Coordinator::start(
        coordinator_bin,
        &setup,
        &Tuning {
            poll_interval_secs: interval_secs as u32,
            max_concurrent_requests: None,
            max_keepalive_connections: None,
            tick_millis: 1000,
        },
    )
    .await?;
    let token = coordinator.enrollment_token(1).await?;
    let adir = dir.join("agent");
    let state = adir.join("state");
    std::fs::create_dir_all(&state)?;
    let site = format!("idle-{}", jiff::Timestamp::now().as_second());
    let config = adir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[coordinator]\nurl = {url}\nca_file = {ca}\n\n[agent]\nstate_dir = {state}\nsite_id = {site}\nroot_file = {root}\n\n\
             [poll]\ninterval_secs = {interval_secs}\nwait_secs = 0\njitter = 0.0\n\n\
             [executor]\nstaging_dir = {staging}\napps_dir = {apps}\n",
            url = q(&coordinator.base),
            ca = q(&setup.dir.join("tls/ca.pem").display().to_string()),
            state = q(&state.display().to_string()),
            site = q(&site),
            root = q(&setup.dir.join("root.1.json").display().to_string()),
            staging = q(&adir.join("staging").display().to_string()),
            apps = q(&adir.join("apps").display().to_string()),
        ),
    )?;
    let out = Command::new(agent_bin)
        .arg("--config")
        .arg(&config)
        .args(["enroll", "--token", &token])
        .output()
        .with_context(|| format!("running {} enroll", agent_bin.display()))?;
    if !out.status.success() {
        bail!(
            "fleetwave-agent enroll failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let log = std::fs::File::create(adir.join("agent.log"))?;
    let mut child = Command::new(agent_bin)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let pid = child.id();
    println!(
        "agent: site {site}, pid {pid}, polling every {interval_secs} s (short polls), coordinator pid {}",
        coordinator.pid
    );
    // Start-up (session, first poll, first health sample) is not idle: skip it.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let s0 = procstat::sample(pid)?;
    let started = Instant::now();
    let total = Duration::from_secs_f64(minutes * 60.0);
    let mut max_rss = s0.rss_bytes;
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if let Ok(Some(status)) = child.try_wait() {
            bail!("the agent exited during the measurement ({status}); see its log");
        }
        max_rss = max_rss.max(procstat::sample(pid)?.rss_bytes);
    }
    let s1 = procstat::sample(pid)?;
    let cpu = procstat::cpu_secs(&s0, &s1);
    let secs = s1.at.duration_since(s0.at).as_secs_f64();
    let cycles = secs / interval_secs as f64;
    println!(
        "agent idle over {:.1} min (load average {}):",
        secs / 60.0,
        procstat::load_average()
    );
    println!(
        "  RSS {:.1} MiB now, {:.1} MiB highest sampled, {:.1} MiB peak (VmHWM, includes start-up)",
        mib(s1.rss_bytes),
        mib(max_rss),
        mib(s1.peak_rss_bytes)
    );
    println!(
        "  CPU {:.3} s in {secs:.0} s = {:.4}% of one core ({:.1} ms per {interval_secs} s poll cycle; /proc resolution 10 ms)",
        cpu,
        100.0 * cpu / secs,
        1000.0 * cpu / cycles.max(1.0)
    );
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    drop(coordinator);
    Ok(())
}
