//! Gates: the state of each site in a wave, the wave's tally, and the gate's verdict.
//!
//! Counted so that a wave can neither stall nor pass by accident: a site counts as
//! succeeded only with evidence (the target release committed and a healthy report at
//! least `bake` after the commit, with no unhealthy report before that); a site that
//! reports nothing for `report_deadline` turns silent, and silent sites count as failures
//! or are excluded but never as successes. A time plus a gate duration that overflows is
//! never a panic: such a site counts as failed, such a wave's gate fails, each with the
//! reason. A site whose install failed with attempts left under the plan's `[retry]`
//! policy counts as in progress until its next attempt ([`next_attempt_at`]), so it counts
//! once, by its last attempt. Pure: facts and the time in, a verdict out; this module
//! never reads a clock, a database or the network.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use fleetwave_shared::protocol::Phase;

use crate::plan::{Gate, OnSilent, RetryPolicy};
use crate::time::{TimeOverflow, later};

/// What the coordinator knows about one site of a wave, as stored from its reports and
/// the coordinator's own actions. Every time is the coordinator's view of it (event
/// times as reported by the agent). All fields concern this rollout's target release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteFacts {
    pub site_id: String,
    /// When the coordinator made the assignment available to the site (None: not yet).
    pub assigned_at: Option<Timestamp>,
    /// When the site was last granted (or renewed) an install lease for this rollout.
    pub leased_at: Option<Timestamp>,
    /// The last install phase the site reported for the target release, and when.
    pub last_phase: Option<Phase>,
    pub last_phase_at: Option<Timestamp>,
    /// The time of the site's latest report of any kind (phase, health, deferral,
    /// installed versions). Polls do not count: silence is about reports.
    pub last_report_at: Option<Timestamp>,
    /// When the site committed the target release (a `committed` phase, or an
    /// `installed` report naming it). None: not committed.
    pub committed_at: Option<Timestamp>,
    /// The time of the latest healthy health report.
    pub last_healthy_at: Option<Timestamp>,
    /// The time of the first unhealthy health report at or after `committed_at` (reset
    /// when the site commits again). None: none since the commit.
    pub first_unhealthy_after_commit_at: Option<Timestamp>,
    /// When the install failed (a `failed` phase for the target release).
    pub failed_at: Option<Timestamp>,
    /// The failure as the agent described it (`detail` of the `failed` phase).
    pub failure: Option<String>,
    /// The site rolled the target release back by itself (a `rolled_back` phase).
    pub rolled_back: bool,
    /// The site is deferred (locally by its staff, or from the dashboard) until then.
    pub deferred_until: Option<Timestamp>,
    /// An operator skipped the site: it is left out of the gate.
    pub skipped: bool,
    /// Which attempt at the release the site is on: 1 for the first install, one more for
    /// each retry (automatic or by an operator). The facts above are this attempt's.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// When the site's next attempt starts, once the controller scheduled it (its attempt
    /// failed with attempts left under the plan's `[retry]` policy). None: not scheduled.
    #[serde(default)]
    pub retry_at: Option<Timestamp>,
    /// The site was sent a rollback assignment: it is never retried.
    #[serde(default)]
    pub rollback_assigned: bool,
    /// The site was served by bundle (`fleetwave bundle export`): its silence counts from
    /// when the bundle's assignment expires, not from the assignment.
    #[serde(default)]
    pub bundle_until: Option<Timestamp>,
}

fn first_attempt() -> u32 {
    1
}

impl Default for SiteFacts {
    fn default() -> Self {
        SiteFacts {
            site_id: String::new(),
            assigned_at: None,
            leased_at: None,
            last_phase: None,
            last_phase_at: None,
            last_report_at: None,
            committed_at: None,
            last_healthy_at: None,
            first_unhealthy_after_commit_at: None,
            failed_at: None,
            failure: None,
            rolled_back: false,
            deferred_until: None,
            skipped: false,
            attempt: first_attempt(),
            retry_at: None,
            rollback_assigned: false,
            bundle_until: None,
        }
    }
}

impl SiteFacts {
    /// A site with no facts yet besides its id.
    pub fn new(site_id: impl Into<String>) -> SiteFacts {
        SiteFacts {
            site_id: site_id.into(),
            ..SiteFacts::default()
        }
    }

    /// Whether the site started on the release at all: leased, reported an install phase
    /// past waiting, committed, failed or rolled back. Such sites are the ones a rollback
    /// sends back to the previous release.
    pub fn attempted(&self) -> bool {
        self.leased_at.is_some()
            || self.committed_at.is_some()
            || self.failed_at.is_some()
            || self.rolled_back
            || matches!(
                self.last_phase,
                Some(
                    Phase::Leased
                        | Phase::Downloading
                        | Phase::Installing
                        | Phase::Verifying
                        | Phase::Committed
                        | Phase::Failed
                        | Phase::RolledBack
                        | Phase::RollbackFailed
                )
            )
    }

    /// Whether a failed install or a self-rollback makes the site failed: the latest of
    /// them wins over an earlier commit, a later commit wins over both.
    fn install_failed(&self) -> bool {
        self.failed_after_commit() || (self.rolled_back && self.committed_at.is_none())
    }

    fn failed_after_commit(&self) -> bool {
        match (self.failed_at, self.committed_at) {
            (Some(f), Some(c)) => f >= c,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// The failure that makes the site failed, in words (see [`Self::install_failed`]).
    fn install_failure(&self) -> Option<String> {
        if self.failed_after_commit() {
            let what = if self.last_phase == Some(Phase::RollbackFailed) {
                "install failed and its rollback failed; the box needs an operator"
            } else {
                "install failed"
            };
            return Some(match &self.failure {
                Some(d) if !d.is_empty() => format!("{what}: {d}"),
                _ => what.to_string(),
            });
        }
        if self.rolled_back && self.committed_at.is_none() {
            return Some("rolled back by the agent".to_string());
        }
        None
    }

    /// The failure in the agent's own words (its `failed` phase's detail), else the
    /// failure as [`Self::install_failure`] describes it.
    pub fn failure_words(&self) -> String {
        match &self.failure {
            Some(d) if !d.trim().is_empty() && self.failed_after_commit() => d.clone(),
            _ => self.install_failure().unwrap_or_default(),
        }
    }

    /// When the failure of this attempt happened: the `failed` phase, else the last phase
    /// reported (a self-rollback).
    fn failed_moment(&self) -> Option<Timestamp> {
        self.failed_at.or(self.last_phase_at)
    }
}

/// When a site whose install failed starts its next attempt under `policy`, if it gets
/// one: its install failed (a `failed` phase or a self-rollback, not an unhealthy commit),
/// it has attempts left, it was not skipped nor sent a rollback assignment, and its own
/// rollback did not fail (that box needs an operator). The time is the one the controller
/// scheduled, else the failure plus [`RetryPolicy::delay_after`] its attempt (the wave's
/// opening when the failure has no time). Err when that time overflows. Pure.
pub fn next_attempt_at(
    policy: &RetryPolicy,
    wave_opened_at: Timestamp,
    site: &SiteFacts,
) -> Option<Result<Timestamp, TimeOverflow>> {
    if site.attempt >= policy.max_attempts
        || site.skipped
        || site.rollback_assigned
        || site.last_phase == Some(Phase::RollbackFailed)
        || !site.install_failed()
    {
        return None;
    }
    if let Some(at) = site.retry_at {
        return Some(Ok(at));
    }
    let failed = site.failed_moment().unwrap_or(wave_opened_at);
    Some(later(
        failed,
        policy.delay_after(site.attempt),
        "the site's next attempt (failure + retry back-off)",
    ))
}

/// `attempt 2 of 3` under a policy that retries, `attempt 2` past its attempts (an
/// operator retried), nothing for a first attempt of a plan without retries.
pub fn attempt_words(policy: &RetryPolicy, attempt: u32) -> Option<String> {
    if attempt <= policy.max_attempts && policy.retries() {
        Some(format!("attempt {attempt} of {}", policy.max_attempts))
    } else if attempt > 1 {
        Some(format!("attempt {attempt}"))
    } else {
        None
    }
}

/// Where one site stands in its wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteState {
    /// Assigned but not started.
    Pending,
    /// Leased, installing, or committed and baking.
    InProgress,
    /// Committed and healthy for the whole bake time since.
    Succeeded,
    /// Install failed, rolled itself back, or unhealthy after commit within the bake.
    Failed,
    /// Nothing heard for the report deadline.
    Silent,
    /// Deferred by its site (for a bounded time); not silent while deferred.
    Deferred,
    /// Skipped by an operator; left out of the gate.
    Skipped,
}

impl SiteState {
    pub fn as_str(self) -> &'static str {
        match self {
            SiteState::Pending => "pending",
            SiteState::InProgress => "in_progress",
            SiteState::Succeeded => "succeeded",
            SiteState::Failed => "failed",
            SiteState::Silent => "silent",
            SiteState::Deferred => "deferred",
            SiteState::Skipped => "skipped",
        }
    }
}

/// A site's state with a sentence for the dashboard, e.g. `baking 4m of 10m`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteStatus {
    pub state: SiteState,
    pub detail: String,
    /// For a committed site still baking: how long it has baked so far.
    #[serde(skip)]
    pub baked: Option<SignedDuration>,
}

/// The state of one site of a wave opened at `wave_opened_at`, at `now`.
pub fn site_state(
    gate: &Gate,
    wave_opened_at: Timestamp,
    site: &SiteFacts,
    now: Timestamp,
) -> SiteState {
    classify(gate, wave_opened_at, site, now).state
}

/// Like [`site_state`], with the reason in words.
pub fn site_status(
    gate: &Gate,
    wave_opened_at: Timestamp,
    site: &SiteFacts,
    now: Timestamp,
) -> SiteStatus {
    let c = classify(gate, wave_opened_at, site, now);
    SiteStatus {
        state: c.state,
        detail: c.describe(gate, site),
        baked: c.baked,
    }
}

/// A site's state and the reason for it, without words: the controller classifies every
/// site of every open wave on each pass (100,000 at scale), so words are only made for
/// the views that show them ([`site_status`]).
#[derive(Debug, Clone, Copy)]
struct Classified {
    state: SiteState,
    /// For a committed site still baking: how long it has baked so far.
    baked: Option<SignedDuration>,
    why: Why,
}

#[derive(Debug, Clone, Copy)]
enum Why {
    Skipped,
    InstallFailed,
    UnhealthyWithinBake {
        after_commit: SignedDuration,
    },
    BakedHealthy,
    UnhealthyBeforeBakeClosed,
    Silent {
        quiet_for: SignedDuration,
    },
    Baking,
    Deferred {
        until: Timestamp,
    },
    Installing,
    /// The install failed with attempts left: the next attempt starts then.
    RetryWaiting {
        at: Timestamp,
    },
    Pending,
    /// A time of the site plus a gate duration overflows: no verdict on the site is
    /// sound, and a site that cannot be judged never counts as a success.
    Unjudgeable(TimeOverflow),
}

fn classify(
    gate: &Gate,
    wave_opened_at: Timestamp,
    site: &SiteFacts,
    now: Timestamp,
) -> Classified {
    let is = |state, why| Classified {
        state,
        baked: None,
        why,
    };
    if site.skipped {
        return is(SiteState::Skipped, Why::Skipped);
    }
    if site.install_failed() {
        // With attempts left the site is still in progress: a failure budget of 0 does
        // not halt before the retry, and the site counts once, by its last attempt.
        return match next_attempt_at(&gate.retry, wave_opened_at, site) {
            Some(Ok(at)) => is(SiteState::InProgress, Why::RetryWaiting { at }),
            Some(Err(e)) => is(SiteState::Failed, Why::Unjudgeable(e)),
            None => is(SiteState::Failed, Why::InstallFailed),
        };
    }
    if let Some(committed) = site.committed_at {
        let bake_end = match later(committed, gate.bake, "the site's bake end (commit + bake)") {
            Ok(t) => t,
            Err(e) => return is(SiteState::Failed, Why::Unjudgeable(e)),
        };
        if let Some(u) = site.first_unhealthy_after_commit_at
            && u < bake_end
        {
            let after_commit = u.duration_since(committed);
            return is(SiteState::Failed, Why::UnhealthyWithinBake { after_commit });
        }
        if site.last_healthy_at.is_some_and(|h| h >= bake_end) {
            return is(SiteState::Succeeded, Why::BakedHealthy);
        }
        if site.first_unhealthy_after_commit_at.is_some() {
            return is(SiteState::Failed, Why::UnhealthyBeforeBakeClosed);
        }
        // Committed, baking: silent if it stops reporting, otherwise in progress.
        if let Some(s) = silence(gate, wave_opened_at, site, now) {
            return s;
        }
        let baked = now
            .duration_since(committed)
            .min(gate.bake)
            .max(SignedDuration::ZERO);
        return Classified {
            state: SiteState::InProgress,
            baked: Some(baked),
            why: Why::Baking,
        };
    }
    if let Some(until) = site.deferred_until
        && until > now
    {
        return is(SiteState::Deferred, Why::Deferred { until });
    }
    if let Some(s) = silence(gate, wave_opened_at, site, now) {
        return s;
    }
    let started = site.leased_at.is_some()
        || matches!(
            site.last_phase,
            Some(Phase::Leased | Phase::Downloading | Phase::Installing | Phase::Verifying)
        );
    if started {
        is(SiteState::InProgress, Why::Installing)
    } else {
        is(SiteState::Pending, Why::Pending)
    }
}

impl Classified {
    /// The reason in words, e.g. `committed, baking 4m of 10m`.
    fn describe(&self, gate: &Gate, site: &SiteFacts) -> String {
        match self.why {
            Why::Skipped => "skipped by an operator".into(),
            Why::InstallFailed => {
                let words = site.install_failure().unwrap_or_default();
                match attempt_words(&gate.retry, site.attempt) {
                    Some(a) => format!("{words} ({a})"),
                    None => words,
                }
            }
            Why::RetryWaiting { at } => format!(
                "{} ({}); retrying at {}",
                site.install_failure().unwrap_or_default(),
                attempt_words(&gate.retry, site.attempt).unwrap_or_default(),
                moment(at)
            ),
            Why::UnhealthyWithinBake { after_commit } => format!(
                "unhealthy {} after committing (bake {})",
                human(after_commit),
                human(gate.bake)
            ),
            Why::BakedHealthy => format!("committed and healthy for the {} bake", human(gate.bake)),
            Why::UnhealthyBeforeBakeClosed => {
                "unhealthy after committing, before a healthy report closed its bake".into()
            }
            Why::Silent { quiet_for } => format!(
                "silent: nothing heard for {} (report deadline {})",
                human(quiet_for),
                human(gate.report_deadline)
            ),
            Why::Baking => format!(
                "committed, baking {} of {}",
                human(self.baked.unwrap_or_default()),
                human(gate.bake)
            ),
            Why::Deferred { until } => format!("deferred by the site until {until}"),
            Why::Installing => {
                let phase = site.last_phase.map(Phase::as_str).unwrap_or("leased");
                format!("installing ({phase})")
            }
            Why::Unjudgeable(e) => format!("cannot be judged, counted as failed: {e}"),
            Why::Pending => match (site.assigned_at, site.last_phase) {
                (None, _) => "not yet assigned (the site has not polled since the wave opened)",
                (Some(_), Some(Phase::Waiting)) => "waiting for readiness or its window",
                (Some(_), Some(Phase::Staged)) => {
                    "staged: downloaded and verified, waiting for readiness or its window"
                }
                (Some(_), _) => "assigned, not started",
            }
            .into(),
        }
    }
}

/// The latest of the wave opening, the assignment, the lease, the last report, the end
/// of a deferral and the expiry of a bundle's assignment: what a site's silence counts
/// from.
pub fn last_sign_of_life(wave_opened_at: Timestamp, site: &SiteFacts) -> Timestamp {
    [
        site.assigned_at,
        site.leased_at,
        site.last_phase_at,
        site.last_report_at,
        site.deferred_until,
        site.bundle_until,
    ]
    .into_iter()
    .flatten()
    .fold(wave_opened_at, Timestamp::max)
}

/// Silent: nothing heard for `report_deadline` since the latest of the wave opening, the
/// assignment, the lease, the last report and the end of a deferral. Failed (cannot be
/// judged) when that moment plus the deadline overflows.
fn silence(
    gate: &Gate,
    wave_opened_at: Timestamp,
    site: &SiteFacts,
    now: Timestamp,
) -> Option<Classified> {
    let since = last_sign_of_life(wave_opened_at, site);
    let silent_from = match later(
        since,
        gate.report_deadline,
        "the site's report deadline (last sign of life + report_deadline)",
    ) {
        Ok(t) => t,
        Err(e) => {
            return Some(Classified {
                state: SiteState::Failed,
                baked: None,
                why: Why::Unjudgeable(e),
            });
        }
    };
    if now < silent_from {
        return None;
    }
    Some(Classified {
        state: SiteState::Silent,
        baked: None,
        why: Why::Silent {
            quiet_for: now.duration_since(since),
        },
    })
}

/// How many sites of a wave are in each state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveTally {
    pub total: u32,
    pub pending: u32,
    /// Includes the sites that committed and are baking.
    pub in_progress: u32,
    /// Of `in_progress`: committed and baking.
    pub baking: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub silent: u32,
    pub deferred: u32,
    pub skipped: u32,
    /// How long the furthest-baked site still baking has baked.
    pub furthest_bake: SignedDuration,
}

impl WaveTally {
    /// Adds one site's status.
    pub fn add(&mut self, s: &SiteStatus) {
        self.add_state(s.state, s.baked);
    }

    /// Adds one site's state (`baked`: how long it has baked, if it is baking).
    fn add_state(&mut self, state: SiteState, baked: Option<SignedDuration>) {
        self.total += 1;
        match state {
            SiteState::Pending => self.pending += 1,
            SiteState::InProgress => {
                self.in_progress += 1;
                if let Some(b) = baked {
                    self.baking += 1;
                    self.furthest_bake = self.furthest_bake.max(b);
                }
            }
            SiteState::Succeeded => self.succeeded += 1,
            SiteState::Failed => self.failed += 1,
            SiteState::Silent => self.silent += 1,
            SiteState::Deferred => self.deferred += 1,
            SiteState::Skipped => self.skipped += 1,
        }
    }

    /// Sites the gate counts: all but skipped ones, and but silent ones when they are
    /// excluded.
    pub fn counted(&self, on_silent: OnSilent) -> u32 {
        let out = self.total - self.skipped;
        match on_silent {
            OnSilent::Fail => out,
            OnSilent::Exclude => out - self.silent,
        }
    }

    /// Failures the gate counts: failed sites, plus silent ones when they count as failed.
    pub fn failures(&self, on_silent: OnSilent) -> u32 {
        match on_silent {
            OnSilent::Fail => self.failed + self.silent,
            OnSilent::Exclude => self.failed,
        }
    }

    /// Sites with a final answer: succeeded plus counted failures.
    pub fn finished(&self, on_silent: OnSilent) -> u32 {
        self.succeeded + self.failures(on_silent)
    }

    /// Sites that could still succeed: succeeded, pending, in progress or deferred.
    pub fn could_succeed(&self) -> u32 {
        self.succeeded + self.pending + self.in_progress + self.deferred
    }
}

/// Tallies the sites of a wave opened at `wave_opened_at`.
pub fn tally(
    gate: &Gate,
    wave_opened_at: Timestamp,
    sites: &[SiteFacts],
    now: Timestamp,
) -> WaveTally {
    let mut t = WaveTally::default();
    for site in sites {
        let c = classify(gate, wave_opened_at, site, now);
        t.add_state(c.state, c.baked);
    }
    t
}

/// Successes needed: ⌈success_ratio × counted⌉.
pub fn needed(gate: &Gate, counted: u32) -> u32 {
    // The epsilon keeps 0.95 × 20 = 19.000000000000004 from rounding up to 20.
    ((gate.success_ratio * counted as f64) - 1e-9)
        .ceil()
        .max(0.0) as u32
}

/// The failure budget for `counted` sites: `failure_budget`, `failure_budget_percent` of
/// the counted sites (rounded down), the smaller of both when both are set, and when
/// neither is set whatever the success ratio leaves over (counted − needed).
pub fn failure_budget(gate: &Gate, counted: u32) -> u32 {
    let from_percent = gate
        .failure_budget_percent
        .map(|p| ((p * counted as f64 / 100.0) + 1e-9).floor().max(0.0) as u32);
    match (gate.failure_budget, from_percent) {
        (Some(n), Some(p)) => n.min(p),
        (Some(n), None) => n,
        (None, Some(p)) => p,
        (None, None) => counted - needed(gate, counted).min(counted),
    }
}

/// What the gate needs to know about the wave besides its sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaveGateFacts {
    pub opened_at: Timestamp,
    /// An operator approved the wave (only matters when the gate asks for approval).
    pub approved: bool,
}

/// What still holds a wave back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitBlocker {
    /// Not enough sites have succeeded yet.
    Successes,
    /// Not enough sites have finished for the minimum sample.
    MinSample,
    /// The wave has not been open for its bake time yet.
    Bake,
    /// The gate passed but asks for an operator's approval.
    Approval,
}

impl WaitBlocker {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitBlocker::Successes => "successes",
            WaitBlocker::MinSample => "min_sample",
            WaitBlocker::Bake => "bake",
            WaitBlocker::Approval => "approval",
        }
    }
}

/// The gate's answer for a wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum GateVerdict {
    /// Every condition holds: the next wave may open.
    Pass { reason: String },
    /// Not yet; `blocker` is the first condition that does not hold.
    Wait {
        blocker: WaitBlocker,
        reason: String,
    },
    /// The failure budget is crossed, or the wave can no longer pass: halt.
    Fail { reason: String },
}

impl GateVerdict {
    pub fn reason(&self) -> &str {
        match self {
            GateVerdict::Pass { reason }
            | GateVerdict::Wait { reason, .. }
            | GateVerdict::Fail { reason } => reason,
        }
    }
}

/// Judges a wave from its tally. See docs/waves.md for the rules with examples.
pub fn evaluate_gate(
    gate: &Gate,
    t: &WaveTally,
    wave: WaveGateFacts,
    now: Timestamp,
) -> GateVerdict {
    let on_silent = gate.on_silent;
    let counted = t.counted(on_silent);
    let need = needed(gate, counted);
    let failures = t.failures(on_silent);
    let budget = failure_budget(gate, counted);
    let summary = summary(gate, t, wave, now);

    if failures > budget {
        return GateVerdict::Fail {
            reason: format!(
                "failure budget crossed: {} of budget {budget} ({summary})",
                failure_words(t, on_silent)
            ),
        };
    }
    if t.could_succeed() < need {
        return GateVerdict::Fail {
            reason: format!(
                "cannot reach the success ratio any more: at most {} of {need} needed can \
                 succeed ({summary})",
                t.could_succeed()
            ),
        };
    }
    if counted == 0 && t.silent > 0 {
        return GateVerdict::Fail {
            reason: format!(
                "every site of the wave is silent ({} silent, none reported): nothing to \
                 judge, and a release that cuts sites off looks exactly like this ({summary})",
                t.silent
            ),
        };
    }
    let min_req = gate.min_sample.min(counted);
    let finished = t.finished(on_silent);
    let bake_end = match later(
        wave.opened_at,
        gate.bake,
        "the wave's bake end (opened + bake)",
    ) {
        Ok(t) => t,
        Err(e) => {
            return GateVerdict::Fail {
                reason: format!("the gate cannot be judged: {e} ({summary})"),
            };
        }
    };
    let (blocker, what) = if t.succeeded < need {
        (WaitBlocker::Successes, "waiting for sites to succeed")
    } else if finished < min_req {
        (WaitBlocker::MinSample, "waiting for the minimum sample")
    } else if now < bake_end {
        (WaitBlocker::Bake, "waiting for the wave's bake time")
    } else if gate.approval && !wave.approved {
        (WaitBlocker::Approval, "gate passed, waiting for approval")
    } else {
        return GateVerdict::Pass {
            reason: format!("gate passed: {summary}"),
        };
    };
    GateVerdict::Wait {
        blocker,
        reason: format!("{what}: {summary}"),
    }
}

fn failure_words(t: &WaveTally, on_silent: OnSilent) -> String {
    match on_silent {
        OnSilent::Fail if t.silent > 0 => format!(
            "{} failures ({} failed, {} silent)",
            t.failures(on_silent),
            t.failed,
            t.silent
        ),
        _ => format!("{} failures", t.failures(on_silent)),
    }
}

/// "succeeded 46 of 48 needed; 2 baking, furthest 12m of 30m; failures 1 of budget 3; ..."
fn summary(gate: &Gate, t: &WaveTally, wave: WaveGateFacts, now: Timestamp) -> String {
    let on_silent = gate.on_silent;
    let counted = t.counted(on_silent);
    let need = needed(gate, counted);
    let mut parts = vec![format!(
        "succeeded {} of {need} needed ({counted} counted)",
        t.succeeded
    )];
    if t.baking > 0 {
        parts.push(format!(
            "{} baking, furthest {} of {}",
            t.baking,
            human(t.furthest_bake),
            human(gate.bake)
        ));
    }
    let installing = t.in_progress - t.baking;
    if installing > 0 {
        parts.push(format!("{installing} installing"));
    }
    if t.pending > 0 {
        parts.push(format!("{} not started", t.pending));
    }
    if t.deferred > 0 {
        parts.push(format!("{} deferred", t.deferred));
    }
    parts.push(format!(
        "failures {} of budget {}",
        t.failures(on_silent),
        failure_budget(gate, counted)
    ));
    if t.silent > 0 {
        parts.push(match on_silent {
            OnSilent::Fail => format!("{} silent (counted as failures)", t.silent),
            OnSilent::Exclude => format!("{} silent (excluded)", t.silent),
        });
    }
    if t.skipped > 0 {
        parts.push(format!("{} skipped", t.skipped));
    }
    let min_req = gate.min_sample.min(counted);
    if min_req > 1 {
        parts.push(format!(
            "finished {} of min sample {min_req}",
            t.finished(on_silent)
        ));
    }
    let open_for = now.duration_since(wave.opened_at).max(SignedDuration::ZERO);
    if open_for < gate.bake {
        parts.push(format!(
            "wave open {} of {} bake",
            human(open_for),
            human(gate.bake)
        ));
    }
    if gate.approval {
        parts.push(if wave.approved {
            "approved".to_string()
        } else {
            "needs approval".to_string()
        });
    }
    parts.join("; ")
}

/// A time for people and timelines, to the second: `2026-12-04T21:05:00Z`.
pub fn moment(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A duration for people: whole seconds, friendly units ("12m", "1h 5m", "30s").
pub fn human(d: SignedDuration) -> String {
    let secs = d.as_secs().max(0);
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    match (h, m, s) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}
