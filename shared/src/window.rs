//! Maintenance windows in site-local time, and fleet-wide freezes.
//!
//! A window is a set of weekdays and a local start and end time, read in the site's IANA
//! time zone, so "02:00-05:00" stays 02:00-05:00 local across daylight-saving changes.
//! A window whose end is not after its start runs past midnight into the next day; its
//! weekday is the day it opens. Pure: the time is always an argument.

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan as _};
use serde::{Deserialize, Serialize};

/// When a site may install, in its own local time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Days the window opens on (`mon`..`sun`); empty means every day.
    #[serde(default)]
    pub days: Vec<Day>,
    /// Local opening time, `HH:MM`.
    pub start: String,
    /// Local closing time, `HH:MM`; not after `start` means the next day.
    pub end: String,
}

/// A weekday as written in plans: `mon`, `tue`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Day {
    fn weekday(self) -> Weekday {
        match self {
            Day::Mon => Weekday::Monday,
            Day::Tue => Weekday::Tuesday,
            Day::Wed => Weekday::Wednesday,
            Day::Thu => Weekday::Thursday,
            Day::Fri => Weekday::Friday,
            Day::Sat => Weekday::Saturday,
            Day::Sun => Weekday::Sunday,
        }
    }
}

/// Why a window or zone could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("window {field} {value:?} is not a time of day in HH:MM form")]
    BadTime { field: &'static str, value: String },
    #[error("time zone {0:?} is not a known IANA time zone")]
    UnknownZone(String),
}

/// Looks up an IANA zone name such as `Europe/Berlin` (or `UTC`).
pub fn zone(name: &str) -> Result<TimeZone, WindowError> {
    TimeZone::get(name).map_err(|_| WindowError::UnknownZone(name.to_string()))
}

fn parse_time(field: &'static str, value: &str) -> Result<Time, WindowError> {
    let bad = || WindowError::BadTime {
        field,
        value: value.to_string(),
    };
    let (h, m) = value.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: i8 = h.parse().map_err(|_| bad())?;
    let m: i8 = m.parse().map_err(|_| bad())?;
    Time::new(h, m, 0, 0).map_err(|_| bad())
}

impl Window {
    /// Checks that `start` and `end` are valid times.
    pub fn validate(&self) -> Result<(), WindowError> {
        parse_time("start", &self.start)?;
        parse_time("end", &self.end)?;
        Ok(())
    }

    fn opens_on(&self, day: Weekday) -> bool {
        self.days.is_empty() || self.days.iter().any(|d| d.weekday() == day)
    }

    /// Whether `at` falls inside the window in zone `tz`.
    pub fn contains(&self, tz: &TimeZone, at: Timestamp) -> Result<bool, WindowError> {
        Ok(self.current_or_next(tz, at)?.0 <= at)
    }

    /// When the window next opens at or after `at` (`at` itself when it is open now).
    pub fn next_open(&self, tz: &TimeZone, at: Timestamp) -> Result<Timestamp, WindowError> {
        let (open, _) = self.current_or_next(tz, at)?;
        Ok(open.max(at))
    }

    /// The interval `[open, close)` that contains `at`, or else the next one after it.
    fn current_or_next(
        &self,
        tz: &TimeZone,
        at: Timestamp,
    ) -> Result<(Timestamp, Timestamp), WindowError> {
        let start = parse_time("start", &self.start)?;
        let end = parse_time("end", &self.end)?;
        let today = at.to_zoned(tz.clone()).date();
        // An opening yesterday can still be open now (windows past midnight); look a week
        // ahead for the next one.
        for offset in -1..=8i64 {
            let Ok(day) = today.checked_add(offset.days()) else {
                continue;
            };
            if !self.opens_on(day.weekday()) {
                continue;
            }
            let end_day = if end <= start {
                match day.tomorrow() {
                    Ok(d) => d,
                    Err(_) => continue,
                }
            } else {
                day
            };
            let (Ok(open), Ok(close)) = (
                day.to_datetime(start).to_zoned(tz.clone()),
                end_day.to_datetime(end).to_zoned(tz.clone()),
            ) else {
                continue;
            };
            let (open, close) = (open.timestamp(), close.timestamp());
            if close > at {
                return Ok((open, close));
            }
        }
        // Unreachable for a valid window (it opens at least once a week); treat as closed.
        Ok((Timestamp::MAX, Timestamp::MAX))
    }
}

/// A fleet-wide period in which no lease is granted (e.g. the week of Thanksgiving).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Freeze {
    pub start: Timestamp,
    pub end: Timestamp,
    #[serde(default)]
    pub reason: String,
}

impl Freeze {
    pub fn contains(&self, at: Timestamp) -> bool {
        self.start <= at && at < self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn window(days: Vec<Day>, start: &str, end: &str) -> Window {
        Window {
            days,
            start: start.into(),
            end: end.into(),
        }
    }

    #[test]
    fn window_is_read_in_site_local_time() {
        let berlin = zone("Europe/Berlin").unwrap();
        let w = window(vec![], "02:00", "05:00");
        // 2026-01-15 01:30 UTC is 02:30 in Berlin (CET, UTC+1).
        assert!(w.contains(&berlin, ts("2026-01-15T01:30:00Z")).unwrap());
        assert!(!w.contains(&berlin, ts("2026-01-15T04:30:00Z")).unwrap());
        // In summer (CEST, UTC+2) 02:30 local is 00:30 UTC.
        assert!(w.contains(&berlin, ts("2026-07-15T00:30:00Z")).unwrap());
        assert!(!w.contains(&berlin, ts("2026-07-15T03:30:00Z")).unwrap());
    }

    #[test]
    fn window_past_midnight_belongs_to_the_day_it_opens() {
        let utc = zone("UTC").unwrap();
        // 2026-11-27 is a Friday.
        let w = window(vec![Day::Fri], "22:00", "04:00");
        assert!(w.contains(&utc, ts("2026-11-27T23:00:00Z")).unwrap());
        assert!(w.contains(&utc, ts("2026-11-28T03:59:00Z")).unwrap());
        assert!(!w.contains(&utc, ts("2026-11-28T04:00:00Z")).unwrap());
        assert!(!w.contains(&utc, ts("2026-11-28T23:00:00Z")).unwrap());
        assert_eq!(
            w.next_open(&utc, ts("2026-11-28T05:00:00Z")).unwrap(),
            ts("2026-12-04T22:00:00Z")
        );
    }

    #[test]
    fn window_on_the_day_daylight_saving_starts() {
        // 2026-03-29: Berlin skips 02:00-03:00. A 02:30-04:00 window still opens (at 03:00
        // local, the first instant that exists) and closes at 04:00 local.
        let berlin = zone("Europe/Berlin").unwrap();
        let w = window(vec![], "02:30", "04:00");
        assert!(w.contains(&berlin, ts("2026-03-29T01:30:00Z")).unwrap());
        assert!(!w.contains(&berlin, ts("2026-03-29T02:00:00Z")).unwrap());
    }

    #[test]
    fn bad_window_names_the_field() {
        let w = window(vec![], "2am", "05:00");
        assert_eq!(
            w.validate().unwrap_err().to_string(),
            "window start \"2am\" is not a time of day in HH:MM form"
        );
        assert!(zone("Mars/Olympus").is_err());
    }

    #[test]
    fn freeze_is_half_open() {
        let f = Freeze {
            start: ts("2026-11-23T00:00:00Z"),
            end: ts("2026-11-30T00:00:00Z"),
            reason: "thanksgiving".into(),
        };
        assert!(f.contains(ts("2026-11-27T12:00:00Z")));
        assert!(!f.contains(ts("2026-11-30T00:00:00Z")));
    }
}
