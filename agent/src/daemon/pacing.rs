//! Pacing: jitter, the poll back-off and the per-install back-off of failed steps.

use std::time::Duration;

/// `interval × (1 ± jitter)`, from the operating system's random generator.
pub fn jittered(base: Duration, jitter: f64) -> Duration {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    let unit = (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
    let factor = 1.0 + jitter * (2.0 * unit - 1.0);
    base.mul_f64(factor.max(0.0))
}

/// `base × (1 + jitter × u)` with `u` uniform in [0, 1): spread upward only, so a delay
/// the coordinator asked for is never cut short, yet boxes told the same delay do not come
/// back in step.
pub fn spread_up(base: Duration, jitter: f64) -> Duration {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    let unit = (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
    base.mul_f64(1.0 + jitter.max(0.0) * unit)
}

/// The delay before trying the coordinator again after a failed request: the next step of
/// the exponential back-off (`backoff_next`, already jittered), but never shorter than the
/// coordinator's `Retry-After`, itself spread upward by `jitter`. A coordinator that keeps
/// answering `503` with `Retry-After: 1` (its long-poll limit is full) therefore sees each
/// box back off further on every refusal, at a random offset, instead of every box coming
/// back exactly one second later.
pub fn retry_delay(retry_after: Option<Duration>, backoff_next: Duration, jitter: f64) -> Duration {
    match retry_after {
        Some(asked) => backoff_next.max(spread_up(asked, jitter)),
        None => backoff_next,
    }
}

/// When an install step that failed in a way worth retrying may be tried again: an
/// exponential back-off (from `min`, doubling with jitter, up to `max`), kept per install
/// and forgotten when the step succeeds or another install is open. Polls go on meanwhile;
/// only the step waits. Downloads (`prepare`: coordinator unreachable, artifact not there
/// yet) use the poll back-off (`poll.backoff_min_secs` .. `poll.backoff_max_secs`),
/// rollbacks `install.rollback_retry_min_secs` .. `install.rollback_retry_max_secs`.
pub struct StepPacer {
    min: Duration,
    max: Duration,
    /// The journal entry the back-off belongs to, its state and the earliest next try.
    pending: Option<(i64, backon::ExponentialBackoff, std::time::Instant)>,
}

impl StepPacer {
    pub fn new(min: Duration, max: Duration) -> StepPacer {
        StepPacer {
            min,
            max,
            pending: None,
        }
    }

    /// The pacer of downloads: the poll back-off.
    pub fn downloads(poll: &crate::config::PollConfig) -> StepPacer {
        StepPacer::new(
            Duration::from_secs(poll.backoff_min_secs),
            Duration::from_secs(poll.backoff_max_secs),
        )
    }

    /// The pacer of failed rollbacks: `install.rollback_retry_*`.
    pub fn rollbacks(install: &crate::config::InstallConfig) -> StepPacer {
        StepPacer::new(
            Duration::from_secs(install.rollback_retry_min_secs),
            Duration::from_secs(install.rollback_retry_max_secs),
        )
    }

    /// The step of install `entry` failed at `now`: returns the delay before the next try
    /// (the next back-off step; a new back-off for a different install).
    pub fn failed(&mut self, entry: i64, now: std::time::Instant) -> Duration {
        let mut backoff = match self.pending.take() {
            Some((id, backoff, _)) if id == entry => backoff,
            _ => exponential(self.min, self.max),
        };
        let delay = backoff.next().unwrap_or(self.max);
        self.pending = Some((entry, backoff, now + delay));
        delay
    }

    /// How long install `entry` must still wait before its step is tried again, if it
    /// must. A back-off of another install is forgotten.
    pub fn wait(&mut self, entry: Option<i64>, now: std::time::Instant) -> Option<Duration> {
        match &self.pending {
            Some((id, _, at)) if Some(*id) == entry => {
                (*at > now).then(|| at.saturating_duration_since(now))
            }
            Some(_) => {
                self.pending = None;
                None
            }
            None => None,
        }
    }

    /// The step succeeded: the next failure starts from `min` again.
    pub fn succeeded(&mut self) {
        self.pending = None;
    }
}

/// The next back-off step, with the coordinator's `Retry-After` as the least delay.
pub(super) fn backoff_delay(
    backoff: &mut backon::ExponentialBackoff,
    poll: &crate::config::PollConfig,
    retry_after: Option<Duration>,
) -> Duration {
    let next = backoff
        .next()
        .unwrap_or(Duration::from_secs(poll.backoff_max_secs));
    retry_delay(retry_after, next, poll.jitter)
}

pub(super) fn new_backoff(poll: &crate::config::PollConfig) -> backon::ExponentialBackoff {
    exponential(
        Duration::from_secs(poll.backoff_min_secs),
        Duration::from_secs(poll.backoff_max_secs),
    )
}

/// Doubling from `min` with jitter, at most `max`, for ever.
pub(super) fn exponential(min: Duration, max: Duration) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder as _;
    backon::ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(min)
        .with_max_delay(max)
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_a_floor_spread_upward_and_the_backoff_still_grows() {
        let secs = Duration::from_secs;
        // `Retry-After: 1` (a full long-poll limit) never brings a box back sooner than
        // its back-off says.
        assert_eq!(retry_delay(Some(secs(1)), secs(5), 0.2), secs(5));
        assert_eq!(retry_delay(None, secs(5), 0.2), secs(5));
        // A longer Retry-After wins and is never cut short, but is spread upward.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let d = retry_delay(Some(secs(100)), secs(5), 0.2);
            assert!(d >= secs(100) && d < secs(120), "{d:?}");
            seen.insert(d.as_millis());
        }
        assert!(
            seen.len() > 1,
            "boxes told the same Retry-After come back at different times"
        );
        // Refused again and again with `Retry-After: 1`, a box backs off further each time.
        let poll = crate::config::PollConfig {
            backoff_min_secs: 1,
            backoff_max_secs: 600,
            ..Default::default()
        };
        let mut backoff = new_backoff(&poll);
        let delays: Vec<Duration> = (0..6)
            .map(|_| backoff_delay(&mut backoff, &poll, Some(secs(1))))
            .collect();
        assert!(delays.iter().all(|d| *d >= secs(1)), "{delays:?}");
        assert!(delays[5] >= secs(32), "{delays:?}");
    }

    #[test]
    fn download_retries_back_off_per_install_and_reset_on_success() {
        let poll = crate::config::PollConfig {
            backoff_min_secs: 2,
            backoff_max_secs: 60,
            ..Default::default()
        };
        let secs = Duration::from_secs;
        let t0 = std::time::Instant::now();
        let mut pacer = StepPacer::downloads(&poll);
        assert_eq!(pacer.wait(Some(7), t0), None, "nothing failed yet");
        let delays: Vec<Duration> = (0..5).map(|_| pacer.failed(7, t0)).collect();
        assert!(delays[0] >= secs(2) && delays[0] < secs(4), "{delays:?}");
        assert!(delays[2] >= secs(8), "it grows: {delays:?}");
        assert!(delays[4] >= secs(32), "{delays:?}");
        // The install waits until its back-off has run, not after.
        let last = delays[4];
        assert_eq!(pacer.wait(Some(7), t0), Some(last));
        assert_eq!(pacer.wait(Some(7), t0 + last), None);
        // A different install starts from the minimum; so does a retry after a success.
        assert!(pacer.failed(8, t0) < secs(4));
        pacer.succeeded();
        assert_eq!(pacer.wait(Some(8), t0), None);
        assert!(pacer.failed(8, t0) < secs(4));
        // Another open install (or none) forgets the old back-off.
        assert_eq!(pacer.wait(None, t0), None);
        assert_eq!(pacer.wait(Some(8), t0), None);
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        let base = Duration::from_secs(100);
        for _ in 0..200 {
            let d = jittered(base, 0.2);
            assert!(
                d >= Duration::from_secs(80) && d <= Duration::from_secs(120),
                "{d:?}"
            );
        }
        assert_eq!(jittered(base, 0.0), base);
    }
}
