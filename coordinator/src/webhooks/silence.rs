//! Finds sites gone silent for `site.silent` events.
//!
//! Silence is not a decision: the gate counts a site silent when nothing was heard from it
//! for its wave's `report_deadline`, at the moment it looks. So while some endpoint
//! receives `site.silent`, this task looks at every running or paused rollout every ten
//! controller ticks (at least every second), with the gate's own rule
//! ([`crate::controller::site_state`]), and stores each silence found once (by rollout,
//! site and the last sign of life it counts from) with its event, in one transaction: a
//! restart never sends one twice, and a site that reports again and falls silent again is
//! a new silence. It reads the engine's memory and never changes a rollout.

use std::collections::HashSet;
use std::time::Duration;

use fleetwave_shared::protocol::operator::RolloutStatus;
use jiff::Timestamp;

use super::EventKind;
use crate::controller::gate::{human, last_sign_of_life};
use crate::controller::{SiteState, site_state};
use crate::engine::Loaded;
use crate::state::AppState;
use crate::store::{SiteSilence, to_millis};

/// How often the task looks: ten controller ticks, at least a second.
pub fn interval(tick_millis: u64) -> Duration {
    Duration::from_millis(tick_millis.saturating_mul(10)).max(Duration::from_secs(1))
}

/// The silent sites of a rollout at `now`, by the gate's rule.
pub fn silent_sites(l: &Loaded, now: Timestamp) -> Vec<SiteSilence> {
    let view = l.view();
    let mut out = Vec::new();
    for (i, wave) in view.waves.iter().enumerate() {
        let (Some(opened), Some(plan)) = (wave.opened_at, view.plan.waves.get(i)) else {
            continue;
        };
        for site in &wave.sites {
            if site_state(&plan.gate, opened, site, now) != SiteState::Silent {
                continue;
            }
            let since = last_sign_of_life(opened, site);
            out.push(SiteSilence {
                rollout_id: l.record.id.clone(),
                release_id: l.record.release_id.clone(),
                wave: u32::try_from(i).unwrap_or(u32::MAX),
                site_id: site.site_id.clone(),
                since,
                at: now,
                reason: format!(
                    "nothing heard for {} (report deadline {})",
                    human(now.duration_since(since)),
                    human(plan.gate.report_deadline)
                ),
            });
        }
    }
    out
}

/// Runs until shutdown (see the module).
pub async fn run(app: AppState) {
    let every = interval(app.config.controller.tick_millis);
    let mut stop = app.shutdown.clone();
    // Silences stored already (rollout, site, since): not written again.
    let mut noted: HashSet<(String, String, i64)> = HashSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        // A standby replica leaves it to the leader (one writer of site.silent events).
        if app.controller.status().standby.is_some() {
            continue;
        }
        if let Err(e) = pass(&app, &mut noted).await {
            tracing::warn!(error = %e, "looking for silent sites (site.silent webhooks) failed");
        }
    }
}

async fn pass(
    app: &AppState,
    noted: &mut HashSet<(String, String, i64)>,
) -> Result<(), crate::engine::EngineError> {
    let kind = EventKind::SiteSilent.as_str();
    if !app.db.run(move |s| s.webhook_subscribed(kind)).await? {
        noted.clear();
        return Ok(());
    }
    let rollouts = app.db.run(|s| s.list_rollouts()).await?;
    let live: Vec<String> = rollouts
        .into_iter()
        .filter(|r| matches!(r.status, RolloutStatus::Running | RolloutStatus::Paused))
        .map(|r| r.id)
        .collect();
    noted.retain(|(rollout, _, _)| live.contains(rollout));
    for id in live {
        let now = app.now();
        let found = app
            .engine
            .with_rollout(&id, |l| silent_sites(l, now))
            .await?;
        let new: Vec<SiteSilence> = found
            .into_iter()
            .filter(|x| {
                !noted.contains(&(x.rollout_id.clone(), x.site_id.clone(), to_millis(x.since)))
            })
            .collect();
        if new.is_empty() {
            continue;
        }
        let keys: Vec<(String, String, i64)> = new
            .iter()
            .map(|x| (x.rollout_id.clone(), x.site_id.clone(), to_millis(x.since)))
            .collect();
        app.db.run(move |s| s.record_site_silences(&new)).await?;
        noted.extend(keys);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_every_ten_ticks_and_at_most_every_second() {
        assert_eq!(interval(1000), Duration::from_secs(10));
        assert_eq!(interval(50), Duration::from_secs(1));
    }
}
