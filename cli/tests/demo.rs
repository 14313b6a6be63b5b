//! `fleetwave demo --exit-when-done`, run for real twice in a row in the same directory:
//! the whole story (the good release on every site through five waves; the bad one halted
//! in its first wave and rolled back; the one that serves worse halted in its first wave
//! by the golden-signal analysis; no later-wave site ever installing either) must happen
//! both times, the second run proving that a rerun wipes and recreates the demo dir. Also:
//! a port in use and a foreign directory are refused with a clear message.
//!
//! Needs `fleetwave-coordinator`, `fleetwave-agent` and `fleetwave-demo-app` next to the
//! `fleetwave` binary: `cargo build --workspace --bins` first.

use std::io::BufRead as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fleetwave");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the demo with a generous deadline (a slow machine makes it slower, not red).
fn run_demo(dir: &Path, port: u16, acts: u8) -> Output {
    let mut child = Command::new(BIN)
        .args(["demo", "--sites", "6", "--exit-when-done", "--port"])
        .arg(port.to_string())
        .arg("--acts")
        .arg(acts.to_string())
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15 * 60);
    // Drain the pipes on threads so the demo never blocks on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut s).unwrap();
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut s).unwrap();
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            // SIGTERM: the demo stops its children cleanly.
            unsafe_term(child.id());
            let status = child.wait().unwrap();
            panic!("the demo did not finish within 15 minutes ({status})");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

fn unsafe_term(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

fn no_process_mentions(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&needle) {
                found.push(cmd);
            }
        }
    }
    found
}

/// About seven minutes of a real demo (three acts, then two): `./scripts/test` runs it
/// (`--ignored`) in its own process beside the rest of the suite rather than after it.
#[test]
#[ignore = "slow (the whole demo twice, about 7 minutes): ./scripts/test runs it in parallel with the suite"]
fn the_demo_tells_its_story_twice_in_a_row() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("demo");
    // The whole story first; then the two-act story (about a minute), whose run proves
    // that a rerun wipes and recreates the demo dir.
    for (run, acts) in [(1, 3u8), (2, 2u8)] {
        let port = free_port();
        let out = run_demo(&dir, port, acts);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "run {run} failed ({:?}):\n{stdout}\n{stderr}",
            out.status.code()
        );
        let act_three = [
            "=== act 3: demo-1.3.0",
            "analysis  wave 0 halted by error_ratio: ",
            "analysis  wave 0 halted by latency_p95_seconds: ",
            "wave 1 the rest     never opened: its 4 site(s) never saw the release",
        ];
        if acts == 2 {
            for line in act_three {
                assert!(!stdout.contains(line), "run {run}: {line:?} in:\n{stdout}");
            }
        }
        let port_line = format!("dashboard:       https://127.0.0.1:{port}/");
        let mut expected: Vec<&str> = vec![
            &port_line,
            "operator token:  fwo_",
            "=== act 1: demo-1.1.0",
            "open_wave (wave 4 dogs)",
            "=== act 2: demo-1.2.0",
            "halt (wave 0 pigs)",
            "wave 1 canary city  never opened: its 1 site(s) never saw the release",
            "apps serving 1.1.0: 6",
            "as expected:",
        ];
        if acts == 3 {
            expected.extend(act_three);
        }
        for expected in expected {
            assert!(
                stdout.contains(expected),
                "run {run}: {expected:?} missing from:\n{stdout}"
            );
        }
        assert!(dir.join(".fleetwave-demo").is_file());
        // Nothing the demo started outlives it.
        let left = no_process_mentions(&dir);
        assert!(left.is_empty(), "run {run} left processes: {left:?}");
    }
}

#[test]
fn a_port_in_use_and_a_foreign_directory_are_refused() {
    let temp = tempfile::tempdir().unwrap();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let out = Command::new(BIN)
        .args(["demo", "--port", &port.to_string(), "--dir"])
        .arg(temp.path().join("d"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("port {port}")) && err.contains("--port"),
        "{err}"
    );
    assert!(!temp.path().join("d").exists(), "nothing is created");

    // A directory with someone else's files is never wiped.
    let foreign = temp.path().join("mine");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("precious.txt"), "keep me").unwrap();
    let out = Command::new(BIN)
        .args(["demo", "--port", &free_port().to_string(), "--dir"])
        .arg(&foreign)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not created by `fleetwave demo`"), "{err}");
    assert!(foreign.join("precious.txt").is_file());
}

/// Starts the demo (without --exit-when-done) and waits until every agent polls.
fn start_until_polling(dir: &Path) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(["demo", "--sites", "4", "--port"])
        .arg(free_port().to_string())
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("agents are polling") => break,
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                panic!("the demo never said its agents are polling: {e}");
            }
        }
    }
    (child, rx)
}

/// Waits (generously) until no process names `dir` on its command line.
fn wait_nothing_left(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = no_process_mentions(dir);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes outlived the demo: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn sigterm_mid_story_stops_everything_and_exits_0() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("demo");
    let (mut child, rx) = start_until_polling(&dir);
    unsafe_term(child.id());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
    let said: Vec<String> = rx.try_iter().collect();
    assert!(said.iter().any(|l| l.contains("stopped")), "{said:?}");
    wait_nothing_left(&dir);
}

#[test]
fn nothing_outlives_a_demo_killed_with_sigkill() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("demo");
    let (mut child, _rx) = start_until_polling(&dir);
    child.kill().unwrap();
    child.wait().unwrap();
    // The agents and the coordinator die with it (PDEATHSIG); the guard stops the apps.
    wait_nothing_left(&dir);
}
