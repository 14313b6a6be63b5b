//! Golden signals on the wire: one release stream's per-minute summary of the metrics the
//! agent scraped from the application it manages (rates, ratios, histogram quantiles,
//! gauges), compact enough that a heartbeat's worth (five minutes of ten signals) stays
//! under 4 kB of JSON.
//!
//! Shapes only: no I/O, no statistics (the agent summarizes, the coordinator judges).

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Most signals one stream's minute may carry (the coordinator refuses more).
pub const MAX_SIGNALS_PER_MINUTE: usize = 32;
/// Longest signal name.
pub const MAX_SIGNAL_NAME_LEN: usize = 64;
/// Most minutes an agent keeps queued (a day's worth of one stream; when full, the oldest
/// minutes are dropped first and `fleetwave-agent status` says so).
pub const MAX_SIGNAL_MINUTES: usize = 1440;
/// Most minutes one report batch may carry (the coordinator refuses a batch with more,
/// naming this bound, and says it in its session answer).
pub const MAX_SIGNAL_MINUTES_PER_REPORT: usize = 60;

/// One minute of one release stream's signals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SignalMinute {
    /// The release stream (release `name`) whose application was scraped.
    pub stream: String,
    /// The release installed for that stream during the minute, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_id: Option<String>,
    /// Start of the minute (UTC, whole minute).
    pub minute: Timestamp,
    /// Signal name → the minute's value (a rate per second, a ratio, a quantile in the
    /// histogram's unit, or a gauge). A signal without a value this minute (no scrape
    /// succeeded, a ratio over zero requests) is absent.
    #[serde(default)]
    pub values: BTreeMap<String, f64>,
    /// Signals whose counters went backwards during the minute (the application
    /// restarted or reset them); their rates count from the reset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resets: Vec<String>,
    /// Scrapes attempted in the minute, and how many failed.
    pub scrapes: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed_scrapes: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl SignalMinute {
    /// What went wrong in this minute, in words for an operator (failed scrapes, counters
    /// that went backwards, no value at all); `None` for a clean minute.
    pub fn trouble(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.failed_scrapes > 0 {
            parts.push(format!(
                "{} of {} scrape(s) failed in the minute (see `fleetwave-agent status` on the box)",
                self.failed_scrapes, self.scrapes
            ));
        }
        if self.values.is_empty() {
            parts.push("no signal had a value".to_string());
        }
        if !self.resets.is_empty() {
            parts.push(format!(
                "counters went backwards (the app restarted?) for {}",
                self.resets.join(", ")
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// What is wrong with this minute for the coordinator's bounds, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.stream.is_empty() || self.stream.len() > MAX_SIGNAL_NAME_LEN {
            return Some(format!(
                "stream {:?} is empty or longer than {MAX_SIGNAL_NAME_LEN} bytes",
                self.stream
            ));
        }
        if self.minute.as_second() % 60 != 0 || self.minute.subsec_nanosecond() != 0 {
            return Some(format!(
                "stream {:?}: minute {} is not the start of a whole minute",
                self.stream, self.minute
            ));
        }
        if self.resets.len() > MAX_SIGNALS_PER_MINUTE {
            return Some(format!(
                "stream {:?}: {} resets in one minute, at most {MAX_SIGNALS_PER_MINUTE}",
                self.stream,
                self.resets.len()
            ));
        }
        if self.values.len() > MAX_SIGNALS_PER_MINUTE {
            return Some(format!(
                "stream {:?}: {} signals in one minute, at most {MAX_SIGNALS_PER_MINUTE}",
                self.stream,
                self.values.len()
            ));
        }
        if let Some(name) = self
            .values
            .keys()
            .chain(self.resets.iter())
            .find(|n| n.is_empty() || n.len() > MAX_SIGNAL_NAME_LEN)
        {
            return Some(format!(
                "stream {:?}: signal name {name:?} is empty or longer than {MAX_SIGNAL_NAME_LEN} bytes",
                self.stream
            ));
        }
        if let Some((name, v)) = self.values.iter().find(|(_, v)| !v.is_finite()) {
            return Some(format!(
                "stream {:?}: signal {name:?} is {v}, not a finite number",
                self.stream
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The heartbeat interval is 5 minutes by default: five minutes of ten signals with
    /// realistic names, full-precision values, a reset and a failed scrape.
    #[test]
    fn a_heartbeats_worth_of_ten_signals_stays_under_4_kb() {
        let names = [
            "http_request_rate",
            "http_error_ratio",
            "checkout_latency_p50_seconds",
            "checkout_latency_p95_seconds",
            "checkout_latency_p99_seconds",
            "payment_failure_ratio",
            "queue_depth",
            "memory_resident_bytes",
            "process_restarts_rate",
            "db_connection_wait_p95_seconds",
        ];
        let start: Timestamp = "2026-12-04T18:00:00Z".parse().unwrap();
        let minutes: Vec<SignalMinute> = (0..5)
            .map(|m| SignalMinute {
                stream: "shop-backend".into(),
                release_id: Some("shop-backend-2.14.3".into()),
                minute: start + jiff::SignedDuration::from_mins(m),
                values: names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (n.to_string(), (i as f64 + 1.0) / 7.0 * 1234.5678))
                    .collect(),
                resets: vec!["http_request_rate".into()],
                scrapes: 1,
                failed_scrapes: 1,
            })
            .collect();
        let json = serde_json::to_string(&minutes).unwrap();
        assert!(json.len() < 4096, "{} bytes: {json}", json.len());
        // Full-precision values (17 significant digits) survive within float precision.
        let back: Vec<SignalMinute> = serde_json::from_str(&json).unwrap();
        for (b, m) in back.iter().zip(&minutes) {
            assert_eq!(
                (&b.stream, b.minute, &b.resets),
                (&m.stream, m.minute, &m.resets)
            );
            for (k, v) in &m.values {
                assert!((b.values[k] - v).abs() <= v.abs() * 1e-15, "{k}");
            }
        }
        assert!(minutes.iter().all(|m| m.problem().is_none()));
    }

    /// Old agents and old coordinators keep working: a batch without signals is exactly
    /// the old wire form (an old coordinator refuses unknown fields), an old agent's batch
    /// parses, and an old coordinator's session answer means "send no signals".
    #[test]
    fn without_signals_the_wire_is_what_older_versions_speak() {
        let batch = crate::protocol::ReportBatch {
            events: vec![],
            signals: vec![],
        };
        assert_eq!(serde_json::to_string(&batch).unwrap(), r#"{"events":[]}"#);
        let old: crate::protocol::ReportBatch = serde_json::from_str(r#"{"events":[]}"#).unwrap();
        assert!(old.signals.is_empty());
        let session: crate::protocol::SessionResponse =
            serde_json::from_str(r#"{"token":"t","expires_at":"2026-12-04T18:00:00Z"}"#).unwrap();
        assert_eq!(session.signal_minutes_per_report, None);
    }

    #[test]
    fn trouble_names_failed_scrapes_resets_and_empty_minutes() {
        let mut m = SignalMinute {
            stream: "shop".into(),
            release_id: None,
            minute: "2026-12-04T18:00:00Z".parse().unwrap(),
            values: [("error_ratio".to_string(), 0.01)].into_iter().collect(),
            resets: vec![],
            scrapes: 4,
            failed_scrapes: 0,
        };
        assert_eq!(m.trouble(), None);
        m.failed_scrapes = 4;
        m.values.clear();
        m.resets = vec!["http_requests".into()];
        let t = m.trouble().unwrap();
        assert!(t.contains("4 of 4 scrape(s) failed"), "{t}");
        assert!(t.contains("no signal had a value"), "{t}");
        assert!(t.contains("http_requests"), "{t}");
    }

    #[test]
    fn out_of_bounds_minutes_are_named() {
        let mut m = SignalMinute {
            stream: "shop".into(),
            release_id: None,
            minute: "2026-12-04T18:00:00Z".parse().unwrap(),
            values: BTreeMap::new(),
            resets: vec![],
            scrapes: 1,
            failed_scrapes: 0,
        };
        m.values.insert("x".repeat(65), 1.0);
        assert!(m.problem().unwrap().contains("longer than 64"));
        m.values.clear();
        for i in 0..33 {
            m.values.insert(format!("s{i}"), 1.0);
        }
        assert!(m.problem().unwrap().contains("33 signals"));
        m.values.clear();
        m.minute = "2026-12-04T18:00:30Z".parse().unwrap();
        assert!(
            m.problem()
                .unwrap()
                .contains("not the start of a whole minute")
        );
    }
}
