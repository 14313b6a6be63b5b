//! Running operator commands (probes, restart commands, scripts) with a timeout and a
//! bounded, captured output.
//!
//! Every external command the agent runs goes through [`run`]: it never waits forever (a
//! timeout kills the command's whole process group), never keeps more than
//! [`RunOptions::max_output`] bytes of output in memory, and never waits on a pipe held
//! open by a daemon the command left running in the background.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A command line from configuration or release install parameters.
///
/// A TOML/JSON string runs through `/bin/sh -c` (so pipes and `&&` work); a list runs
/// directly, the first element being the program (looked up in `PATH`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CommandLine {
    /// `"systemctl restart pos && sleep 1"`: run with `/bin/sh -c`.
    Shell(String),
    /// `["systemctl", "restart", "pos"]`: program and arguments, no shell.
    Argv(Vec<String>),
}

impl CommandLine {
    /// A list command line from string slices.
    pub fn argv<S: AsRef<str>>(parts: &[S]) -> CommandLine {
        CommandLine::Argv(parts.iter().map(|s| s.as_ref().to_string()).collect())
    }

    /// Parses an install parameter value (a string or a list of strings).
    pub fn from_json(value: &serde_json::Value) -> Result<CommandLine, String> {
        serde_json::from_value::<CommandLine>(value.clone())
            .map_err(|_| "expected a string or a list of strings".to_string())
            .and_then(|c| c.validated())
    }

    /// Refuses empty command lines.
    pub fn validated(self) -> Result<CommandLine, String> {
        match &self {
            CommandLine::Shell(s) if s.trim().is_empty() => Err("empty command".into()),
            CommandLine::Argv(v) if v.is_empty() || v[0].is_empty() => {
                Err("empty command list".into())
            }
            _ => Ok(self),
        }
    }

    /// This command line with more arguments appended (shell-quoted for [`Self::Shell`]).
    pub fn with_args<S: AsRef<str>>(&self, args: &[S]) -> CommandLine {
        match self {
            CommandLine::Argv(v) => {
                let mut v = v.clone();
                v.extend(args.iter().map(|a| a.as_ref().to_string()));
                CommandLine::Argv(v)
            }
            CommandLine::Shell(s) => {
                let mut s = s.clone();
                for a in args {
                    s.push(' ');
                    s.push_str(&shell_quote(a.as_ref()));
                }
                CommandLine::Shell(s)
            }
        }
    }

    /// The command line as an operator would type it (for logs and error messages).
    pub fn display(&self) -> String {
        match self {
            CommandLine::Shell(s) => s.clone(),
            CommandLine::Argv(v) => v
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    fn command(&self) -> tokio::process::Command {
        match self {
            CommandLine::Shell(s) => {
                let mut c = tokio::process::Command::new("/bin/sh");
                c.arg("-c").arg(s);
                c
            }
            CommandLine::Argv(v) => {
                let mut c = tokio::process::Command::new(&v[0]);
                c.args(&v[1..]);
                c
            }
        }
    }
}

impl std::fmt::Display for CommandLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

/// Quotes `s` for `/bin/sh` when it contains anything but safe characters.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// How to run a command.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Kill the command (its whole process group) after this long.
    pub timeout: Duration,
    /// Extra environment variables (the agent's own environment is inherited).
    pub env: Vec<(String, String)>,
    /// Working directory; the agent's when `None`.
    pub cwd: Option<PathBuf>,
    /// Most bytes of stdout+stderr kept (the rest is dropped, marked `[truncated]`).
    pub max_output: usize,
}

impl RunOptions {
    /// Default options with this timeout: no extra env, 4 KiB of output kept.
    pub fn with_timeout(timeout: Duration) -> RunOptions {
        RunOptions {
            timeout,
            env: Vec::new(),
            cwd: None,
            max_output: 4096,
        }
    }
}

/// What a finished command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit code; `None` when the command was killed by a signal.
    pub code: Option<i32>,
    /// Standard output, at most `max_output` bytes (lossy UTF-8).
    pub stdout: String,
    /// Standard error, at most `max_output` bytes (lossy UTF-8).
    pub stderr: String,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The last non-empty line of stderr, else of stdout, shortened: for short reasons.
    pub fn brief(&self) -> String {
        let pick = |s: &str| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_string())
        };
        let line = pick(&self.stderr)
            .or_else(|| pick(&self.stdout))
            .unwrap_or_default();
        truncate_chars(&line, 160)
    }

    /// The end of what the command printed (stdout, then stderr), at most `max` characters:
    /// for reports and logs that must stay small. Empty when it printed nothing.
    pub fn tail(&self, max: usize) -> String {
        let both: Vec<&str> = [self.stdout.trim(), self.stderr.trim()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        let text = both.join("\n");
        let n = text.chars().count();
        if n <= max {
            return text;
        }
        let mut t = String::from("…");
        t.extend(text.chars().skip(n - max.saturating_sub(1)));
        t
    }

    /// "exit code N" or "killed by a signal".
    pub fn status_text(&self) -> String {
        match self.code {
            Some(c) => format!("exit code {c}"),
            None => "killed by a signal".to_string(),
        }
    }
}

/// Shortens `s` to at most `max` characters, marking the cut with `…`.
pub fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Why a command could not be run to completion.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {secs} s and was killed")]
    Timeout { command: String, secs: u64 },
    #[error("waiting for `{command}` failed: {source}")]
    Wait {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

/// How long output readers may keep going after the command exited (a daemon started by a
/// restart command may hold the pipes open for ever).
const PIPE_GRACE: Duration = Duration::from_millis(500);

/// Runs `cmd` to completion (or until the timeout), capturing bounded output.
///
/// The command runs in its own process group with stdin closed; on timeout the whole group
/// is killed. A non-zero exit is not an error here: look at [`CommandOutput::code`].
pub async fn run(cmd: &CommandLine, opts: &RunOptions) -> Result<CommandOutput, ProcessError> {
    let display = cmd.display();
    let mut command = cmd.command();
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    for (k, v) in &opts.env {
        command.env(k, v);
    }
    if let Some(dir) = &opts.cwd {
        command.current_dir(dir);
    }
    let mut child = command.spawn().map_err(|source| ProcessError::Spawn {
        command: display.clone(),
        source,
    })?;
    let pid = child.id();
    let out = tokio::spawn(read_bounded(child.stdout.take(), opts.max_output));
    let err = tokio::spawn(read_bounded(child.stderr.take(), opts.max_output));

    let status = match tokio::time::timeout(opts.timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(source)) => {
            return Err(ProcessError::Wait {
                command: display,
                source,
            });
        }
        Err(_) => {
            if let Some(pid) = pid {
                kill_group(pid).await;
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
            out.abort();
            err.abort();
            return Err(ProcessError::Timeout {
                command: display,
                secs: opts.timeout.as_secs(),
            });
        }
    };
    let stdout = collect(out).await;
    let stderr = collect(err).await;
    Ok(CommandOutput {
        code: status.code(),
        stdout,
        stderr,
    })
}

async fn collect(task: tokio::task::JoinHandle<String>) -> String {
    let abort = task.abort_handle();
    match tokio::time::timeout(PIPE_GRACE, task).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => String::new(),
        Err(_) => {
            abort.abort();
            String::from("[output still open after exit; not collected]")
        }
    }
}

async fn read_bounded<R: AsyncRead + Unpin>(pipe: Option<R>, max: usize) -> String {
    let Some(mut pipe) = pipe else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    let mut truncated = false;
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                if room < n {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    let mut s = String::from_utf8_lossy(&kept).into_owned();
    if truncated {
        s.push_str("\n[truncated]");
    }
    s
}

/// Kills a process group with `kill -KILL -- -PGID` (best effort).
async fn kill_group(pgid: u32) {
    let _ = tokio::process::Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_args_quotes_for_the_shell() {
        let c = CommandLine::Shell("kubectl".into()).with_args(&["get", "node", "a b"]);
        assert_eq!(c.display(), "kubectl get node 'a b'");
        let c = CommandLine::argv(&["k3s", "kubectl"]).with_args(&["get"]);
        assert_eq!(c, CommandLine::argv(&["k3s", "kubectl", "get"]));
    }

    #[test]
    fn empty_commands_are_refused() {
        assert!(CommandLine::from_json(&serde_json::json!("  ")).is_err());
        assert!(CommandLine::from_json(&serde_json::json!([])).is_err());
        assert!(CommandLine::from_json(&serde_json::json!(42)).is_err());
        assert!(CommandLine::from_json(&serde_json::json!(["true"])).is_ok());
    }

    #[tokio::test]
    async fn output_is_captured_and_truncated() {
        let mut opts = RunOptions::with_timeout(Duration::from_secs(30));
        opts.max_output = 10;
        let out = run(
            &CommandLine::Shell("echo 0123456789abcdef; echo oops >&2; exit 3".into()),
            &opts,
        )
        .await
        .unwrap();
        assert_eq!(out.code, Some(3));
        assert!(out.stdout.starts_with("0123456789"));
        assert!(out.stdout.ends_with("[truncated]"));
        assert_eq!(out.brief(), "oops");
    }

    #[tokio::test]
    async fn a_command_that_hangs_is_killed() {
        let opts = RunOptions::with_timeout(Duration::from_millis(200));
        let err = run(&CommandLine::Shell("sleep 30".into()), &opts)
            .await
            .unwrap_err();
        assert!(matches!(err, ProcessError::Timeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let opts = RunOptions::with_timeout(Duration::from_secs(5));
        let err = run(&CommandLine::argv(&["/nonexistent/prog"]), &opts)
            .await
            .unwrap_err();
        assert!(matches!(err, ProcessError::Spawn { .. }), "{err}");
    }
}
