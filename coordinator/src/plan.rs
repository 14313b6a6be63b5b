//! Rollout plans: the wave plan file (TOML or JSON) an operator keeps in Git.
//!
//! [`parse_plan`] turns the text into a validated [`RolloutPlan`]; every error names the
//! line (and column) and the field path, e.g.
//! `line 14, column 16: waves[2].gate.success_ratio: must be between 0 and 1 (got 1.5)`.
//! Unknown keys are errors. Defaults are filled in here, so the rest of the coordinator
//! never guesses. This module is pure: it never reads files, clocks or the network.

use std::collections::BTreeMap;
use std::fmt;

use fleetwave_shared::window::Window;
use jiff::SignedDuration;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Which syntax a plan file is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanFormat {
    Toml,
    Json,
}

impl PlanFormat {
    /// Picks the format from a file name: `.json` is JSON, anything else TOML.
    pub fn from_file_name(name: &str) -> PlanFormat {
        if name.to_ascii_lowercase().ends_with(".json") {
            PlanFormat::Json
        } else {
            PlanFormat::Toml
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PlanFormat::Toml => "TOML",
            PlanFormat::Json => "JSON",
        }
    }
}

/// Why a plan file was refused. Every variant says where: the line and column when the
/// text is at fault, and the field path (`waves[2].gate.bake`) when a value is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The text is not well-formed TOML or JSON.
    #[error("{format} syntax error at line {line}, column {column}: {message}")]
    Syntax {
        format: &'static str,
        line: usize,
        column: usize,
        message: String,
    },
    /// The text is well-formed but a field is missing, unknown, of the wrong type, or has
    /// a value the plan cannot use.
    #[error("{}{}{message}", at_line(*.line, *.column), field(path))]
    Invalid {
        /// Field path such as `waves[2].gate.success_ratio`; empty for the whole document.
        path: String,
        /// 1-based line of the offending key or value, when it could be located.
        line: Option<usize>,
        /// 1-based column, when it could be located.
        column: Option<usize>,
        message: String,
    },
}

fn field(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

fn at_line(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("line {l}, column {c}: "),
        (Some(l), None) => format!("line {l}: "),
        _ => String::new(),
    }
}

impl PlanError {
    /// The field path at fault (empty for syntax errors and whole-document problems).
    pub fn path(&self) -> &str {
        match self {
            PlanError::Syntax { .. } => "",
            PlanError::Invalid { path, .. } => path,
        }
    }

    /// The 1-based line at fault, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            PlanError::Syntax { line, .. } => Some(*line),
            PlanError::Invalid { line, .. } => *line,
        }
    }
}

/// A label selector: every entry must match the site's labels.
///
/// In a plan file each entry is `label = "value"` (equal), `label = ["a", "b"]` (any of)
/// or `label = { not = "dog" }` / `{ not = ["dog", "pig"] }` (none of; a site without
/// the label matches). An empty selector matches every site.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Selector(pub BTreeMap<String, LabelMatch>);

impl Selector {
    /// Whether every entry matches `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0
            .iter()
            .all(|(key, m)| m.matches(labels.get(key).map(String::as_str)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A selector of plain `label = value` entries.
    pub fn equals<K: Into<String>, V: Into<String>>(
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Selector {
        Selector(
            entries
                .into_iter()
                .map(|(k, v)| (k.into(), LabelMatch::Is(v.into())))
                .collect(),
        )
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("every site");
        }
        let mut first = true;
        for (key, m) in &self.0 {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            match m {
                LabelMatch::Is(v) => write!(f, "{key}={v}")?,
                LabelMatch::AnyOf(vs) => write!(f, "{key} in [{}]", vs.join(", "))?,
                LabelMatch::Not(vs) => write!(f, "{key} not in [{}]", vs.join(", "))?,
            }
        }
        Ok(())
    }
}

/// How one selector entry matches a label value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelMatch {
    /// The label is present and equal to this value.
    Is(String),
    /// The label is present and equal to one of these values.
    AnyOf(Vec<String>),
    /// The label is absent or equal to none of these values.
    Not(Vec<String>),
}

impl LabelMatch {
    /// Whether a site whose label has `value` (None: no such label) matches.
    pub fn matches(&self, value: Option<&str>) -> bool {
        match self {
            LabelMatch::Is(want) => value == Some(want.as_str()),
            LabelMatch::AnyOf(wants) => value.is_some_and(|v| wants.iter().any(|w| w == v)),
            LabelMatch::Not(nots) => !value.is_some_and(|v| nots.iter().any(|n| n == v)),
        }
    }
}

impl Serialize for LabelMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            LabelMatch::Is(v) => s.serialize_str(v),
            LabelMatch::AnyOf(vs) => vs.serialize(s),
            LabelMatch::Not(vs) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("not", vs)?;
                m.end()
            }
        }
    }
}

/// One string or a list of strings (`not = "dog"` or `not = ["dog", "pig"]`).
struct OneOrMany(Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a label value or a list of label values")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<String>()? {
                    out.push(v);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for LabelMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LabelMatch;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a label value (\"x\"), a list of values ([\"x\", \"y\"]) or { not = \"x\" }",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LabelMatch, E> {
                Ok(LabelMatch::Is(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<LabelMatch, A::Error> {
                let OneOrMany(vs) =
                    OneOrMany::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(LabelMatch::AnyOf(vs))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LabelMatch, A::Error> {
                let mut not = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "not" {
                        return Err(de::Error::unknown_field(&key, &["not"]));
                    }
                    if not.is_some() {
                        return Err(de::Error::duplicate_field("not"));
                    }
                    not = Some(map.next_value::<OneOrMany>()?.0);
                }
                not.map(LabelMatch::Not)
                    .ok_or_else(|| de::Error::missing_field("not"))
            }
        }
        d.deserialize_any(V)
    }
}

/// What a wave does with sites that go silent (no report within the report deadline).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnSilent {
    /// A silent site counts as a failure (the default: silence is not health).
    #[default]
    Fail,
    /// A silent site is left out of the count; it neither helps nor hurts the gate.
    Exclude,
}

impl OnSilent {
    pub fn as_str(self) -> &'static str {
        match self {
            OnSilent::Fail => "fail",
            OnSilent::Exclude => "exclude",
        }
    }
}

/// When a wave counts as done. See docs/waves.md for how each field is counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// Share of the counted sites that must have succeeded, 0..=1. Default 0.95.
    #[serde(default = "defaults::success_ratio")]
    pub success_ratio: f64,
    /// Most failures tolerated (count). With `failure_budget_percent` too, the smaller
    /// limit applies. With neither, the budget is what `success_ratio` leaves over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_budget: Option<u32>,
    /// Most failures tolerated, in percent of the counted sites (0..=100, rounded down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_budget_percent: Option<f64>,
    /// At least this many sites must have finished (succeeded or failed). Capped at the
    /// number of counted sites, so a small wave cannot stall on it. Default 1.
    #[serde(default = "defaults::min_sample")]
    pub min_sample: u32,
    /// How long a site must stay healthy after committing before it counts as succeeded;
    /// the wave also stays open at least this long. Default 10m.
    #[serde(default = "defaults::bake", with = "duration")]
    pub bake: SignedDuration,
    /// A site that reports nothing for this long after its assignment, its lease or its
    /// last report is silent. Default 2h.
    #[serde(default = "defaults::report_deadline", with = "duration")]
    pub report_deadline: SignedDuration,
    /// Silent sites count as failures (`fail`, default) or are left out (`exclude`).
    #[serde(default)]
    pub on_silent: OnSilent,
    /// After the gate passes, an operator must approve before the next wave opens (or
    /// the rollout completes). Default false.
    #[serde(default)]
    pub approval: bool,
    /// The plan's `[retry]` policy, copied into every wave's gate by [`parse_plan`] so that
    /// the gate counts a failed site with attempts left as in progress. Written once, at
    /// the top of the plan, never inside a wave.
    #[serde(skip)]
    pub retry: RetryPolicy,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            success_ratio: defaults::success_ratio(),
            failure_budget: None,
            failure_budget_percent: None,
            min_sample: defaults::min_sample(),
            bake: defaults::bake(),
            report_deadline: defaults::report_deadline(),
            on_silent: OnSilent::Fail,
            approval: false,
            retry: RetryPolicy::default(),
        }
    }
}

/// `[retry]`: how often a site whose install failed is tried again by itself, and how long
/// it waits first. Attempt `n` that failed is followed by attempt `n + 1` after
/// `backoff × 2^(n-1)`, at most `max_backoff`, until `max_attempts` attempts have run.
/// Only failed installs are retried (a `failed` phase, or the agent rolled the install
/// back); a site unhealthy after committing, silent, skipped, sent back to its previous
/// release, or whose own rollback failed is not. See docs/waves.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first install included: 1 (the default) retries nothing, at
    /// most [`MAX_ATTEMPTS`].
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    /// How long after the first failed attempt the second starts; doubled for each
    /// further attempt. Default 5m, at least [`MIN_RETRY_BACKOFF`].
    #[serde(default = "defaults::retry_backoff", with = "duration")]
    pub backoff: SignedDuration,
    /// The longest wait between two attempts. Default 1h, at least `backoff`.
    #[serde(default = "defaults::retry_max_backoff", with = "duration")]
    pub max_backoff: SignedDuration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: defaults::max_attempts(),
            backoff: defaults::retry_backoff(),
            max_backoff: defaults::retry_max_backoff(),
        }
    }
}

impl RetryPolicy {
    /// Whether the policy retries anything (`max_attempts` above 1).
    pub fn retries(&self) -> bool {
        self.max_attempts > 1
    }

    /// How long after attempt `attempt` (1-based) failed the next one starts:
    /// `backoff × 2^(attempt-1)`, at most `max_backoff`.
    pub fn delay_after(&self, attempt: u32) -> SignedDuration {
        let mut delay = self.backoff;
        for _ in 1..attempt {
            if delay >= self.max_backoff {
                break;
            }
            delay = delay.checked_mul(2).unwrap_or(self.max_backoff);
        }
        delay.min(self.max_backoff)
    }

    fn is_default(&self) -> bool {
        *self == RetryPolicy::default()
    }
}

/// The most attempts `[retry] max_attempts` may allow: a site that failed ten times needs
/// an operator, not an eleventh try.
pub const MAX_ATTEMPTS: u32 = 10;

/// The shortest `[retry] backoff`: one second, short enough for tests and demos; real
/// plans wait minutes so that a flaky dependency has time to come back.
pub const MIN_RETRY_BACKOFF: SignedDuration = SignedDuration::from_secs(1);

/// At most so many sites sharing one value of `label` may hold a lease at once.
/// Exactly one of `max` and `max_percent` is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compartment {
    /// The label whose values form the compartments, e.g. `region`.
    pub label: String,
    /// At most this many leased sites per label value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// At most this percent (0..=100) of the rollout's sites with that label value; never
    /// less than one site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_percent: Option<f64>,
}

/// One wave of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WavePlan {
    /// Shown in the timeline and the dashboard; unique within the plan.
    pub name: String,
    /// Only sites matching this selector can be in the wave. Empty: any site.
    #[serde(default, skip_serializing_if = "Selector::is_empty")]
    pub selector: Selector,
    /// Percent (0 < share <= 100) of the sites still remaining after the earlier waves
    /// (and matching `selector`), picked by each site's stable seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
    /// Most sites of this wave holding a lease (installing) at once. None: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Per-label-value concurrency limit, e.g. at most 10% of a region at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compartment: Option<Compartment>,
    /// When the wave counts as done.
    #[serde(default)]
    pub gate: Gate,
}

/// A validated rollout plan: one release to a selection of sites through ordered waves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutPlan {
    /// Human name of the rollout.
    pub name: String,
    /// The release id (`Release::id`) the rollout ships.
    pub release: String,
    /// Only sites matching this selector take part. Empty: every site.
    #[serde(default, skip_serializing_if = "Selector::is_empty")]
    pub selector: Selector,
    /// Send the sites that took the release back to the previous one when a gate halts the
    /// rollout. Default false.
    #[serde(default)]
    pub auto_rollback: bool,
    /// Maintenance window in each site's local time (its `tz` label, default UTC). None:
    /// any time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// When the rollout starts itself: RFC 3339 (`2026-12-05T02:00:00Z`) or a local time
    /// with an IANA zone (`2026-12-05T02:00:00[Europe/Berlin]`). None: it starts when an
    /// operator starts it. See [`StartAt`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<StartAt>,
    /// The channel whose release this rollout's completion sets: a channel's name, or
    /// `false` for none. Default: the channel of the release's stream with the same
    /// selector, created when there is none and no other channel of the stream takes any
    /// of its sites (see docs/waves.md, "Channels").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<ChannelKey>,
    /// Set by the coordinator on a channel's convergence rollout: the channel's name.
    /// Plans submitted through the API may not set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converge: Option<String>,
    /// How long each signed assignment stays valid; re-issued before it runs out while the
    /// rollout is active. Default 7d.
    #[serde(default = "defaults::assignment_ttl", with = "duration")]
    pub assignment_ttl: SignedDuration,
    /// How long an assignment carried to a site in a bundle (`fleetwave bundle export`)
    /// stays valid, and how long the wave waits for that site's reports. Default 7d, at
    /// most [`MAX_BUNDLE_VALIDITY`].
    #[serde(default = "defaults::bundle_validity", with = "duration")]
    pub bundle_validity: SignedDuration,
    /// Automatic retries of failed installs (`[retry]`). Default: none.
    #[serde(default, skip_serializing_if = "RetryPolicy::is_default")]
    pub retry: RetryPolicy,
    /// The waves, in order. At least one; the last takes every remaining site.
    pub waves: Vec<WavePlan>,
    /// Golden-signal analysis (`[[analysis]]`): while a wave bakes, each signal of its
    /// upgraded sites is compared with a control of the rollout's sites still on the
    /// previous release; a significant regression halts the rollout. Empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis: Vec<AnalysisSignal>,
    /// Inside a site of several boxes: at most this many boxes hold a lease (install) at
    /// once. Default 1, at most [`MAX_UNAVAILABLE_PER_SITE`]. A one-box site is not
    /// affected.
    #[serde(
        default = "defaults::max_unavailable_per_site",
        skip_serializing_if = "defaults::is_one"
    )]
    pub max_unavailable_per_site: u32,
    /// The order in which a site's boxes install: box selectors (`role=server`,
    /// `box=node-1`), each taking the boxes it matches in box id order; boxes no selector
    /// matches go last, in box id order. Empty: every box in box id order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub box_order: Vec<String>,
}

/// The most boxes of one site `max_unavailable_per_site` lets install at once.
pub const MAX_UNAVAILABLE_PER_SITE: u32 = 64;
/// The most selectors a plan's `box_order` may have.
pub const MAX_BOX_ORDER: usize = 16;

/// The most `[[analysis]]` entries a plan may have.
pub const MAX_ANALYSIS_SIGNALS: usize = 16;

/// One `[[analysis]]` entry: a golden signal every wave's gate judges, upgraded sites
/// against control sites over the same minutes (docs/waves.md, docs/analysis.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisSignal {
    /// The signal's name, as the agents' `[signals.<stream>]` name it.
    pub signal: String,
    /// The release stream whose signal it is. Default: the rollout's release's stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// `increase_is_bad` (errors, latency) or `decrease_is_bad` (throughput).
    pub direction: crate::analysis::Direction,
    /// The smallest change that matters: `{ relative = 0.1 }` (10 % of the control
    /// median) or `{ absolute = 0.02 }` (in the signal's unit).
    pub tolerance: crate::analysis::Tolerance,
    /// Sites needed in each group (upgraded and control) before any verdict but
    /// inconclusive. Default 5.
    #[serde(default = "default_min_sites")]
    pub min_sites: u32,
    /// Samples (site-minutes) needed in each group. Default 20, at least 5.
    #[serde(default = "default_min_samples")]
    pub min_samples: u32,
    /// Significance level of the one-sided test. Default 0.05.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
}

fn default_min_sites() -> u32 {
    5
}
fn default_min_samples() -> u32 {
    20
}
fn default_alpha() -> f64 {
    crate::analysis::DEFAULT_ALPHA
}

impl AnalysisSignal {
    /// The judge's settings for this signal (valid for every validated plan).
    pub fn config(&self) -> Result<crate::analysis::SignalConfig, crate::analysis::AnalysisError> {
        crate::analysis::SignalConfig::new(
            self.signal.clone(),
            self.direction,
            self.tolerance,
            self.min_samples as usize,
            self.alpha,
        )
    }

    /// The stream the signal is read from, for a rollout of a release of `release_stream`.
    pub fn stream_or<'a>(&'a self, release_stream: &'a str) -> &'a str {
        self.stream.as_deref().unwrap_or(release_stream)
    }
}

impl RolloutPlan {
    /// The wave at `index`, if the plan has it.
    pub fn wave(&self, index: u32) -> Option<&WavePlan> {
        self.waves.get(index as usize)
    }

    /// Number of waves as a `u32` (plans are validated to have at most [`MAX_WAVES`]).
    pub fn wave_count(&self) -> u32 {
        self.waves.len() as u32
    }

    /// The plan as pretty JSON; [`parse_plan`] with [`PlanFormat::Json`] reads it back
    /// to an equal plan. Servers store this normalized form.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a plan always serializes")
    }
}

/// A plan's `channel` key: `channel = "name"` or `channel = false`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChannelKey {
    Named(String),
    /// `false`: the rollout sets no channel. (`true` is refused.)
    Flag(bool),
}

impl ChannelKey {
    /// The channel named, if any (None for `false`).
    pub fn name(&self) -> Option<&str> {
        match self {
            ChannelKey::Named(n) => Some(n),
            ChannelKey::Flag(_) => None,
        }
    }
}

/// When a rollout starts itself: the instant, and the zone the plan named it in.
///
/// Written as RFC 3339 with an offset (`2026-12-05T02:00:00Z`, `...+01:00`) or as a local
/// civil time with an IANA zone in brackets (`2026-12-05T02:00:00[Europe/Berlin]`, jiff's
/// and RFC 9557's syntax; an offset before the bracket must agree with the zone).
/// Daylight-saving changes follow one rule, the "compatible" one of RFC 5545 and
/// Temporal: a local time that does not exist (skipped when clocks spring forward) moves
/// forward by the length of the gap (02:30 on the spring-forward night in Berlin is 03:30
/// CEST); a local time that occurs twice (when clocks fall back) is the first, earlier
/// occurrence (02:30 on the fall-back night in Berlin is 02:30 CEST, 00:30 UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartAt {
    /// The instant.
    pub at: jiff::Timestamp,
    /// The IANA zone the plan gave, if it gave one.
    pub zone: Option<String>,
    /// The value as the plan wrote it (written back unchanged).
    pub text: String,
}

impl StartAt {
    /// Reads a `start_at` value; the error says what is wrong and what to write instead.
    pub fn parse(text: &str) -> Result<StartAt, String> {
        use jiff::fmt::temporal::DateTimeParser;
        use jiff::tz::{Disambiguation, OffsetConflict};
        let trimmed = text.trim();
        let example = "write it as RFC 3339 (\"2026-12-05T02:00:00Z\") or as a local time with \
                       an IANA zone (\"2026-12-05T02:00:00[Europe/Berlin]\")";
        let Some(open) = trimmed.find('[') else {
            return match trimmed.parse::<jiff::Timestamp>() {
                Ok(at) => Ok(StartAt {
                    at,
                    zone: None,
                    text: text.to_string(),
                }),
                Err(_) if trimmed.parse::<jiff::civil::DateTime>().is_ok() => Err(format!(
                    "{text:?} has no offset or zone, so it names no instant; add \"Z\" for UTC \
                     or a zone such as \"[Europe/Berlin]\""
                )),
                Err(_) => Err(format!("{text:?} is not a time; {example}")),
            };
        };
        let Some(name) = trimmed[open + 1..].strip_suffix(']') else {
            return Err(format!(
                "{text:?}: the zone in brackets is not closed by \"]\"; {example}"
            ));
        };
        if fleetwave_shared::window::zone(name).is_err() {
            return Err(format!(
                "{text:?}: {name:?} is not a known IANA time zone (such as Europe/Berlin or \
                 America/New_York)"
            ));
        }
        static PARSER: DateTimeParser = DateTimeParser::new()
            .disambiguation(Disambiguation::Compatible)
            .offset_conflict(OffsetConflict::Reject);
        let zoned = PARSER
            .parse_zoned(trimmed)
            .map_err(|e| format!("{text:?} is not a time: {e}; {example}"))?;
        Ok(StartAt {
            at: zoned.timestamp(),
            zone: Some(name.to_string()),
            text: text.to_string(),
        })
    }

    /// The instant in the plan's zone (UTC when it gave none), e.g.
    /// `2026-12-05 02:00 CET (Europe/Berlin)`.
    pub fn local(&self) -> String {
        match self
            .zone
            .as_deref()
            .and_then(|z| jiff::tz::TimeZone::get(z).ok())
        {
            Some(tz) => format!(
                "{} ({})",
                self.at.to_zoned(tz).strftime("%Y-%m-%d %H:%M %Z"),
                self.zone.as_deref().unwrap_or_default()
            ),
            None => self.at.strftime("%Y-%m-%d %H:%M UTC").to_string(),
        }
    }
}

impl Serialize for StartAt {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for StartAt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        StartAt::parse(&text).map_err(de::Error::custom)
    }
}

/// The most waves a plan may have.
pub const MAX_WAVES: usize = 100;

/// The longest `assignment_ttl`, `bake` and `report_deadline` a plan may set: a year.
/// Longer values stall a rollout for longer than anyone will wait for it, and a time plus
/// an unbounded duration overflows the calendar (docs/waves.md).
pub const MAX_PLAN_DURATION: SignedDuration = SignedDuration::from_hours(365 * 24);

/// Label holding a site's IANA time zone, used to read the plan's window.
pub const TZ_LABEL: &str = "tz";

/// The longest `bundle_validity`: a courier's month. A bundle valid for longer is a signed
/// permission nobody can take back for longer than anyone should wait for a site's reports.
pub const MAX_BUNDLE_VALIDITY: SignedDuration = SignedDuration::from_hours(30 * 24);

/// `bundle_validity`: at least an hour (a courier needs time), at most
/// [`MAX_BUNDLE_VALIDITY`].
fn validate_bundle_validity(v: SignedDuration) -> Result<(), (Path, String)> {
    if v < SignedDuration::from_hours(1) || v > MAX_BUNDLE_VALIDITY {
        return Err((
            vec![Seg::Key("bundle_validity")],
            format!("must be between 1h and 30d (got {})", display_duration(v)),
        ));
    }
    Ok(())
}

/// Default values of optional plan fields (documented in docs/waves.md).
pub mod defaults {
    use jiff::SignedDuration;

    pub fn max_unavailable_per_site() -> u32 {
        1
    }
    pub fn is_one(n: &u32) -> bool {
        *n == 1
    }

    pub fn success_ratio() -> f64 {
        0.95
    }
    pub fn min_sample() -> u32 {
        1
    }
    pub fn bake() -> SignedDuration {
        SignedDuration::from_mins(10)
    }
    pub fn report_deadline() -> SignedDuration {
        SignedDuration::from_hours(2)
    }
    pub fn assignment_ttl() -> SignedDuration {
        SignedDuration::from_hours(7 * 24)
    }
    pub fn bundle_validity() -> SignedDuration {
        SignedDuration::from_hours(7 * 24)
    }
    pub fn max_attempts() -> u32 {
        1
    }
    pub fn retry_backoff() -> SignedDuration {
        SignedDuration::from_mins(5)
    }
    pub fn retry_max_backoff() -> SignedDuration {
        SignedDuration::from_hours(1)
    }
}

/// A plan duration as plans write it: whole days as `"7d"`, anything else in jiff's
/// friendly format (`"1h 30m"`).
pub fn display_duration(d: SignedDuration) -> String {
    duration::display(d)
}

/// Durations are strings in jiff's friendly format ("30s", "10m", "1h 30m"), ISO 8601
/// ("PT10M"), or whole days ("7d", read as 7 × 24 h). They are written back friendly.
mod duration {
    use jiff::SignedDuration;
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(d: &SignedDuration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{d:#}"))
    }

    /// Whole days as `"<n>d"` (as plans usually write long durations), anything else in
    /// jiff's friendly format.
    pub fn display(d: SignedDuration) -> String {
        let secs = d.as_secs();
        if secs != 0 && d.subsec_nanos() == 0 && secs % 86_400 == 0 {
            format!("{}d", secs / 86_400)
        } else {
            format!("{d:#}")
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SignedDuration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(de::Error::custom)
    }

    pub fn parse(text: &str) -> Result<SignedDuration, String> {
        let bad = || {
            format!(
                "{text:?} is not a duration; write it like \"30s\", \"10m\", \"1h 30m\" or \"7d\""
            )
        };
        let trimmed = text.trim();
        // Whole days are common in plans ("7d"); jiff only accepts them in spans, so read
        // "<n>d" / "<n> days" here as n × 24 h.
        let days = trimmed
            .strip_suffix("days")
            .or_else(|| trimmed.strip_suffix("day"))
            .or_else(|| trimmed.strip_suffix('d'))
            .map(str::trim);
        if let Some(n) = days.and_then(|n| n.parse::<i64>().ok()) {
            return n
                .checked_mul(86_400)
                .map(SignedDuration::from_secs)
                .ok_or_else(bad);
        }
        trimmed.parse::<SignedDuration>().map_err(|_| bad())
    }
}

/// Parses and validates a plan about to be created (or previewed) at `now`:
/// [`parse_plan`], and the rules that depend on the time: `start_at` is after `now` and at
/// most [`MAX_PLAN_DURATION`] ahead. A stored plan is read back with [`parse_plan`], as its
/// `start_at` passes.
pub fn parse_new_plan(
    text: &str,
    format: PlanFormat,
    now: jiff::Timestamp,
) -> Result<RolloutPlan, PlanError> {
    let plan = parse_plan(text, format)?;
    if plan.converge.is_some() {
        let path = vec![Seg::Key("converge")];
        let (line, column) = locate(text, format, &path);
        return Err(PlanError::Invalid {
            path: render_path(&path),
            line,
            column,
            message: "converge is set by the coordinator on a channel's convergence rollout; \
                      to move a channel, set its release (fleetwave channel set) or name it \
                      with channel = \"NAME\""
                .to_string(),
        });
    }
    if let Some(start) = &plan.start_at {
        let problem = if start.at <= now {
            Some(format!(
                "{} ({}) is in the past (now is {}); give a later time or leave start_at out \
                 and start the rollout yourself",
                start.text,
                start.at,
                now.round(jiff::Unit::Second).unwrap_or(now)
            ))
        } else if start.at.duration_since(now) > MAX_PLAN_DURATION {
            Some(format!(
                "{} is more than {} ahead",
                start.text,
                duration::display(MAX_PLAN_DURATION)
            ))
        } else {
            None
        };
        if let Some(message) = problem {
            let path = vec![Seg::Key("start_at")];
            let (line, column) = locate(text, format, &path);
            return Err(PlanError::Invalid {
                path: render_path(&path),
                line,
                column,
                message,
            });
        }
    }
    Ok(plan)
}

/// Parses and validates a plan. Errors name the line and the field path.
pub fn parse_plan(text: &str, format: PlanFormat) -> Result<RolloutPlan, PlanError> {
    let mut plan = match format {
        PlanFormat::Toml => parse_toml(text)?,
        PlanFormat::Json => parse_json(text)?,
    };
    for wave in &mut plan.waves {
        wave.gate.retry = plan.retry;
    }
    if let Err((path, message)) = validate(&plan) {
        let (line, column) = locate(text, format, &path);
        return Err(PlanError::Invalid {
            path: render_path(&path),
            line,
            column,
            message,
        });
    }
    Ok(plan)
}

fn parse_toml(text: &str) -> Result<RolloutPlan, PlanError> {
    let de = toml::Deserializer::parse(text).map_err(|e| toml_syntax(text, &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let (line, column) = match inner.span() {
            Some(span) => {
                let (l, c) = line_col(text, span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        PlanError::Invalid {
            path: clean_path(&path),
            line,
            column,
            message: inner.message().trim().to_string(),
        }
    })
}

fn toml_syntax(text: &str, e: &toml::de::Error) -> PlanError {
    let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
    PlanError::Syntax {
        format: "TOML",
        line,
        column,
        message: e.message().trim().to_string(),
    }
}

fn parse_json(text: &str) -> Result<RolloutPlan, PlanError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let plan: RolloutPlan = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        json_error(&path, &inner)
    })?;
    de.end().map_err(|e| json_error("", &e))?;
    Ok(plan)
}

fn json_error(path: &str, e: &serde_json::Error) -> PlanError {
    use serde_json::error::Category;
    // serde_json appends " at line L column C" to its messages; we report those apart.
    let full = e.to_string();
    let message = match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    };
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => PlanError::Syntax {
            format: "JSON",
            line: e.line(),
            column: e.column(),
            message,
        },
        Category::Data => PlanError::Invalid {
            path: clean_path(path),
            line: (e.line() > 0).then_some(e.line()),
            column: (e.line() > 0).then_some(e.column()),
            message,
        },
    }
}

/// serde_path_to_error writes `.` for the document root.
fn clean_path(path: &str) -> String {
    if path == "." {
        String::new()
    } else {
        path.to_string()
    }
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, before[line_start..].chars().count() + 1)
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(&'static str),
    Index(usize),
}

type Path = Vec<Seg>;

fn render_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn wave_path(i: usize, rest: &[&'static str]) -> Path {
    let mut p = vec![Seg::Key("waves"), Seg::Index(i)];
    p.extend(rest.iter().map(|k| Seg::Key(k)));
    p
}

/// Checks what serde cannot: ranges, uniqueness, the shape of the wave list.
fn validate(plan: &RolloutPlan) -> Result<(), (Path, String)> {
    let top = |k: &'static str| vec![Seg::Key(k)];
    if plan.name.trim().is_empty() {
        return Err((top("name"), "must not be empty".into()));
    }
    if plan.release.trim().is_empty() {
        return Err((top("release"), "must name a release id".into()));
    }
    validate_selector(&plan.selector, top("selector"))?;
    match &plan.channel {
        Some(ChannelKey::Flag(true)) => {
            return Err((
                top("channel"),
                "give a channel's name, or false for none (true names no channel)".into(),
            ));
        }
        Some(ChannelKey::Named(n)) => {
            validate_channel_name(n).map_err(|m| (top("channel"), m))?;
        }
        _ => {}
    }
    if plan.converge.is_some() && plan.waves.len() != 1 {
        return Err((
            top("converge"),
            "a convergence rollout has exactly one wave".into(),
        ));
    }
    if let Some(w) = &plan.window {
        w.validate().map_err(|e| (top("window"), e.to_string()))?;
    }
    if plan.assignment_ttl < SignedDuration::from_mins(1) {
        return Err((
            top("assignment_ttl"),
            format!("must be at least 1m (got {:#})", plan.assignment_ttl),
        ));
    }
    at_most_a_year(plan.assignment_ttl).map_err(|m| (top("assignment_ttl"), m))?;
    validate_bundle_validity(plan.bundle_validity)?;
    validate_retry(&plan.retry)?;
    validate_boxes(plan)?;
    if plan.waves.is_empty() {
        return Err((top("waves"), "a plan needs at least one wave".into()));
    }
    validate_analysis(&plan.analysis)?;
    if plan.waves.len() > MAX_WAVES {
        return Err((
            top("waves"),
            format!(
                "a plan has at most {MAX_WAVES} waves (got {})",
                plan.waves.len()
            ),
        ));
    }
    let last = plan.waves.len() - 1;
    for (i, wave) in plan.waves.iter().enumerate() {
        if wave.name.trim().is_empty() {
            return Err((wave_path(i, &["name"]), "must not be empty".into()));
        }
        if let Some(j) = plan.waves[..i].iter().position(|w| w.name == wave.name) {
            return Err((
                wave_path(i, &["name"]),
                format!("{:?} is already the name of waves[{j}]", wave.name),
            ));
        }
        let mut sel = wave_path(i, &[]);
        sel.push(Seg::Key("selector"));
        validate_selector(&wave.selector, sel)?;
        if let Some(share) = wave.share
            && !(share > 0.0 && share <= 100.0)
        {
            return Err((
                wave_path(i, &["share"]),
                format!("must be a percent above 0 and at most 100 (got {share})"),
            ));
        }
        if wave.max_concurrent == Some(0) {
            return Err((
                wave_path(i, &["max_concurrent"]),
                "must be at least 1 (leave it out for no limit)".into(),
            ));
        }
        if let Some(c) = &wave.compartment {
            if c.label.trim().is_empty() {
                return Err((
                    wave_path(i, &["compartment", "label"]),
                    "must name a label such as \"region\"".into(),
                ));
            }
            match (c.max, c.max_percent) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err((
                        wave_path(i, &["compartment"]),
                        "give exactly one of max (sites) and max_percent".into(),
                    ));
                }
                (Some(0), None) => {
                    return Err((
                        wave_path(i, &["compartment", "max"]),
                        "must be at least 1".into(),
                    ));
                }
                (None, Some(p)) if !(p > 0.0 && p <= 100.0) => {
                    return Err((
                        wave_path(i, &["compartment", "max_percent"]),
                        format!("must be a percent above 0 and at most 100 (got {p})"),
                    ));
                }
                _ => {}
            }
        }
        validate_gate(&wave.gate, i)?;
        if i == last {
            if !wave.selector.is_empty() {
                return Err((
                    wave_path(i, &["selector"]),
                    "the last wave takes every site the earlier waves left, so it has no \
                     selector; narrow the earlier waves (e.g. cohort = { not = \"dog\" }) or \
                     the rollout's selector instead"
                        .into(),
                ));
            }
            if wave.share.is_some_and(|s| s < 100.0) {
                return Err((
                    wave_path(i, &["share"]),
                    "the last wave takes every site the earlier waves left, so its share \
                     is 100 (or left out); add a final wave after this one"
                        .into(),
                ));
            }
        }
    }
    Ok(())
}

/// A channel's name: 1 to 64 characters of `a-z`, `0-9`, `-`, `_` and `.`, starting with
/// a letter or digit (it appears in URLs and rollout ids).
fn validate_boxes(plan: &RolloutPlan) -> Result<(), (Path, String)> {
    let top = |k: &'static str| vec![Seg::Key(k)];
    if !(1..=MAX_UNAVAILABLE_PER_SITE).contains(&plan.max_unavailable_per_site) {
        return Err((
            top("max_unavailable_per_site"),
            format!(
                "must be 1 to {MAX_UNAVAILABLE_PER_SITE} (boxes of one site installing at once; got {})",
                plan.max_unavailable_per_site
            ),
        ));
    }
    if plan.box_order.len() > MAX_BOX_ORDER {
        return Err((
            top("box_order"),
            format!(
                "has at most {MAX_BOX_ORDER} selectors (got {})",
                plan.box_order.len()
            ),
        ));
    }
    for (i, sel) in plan.box_order.iter().enumerate() {
        if let Err(m) = BoxSelector::parse(sel) {
            return Err((vec![Seg::Key("box_order"), Seg::Index(i)], m));
        }
        if let Some(j) = plan.box_order[..i].iter().position(|o| o == sel) {
            return Err((
                vec![Seg::Key("box_order"), Seg::Index(i)],
                format!("{sel:?} is already box_order[{j}]"),
            ));
        }
    }
    Ok(())
}

/// One entry of a plan's `box_order`: `role=<role>` (the boxes with that role) or
/// `box=<box id>` (that box).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoxSelector<'a> {
    Role(&'a str),
    Box(&'a str),
}

impl<'a> BoxSelector<'a> {
    /// Reads `role=<role>` or `box=<box id>`; the error says what is wrong.
    pub fn parse(s: &'a str) -> Result<BoxSelector<'a>, String> {
        let Some((key, value)) = s.split_once('=') else {
            return Err(format!(
                "{s:?} is not a box selector: write role=<role> (e.g. role=server) or box=<box id>"
            ));
        };
        let ok = !value.is_empty()
            && value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !ok {
            return Err(format!(
                "{s:?}: the value must match [a-z0-9._-]{{1,63}} (a box id or role as agents set it)"
            ));
        }
        match key {
            "role" => Ok(BoxSelector::Role(value)),
            "box" => Ok(BoxSelector::Box(value)),
            other => Err(format!(
                "{s:?}: unknown key {other:?}; a box selector is role=<role> or box=<box id>"
            )),
        }
    }

    /// Whether the box `box_id` with role `role` is one this selector takes.
    pub fn matches(&self, box_id: &str, role: &str) -> bool {
        match self {
            BoxSelector::Role(r) => *r == role,
            BoxSelector::Box(b) => *b == box_id,
        }
    }
}

pub fn validate_channel_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a channel name: use 1 to 64 characters of a-z, 0-9, '-', '_' \
             and '.', starting with a letter or digit"
        ))
    }
}

/// Checks a selector outside a plan (a channel's), with the plan's rules.
pub fn check_selector(sel: &Selector) -> Result<(), String> {
    validate_selector(sel, vec![]).map_err(|(_, m)| m)
}

/// Checks the `[[analysis]]` entries: the judge's own rules (tolerance, min_samples,
/// alpha), at least one site per group, each (stream, signal) once.
fn validate_analysis(list: &[AnalysisSignal]) -> Result<(), (Path, String)> {
    let at = |i: usize, k: &'static str| vec![Seg::Key("analysis"), Seg::Index(i), Seg::Key(k)];
    if list.len() > MAX_ANALYSIS_SIGNALS {
        return Err((
            vec![Seg::Key("analysis")],
            format!(
                "a plan judges at most {MAX_ANALYSIS_SIGNALS} signals (got {})",
                list.len()
            ),
        ));
    }
    for (i, a) in list.iter().enumerate() {
        if let Some(stream) = &a.stream
            && stream.trim().is_empty()
        {
            return Err((
                at(i, "stream"),
                "must not be empty (leave it out for the release's stream)".into(),
            ));
        }
        if a.min_sites == 0 {
            return Err((
                at(i, "min_sites"),
                "must be at least 1 site per group".into(),
            ));
        }
        if let Err(e) = a.config() {
            let key = match e {
                crate::analysis::AnalysisError::EmptyName => "signal",
                crate::analysis::AnalysisError::Tolerance { .. } => "tolerance",
                crate::analysis::AnalysisError::MinSample { .. } => "min_samples",
                crate::analysis::AnalysisError::Alpha { .. } => "alpha",
                crate::analysis::AnalysisError::NonFinite { .. } => "signal",
            };
            let message = e.to_string().replace("min_sample ", "min_samples ");
            return Err((at(i, key), message));
        }
        if let Some(j) = list[..i]
            .iter()
            .position(|b| b.signal == a.signal && b.stream == a.stream)
        {
            return Err((
                at(i, "signal"),
                format!("{:?} is already judged by analysis[{j}]", a.signal),
            ));
        }
    }
    Ok(())
}

fn validate_selector(sel: &Selector, path: Path) -> Result<(), (Path, String)> {
    for (key, m) in &sel.0 {
        if key.trim().is_empty() {
            return Err((path, "label names must not be empty".into()));
        }
        let values = match m {
            LabelMatch::Is(_) => continue,
            LabelMatch::AnyOf(v) | LabelMatch::Not(v) => v,
        };
        if values.is_empty() {
            return Err((
                path,
                format!("label {key:?} has an empty list of values; it would match nothing"),
            ));
        }
    }
    Ok(())
}

fn validate_gate(g: &Gate, i: usize) -> Result<(), (Path, String)> {
    let p = |k: &'static str| wave_path(i, &["gate", k]);
    if !(0.0..=1.0).contains(&g.success_ratio) {
        return Err((
            p("success_ratio"),
            format!("must be between 0 and 1 (got {})", g.success_ratio),
        ));
    }
    if let Some(pct) = g.failure_budget_percent
        && !(0.0..=100.0).contains(&pct)
    {
        return Err((
            p("failure_budget_percent"),
            format!("must be a percent between 0 and 100 (got {pct})"),
        ));
    }
    if g.bake.is_negative() {
        return Err((
            p("bake"),
            format!("must not be negative (got {:#})", g.bake),
        ));
    }
    at_most_a_year(g.bake).map_err(|m| (p("bake"), m))?;
    if g.report_deadline < SignedDuration::from_mins(1) {
        return Err((
            p("report_deadline"),
            format!(
                "must be at least 1m so a slow link does not make a site silent (got {:#})",
                g.report_deadline
            ),
        ));
    }
    at_most_a_year(g.report_deadline).map_err(|m| (p("report_deadline"), m))?;
    Ok(())
}

fn validate_retry(r: &RetryPolicy) -> Result<(), (Path, String)> {
    let p = |k: &'static str| vec![Seg::Key("retry"), Seg::Key(k)];
    if r.max_attempts == 0 || r.max_attempts > MAX_ATTEMPTS {
        return Err((
            p("max_attempts"),
            format!(
                "must be between 1 (no automatic retry) and {MAX_ATTEMPTS}, the first install \
                 included (got {})",
                r.max_attempts
            ),
        ));
    }
    if r.backoff < MIN_RETRY_BACKOFF {
        return Err((
            p("backoff"),
            format!(
                "must be at least {} (got {})",
                duration::display(MIN_RETRY_BACKOFF),
                duration::display(r.backoff)
            ),
        ));
    }
    at_most_a_year(r.backoff).map_err(|m| (p("backoff"), m))?;
    if r.max_backoff < r.backoff {
        return Err((
            p("max_backoff"),
            format!(
                "must be at least backoff ({}) (got {})",
                duration::display(r.backoff),
                duration::display(r.max_backoff)
            ),
        ));
    }
    at_most_a_year(r.max_backoff).map_err(|m| (p("max_backoff"), m))?;
    Ok(())
}

/// Refuses a duration longer than [`MAX_PLAN_DURATION`], e.g.
/// `100000000000d is longer than the maximum 365d`.
fn at_most_a_year(d: SignedDuration) -> Result<(), String> {
    if d <= MAX_PLAN_DURATION {
        return Ok(());
    }
    Err(format!(
        "{} is longer than the maximum {}",
        duration::display(d),
        duration::display(MAX_PLAN_DURATION)
    ))
}

/// Finds the line and column of the key at `path`, or of its nearest ancestor.
fn locate(text: &str, format: PlanFormat, path: &[Seg]) -> (Option<usize>, Option<usize>) {
    let offset = match format {
        PlanFormat::Toml => locate_toml(text, path),
        PlanFormat::Json => locate_json(text, path),
    };
    match offset {
        Some(at) => {
            let (l, c) = line_col(text, at);
            (Some(l), Some(c))
        }
        None => (None, None),
    }
}

fn locate_toml(text: &str, path: &[Seg]) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let mut best = None;
    let mut table: Option<&DeTable> = Some(doc.get_ref());
    let mut value: Option<&DeValue> = None;
    for seg in path {
        match seg {
            Seg::Key(k) => {
                let t = match (table, value) {
                    (Some(t), _) => t,
                    (None, Some(v)) => v.as_table()?,
                    _ => return best,
                };
                let Some((key, v)) = t.get_key_value(*k) else {
                    return best;
                };
                best = Some(key.span().start);
                table = None;
                value = Some(v.get_ref());
            }
            Seg::Index(i) => {
                let arr = value?.as_array()?;
                let item = arr.get(*i)?;
                best = Some(item.span().start);
                table = None;
                value = Some(item.get_ref());
            }
        }
    }
    best
}

/// A small scanner over already well-formed JSON that finds the offset of the key (or
/// array element) at `path`, or of the deepest ancestor found.
fn locate_json(text: &str, path: &[Seg]) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut pos = 0;
    let mut best = None;
    for seg in path {
        skip_ws(bytes, &mut pos);
        match seg {
            Seg::Key(k) => {
                if bytes.get(pos) != Some(&b'{') {
                    return best;
                }
                pos += 1;
                loop {
                    skip_ws(bytes, &mut pos);
                    match bytes.get(pos) {
                        Some(b'"') => {}
                        _ => return best,
                    }
                    let key_start = pos;
                    let key = read_json_string(text, &mut pos)?;
                    skip_ws(bytes, &mut pos);
                    if bytes.get(pos) != Some(&b':') {
                        return best;
                    }
                    pos += 1;
                    if key == *k {
                        best = Some(key_start);
                        break;
                    }
                    skip_json_value(text, &mut pos)?;
                    skip_ws(bytes, &mut pos);
                    match bytes.get(pos) {
                        Some(b',') => pos += 1,
                        _ => return best,
                    }
                }
            }
            Seg::Index(i) => {
                if bytes.get(pos) != Some(&b'[') {
                    return best;
                }
                pos += 1;
                for n in 0.. {
                    skip_ws(bytes, &mut pos);
                    if n == *i {
                        best = Some(pos);
                        break;
                    }
                    skip_json_value(text, &mut pos)?;
                    skip_ws(bytes, &mut pos);
                    match bytes.get(pos) {
                        Some(b',') => pos += 1,
                        _ => return best,
                    }
                }
            }
        }
    }
    best
}

fn skip_ws(bytes: &[u8], pos: &mut usize) {
    while bytes.get(*pos).is_some_and(|b| b.is_ascii_whitespace()) {
        *pos += 1;
    }
}

fn read_json_string(text: &str, pos: &mut usize) -> Option<String> {
    let start = *pos;
    skip_json_value(text, pos)?;
    serde_json::from_str(&text[start..*pos]).ok()
}

/// Skips one JSON value starting at `pos` (after whitespace).
fn skip_json_value(text: &str, pos: &mut usize) -> Option<()> {
    let bytes = text.as_bytes();
    skip_ws(bytes, pos);
    match *bytes.get(*pos)? {
        b'"' => {
            *pos += 1;
            while let Some(&b) = bytes.get(*pos) {
                *pos += 1;
                match b {
                    b'\\' => *pos += 1,
                    b'"' => return Some(()),
                    _ => {}
                }
            }
            None
        }
        b'{' | b'[' => {
            let mut depth = 0usize;
            while let Some(&b) = bytes.get(*pos) {
                match b {
                    b'"' => {
                        skip_json_value(text, pos)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            *pos += 1;
                            return Some(());
                        }
                    }
                    _ => {}
                }
                *pos += 1;
            }
            None
        }
        _ => {
            while bytes
                .get(*pos)
                .is_some_and(|b| !matches!(b, b',' | b'}' | b']') && !b.is_ascii_whitespace())
            {
                *pos += 1;
            }
            Some(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../deploy/examples/rollout.toml");

    fn toml_err(text: &str) -> PlanError {
        parse_plan(text, PlanFormat::Toml).unwrap_err()
    }

    fn json_err(text: &str) -> PlanError {
        parse_plan(text, PlanFormat::Json).unwrap_err()
    }

    const ANALYSED: &str = r#"name = "pos 2.5"
release = "pos-2.5.0"

[[waves]]
name = "all"

[[analysis]]
signal = "error_ratio"
direction = "increase_is_bad"
tolerance = { absolute = 0.01 }

[[analysis]]
signal = "checkout_p95_seconds"
stream = "checkout"
direction = "increase_is_bad"
tolerance = { relative = 0.2 }
min_sites = 10
min_samples = 50
alpha = 0.01
"#;

    #[test]
    fn analysis_signals_parse_with_defaults_and_round_trip() {
        use crate::analysis::{Direction, Tolerance};
        let plan = parse_plan(ANALYSED, PlanFormat::Toml).unwrap();
        let a = &plan.analysis;
        assert_eq!(a.len(), 2);
        assert_eq!(
            (
                a[0].direction,
                a[0].tolerance,
                a[0].min_sites,
                a[0].min_samples,
                a[0].alpha
            ),
            (
                Direction::IncreaseIsBad,
                Tolerance::Absolute(0.01),
                5,
                20,
                0.05
            )
        );
        assert_eq!(a[0].stream_or("pos"), "pos");
        assert_eq!(a[1].stream_or("pos"), "checkout");
        assert_eq!(
            (a[1].tolerance, a[1].min_sites, a[1].alpha),
            (Tolerance::Relative(0.2), 10, 0.01)
        );
        let back = parse_plan(&plan.to_json(), PlanFormat::Json).unwrap();
        assert_eq!(back, plan);
        // A plan without analysis stores no key for it.
        let plain = parse_plan(
            &ANALYSED[..ANALYSED.find("[[analysis]]").unwrap()],
            PlanFormat::Toml,
        )
        .unwrap();
        assert!(!plain.to_json().contains("analysis"));
    }

    #[test]
    fn bad_analysis_settings_are_named_by_line_and_path() {
        let with = |from: &str, to: &str| ANALYSED.replacen(from, to, 1);
        for (text, path, says) in [
            (
                with("{ absolute = 0.01 }", "{ absolute = -1 }"),
                "analysis[0].tolerance",
                "tolerance must be a finite number >= 0",
            ),
            (
                with("min_samples = 50", "min_samples = 3"),
                "analysis[1].min_samples",
                "min_samples must be at least 5",
            ),
            (
                with("alpha = 0.01", "alpha = 0.5"),
                "analysis[1].alpha",
                "alpha",
            ),
            (
                with("min_sites = 10", "min_sites = 0"),
                "analysis[1].min_sites",
                "at least 1",
            ),
            (
                with(
                    "\"checkout_p95_seconds\"\nstream = \"checkout\"",
                    "\"error_ratio\"",
                ),
                "analysis[1].signal",
                "already judged by analysis[0]",
            ),
        ] {
            let e = toml_err(&text);
            assert_eq!(e.path(), path, "{e}");
            assert!(e.to_string().contains(says), "{e}");
            assert!(e.line().is_some(), "{e}");
        }
        let e = toml_err(&with(
            "direction = \"increase_is_bad\"",
            "direction = \"up\"",
        ));
        assert!(e.to_string().contains("analysis[0].direction"), "{e}");
        let e = toml_err(&with("tolerance = { absolute = 0.01 }", "tolerance = 0.01"));
        assert!(e.to_string().contains("analysis[0].tolerance"), "{e}");
        let e = toml_err(&with(
            "signal = \"error_ratio\"",
            "signal = \"error_ratio\"\nthreshold = 3",
        ));
        assert!(e.to_string().contains("threshold"), "{e}");
    }

    #[test]
    fn the_example_plan_parses_with_defaults_filled_in() {
        let plan = parse_plan(EXAMPLE, PlanFormat::Toml).unwrap();
        assert_eq!(plan.release, "pos-2.4.0");
        assert_eq!(plan.waves.len(), 5);
        assert_eq!(
            plan.waves
                .iter()
                .map(|w| w.name.as_str())
                .collect::<Vec<_>>(),
            ["pigs", "canary city", "early 25%", "the rest", "dogs"]
        );
        assert_eq!(plan.assignment_ttl, SignedDuration::from_hours(168));
        assert_eq!(plan.bundle_validity, SignedDuration::from_hours(168));
        assert_eq!(plan.waves[2].share, Some(25.0));
        assert_eq!(plan.waves[1].gate.bake, SignedDuration::from_hours(2));
        assert_eq!(plan.waves[2].gate.on_silent, OnSilent::Exclude);
        // Unset gate keys take their defaults.
        assert_eq!(plan.waves[0].gate.min_sample, 1);
        assert_eq!(
            plan.waves[0].gate.report_deadline,
            defaults::report_deadline()
        );
        assert!(plan.waves[4].gate.approval);
        assert!(plan.window.is_some());
    }

    #[test]
    fn a_minimal_plan_gets_the_default_gate() {
        let plan = parse_plan(
            "name = \"x\"\nrelease = \"r-1\"\n[[waves]]\nname = \"all\"\n",
            PlanFormat::Toml,
        )
        .unwrap();
        assert_eq!(plan.waves[0].gate, Gate::default());
        assert_eq!(plan.waves[0].gate.success_ratio, 0.95);
        assert_eq!(plan.waves[0].gate.bake, SignedDuration::from_mins(10));
        assert!(!plan.auto_rollback);
        assert!(plan.selector.is_empty());
    }

    #[test]
    fn json_round_trip_gives_the_same_plan() {
        let plan = parse_plan(EXAMPLE, PlanFormat::Toml).unwrap();
        let json = plan.to_json();
        assert!(json.contains("\"bake\": \"30m\""), "{json}");
        let again = parse_plan(&json, PlanFormat::Json).unwrap();
        assert_eq!(again, plan);
    }

    #[test]
    fn out_of_range_value_names_line_and_field() {
        let text = EXAMPLE.replace(
            "success_ratio = 0.98\nfailure_budget_percent = 1\nmin_sample = 50",
            "success_ratio = 1.5\nfailure_budget_percent = 1\nmin_sample = 50",
        );
        let err = toml_err(&text);
        let line = text
            .lines()
            .position(|l| l.starts_with("success_ratio = 1.5"))
            .unwrap()
            + 1;
        assert_eq!(err.path(), "waves[2].gate.success_ratio");
        assert_eq!(err.line(), Some(line));
        assert_eq!(
            err.to_string(),
            format!(
                "line {line}, column 1: waves[2].gate.success_ratio: must be between 0 and 1 (got 1.5)"
            )
        );
    }

    #[test]
    fn unknown_key_is_an_error_with_line_and_path() {
        let text = "name = \"x\"\nrelease = \"r\"\n[[waves]]\nname = \"a\"\n[waves.gate]\nbake = \"5m\"\nsucess_ratio = 0.9\n";
        let err = toml_err(text);
        assert_eq!(err.line(), Some(7), "{err}");
        assert_eq!(err.path(), "waves[0].gate.sucess_ratio", "{err}");
        assert!(
            err.to_string().contains("unknown field `sucess_ratio`"),
            "{err}"
        );

        let err =
            toml_err("name = \"x\"\nrelease = \"r\"\ncolour = \"blue\"\n[[waves]]\nname = \"a\"\n");
        assert_eq!(err.line(), Some(3), "{err}");
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn wrong_type_and_bad_duration_name_the_field() {
        let err = toml_err(
            "name = \"x\"\nrelease = \"r\"\n[[waves]]\nname = \"a\"\nmax_concurrent = \"ten\"\n",
        );
        assert_eq!(err.path(), "waves[0].max_concurrent", "{err}");
        assert_eq!(err.line(), Some(5), "{err}");

        let err = toml_err(
            "name = \"x\"\nrelease = \"r\"\n[[waves]]\nname = \"a\"\ngate = { bake = \"ten minutes\" }\n",
        );
        assert_eq!(err.path(), "waves[0].gate.bake", "{err}");
        assert_eq!(err.line(), Some(5), "{err}");
        assert!(err.to_string().contains("is not a duration"), "{err}");
    }

    #[test]
    fn missing_field_is_named() {
        let err = toml_err("name = \"x\"\n[[waves]]\nname = \"a\"\n");
        assert_eq!(err.to_string(), "line 1, column 1: missing field `release`");
        let err = toml_err("name = \"x\"\nrelease = \"r\"\n[[waves]]\nshare = 5\n");
        assert_eq!(err.path(), "waves[0]", "{err}");
        assert!(err.to_string().contains("missing field `name`"), "{err}");
    }

    #[test]
    fn toml_syntax_error_names_the_line() {
        let err = toml_err("name = \"x\"\nrelease = \"r\"\n[[waves]\nname = \"a\"\n");
        assert!(matches!(err, PlanError::Syntax { line: 3, .. }), "{err}");
        assert!(
            err.to_string().starts_with("TOML syntax error at line 3"),
            "{err}"
        );
    }

    #[test]
    fn json_errors_name_line_and_field() {
        let text = r#"{
  "name": "x",
  "release": "r",
  "waves": [
    { "name": "a", "share": 10 },
    { "name": "b", "gate": { "failure_budget_percent": 140 } }
  ]
}"#;
        let err = json_err(text);
        assert_eq!(err.path(), "waves[1].gate.failure_budget_percent", "{err}");
        assert_eq!(err.line(), Some(6), "{err}");
        assert!(err.to_string().starts_with("line 6, column 30: "), "{err}");

        let err = json_err(
            "{\n  \"name\": \"x\",\n  \"release\": \"r\",\n  \"waves\": [{\"name\": \"a\", \"shares\": 3}]\n}",
        );
        assert_eq!(err.line(), Some(4), "{err}");
        assert!(err.to_string().contains("unknown field `shares`"), "{err}");

        let err = json_err("{\n  \"name\": \"x\",\n  \"release\": \n}");
        assert!(matches!(err, PlanError::Syntax { line: 4, .. }), "{err}");
    }

    #[test]
    fn the_last_wave_takes_everyone_left() {
        let err = toml_err(
            "name = \"x\"\nrelease = \"r\"\n[[waves]]\nname = \"a\"\n[[waves]]\nname = \"dogs\"\nselector = { cohort = \"dog\" }\n",
        );
        assert_eq!(err.path(), "waves[1].selector");
        assert_eq!(err.line(), Some(7));
        let err = toml_err("name = \"x\"\nrelease = \"r\"\n[[waves]]\nname = \"a\"\nshare = 50\n");
        assert_eq!(err.path(), "waves[0].share");
    }

    #[test]
    fn other_validation_errors() {
        let base = "name = \"x\"\nrelease = \"r\"\n";
        let cases = [
            (
                "[[waves]]\nname = \"a\"\nshare = 0\n[[waves]]\nname = \"b\"\n",
                "waves[0].share",
            ),
            (
                "[[waves]]\nname = \"a\"\n[[waves]]\nname = \"a\"\n",
                "waves[1].name",
            ),
            (
                "[[waves]]\nname = \"a\"\ncompartment = { label = \"region\" }\n",
                "waves[0].compartment",
            ),
            (
                "[[waves]]\nname = \"a\"\ncompartment = { label = \"region\", max = 2, max_percent = 5 }\n",
                "waves[0].compartment",
            ),
            (
                "[[waves]]\nname = \"a\"\nmax_concurrent = 0\n",
                "waves[0].max_concurrent",
            ),
            (
                "[[waves]]\nname = \"a\"\ngate = { report_deadline = \"10s\" }\n",
                "waves[0].gate.report_deadline",
            ),
            (
                "[[waves]]\nname = \"a\"\ngate = { bake = \"-5m\" }\n",
                "waves[0].gate.bake",
            ),
            ("waves = []\n", "waves"),
            (
                "selector = { cohort = [] }\n[[waves]]\nname = \"a\"\n",
                "selector",
            ),
            (
                "[window]\nstart = \"2am\"\nend = \"05:00\"\n[[waves]]\nname = \"a\"\n",
                "window",
            ),
        ];
        for (tail, path) in cases {
            let err = toml_err(&format!("{base}{tail}"));
            assert_eq!(err.path(), path, "{tail}: {err}");
            assert!(err.line().is_some(), "{tail}: {err}");
        }
    }

    #[test]
    fn bundle_validity_is_between_an_hour_and_thirty_days() {
        let plan = |v: &str| {
            format!(
                "name = \"x\"\nrelease = \"r\"\nbundle_validity = \"{v}\"\n[[waves]]\nname = \"a\"\n"
            )
        };
        let ok = parse_plan(&plan("30d"), PlanFormat::Toml).unwrap();
        assert_eq!(ok.bundle_validity, SignedDuration::from_hours(720));
        for (v, got) in [("31d", "31d"), ("30m", "30m")] {
            let err = toml_err(&plan(v));
            assert_eq!(err.path(), "bundle_validity", "{err}");
            assert!(
                err.to_string().ends_with(&format!(
                    "bundle_validity: must be between 1h and 30d (got {got})"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn durations_longer_than_a_year_name_the_key() {
        let base = "name = \"x\"\nrelease = \"r\"\n";
        let cases = [
            (
                "assignment_ttl = \"1000000000d\"\n[[waves]]\nname = \"a\"\n",
                "assignment_ttl",
                "assignment_ttl: 1000000000d is longer than the maximum 365d",
            ),
            (
                "[[waves]]\nname = \"a\"\nshare = 5\n[[waves]]\nname = \"b\"\ngate = { bake = \"100000000000d\" }\n",
                "waves[1].gate.bake",
                "waves[1].gate.bake: 100000000000d is longer than the maximum 365d",
            ),
            (
                "[[waves]]\nname = \"a\"\ngate = { report_deadline = \"9000h\" }\n",
                "waves[0].gate.report_deadline",
                "waves[0].gate.report_deadline: 375d is longer than the maximum 365d",
            ),
        ];
        for (tail, path, message) in cases {
            let err = toml_err(&format!("{base}{tail}"));
            assert_eq!(err.path(), path, "{err}");
            assert!(err.to_string().ends_with(message), "{err}");
            assert!(err.line().is_some(), "{err}");
        }
        // A year is allowed, in any spelling.
        for ok in ["365d", "8760h"] {
            let text = format!(
                "{base}assignment_ttl = \"{ok}\"\n[[waves]]\nname = \"a\"\ngate = {{ bake = \"{ok}\", report_deadline = \"{ok}\" }}\n"
            );
            let plan = parse_plan(&text, PlanFormat::Toml).unwrap();
            assert_eq!(plan.assignment_ttl, MAX_PLAN_DURATION);
            assert_eq!(plan.waves[0].gate.bake, MAX_PLAN_DURATION);
        }
        // JSON plans are held to the same bounds.
        let err = json_err(
            r#"{"name": "x", "release": "r", "waves": [{"name": "a", "gate": {"bake": "366d"}}]}"#,
        );
        assert_eq!(err.path(), "waves[0].gate.bake", "{err}");
        assert!(
            err.to_string()
                .contains("366d is longer than the maximum 365d")
        );
    }

    #[test]
    fn selectors_match_labels() {
        let plan = parse_plan(
            "name = \"x\"\nrelease = \"r\"\nselector = { format = [\"store\", \"kiosk\"], cohort = { not = [\"dog\", \"pig\"] }, region = \"eu\" }\n[[waves]]\nname = \"a\"\n",
            PlanFormat::Toml,
        )
        .unwrap();
        let l = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(
            plan.selector
                .matches(&l(&[("format", "kiosk"), ("region", "eu")]))
        );
        assert!(plan.selector.matches(&l(&[
            ("format", "store"),
            ("region", "eu"),
            ("cohort", "canary")
        ])));
        assert!(!plan.selector.matches(&l(&[
            ("format", "store"),
            ("region", "eu"),
            ("cohort", "dog")
        ])));
        assert!(
            !plan
                .selector
                .matches(&l(&[("format", "van"), ("region", "eu")]))
        );
        assert!(!plan.selector.matches(&l(&[("format", "store")])));
        assert_eq!(
            plan.selector.to_string(),
            "cohort not in [dog, pig], format in [store, kiosk], region=eu"
        );
    }

    #[test]
    fn durations_accept_friendly_iso_and_days() {
        assert_eq!(
            duration::parse("30s").unwrap(),
            SignedDuration::from_secs(30)
        );
        assert_eq!(
            duration::parse("1h 30m").unwrap(),
            SignedDuration::from_mins(90)
        );
        assert_eq!(
            duration::parse("PT10M").unwrap(),
            SignedDuration::from_mins(10)
        );
        assert_eq!(
            duration::parse("2d").unwrap(),
            SignedDuration::from_hours(48)
        );
        assert!(duration::parse("soon").is_err());
    }

    fn with_start(start: &str) -> String {
        format!(
            "name = \"x\"\nrelease = \"r-1\"\nstart_at = \"{start}\"\n[[waves]]\nname = \"all\"\n"
        )
    }

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn start_at_reads_rfc3339_and_zoned_local_times() {
        let p = parse_plan(&with_start("2026-12-05T02:00:00Z"), PlanFormat::Toml).unwrap();
        let s = p.start_at.unwrap();
        assert_eq!((s.at, s.zone), (ts("2026-12-05T02:00:00Z"), None));
        let p = parse_plan(
            &with_start("2026-12-05T02:00:00[Europe/Berlin]"),
            PlanFormat::Toml,
        )
        .unwrap();
        let s = p.start_at.clone().unwrap();
        assert_eq!(s.at, ts("2026-12-05T01:00:00Z"), "CET is UTC+1");
        assert_eq!(s.zone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(s.local(), "2026-12-05 02:00 CET (Europe/Berlin)");
        // Written back as given, and read back to the same plan.
        let again = parse_plan(&p.to_json(), PlanFormat::Json).unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn start_at_in_a_daylight_saving_gap_moves_forward_and_in_a_fold_takes_the_first() {
        // Berlin springs forward at 02:00 on 2026-03-29: 02:30 does not exist; it is read
        // as 03:30 CEST (the gap's length later), 01:30 UTC.
        let gap = StartAt::parse("2026-03-29T02:30:00[Europe/Berlin]").unwrap();
        assert_eq!(gap.at, ts("2026-03-29T01:30:00Z"));
        // Berlin falls back at 03:00 on 2026-10-25: 02:30 happens twice; the first (CEST).
        let fold = StartAt::parse("2026-10-25T02:30:00[Europe/Berlin]").unwrap();
        assert_eq!(fold.at, ts("2026-10-25T00:30:00Z"));
        // An explicit offset picks the second one, and must agree with the zone.
        let second = StartAt::parse("2026-10-25T02:30:00+01:00[Europe/Berlin]").unwrap();
        assert_eq!(second.at, ts("2026-10-25T01:30:00Z"));
        assert!(StartAt::parse("2026-12-05T02:00:00+05:00[Europe/Berlin]").is_err());
    }

    #[test]
    fn bad_start_at_names_the_key_and_what_to_write() {
        for (value, want) in [
            (
                "2026-12-05T02:00:00[Mars/Olympus]",
                "not a known IANA time zone",
            ),
            ("2026-12-05T02:00:00", "has no offset or zone"),
            ("tomorrow at two", "is not a time"),
            ("2026-12-05T02:00:00[Europe/Berlin", "not closed"),
            ("2026-13-05T02:00:00[Europe/Berlin]", "is not a time"),
        ] {
            let e = toml_err(&with_start(value));
            assert_eq!(e.path(), "start_at", "{value}: {e}");
            assert_eq!(e.line(), Some(3), "{value}: {e}");
            assert!(e.to_string().contains(want), "{value}: {e}");
        }
    }

    #[test]
    fn a_new_plan_refuses_a_start_at_in_the_past_or_too_far_ahead() {
        let now = ts("2026-12-04T18:00:00Z");
        let text = with_start("2026-12-04T17:59:00Z");
        assert!(
            parse_plan(&text, PlanFormat::Toml).is_ok(),
            "stored plans read back"
        );
        let e = parse_new_plan(&text, PlanFormat::Toml, now).unwrap_err();
        assert_eq!((e.path(), e.line()), ("start_at", Some(3)), "{e}");
        assert!(e.to_string().contains("is in the past"), "{e}");
        let e =
            parse_new_plan(&with_start("2028-01-01T00:00:00Z"), PlanFormat::Toml, now).unwrap_err();
        assert!(e.to_string().contains("more than 365d ahead"), "{e}");
        let ok = parse_new_plan(
            &with_start("2026-12-05T02:00:00[Europe/Berlin]"),
            PlanFormat::Toml,
            now,
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn the_retry_table_is_read_into_every_gate_and_doubles_up_to_its_cap() {
        let text = "name = \"x\"\nrelease = \"r\"\n\n[retry]\nmax_attempts = 4\nbackoff = \"1m\"\nmax_backoff = \"3m\"\n\n[[waves]]\nname = \"a\"\n\n[[waves]]\nname = \"b\"\n";
        let plan = parse_plan(text, PlanFormat::Toml).unwrap();
        assert_eq!(plan.retry.max_attempts, 4);
        assert!(plan.waves.iter().all(|w| w.gate.retry == plan.retry));
        let mins = |n| plan.retry.delay_after(n).as_secs() / 60;
        assert_eq!((mins(1), mins(2), mins(3), mins(9)), (1, 2, 3, 3));
        let again = parse_plan(&plan.to_json(), PlanFormat::Json).unwrap();
        assert_eq!(again, plan, "the policy survives the stored JSON form");

        let none = parse_plan(
            "name = \"x\"\nrelease = \"r\"\n[[waves]]\nname = \"a\"\n",
            PlanFormat::Toml,
        )
        .unwrap();
        assert_eq!(none.retry, RetryPolicy::default());
        assert!(!none.retry.retries(), "no [retry]: nothing is retried");
        assert!(!none.to_json().contains("retry"), "{}", none.to_json());
    }

    #[test]
    fn a_bad_retry_table_is_refused_naming_the_key() {
        let with = |body: &str| {
            format!("name = \"x\"\nrelease = \"r\"\n[retry]\n{body}\n[[waves]]\nname = \"a\"\n")
        };
        for (body, path, want) in [
            (
                "max_attempts = 0",
                "retry.max_attempts",
                "must be between 1 (no automatic retry) and 10",
            ),
            ("max_attempts = 11", "retry.max_attempts", "(got 11)"),
            (
                "backoff = \"500ms\"",
                "retry.backoff",
                "must be at least 1s",
            ),
            (
                "backoff = \"400d\"",
                "retry.backoff",
                "longer than the maximum 365d",
            ),
            (
                "backoff = \"10m\"\nmax_backoff = \"5m\"",
                "retry.max_backoff",
                "must be at least backoff (10m)",
            ),
            ("backoff = \"soon\"", "retry.backoff", "is not a duration"),
            ("attempts = 3", "retry.attempts", "unknown field `attempts`"),
        ] {
            let e = toml_err(&with(body));
            assert_eq!(e.path(), path, "{body}: {e}");
            assert!(e.line().is_some(), "{body}: {e}");
            assert!(e.to_string().contains(want), "{body}: {e}");
        }
        // Inside a wave's gate it is an unknown key: the policy is the plan's.
        let e = toml_err(
            "name = \"x\"\nrelease = \"r\"\n[[waves]]\nname = \"a\"\ngate = { retry = 3 }\n",
        );
        assert!(e.to_string().contains("unknown field `retry`"), "{e}");
    }

    #[test]
    fn box_order_and_max_unavailable_per_site_are_checked_naming_the_key() {
        let with = |body: &str| {
            format!("name = \"x\"\nrelease = \"r\"\n{body}\n[[waves]]\nname = \"a\"\n")
        };
        for (body, path, want) in [
            (
                "max_unavailable_per_site = 0",
                "max_unavailable_per_site",
                "must be 1 to 64",
            ),
            (
                "max_unavailable_per_site = 65",
                "max_unavailable_per_site",
                "got 65)",
            ),
            (
                "box_order = [\"server\"]",
                "box_order[0]",
                "write role=<role> (e.g. role=server) or box=<box id>",
            ),
            (
                "box_order = [\"role=server\", \"zone=a\"]",
                "box_order[1]",
                "unknown key \"zone\"",
            ),
            (
                "box_order = [\"role=\"]",
                "box_order[0]",
                "must match [a-z0-9._-]{1,63}",
            ),
            (
                "box_order = [\"role=server\", \"role=server\"]",
                "box_order[1]",
                "is already box_order[0]",
            ),
        ] {
            let e = toml_err(&with(body));
            assert_eq!(e.path(), path, "{body}: {e}");
            assert!(e.to_string().contains(want), "{body}: {e}");
        }
        let plan = parse_plan(
            &with("box_order = [\"role=server\", \"box=node-3\"]\nmax_unavailable_per_site = 2"),
            PlanFormat::Toml,
        )
        .unwrap();
        assert_eq!(plan.box_order, ["role=server", "box=node-3"]);
        assert_eq!(plan.max_unavailable_per_site, 2);
        let default = parse_plan(&with(""), PlanFormat::Toml).unwrap();
        assert_eq!(
            (default.max_unavailable_per_site, default.box_order.len()),
            (1, 0)
        );
    }
}
