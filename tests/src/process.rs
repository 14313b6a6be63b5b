//! Real child processes for scenarios: spawned with arguments, environment and working
//! directory, output captured to files, killed (with their whole process group) on drop.
//!
//! A [`Process`] is the only way scenarios start long-running binaries. It must never
//! leave a child behind: dropping it sends SIGKILL to the process group and reaps the
//! child, and when the test thread is panicking it prints the captured output first.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{HarnessError, Result};
use crate::logs::{self, LogFiles};

/// How long [`Process::terminate`] waits after SIGTERM before it sends SIGKILL.
pub const TERMINATE_GRACE: Duration = Duration::from_secs(30);

/// What to start: program, arguments, environment, working directory, log directory.
#[derive(Debug, Clone)]
pub struct Spawn {
    label: String,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    log_dir: PathBuf,
}

impl Spawn {
    /// `label` names the process in logs and failure messages (e.g. `agent-pig-1`).
    pub fn new(label: impl Into<String>, program: impl Into<PathBuf>, log_dir: &Path) -> Spawn {
        Spawn {
            label: label.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            log_dir: log_dir.to_path_buf(),
        }
    }

    /// The command line of a [`fleetwave_launch::Cmd`] (the recipe shared with
    /// `fleetwave demo`), run the harness's way.
    pub fn from_cmd(
        label: impl Into<String>,
        cmd: &fleetwave_launch::Cmd,
        log_dir: &Path,
    ) -> Spawn {
        let mut s = Spawn::new(label, &cmd.program, log_dir).args(cmd.args.iter().cloned());
        for (k, v) in &cmd.env {
            s = s.env(k.clone(), v.clone());
        }
        if let Some(d) = &cmd.cwd {
            s = s.cwd(d.clone());
        }
        s
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Spawn {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Spawn
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Spawn {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Spawn {
        self.cwd = Some(dir.into());
        self
    }

    /// The command line, for messages.
    pub fn display(&self) -> String {
        let mut s = self.program.display().to_string();
        for arg in &self.args {
            s.push(' ');
            s.push_str(&arg.to_string_lossy());
        }
        s
    }

    fn log_files(&self) -> Result<LogFiles> {
        std::fs::create_dir_all(&self.log_dir)
            .map_err(|e| HarnessError::io(format!("creating {}", self.log_dir.display()), e))?;
        Ok(LogFiles {
            label: self.label.clone(),
            stdout: self.log_dir.join(format!("{}.stdout.log", self.label)),
            stderr: self.log_dir.join(format!("{}.stderr.log", self.label)),
        })
    }

    fn command(&self, logs: &LogFiles) -> Result<Command> {
        let open = |path: &Path| {
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| HarnessError::io(format!("opening log {}", path.display()), e))?;
            // Restarts of the same label append; mark where each run starts.
            let _ = writeln!(file, "===== {} started =====", self.label);
            Ok::<_, HarnessError>(file)
        };
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(open(&logs.stdout)?)
            .stderr(open(&logs.stderr)?);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        Ok(cmd)
    }

    /// Starts a long-running process in its own process group.
    pub fn start(self) -> Result<Process> {
        use std::os::unix::process::CommandExt as _;
        let logs = Arc::new(self.log_files()?);
        let mut cmd = self.command(&logs)?;
        cmd.process_group(0);
        let child = cmd.spawn().map_err(|source| HarnessError::Spawn {
            label: self.label.clone(),
            program: self.program.clone(),
            source,
        })?;
        logs::register(&logs);
        Ok(Process {
            spec: self,
            child: Some(child),
            logs,
        })
    }

    /// Runs a short command to completion; a non-zero exit is an error carrying its output.
    /// Returns the captured stdout.
    pub fn run(self) -> Result<String> {
        let (status, stdout, logs) = self.run_status()?;
        if status.success() {
            Ok(stdout)
        } else {
            Err(HarnessError::CommandFailed {
                command: self.display(),
                status: status.to_string(),
                logs: logs.tail(),
            })
        }
    }

    /// Runs a short command to completion and returns its exit status and stdout, whatever
    /// the status (for commands expected to fail).
    pub fn run_status(&self) -> Result<(ExitStatus, String, LogFiles)> {
        let logs = self.log_files()?;
        let before = std::fs::metadata(&logs.stdout)
            .map(|m| m.len())
            .unwrap_or(0);
        let mut cmd = self.command(&logs)?;
        let status = cmd.status().map_err(|source| HarnessError::Spawn {
            label: self.label.clone(),
            program: self.program.clone(),
            source,
        })?;
        let all = std::fs::read(&logs.stdout)
            .map_err(|e| HarnessError::io(format!("reading {}", logs.stdout.display()), e))?;
        let mut stdout = String::from_utf8_lossy(&all[before as usize..]).into_owned();
        // Drop the marker line this run wrote.
        if let Some(pos) = stdout.find('\n')
            && stdout.starts_with("===== ")
        {
            stdout.drain(..=pos);
        }
        Ok((status, stdout, logs))
    }
}

/// A running child process. Dropping it kills its process group and reaps it.
#[derive(Debug)]
pub struct Process {
    spec: Spawn,
    child: Option<Child>,
    logs: Arc<LogFiles>,
}

impl Process {
    pub fn label(&self) -> &str {
        &self.spec.label
    }

    /// The operating-system process id (also its process group id), if still running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The tail of its captured stdout and stderr.
    pub fn logs(&self) -> String {
        self.logs.tail()
    }

    pub fn stdout_path(&self) -> &Path {
        &self.logs.stdout
    }

    pub fn stderr_path(&self) -> &Path {
        &self.logs.stderr
    }

    /// Whether it has not exited yet (reaps it if it has).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(child) => matches!(child.try_wait(), Ok(None)),
        }
    }

    /// Its exit status if it has exited, without waiting.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL to the whole process group (a power cut for this process and anything it
    /// started), then reap it.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err(HarnessError::Fleet(format!(
                "{} was already stopped",
                self.spec.label
            )));
        };
        signal_group(child.id(), libc::SIGKILL);
        child
            .wait()
            .map_err(|e| HarnessError::io(format!("reaping {}", self.spec.label), e))
    }

    /// SIGTERM to the process, wait up to [`TERMINATE_GRACE`] for it to exit, then SIGKILL
    /// the group. Returns the exit status (a clean shutdown exits 0).
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err(HarnessError::Fleet(format!(
                "{} was already stopped",
                self.spec.label
            )));
        };
        signal_pid(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + crate::patience(TERMINATE_GRACE);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    // Anything it started and left behind goes too.
                    signal_group(child.id(), libc::SIGKILL);
                    return Ok(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    signal_group(child.id(), libc::SIGKILL);
                    let _ = child.wait();
                    return Err(HarnessError::Fleet(format!(
                        "{} did not exit within {:?} of SIGTERM; killed it\n{}",
                        self.spec.label,
                        TERMINATE_GRACE,
                        self.logs.tail()
                    )));
                }
                Err(e) => {
                    return Err(HarnessError::io(
                        format!("waiting for {}", self.spec.label),
                        e,
                    ));
                }
            }
        }
    }

    /// Waits for it to exit by itself (e.g. a command that runs in the foreground).
    pub fn wait_exit(&mut self, deadline: Duration) -> Result<ExitStatus> {
        let label = self.spec.label.clone();
        crate::eventually(&format!("{label} to exit"), deadline, || {
            self.try_exit_status()
                .ok_or_else(|| anyhow::anyhow!("{label} is still running"))
        })
    }

    /// Starts the same command again (same label; its logs append), e.g. after
    /// [`Process::kill9`]. Kills the current run first if it is still alive.
    pub fn restart(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            signal_group(child.id(), libc::SIGKILL);
            let _ = child.wait();
        }
        // The old value has no child left, so dropping it (by assignment) is a no-op.
        *self = self.spec.clone().start()?;
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs.tail());
        }
        if let Some(mut child) = self.child.take() {
            signal_group(child.id(), libc::SIGKILL);
            let _ = child.wait();
        }
    }
}

fn signal_pid(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a positive pid of our own child has no memory effects.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

fn signal_group(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with -pgid; the child was started as the leader of its own group.
        unsafe {
            libc::kill(-pid, signal);
        }
    }
}

/// Whether a process id refers to a live (not zombie) process.
pub fn pid_alive(pid: u32) -> bool {
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat,
        Err(_) => return false,
    };
    // Field 3, after the parenthesised command name, is the state.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, label: &str, script: &str) -> Spawn {
        Spawn::new(label, "/bin/sh", dir).arg("-c").arg(script)
    }

    #[test]
    fn drop_kills_and_reaps_the_child_and_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        let proc = sh(
            dir.path(),
            "sleeper",
            &format!("sleep 1000 & echo $! > {}; wait", pidfile.display()),
        )
        .start()
        .unwrap();
        let pid = proc.pid().unwrap();
        let grandchild: u32 = crate::eventually(
            "the grandchild pid file",
            crate::patience(Duration::from_secs(20)),
            || Ok(std::fs::read_to_string(&pidfile)?.trim().parse()?),
        )
        .unwrap();
        assert!(pid_alive(pid));
        assert!(pid_alive(grandchild));
        drop(proc);
        // Reaped: waitpid has collected it, so the pid no longer names a process of ours.
        assert!(!pid_alive(pid), "child {pid} is still alive after drop");
        crate::eventually(
            "the grandchild to die",
            crate::patience(Duration::from_secs(20)),
            || {
                if pid_alive(grandchild) {
                    anyhow::bail!("grandchild {grandchild} alive")
                }
                Ok(())
            },
        )
        .unwrap();
    }

    #[test]
    fn terminate_sends_sigterm_and_returns_the_exit_status() {
        let dir = tempfile::tempdir().unwrap();
        let mut proc = sh(
            dir.path(),
            "trapper",
            "trap 'echo got-term; exit 7' TERM; echo ready; while true; do sleep 0.05; done",
        )
        .start()
        .unwrap();
        let stdout = proc.stdout_path().to_path_buf();
        crate::eventually(
            "the script to be ready",
            crate::patience(Duration::from_secs(20)),
            || {
                let text = std::fs::read_to_string(&stdout)?;
                anyhow::ensure!(text.contains("ready"), "not ready yet: {text:?}");
                Ok(())
            },
        )
        .unwrap();
        let status = proc.terminate().unwrap();
        assert_eq!(status.code(), Some(7), "{status:?} {}", proc.logs());
        assert!(proc.logs().contains("got-term"), "{}", proc.logs());
        assert!(!proc.is_running());
    }

    #[test]
    fn kill9_is_a_sigkill() {
        use std::os::unix::process::ExitStatusExt as _;
        let dir = tempfile::tempdir().unwrap();
        let mut proc = sh(dir.path(), "victim", "trap '' TERM; sleep 1000")
            .start()
            .unwrap();
        let status = proc.kill9().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn restart_runs_the_same_command_again_and_appends_logs() {
        let dir = tempfile::tempdir().unwrap();
        let mut proc = sh(dir.path(), "again", "echo hello; sleep 1000")
            .start()
            .unwrap();
        let first = proc.pid().unwrap();
        let stdout = proc.stdout_path().to_path_buf();
        let hellos = |want: usize| {
            let text = std::fs::read_to_string(&stdout)?;
            let got = text.lines().filter(|l| *l == "hello").count();
            anyhow::ensure!(
                got == want,
                "{got} runs said hello, want {want}; log: {text:?}"
            );
            Ok(())
        };
        crate::eventually(
            "the first run",
            crate::patience(Duration::from_secs(20)),
            || hellos(1),
        )
        .unwrap();
        proc.kill9().unwrap();
        proc.restart().unwrap();
        assert_ne!(proc.pid().unwrap(), first);
        crate::eventually(
            "two runs in the log",
            crate::patience(Duration::from_secs(20)),
            || hellos(2),
        )
        .unwrap();
    }

    #[test]
    fn run_returns_stdout_and_a_failure_carries_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let out = sh(dir.path(), "ok", "echo fine").run().unwrap();
        assert_eq!(out, "fine\n");
        let err = sh(dir.path(), "bad", "echo broken-thing >&2; exit 3")
            .run()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("exit status: 3"), "{text}");
        assert!(text.contains("broken-thing"), "{text}");
    }
}
