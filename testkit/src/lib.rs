//! Test support shared by every fleetwave test suite (coordinator, agent, CLI and the
//! end-to-end harness): waiting for a condition without fixed sleeps, and a real PostgreSQL
//! server in a temporary directory ([`postgres::PgServer`]).
//!
//! [`eventually`] (async) and [`wait_blocking`] (threads) poll a check until it succeeds
//! or a deadline passes. A slow or loaded machine makes a test slower, never red:
//! deadlines are generous and scaled by `FLEETWAVE_TEST_PATIENCE` (or the older
//! `FLEETWAVE_E2E_PATIENCE`). Nothing here asserts on how long something took.

pub mod postgres;
pub mod weed;

use std::future::Future;
use std::time::{Duration, Instant};

/// The default deadline for one condition (before [`patience`] scaling).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(90);

/// The first pause between attempts; it doubles up to [`MAX_PAUSE`].
pub const FIRST_PAUSE: Duration = Duration::from_millis(20);
/// The longest pause between attempts.
pub const MAX_PAUSE: Duration = Duration::from_millis(250);

/// Scales a deadline by `FLEETWAVE_TEST_PATIENCE` (or `FLEETWAVE_E2E_PATIENCE`), a
/// positive number (default 1), for very slow or very loaded machines.
pub fn patience(deadline: Duration) -> Duration {
    let factor = ["FLEETWAVE_TEST_PATIENCE", "FLEETWAVE_E2E_PATIENCE"]
        .iter()
        .find_map(|k| std::env::var(k).ok())
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|f| f.is_finite() && *f > 0.0)
        .unwrap_or(1.0);
    deadline.mul_f64(factor)
}

/// A check that did not succeed before its deadline.
#[derive(Debug)]
pub struct Timeout<E> {
    pub elapsed: Duration,
    pub attempts: u32,
    /// What the last attempt said.
    pub last: E,
}

/// The pauses between attempts: 20 ms, doubling to 250 ms, never past the deadline.
struct Pacer {
    start: Instant,
    deadline: Duration,
    pause: Duration,
    attempts: u32,
}

impl Pacer {
    fn new(deadline: Duration) -> Pacer {
        Pacer {
            start: Instant::now(),
            deadline,
            pause: FIRST_PAUSE,
            attempts: 0,
        }
    }

    /// After a failed attempt: the pause before the next one, or None past the deadline.
    fn next_pause(&mut self) -> Option<Duration> {
        self.attempts += 1;
        let elapsed = self.start.elapsed();
        if elapsed >= self.deadline {
            return None;
        }
        let pause = self.pause.min(self.deadline - elapsed);
        self.pause = (self.pause * 2).min(MAX_PAUSE);
        Some(pause)
    }

    fn timeout<E>(&self, last: E) -> Timeout<E> {
        Timeout {
            elapsed: self.start.elapsed(),
            attempts: self.attempts,
            last,
        }
    }
}

/// Runs `check` on this thread until it returns `Ok`, or returns [`Timeout`] with the
/// last error once `deadline` has passed.
pub fn wait_blocking<T, E>(
    deadline: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> Result<T, Timeout<E>> {
    let mut pacer = Pacer::new(deadline);
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) => match pacer.next_pause() {
                Some(pause) => std::thread::sleep(pause),
                None => return Err(pacer.timeout(e)),
            },
        }
    }
}

/// Awaits `check` until it returns `Ok`, or returns [`Timeout`] with the last error once
/// `deadline` has passed.
pub async fn wait<T, E, F, Fut>(deadline: Duration, mut check: F) -> Result<T, Timeout<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut pacer = Pacer::new(deadline);
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) => match pacer.next_pause() {
                Some(pause) => tokio::time::sleep(pause).await,
                None => return Err(pacer.timeout(e)),
            },
        }
    }
}

/// Awaits `check` until it returns `Some`, or panics naming `what` after
/// [`DEFAULT_DEADLINE`] scaled by [`patience`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let waited = wait(patience(DEFAULT_DEADLINE), || {
        let attempt = check();
        async move { attempt.await.ok_or(()) }
    })
    .await;
    match waited {
        Ok(v) => v,
        Err(t) => panic!(
            "gave up waiting for: {what} (after {:.1?}, {} attempts)",
            t.elapsed, t.attempts
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_ok_value_and_the_last_error() {
        let mut n = 0;
        let got = wait_blocking(Duration::from_secs(30), || {
            n += 1;
            if n >= 3 { Ok(n * 10) } else { Err(n) }
        });
        assert_eq!(got.unwrap(), 30);

        let mut n = 0;
        let t = wait_blocking(Duration::from_millis(100), || -> Result<(), u32> {
            n += 1;
            Err(n)
        })
        .unwrap_err();
        assert_eq!(t.last, n, "the last error, not the first");
        assert_eq!(t.attempts, n);
        assert!(n > 1, "it tried more than once");
    }

    #[tokio::test]
    async fn eventually_awaits_until_some() {
        let mut n = 0;
        let got = eventually("n to reach 3", || {
            n += 1;
            let v = n;
            async move { (v >= 3).then_some(v) }
        })
        .await;
        assert_eq!(got, 3);
    }

    #[tokio::test]
    async fn wait_gives_up_with_the_last_error() {
        let t = wait(Duration::from_millis(60), || async { Err::<(), _>("no") })
            .await
            .unwrap_err();
        assert_eq!(t.last, "no");
        assert!(t.attempts >= 2);
    }
}
