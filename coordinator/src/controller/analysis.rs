//! Golden-signal analysis in the gate: who is compared (the current wave's upgraded sites
//! against a control of the rollout's sites still on the previous release), each
//! `[[analysis]]` signal's verdict from the samples ([`crate::analysis::judge`]), and how
//! those verdicts change the wave's gate verdict ([`apply`]):
//!
//! - **fail** halts like a crossed failure budget (with `auto_rollback`, rolls back); the
//!   reason names the signal, both medians, the effect and the p-value;
//! - **inconclusive** waits: the gate waits for the wave's bake time anyway, and the wait
//!   says what analysis lacks; at the end of the bake it no longer holds the wave (the
//!   pass reason says so: not enough evidence to halt is not evidence of harm);
//! - **pass** passes.
//!
//! Pure, like the rest of the controller: the engine reads the samples and passes the
//! verdicts in as facts ([`super::WaveView::analysis`]). This module never reads a clock,
//! a store or the network.

use std::collections::{HashMap, HashSet};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{GateVerdict, RolloutView};
use crate::analysis::{Verdict, judge, median, spread};
use crate::plan::AnalysisSignal;
use fleetwave_shared::protocol::analysis::{GroupNumbers, SignalAnalysis};

/// One signal's verdict on a wave, as the engine computed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisFact {
    pub signal: String,
    pub verdict: Verdict,
    /// One sentence naming the signal, both medians, the effect and the p-value (or why
    /// there is no verdict yet).
    pub reason: String,
    /// Every number of the comparison, for the API and the dashboard; absent only when
    /// the plan's settings for the signal are wrong.
    pub numbers: Option<SignalAnalysis>,
    /// Each compared site's median over the minutes, sorted: the picture's points.
    pub site_medians: SiteMedians,
}

/// Each site's median of a signal over the compared minutes, per group, sorted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SiteMedians {
    pub upgraded: Vec<f64>,
    pub control: Vec<f64>,
}

/// The most sites of each group an analysis reads: beyond it, the sites with the lowest
/// stable per-rollout seed ([`super::seed`]) are kept, the same ones minute after minute.
/// 200 sites over a 30-minute bake are 6,000 samples per group, more than the test needs,
/// and the samples are read site by site from the store's key.
pub const MAX_ANALYSIS_SITES: usize = 200;

/// Who the current wave's analysis compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Groups {
    /// The wave's sites that committed the release (and did not fail or roll it back
    /// since), with when they committed: their samples count from then on.
    pub upgraded: HashMap<String, Timestamp>,
    /// The rollout's sites that have not started on the release: still on the previous
    /// one.
    pub control: HashSet<String>,
    /// The first minute judged: the wave's first commit. Both groups' samples are read
    /// from it to now (the same minutes, so daily patterns cancel out).
    pub from: Timestamp,
}

/// The groups of `wave`, each at most [`MAX_ANALYSIS_SITES`] (None: no site of it has
/// committed yet, nothing to compare).
pub fn groups(view: &RolloutView, wave: u32) -> Option<Groups> {
    let w = view.waves.get(wave as usize)?;
    let upgraded: Vec<(String, Timestamp)> = w
        .sites
        .iter()
        .filter(|s| !s.skipped && !s.rolled_back)
        .filter_map(|s| {
            let c = s.committed_at?;
            s.failed_at
                .is_none_or(|f| f < c)
                .then(|| (s.site_id.clone(), c))
        })
        .collect();
    let upgraded: HashMap<String, Timestamp> =
        lowest_seeds(&view.rollout_id, upgraded, |(id, _)| id)
            .into_iter()
            .collect();
    let from = upgraded.values().min().copied()?;
    let control: Vec<String> = view
        .waves
        .iter()
        .flat_map(|w| w.sites.iter())
        .filter(|s| !s.skipped && !s.attempted())
        .map(|s| s.site_id.clone())
        .collect();
    let control = lowest_seeds(&view.rollout_id, control, |id| id)
        .into_iter()
        .collect();
    Some(Groups {
        upgraded,
        control,
        from,
    })
}

/// At most [`MAX_ANALYSIS_SITES`] of `items`: those whose site has the lowest seed.
fn lowest_seeds<T>(rollout_id: &str, mut items: Vec<T>, site: impl Fn(&T) -> &String) -> Vec<T> {
    if items.len() <= MAX_ANALYSIS_SITES {
        return items;
    }
    let mut keyed: Vec<(f64, T)> = items
        .drain(..)
        .map(|i| (super::seed(rollout_id, site(&i)), i))
        .collect();
    keyed.select_nth_unstable_by(MAX_ANALYSIS_SITES - 1, |a, b| a.0.total_cmp(&b.0));
    keyed.truncate(MAX_ANALYSIS_SITES);
    keyed.into_iter().map(|(_, i)| i).collect()
}

impl Groups {
    /// Every site whose samples the analysis reads (both groups, sorted).
    pub fn sites(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .upgraded
            .keys()
            .chain(self.control.iter())
            .cloned()
            .collect();
        out.sort();
        out
    }
}

/// One site's value of a signal in one minute, as stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    pub site_id: &'a str,
    pub minute: Timestamp,
    pub value: f64,
    /// The release the site ran in that minute, as its agent said.
    pub release_id: Option<&'a str>,
}

/// Judges one signal as of the minute `judged_at`: `samples` are every site's values of
/// it since `groups.from`; an upgraded site counts from its commit on and only on
/// `target_release`, a control site only on another release.
pub fn judge_signal(
    signal: &AnalysisSignal,
    groups: &Groups,
    target_release: &str,
    samples: &[Sample<'_>],
    judged_at: Timestamp,
) -> AnalysisFact {
    let config = match signal.config() {
        Ok(c) => c,
        Err(e) => {
            // Validated plans never get here; a stored plan from elsewhere might.
            return AnalysisFact {
                signal: signal.signal.clone(),
                verdict: Verdict::Inconclusive,
                reason: format!(
                    "{}: inconclusive, the plan's settings are wrong: {e}",
                    signal.signal
                ),
                numbers: None,
                site_medians: SiteMedians::default(),
            };
        }
    };
    let (mut up, mut ctl) = (Vec::new(), Vec::new());
    let (mut up_sites, mut ctl_sites) = (HashMap::new(), HashMap::new());
    let mut minutes = HashSet::new();
    for s in samples.iter().filter(|s| s.minute >= groups.from) {
        let (values, sites) = if let Some(&commit) = groups.upgraded.get(s.site_id) {
            if s.minute < commit || s.release_id.is_some_and(|r| r != target_release) {
                continue;
            }
            (&mut up, &mut up_sites)
        } else if groups.control.contains(s.site_id) && s.release_id != Some(target_release) {
            (&mut ctl, &mut ctl_sites)
        } else {
            continue;
        };
        values.push(s.value);
        sites
            .entry(s.site_id)
            .or_insert_with(Vec::new)
            .push(s.value);
        minutes.insert(s.minute);
    }
    // Sorted once: the median, the quartiles and the test's ranks are then linear.
    up.sort_unstable_by(f64::total_cmp);
    ctl.sort_unstable_by(f64::total_cmp);
    let site_medians = |sites: HashMap<&str, Vec<f64>>| {
        let mut m: Vec<f64> = sites.values().filter_map(|v| median(v)).collect();
        m.sort_unstable_by(f64::total_cmp);
        m
    };
    let (nu, nc, need) = (up_sites.len(), ctl_sites.len(), signal.min_sites as usize);
    let group = |values: &[f64], sites: usize| GroupNumbers {
        sites: sites as u32,
        samples: values.len() as u64,
        median: median(values),
        spread: spread(values),
    };
    let mut numbers = SignalAnalysis {
        signal: signal.signal.clone(),
        verdict: Verdict::Inconclusive,
        reason: String::new(),
        direction: signal.direction,
        tolerance: signal.tolerance,
        alpha: signal.alpha,
        min_sites: signal.min_sites,
        min_samples: signal.min_samples,
        upgraded: group(&up, nu),
        control: group(&ctl, nc),
        effect: None,
        relative_effect: None,
        p_value: None,
        from: groups.from,
        judged_at,
        minutes: minutes.len() as u32,
    };
    let site_medians = SiteMedians {
        upgraded: site_medians(up_sites),
        control: site_medians(ctl_sites),
    };
    let (verdict, reason) = match judge(&config, &up, &ctl) {
        Ok(j) => {
            numbers.effect = j.effect.map(|e| e.difference);
            numbers.relative_effect = j.effect.and_then(|e| e.relative);
            numbers.p_value = j.test.map(|t| t.p);
            if nu < need || nc < need {
                (
                    Verdict::Inconclusive,
                    format!(
                        "{}: inconclusive, too few sites with samples yet: {nu} upgraded and \
                         {nc} control, min_sites {need} per group",
                        signal.signal
                    ),
                )
            } else {
                (
                    j.verdict,
                    format!("{}; from {nu} upgraded and {nc} control sites", j.reason),
                )
            }
        }
        Err(e) => (
            Verdict::Inconclusive,
            format!("{}: inconclusive: {e}", signal.signal),
        ),
    };
    numbers.verdict = verdict;
    numbers.reason = reason.clone();
    AnalysisFact {
        signal: signal.signal.clone(),
        verdict,
        reason,
        numbers: Some(numbers),
        site_medians,
    }
}

/// The wave's gate verdict with its analysis facts applied (see the module docs). No
/// facts: the verdict as it is.
pub fn apply(verdict: GateVerdict, facts: &[AnalysisFact]) -> GateVerdict {
    if facts.is_empty() || matches!(verdict, GateVerdict::Fail { .. }) {
        return verdict;
    }
    let failed: Vec<&str> = facts
        .iter()
        .filter(|f| f.verdict == Verdict::Fail)
        .map(|f| f.reason.as_str())
        .collect();
    if !failed.is_empty() {
        return GateVerdict::Fail {
            reason: format!(
                "golden-signal analysis failed: {} ({})",
                failed.join("; "),
                verdict.reason()
            ),
        };
    }
    let words = facts
        .iter()
        .map(|f| f.reason.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    match verdict {
        GateVerdict::Pass { reason } => {
            let inconclusive = facts.iter().any(|f| f.verdict == Verdict::Inconclusive);
            let note = if inconclusive {
                "analysis inconclusive at the end of the bake, not enough evidence to halt"
            } else {
                "analysis passed"
            };
            GateVerdict::Pass {
                reason: format!("{reason}; {note}: {words}"),
            }
        }
        GateVerdict::Wait { blocker, reason } => GateVerdict::Wait {
            blocker,
            reason: format!("{reason}; analysis: {words}"),
        },
        fail @ GateVerdict::Fail { .. } => fail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{SiteFacts, WaveView};
    use crate::plan::{PlanFormat, parse_plan};

    fn t(m: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + m * 60).unwrap()
    }

    fn view(waves: Vec<Vec<SiteFacts>>) -> RolloutView {
        let plan = parse_plan(
            r#"
name = "x"
release = "pos-2"
[[waves]]
name = "canary"
selector = { cohort = "canary" }
[[waves]]
name = "rest"
[[analysis]]
signal = "error_ratio"
direction = "increase_is_bad"
tolerance = { absolute = 0.01 }
min_sites = 3
min_samples = 5
"#,
            PlanFormat::Toml,
        )
        .unwrap();
        RolloutView {
            rollout_id: "r".into(),
            plan,
            status: crate::controller::RolloutStatus::Running,
            current_wave: Some(0),
            waves: waves
                .into_iter()
                .map(|sites| WaveView {
                    opened_at: Some(t(0)),
                    sites,
                    ..WaveView::default()
                })
                .collect(),
        }
    }

    fn committed(id: &str, at: i64) -> SiteFacts {
        SiteFacts {
            committed_at: Some(t(at)),
            leased_at: Some(t(at - 1)),
            ..SiteFacts::new(id)
        }
    }

    #[test]
    fn upgraded_are_the_waves_committed_sites_and_control_the_ones_not_started() {
        let mut failed = committed("c-failed", 2);
        failed.failed_at = Some(t(3));
        let mut leased = SiteFacts::new("r-leased");
        leased.leased_at = Some(t(1));
        let v = view(vec![
            vec![
                committed("c-1", 2),
                committed("c-2", 1),
                failed,
                SiteFacts::new("c-pending"),
            ],
            vec![SiteFacts::new("r-1"), leased],
        ]);
        let g = groups(&v, 0).unwrap();
        let mut up: Vec<&String> = g.upgraded.keys().collect();
        up.sort();
        assert_eq!(up, vec!["c-1", "c-2"]);
        let mut ctl: Vec<&String> = g.control.iter().collect();
        ctl.sort();
        assert_eq!(ctl, vec!["c-pending", "r-1"]);
        assert_eq!(g.from, t(1));
        // Nothing committed yet: nothing to compare.
        assert_eq!(
            groups(&view(vec![vec![SiteFacts::new("a")], vec![]]), 0),
            None
        );
    }

    #[test]
    fn large_groups_keep_the_same_sites_of_lowest_seed() {
        let up: Vec<SiteFacts> = (0..500).map(|i| committed(&format!("c-{i}"), 1)).collect();
        let rest: Vec<SiteFacts> = (0..700).map(|i| SiteFacts::new(format!("r-{i}"))).collect();
        let v = view(vec![up, rest]);
        let g = groups(&v, 0).unwrap();
        assert_eq!(g.upgraded.len(), MAX_ANALYSIS_SITES);
        assert_eq!(g.control.len(), MAX_ANALYSIS_SITES);
        assert_eq!(g.sites().len(), 2 * MAX_ANALYSIS_SITES);
        assert_eq!(
            groups(&v, 0),
            Some(g.clone()),
            "the same sites on every pass"
        );
        let worst_kept = g
            .control
            .iter()
            .map(|s| crate::controller::seed("r", s))
            .fold(0.0, f64::max);
        let left_out = (0..700)
            .map(|i| format!("r-{i}"))
            .filter(|s| !g.control.contains(s));
        assert!(
            left_out
                .into_iter()
                .all(|s| crate::controller::seed("r", &s) >= worst_kept)
        );
    }

    fn samples<'a>(
        sites: &'a [String],
        minutes: i64,
        release: &'a str,
        base: f64,
    ) -> Vec<Sample<'a>> {
        let mut out = Vec::new();
        for (i, s) in sites.iter().enumerate() {
            for m in 1..=minutes {
                out.push(Sample {
                    site_id: s,
                    minute: t(m),
                    value: base + ((i as i64 * 7 + m * 3) % 10) as f64 * 0.001,
                    release_id: Some(release),
                });
            }
        }
        out
    }

    fn judged(upgraded_base: f64, upgraded_sites: usize) -> AnalysisFact {
        let up: Vec<String> = (0..upgraded_sites).map(|i| format!("c-{i}")).collect();
        let ctl: Vec<String> = (0..6).map(|i| format!("r-{i}")).collect();
        let v = view(vec![
            up.iter().map(|s| committed(s, 1)).collect(),
            ctl.iter().map(|s| SiteFacts::new(s.as_str())).collect(),
        ]);
        let g = groups(&v, 0).unwrap();
        let mut all = samples(&up, 10, "pos-2", upgraded_base);
        all.extend(samples(&ctl, 10, "pos-1", 0.01));
        // Minutes of the upgraded sites before their commit do not count.
        all.push(Sample {
            site_id: "c-0",
            minute: t(0),
            value: 0.9,
            release_id: Some("pos-1"),
        });
        judge_signal(&v.plan.analysis[0], &g, "pos-2", &all, t(10))
    }

    #[test]
    fn a_regression_fails_a_healthy_wave_passes_and_too_few_sites_is_inconclusive() {
        let bad = judged(0.05, 6);
        assert_eq!(bad.verdict, Verdict::Fail, "{}", bad.reason);
        assert!(
            bad.reason.contains("error_ratio") && bad.reason.contains("p = "),
            "{}",
            bad.reason
        );
        // Every number the API and the dashboard show.
        let n = bad.numbers.as_ref().unwrap();
        assert_eq!(n.verdict, Verdict::Fail);
        assert_eq!((n.upgraded.sites, n.upgraded.samples), (6, 60));
        assert_eq!((n.control.sites, n.control.samples), (6, 60));
        let (mu, mc) = (n.upgraded.median.unwrap(), n.control.median.unwrap());
        assert!((n.effect.unwrap() - (mu - mc)).abs() < 1e-12);
        assert!((n.effect.unwrap() - 0.04).abs() < 0.002, "{n:?}");
        assert!(n.p_value.unwrap() < 0.05);
        assert_eq!(
            n.minutes, 10,
            "minutes 1 to 10; minute 0 was before the commit"
        );
        assert_eq!((n.from, n.judged_at), (t(1), t(10)));
        assert_eq!(bad.site_medians.upgraded.len(), 6);
        assert_eq!(bad.site_medians.control.len(), 6);
        assert!(bad.site_medians.control.windows(2).all(|w| w[0] <= w[1]));
        let good = judged(0.01, 6);
        assert_eq!(good.verdict, Verdict::Pass, "{}", good.reason);
        let few = judged(0.05, 2);
        assert_eq!(few.verdict, Verdict::Inconclusive);
        let n = few.numbers.as_ref().unwrap();
        assert_eq!((n.verdict, n.upgraded.sites), (Verdict::Inconclusive, 2));
        assert!(n.p_value.is_some(), "the numbers so far are kept");
        assert!(
            few.reason.contains("2 upgraded and 6 control, min_sites 3"),
            "{}",
            few.reason
        );
    }

    #[test]
    fn fail_halts_inconclusive_waits_and_pass_passes() {
        let fact = |v: Verdict| AnalysisFact {
            signal: "error_ratio".into(),
            verdict: v,
            reason: format!("error_ratio: {v:?}"),
            numbers: None,
            site_medians: SiteMedians::default(),
        };
        let wait = GateVerdict::Wait {
            blocker: crate::controller::WaitBlocker::Bake,
            reason: "waiting for the wave's bake time".into(),
        };
        let pass = GateVerdict::Pass {
            reason: "gate passed".into(),
        };
        assert!(
            matches!(apply(wait.clone(), &[fact(Verdict::Fail)]), GateVerdict::Fail { reason } if reason.contains("golden-signal analysis failed: error_ratio: Fail"))
        );
        assert!(matches!(
            apply(pass.clone(), &[fact(Verdict::Pass), fact(Verdict::Fail)]),
            GateVerdict::Fail { .. }
        ));
        assert!(
            matches!(apply(wait.clone(), &[fact(Verdict::Inconclusive)]), GateVerdict::Wait { reason, .. } if reason.contains("analysis: error_ratio: Inconclusive"))
        );
        assert!(
            matches!(apply(pass.clone(), &[fact(Verdict::Inconclusive)]), GateVerdict::Pass { reason } if reason.contains("inconclusive at the end of the bake"))
        );
        assert!(
            matches!(apply(pass.clone(), &[fact(Verdict::Pass)]), GateVerdict::Pass { reason } if reason.contains("analysis passed"))
        );
        assert_eq!(apply(pass.clone(), &[]), pass);
    }
}
