//! Captured process output, and the per-thread registry of live processes' logs.
//!
//! Every [`crate::Process`] writes its stdout and stderr to files and registers them here
//! for the thread that spawned it, so a failing [`crate::eventually`] can show what the
//! processes of *this* test said. The registry only holds weak references: it never keeps
//! a log alive, and it must never print anything by itself.

use std::fmt::Write as _;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::thread::ThreadId;

/// How much of each log a failure message shows (its end).
pub const LOG_TAIL_BYTES: u64 = 24 * 1024;

/// One process's captured output.
#[derive(Debug)]
pub struct LogFiles {
    pub label: String,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl LogFiles {
    /// The end of both files, headed by the process label.
    pub fn tail(&self) -> String {
        let mut out = String::new();
        for (stream, path) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let text = read_tail(path, LOG_TAIL_BYTES);
            if text.trim().is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "----- {} {stream} ({}) -----",
                self.label,
                path.display()
            );
            out.push_str(&text);
            if !text.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }
}

fn read_tail(path: &Path, max: u64) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if start > 0 {
        format!("[... {start} earlier bytes ...]\n{text}")
    } else {
        text
    }
}

type Registry = Mutex<Vec<(ThreadId, Weak<LogFiles>)>>;

static REGISTRY: Registry = Mutex::new(Vec::new());

pub(crate) fn register(logs: &Arc<LogFiles>) {
    let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    reg.retain(|(_, weak)| weak.strong_count() > 0);
    reg.push((std::thread::current().id(), Arc::downgrade(logs)));
}

/// The log tails of every live process spawned by the current thread.
pub fn live_logs() -> String {
    let me = std::thread::current().id();
    let reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = String::new();
    for (thread, weak) in reg.iter() {
        if *thread != me {
            continue;
        }
        if let Some(logs) = weak.upgrade() {
            out.push_str(&logs.tail());
        }
    }
    if out.is_empty() {
        out.push_str("(no captured process output on this test thread)\n");
    }
    out
}
