//! Golden-signal analysis on the wire: a wave's verdict per signal with every number the
//! judge used (`GET /v1/rollouts/{id}`, `fleetwave rollout status`, the dashboard).
//!
//! One definition of the verdict, the direction and the tolerance: the coordinator's judge
//! (`coordinator::analysis`) and its plans use these same types. Pure data: no I/O here.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Which way a change hurts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Higher is worse (error ratio, latency, restarts).
    IncreaseIsBad,
    /// Lower is worse (throughput, successful payments).
    DecreaseIsBad,
}

impl Direction {
    /// `increase_is_bad` or `decrease_is_bad`, as plans write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::IncreaseIsBad => "increase_is_bad",
            Direction::DecreaseIsBad => "decrease_is_bad",
        }
    }
}

/// The smallest change in the bad direction that matters: `{"relative": 0.1}` or
/// `{"absolute": 0.02}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Tolerance {
    /// A fraction of the control median: 0.1 lets the median move 10 %.
    Relative(f64),
    /// In the signal's own unit: 0.02 lets an error ratio move 2 points.
    Absolute(f64),
}

/// `10 % of the control median` or `0.01` (in the signal's unit).
impl std::fmt::Display for Tolerance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tolerance::Relative(r) => write!(f, "{} % of the control median", number(r * 100.0)),
            Tolerance::Absolute(a) => f.write_str(&number(*a)),
        }
    }
}

/// A signal's value for people: up to 4 decimals without trailing zeros, or 4 significant
/// digits in scientific notation below 0.001 (`0.0415`, `120`, `3.500e-5`).
pub fn number(x: f64) -> String {
    let s = if x != 0.0 && x.abs() < 1e-3 {
        format!("{x:.3e}")
    } else {
        format!("{x:.4}")
    };
    if s.contains('e') || !s.contains('.') {
        return s;
    }
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// [`number`] with its sign, `+` included (`+0.04`, `-12.5`).
pub fn signed(x: f64) -> String {
    if x >= 0.0 {
        format!("+{}", number(x))
    } else {
        number(x)
    }
}

/// A p-value for people: 4 decimals, or scientific notation below 0.0001.
pub fn p_value(p: f64) -> String {
    if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

/// The outcome for one signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No change in the bad direction beyond the tolerance.
    Pass,
    /// Not enough samples yet, or a change beyond the tolerance that is not yet
    /// significant: wait (up to the bake time) for more minutes.
    Inconclusive,
    /// A change beyond the tolerance in the bad direction, significant at `alpha`.
    Fail,
}

impl Verdict {
    /// `pass`, `inconclusive` or `fail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Inconclusive => "inconclusive",
            Verdict::Fail => "fail",
        }
    }
}

/// The spread of one group's samples (site-minutes): smallest, quartiles, largest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Spread {
    pub min: f64,
    /// First quartile (25th percentile, linear interpolation).
    pub q1: f64,
    pub median: f64,
    /// Third quartile (75th percentile).
    pub q3: f64,
    pub max: f64,
}

/// One group of a comparison: the wave's upgraded sites, or the control sites still on
/// the previous release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupNumbers {
    /// Sites with at least one sample.
    pub sites: u32,
    /// Samples (one per site and minute).
    pub samples: u64,
    /// The median of the samples; absent when there are none.
    pub median: Option<f64>,
    /// The samples' spread; absent when there are none.
    pub spread: Option<Spread>,
}

/// One `[[analysis]]` signal's verdict on a wave, with every number the judge used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignalAnalysis {
    pub signal: String,
    pub verdict: Verdict,
    /// One sentence naming the signal, both medians, the effect and the p-value (or why
    /// there is no verdict yet), as in the rollout's timeline.
    pub reason: String,
    pub direction: Direction,
    pub tolerance: Tolerance,
    /// Significance level of the one-sided test.
    pub alpha: f64,
    /// Sites needed in each group before any verdict but inconclusive.
    pub min_sites: u32,
    /// Samples needed in each group.
    pub min_samples: u32,
    pub upgraded: GroupNumbers,
    pub control: GroupNumbers,
    /// Upgraded median minus control median, in the signal's unit; absent when a group
    /// has no samples.
    pub effect: Option<f64>,
    /// `effect` over the control median's magnitude (0.3 is 30 %); absent when the
    /// control median is 0 or a group has no samples.
    pub relative_effect: Option<f64>,
    /// One-sided Mann–Whitney U p-value in the bad direction; absent when a group has no
    /// samples.
    pub p_value: Option<f64>,
    /// The first minute compared (the wave's first commit).
    pub from: Timestamp,
    /// The minute of the judgement: samples up to it were compared.
    pub judged_at: Timestamp,
    /// Distinct minutes with samples in the comparison.
    pub minutes: u32,
}
