//! From scrapes to per-minute signal values, per release stream. Pure: texts, times and
//! settings in, [`SignalMinute`]s out; the scrape loop ([`super`]) does the I/O.
//!
//! - A **rate** is a counter's increase over the seconds between two successful scrapes,
//!   credited to the minute of the later scrape. A counter that goes backwards was reset
//!   (the application restarted): the increase counts from 0, as Prometheus' `rate()`
//!   does, and the minute lists the signal under `resets`.
//! - A **ratio** is the numerator's increase over the denominator's in the minute (no
//!   value when the denominator did not move).
//! - A **quantile** interpolates linearly within the bucket holding the rank, over the
//!   buckets' increases in the minute (Prometheus' `histogram_quantile` over a one-minute
//!   `rate`): the lowest bucket starts at 0; a rank in the `+Inf` bucket gives the highest
//!   finite bound.
//! - A **gauge** is the minute's last value or the average of its scrapes.
//!
//! Series with the same name whose labels match the signal's are summed.

use jiff::Timestamp;

use fleetwave_shared::protocol::signals::SignalMinute;

use super::config::{GaugeAggregate, SignalDef, SignalKind};
use super::exposition::{self, ExpositionError};

/// What one scrape gave for one signal.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    Counter(f64),
    Pair(f64, f64),
    /// `(le, cumulative count)`, sorted by `le`, ending with `+Inf`.
    Buckets(Vec<(f64, f64)>),
    Gauge(f64),
}

/// Reads every signal of `defs` from an exposition. The outer error refuses the whole
/// body (garbage, too many series); an inner error says why one signal has no reading
/// (its metric is absent, a value is not a number).
pub fn read(
    text: &str,
    defs: &[SignalDef],
    max_series: usize,
) -> Result<Vec<Result<Reading, String>>, ExpositionError> {
    #[derive(Default)]
    struct Acc {
        a: Option<f64>,
        b: Option<f64>,
        buckets: Vec<(f64, f64)>,
        problem: Option<String>,
    }
    let mut accs: Vec<Acc> = defs.iter().map(|_| Acc::default()).collect();
    let names: Vec<Vec<String>> = defs.iter().map(|d| d.kind.series_names()).collect();
    exposition::parse(text, max_series, |s| {
        for ((def, acc), wanted) in defs.iter().zip(accs.iter_mut()).zip(&names) {
            let Some(which) = wanted.iter().position(|n| n == s.name) else {
                continue;
            };
            if !def
                .labels
                .iter()
                .all(|(k, v)| s.label(k) == Some(v.as_str()))
            {
                continue;
            }
            if s.value.is_nan()
                || (s.value.is_infinite() && !matches!(def.kind, SignalKind::Gauge { .. }))
            {
                acc.problem
                    .get_or_insert_with(|| format!("{} is {}, not a number", s.name, s.value));
                continue;
            }
            if let SignalKind::Quantile { .. } = def.kind {
                let le = match s.label("le").map(|v| match v {
                    "+Inf" | "Inf" | "+inf" | "inf" => Ok(f64::INFINITY),
                    v => v.parse::<f64>(),
                }) {
                    Some(Ok(le)) if !le.is_nan() => le,
                    _ => {
                        acc.problem.get_or_insert_with(|| {
                            format!("{} without a numeric `le` label", s.name)
                        });
                        continue;
                    }
                };
                match acc.buckets.iter_mut().find(|(l, _)| *l == le) {
                    Some(b) => b.1 += s.value,
                    None => acc.buckets.push((le, s.value)),
                }
            } else if which == 0 {
                *acc.a.get_or_insert(0.0) += s.value;
            } else {
                *acc.b.get_or_insert(0.0) += s.value;
            }
        }
    })?;
    Ok(defs
        .iter()
        .zip(accs)
        .zip(&names)
        .map(|((def, mut acc), wanted)| {
            if let Some(p) = acc.problem {
                return Err(p);
            }
            let missing = |n: &str| format!("no series {n}{}", label_note(def));
            match &def.kind {
                SignalKind::Rate { .. } => acc
                    .a
                    .map(Reading::Counter)
                    .ok_or_else(|| missing(&wanted[0])),
                SignalKind::Gauge { .. } => {
                    acc.a.map(Reading::Gauge).ok_or_else(|| missing(&wanted[0]))
                }
                SignalKind::Ratio { .. } => match (acc.a, acc.b) {
                    (Some(a), Some(b)) => Ok(Reading::Pair(a, b)),
                    (None, _) => Err(missing(&wanted[0])),
                    (_, None) => Err(missing(&wanted[1])),
                },
                SignalKind::Quantile { .. } => {
                    if acc.buckets.is_empty() {
                        return Err(missing(&wanted[0]));
                    }
                    acc.buckets.sort_by(|x, y| x.0.total_cmp(&y.0));
                    if acc.buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
                        return Err(format!("{} has no le=\"+Inf\" bucket", wanted[0]));
                    }
                    Ok(Reading::Buckets(acc.buckets))
                }
            }
        })
        .collect())
}

fn label_note(def: &SignalDef) -> String {
    if def.labels.is_empty() {
        return String::new();
    }
    let l: Vec<String> = def
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    format!(" with {{{}}}", l.join(","))
}

/// Prometheus' `histogram_quantile` over `(le, cumulative count)` buckets sorted by `le`
/// and ending with `+Inf`. `None` without observations.
pub fn bucket_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    if buckets.len() < 2 || buckets.last()?.0 != f64::INFINITY {
        return None;
    }
    // Cumulative counts must not decrease (they can, by floating-point error or a scrape
    // racing an observation): keep the running maximum.
    let mut counts: Vec<f64> = Vec::with_capacity(buckets.len());
    let mut max = 0.0_f64;
    for b in buckets {
        max = max.max(b.1);
        counts.push(max);
    }
    let total = *counts.last()?;
    if total <= 0.0 {
        return None;
    }
    let mut rank = q * total;
    let b = counts.iter().position(|&c| c >= rank)?;
    if b == buckets.len() - 1 {
        return Some(buckets[b - 1].0);
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return Some(buckets[0].0);
    }
    let (start, before) = if b == 0 {
        (0.0, 0.0)
    } else {
        (buckets[b - 1].0, counts[b - 1])
    };
    let end = buckets[b].0;
    let count = counts[b] - before;
    rank -= before;
    Some(start + (end - start) * rank / count)
}

#[derive(Debug, Clone, Default)]
struct SignalAcc {
    increase: f64,
    den_increase: f64,
    seconds: f64,
    buckets: Vec<(f64, f64)>,
    gauge_last: Option<f64>,
    gauge_sum: f64,
    gauge_n: u32,
    reset: bool,
}

#[derive(Debug, Clone)]
struct MinuteAcc {
    start: Timestamp,
    scrapes: u32,
    failed: u32,
    release_id: Option<String>,
    signals: Vec<SignalAcc>,
}

/// One stream's running summary.
#[derive(Debug, Clone)]
pub struct Summarizer {
    stream: String,
    defs: Vec<SignalDef>,
    last: Vec<Option<(Timestamp, Reading)>>,
    minute: Option<MinuteAcc>,
}

/// The start of `at`'s minute.
pub fn minute_of(at: Timestamp) -> Timestamp {
    let s = at.as_second().div_euclid(60) * 60;
    Timestamp::from_second(s).expect("a whole minute of a valid timestamp is valid")
}

impl Summarizer {
    pub fn new(stream: impl Into<String>, defs: Vec<SignalDef>) -> Summarizer {
        let last = defs.iter().map(|_| None).collect();
        Summarizer {
            stream: stream.into(),
            defs,
            last,
            minute: None,
        }
    }

    /// Takes one scrape at `at`: its readings, or `None` when the scrape failed. Returns
    /// the previous minute's summary when `at` starts a new minute.
    pub fn observe(
        &mut self,
        at: Timestamp,
        readings: Option<&[Result<Reading, String>]>,
        release_id: Option<&str>,
    ) -> Option<SignalMinute> {
        let start = minute_of(at);
        let finished = match &self.minute {
            Some(m) if m.start != start => self.finish(),
            _ => None,
        };
        let n = self.defs.len();
        let minute = self.minute.get_or_insert_with(|| MinuteAcc {
            start,
            scrapes: 0,
            failed: 0,
            release_id: None,
            signals: vec![SignalAcc::default(); n],
        });
        minute.scrapes += 1;
        minute.release_id = release_id.map(str::to_string);
        let Some(readings) = readings else {
            minute.failed += 1;
            return finished;
        };
        for ((reading, last), acc) in readings
            .iter()
            .zip(self.last.iter_mut())
            .zip(minute.signals.iter_mut())
        {
            let Ok(reading) = reading else { continue };
            if let Reading::Gauge(v) = reading {
                acc.gauge_last = Some(*v);
                acc.gauge_sum += v;
                acc.gauge_n += 1;
            }
            if let Some((then, prev)) = last.as_ref() {
                let seconds = at.duration_since(*then).as_secs_f64();
                if seconds > 0.0 {
                    accumulate(acc, prev, reading, seconds);
                }
            }
            *last = Some((at, reading.clone()));
        }
        finished
    }

    /// Ends the current minute now (shutdown, or nothing scraped since).
    pub fn finish(&mut self) -> Option<SignalMinute> {
        let m = self.minute.take()?;
        let mut values = std::collections::BTreeMap::new();
        let mut resets = Vec::new();
        for (def, acc) in self.defs.iter().zip(&m.signals) {
            let value = match &def.kind {
                SignalKind::Rate { .. } => (acc.seconds > 0.0).then(|| acc.increase / acc.seconds),
                SignalKind::Ratio { .. } => {
                    (acc.den_increase > 0.0).then(|| acc.increase / acc.den_increase)
                }
                SignalKind::Quantile { quantile, .. } => bucket_quantile(*quantile, &acc.buckets),
                SignalKind::Gauge { aggregate, .. } => match aggregate {
                    GaugeAggregate::Last => acc.gauge_last,
                    GaugeAggregate::Avg => {
                        (acc.gauge_n > 0).then(|| acc.gauge_sum / acc.gauge_n as f64)
                    }
                },
            };
            if let Some(v) = value.filter(|v| v.is_finite()) {
                values.insert(def.name.clone(), v);
            }
            if acc.reset {
                resets.push(def.name.clone());
            }
        }
        Some(SignalMinute {
            stream: self.stream.clone(),
            release_id: m.release_id,
            minute: m.start,
            values,
            resets,
            scrapes: m.scrapes,
            failed_scrapes: m.failed,
        })
    }
}

/// A counter's increase from `prev` to `cur`: from 0 when it went backwards (a reset).
fn increase(prev: f64, cur: f64) -> (f64, bool) {
    if cur < prev {
        (cur, true)
    } else {
        (cur - prev, false)
    }
}

fn accumulate(acc: &mut SignalAcc, prev: &Reading, cur: &Reading, seconds: f64) {
    match (prev, cur) {
        (Reading::Counter(p), Reading::Counter(c)) => {
            let (d, reset) = increase(*p, *c);
            acc.increase += d;
            acc.seconds += seconds;
            acc.reset |= reset;
        }
        (Reading::Pair(pn, pd), Reading::Pair(cn, cd)) => {
            let (dn, rn) = increase(*pn, *cn);
            let (dd, rd) = increase(*pd, *cd);
            acc.increase += dn;
            acc.den_increase += dd;
            acc.seconds += seconds;
            acc.reset |= rn || rd;
        }
        (Reading::Buckets(p), Reading::Buckets(c)) => {
            let same_bounds = p.len() == c.len() && p.iter().zip(c).all(|(a, b)| a.0 == b.0);
            let count = |b: &[(f64, f64)]| b.last().map_or(0.0, |x| x.1);
            let delta: Vec<(f64, f64)> = if same_bounds && count(c) >= count(p) {
                p.iter()
                    .zip(c)
                    .map(|(a, b)| (b.0, (b.1 - a.1).max(0.0)))
                    .collect()
            } else {
                acc.reset = true;
                c.clone()
            };
            let acc_bounds_match = acc.buckets.len() == delta.len()
                && acc.buckets.iter().zip(&delta).all(|(a, b)| a.0 == b.0);
            if acc_bounds_match {
                for (a, d) in acc.buckets.iter_mut().zip(&delta) {
                    a.1 += d.1;
                }
            } else {
                acc.buckets = delta;
            }
            acc.seconds += seconds;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn def(name: &str, kind: SignalKind) -> SignalDef {
        SignalDef {
            name: name.into(),
            kind,
            labels: BTreeMap::new(),
        }
    }

    fn defs() -> Vec<SignalDef> {
        vec![
            def(
                "request_rate",
                SignalKind::Rate {
                    metric: "http_requests_total".into(),
                },
            ),
            def(
                "error_ratio",
                SignalKind::Ratio {
                    numerator: "http_errors_total".into(),
                    denominator: "http_requests_total".into(),
                },
            ),
            def(
                "latency_p95",
                SignalKind::Quantile {
                    metric: "http_request_duration_seconds".into(),
                    quantile: 0.95,
                },
            ),
            def(
                "queue_depth",
                SignalKind::Gauge {
                    metric: "queue_depth".into(),
                    aggregate: GaugeAggregate::Avg,
                },
            ),
        ]
    }

    fn body(requests: f64, errors: f64, buckets: [f64; 4], queue: f64) -> String {
        format!(
            "# TYPE http_requests_total counter\n\
             http_requests_total{{code=\"200\"}} {}\n\
             http_requests_total{{code=\"500\"}} {errors}\n\
             http_errors_total {errors}\n\
             http_request_duration_seconds_bucket{{le=\"0.1\"}} {}\n\
             http_request_duration_seconds_bucket{{le=\"0.5\"}} {}\n\
             http_request_duration_seconds_bucket{{le=\"1\"}} {}\n\
             http_request_duration_seconds_bucket{{le=\"+Inf\"}} {}\n\
             queue_depth {queue}\n",
            requests - errors,
            buckets[0],
            buckets[1],
            buckets[2],
            buckets[3],
        )
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn histogram_quantile_matches_prometheus() {
        let b = [
            (0.1, 50.0),
            (0.5, 90.0),
            (1.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        // rank 47.5 in the first bucket: 0 + 0.1 * 47.5 / 50.
        assert!((bucket_quantile(0.475, &b).unwrap() - 0.095).abs() < 1e-12);
        // rank 95 in (0.5, 1]: 0.5 + 0.5 * (95 - 90) / 10.
        assert!((bucket_quantile(0.95, &b).unwrap() - 0.75).abs() < 1e-12);
        // A rank in +Inf: the highest finite bound.
        let b = [(0.1, 10.0), (f64::INFINITY, 100.0)];
        assert_eq!(bucket_quantile(0.99, &b), Some(0.1));
        assert_eq!(
            bucket_quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]),
            None
        );
        assert_eq!(
            bucket_quantile(0.5, &[(0.1, 1.0), (1.0, 2.0)]),
            None,
            "no +Inf bucket"
        );
    }

    #[test]
    fn one_minute_of_every_kind() {
        let d = defs();
        let mut s = Summarizer::new("shop", d.clone());
        let r0 = read(&body(1000.0, 10.0, [0.0, 0.0, 0.0, 0.0], 4.0), &d, 100).unwrap();
        assert_eq!(
            s.observe(t("2026-12-04T18:00:30Z"), Some(&r0), Some("shop-1")),
            None
        );
        // One minute later: 600 more requests (10/s), 30 more errors (5 %), buckets.
        let r1 = read(
            &body(1600.0, 40.0, [400.0, 560.0, 600.0, 600.0], 6.0),
            &d,
            100,
        )
        .unwrap();
        assert_eq!(
            s.observe(t("2026-12-04T18:01:30Z"), Some(&r1), Some("shop-1"))
                .unwrap()
                .values
                .get("queue_depth"),
            Some(&4.0)
        );
        let m = s
            .observe(t("2026-12-04T18:02:30Z"), None, Some("shop-1"))
            .unwrap();
        assert_eq!(m.minute, t("2026-12-04T18:01:00Z"));
        assert_eq!(m.release_id.as_deref(), Some("shop-1"));
        assert_eq!(m.values["request_rate"], 10.0);
        assert_eq!(m.values["error_ratio"], 0.05);
        // rank 570 of 600 in (0.5, 1]: 0.5 + 0.5 * (570 - 560) / 40.
        assert!(
            (m.values["latency_p95"] - 0.625).abs() < 1e-12,
            "{}",
            m.values["latency_p95"]
        );
        assert_eq!(m.values["queue_depth"], 6.0);
        assert_eq!((m.scrapes, m.failed_scrapes), (1, 0));
        assert!(m.resets.is_empty());
        // The failed scrape's minute has no values.
        let m = s.finish().unwrap();
        assert_eq!((m.scrapes, m.failed_scrapes), (1, 1));
        assert!(m.values.is_empty());
    }

    #[test]
    fn a_counter_going_backwards_is_a_reset_counted_from_zero() {
        let d = defs();
        let mut s = Summarizer::new("shop", d.clone());
        let r0 = read(&body(5000.0, 50.0, [10.0, 20.0, 30.0, 30.0], 1.0), &d, 100).unwrap();
        s.observe(t("2026-12-04T18:00:00Z"), Some(&r0), None);
        // The app restarted: counters start again from small values.
        let r1 = read(&body(120.0, 12.0, [5.0, 6.0, 8.0, 8.0], 1.0), &d, 100).unwrap();
        s.observe(t("2026-12-04T18:01:00Z"), Some(&r1), None);
        let m = s.finish().unwrap();
        assert_eq!(m.values["request_rate"], 2.0);
        assert_eq!(m.values["error_ratio"], 0.1);
        assert_eq!(m.resets, vec!["request_rate", "error_ratio", "latency_p95"]);
    }

    #[test]
    fn gauges_last_and_average_over_the_minute() {
        let d = vec![
            def(
                "last",
                SignalKind::Gauge {
                    metric: "g".into(),
                    aggregate: GaugeAggregate::Last,
                },
            ),
            def(
                "avg",
                SignalKind::Gauge {
                    metric: "g".into(),
                    aggregate: GaugeAggregate::Avg,
                },
            ),
        ];
        let mut s = Summarizer::new("shop", d.clone());
        for (at, v) in [("18:00:00", 1.0), ("18:00:20", 2.0), ("18:00:40", 6.0)] {
            let r = read(&format!("g {v}\n"), &d, 10).unwrap();
            s.observe(t(&format!("2026-12-04T{at}Z")), Some(&r), None);
        }
        let m = s.finish().unwrap();
        assert_eq!(
            (m.values["last"], m.values["avg"], m.scrapes),
            (6.0, 3.0, 3)
        );
    }

    #[test]
    fn missing_series_and_labels_are_named() {
        let mut d = defs();
        d[0].labels.insert("code".into(), "503".into());
        let r = read("http_errors_total 1\nqueue_depth NaN\n", &d, 10).unwrap();
        assert_eq!(
            r[0],
            Err("no series http_requests_total with {code=\"503\"}".into())
        );
        assert_eq!(r[1], Err("no series http_requests_total".into()));
        assert_eq!(
            r[2],
            Err("no series http_request_duration_seconds_bucket".into())
        );
        assert_eq!(r[3], Err("queue_depth is NaN, not a number".into()));
        let r = read("http_request_duration_seconds_bucket{le=\"1\"} 3\n", &d, 10).unwrap();
        assert_eq!(
            r[2],
            Err("http_request_duration_seconds_bucket has no le=\"+Inf\" bucket".into())
        );
    }

    #[test]
    fn label_selection_sums_the_matching_series() {
        let mut d = vec![def(
            "e5xx",
            SignalKind::Gauge {
                metric: "x".into(),
                aggregate: GaugeAggregate::Last,
            },
        )];
        d[0].labels.insert("class".into(), "5xx".into());
        let r = read("x{class=\"5xx\",code=\"500\"} 2\nx{class=\"5xx\",code=\"503\"} 3\nx{class=\"2xx\"} 100\n", &d, 10).unwrap();
        assert_eq!(r[0], Ok(Reading::Gauge(5.0)));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever a counter does (grows, stalls, resets), each minute's rate is a
            /// finite number >= 0; a reset is reported exactly when the counter went
            /// backwards in that minute; without resets the rates add up to the growth.
            #[test]
            fn rates_are_never_negative_and_resets_are_named(
                values in prop::collection::vec(0.0_f64..1e9, 2..40),
            ) {
                let d = vec![def("rps", SignalKind::Rate { metric: "c".into() })];
                let mut s = Summarizer::new("shop", d.clone());
                let start = t("2026-12-04T18:00:00Z");
                let mut minutes = Vec::new();
                for (i, v) in values.iter().enumerate() {
                    let r = read(&format!("c {v:?}\n"), &d, 10).unwrap();
                    let at = start + jiff::SignedDuration::from_secs(60 * i as i64);
                    minutes.extend(s.observe(at, Some(&r), None));
                }
                minutes.extend(s.finish());
                prop_assert_eq!(minutes.len(), values.len());
                let mut total = 0.0;
                for (i, m) in minutes.iter().enumerate().skip(1) {
                    let rate = m.values["rps"];
                    prop_assert!(rate.is_finite() && rate >= 0.0, "{rate}");
                    let went_back = values[i] < values[i - 1];
                    prop_assert_eq!(!m.resets.is_empty(), went_back);
                    total += rate * 60.0;
                }
                if values.windows(2).all(|w| w[1] >= w[0]) {
                    let growth = values[values.len() - 1] - values[0];
                    prop_assert!((total - growth).abs() <= 1e-6 * growth.max(1.0), "{total} vs {growth}");
                }
            }
        }
    }
}
