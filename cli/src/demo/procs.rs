//! The demo's child processes: started so that they never outlive the demo, stopped in order.
//!
//! Every child runs in its own process group (so the terminal's Ctrl-C reaches only the
//! demo, which then stops them in order) with `PR_SET_PDEATHSIG` = SIGTERM (so the kernel
//! stops them if the demo dies, even by SIGKILL). The demo apps are started by the agents'
//! restart command and detach; a small guard process (`fleetwave demo-guard`) holds a pipe
//! from the demo and stops them by their pid files when that pipe closes, however the demo
//! ended. SIGINT and SIGTERM only set a flag that the demo's loops check. This module never
//! signals a process it did not start (or that a pid file of the demo dir does not name as
//! a demo app).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set the flag [`interrupted`] reads, instead of killing the demo.
pub fn catch_signals() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

/// Whether Ctrl-C or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Sleeps up to `d`, waking early on an interrupt. Returns whether it was interrupted.
pub fn nap(d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if interrupted() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
    interrupted()
}

/// Own process group, and SIGTERM from the kernel when the demo dies.
fn detach_and_tie(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    cmd.process_group(0);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The demo may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::_exit(0);
            }
            Ok(())
        });
    }
}

/// A running child, its name and its log file.
pub struct Proc {
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        detach_and_tie(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        Ok(Proc {
            log: log.to_path_buf(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if it has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM (once, if still running).
    pub fn terminate(&mut self) {
        if self.exited().is_none() {
            // SAFETY: signalling our own, not yet reaped child.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        }
    }

    /// Waits up to `grace` for the child to end, then kills it. Returns whether it ended
    /// on its own.
    pub fn wait_or_kill(&mut self, grace: Duration) -> bool {
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if self.exited().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }

    /// The last `n` lines of its log, for an error message.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Runs `cmd` to completion (stdout and stderr into `log`); an error names the log.
pub fn run_logged(name: &str, mut cmd: Command, log: &Path) -> Result<()> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {name} ({:?})", cmd.get_program()))?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        anyhow::bail!(
            "{name} failed ({status}); see {}:\n{}",
            log.display(),
            tail.join("\n")
        );
    }
    Ok(())
}

/// The guard: started with a pipe on its stdin that only the demo holds.
pub struct Guard {
    child: Child,
}

impl Guard {
    /// Starts `fleetwave demo-guard` for `dir`.
    pub fn start(dir: &Path, demo_app: &Path, log: &Path) -> Result<Guard> {
        let exe = std::env::current_exe().context("cannot find the fleetwave executable")?;
        let out = File::options().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(exe);
        cmd.arg("demo-guard")
            .arg("--dir")
            .arg(dir)
            .arg("--demo-app")
            .arg(demo_app)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err);
        {
            use std::os::unix::process::CommandExt as _;
            // Not tied to the demo by PDEATHSIG: it must outlive it to clean up.
            cmd.process_group(0);
        }
        let child = cmd.spawn().context("cannot start the demo guard")?;
        Ok(Guard { child })
    }

    /// Closes the pipe (the guard stops whatever is left) and waits for it.
    pub fn finish(mut self) {
        drop(self.child.stdin.take());
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every `sites/*/demo-app.pid` under `dir`.
pub fn demo_app_pid_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir.join("sites")) {
        for e in entries.flatten() {
            let pid = e.path().join("demo-app.pid");
            if pid.is_file() {
                out.push(pid);
            }
        }
    }
    out.sort();
    out
}

/// Stops every demo app of `dir` through `fleetwave-demo-app stop` (which checks that the
/// pid is a demo app before signalling it).
pub fn stop_demo_apps(dir: &Path, demo_app: &Path) {
    for pid_file in demo_app_pid_files(dir) {
        let _ = Command::new(demo_app)
            .arg("stop")
            .arg("--pid-file")
            .arg(&pid_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The guard's body: wait for the demo's pipe to close, then stop the demo apps.
pub fn guard_main(dir: &Path, demo_app: &Path) -> Result<()> {
    use std::io::Read as _;
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin();
    // Ignore the terminal's signals: only the pipe closing ends the wait.
    // SAFETY: setting dispositions to SIG_IGN.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    loop {
        match stdin.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    stop_demo_apps(dir, demo_app);
    // An agent stopping at the same moment may have been restarting its app: once more,
    // after the agents (tied to the demo by PDEATHSIG) are surely gone.
    std::thread::sleep(Duration::from_secs(2));
    stop_demo_apps(dir, demo_app);
    Ok(())
}
