//! The agent's pure decisions: may this box ask for a lease now, and how long a local
//! deferral may be.
//!
//! Inputs and the (trusted) time in, a decision out; no clock, no disk, no network. The
//! daemon gathers the facts (verified assignment, site time zone, deferral, the latest
//! readiness sample) and acts on the answer. This module must never perform I/O.

use fleetwave_shared::Assignment;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// Why the box is not ready yet; `until` is when it may be worth looking again.
#[derive(Debug, Clone, PartialEq)]
pub enum Wait {
    /// `not_before` of the assignment is in the future.
    NotBefore { until: Timestamp },
    /// Outside the assignment's maintenance window (read in the site's time zone).
    OutsideWindow { opens: Timestamp },
    /// Deferred locally (`fleetwave-agent defer`).
    Deferred { until: Timestamp },
    /// A readiness check failed (`failing` names them).
    ChecksFailing { failing: String },
    /// The window in the assignment cannot be read (a bad time of day).
    BadWindow { message: String },
}

impl Wait {
    /// When to look again (`None`: at the next health sample).
    pub fn until(&self) -> Option<Timestamp> {
        match self {
            Wait::NotBefore { until } | Wait::Deferred { until } => Some(*until),
            Wait::OutsideWindow { opens } => Some(*opens),
            Wait::ChecksFailing { .. } | Wait::BadWindow { .. } => None,
        }
    }

    /// A short reason for `waiting` phase events and `status`.
    pub fn detail(&self) -> String {
        match self {
            Wait::NotBefore { until } => format!("not before {until}"),
            Wait::OutsideWindow { opens } => {
                format!("outside the maintenance window; opens {opens}")
            }
            Wait::Deferred { until } => format!("deferred locally until {until}"),
            Wait::ChecksFailing { failing } => format!("readiness checks failing: {failing}"),
            Wait::BadWindow { message } => format!("maintenance window unusable: {message}"),
        }
    }

    /// A stable code for the kind of wait (to report a change of reason only once).
    pub fn code(&self) -> &'static str {
        match self {
            Wait::NotBefore { .. } => "not_before",
            Wait::OutsideWindow { .. } => "outside_window",
            Wait::Deferred { .. } => "deferred",
            Wait::ChecksFailing { .. } => "checks_failing",
            Wait::BadWindow { .. } => "bad_window",
        }
    }
}

/// The answer of [`readiness`].
#[derive(Debug, Clone, PartialEq)]
pub enum Readiness {
    /// Ask for a lease now.
    Ready,
    /// Not yet.
    Wait(Wait),
    /// The assignment expired: never act on it.
    Expired { expires: Timestamp },
}

/// The facts [`readiness`] decides on.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// The verified assignment.
    pub assignment: &'a Assignment,
    /// The site's time zone (windows are read in it).
    pub zone: &'a TimeZone,
    /// Local deferral, if one is set.
    pub deferred_until: Option<Timestamp>,
    /// Names and reasons of failing readiness checks (health probes and free disk for the
    /// artifacts); empty when all pass.
    pub failing_checks: &'a [String],
}

/// May the box ask for a lease at `now` (the trusted time)? Checked in order: expiry,
/// `not_before`, deferral, window, checks; the first that fails decides.
pub fn readiness(facts: &Facts<'_>, now: Timestamp) -> Readiness {
    let a = facts.assignment;
    if a.expires <= now {
        return Readiness::Expired { expires: a.expires };
    }
    if a.not_before > now {
        return Readiness::Wait(Wait::NotBefore {
            until: a.not_before,
        });
    }
    if let Some(until) = facts.deferred_until
        && until > now
    {
        return Readiness::Wait(Wait::Deferred { until });
    }
    if let Some(window) = &a.window {
        match window.contains(facts.zone, now) {
            Ok(true) => {}
            Ok(false) => {
                return match window.next_open(facts.zone, now) {
                    Ok(opens) => Readiness::Wait(Wait::OutsideWindow { opens }),
                    Err(e) => Readiness::Wait(Wait::BadWindow {
                        message: e.to_string(),
                    }),
                };
            }
            Err(e) => {
                return Readiness::Wait(Wait::BadWindow {
                    message: e.to_string(),
                });
            }
        }
    }
    if !facts.failing_checks.is_empty() {
        return Readiness::Wait(Wait::ChecksFailing {
            failing: facts.failing_checks.join("; "),
        });
    }
    Readiness::Ready
}

/// Why a deferral request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeferError {
    #[error("cannot read duration {0:?}; write it like 6h, 90m, 2d or 1h30m")]
    BadDuration(String),
    #[error("a deferral must be longer than zero")]
    NotPositive,
    #[error(
        "deferral of {asked} is longer than the configured maximum of {max} (install.max_defer_secs)"
    )]
    TooLong { asked: String, max: String },
}

/// Parses `6h`, `90m`, `2d`, `1h30m` (jiff's friendly format).
pub fn parse_duration(text: &str) -> Result<SignedDuration, DeferError> {
    let bad = || DeferError::BadDuration(text.to_string());
    if let Ok(d) = text.parse::<SignedDuration>() {
        return Ok(d);
    }
    // Days are calendar units for jiff; a deferral counts them as 24 hours.
    let span: jiff::Span = text.parse().map_err(|_| bad())?;
    span.to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|_| bad())
}

/// When a deferral of `duration` asked at `now` ends; refused above `max`.
pub fn defer_until(
    now: Timestamp,
    duration: SignedDuration,
    max: SignedDuration,
) -> Result<Timestamp, DeferError> {
    if duration <= SignedDuration::ZERO {
        return Err(DeferError::NotPositive);
    }
    if duration > max {
        return Err(DeferError::TooLong {
            asked: format!("{duration:#}"),
            max: format!("{max:#}"),
        });
    }
    now.checked_add(duration)
        .map_err(|_| DeferError::BadDuration(format!("{duration:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetwave_shared::window::{Day, Window, zone};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn assignment(window: Option<Window>) -> Assignment {
        Assignment {
            site_id: "store-1".into(),
            rollout_id: "r1".into(),
            wave: 0,
            release_sha256: "ab".repeat(32),
            sequence: 3,
            not_before: ts("2026-03-02T00:00:00Z"),
            issued_at: ts("2026-03-01T00:00:00Z"),
            expires: ts("2026-03-10T00:00:00Z"),
            rollback: false,
            window,
        }
    }

    fn decide(
        a: &Assignment,
        deferred: Option<Timestamp>,
        failing: &[String],
        now: &str,
    ) -> Readiness {
        let tz = zone("America/Chicago").unwrap();
        readiness(
            &Facts {
                assignment: a,
                zone: &tz,
                deferred_until: deferred,
                failing_checks: failing,
            },
            ts(now),
        )
    }

    #[test]
    fn ready_when_everything_holds() {
        let a = assignment(None);
        assert_eq!(
            decide(&a, None, &[], "2026-03-03T12:00:00Z"),
            Readiness::Ready
        );
    }

    #[test]
    fn not_before_in_the_future_waits_until_then() {
        let a = assignment(None);
        assert_eq!(
            decide(&a, None, &[], "2026-03-01T12:00:00Z"),
            Readiness::Wait(Wait::NotBefore {
                until: ts("2026-03-02T00:00:00Z")
            })
        );
    }

    #[test]
    fn expired_assignment_is_never_ready() {
        let a = assignment(None);
        // Even with everything else fine, and exactly at expiry.
        assert_eq!(
            decide(&a, None, &[], "2026-03-10T00:00:00Z"),
            Readiness::Expired {
                expires: ts("2026-03-10T00:00:00Z")
            }
        );
    }

    #[test]
    fn closed_window_waits_for_it_to_open_in_site_time() {
        // 02:00-05:00 Chicago time (CST, UTC-6 in early March 2026) on weekdays.
        let w = Window {
            days: vec![Day::Mon, Day::Tue, Day::Wed, Day::Thu, Day::Fri],
            start: "02:00".into(),
            end: "05:00".into(),
        };
        let a = assignment(Some(w));
        // Tuesday 2026-03-03 12:00 UTC = 06:00 Chicago: closed, opens Wednesday 02:00 local.
        assert_eq!(
            decide(&a, None, &[], "2026-03-03T12:00:00Z"),
            Readiness::Wait(Wait::OutsideWindow {
                opens: ts("2026-03-04T08:00:00Z")
            })
        );
        // Wednesday 03:00 local = 09:00 UTC: open.
        assert_eq!(
            decide(&a, None, &[], "2026-03-04T09:00:00Z"),
            Readiness::Ready
        );
    }

    #[test]
    fn deferral_blocks_until_it_ends() {
        let a = assignment(None);
        let until = ts("2026-03-04T00:00:00Z");
        assert_eq!(
            decide(&a, Some(until), &[], "2026-03-03T12:00:00Z"),
            Readiness::Wait(Wait::Deferred { until })
        );
        assert_eq!(
            decide(&a, Some(until), &[], "2026-03-04T00:00:00Z"),
            Readiness::Ready
        );
    }

    #[test]
    fn failing_checks_wait_and_say_which() {
        let a = assignment(None);
        let failing = vec!["disk: 1 GiB free, need 3 GiB".to_string()];
        match decide(&a, None, &failing, "2026-03-03T12:00:00Z") {
            Readiness::Wait(w @ Wait::ChecksFailing { .. }) => {
                assert!(w.detail().contains("need 3 GiB"));
                assert_eq!(w.until(), None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deferral_is_bounded() {
        let now = ts("2026-03-03T12:00:00Z");
        let max = SignedDuration::from_hours(72);
        assert_eq!(
            defer_until(now, parse_duration("6h").unwrap(), max).unwrap(),
            ts("2026-03-03T18:00:00Z")
        );
        assert_eq!(
            defer_until(now, parse_duration("3d").unwrap(), max).unwrap(),
            ts("2026-03-06T12:00:00Z")
        );
        let err = defer_until(now, parse_duration("73h").unwrap(), max).unwrap_err();
        assert!(matches!(err, DeferError::TooLong { .. }), "{err}");
        assert!(err.to_string().contains("install.max_defer_secs"));
        assert_eq!(
            defer_until(now, SignedDuration::ZERO, max).unwrap_err(),
            DeferError::NotPositive
        );
        assert!(matches!(
            parse_duration("soon"),
            Err(DeferError::BadDuration(_))
        ));
        assert_eq!(
            parse_duration("1h30m").unwrap(),
            SignedDuration::from_mins(90)
        );
    }
}
