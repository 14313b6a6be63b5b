//! The controller of a channel's convergence rollout (a plan with `converge = "<channel>"`,
//! made by the coordinator, never by an operator).
//!
//! A convergence rollout has one wave, which opens when the rollout starts and stays open:
//! the coordinator adds the channel's sites that are off its release as it finds them
//! (new, re-enrolled, relabelled, back online, unheld), and they install under the wave's
//! concurrency limit, the channel's window, freezes and leases like any rollout's sites.
//! It never completes by itself; it ends when the channel moves to another release or an
//! operator creates a rollout that takes its sites.
//!
//! Its gate only guards: when the failures among its sites cross the channel's failure
//! budget, the rollout halts, which pauses the channel's convergence until an operator
//! resumes it. Silent sites are left out (a straggler that stays offline is expected, not a
//! verdict on the release), and nothing waits for a bake or a sample: there is no next wave.

use jiff::Timestamp;

use super::gate::{self, SiteState};
use super::{Decision, RolloutStatus, RolloutView, TickOutcome};

/// At most this many failed sites are named in a halt's reason.
const NAMED: usize = 5;

/// Runs the controller once over a convergence rollout at `now`.
pub fn tick(view: &RolloutView, now: Timestamp) -> TickOutcome {
    let unchanged = |decisions| TickOutcome {
        status: view.status,
        current_wave: view.current_wave,
        decisions,
    };
    if !matches!(view.status, RolloutStatus::Running | RolloutStatus::Paused) {
        return unchanged(vec![]);
    }
    let channel = view.plan.converge.as_deref().unwrap_or("?");
    let (Some(plan_wave), Some(wave)) = (view.plan.wave(0), view.waves.first()) else {
        return unchanged(vec![]);
    };
    let Some(opened) = wave.opened_at.filter(|_| view.current_wave.is_some()) else {
        if view.status == RolloutStatus::Paused {
            return unchanged(vec![]);
        }
        return TickOutcome {
            status: RolloutStatus::Running,
            current_wave: Some(0),
            decisions: vec![Decision::OpenWave {
                wave: 0,
                reason: format!(
                    "convergence of channel {channel} started: its sites off release {} install \
                     it, at most {} at a time",
                    view.plan.release,
                    plan_wave
                        .max_concurrent
                        .map_or("any number".to_string(), |n| n.to_string())
                ),
            }],
        };
    };
    let g = &plan_wave.gate;
    let t = gate::tally(g, opened, &wave.sites, now);
    let failures = t.failures(g.on_silent);
    let budget = gate::failure_budget(g, t.counted(g.on_silent));
    if failures <= budget {
        return unchanged(vec![]);
    }
    let mut failed: Vec<String> = wave
        .sites
        .iter()
        .filter_map(|s| {
            let status = gate::site_status(g, opened, s, now);
            (status.state == SiteState::Failed)
                .then(|| format!("{} ({})", s.site_id, status.detail))
        })
        .collect();
    failed.sort();
    let more = failed.len().saturating_sub(NAMED);
    failed.truncate(NAMED);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    TickOutcome {
        status: RolloutStatus::Halted,
        current_wave: view.current_wave,
        decisions: vec![Decision::Halt {
            wave: 0,
            reason: format!(
                "convergence of channel {channel} paused: {failures} site(s) failed to install \
                 release {}, more than the channel's failure budget of {budget}: {}{more}. \
                 Hold or fix those sites, then resume the channel (fleetwave channel resume \
                 {channel})",
                view.plan.release,
                failed.join(", ")
            ),
            rollback: vec![],
        }],
    }
}
