//! Checked time arithmetic: a time plus a duration, or an error that names what
//! overflowed.
//!
//! Plans and the configuration bound every duration (a year at most), but times also come
//! from agents and from older databases; `Timestamp + SignedDuration` panics past the year
//! 9999, and a panic in the wave controller stops every rollout. Every "time plus
//! duration" in the coordinator goes through [`later`]. Pure: never reads a clock.

use jiff::{SignedDuration, Timestamp};

/// A time plus a duration runs past the last time that can be represented (9999-12-31).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} is past the last representable time: {at} plus {by:#} overflows (a duration or \
     time this large is not meant; check the plan, the configuration or the site's clock)"
)]
pub struct TimeOverflow {
    /// What was being computed, e.g. `the assignment's expiry`.
    pub what: &'static str,
    pub at: Timestamp,
    pub by: SignedDuration,
}

/// `at + by`, or [`TimeOverflow`] naming `what`.
pub fn later(
    at: Timestamp,
    by: SignedDuration,
    what: &'static str,
) -> Result<Timestamp, TimeOverflow> {
    at.checked_add(by)
        .map_err(|_| TimeOverflow { what, at, by })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overflow_is_an_error_naming_what_was_computed() {
        let t: Timestamp = "2026-03-02T10:00:00Z".parse().unwrap();
        assert_eq!(
            later(t, SignedDuration::from_hours(1), "x").unwrap(),
            "2026-03-02T11:00:00Z".parse::<Timestamp>().unwrap()
        );
        let huge = SignedDuration::from_secs(100_000_000_000 * 86_400);
        let err = later(t, huge, "the wave's bake end").unwrap_err();
        assert_eq!(err.what, "the wave's bake end");
        assert!(
            err.to_string()
                .starts_with("the wave's bake end is past the last representable time"),
            "{err}"
        );
        assert!(later(Timestamp::MAX, SignedDuration::from_secs(1), "x").is_err());
    }
}
