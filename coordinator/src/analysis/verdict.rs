//! The judge: one signal, the upgraded group against the control group, to a verdict.
//!
//! Semantics (the operator's view is docs/analysis.md):
//! 1. Each group needs at least `min_sample` samples; with fewer the verdict is
//!    **Inconclusive** (never Pass), whatever the numbers say so far.
//! 2. The **effect** is the difference of the medians, upgraded minus control, and, when
//!    the control median is not 0, that difference relative to the control median. The
//!    change *in the bad direction* is the effect itself when an increase is bad and its
//!    negation when a decrease is bad.
//! 3. **Tolerance gates the test** (as Kayenta's Mann–Whitney classifier gates its
//!    confidence interval with effect-size thresholds): a change in the bad direction
//!    no larger than the tolerance (relative: of the control median; absolute: in the
//!    signal's unit) is **Pass**, however significant; a change beyond it is **Fail** only
//!    when the one-sided Mann–Whitney U test in the bad direction gives p < `alpha`, and
//!    **Inconclusive** otherwise (a large change not yet distinguishable from noise).
//!    With a relative tolerance and a control median of 0, any change in the bad
//!    direction is beyond the tolerance.
//!
//! Consequences, property-tested below: identical groups never Fail (the effect is 0);
//! a shift beyond the tolerance that separates the groups, with enough samples, always
//! Fails; fewer than the minimum is never Pass; mirroring the values and the direction
//! gives the same verdict.
//!
//! Pure: samples and configuration in, a [`Judgement`] out, with every number kept. It
//! never reads a clock, a store or the network, and it never acts on the verdict.

use serde::{Deserialize, Serialize};

use super::mann_whitney::{self, Alternative, MannWhitney};

/// One definition of these on the wire and here (`shared::protocol::analysis`).
pub use fleetwave_shared::protocol::analysis::{Direction, Spread, Tolerance, Verdict};
use fleetwave_shared::protocol::analysis::{number, p_value, signed};

/// The significance level used when a signal does not set one.
pub const DEFAULT_ALPHA: f64 = 0.05;

/// The smallest `min_sample` accepted: below it the normal approximation of U says
/// nothing useful.
pub const MIN_SAMPLE_FLOOR: usize = 5;

/// One signal's analysis settings, valid by construction ([`SignalConfig::new`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignalConfig {
    name: String,
    direction: Direction,
    tolerance: Tolerance,
    min_sample: usize,
    alpha: f64,
}

/// Why a signal's settings or samples were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnalysisError {
    #[error("signal name must not be empty")]
    EmptyName,
    #[error("signal {signal:?}: tolerance must be a finite number >= 0, got {value}")]
    Tolerance { signal: String, value: f64 },
    #[error(
        "signal {signal:?}: min_sample must be at least {MIN_SAMPLE_FLOOR} per group, got {value}"
    )]
    MinSample { signal: String, value: usize },
    #[error("signal {signal:?}: alpha (significance level) must be > 0 and < 0.5, got {value}")]
    Alpha { signal: String, value: f64 },
    #[error("signal {signal:?}: {group} sample #{index} is {value}, not a finite number")]
    NonFinite {
        signal: String,
        group: Group,
        index: usize,
        value: f64,
    },
}

/// Which group a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    Upgraded,
    Control,
}

impl std::fmt::Display for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Group::Upgraded => "upgraded",
            Group::Control => "control",
        })
    }
}

impl SignalConfig {
    pub fn new(
        name: impl Into<String>,
        direction: Direction,
        tolerance: Tolerance,
        min_sample: usize,
        alpha: f64,
    ) -> Result<Self, AnalysisError> {
        let name = name.into();
        if name.trim().is_empty() {
            return Err(AnalysisError::EmptyName);
        }
        let t = match tolerance {
            Tolerance::Relative(t) | Tolerance::Absolute(t) => t,
        };
        if !t.is_finite() || t < 0.0 {
            return Err(AnalysisError::Tolerance {
                signal: name,
                value: t,
            });
        }
        if min_sample < MIN_SAMPLE_FLOOR {
            return Err(AnalysisError::MinSample {
                signal: name,
                value: min_sample,
            });
        }
        if !(alpha > 0.0 && alpha < 0.5) {
            return Err(AnalysisError::Alpha {
                signal: name,
                value: alpha,
            });
        }
        Ok(SignalConfig {
            name,
            direction,
            tolerance,
            min_sample,
            alpha,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn direction(&self) -> Direction {
        self.direction
    }
    pub fn tolerance(&self) -> Tolerance {
        self.tolerance
    }
    pub fn min_sample(&self) -> usize {
        self.min_sample
    }
    pub fn alpha(&self) -> f64 {
        self.alpha
    }
}

/// One group's summary.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// Number of samples.
    pub n: usize,
    /// Their median; `None` for an empty group.
    pub median: Option<f64>,
}

/// The effect: how far the upgraded median moved from the control median.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Effect {
    /// Upgraded median minus control median, in the signal's unit.
    pub difference: f64,
    /// `difference / |control median|`; `None` when the control median is 0.
    pub relative: Option<f64>,
    /// Whether the change in the bad direction exceeds the tolerance.
    pub beyond_tolerance: bool,
}

/// Everything the judge computed, and why it decided as it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub signal: String,
    pub verdict: Verdict,
    pub direction: Direction,
    pub tolerance: Tolerance,
    pub min_sample: usize,
    pub alpha: f64,
    pub upgraded: GroupSummary,
    pub control: GroupSummary,
    /// `None` when a group is empty.
    pub effect: Option<Effect>,
    /// The one-sided test in the bad direction (U of the upgraded group); `None` when a
    /// group is empty.
    pub test: Option<MannWhitney>,
    /// One sentence for the timeline, naming the signal.
    pub reason: String,
}

/// Judges one signal. `upgraded` and `control` are the two groups' samples over the
/// same minutes (their order does not matter). Refuses a non-finite sample by naming
/// the signal, the group and the sample's position.
pub fn judge(
    config: &SignalConfig,
    upgraded: &[f64],
    control: &[f64],
) -> Result<Judgement, AnalysisError> {
    for (group, values) in [(Group::Upgraded, upgraded), (Group::Control, control)] {
        if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(AnalysisError::NonFinite {
                signal: config.name.clone(),
                group,
                index,
                value,
            });
        }
    }
    let up = GroupSummary {
        n: upgraded.len(),
        median: median(upgraded),
    };
    let ctl = GroupSummary {
        n: control.len(),
        median: median(control),
    };
    let (effect, test) = match (up.median, ctl.median) {
        (Some(mu), Some(mc)) => {
            let difference = mu - mc;
            let relative = (mc != 0.0).then(|| difference / mc.abs());
            let sign = match config.direction {
                Direction::IncreaseIsBad => 1.0,
                Direction::DecreaseIsBad => -1.0,
            };
            let beyond_tolerance = match config.tolerance {
                Tolerance::Absolute(t) => sign * difference > t,
                Tolerance::Relative(t) => match relative {
                    Some(r) => sign * r > t,
                    None => sign * difference > 0.0,
                },
            };
            let alternative = match config.direction {
                Direction::IncreaseIsBad => Alternative::Greater,
                Direction::DecreaseIsBad => Alternative::Less,
            };
            (
                Some(Effect {
                    difference,
                    relative,
                    beyond_tolerance,
                }),
                Some(mann_whitney::test(upgraded, control, alternative)),
            )
        }
        _ => (None, None),
    };
    let enough = up.n >= config.min_sample && ctl.n >= config.min_sample;
    let verdict = match (enough, effect, test) {
        (false, _, _) | (true, None, _) | (true, _, None) => Verdict::Inconclusive,
        (true, Some(e), Some(_)) if !e.beyond_tolerance => Verdict::Pass,
        (true, Some(_), Some(t)) if t.p < config.alpha => Verdict::Fail,
        (true, Some(_), Some(_)) => Verdict::Inconclusive,
    };
    let reason = reason(config, verdict, enough, &up, &ctl, effect, test);
    Ok(Judgement {
        signal: config.name.clone(),
        verdict,
        direction: config.direction,
        tolerance: config.tolerance,
        min_sample: config.min_sample,
        alpha: config.alpha,
        upgraded: up,
        control: ctl,
        effect,
        test,
        reason,
    })
}

/// The smallest, quartiles (linear interpolation between the closest ranks, as
/// `numpy.percentile`'s default), median and largest of `values`; `None` when empty.
pub fn spread(values: &[f64]) -> Option<Spread> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable_by(f64::total_cmp);
    let at = |q: f64| {
        let pos = q * (v.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
    };
    Some(Spread {
        min: v[0],
        q1: at(0.25),
        median: at(0.5),
        q3: at(0.75),
        max: v[v.len() - 1],
    })
}

/// The median (mean of the two middle values for an even count); `None` when empty.
/// Selection, not a full sort: linear on average.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    let mid = v.len() / 2;
    let (lower, &mut m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    if values.len() % 2 == 1 {
        return Some(m);
    }
    let below = lower.iter().copied().max_by(f64::total_cmp)?;
    Some((below + m) / 2.0)
}

fn reason(
    config: &SignalConfig,
    verdict: Verdict,
    enough: bool,
    up: &GroupSummary,
    ctl: &GroupSummary,
    effect: Option<Effect>,
    test: Option<MannWhitney>,
) -> String {
    let name = &config.name;
    let sizes = format!("upgraded {} samples, control {}", up.n, ctl.n);
    let (Some(mu), Some(mc), Some(e), Some(t)) = (up.median, ctl.median, effect, test) else {
        return format!(
            "{name}: inconclusive, a group has no samples yet ({sizes}; need {} per group)",
            config.min_sample
        );
    };
    let relative = match e.relative {
        Some(r) => format!(", {:+.1} %", r * 100.0),
        None => String::new(),
    };
    let tolerance = config.tolerance;
    let bad = match config.direction {
        Direction::IncreaseIsBad => "an increase is bad",
        Direction::DecreaseIsBad => "a decrease is bad",
    };
    let numbers = format!(
        "upgraded median {} vs control {} ({}{relative}); U = {}, z = {:.2}, one-sided p = {}",
        number(mu),
        number(mc),
        signed(e.difference),
        number(t.u),
        t.z,
        p_value(t.p),
    );
    match verdict {
        Verdict::Inconclusive if !enough => format!(
            "{name}: inconclusive, too few samples ({sizes}; need {} per group); so far {numbers}",
            config.min_sample
        ),
        Verdict::Pass => {
            format!("{name}: pass, within the tolerance of {tolerance} ({bad}); {numbers}; {sizes}")
        }
        Verdict::Fail => format!(
            "{name}: fail, beyond the tolerance of {tolerance} ({bad}) and significant (p < {}); {numbers}; {sizes}",
            config.alpha
        ),
        Verdict::Inconclusive => format!(
            "{name}: inconclusive, beyond the tolerance of {tolerance} ({bad}) but not significant yet (p >= {}); {numbers}; {sizes}",
            config.alpha
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(direction: Direction, tolerance: Tolerance, min_sample: usize) -> SignalConfig {
        SignalConfig::new(
            "error_ratio",
            direction,
            tolerance,
            min_sample,
            DEFAULT_ALPHA,
        )
        .expect("valid config")
    }

    #[test]
    fn spreads() {
        assert_eq!(spread(&[]), None);
        let s = spread(&[5.0, 1.0, 4.0, 2.0, 3.0]).unwrap();
        assert_eq!(
            (s.min, s.q1, s.median, s.q3, s.max),
            (1.0, 2.0, 3.0, 4.0, 5.0)
        );
        // numpy.percentile([1, 2, 3, 4], [25, 50, 75]) = [1.75, 2.5, 3.25]
        let s = spread(&[4.0, 3.0, 2.0, 1.0]).unwrap();
        assert_eq!((s.q1, s.median, s.q3), (1.75, 2.5, 3.25));
        assert_eq!(spread(&[7.0]).unwrap().q3, 7.0);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        let e = SignalConfig::new(
            "p95",
            Direction::IncreaseIsBad,
            Tolerance::Relative(-0.1),
            10,
            0.05,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "signal \"p95\": tolerance must be a finite number >= 0, got -0.1"
        );
        let e = SignalConfig::new(
            "p95",
            Direction::IncreaseIsBad,
            Tolerance::Absolute(1.0),
            2,
            0.05,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("min_sample must be at least 5"),
            "{e}"
        );
        let e = SignalConfig::new(
            "p95",
            Direction::IncreaseIsBad,
            Tolerance::Absolute(1.0),
            10,
            0.0,
        )
        .unwrap_err();
        assert!(e.to_string().contains("alpha"), "{e}");
        let e = SignalConfig::new(
            " ",
            Direction::IncreaseIsBad,
            Tolerance::Absolute(1.0),
            10,
            0.05,
        )
        .unwrap_err();
        assert_eq!(e, AnalysisError::EmptyName);
    }

    #[test]
    fn a_non_finite_sample_is_refused_by_name() {
        let c = config(Direction::IncreaseIsBad, Tolerance::Relative(0.1), 5);
        let e = judge(&c, &[1.0, 2.0], &[1.0, f64::NAN]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "signal \"error_ratio\": control sample #1 is NaN, not a finite number"
        );
    }

    /// The degrading release of issue 19: the error ratio up 3 points on every site.
    #[test]
    fn a_degrading_release_fails_with_every_number_in_the_reason() {
        let control: Vec<f64> = (0..40).map(|i| 0.010 + 0.0005 * (i % 7) as f64).collect();
        let upgraded: Vec<f64> = control.iter().map(|v| v + 0.03).collect();
        let c = config(Direction::IncreaseIsBad, Tolerance::Absolute(0.01), 20);
        let j = judge(&c, &upgraded, &control).unwrap();
        assert_eq!(j.verdict, Verdict::Fail, "{}", j.reason);
        let e = j.effect.unwrap();
        assert!((e.difference - 0.03).abs() < 1e-12);
        let t = j.test.unwrap();
        assert_eq!(t.u, 1600.0, "complete separation: U = n1 * n2");
        assert!(t.p < 1e-10);
        assert!(
            j.reason
                .starts_with("error_ratio: fail, beyond the tolerance of 0.01"),
            "{}",
            j.reason
        );
        assert!(
            j.reason
                .contains("upgraded median 0.0415 vs control 0.0115"),
            "{}",
            j.reason
        );
        assert!(
            j.reason.contains("upgraded 40 samples, control 40"),
            "{}",
            j.reason
        );
    }

    #[test]
    fn an_improvement_passes() {
        let control: Vec<f64> = (0..30).map(|i| 100.0 + i as f64).collect();
        let upgraded: Vec<f64> = control.iter().map(|v| v * 0.5).collect();
        let c = config(Direction::IncreaseIsBad, Tolerance::Relative(0.1), 20);
        let j = judge(&c, &upgraded, &control).unwrap();
        assert_eq!(j.verdict, Verdict::Pass, "{}", j.reason);
        assert!(j.test.unwrap().p > 0.99);
    }

    /// A significant change smaller than the tolerance does not matter.
    #[test]
    fn a_significant_change_within_tolerance_passes() {
        let control: Vec<f64> = (0..50).map(|i| 100.0 + (i % 5) as f64 * 0.01).collect();
        let upgraded: Vec<f64> = control.iter().map(|v| v + 1.0).collect();
        let c = config(Direction::IncreaseIsBad, Tolerance::Relative(0.05), 20);
        let j = judge(&c, &upgraded, &control).unwrap();
        assert!(j.test.unwrap().p < 1e-6);
        assert_eq!(j.verdict, Verdict::Pass, "{}", j.reason);
    }

    /// The medians moved beyond the tolerance but the groups overlap too much to tell.
    #[test]
    fn a_large_but_noisy_change_is_inconclusive() {
        let control = [1.0, 5.0, 9.0, 2.0, 8.0, 3.0];
        let upgraded = [2.0, 6.0, 9.5, 3.0, 8.5, 1.5];
        let c = config(Direction::IncreaseIsBad, Tolerance::Absolute(0.1), 5);
        let j = judge(&c, &upgraded, &control).unwrap();
        assert!(j.effect.unwrap().beyond_tolerance);
        assert!(j.test.unwrap().p >= 0.05);
        assert_eq!(j.verdict, Verdict::Inconclusive, "{}", j.reason);
        assert!(j.reason.contains("not significant yet"), "{}", j.reason);
    }

    #[test]
    fn an_empty_group_is_inconclusive() {
        let c = config(Direction::DecreaseIsBad, Tolerance::Relative(0.1), 5);
        let j = judge(&c, &[], &[1.0; 10]).unwrap();
        assert_eq!(j.verdict, Verdict::Inconclusive);
        assert_eq!((j.effect, j.test), (None, None));
        assert!(
            j.reason.contains("a group has no samples yet"),
            "{}",
            j.reason
        );
    }

    /// A relative tolerance over a control median of 0 (no errors at all on the old
    /// release): any increase is beyond it.
    #[test]
    fn relative_tolerance_over_a_zero_control_median() {
        let control = [0.0; 20];
        let upgraded = [0.5; 20];
        let c = config(Direction::IncreaseIsBad, Tolerance::Relative(0.5), 10);
        let j = judge(&c, &upgraded, &control).unwrap();
        assert_eq!(j.effect.unwrap().relative, None);
        assert_eq!(j.verdict, Verdict::Fail, "{}", j.reason);
    }

    fn samples(min: usize) -> impl Strategy<Value = Vec<f64>> {
        prop::collection::vec(0.0_f64..1.0, min..60)
    }

    fn any_direction() -> impl Strategy<Value = Direction> {
        prop_oneof![
            Just(Direction::IncreaseIsBad),
            Just(Direction::DecreaseIsBad)
        ]
    }

    fn any_tolerance() -> impl Strategy<Value = Tolerance> {
        prop_oneof![
            (0.0_f64..2.0).prop_map(Tolerance::Relative),
            (0.0_f64..2.0).prop_map(Tolerance::Absolute),
        ]
    }

    proptest! {
        /// The same values in both groups (in any order) never fail.
        #[test]
        fn identical_groups_never_fail(
            v in samples(0),
            direction in any_direction(),
            tolerance in any_tolerance(),
            min in 5_usize..30,
        ) {
            let c = config(direction, tolerance, min);
            let mut shuffled = v.clone();
            shuffled.reverse();
            let j = judge(&c, &shuffled, &v).unwrap();
            prop_assert_ne!(j.verdict, Verdict::Fail, "{}", j.reason);
            if v.len() >= min {
                prop_assert_eq!(j.verdict, Verdict::Pass, "{}", j.reason);
            }
        }

        /// Every upgraded sample moved in the bad direction by more than the tolerance
        /// and by more than the spread of the values (so the groups separate), with at
        /// least 8 samples per group (one-sided p < 0.001 at complete separation): Fail.
        #[test]
        fn a_shift_beyond_the_tolerance_with_enough_samples_fails(
            control in samples(8),
            direction in any_direction(),
            tolerance in any_tolerance(),
            extra in 0.001_f64..5.0,
        ) {
            // Values lie in [0, 1): a shift over 1 separates the groups. Relative
            // tolerances are of the control median (< 1), so a shift over the
            // tolerance itself exceeds it too.
            let t = match tolerance { Tolerance::Relative(t) | Tolerance::Absolute(t) => t };
            let shift = 1.0 + t + extra;
            let sign = match direction { Direction::IncreaseIsBad => 1.0, Direction::DecreaseIsBad => -1.0 };
            let upgraded: Vec<f64> = control.iter().map(|v| v + sign * shift).collect();
            let c = config(direction, tolerance, 8);
            let j = judge(&c, &upgraded, &control).unwrap();
            prop_assert_eq!(j.verdict, Verdict::Fail, "{}", j.reason);
        }

        /// Fewer samples than the minimum in either group is Inconclusive, whatever
        /// the values.
        #[test]
        fn too_few_samples_are_inconclusive(
            small in prop::collection::vec(-5.0_f64..5.0, 0..10),
            other in prop::collection::vec(-5.0_f64..5.0, 0..60),
            direction in any_direction(),
            tolerance in any_tolerance(),
            small_is_upgraded in any::<bool>(),
        ) {
            let c = config(direction, tolerance, 10);
            let (u, k) = if small_is_upgraded { (&small, &other) } else { (&other, &small) };
            let j = judge(&c, u, k).unwrap();
            prop_assert_eq!(j.verdict, Verdict::Inconclusive, "{}", j.reason);
        }

        /// Mirroring every value and the direction gives the same verdict and p-value.
        #[test]
        fn verdict_is_symmetric_with_direction(
            upgraded in prop::collection::vec(-5.0_f64..5.0, 0..60),
            control in prop::collection::vec(-5.0_f64..5.0, 0..60),
            tolerance in any_tolerance(),
            min in 5_usize..20,
        ) {
            let neg = |v: &[f64]| v.iter().map(|x| -x).collect::<Vec<_>>();
            let a = judge(&config(Direction::IncreaseIsBad, tolerance, min), &upgraded, &control).unwrap();
            let b = judge(&config(Direction::DecreaseIsBad, tolerance, min), &neg(&upgraded), &neg(&control)).unwrap();
            prop_assert_eq!(a.verdict, b.verdict, "{} / {}", a.reason, b.reason);
            prop_assert_eq!(a.test.map(|t| t.p), b.test.map(|t| t.p));
        }
    }
}
