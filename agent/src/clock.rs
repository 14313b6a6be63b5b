//! The agent's clock: where the daemon reads the time.
//!
//! The daemon never calls `Timestamp::now()` or `Instant::now()` itself; it asks the
//! [`Clock`] in its context. In production that is [`Clock::system`]; tests build a
//! [`Clock::manual`] and move it ([`Clock::advance`], [`Clock::set`]) instead of sleeping.
//! Both the wall time ([`Clock::now`], what documents expire against, what reports and the
//! journal carry) and the monotonic time ([`Clock::instant`], what back-offs count on) move
//! together on a manual clock.
//!
//! Timers that wait (`tokio::time::sleep`) stay tokio's: tests that need them to pass
//! quickly pause tokio's clock (`tokio::time::pause`, dev feature `test-util`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};

/// A source of the current time: the system's, or one a test sets. Cheap to clone; clones
/// of a manual clock share its time.
#[derive(Debug, Clone)]
pub struct Clock(Source);

#[derive(Debug, Clone)]
enum Source {
    System,
    Manual(Arc<Mutex<Manual>>),
}

#[derive(Debug)]
struct Manual {
    wall: Timestamp,
    /// The monotonic time at `wall`'s start, and how far the clock moved since.
    base: Instant,
    moved: Duration,
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

impl Clock {
    /// The operating system's clock.
    pub fn system() -> Clock {
        Clock(Source::System)
    }

    /// A clock that stands at `start` until a test moves it.
    pub fn manual(start: Timestamp) -> Clock {
        Clock(Source::Manual(Arc::new(Mutex::new(Manual {
            wall: start,
            base: Instant::now(),
            moved: Duration::ZERO,
        }))))
    }

    /// The wall-clock time.
    pub fn now(&self) -> Timestamp {
        match &self.0 {
            Source::System => Timestamp::now(),
            Source::Manual(m) => lock(m).wall,
        }
    }

    /// The monotonic time (for back-offs and elapsed times).
    pub fn instant(&self) -> Instant {
        match &self.0 {
            Source::System => Instant::now(),
            Source::Manual(m) => {
                let m = lock(m);
                m.base + m.moved
            }
        }
    }

    /// Whether this is a test's clock.
    pub fn is_manual(&self) -> bool {
        matches!(self.0, Source::Manual(_))
    }

    /// Moves a manual clock forward by `by` (wall and monotonic time alike).
    ///
    /// # Panics
    /// On the system clock, which nobody moves.
    pub fn advance(&self, by: Duration) {
        let Source::Manual(m) = &self.0 else {
            panic!("the system clock cannot be moved");
        };
        let mut m = lock(m);
        m.moved += by;
        m.wall = m
            .wall
            .checked_add(SignedDuration::try_from(by).expect("a duration within range"))
            .expect("a time within range");
    }

    /// Sets the wall time of a manual clock (backwards too: a box's clock can jump). The
    /// monotonic time moves forward by the step if it is forward, and stays otherwise.
    ///
    /// # Panics
    /// On the system clock.
    pub fn set(&self, to: Timestamp) {
        let Source::Manual(m) = &self.0 else {
            panic!("the system clock cannot be set");
        };
        let mut m = lock(m);
        if let Ok(step) = Duration::try_from(to.duration_since(m.wall)) {
            m.moved += step;
        }
        m.wall = to;
    }
}

fn lock(m: &Mutex<Manual>) -> std::sync::MutexGuard<'_, Manual> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_its_clones_move_with_it() {
        let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let clock = Clock::manual(start);
        let other = clock.clone();
        let i0 = clock.instant();
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_secs(90));
        assert_eq!(other.now(), start + SignedDuration::from_secs(90));
        assert_eq!(other.instant() - i0, Duration::from_secs(90));
        // Set backwards: wall time jumps, monotonic time does not go back.
        clock.set(start);
        assert_eq!(clock.now(), start);
        assert_eq!(clock.instant() - i0, Duration::from_secs(90));
        clock.set(start + SignedDuration::from_secs(100));
        assert_eq!(clock.instant() - i0, Duration::from_secs(190));
        assert!(clock.is_manual() && !Clock::system().is_manual());
    }

    #[test]
    fn the_system_clock_follows_the_system() {
        let before = Timestamp::now();
        let now = Clock::system().now();
        assert!(now >= before && now <= Timestamp::now());
    }
}
