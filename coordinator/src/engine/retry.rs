//! Retrying failed sites: an operator installs the release again on one failed site, or on
//! every failed site of a wave (a disk that was full, a power cut, a flaky dependency).
//!
//! A retry starts a new attempt: the site's install facts are cleared in one transaction
//! (so the gate judges the new attempt alone and counts the site once, by it) and the next
//! controller pass signs a new assignment with a higher sequence, which the agent installs
//! as a new piece of work. The timeline says which attempt it is. Sites that an operator
//! skipped or that were sent a rollback assignment are not retried.

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
                        Some(_) => format!(
                            "site {site} has not failed in rollout {id}; only failed sites are retried"
                        ),
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

        // Which attempt each one starts: the first install was attempt 1, and each
        // `retried` decision names the site as `SITE (attempt N)`.
        let rid = id.clone();
        let timeline = self.db.run(move |s| s.decisions(&rid)).await?;
        let attempt = |site: &str| {
            let earlier = timeline
                .iter()
                .filter(|d| d.kind == "retried" && names_attempt_of(&d.reason, site))
                .count();
            earlier + 2
        };
        let ids: Vec<String> = chosen.iter().map(|c| c.0.clone()).collect();
        let (rid, sids) = (id.clone(), ids.clone());
        self.db
            .run(move |s| s.reset_rollout_sites_for_retry(&rid, &sids))
            .await?;
        self.facts.apply_all(
            &id,
            ids.iter()
                .map(|site_id| Update::Retried {
                    site_id: site_id.clone(),
                })
                .collect::<Vec<_>>(),
        );
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
                    "site {site} (attempt {}) retried by {actor}; it had failed: {detail}{when}",
                    attempt(site)
                ),
            ),
            (_, chosen) => {
                let wave = chosen.first().map(|c| c.1);
                let mut names: Vec<String> = chosen
                    .iter()
                    .take(NAMES_IN_NOTE)
                    .map(|(s, _, _)| format!("{s} (attempt {})", attempt(s)))
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

/// Whether a `retried` decision's words name `site` as `SITE (attempt N)`.
fn names_attempt_of(reason: &str, site: &str) -> bool {
    let words: Vec<&str> = reason.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    words.windows(2).any(|w| w[0] == site && w[1] == "(attempt")
}

#[cfg(test)]
mod tests {
    use super::names_attempt_of;

    #[test]
    fn attempts_are_read_per_site_from_both_shapes_of_note() {
        let one = "site s-1 (attempt 2) retried by alice; it had failed: disk full";
        let wave = "2 failed site(s) of wave 0 retried by bob: s-1 (attempt 3), xs-1 (attempt 2)";
        assert!(names_attempt_of(one, "s-1"));
        assert!(names_attempt_of(wave, "s-1"));
        assert!(names_attempt_of(wave, "xs-1"));
        assert!(
            !names_attempt_of(one, "s"),
            "a prefix of the id is another site"
        );
        assert!(!names_attempt_of(wave, "s-2"));
    }
}
