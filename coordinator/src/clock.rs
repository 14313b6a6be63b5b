//! The coordinator's clock: every "now" in the coordinator is read through a [`Clock`],
//! handed to the engine and the application where the server is built
//! ([`crate::server::start_with_clock`]).
//!
//! In production it is the system clock. Tests use an adjustable one ([`Clock::adjustable`])
//! and move it forward ([`Clock::advance`]) instead of sleeping until a bake time or a
//! cache's freshness has passed. An adjustable clock still runs with real time (it is
//! the system clock plus an offset), so whatever else in a test depends on real time
//! (agents, sessions, timeouts) keeps working.
//!
//! Reading it is one branch and, for an adjustable clock, one atomic load: cheap enough
//! for the poll path. `tokio::time::Instant`s that only pace loops do not go through it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use jiff::{SignedDuration, Timestamp};

/// Where the coordinator reads the time. Cloning shares the clock.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// None: the system clock. Some: nanoseconds added to the system clock.
    offset: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { offset: None }
    }

    /// A clock that runs with the system clock until moved with [`Clock::advance`].
    pub fn adjustable() -> Clock {
        Clock {
            offset: Some(Arc::new(AtomicI64::new(0))),
        }
    }

    /// The time now.
    pub fn now(&self) -> Timestamp {
        let now = Timestamp::now();
        match &self.offset {
            None => now,
            Some(offset) => {
                let by = SignedDuration::from_nanos(offset.load(Ordering::Relaxed));
                now.checked_add(by).unwrap_or(now)
            }
        }
    }

    /// Moves an adjustable clock forward by `by` (tests). Panics on the system clock:
    /// only a test moves time.
    pub fn advance(&self, by: std::time::Duration) {
        let offset = self
            .offset
            .as_ref()
            .expect("only an adjustable clock (Clock::adjustable) can be moved");
        let nanos =
            i64::try_from(by.as_nanos()).expect("a test advances the clock by less than 292 years");
        offset.fetch_add(nanos, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adjustable_clock_moves_forward() {
        let clock = Clock::adjustable();
        let before = clock.now();
        clock.advance(std::time::Duration::from_secs(3600));
        let after = clock.now();
        assert!(after.duration_since(before) >= SignedDuration::from_secs(3600));
        let shared = clock.clone();
        assert!(shared.now() >= after);
    }

    #[test]
    #[should_panic(expected = "adjustable")]
    fn the_system_clock_does_not_move() {
        Clock::system().advance(std::time::Duration::from_secs(1));
    }
}
