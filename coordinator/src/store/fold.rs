//! The rules that fold an agent's events into a site's facts, as pure code that every
//! backend calls: it reads the facts, folds each new event in with these functions and
//! writes the result (SQLite: `store/sqlite/reports.rs`).
//!
//! The rules:
//! - **Facts never go backwards.** A fact follows the time of the event that set it (the
//!   [`super::event_time`]); an event no newer than the fact's time does not replace it
//!   ([`not_older`]), and times that only grow (`last_report_at`, `leased_at`,
//!   `last_healthy_at`, `committed_at`, `failed_at`) keep their maximum. So out-of-order
//!   delivery, duplicates and an older phase arriving after a newer one change nothing.
//! - **A terminal phase releases the lease** ([`releases_lease`]): `committed`, `failed`,
//!   `rolled_back` or `rollback_failed`, of whatever release.
//! - A commit (a `committed` phase, or an `installed` report, of the rollout's release)
//!   counts at its latest time, and the first unhealthy heartbeat at or after it is looked
//!   up again in the stored reports (they may have arrived before the commit did).
//! - A failure (`failed` or `rollback_failed` of the rollout's release) counts at its
//!   latest time, with the newest failure's detail.
//!
//! Which rollout an event folds into is [`named_rollout`]'s: the one the event names, or
//! else the site's active rollout.

use std::collections::BTreeMap;

use fleetwave_shared::protocol::{EventBody, Phase};
use jiff::Timestamp;

use super::{InstalledRelease, RolloutSiteRecord, StoreResult};

/// Facts never go backwards: a fact last set at `current` is replaced by one of an event
/// at `at` only if the fact is not newer (equal times: the later-applied event wins).
pub fn not_older(current: Option<Timestamp>, at: Timestamp) -> bool {
    current.is_none_or(|c| c <= at)
}

fn latest(current: Option<Timestamp>, at: Timestamp) -> Option<Timestamp> {
    Some(current.map_or(at, |c| c.max(at)))
}

/// A phase that ends the install of a release: the site's lease for the rollout is
/// released when it is reported.
pub fn releases_lease(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::Committed | Phase::Failed | Phase::RolledBack | Phase::RollbackFailed
    )
}

/// The rollout an event names (phases and refusals may); `None`: the event folds into the
/// site's active rollout, if it has one.
pub fn named_rollout(body: &EventBody) -> Option<&str> {
    match body {
        EventBody::Phase { rollout_id, .. } | EventBody::Refusal { rollout_id, .. } => {
            rollout_id.as_deref()
        }
        EventBody::Health { .. } | EventBody::Deferral { .. } | EventBody::Installed { .. } => None,
    }
}

/// A site's own facts that events set (outside any rollout).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteFacts {
    pub healthy: Option<bool>,
    pub health_at: Option<Timestamp>,
    pub deferred_until: Option<Timestamp>,
    /// When the deferral (set or lifted) was reported.
    pub deferral_at: Option<Timestamp>,
}

/// Folds a health or deferral event at `at` into the site's facts (other events leave them
/// alone; see [`fold_installed`]). Returns whether anything changed.
pub fn fold_site(facts: &mut SiteFacts, body: &EventBody, at: Timestamp) -> bool {
    let before = facts.clone();
    match body {
        EventBody::Health { healthy, .. } if not_older(facts.health_at, at) => {
            facts.healthy = Some(*healthy);
            facts.health_at = Some(at);
        }
        EventBody::Deferral { until, .. } if not_older(facts.deferral_at, at) => {
            facts.deferred_until = *until;
            facts.deferral_at = Some(at);
        }
        _ => {}
    }
    *facts != before
}

/// Folds an `installed` event at `at` into what the site runs per release stream (other
/// events leave it alone). Returns whether anything changed.
pub fn fold_installed(
    installed: &mut BTreeMap<String, InstalledRelease>,
    body: &EventBody,
    at: Timestamp,
) -> bool {
    let EventBody::Installed {
        name,
        release_id,
        version,
        previous_release_id,
    } = body
    else {
        return false;
    };
    // Facts never go backwards: a newer report of the stream stays.
    if installed.get(name).is_some_and(|old| old.at > at) {
        return false;
    }
    let new = InstalledRelease {
        release_id: release_id.clone(),
        version: version.clone(),
        previous_release_id: previous_release_id.clone(),
        at,
    };
    installed.insert(name.clone(), new.clone()) != Some(new)
}

/// What folding an event into a rollout site asks of the backend besides writing the row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowFold {
    /// Delete the site's lease for the rollout (a terminal phase).
    pub release_lease: bool,
}

/// Folds one new event at `at` into the site's row of a rollout whose release is
/// `target_release`. `first_unhealthy_since(t)`: the site's first stored unhealthy
/// heartbeat at or after `t` (asked only when a commit moves `committed_at`).
pub fn fold_rollout_site(
    row: &mut RolloutSiteRecord,
    target_release: &str,
    body: &EventBody,
    at: Timestamp,
    first_unhealthy_since: impl FnOnce(Timestamp) -> StoreResult<Option<Timestamp>>,
) -> StoreResult<RowFold> {
    let mut out = RowFold::default();
    match body {
        EventBody::Phase {
            release_id,
            phase,
            detail,
            ..
        } => {
            // A retry cleared the facts; the previous attempt's last reports may still be
            // on their way. An agent sends its reports in order and says `accepted` first
            // for the new assignment, so until the new attempt's first phase, a failure or
            // a self-rollback belongs to the previous attempt: it was counted then.
            if row.attempts > 1
                && row.phase.is_none()
                && matches!(
                    phase,
                    Phase::Failed | Phase::RolledBack | Phase::RollbackFailed
                )
            {
                row.last_report_at = latest(row.last_report_at, at);
                return Ok(out);
            }
            if not_older(row.phase_at, at) {
                row.phase = Some(*phase);
                row.phase_at = Some(at);
                row.detail = detail.clone();
            }
            let target = release_id == target_release;
            match phase {
                Phase::Committed if target => commit(row, at, first_unhealthy_since)?,
                // A rollback the agent gave up on is a failure too (its detail says why).
                Phase::Failed | Phase::RollbackFailed if target => {
                    if not_older(row.failed_at, at) {
                        row.failure = detail.clone();
                    }
                    row.failed_at = latest(row.failed_at, at);
                }
                Phase::RolledBack if target => row.rolled_back = true,
                Phase::Leased => row.leased_at = latest(row.leased_at, at),
                _ => {}
            }
            out.release_lease = releases_lease(*phase);
        }
        EventBody::Health { healthy: true, .. } => {
            row.last_healthy_at = latest(row.last_healthy_at, at);
        }
        EventBody::Health { healthy: false, .. } => {
            if row.committed_at.is_some_and(|c| c <= at) {
                row.first_unhealthy_after_commit_at = Some(
                    row.first_unhealthy_after_commit_at
                        .map_or(at, |f| f.min(at)),
                );
            }
        }
        EventBody::Deferral { .. } => {}
        EventBody::Installed {
            release_id,
            previous_release_id,
            ..
        } => {
            let target = release_id.as_deref() == Some(target_release);
            if target {
                commit(row, at, first_unhealthy_since)?;
            }
            // The release the site ran before this rollout: what a rollback goes back to.
            let previous = if target {
                previous_release_id
            } else {
                release_id
            };
            if let Some(previous) = previous.as_ref().filter(|p| *p != target_release)
                && row.committed_at.is_none()
            {
                row.previous_release_id = Some(previous.clone());
            }
        }
        EventBody::Refusal { code, message, .. } => {
            if not_older(row.phase_at, at) {
                row.detail = Some(format!("refused: {code}: {message}"));
            }
        }
    }
    row.last_report_at = latest(row.last_report_at, at);
    Ok(out)
}

/// A commit of the rollout's release at `at`: the latest commit counts, and the first
/// unhealthy heartbeat after it is looked up again.
fn commit(
    row: &mut RolloutSiteRecord,
    at: Timestamp,
    first_unhealthy_since: impl FnOnce(Timestamp) -> StoreResult<Option<Timestamp>>,
) -> StoreResult<()> {
    if row.committed_at.is_some_and(|c| c >= at) {
        return Ok(());
    }
    row.first_unhealthy_after_commit_at = first_unhealthy_since(at)?;
    row.committed_at = Some(at);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        format!("2026-01-01T{s}Z").parse().unwrap()
    }

    fn phase(release: &str, p: Phase, detail: Option<&str>) -> EventBody {
        EventBody::Phase {
            rollout_id: None,
            release_id: release.into(),
            phase: p,
            detail: detail.map(Into::into),
        }
    }

    fn health(healthy: bool) -> EventBody {
        EventBody::Health {
            healthy,
            summary: Default::default(),
        }
    }

    fn installed(release: Option<&str>, previous: Option<&str>, at_version: &str) -> EventBody {
        EventBody::Installed {
            name: "app".into(),
            release_id: release.map(Into::into),
            version: Some(at_version.into()),
            previous_release_id: previous.map(Into::into),
        }
    }

    /// Folds events in order into a fresh row; no stored unhealthy heartbeats.
    fn fold_all(events: &[(EventBody, Timestamp)]) -> (RolloutSiteRecord, Vec<RowFold>) {
        let mut row = RolloutSiteRecord::default();
        let folds = events
            .iter()
            .map(|(b, at)| fold_rollout_site(&mut row, "rel-2", b, *at, |_| Ok(None)).unwrap())
            .collect();
        (row, folds)
    }

    #[test]
    fn the_previous_attempts_late_failure_does_not_count_against_a_retry() {
        // Attempt 2 has started (facts cleared); attempt 1's self-rollback arrives late.
        let mut row = RolloutSiteRecord {
            attempts: 2,
            ..RolloutSiteRecord::default()
        };
        let mut fold =
            |b: EventBody, at| fold_rollout_site(&mut row, "rel-2", &b, at, |_| Ok(None)).unwrap();
        let out = fold(
            phase("rel-2", Phase::RolledBack, Some("late")),
            t("00:01:00"),
        );
        assert!(!out.release_lease);
        fold(
            phase("rel-2", Phase::Failed, Some("late too")),
            t("00:01:01"),
        );
        assert_eq!(
            (row.phase, row.failed_at, row.rolled_back),
            (None, None, false)
        );
        assert_eq!(row.last_report_at, Some(t("00:01:01")), "it was heard from");
        // The new attempt's own failure, after its first phase, counts.
        let mut fold =
            |b: EventBody, at| fold_rollout_site(&mut row, "rel-2", &b, at, |_| Ok(None)).unwrap();
        fold(phase("rel-2", Phase::Accepted, None), t("00:02:00"));
        fold(
            phase("rel-2", Phase::Failed, Some("disk full")),
            t("00:03:00"),
        );
        assert_eq!(row.failed_at, Some(t("00:03:00")));
        assert_eq!(row.failure.as_deref(), Some("disk full"));
        // A first attempt's failure counts at once, whatever came before.
        let (first, _) = fold_all(&[(phase("rel-2", Phase::Failed, Some("x")), t("00:01:00"))]);
        assert_eq!(first.failed_at, Some(t("00:01:00")));
    }

    #[test]
    fn an_older_phase_after_a_newer_one_changes_no_phase() {
        let (row, _) = fold_all(&[
            (phase("rel-2", Phase::Installing, None), t("00:02:00")),
            (
                phase("rel-2", Phase::Downloading, Some("late")),
                t("00:01:00"),
            ),
        ]);
        assert_eq!(row.phase, Some(Phase::Installing));
        assert_eq!(row.phase_at, Some(t("00:02:00")));
        assert_eq!(row.detail, None);
        assert_eq!(row.last_report_at, Some(t("00:02:00")));
    }

    #[test]
    fn out_of_order_delivery_ends_where_in_order_delivery_does() {
        let events = [
            (phase("rel-2", Phase::Leased, None), t("00:01:00")),
            (phase("rel-2", Phase::Installing, None), t("00:02:00")),
            (health(true), t("00:02:30")),
            (phase("rel-2", Phase::Committed, Some("ok")), t("00:03:00")),
            (health(false), t("00:04:00")),
            (health(false), t("00:05:00")),
        ];
        let (in_order, _) = fold_all(&events);
        let mut reversed = events.to_vec();
        reversed.reverse();
        let mut row = RolloutSiteRecord::default();
        // Reversed, the unhealthy heartbeats arrive before the commit: the commit finds
        // the first of them in the stored reports.
        for (b, at) in &reversed {
            fold_rollout_site(&mut row, "rel-2", b, *at, |since| {
                Ok([t("00:04:00"), t("00:05:00")]
                    .into_iter()
                    .find(|u| *u >= since))
            })
            .unwrap();
        }
        assert_eq!(row, in_order);
        assert_eq!(row.phase, Some(Phase::Committed));
        assert_eq!(row.committed_at, Some(t("00:03:00")));
        assert_eq!(row.first_unhealthy_after_commit_at, Some(t("00:04:00")));
        assert_eq!(row.leased_at, Some(t("00:01:00")));
        assert_eq!(row.last_healthy_at, Some(t("00:02:30")));
    }

    #[test]
    fn folding_an_event_again_changes_nothing() {
        let events = [
            (
                phase("rel-2", Phase::Failed, Some("disk full")),
                t("00:03:00"),
            ),
            (health(true), t("00:04:00")),
            (installed(Some("rel-1"), None, "1.0"), t("00:00:30")),
        ];
        let (once, _) = fold_all(&events);
        let twice: Vec<_> = events.iter().chain(events.iter()).cloned().collect();
        let (again, _) = fold_all(&twice);
        assert_eq!(once, again);
        let mut site = SiteFacts::default();
        assert!(fold_site(&mut site, &health(true), t("00:04:00")));
        assert!(!fold_site(&mut site, &health(true), t("00:04:00")));
        let mut map = BTreeMap::new();
        let ev = installed(Some("rel-1"), None, "1.0");
        assert!(fold_installed(&mut map, &ev, t("00:00:30")));
        assert!(!fold_installed(&mut map, &ev, t("00:00:30")));
    }

    #[test]
    fn a_terminal_phase_releases_the_lease_whatever_the_release() {
        for p in [
            Phase::Committed,
            Phase::Failed,
            Phase::RolledBack,
            Phase::RollbackFailed,
        ] {
            for release in ["rel-2", "other"] {
                let (_, folds) = fold_all(&[(phase(release, p, None), t("00:01:00"))]);
                assert!(folds[0].release_lease, "{p:?} of {release}");
            }
        }
        for p in [
            Phase::Accepted,
            Phase::Waiting,
            Phase::Staged,
            Phase::Leased,
            Phase::Downloading,
            Phase::Installing,
            Phase::Verifying,
        ] {
            let (_, folds) = fold_all(&[(phase("rel-2", p, None), t("00:01:00"))]);
            assert!(!folds[0].release_lease, "{p:?}");
        }
        // Even a stale terminal phase releases it (the lease is the coordinator's, not a
        // fact with a time).
        let (row, folds) = fold_all(&[
            (phase("rel-2", Phase::Installing, None), t("00:05:00")),
            (phase("rel-2", Phase::Failed, Some("x")), t("00:01:00")),
        ]);
        assert!(folds[1].release_lease);
        assert_eq!(row.phase, Some(Phase::Installing));
        assert_eq!(row.failed_at, Some(t("00:01:00")));
    }

    #[test]
    fn failures_keep_the_latest_time_and_its_detail() {
        let (row, _) = fold_all(&[
            (phase("rel-2", Phase::Failed, Some("second")), t("00:05:00")),
            (
                phase("rel-2", Phase::RollbackFailed, Some("first")),
                t("00:01:00"),
            ),
        ]);
        assert_eq!(row.failed_at, Some(t("00:05:00")));
        assert_eq!(row.failure.as_deref(), Some("second"));
        // A failure of another release is no failure of this rollout.
        let (row, _) = fold_all(&[(phase("rel-1", Phase::Failed, Some("x")), t("00:01:00"))]);
        assert_eq!((row.failed_at, row.failure), (None, None));
    }

    #[test]
    fn commits_keep_the_latest_and_look_up_unhealthy_heartbeats_again() {
        let mut row = RolloutSiteRecord::default();
        let c = phase("rel-2", Phase::Committed, None);
        fold_rollout_site(&mut row, "rel-2", &c, t("00:05:00"), |_| Ok(None)).unwrap();
        // An older commit is not looked up at all.
        fold_rollout_site(&mut row, "rel-2", &c, t("00:01:00"), |_| {
            panic!("no lookup for an older commit")
        })
        .unwrap();
        assert_eq!(row.committed_at, Some(t("00:05:00")));
        // An unhealthy heartbeat before the commit does not count against it.
        fold_rollout_site(
            &mut row,
            "rel-2",
            &health(false),
            t("00:04:00"),
            |_| unreachable!(),
        )
        .unwrap();
        assert_eq!(row.first_unhealthy_after_commit_at, None);
        // An `installed` of the target at a newer time is a newer commit.
        let inst = installed(Some("rel-2"), Some("rel-1"), "2.0");
        fold_rollout_site(&mut row, "rel-2", &inst, t("00:06:00"), |since| {
            assert_eq!(since, t("00:06:00"));
            Ok(Some(t("00:07:00")))
        })
        .unwrap();
        assert_eq!(row.committed_at, Some(t("00:06:00")));
        assert_eq!(row.first_unhealthy_after_commit_at, Some(t("00:07:00")));
        // After the commit, the previous release is no longer learnt.
        assert_eq!(row.previous_release_id, None);
    }

    #[test]
    fn installed_reports_teach_the_previous_release_until_the_commit() {
        let (row, _) = fold_all(&[(installed(Some("rel-1"), None, "1.0"), t("00:01:00"))]);
        assert_eq!(row.previous_release_id.as_deref(), Some("rel-1"));
        let (row, _) = fold_all(&[(installed(None, None, "?"), t("00:01:00"))]);
        assert_eq!(row.previous_release_id, None);
    }

    #[test]
    fn refusals_set_the_detail_unless_a_newer_phase_is_known() {
        let refusal = EventBody::Refusal {
            code: "expired".into(),
            message: "too old".into(),
            rollout_id: None,
            sequence: None,
        };
        let (row, _) = fold_all(&[
            (phase("rel-2", Phase::Installing, None), t("00:05:00")),
            (refusal.clone(), t("00:01:00")),
        ]);
        assert_eq!(row.detail, None);
        let (row, _) = fold_all(&[
            (phase("rel-2", Phase::Installing, None), t("00:01:00")),
            (refusal, t("00:05:00")),
        ]);
        assert_eq!(row.detail.as_deref(), Some("refused: expired: too old"));
        assert_eq!(row.phase, Some(Phase::Installing));
    }

    #[test]
    fn site_facts_never_go_backwards() {
        let mut site = SiteFacts::default();
        fold_site(&mut site, &health(false), t("00:05:00"));
        assert!(!fold_site(&mut site, &health(true), t("00:04:00")));
        assert_eq!(
            (site.healthy, site.health_at),
            (Some(false), Some(t("00:05:00")))
        );
        let defer = |until: Option<Timestamp>| EventBody::Deferral {
            until,
            reason: None,
        };
        fold_site(&mut site, &defer(None), t("00:03:00"));
        assert!(!fold_site(
            &mut site,
            &defer(Some(t("09:00:00"))),
            t("00:02:00")
        ));
        assert_eq!(site.deferred_until, None);
        assert!(fold_site(
            &mut site,
            &defer(Some(t("09:00:00"))),
            t("00:03:00")
        ));
        assert_eq!(site.deferred_until, Some(t("09:00:00")));

        let mut map = BTreeMap::new();
        fold_installed(
            &mut map,
            &installed(Some("rel-2"), None, "2.0"),
            t("00:05:00"),
        );
        assert!(!fold_installed(
            &mut map,
            &installed(Some("rel-1"), None, "1.0"),
            t("00:04:00")
        ));
        assert_eq!(map["app"].version.as_deref(), Some("2.0"));
    }

    #[test]
    fn named_rollouts() {
        let mut b = phase("rel-2", Phase::Leased, None);
        assert_eq!(named_rollout(&b), None);
        if let EventBody::Phase { rollout_id, .. } = &mut b {
            *rollout_id = Some("r1".into());
        }
        assert_eq!(named_rollout(&b), Some("r1"));
        assert_eq!(named_rollout(&health(true)), None);
    }
}
