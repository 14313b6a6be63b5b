//! The wave controller: pure decision logic for rollouts.
//!
//! The server gathers a [`RolloutView`] (the plan, the rollout's status, which waves are
//! open and approved, and the facts of every site grouped by wave), calls [`tick`] with
//! the time, applies the [`TickOutcome`] (new status, current wave) and stores the
//! decisions that change state, each with its reason, in the rollout's timeline.
//!
//! `tick` is deterministic and idempotent: the same view and time give the same outcome,
//! and a view that already reflects an outcome gives no further state change. It never
//! reads a clock, a database or the network, and never draws random numbers.
//!
//! Submodules: [`membership`] (which wave a site is in), [`gate`] (site states, tallies,
//! verdicts), [`leases`] (who may install now), [`analysis`] (golden-signal verdicts in
//! the gate).

pub mod analysis;
pub mod boxes;
pub mod convergence;
pub mod gate;
pub mod leases;
pub mod membership;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use gate::{
    GateVerdict, SiteFacts, SiteState, SiteStatus, WaitBlocker, WaveGateFacts, WaveTally,
    attempt_words, evaluate_gate, next_attempt_at, site_state, site_status, tally,
};
pub use leases::{LeaseContext, LeaseDenial, LeaseDenialReason, lease_decision};
pub use membership::{Candidate, place, seed, share_quota, wave_for_joiner};

use crate::plan::RolloutPlan;

/// Where a rollout stands (one definition, shared with the API, agent and CLI).
pub use fleetwave_shared::protocol::RolloutStatus;

/// One wave as the server knows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WaveView {
    /// When the wave opened (None: not yet).
    pub opened_at: Option<Timestamp>,
    /// When an operator approved the wave (None: not approved).
    pub approved_at: Option<Timestamp>,
    /// The facts of every site in the wave (as [`place`] and [`wave_for_joiner`] place them).
    pub sites: Vec<SiteFacts>,
    /// The golden-signal verdicts of the wave (the plan's `[[analysis]]`), as the engine
    /// computed them while the wave bakes; empty: no analysis (or none yet).
    pub analysis: Vec<analysis::AnalysisFact>,
}

/// A rollout as the server knows it, for [`tick`].
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutView {
    pub rollout_id: String,
    pub plan: RolloutPlan,
    pub status: RolloutStatus,
    /// The highest wave opened so far (None: none yet). Waves up to it are open.
    pub current_wave: Option<u32>,
    /// One entry per wave of the plan, in order; missing entries count as unopened and
    /// empty.
    pub waves: Vec<WaveView>,
}

impl RolloutView {
    fn wave_view(&self, index: u32) -> Option<&WaveView> {
        self.waves.get(index as usize)
    }

    fn wave_label(&self, index: u32) -> String {
        match self.plan.wave(index) {
            Some(w) => format!("wave {index} ({:?})", w.name),
            None => format!("wave {index}"),
        }
    }
}

/// One decision of the controller, stored in the rollout's timeline with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Decision {
    /// Open this wave: its sites get assignments. Changes state.
    OpenWave { wave: u32, reason: String },
    /// The current wave's gate does not pass yet. Informational.
    Waiting {
        wave: u32,
        blocker: WaitBlocker,
        reason: String,
    },
    /// The wave's gate passed but asks for an operator's approval. Informational.
    RequestApproval { wave: u32, reason: String },
    /// A gate failed: the rollout halts. With `auto_rollback`, `rollback` lists every site
    /// of the rollout that attempted or committed the release, to be sent back to the
    /// previous release; otherwise it is empty. Changes state.
    Halt {
        wave: u32,
        reason: String,
        rollback: Vec<String>,
    },
    /// Every wave passed its gate. Changes state.
    Complete { reason: String },
    /// A site's install failed (`attempt`) with attempts left under the plan's `[retry]`
    /// policy: its next attempt starts `at` (stored with the site, so this is decided once
    /// per failed attempt). Changes state.
    #[serde(rename = "retry_scheduled")]
    ScheduleRetry {
        wave: u32,
        site_id: String,
        attempt: u32,
        at: Timestamp,
        reason: String,
    },
    /// A scheduled attempt is due: the site's install facts are cleared and it is assigned
    /// the release again as attempt `attempt`. Only while the rollout runs. Changes state.
    #[serde(rename = "retried")]
    Retry {
        wave: u32,
        site_id: String,
        attempt: u32,
        reason: String,
    },
}

/// Identifies a decision's situation for de-duplication: two decisions with the same key
/// say the same thing (only their numbers moved), so the server stores a Waiting or
/// RequestApproval only when its key differs from the last one it stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecisionKey {
    pub kind: &'static str,
    pub wave: Option<u32>,
    pub blocker: Option<WaitBlocker>,
}

impl Decision {
    /// `open_wave`, `waiting`, `request_approval`, `halt`, `complete`, `retry_scheduled`
    /// or `retried` (as an operator's retry).
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::OpenWave { .. } => "open_wave",
            Decision::Waiting { .. } => "waiting",
            Decision::RequestApproval { .. } => "request_approval",
            Decision::Halt { .. } => "halt",
            Decision::Complete { .. } => "complete",
            Decision::ScheduleRetry { .. } => "retry_scheduled",
            Decision::Retry { .. } => "retried",
        }
    }

    /// The decision's reason, a sentence with numbers.
    pub fn reason(&self) -> &str {
        match self {
            Decision::OpenWave { reason, .. }
            | Decision::Waiting { reason, .. }
            | Decision::RequestApproval { reason, .. }
            | Decision::Halt { reason, .. }
            | Decision::ScheduleRetry { reason, .. }
            | Decision::Retry { reason, .. }
            | Decision::Complete { reason } => reason,
        }
    }

    /// The wave the decision is about (None for Complete).
    pub fn wave(&self) -> Option<u32> {
        match self {
            Decision::OpenWave { wave, .. }
            | Decision::Waiting { wave, .. }
            | Decision::RequestApproval { wave, .. }
            | Decision::Halt { wave, .. }
            | Decision::ScheduleRetry { wave, .. }
            | Decision::Retry { wave, .. } => Some(*wave),
            Decision::Complete { .. } => None,
        }
    }

    /// Whether applying the decision changes the rollout (OpenWave, Halt, Complete,
    /// ScheduleRetry, Retry); such decisions are always stored. Waiting and
    /// RequestApproval only describe.
    pub fn changes_state(&self) -> bool {
        !matches!(
            self,
            Decision::Waiting { .. } | Decision::RequestApproval { .. }
        )
    }

    pub fn key(&self) -> DecisionKey {
        DecisionKey {
            kind: self.kind(),
            wave: self.wave(),
            blocker: match self {
                Decision::Waiting { blocker, .. } => Some(*blocker),
                _ => None,
            },
        }
    }
}

/// What a tick decided: the rollout's status and current wave after applying the
/// decisions, and the decisions themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickOutcome {
    pub status: RolloutStatus,
    pub current_wave: Option<u32>,
    pub decisions: Vec<Decision>,
}

impl TickOutcome {
    /// Whether the outcome differs from the view's status or current wave.
    pub fn changes(&self, view: &RolloutView) -> bool {
        self.status != view.status || self.current_wave != view.current_wave
    }
}

/// Every site of the rollout that attempted or committed the release (sorted, once
/// each): the sites a rollback sends back to the previous release.
pub fn sites_to_roll_back(view: &RolloutView) -> Vec<String> {
    let mut out: Vec<String> = view
        .waves
        .iter()
        .flat_map(|w| w.sites.iter())
        .filter(|s| s.attempted())
        .map(|s| s.site_id.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The sites of opened waves that the gate counts as failed at `now` (a failed install,
/// a self-rollback, unhealthy within the bake, or unjudgeable), with their wave and the
/// reason in words: the sites an operator may retry. Sorted by site id.
pub fn failed_sites(view: &RolloutView, now: Timestamp) -> Vec<(String, u32, String)> {
    let mut out = Vec::new();
    for (i, w) in view.waves.iter().enumerate() {
        let (Some(opened), Some(plan_wave)) = (w.opened_at, view.plan.wave(i as u32)) else {
            continue;
        };
        for s in &w.sites {
            let status = gate::site_status(&plan_wave.gate, opened, s, now);
            if status.state == gate::SiteState::Failed {
                out.push((s.site_id.clone(), i as u32, status.detail));
            }
        }
    }
    out.sort();
    out
}

/// The automatic retries due at `now` under the plan's `[retry]` policy, sites of opened
/// waves in order: a ScheduleRetry for each site whose failed attempt has attempts left
/// and no next attempt scheduled yet, and (when `start` is true: the rollout runs) a
/// Retry for each site whose scheduled attempt has come. A site whose next attempt's time
/// overflows gets neither (the gate counts it as failed, with the reason).
pub fn retry_decisions(view: &RolloutView, now: Timestamp, start: bool) -> Vec<Decision> {
    let policy = &view.plan.retry;
    if !policy.retries() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, w) in view.waves.iter().enumerate() {
        let wave = i as u32;
        let Some(opened) = w.opened_at else { continue };
        for s in &w.sites {
            let Some(Ok(at)) = gate::next_attempt_at(policy, opened, s) else {
                continue;
            };
            let due = s.retry_at.is_some() && start && at <= now;
            if s.retry_at.is_some() && !due {
                continue;
            }
            let words = s.failure_words();
            let this = attempt_words(policy, s.attempt).unwrap_or_default();
            if s.retry_at.is_none() {
                out.push(Decision::ScheduleRetry {
                    wave,
                    site_id: s.site_id.clone(),
                    attempt: s.attempt,
                    at,
                    reason: format!(
                        "site {} failed ({this}): {words}; retrying at {} (back-off {})",
                        s.site_id,
                        gate::moment(at),
                        gate::human(policy.delay_after(s.attempt))
                    ),
                });
            } else {
                let next = s.attempt + 1;
                out.push(Decision::Retry {
                    wave,
                    site_id: s.site_id.clone(),
                    attempt: next,
                    reason: format!(
                        "site {} retried ({}) by the plan's retry policy; {this} had failed: \
                         {words}",
                        s.site_id,
                        attempt_words(policy, next).unwrap_or_default()
                    ),
                });
            }
        }
    }
    out
}

/// The gate verdict of an opened wave at `now` (None when the wave has not opened).
pub fn wave_verdict(view: &RolloutView, wave: u32, now: Timestamp) -> Option<GateVerdict> {
    let plan_wave = view.plan.wave(wave)?;
    let wv = view.wave_view(wave)?;
    let opened_at = wv.opened_at?;
    let t = tally(&plan_wave.gate, opened_at, &wv.sites, now);
    let verdict = evaluate_gate(
        &plan_wave.gate,
        &t,
        WaveGateFacts {
            opened_at,
            approved: wv.approved_at.is_some(),
        },
        now,
    );
    Some(analysis::apply(verdict, &wv.analysis))
}

/// The Halt outcome for a failed gate of `wave`.
fn halt(view: &RolloutView, wave: u32, why: &str) -> TickOutcome {
    let rollback = if view.plan.auto_rollback {
        sites_to_roll_back(view)
    } else {
        vec![]
    };
    let tail = if view.plan.auto_rollback {
        format!(
            "; auto_rollback sends {} site(s) back to the previous release",
            rollback.len()
        )
    } else {
        String::new()
    };
    TickOutcome {
        status: RolloutStatus::Halted,
        current_wave: view.current_wave,
        decisions: vec![Decision::Halt {
            wave,
            reason: format!("halted at {}: {why}{tail}", view.wave_label(wave)),
            rollback,
        }],
    }
}

/// Runs the controller once over `view` at `now`.
///
/// - Pending, halted, completed, aborted and rolled-back rollouts: no decision.
/// - A channel's convergence rollout: [`convergence::tick`].
/// - Running and paused rollouts: if any opened wave's gate fails (failure budget
///   crossed, success ratio out of reach, every site silent), Halt — the earliest such
///   wave — at once, paused or not.
/// - Paused: nothing else.
/// - Running with no wave open: OpenWave 0.
/// - Running: the current wave's gate passes → OpenWave next, or Complete after the last;
///   waits for approval → RequestApproval; otherwise Waiting with the first blocker.
/// - Running or paused and not halting or completing: first the automatic retries
///   ([`retry_decisions`]; a paused rollout schedules them but starts none).
pub fn tick(view: &RolloutView, now: Timestamp) -> TickOutcome {
    let mut out = progress(view, now);
    if matches!(out.status, RolloutStatus::Running | RolloutStatus::Paused)
        && matches!(view.status, RolloutStatus::Running | RolloutStatus::Paused)
    {
        let retries = retry_decisions(view, now, view.status == RolloutStatus::Running);
        out.decisions.splice(0..0, retries);
    }
    out
}

/// The rollout's waves: halt, open, complete, wait (see [`tick`]).
fn progress(view: &RolloutView, now: Timestamp) -> TickOutcome {
    let unchanged = |decisions| TickOutcome {
        status: view.status,
        current_wave: view.current_wave,
        decisions,
    };
    if view.plan.converge.is_some() {
        return convergence::tick(view, now);
    }
    if !matches!(view.status, RolloutStatus::Running | RolloutStatus::Paused) {
        return unchanged(vec![]);
    }
    let last = view.plan.wave_count().saturating_sub(1);
    let current = view.current_wave.map(|c| c.min(last));

    // A failed gate in any opened wave halts the rollout, paused or not. The current
    // wave's verdict is kept for below: each verdict walks every site of its wave.
    let mut current_verdict = None;
    if let Some(c) = current {
        for w in 0..=c {
            match wave_verdict(view, w, now) {
                Some(GateVerdict::Fail { reason }) => return halt(view, w, &reason),
                v if w == c => current_verdict = v,
                _ => {}
            }
        }
    }
    if view.status == RolloutStatus::Paused {
        return unchanged(vec![]);
    }

    let Some(c) = current else {
        return TickOutcome {
            status: RolloutStatus::Running,
            current_wave: Some(0),
            decisions: vec![Decision::OpenWave {
                wave: 0,
                reason: format!("rollout started: opening {}", view.wave_label(0)),
            }],
        };
    };
    let Some(verdict) = current_verdict else {
        // The current wave has no opening time on record: (re)open it.
        return TickOutcome {
            status: RolloutStatus::Running,
            current_wave: Some(c),
            decisions: vec![Decision::OpenWave {
                wave: c,
                reason: format!("opening {} (no opening time on record)", view.wave_label(c)),
            }],
        };
    };
    let label = view.wave_label(c);
    match verdict {
        GateVerdict::Pass { reason } if c >= last => TickOutcome {
            status: RolloutStatus::Completed,
            current_wave: Some(c),
            decisions: vec![Decision::Complete {
                reason: format!("{label}, the last, passed its gate ({reason}): rollout complete"),
            }],
        },
        GateVerdict::Pass { reason } => TickOutcome {
            status: RolloutStatus::Running,
            current_wave: Some(c + 1),
            decisions: vec![Decision::OpenWave {
                wave: c + 1,
                reason: format!(
                    "{label} passed its gate ({reason}): opening {}",
                    view.wave_label(c + 1)
                ),
            }],
        },
        GateVerdict::Wait {
            blocker: WaitBlocker::Approval,
            reason,
        } => unchanged(vec![Decision::RequestApproval {
            wave: c,
            reason: format!("{label}: {reason}"),
        }]),
        GateVerdict::Wait { blocker, reason } => unchanged(vec![Decision::Waiting {
            wave: c,
            blocker,
            reason: format!("{label}: {reason}"),
        }]),
        // Checked above already; kept so that a failing current wave always halts.
        GateVerdict::Fail { reason } => halt(view, c, &reason),
    }
}
