//! `fleetwave-demo-app`: the tiny application fleetwave's `app` executor installs in tests
//! and in `fleetwave demo`.
//!
//! ```text
//! fleetwave-demo-app [serve] --dir APP_DIR --listen 127.0.0.1:PORT [--pid-file F] [--label K=V]...
//! fleetwave-demo-app restart --dir APP_DIR --listen 127.0.0.1:PORT --pid-file F [--log F] [--label K=V]...
//! fleetwave-demo-app stop --pid-file F [--listen 127.0.0.1:PORT]
//! ```
//!
//! `serve` reads `APP_DIR/app.toml` (or `app.json`) with `version` (string) and `healthy`
//! (bool) once at start and answers `GET /healthz` (200 `ok` or 500 `unhealthy`) and
//! `GET /version` (the version). An optional `unhealthy_on` table (label → value) makes a
//! version that is otherwise healthy unhealthy on a site whose `--label`s include every
//! pair of it: a release that only breaks on some sites (one hardware, one store format).
//! `GET /metrics` exports simulated traffic in the Prometheus text format, for the agent's
//! golden signals: `http_requests_total{code}`, `http_errors_total` and the histogram
//! `http_request_duration_seconds`, growing with the time since start at
//! `metrics.requests_per_second` (default 20), of which a share `metrics.error_ratio`
//! (default 0.01) fails, with latencies spread evenly between 0.5 and 1.5 times
//! `metrics.latency_seconds` (default 0.05): a release that degrades sets larger values.
//! It waits up to 10 s for its port while another process
//! holds it, and writes the pid file only once it listens, so the pid file always names
//! the process that owns the port. `restart` stops the old app, starts `serve` detached
//! with the same arguments, and returns once the new process answers `/version`: usable as
//! an `app` release's `restart_command`. `stop` only stops.
//!
//! A restart or stop must stay correct when an earlier one was killed half-way (a power
//! cut, `kill -9` of the agent that ran it), or when two run at once:
//! - restarts and stops of one pid file take turns: each holds an exclusive `flock` on
//!   `F.lock` (released by the kernel when its holder dies), and says so when it waits
//!   (at most 60 s);
//! - stopping kills the demo app the pid file names and, with `--listen`, the demo app that
//!   listens on that port whatever the pid file says (a restart killed after starting the
//!   new app but before it wrote its pid file leaves such an app), then waits until the
//!   port is free; a port held by a process that is not a demo app is an error, never
//!   killed;
//! - the pid file is removed only if it still names the process that was stopped.
//!
//! Test hooks (as the agent's): with `FLEETWAVE_TEST_HOOKS=1` and
//! `FLEETWAVE_TEST_PAUSE_AT=app_restart_stopped` (the old app is stopped, the new one not
//! started) or `app_restart_spawned` (the new app is started, not yet confirmed), `restart`
//! writes `<point> <pid>` to `FLEETWAVE_TEST_PAUSE_FILE` and waits there to be killed.
//!
//! Standard library only (plus libc for signals and locks; Linux `/proc` to find a port's
//! owner); never serves anything but those three paths.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Args {
    command: String,
    dir: Option<PathBuf>,
    listen: Option<String>,
    pid_file: Option<PathBuf>,
    log: Option<PathBuf>,
    /// The site's labels, `K=V`.
    labels: Vec<String>,
}

const USAGE: &str = "usage:
  fleetwave-demo-app [serve] --dir APP_DIR --listen 127.0.0.1:PORT [--pid-file F] [--label K=V]...
  fleetwave-demo-app restart --dir APP_DIR --listen 127.0.0.1:PORT --pid-file F [--log F] [--label K=V]...
  fleetwave-demo-app stop --pid-file F [--listen 127.0.0.1:PORT]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        command: "serve".into(),
        ..Args::default()
    };
    let mut it = std::env::args().skip(1).peekable();
    if let Some(first) = it.peek()
        && !first.starts_with("--")
    {
        args.command = it.next().unwrap_or_default();
    }
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => args.dir = Some(PathBuf::from(value()?)),
            "--listen" => args.listen = Some(value()?),
            "--pid-file" => args.pid_file = Some(PathBuf::from(value()?)),
            "--log" => args.log = Some(PathBuf::from(value()?)),
            "--label" => {
                let label = value()?;
                if !label.contains('=') {
                    return Err(format!("--label {label:?} must be KEY=VALUE"));
                }
                args.labels.push(label);
            }
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("fleetwave-demo-app: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match args.command.as_str() {
        "serve" => serve(&args),
        "restart" => restart(&args),
        "stop" => match &args.pid_file {
            Some(p) => lock(p).and_then(|_lock| stop(p, args.listen.as_deref())),
            None => Err("stop needs --pid-file".into()),
        },
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetwave-demo-app: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What `app.toml`/`app.json` says.
struct AppFile {
    version: String,
    healthy: bool,
    /// Labels (`K=V`) that, all present on the site, make this version unhealthy.
    unhealthy_on: Vec<String>,
    /// `[metrics]`: the simulated traffic `/metrics` exports.
    traffic: Traffic,
}

/// Simulated traffic: counters are closed-form functions of the seconds since start.
struct Traffic {
    requests_per_second: f64,
    error_ratio: f64,
    latency_seconds: f64,
    started: Instant,
}

/// The histogram's bucket bounds (seconds).
const LATENCY_BUCKETS: [f64; 9] = [0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5];

impl Traffic {
    fn exposition(&self) -> String {
        let requests = (self.started.elapsed().as_secs_f64() * self.requests_per_second).floor();
        let errors = (requests * self.error_ratio).floor();
        let mut out = String::new();
        out.push_str("# HELP http_requests_total Requests served (simulated).\n# TYPE http_requests_total counter\n");
        out.push_str(&format!(
            "http_requests_total{{code=\"200\"}} {}\n",
            requests - errors
        ));
        out.push_str(&format!("http_requests_total{{code=\"500\"}} {errors}\n"));
        out.push_str("# HELP http_errors_total Requests that failed (simulated).\n# TYPE http_errors_total counter\n");
        out.push_str(&format!("http_errors_total {errors}\n"));
        out.push_str("# HELP http_request_duration_seconds Request latency (simulated).\n# TYPE http_request_duration_seconds histogram\n");
        // Latencies evenly spread over [0.5 L, 1.5 L]: the share at or below a bound.
        let (low, width) = (0.5 * self.latency_seconds, self.latency_seconds);
        for le in LATENCY_BUCKETS {
            let share = ((le - low) / width).clamp(0.0, 1.0);
            out.push_str(&format!(
                "http_request_duration_seconds_bucket{{le=\"{le}\"}} {}\n",
                (requests * share).floor()
            ));
        }
        out.push_str(&format!(
            "http_request_duration_seconds_bucket{{le=\"+Inf\"}} {requests}\n"
        ));
        out.push_str(&format!(
            "http_request_duration_seconds_sum {}\nhttp_request_duration_seconds_count {requests}\n",
            requests * self.latency_seconds
        ));
        out
    }
}

impl AppFile {
    /// Whether this version is healthy on a site with `labels`.
    fn healthy_on(&self, labels: &[String]) -> bool {
        self.healthy
            && (self.unhealthy_on.is_empty()
                || !self.unhealthy_on.iter().all(|pair| labels.contains(pair)))
    }
}

fn read_app_file(dir: &Path) -> Result<AppFile, String> {
    let toml_path = dir.join("app.toml");
    let json_path = dir.join("app.json");
    let value: serde_json::Value = if toml_path.exists() {
        let text = std::fs::read_to_string(&toml_path)
            .map_err(|e| format!("cannot read {}: {e}", toml_path.display()))?;
        let t: toml::Value =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", toml_path.display()))?;
        serde_json::to_value(t).map_err(|e| e.to_string())?
    } else {
        let text = std::fs::read_to_string(&json_path).map_err(|e| {
            format!(
                "cannot read {} or {}: {e}",
                toml_path.display(),
                json_path.display()
            )
        })?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json_path.display()))?
    };
    let version = value["version"]
        .as_str()
        .ok_or("app file: `version` (a string) is missing")?
        .to_string();
    let healthy = value["healthy"]
        .as_bool()
        .ok_or("app file: `healthy` (true or false) is missing")?;
    let unhealthy_on = match &value["unhealthy_on"] {
        serde_json::Value::Null => Vec::new(),
        serde_json::Value::Object(pairs) => pairs
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|v| format!("{k}={v}"))
                    .ok_or("app file: `unhealthy_on` values must be strings")
            })
            .collect::<Result<_, _>>()?,
        _ => return Err("app file: `unhealthy_on` must be a table of label = value".into()),
    };
    let metrics = &value["metrics"];
    let number = |key: &str, default: f64, max: f64| -> Result<f64, String> {
        match &metrics[key] {
            serde_json::Value::Null => Ok(default),
            v => v
                .as_f64()
                .filter(|n| (0.0..=max).contains(n))
                .ok_or_else(|| {
                    format!("app file: `metrics.{key}` must be a number from 0 to {max}")
                }),
        }
    };
    let traffic = Traffic {
        requests_per_second: number("requests_per_second", 20.0, 1e6)?,
        error_ratio: number("error_ratio", 0.01, 1.0)?,
        latency_seconds: number("latency_seconds", 0.05, 60.0)?,
        started: Instant::now(),
    };
    Ok(AppFile {
        version,
        healthy,
        unhealthy_on,
        traffic,
    })
}

fn serve(args: &Args) -> Result<(), String> {
    let dir = args.dir.as_ref().ok_or("serve needs --dir")?;
    let listen = args.listen.as_ref().ok_or("serve needs --listen")?;
    let mut app = read_app_file(dir)?;
    app.healthy = app.healthy_on(&args.labels);
    let listener = bind_waiting(listen, PORT_WAIT)?;
    if let Some(pf) = &args.pid_file {
        let tmp = pf.with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&tmp, pf))
            .map_err(|e| format!("cannot write {}: {e}", pf.display()))?;
    }
    eprintln!(
        "fleetwave-demo-app {} (healthy={}) listening on {listen}",
        app.version, app.healthy
    );
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                let _ = handle(s, &app);
            }
            Err(e) => eprintln!("accept failed: {e}"),
        }
    }
    Ok(())
}

fn handle(stream: TcpStream, app: &AppFile) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?.take(8192));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = match (method, path) {
        ("GET", "/healthz") if app.healthy => ("200 OK", "ok".to_string()),
        ("GET", "/healthz") => ("500 Internal Server Error", "unhealthy".to_string()),
        ("GET", "/version") => ("200 OK", app.version.clone()),
        ("GET", "/metrics") => ("200 OK", app.traffic.exposition()),
        ("GET", _) => ("404 Not Found", "not found".to_string()),
        _ => ("405 Method Not Allowed", "method not allowed".to_string()),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn read_pid(pid_file: &Path) -> Option<i32> {
    std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

fn alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie counts as gone.
    // SAFETY: kill with signal 0 sends nothing; it only checks the pid.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    if !exists {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => true,
    }
}

/// Is `pid` a demo app (not some unrelated process that reused the pid)?
fn is_demo_app(pid: i32) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmd) => String::from_utf8_lossy(&cmd).contains("fleetwave-demo-app"),
        Err(_) => true,
    }
}

fn wait_gone(pid: i32, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !alive(pid)
}

/// How long `serve` waits for its port, and `stop` for the port to be released.
const PORT_WAIT: Duration = Duration::from_secs(10);

/// How long a restart or stop waits for another one to finish (which itself is bounded:
/// a stop waits at most 10 s per process and for the port, a restart 15 s for its app).
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// Binds `listen`, waiting up to `within` while another process holds the port.
fn bind_waiting(listen: &str, within: Duration) -> Result<TcpListener, String> {
    let start = Instant::now();
    let mut said = false;
    loop {
        match TcpListener::bind(listen) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && start.elapsed() < within => {
                if !said {
                    eprintln!("fleetwave-demo-app: {listen} is in use; waiting for it");
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("cannot listen on {listen}: {e}")),
        }
    }
}

/// The exclusive lock that makes restarts and stops of one pid file take turns. The kernel
/// releases it when the holder exits or is killed; it is not inherited by `serve` (the
/// file is opened close-on-exec).
struct Lock {
    _file: std::fs::File,
}

fn lock(pid_file: &Path) -> Result<Lock, String> {
    let path = PathBuf::from(format!("{}.lock", pid_file.display()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let fd = file.as_raw_fd();
    let start = Instant::now();
    let mut said = false;
    // SAFETY: flock on a file descriptor we own (non-blocking, so the wait is bounded).
    while unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::WouldBlock {
            return Err(format!("cannot lock {}: {e}", path.display()));
        }
        if start.elapsed() > LOCK_WAIT {
            return Err(format!(
                "another restart or stop has held {} for more than {} s",
                path.display(),
                LOCK_WAIT.as_secs()
            ));
        }
        if !said {
            eprintln!(
                "fleetwave-demo-app: waiting for another restart or stop to finish (lock {})",
                path.display()
            );
            said = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Lock { _file: file })
}

/// Kills `pid` (SIGTERM, then SIGKILL) and waits until it is gone.
fn kill_and_wait(pid: i32) -> Result<(), String> {
    // SAFETY: plain signal delivery to a demo app we identified by pid file or port.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    if !wait_gone(pid, Duration::from_secs(5)) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        if !wait_gone(pid, Duration::from_secs(5)) {
            return Err(format!("process {pid} did not stop"));
        }
    }
    Ok(())
}

/// The inodes of the listening TCP sockets on `port` (Linux `/proc/net/tcp{,6}`).
fn listening_inodes(port: u16) -> Vec<u64> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue; // not LISTEN
            }
            let local_port = f[1]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port)
                && let Ok(inode) = f[9].parse::<u64>()
                && inode != 0
            {
                inodes.push(inode);
            }
        }
    }
    inodes
}

/// The processes that hold a listening socket on `port` (those this user may inspect).
fn port_owners(port: u16) -> Vec<i32> {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return Vec::new();
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let mut owners = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return owners;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .map(|t| wanted.iter().any(|w| t.as_os_str() == w.as_str()))
                .unwrap_or(false)
        });
        if holds {
            owners.push(pid);
        }
    }
    owners
}

/// Stops the demo app named in the pid file and, with `listen`, any demo app listening on
/// that port, then waits until the port is free. Call with the lock held.
fn stop(pid_file: &Path, listen: Option<&str>) -> Result<(), String> {
    let named = read_pid(pid_file);
    if let Some(pid) = named
        && alive(pid)
        && is_demo_app(pid)
    {
        kill_and_wait(pid)?;
    }
    if let Some(listen) = listen {
        let addr: SocketAddr = listen
            .parse()
            .map_err(|e| format!("--listen {listen:?}: {e}"))?;
        let start = Instant::now();
        loop {
            let owners: Vec<i32> = port_owners(addr.port())
                .into_iter()
                .filter(|p| *p != std::process::id() as i32)
                .collect();
            if owners.is_empty() && TcpListener::bind(addr).is_ok() {
                break;
            }
            for pid in &owners {
                if !is_demo_app(*pid) {
                    return Err(format!(
                        "{listen} is held by process {pid}, which is not a demo app; not \
                         stopping it"
                    ));
                }
                eprintln!(
                    "fleetwave-demo-app: stopping demo app {pid}, which listens on {listen} \
                     (not the one the pid file names)"
                );
                kill_and_wait(*pid)?;
            }
            if start.elapsed() > PORT_WAIT {
                return Err(format!(
                    "{listen} is still in use after {} s",
                    PORT_WAIT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Only the pid file of the process stopped here goes (never a newer app's).
    if read_pid(pid_file) == named {
        let _ = std::fs::remove_file(pid_file);
    }
    Ok(())
}

/// Test hook: stop at `point` and wait to be killed (see the module docs).
fn pause(point: &str) {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if var("FLEETWAVE_TEST_HOOKS").as_deref() != Some("1")
        || var("FLEETWAVE_TEST_PAUSE_AT").as_deref() != Some(point)
    {
        return;
    }
    eprintln!("fleetwave-demo-app: paused at {point}");
    if let Some(path) = var("FLEETWAVE_TEST_PAUSE_FILE") {
        let path = PathBuf::from(path);
        let tmp = path.with_extension("tmp");
        let _ = std::fs::write(&tmp, format!("{point} {}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&tmp, &path));
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn restart(args: &Args) -> Result<(), String> {
    let dir = args.dir.as_ref().ok_or("restart needs --dir")?;
    let listen = args.listen.as_ref().ok_or("restart needs --listen")?;
    let pid_file = args.pid_file.as_ref().ok_or("restart needs --pid-file")?;
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| format!("--listen {listen:?}: {e}"))?;
    // Fail early (and leave the old process running) if the new version cannot start.
    read_app_file(dir)?;
    let _lock = lock(pid_file)?;
    stop(pid_file, Some(listen))?;
    pause("app_restart_stopped");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let (out, err) = match &args.log {
        Some(log) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
            let f2 = f.try_clone().map_err(|e| e.to_string())?;
            (Stdio::from(f), Stdio::from(f2))
        }
        None => (Stdio::null(), Stdio::null()),
    };
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .arg("--dir")
        .arg(dir)
        .arg("--listen")
        .arg(listen)
        .arg("--pid-file")
        .arg(pid_file)
        .args(args.labels.iter().flat_map(|l| ["--label", l.as_str()]))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start serve: {e}"))?;
    let pid = child.id() as i32;
    pause("app_restart_spawned");
    let start = Instant::now();
    while start.elapsed() < PORT_WAIT + Duration::from_secs(5) {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the new process exited at once ({status})"));
        }
        if read_pid(pid_file) == Some(pid) && get_version(addr).is_some() {
            // Leave the child running; it is in its own process group and outlives us.
            std::mem::forget(child);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "the new process did not answer on {listen} within {} s",
        (PORT_WAIT + Duration::from_secs(5)).as_secs()
    ))
}

fn get_version(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    resp.starts_with("HTTP/1.1 200")
        .then(|| resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}
