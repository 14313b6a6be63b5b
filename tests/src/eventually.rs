//! Waiting for a condition without fixed sleeps.
//!
//! [`eventually`] polls a closure until it returns `Ok` or the deadline passes; on timeout
//! the error carries the description, the last error and the captured output of every live
//! process of the test thread. A slow machine makes a scenario slower, never red: deadlines
//! are generous and scaled by `FLEETWAVE_TEST_PATIENCE`. This module must never assert on how
//! long something took.

use std::time::Duration;

use crate::error::{HarnessError, Result};

pub use fleetwave_testkit::{DEFAULT_DEADLINE, patience};

/// Polls `check` until it returns `Ok(value)`, or fails with [`HarnessError::Timeout`] once
/// `deadline` has passed ([`fleetwave_testkit::wait_blocking`], the one waiting loop of
/// every suite); the timeout carries the output of this thread's live processes.
pub fn eventually<T>(
    description: &str,
    deadline: Duration,
    check: impl FnMut() -> anyhow::Result<T>,
) -> Result<T> {
    fleetwave_testkit::wait_blocking(deadline, check).map_err(|t| HarnessError::Timeout {
        description: description.to_string(),
        elapsed: t.elapsed,
        attempts: t.attempts,
        last_error: format!("{:#}", t.last),
        logs: crate::logs::live_logs(),
    })
}

/// [`eventually`] with [`DEFAULT_DEADLINE`] scaled by [`patience`].
pub fn eventually_default<T>(
    description: &str,
    check: impl FnMut() -> anyhow::Result<T>,
) -> Result<T> {
    eventually(description, patience(DEFAULT_DEADLINE), check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_ok_value() {
        let mut n = 0;
        let got = eventually("n to reach 3", Duration::from_secs(30), || {
            n += 1;
            anyhow::ensure!(n >= 3, "n is {n}");
            Ok(n * 10)
        })
        .unwrap();
        assert_eq!(got, 30);
    }

    #[test]
    fn times_out_with_the_description_and_the_last_error() {
        let mut n = 0;
        let err = eventually(
            "the impossible",
            Duration::from_millis(200),
            || -> anyhow::Result<()> {
                n += 1;
                anyhow::bail!("attempt {n} failed")
            },
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("waiting for: the impossible"), "{text}");
        // The last error, not the first.
        assert!(
            text.contains(&format!("last error: attempt {n} failed")),
            "{text}"
        );
        assert!(n > 1, "it polled more than once");
    }

    #[test]
    fn a_timeout_shows_the_output_of_this_threads_processes() {
        let dir = tempfile::tempdir().unwrap();
        let _proc = crate::Spawn::new("talker", "/bin/sh", dir.path())
            .arg("-c")
            .arg("echo distinctive-line-42; sleep 1000")
            .start()
            .unwrap();
        let stdout = dir.path().join("talker.stdout.log");
        eventually("the line", Duration::from_secs(30), || {
            anyhow::ensure!(std::fs::read_to_string(&stdout)?.contains("distinctive-line-42"));
            Ok(())
        })
        .unwrap();
        let err = eventually(
            "never",
            Duration::from_millis(50),
            || -> anyhow::Result<()> { anyhow::bail!("no") },
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("distinctive-line-42"), "{text}");
        assert!(text.contains("talker stdout"), "{text}");
    }
}
