//! The agent's cost on a small box: a real `fleetwave-agent`, enrolled with a real token
//! against a real coordinator on loopback, polling every 30 s; its RSS and CPU read from
//! `/proc/<pid>/stat` and `/proc/<pid>/status` over several minutes; and the size of the
//! binary given (normally the stripped `agent-release` build).
//!
//! With `--signals`, the agent also scrapes golden signals every 60 s (ten signals: rates,
//! a ratio, histogram quantiles, gauges) from an in-process loopback endpoint that serves
//! a typical application's exposition (about 320 series, 25 kB): run it with and without
//! to see what scraping and summarizing cost.
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
    signals: bool,
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
            postgres_url: None,
            replicas: 1,
        },
    )
    .await?;
    let token = coordinator.enrollment_token(1).await?;
    let adir = dir.join("agent");
    let state = adir.join("state");
    std::fs::create_dir_all(&state)?;
    let site = format!("idle-{}", jiff::Timestamp::now().as_second());
    let config = adir.join("agent.toml");
    let signals_toml = if signals {
        let port = serve_metrics().await?;
        signals_config(port)
    } else {
        String::new()
    };
    std::fs::write(
        &config,
        format!(
            "[coordinator]\nurl = {url}\nca_file = {ca}\n\n[agent]\nstate_dir = {state}\nsite_id = {site}\nroot_file = {root}\n\n\
             [poll]\ninterval_secs = {interval_secs}\nwait_secs = 0\njitter = 0.0\n\n\
             [executor]\nstaging_dir = {staging}\napps_dir = {apps}\n{signals_toml}",
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
        "agent: site {site}, pid {pid}, polling every {interval_secs} s (short polls), coordinator pid {}{}",
        coordinator.pid,
        if signals {
            ", scraping 10 golden signals every 60 s"
        } else {
            ""
        }
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

/// Routes of the simulated application: each has request counters by code and a latency
/// histogram.
const ROUTES: usize = 20;
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Serves `/metrics` on a free loopback port (until the process ends); returns the port.
async fn serve_metrics() -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let started = Instant::now();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move { exposition(started.elapsed().as_secs_f64()) }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(port)
}

/// A typical application's exposition after `secs` seconds of steady traffic.
fn exposition(secs: f64) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(32 * 1024);
    out.push_str("# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n");
    for r in 0..ROUTES {
        let total = (secs * (5.0 + r as f64)).floor();
        for (code, share) in [("200", 0.97), ("404", 0.02), ("500", 0.01)] {
            let _ = writeln!(
                out,
                "http_requests_total{{route=\"/r{r}\",code=\"{code}\"}} {}",
                (total * share).floor()
            );
        }
    }
    out.push_str("# HELP http_request_duration_seconds Latency.\n# TYPE http_request_duration_seconds histogram\n");
    for r in 0..ROUTES {
        let total = (secs * (5.0 + r as f64)).floor();
        for (i, le) in BUCKETS.iter().enumerate() {
            let share = (i as f64 + 1.0) / (BUCKETS.len() as f64 + 1.0);
            let _ = writeln!(
                out,
                "http_request_duration_seconds_bucket{{route=\"/r{r}\",le=\"{le}\"}} {}",
                (total * share).floor()
            );
        }
        let _ = writeln!(
            out,
            "http_request_duration_seconds_bucket{{route=\"/r{r}\",le=\"+Inf\"}} {total}"
        );
        let _ = writeln!(
            out,
            "http_request_duration_seconds_sum{{route=\"/r{r}\"}} {}",
            total * 0.1
        );
        let _ = writeln!(
            out,
            "http_request_duration_seconds_count{{route=\"/r{r}\"}} {total}"
        );
    }
    let errors = (0..ROUTES)
        .map(|r| (secs * (5.0 + r as f64)).floor() * 0.01)
        .sum::<f64>()
        .floor();
    let _ = writeln!(
        out,
        "# TYPE http_errors_total counter\nhttp_errors_total {errors}"
    );
    let _ = writeln!(
        out,
        "# TYPE queue_depth gauge\nqueue_depth {}",
        (secs as u64 % 7) as f64
    );
    let _ = writeln!(
        out,
        "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 52428800"
    );
    let _ = writeln!(
        out,
        "# TYPE process_restarts_total counter\nprocess_restarts_total 0"
    );
    out
}

/// Ten signals of every kind over that exposition.
fn signals_config(port: u16) -> String {
    let mut s = format!(
        "\n[signals.sim]\nscrape_url = \"http://127.0.0.1:{port}/metrics\"\ninterval_secs = 60\n"
    );
    let signal =
        |name: &str, body: &str| format!("\n[[signals.sim.signal]]\nname = \"{name}\"\n{body}");
    s.push_str(&signal(
        "request_rate",
        "kind = \"rate\"\nmetric = \"http_requests_total\"\n",
    ));
    s.push_str(&signal(
        "checkout_rate",
        "kind = \"rate\"\nmetric = \"http_requests_total\"\nlabels = { route = \"/r3\" }\n",
    ));
    s.push_str(&signal("error_ratio", "kind = \"ratio\"\nnumerator = \"http_errors_total\"\ndenominator = \"http_requests_total\"\n"));
    for q in ["50", "95", "99"] {
        s.push_str(&signal(
            &format!("latency_p{q}"),
            &format!("kind = \"quantile\"\nmetric = \"http_request_duration_seconds\"\nquantile = 0.{q}\n"),
        ));
    }
    s.push_str(&signal("checkout_latency_p95", "kind = \"quantile\"\nmetric = \"http_request_duration_seconds\"\nquantile = 0.95\nlabels = { route = \"/r3\" }\n"));
    s.push_str(&signal(
        "queue_depth",
        "kind = \"gauge\"\nmetric = \"queue_depth\"\naggregate = \"avg\"\n",
    ));
    s.push_str(&signal(
        "memory_bytes",
        "kind = \"gauge\"\nmetric = \"process_resident_memory_bytes\"\n",
    ));
    s.push_str(&signal(
        "restart_rate",
        "kind = \"rate\"\nmetric = \"process_restarts_total\"\n",
    ));
    s
}
