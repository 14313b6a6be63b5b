//! Retrying failed sites: a new attempt at the release on a site whose install failed (a
//! disk that was full, a power cut, a flaky dependency), started by an operator (one failed
//! site, or every failed site of a wave) or by the plan's `[retry]` policy.
//!
//! Design. Each rollout site has an attempt number (`rollout_sites.attempts`, schema v8: 1
//! for the first install, one more per retry) and, once scheduled, the time of its next
//! automatic attempt (`retry_at`). The pure controller decides ([`crate::controller::tick`],
//! on the `now` it is given): a site whose install failed with attempts left counts as in
//! progress in its gate (so a failure budget of 0 does not halt before the retry), gets a
//! `ScheduleRetry` (stored `retry_at`, timeline "site X failed (attempt 1 of 3): <the
//! agent's words>; retrying at T") and, once T has come while the rollout runs, a `Retry`.
//! Both kinds of retry are applied here the same way: the site's install facts are cleared
//! and its attempt counted up in one transaction (so the gate judges the new attempt alone
//! and counts the site once, by its last attempt), and the next assignment pass signs a new
//! assignment with a higher sequence, which the agent installs as a new piece of work. The
//! timeline says which attempt it is. A site that runs out of attempts counts as failed,
//! by its last attempt; an operator may still retry it (one more attempt). Sites that an
//! operator skipped or that were sent a rollback assignment are never retried, and a held
//! site is not retried automatically until its hold is lifted.

use jiff::Timestamp;

use super::actions::RetryTarget;
use super::facts::Update;
use super::{Engine, EngineError, Loaded};
use crate::controller;

/// At most this many site names in one `retried` decision (the rest are counted).
const NAMES_IN_NOTE: usize = 20;

impl Engine {
    /// Clears the install facts of the sites `target` names and returns the timeline note.
    /// Call with the engine lock held, from [`Engine::rollout_action`].
    pub(super) async fn retry(
        &self,
        l: &Loaded,
        target: &RetryTarget,
        actor: &str,
        now: Timestamp,
    ) -> Result<(String, Option<u32>, String), EngineError> {
        let id = l.record.id.clone();
        // Skipped sites and sites sent back to their previous release are not retried.
        let not_retried: std::collections::HashSet<&str> = l
            .sites
            .iter()
            .filter(|s| s.rollback_sequence.is_some() || s.skipped)
            .map(|s| s.site_id.as_str())
            .collect();
        let failed: Vec<(String, u32, String)> = controller::failed_sites(&l.view(), now)
            .into_iter()
            .filter(|(site, _, _)| !not_retried.contains(site.as_str()))
            .collect();
        let chosen: Vec<(String, u32, String)> = match target {
            RetryTarget::Site(site) => {
                let Some(f) = failed.iter().find(|(s, _, _)| s == site) else {
                    let why = match l.sites.iter().find(|s| s.site_id == *site) {
                        None => format!("site {site} is not part of rollout {id}"),
                        Some(s) if s.rollback_sequence.is_some() => format!(
                            "site {site} was sent back to its previous release; it is not retried"
                        ),
                        Some(s) if s.skipped => {
                            format!("site {site} was skipped by an operator; it is not retried")
                        }
                        Some(s) => match automatic_retry_at(l, s) {
                            Some(at) => format!(
                                "site {site} is waiting for its automatic retry at {} under the \
                                 plan's retry policy; nothing to retry by hand",
                                controller::gate::moment(at)
                            ),
                            None => format!(
                                "site {site} has not failed in rollout {id}; only failed sites are \
                                 retried"
                            ),
                        },
                    };
                    return Err(EngineError::NothingToRetry(why));
                };
                vec![f.clone()]
            }
            RetryTarget::FailedOfWave(wave) => {
                let waves = l.plan.waves.len();
                if *wave as usize >= waves {
                    return Err(EngineError::NoSuchWave { wave: *wave, waves });
                }
                let chosen: Vec<_> = failed.into_iter().filter(|f| f.1 == *wave).collect();
                if chosen.is_empty() {
                    return Err(EngineError::NothingToRetry(format!(
                        "wave {wave} of rollout {id} has no failed site to retry"
                    )));
                }
                chosen
            }
        };

        let ids: Vec<String> = chosen.iter().map(|c| c.0.clone()).collect();
        let attempts = self.start_attempts(&id, &ids).await?;
        let policy = l.plan.retry;
        let attempt = |i: usize| {
            controller::attempt_words(&policy, attempts[i]).unwrap_or_else(|| "attempt 1".into())
        };
        let when = if matches!(
            l.record.status,
            fleetwave_shared::protocol::operator::RolloutStatus::Halted
        ) {
            "; the rollout is halted: the new attempt starts when it resumes"
        } else {
            ""
        };
        Ok(match (target, chosen.as_slice()) {
            (RetryTarget::Site(site), [(_, wave, detail)]) => (
                "retried".into(),
                Some(*wave),
                format!(
                    "site {site} ({}) retried by {actor}; it had failed: {detail}{when}",
                    attempt(0)
                ),
            ),
            (_, chosen) => {
                let wave = chosen.first().map(|c| c.1);
                let mut names: Vec<String> = chosen
                    .iter()
                    .take(NAMES_IN_NOTE)
                    .enumerate()
                    .map(|(i, (s, _, _))| format!("{s} ({})", attempt(i)))
                    .collect();
                if chosen.len() > NAMES_IN_NOTE {
                    names.push(format!("and {} more", chosen.len() - NAMES_IN_NOTE));
                }
                (
                    "retried".into(),
                    wave,
                    format!(
                        "{} failed site(s) of wave {} retried by {actor}: {}{when}",
                        chosen.len(),
                        wave.unwrap_or_default(),
                        names.join(", ")
                    ),
                )
            }
        })
    }
}

/// When the plan's retry policy starts the site's next attempt, if it failed with
/// attempts left in an opened wave.
fn automatic_retry_at(l: &Loaded, s: &crate::store::RolloutSiteRecord) -> Option<Timestamp> {
    let opened = l.record.waves.get(s.wave as usize)?.opened_at?;
    controller::next_attempt_at(&l.plan.retry, opened, &super::facts(s))?.ok()
}

impl Engine {
    /// Starts a new attempt on `sites` of rollout `id`: their install facts and scheduled
    /// retries cleared and their attempts counted up in one transaction, then in memory.
    /// Returns each site's new attempt number. Call with the engine lock held.
    async fn start_attempts(&self, id: &str, sites: &[String]) -> Result<Vec<u32>, EngineError> {
        let (rid, sids) = (id.to_string(), sites.to_vec());
        let attempts = self
            .db
            .run(move |s| s.reset_rollout_sites_for_retry(&rid, &sids))
            .await?;
        self.facts.apply_all(
            id,
            sites
                .iter()
                .zip(&attempts)
                .map(|(site_id, n)| Update::Retried {
                    site_id: site_id.clone(),
                    attempts: *n,
                })
                .collect::<Vec<_>>(),
        );
        Ok(attempts)
    }

    /// Leaves out of a controller pass's outcome the automatic retries of held sites: a held
    /// site stays at what it runs, so its next attempt is neither scheduled nor started
    /// until the hold is lifted (the gate keeps counting it as in progress meanwhile).
    pub(super) async fn drop_retries_of_held_sites(
        &self,
        outcome: &mut controller::TickOutcome,
    ) -> Result<(), EngineError> {
        let is_retry = |d: &controller::Decision| {
            matches!(
                d,
                controller::Decision::ScheduleRetry { .. } | controller::Decision::Retry { .. }
            )
        };
        if !outcome.decisions.iter().any(is_retry) {
            return Ok(());
        }
        let holds = self.db.run(|s| s.site_holds()).await?;
        outcome.decisions.retain(|d| match d {
            controller::Decision::ScheduleRetry { site_id, .. }
            | controller::Decision::Retry { site_id, .. } => !holds.contains_key(site_id),
            _ => true,
        });
        Ok(())
    }

    /// Applies one controller pass's automatic retries of rollout `id`: stores when each
    /// `scheduled` site's next attempt starts, and starts a new attempt on each `due` site
    /// (the pass's assignments then sign it its new assignment). Call with the engine lock
    /// held, before the pass assigns.
    pub(super) async fn apply_automatic_retries(
        &self,
        id: &str,
        scheduled: Vec<(String, Timestamp)>,
        due: Vec<String>,
    ) -> Result<(), EngineError> {
        if !scheduled.is_empty() {
            let (rid, retries) = (id.to_string(), scheduled.clone());
            self.db
                .run(move |s| s.schedule_rollout_site_retries(&rid, &retries))
                .await?;
            self.facts.apply_all(
                id,
                scheduled
                    .into_iter()
                    .map(|(site_id, at)| Update::RetryScheduled { site_id, at })
                    .collect::<Vec<_>>(),
            );
        }
        if !due.is_empty() {
            self.start_attempts(id, &due).await?;
        }
        Ok(())
    }
}
