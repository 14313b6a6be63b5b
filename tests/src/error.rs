//! The harness's one error type: what went wrong while setting up or driving a scenario.
//!
//! Messages name the binary, file or address at fault and say what to do. This module
//! must never swallow the captured process logs: a failure without them is unreadable.

use std::path::PathBuf;
use std::time::Duration;

/// Everything the harness itself can fail with.
#[derive(thiserror::Error)]
pub enum HarnessError {
    #[error(
        "binary {name} not found at {}: run `cargo build --workspace --bins` first \
         (or point FLEETWAVE_BIN_DIR at the directory holding the fleetwave binaries)",
        path.display()
    )]
    MissingBinary { name: String, path: PathBuf },

    #[error("could not start {label} ({}): {source}", program.display())]
    Spawn {
        label: String,
        program: PathBuf,
        source: std::io::Error,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },

    #[error("`{command}` exited with {status}\n{logs}")]
    CommandFailed {
        command: String,
        status: String,
        logs: String,
    },

    #[error(
        "timed out after {:.1?} ({attempts} attempts) waiting for: {description}\n\
         last error: {last_error}\n{logs}",
        elapsed
    )]
    Timeout {
        description: String,
        elapsed: Duration,
        attempts: u32,
        last_error: String,
        logs: String,
    },

    #[error("{method} {url} answered {status}: {body}")]
    Api {
        method: String,
        url: String,
        /// 0 when no answer came at all (connection refused, TLS failure...).
        status: u16,
        body: String,
    },

    #[error("fault proxy: {0}")]
    Proxy(String),

    #[error("fleet fixture: {0}")]
    Fleet(String),
}

/// Shows the message (with its logs) rather than the fields, so that `unwrap()` and a test
/// returning `Result` print something readable.
impl std::fmt::Debug for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl HarnessError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> HarnessError {
        HarnessError::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = HarnessError> = std::result::Result<T, E>;
