//! `[signals.<stream>]`: which golden signals the agent scrapes from the application of a
//! release stream, and the bounds of a scrape. Validation only; nothing here opens a
//! socket.
//!
//! ```toml
//! [signals.shop]
//! scrape_url = "http://127.0.0.1:9000/metrics"
//!
//! [[signals.shop.signal]]
//! name = "error_ratio"
//! kind = "ratio"
//! numerator = "http_errors_total"
//! denominator = "http_requests_total"
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use fleetwave_shared::protocol::signals::{MAX_SIGNAL_NAME_LEN, MAX_SIGNALS_PER_MINUTE};

/// One release stream's signals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSignals {
    /// The application's metrics endpoint: plain `http://` on loopback only
    /// (`127.0.0.1`, `[::1]` or `localhost`).
    pub scrape_url: String,
    /// Seconds between two scrapes; 5 to 60 (summaries are per minute).
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    /// Longest a scrape may take, connection to last byte; less than `interval_secs`.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Largest body read; a larger (or endless) body fails the scrape.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// Most sample lines read from one body; more fails the scrape.
    #[serde(default = "default_max_series")]
    pub max_series: usize,
    /// The signals kept, each summarized per minute.
    #[serde(default, rename = "signal")]
    pub signals: Vec<SignalDef>,
}

/// One signal: a name (what the coordinator's analysis refers to) and how to compute it
/// from the scraped series. Read from a flat TOML table (`name`, `kind` and the kind's
/// keys); a key that does not belong to the kind is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawSignalDef", into = "RawSignalDef")]
pub struct SignalDef {
    pub name: String,
    pub kind: SignalKind,
    /// Only series with these label values count (all of them, summed).
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SignalKind {
    /// A counter's increase per second over the minute (reset-aware).
    Rate { metric: String },
    /// Increase of one counter over the increase of another over the minute, e.g.
    /// errors / requests. No value in a minute where the denominator did not move.
    Ratio {
        numerator: String,
        denominator: String,
    },
    /// A quantile (0 < q < 1) of a histogram's observations during the minute, by linear
    /// interpolation within buckets (Prometheus' `histogram_quantile`). `metric` is the
    /// histogram's base name (its series are `<metric>_bucket{le=...}`).
    Quantile { metric: String, quantile: f64 },
    /// A gauge's last value in the minute, or the average of the minute's scrapes.
    Gauge {
        metric: String,
        aggregate: GaugeAggregate,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum KindName {
    Rate,
    Ratio,
    Quantile,
    Gauge,
}

/// The TOML shape of a [`SignalDef`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignalDef {
    name: String,
    kind: KindName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metric: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    numerator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    denominator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quantile: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aggregate: Option<GaugeAggregate>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

impl TryFrom<RawSignalDef> for SignalDef {
    type Error = String;

    fn try_from(r: RawSignalDef) -> Result<SignalDef, String> {
        let name = r.name;
        let kind_name = match r.kind {
            KindName::Rate => "rate",
            KindName::Ratio => "ratio",
            KindName::Quantile => "quantile",
            KindName::Gauge => "gauge",
        };
        let need = |v: Option<String>, key: &str| {
            v.ok_or_else(|| format!("signal {name:?}: kind {kind_name:?} needs `{key}`"))
        };
        let stray = |present: bool, key: &str| {
            if present {
                Err(format!(
                    "signal {name:?}: `{key}` does not apply to kind {kind_name:?}"
                ))
            } else {
                Ok(())
            }
        };
        let kind = match r.kind {
            KindName::Rate | KindName::Gauge | KindName::Quantile => {
                stray(r.numerator.is_some(), "numerator")?;
                stray(r.denominator.is_some(), "denominator")?;
                let metric = need(r.metric, "metric")?;
                match r.kind {
                    KindName::Rate => {
                        stray(r.quantile.is_some(), "quantile")?;
                        stray(r.aggregate.is_some(), "aggregate")?;
                        SignalKind::Rate { metric }
                    }
                    KindName::Gauge => {
                        stray(r.quantile.is_some(), "quantile")?;
                        SignalKind::Gauge {
                            metric,
                            aggregate: r.aggregate.unwrap_or_default(),
                        }
                    }
                    _ => {
                        stray(r.aggregate.is_some(), "aggregate")?;
                        let quantile = r.quantile.ok_or_else(|| {
                            format!("signal {name:?}: kind \"quantile\" needs `quantile`")
                        })?;
                        SignalKind::Quantile { metric, quantile }
                    }
                }
            }
            KindName::Ratio => {
                stray(r.metric.is_some(), "metric")?;
                stray(r.quantile.is_some(), "quantile")?;
                stray(r.aggregate.is_some(), "aggregate")?;
                SignalKind::Ratio {
                    numerator: need(r.numerator, "numerator")?,
                    denominator: need(r.denominator, "denominator")?,
                }
            }
        };
        Ok(SignalDef {
            name,
            kind,
            labels: r.labels,
        })
    }
}

impl From<SignalDef> for RawSignalDef {
    fn from(d: SignalDef) -> RawSignalDef {
        let mut r = RawSignalDef {
            name: d.name,
            kind: KindName::Rate,
            metric: None,
            numerator: None,
            denominator: None,
            quantile: None,
            aggregate: None,
            labels: d.labels,
        };
        match d.kind {
            SignalKind::Rate { metric } => r.metric = Some(metric),
            SignalKind::Ratio {
                numerator,
                denominator,
            } => {
                r.kind = KindName::Ratio;
                r.numerator = Some(numerator);
                r.denominator = Some(denominator);
            }
            SignalKind::Quantile { metric, quantile } => {
                r.kind = KindName::Quantile;
                r.metric = Some(metric);
                r.quantile = Some(quantile);
            }
            SignalKind::Gauge { metric, aggregate } => {
                r.kind = KindName::Gauge;
                r.metric = Some(metric);
                r.aggregate = Some(aggregate);
            }
        }
        r
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GaugeAggregate {
    #[default]
    Last,
    Avg,
}

impl SignalKind {
    /// The metric names this signal reads (a histogram's `_bucket` series).
    pub fn series_names(&self) -> Vec<String> {
        match self {
            SignalKind::Rate { metric } | SignalKind::Gauge { metric, .. } => vec![metric.clone()],
            SignalKind::Ratio {
                numerator,
                denominator,
            } => vec![numerator.clone(), denominator.clone()],
            SignalKind::Quantile { metric, .. } => vec![format!("{metric}_bucket")],
        }
    }
}

fn default_interval() -> u64 {
    60
}
fn default_timeout() -> u64 {
    10
}
fn default_max_body() -> u64 {
    1024 * 1024
}
fn default_max_series() -> usize {
    10_000
}

/// Checks every stream's signals; the message names the key at fault.
pub fn validate(signals: &BTreeMap<String, StreamSignals>) -> Result<(), (String, String)> {
    for (stream, s) in signals {
        let key = |k: &str| format!("signals.{stream}.{k}");
        if !loopback_http(&s.scrape_url) {
            return Err((
                key("scrape_url"),
                format!(
                    "must be a plain http:// URL on loopback (127.0.0.1, [::1] or localhost), got {:?}",
                    s.scrape_url
                ),
            ));
        }
        if !(5..=60).contains(&s.interval_secs) {
            return Err((key("interval_secs"), "must be between 5 and 60".into()));
        }
        if s.timeout_secs == 0 || s.timeout_secs >= s.interval_secs {
            return Err((
                key("timeout_secs"),
                format!(
                    "must be at least 1 and less than interval_secs ({})",
                    s.interval_secs
                ),
            ));
        }
        if !(1024..=64 * 1024 * 1024).contains(&s.max_body_bytes) {
            return Err((
                key("max_body_bytes"),
                "must be between 1024 and 67108864".into(),
            ));
        }
        if !(1..=1_000_000).contains(&s.max_series) {
            return Err((key("max_series"), "must be between 1 and 1000000".into()));
        }
        if s.signals.is_empty() {
            return Err((key("signal"), "names no signal".into()));
        }
        if s.signals.len() > MAX_SIGNALS_PER_MINUTE {
            return Err((
                key("signal"),
                format!(
                    "has {} signals, at most {MAX_SIGNALS_PER_MINUTE}",
                    s.signals.len()
                ),
            ));
        }
        for (i, sig) in s.signals.iter().enumerate() {
            let at = format!("signals.{stream}.signal[{i}]");
            if sig.name.is_empty()
                || sig.name.len() > MAX_SIGNAL_NAME_LEN
                || !sig
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err((
                    format!("{at}.name"),
                    format!(
                        "{:?} must be 1 to {MAX_SIGNAL_NAME_LEN} characters of [A-Za-z0-9_]",
                        sig.name
                    ),
                ));
            }
            if s.signals[..i].iter().any(|o| o.name == sig.name) {
                return Err((
                    format!("{at}.name"),
                    format!("{:?} is named twice", sig.name),
                ));
            }
            if let Some(m) = sig.kind.series_names().iter().find(|m| !metric_name(m)) {
                return Err((at, format!("{m:?} is not a metric name")));
            }
            if let SignalKind::Quantile { quantile, .. } = sig.kind
                && !(quantile > 0.0 && quantile < 1.0)
            {
                return Err((
                    format!("{at}.quantile"),
                    "must be between 0 and 1 (exclusive)".into(),
                ));
            }
            if let SignalKind::Quantile { .. } = sig.kind
                && sig.labels.contains_key("le")
            {
                return Err((
                    format!("{at}.labels"),
                    "must not select `le` (the bucket bound)".into(),
                ));
            }
        }
    }
    Ok(())
}

fn metric_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// `http://127.0.0.1[:port]/...`, `http://[::1][:port]/...` or `http://localhost[:port]/...`.
pub fn loopback_http(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    if u.scheme() != "http" || !u.username().is_empty() || u.password().is_some() {
        return false;
    }
    match u.host_str() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}
