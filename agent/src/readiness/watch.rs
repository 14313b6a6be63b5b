//! The health watch of an install's verify period.
//!
//! [`WatchState`] is the pure decision (feed it samples, it says when the install has
//! failed); [`watch`] drives it on tokio's clock: a sample at the start, then one every
//! `interval`, until the period is over. It sleeps between samples and never spins; it
//! does not decide what a sample contains (the caller's sampler does).

use std::time::Duration;

use super::HealthSample;
use super::config::WatchConfig;

/// Why a verify period failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unhealthy after {samples} samples ({consecutive_unhealthy} in a row): {reason}")]
pub struct WatchFailure {
    /// Samples taken.
    pub samples: u32,
    /// Unhealthy samples in a row at the end.
    pub consecutive_unhealthy: u32,
    /// The failing checks of the last sample (`name: reason; ...`).
    pub reason: String,
    /// The last sample.
    pub last: HealthSample,
}

/// The verify-period decision, fed one sample at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchState {
    fail_after: u32,
    samples: u32,
    consecutive_unhealthy: u32,
}

impl WatchState {
    /// Fails after `fail_after` (at least 1) unhealthy samples in a row.
    pub fn new(fail_after: u32) -> WatchState {
        WatchState {
            fail_after: fail_after.max(1),
            samples: 0,
            consecutive_unhealthy: 0,
        }
    }

    /// Records a sample; `Err` as soon as `fail_after` samples in a row were unhealthy.
    pub fn observe(&mut self, sample: &HealthSample) -> Result<(), WatchFailure> {
        self.samples += 1;
        if sample.healthy() {
            self.consecutive_unhealthy = 0;
            Ok(())
        } else {
            self.consecutive_unhealthy += 1;
            if self.consecutive_unhealthy >= self.fail_after {
                Err(self.failure(sample))
            } else {
                Ok(())
            }
        }
    }

    /// The end of the period: passes only if the last sample was healthy.
    pub fn finish(&self, last: &HealthSample) -> Result<(), WatchFailure> {
        if self.consecutive_unhealthy == 0 && self.samples > 0 {
            Ok(())
        } else {
            Err(self.failure(last))
        }
    }

    pub fn samples(&self) -> u32 {
        self.samples
    }

    fn failure(&self, last: &HealthSample) -> WatchFailure {
        let reason = last.failing_text();
        WatchFailure {
            samples: self.samples,
            consecutive_unhealthy: self.consecutive_unhealthy,
            reason: if reason.is_empty() {
                "no sample taken".into()
            } else {
                reason
            },
            last: last.clone(),
        }
    }
}

/// Watches health for the verify period: samples with `sampler` at the start, every
/// `cfg.interval_secs`, and once more at the end of the period (`period` overrides
/// `cfg.period_secs`, e.g. from the release's `verify_period_secs`). Each sample is handed
/// to `on_sample` (the daemon queues it as a heartbeat). Returns the last, healthy, sample,
/// or the failure as soon as `cfg.fail_after` samples in a row were unhealthy or if the
/// last one is unhealthy.
pub async fn watch<S, F>(
    cfg: &WatchConfig,
    period: Option<Duration>,
    mut sampler: S,
    mut on_sample: F,
) -> Result<HealthSample, WatchFailure>
where
    S: AsyncFnMut() -> HealthSample,
    F: FnMut(&HealthSample),
{
    let period = period.unwrap_or(Duration::from_secs(cfg.period_secs));
    let interval = Duration::from_secs(cfg.interval_secs.max(1));
    let deadline = tokio::time::Instant::now() + period;
    let mut state = WatchState::new(cfg.fail_after);
    loop {
        let sample = sampler().await;
        on_sample(&sample);
        state.observe(&sample)?;
        let now = tokio::time::Instant::now();
        if now >= deadline {
            state.finish(&sample)?;
            return Ok(sample);
        }
        tokio::time::sleep_until((now + interval).min(deadline)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readiness::CheckResult;

    fn sample(ok: bool) -> HealthSample {
        let mut s = HealthSample::new();
        s.push(if ok {
            CheckResult::pass("http:app", "status 200")
        } else {
            CheckResult::fail("http:app", "status 500")
        });
        s
    }

    #[test]
    fn fails_after_k_unhealthy_in_a_row_only() {
        let mut w = WatchState::new(3);
        for ok in [false, false, true, false, false] {
            w.observe(&sample(ok)).unwrap();
        }
        let f = w.observe(&sample(false)).unwrap_err();
        assert_eq!((f.samples, f.consecutive_unhealthy), (6, 3));
        assert_eq!(f.reason, "http:app: status 500");
    }

    #[test]
    fn an_unhealthy_last_sample_fails_at_the_end() {
        let mut w = WatchState::new(5);
        w.observe(&sample(true)).unwrap();
        w.observe(&sample(false)).unwrap();
        assert!(w.finish(&sample(false)).is_err());
        w.observe(&sample(true)).unwrap();
        assert!(w.finish(&sample(true)).is_ok());
        assert!(
            WatchState::new(1).finish(&sample(true)).is_err(),
            "no samples"
        );
    }

    fn cfg(period: u64, interval: u64, fail_after: u32) -> WatchConfig {
        WatchConfig {
            period_secs: period,
            interval_secs: interval,
            fail_after,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn samples_through_the_period_on_the_injected_clock() {
        let mut taken = 0u32;
        let mut seen = Vec::new();
        let result = watch(
            &cfg(60, 10, 3),
            None,
            async || {
                taken += 1;
                sample(true)
            },
            |s| seen.push(s.healthy()),
        )
        .await;
        assert!(result.is_ok());
        // t = 0, 10, ..., 60
        assert_eq!(taken, 7);
        assert_eq!(seen.len(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_early_when_unhealthy_in_a_row() {
        let mut taken = 0u32;
        let result = watch(
            &cfg(600, 10, 2),
            None,
            async || {
                taken += 1;
                sample(taken < 3)
            },
            |_| {},
        )
        .await;
        let f = result.unwrap_err();
        assert_eq!(taken, 4);
        assert_eq!(f.consecutive_unhealthy, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_period_override_and_a_zero_period_take_one_sample() {
        let mut taken = 0u32;
        let result = watch(
            &cfg(600, 10, 2),
            Some(Duration::ZERO),
            async || {
                taken += 1;
                sample(false)
            },
            |_| {},
        )
        .await;
        assert!(result.is_err());
        assert_eq!(taken, 1);
    }
}
