//! The connection limit follows the process's open-file limit: a coordinator started
//! with few file descriptors lowers `limits.max_connections` and says so, instead of
//! accepting connections until accept and SQLite fail with "too many open files".

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleetwave_coordinator::init::{InitOptions, init};
use fleetwave_coordinator::server::{FD_RESERVE, clamp_connections};

/// `line` without terminal colour codes (`ESC [ ... m`).
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn clamping_leaves_the_reserve_and_never_raises() {
    assert_eq!(
        clamp_connections(200_000, 20_000),
        20_000 - FD_RESERVE as usize
    );
    assert_eq!(clamp_connections(500, 20_000), 500);
    assert_eq!(clamp_connections(200_000, 262_144), 200_000);
    assert_eq!(clamp_connections(200_000, 100), 16);
    assert_eq!(clamp_connections(200_000, u64::MAX), 200_000);
}

#[test]
fn a_coordinator_with_few_file_descriptors_lowers_its_connection_limit() {
    let dir = tempfile::tempdir().unwrap();
    let out = init(&InitOptions::dev_loopback(dir.path().to_path_buf())).unwrap();
    let open_files: u64 = 1100;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetwave-coordinator"));
    cmd.args(["serve", "--config"])
        .arg(&out.config)
        .env("FLEETWAVE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only setrlimit, which is async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: open_files,
                rlim_max: open_files,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let found = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains("max_connections") => break Some(plain(&line)),
            Ok(line) => seen.push(line),
            Err(_) if Instant::now() > deadline => break None,
            Err(_) => {}
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let line = found.unwrap_or_else(|| panic!("no connection-limit warning; stderr: {seen:#?}"));
    let want = format!("effective={}", open_files - FD_RESERVE);
    assert!(line.contains(&want), "{line}");
    assert!(line.contains("configured=200000"), "{line}");
}
