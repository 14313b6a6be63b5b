//! Boxes within a site: what an enrollment does to a site that may have several boxes,
//! how a box's reports fold into its own facts in a rollout ([`BoxFacts`]), and how a
//! site's row in a rollout is made from its boxes' facts ([`site_from_boxes`]), so that
//! the wave counts the site once.
//!
//! Pure: both backends read the token, the site, its boxes and their facts inside their
//! transaction and apply what this module decides. It must never read or write storage
//! itself.

use std::collections::BTreeMap;

use fleetwave_shared::protocol::operator::SiteState;
use fleetwave_shared::protocol::{EventBody, Phase};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::fold::{self, RowFold};
use super::{
    Enrollment, EnrollmentTokenRecord, RolloutSiteRecord, SiteBox, SiteRecord, StoreError,
    StoreResult,
};

/// One box's facts in one rollout (a site of several boxes only): what its own reports
/// said, folded with the site rules of [`fold::fold_rollout_site`], and its lease.
/// Stored as JSON in `rollout_boxes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoxFacts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    #[serde(default)]
    pub rolled_back: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_healthy_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_unhealthy_after_commit_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report_at: Option<Timestamp>,
    /// When the box was first granted a lease in the rollout (when its turn came).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_leased_at: Option<Timestamp>,
    /// When the box was last granted (or renewed) its lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leased_at: Option<Timestamp>,
    /// The box holds its lease until then (None: it holds none; a terminal phase ends it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<Timestamp>,
    /// What the box last reported installed, per release stream (its `installed`
    /// reports): stream name to version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub installed: BTreeMap<String, String>,
    /// After committing the rollout's release, when the box was first leased another
    /// release of the rollout (its `leased` phase): when its rollback started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_started_at: Option<Timestamp>,
    /// After committing the rollout's release, when the box reported its rollback done:
    /// another release of the rollout `committed` (what a rollback assignment ends with),
    /// or `rolled_back`. The next box of the site's rollback starts after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_at: Option<Timestamp>,
}

impl BoxFacts {
    /// Committed the rollout's release and healthy since (a healthy report at or after
    /// the commit, no unhealthy one after it), not failed: the next box may start.
    pub fn done(&self) -> bool {
        match self.committed_at {
            Some(c) => {
                self.failed_at.is_none_or(|f| f < c)
                    && self.first_unhealthy_after_commit_at.is_none()
                    && self.last_healthy_at.is_some_and(|h| h >= c)
            }
            None => false,
        }
    }

    /// Failed (install or rollback) and not committed since.
    pub fn failed(&self) -> bool {
        self.failed_at
            .is_some_and(|f| self.committed_at.is_none_or(|c| c <= f))
    }

    /// The box's state in words (`GET /v1/sites/{id}`'s `boxes[].state`): `failed`,
    /// `succeeded`, `committed` (not healthy since), `installing` (holds its lease at
    /// `now`) or `waiting`.
    pub fn state(&self, now: Timestamp) -> &'static str {
        if self.failed() {
            "failed"
        } else if self.done() {
            "succeeded"
        } else if self.committed_at.is_some() {
            "committed"
        } else if self.holds_lease(now) {
            "installing"
        } else {
            "waiting"
        }
    }

    /// The facts a retry of the site starts the box from
    /// ([`super::Store::reset_rollout_sites_for_retry`]). A box that committed the
    /// release and has not failed since keeps its facts: it runs the release, and its
    /// agent does not install it again for the new assignment (it only accepts it), so
    /// the boxes after it go on from there. Any other box (failed, or not committed yet)
    /// starts afresh: the attempt before's install facts (phase, lease, commit, failure,
    /// unhealthy-after-commit, rollback) are gone, so it takes its turn again and a box
    /// that failed is no longer failed; its health, last report and what it runs stay, as
    /// the site's row keeps its own.
    pub fn for_new_attempt(&self) -> BoxFacts {
        if self.upgraded() && !self.failed() {
            return self.clone();
        }
        BoxFacts {
            last_healthy_at: self.last_healthy_at,
            last_report_at: self.last_report_at,
            installed: self.installed.clone(),
            ..BoxFacts::default()
        }
    }

    /// Committed the rollout's release: a rollback of the site takes this box back.
    pub fn upgraded(&self) -> bool {
        self.committed_at.is_some()
    }

    /// Reported its rollback done since it committed the rollout's release.
    pub fn rolled_back_since_commit(&self) -> bool {
        self.committed_at
            .zip(self.rolled_back_at)
            .is_some_and(|(c, r)| r >= c)
    }

    /// Holds an unexpired lease at `now`.
    pub fn holds_lease(&self, now: Timestamp) -> bool {
        self.lease_until.is_some_and(|u| u > now)
    }

    /// The latest sign of life of the box: report, phase or lease.
    pub fn last_sign(&self) -> Option<Timestamp> {
        [self.last_report_at, self.phase_at, self.leased_at]
            .into_iter()
            .flatten()
            .max()
    }
}

/// A lease granted (or renewed) to the box at `at`, held until `until`; times only move
/// forward.
pub fn lease(facts: &mut BoxFacts, at: Timestamp, until: Timestamp) {
    facts.first_leased_at = Some(facts.first_leased_at.map_or(at, |f| f.min(at)));
    facts.leased_at = Some(facts.leased_at.map_or(at, |l| l.max(at)));
    facts.lease_until = Some(facts.lease_until.map_or(until, |u| u.max(until)));
}

/// Folds one new event at `at` of a box into its facts in a rollout whose release is
/// `target_release`, by the same rules as a site's row ([`fold::fold_rollout_site`]); a
/// terminal phase ends the box's lease. `attempts`: the site's attempt (a retry's late
/// reports of the previous attempt do not count).
pub fn fold_box(
    facts: &mut BoxFacts,
    attempts: u32,
    target_release: &str,
    body: &EventBody,
    at: Timestamp,
) -> StoreResult<RowFold> {
    let mut row = RolloutSiteRecord {
        phase: facts.phase,
        phase_at: facts.phase_at,
        detail: facts.detail.clone(),
        committed_at: facts.committed_at,
        failed_at: facts.failed_at,
        failure: facts.failure.clone(),
        rolled_back: facts.rolled_back,
        last_healthy_at: facts.last_healthy_at,
        first_unhealthy_after_commit_at: facts.first_unhealthy_after_commit_at,
        last_report_at: facts.last_report_at,
        leased_at: facts.leased_at,
        attempts,
        ..RolloutSiteRecord::default()
    };
    // The box's own unhealthy heartbeats before its commit are not looked up again (the
    // stored reports are the site's): a heartbeat after the commit counts as it arrives.
    let out = fold::fold_rollout_site(&mut row, target_release, body, at, |_| Ok(None))?;
    facts.phase = row.phase;
    facts.phase_at = row.phase_at;
    facts.detail = row.detail;
    facts.committed_at = row.committed_at;
    facts.failed_at = row.failed_at;
    facts.failure = row.failure;
    facts.rolled_back = row.rolled_back;
    facts.last_healthy_at = row.last_healthy_at;
    facts.first_unhealthy_after_commit_at = row.first_unhealthy_after_commit_at;
    facts.last_report_at = row.last_report_at;
    facts.leased_at = row.leased_at;
    if let EventBody::Installed {
        name,
        version: Some(version),
        ..
    } = body
    {
        facts.installed.insert(name.clone(), version.clone());
    }
    // A rollback after the box's commit: its start (the lease of another release) and its
    // end (that release committed, or `rolled_back`), each at the first/latest report.
    if let EventBody::Phase {
        release_id, phase, ..
    } = body
        && facts.committed_at.is_some_and(|c| c <= at)
    {
        let other = release_id != target_release;
        match phase {
            Phase::Leased if other => {
                facts.rollback_started_at =
                    Some(facts.rollback_started_at.map_or(at, |s| s.min(at)));
            }
            Phase::Committed if other => {
                facts.rolled_back_at = Some(facts.rolled_back_at.map_or(at, |r| r.max(at)));
            }
            Phase::RolledBack => {
                facts.rolled_back_at = Some(facts.rolled_back_at.map_or(at, |r| r.max(at)));
            }
            _ => {}
        }
    }
    if out.release_lease {
        facts.lease_until = None;
    }
    Ok(out)
}

/// Folds one new event of box `box_id` (of a site with `boxes`) into its facts among
/// `facts` (all the site's box facts in the rollout, read by the backend) and makes the
/// site's row from them again ([`site_from_boxes`]). The site's lease is released only
/// when the site as a whole is done (every box committed, or one failed); the box's own
/// lease ends with its terminal phase. The backend writes back the box's facts
/// (`facts`, entry `box_id`) and the row.
pub fn fold_box_event(
    row: &mut RolloutSiteRecord,
    target_release: &str,
    box_id: &str,
    boxes: &[SiteBox],
    facts: &mut Vec<(String, BoxFacts)>,
    body: &EventBody,
    at: Timestamp,
) -> StoreResult<RowFold> {
    let i = match facts.iter().position(|(b, _)| b == box_id) {
        Some(i) => i,
        None => {
            facts.push((box_id.to_string(), BoxFacts::default()));
            facts.len() - 1
        }
    };
    let out = fold_box(&mut facts[i].1, row.attempts, target_release, body, at)?;
    site_from_boxes(row, boxes, facts);
    Ok(RowFold {
        release_lease: out.release_lease && (row.committed_at.is_some() || row.failed_at.is_some()),
    })
}

/// When boxes of a site report different versions of one release stream: `inconsistent
/// versions of <stream>: box a runs 1, box b runs 2` (the first such stream by name).
pub fn inconsistent(boxes: &[(&str, &BoxFacts)]) -> Option<String> {
    let streams: std::collections::BTreeSet<&String> =
        boxes.iter().flat_map(|(_, f)| f.installed.keys()).collect();
    streams.into_iter().find_map(|stream| {
        let runs: Vec<(&str, &String)> = boxes
            .iter()
            .filter_map(|(id, f)| f.installed.get(stream).map(|v| (*id, v)))
            .collect();
        let first = runs.first()?.1;
        runs.iter().any(|(_, v)| *v != first).then(|| {
            let words: Vec<String> = runs
                .iter()
                .map(|(id, v)| format!("box {id} runs {v}"))
                .collect();
            format!(
                "inconsistent versions of {stream} after the install: {}",
                words.join(", ")
            )
        })
    })
}

/// How the detail of a site of several boxes names its quietest box
/// ([`site_from_boxes`]); a silent site's reason adds it ([`quiet_box_words`]).
pub const QUIETEST: &str = "quietest box";

/// The words naming the quietest box of a site of several boxes, from its row's detail.
pub fn quiet_box_words(detail: Option<&str>) -> Option<&str> {
    detail.filter(|d| d.starts_with(QUIETEST))
}

/// Makes a site's row in a rollout from its boxes' facts (`facts`: the boxes that have
/// any; `boxes`: every box of the site), so that the gate counts the site once:
/// - committed when every box committed (at the latest commit); healthy since when every
///   box is (the earliest of their latest healthy reports); unhealthy after the commit
///   when any box is;
/// - failed when any box failed, the failure naming the box (`box agent-2: ...`);
/// - heard from as long as every box is: the site's last report, lease and phase times
///   are no later than the quietest box's last sign of life, and none while a box has
///   given none, so one silent box makes the site silent;
/// - its phase: a failed box's, else `committed` when all are, else the latest phase of a
///   box still to finish.
///
/// The row's own fields outside these (wave, assignment, attempts, ...) are left alone.
pub fn site_from_boxes(
    row: &mut RolloutSiteRecord,
    boxes: &[SiteBox],
    facts: &[(String, BoxFacts)],
) {
    let none = BoxFacts::default();
    let all: Vec<(&str, &BoxFacts)> = boxes
        .iter()
        .map(|b| {
            let f = facts
                .iter()
                .find(|(id, _)| *id == b.box_id)
                .map_or(&none, |(_, f)| f);
            (b.box_id.as_str(), f)
        })
        .collect();
    if all.is_empty() {
        return;
    }
    let failed = all
        .iter()
        .filter(|(_, f)| f.failed())
        .min_by_key(|(id, f)| (f.failed_at, *id));
    let all_committed = all.iter().all(|(_, f)| f.committed_at.is_some());
    row.committed_at = if all_committed {
        all.iter().filter_map(|(_, f)| f.committed_at).max()
    } else {
        None
    };
    row.first_unhealthy_after_commit_at = all
        .iter()
        .filter_map(|(_, f)| f.first_unhealthy_after_commit_at)
        .min();
    row.last_healthy_at = all
        .iter()
        .map(|(_, f)| f.last_healthy_at)
        .collect::<Option<Vec<_>>>()
        .and_then(|v| v.into_iter().min());
    row.rolled_back = all.iter().any(|(_, f)| f.rolled_back);
    match failed {
        Some((id, f)) => {
            row.failed_at = f.failed_at;
            row.failure = Some(format!(
                "box {id}: {}",
                f.failure.as_deref().unwrap_or("failed (no detail)")
            ));
        }
        None => match row.committed_at.zip(inconsistent(&all)) {
            // The install finished, yet the boxes run different versions: a failure.
            Some((at, words)) => {
                row.failed_at = Some(at);
                row.failure = Some(words);
            }
            None => {
                row.failed_at = None;
                row.failure = None;
            }
        },
    }
    // The phase shown: the failed box's, else committed, else the latest phase of a box
    // that has not committed.
    let shown = match failed {
        Some(&(id, f)) => Some((id, f)),
        None if all_committed => all.iter().max_by_key(|(_, f)| f.phase_at).copied(),
        None => all
            .iter()
            .filter(|(_, f)| f.committed_at.is_none() && f.phase.is_some())
            .max_by_key(|(_, f)| f.phase_at)
            .copied(),
    };
    // Silence: the quietest box's last sign of life bounds every time the gate counts
    // silence from; a box never heard from leaves them empty.
    let quiet = all
        .iter()
        .map(|(_, f)| f.last_sign())
        .collect::<Option<Vec<_>>>()
        .and_then(|v| v.into_iter().min());
    let cap = |t: Option<Timestamp>| match (t, quiet) {
        (Some(t), Some(q)) => Some(t.min(q)),
        _ => None,
    };
    row.phase = shown.and_then(|(_, f)| f.phase);
    row.phase_at = cap(shown.and_then(|(_, f)| f.phase_at));
    // Without a phase detail to show, the detail names the quietest box (a box never
    // heard from first): what a silent site's reason names.
    let quietest = all
        .iter()
        .find(|(_, f)| f.last_sign().is_none())
        .or_else(|| all.iter().min_by_key(|(_, f)| f.last_sign()));
    row.detail = shown
        .and_then(|(id, f)| f.detail.as_ref().map(|d| format!("box {id}: {d}")))
        .or_else(|| {
            quietest.map(|(id, f)| match f.last_sign() {
                None => format!("{QUIETEST} {id}: not heard from in this rollout"),
                Some(t) => format!("{QUIETEST} {id}: last heard at {t}"),
            })
        });
    row.last_report_at = quiet;
    row.leased_at = cap(all.iter().filter_map(|(_, f)| f.leased_at).max());
}

/// What an accepted enrollment changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollStep {
    /// A new site, with the enrolling box as its first box (the `sites` row).
    NewSite,
    /// A new box of an enrolled site (a `site_boxes` row).
    JoinSite,
    /// A new device key for the site's first box (what a re-imaged one-box site does).
    RekeyFirstBox,
    /// A new device key for a box that joined the site later.
    RekeyBox,
}

/// Decides what `e` does, given its (usable) token, the site it names as stored and the
/// site's boxes. Refuses a decommissioned site (Conflict), a token not bound to an
/// enrolled site (SiteExists: such a token only creates new sites) and a box the site has
/// already unless the token is a rekey of the site issued after that box enrolled
/// (BoxExists).
pub fn enroll_step(
    e: &Enrollment,
    token: &EnrollmentTokenRecord,
    site: Option<&SiteRecord>,
    boxes: &[SiteBox],
) -> Result<EnrollStep, StoreError> {
    let Some(site) = site else {
        return Ok(EnrollStep::NewSite);
    };
    if site.state == SiteState::Decommissioned {
        return Err(StoreError::Conflict(format!(
            "site {} is decommissioned; an operator must re-enable it first",
            e.site_id
        )));
    }
    if token.site_id.as_deref() != Some(e.site_id.as_str()) {
        return Err(StoreError::SiteExists(e.site_id.clone()));
    }
    match boxes.iter().find(|b| b.box_id == e.box_id) {
        None => Ok(EnrollStep::JoinSite),
        Some(b) if token.created_at < b.enrolled_at => Err(StoreError::BoxExists {
            site_id: e.site_id.clone(),
            box_id: e.box_id.clone(),
        }),
        Some(b) if b.first => Ok(EnrollStep::RekeyFirstBox),
        Some(_) => Ok(EnrollStep::RekeyBox),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use jiff::Timestamp;

    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn enrollment(box_id: &str) -> Enrollment {
        Enrollment {
            token_hash: "h".into(),
            site_id: "store-1".into(),
            box_id: box_id.into(),
            role: "agent".into(),
            device_key: "ab".repeat(32),
            agent_version: "1".into(),
            at: at(100),
        }
    }

    fn token(site: Option<&str>, created: i64) -> EnrollmentTokenRecord {
        EnrollmentTokenRecord {
            id: "et-1".into(),
            labels: BTreeMap::new(),
            site_id: site.map(str::to_string),
            expires_at: at(1000),
            uses_total: 3,
            uses_left: 3,
            revoked: false,
            created_at: at(created),
            created_by: "op".into(),
        }
    }

    fn site(state: SiteState) -> SiteRecord {
        SiteRecord {
            id: "store-1".into(),
            device_key: "cd".repeat(32),
            labels: BTreeMap::new(),
            state,
            agent_version: "1".into(),
            enrolled_at: at(10),
            last_seen: None,
            installed: BTreeMap::new(),
            healthy: None,
            health_at: None,
            deferred_until: None,
        }
    }

    fn a_box(id: &str, first: bool, enrolled: i64) -> SiteBox {
        SiteBox {
            site_id: "store-1".into(),
            box_id: id.into(),
            role: "server".into(),
            device_key: "cd".repeat(32),
            agent_version: "1".into(),
            enrolled_at: at(enrolled),
            first,
        }
    }

    #[test]
    fn a_new_site_takes_any_usable_token() {
        let step = enroll_step(&enrollment("main"), &token(None, 0), None, &[]).unwrap();
        assert_eq!(step, EnrollStep::NewSite);
    }

    #[test]
    fn a_new_box_joins_with_a_token_bound_to_the_site_even_one_older_than_the_site() {
        let boxes = [a_box("srv", true, 10)];
        let s = site(SiteState::Active);
        let step = enroll_step(
            &enrollment("agt-1"),
            &token(Some("store-1"), 0),
            Some(&s),
            &boxes,
        );
        assert_eq!(step.unwrap(), EnrollStep::JoinSite);
    }

    #[test]
    fn a_token_not_bound_to_the_site_neither_joins_nor_rekeys() {
        let boxes = [a_box("srv", true, 10)];
        let s = site(SiteState::Active);
        for b in ["srv", "agt-1"] {
            let err = enroll_step(&enrollment(b), &token(None, 50), Some(&s), &boxes).unwrap_err();
            assert!(
                matches!(err, StoreError::SiteExists(ref id) if id == "store-1"),
                "{err}"
            );
            let other = token(Some("store-2"), 50);
            let err = enroll_step(&enrollment(b), &other, Some(&s), &boxes).unwrap_err();
            assert!(matches!(err, StoreError::SiteExists(_)), "{err}");
        }
    }

    #[test]
    fn the_same_box_again_is_refused_unless_the_token_is_a_newer_rekey() {
        let boxes = [a_box("srv", true, 10), a_box("agt-1", false, 20)];
        let s = site(SiteState::Active);
        // Bound to the site, but older than the box: the token that enrolled it.
        let err = enroll_step(
            &enrollment("agt-1"),
            &token(Some("store-1"), 5),
            Some(&s),
            &boxes,
        )
        .unwrap_err();
        assert!(
            matches!(err, StoreError::BoxExists { ref site_id, ref box_id } if site_id == "store-1" && box_id == "agt-1"),
            "{err}"
        );
        let rekey = token(Some("store-1"), 30);
        assert_eq!(
            enroll_step(&enrollment("agt-1"), &rekey, Some(&s), &boxes).unwrap(),
            EnrollStep::RekeyBox
        );
        assert_eq!(
            enroll_step(&enrollment("srv"), &rekey, Some(&s), &boxes).unwrap(),
            EnrollStep::RekeyFirstBox
        );
    }

    #[test]
    fn a_decommissioned_site_takes_no_box() {
        let s = site(SiteState::Decommissioned);
        let err = enroll_step(
            &enrollment("main"),
            &token(Some("store-1"), 50),
            Some(&s),
            &[],
        )
        .unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict(ref m) if m.contains("decommissioned")),
            "{err}"
        );
    }

    fn box_facts(f: impl FnOnce(&mut BoxFacts)) -> BoxFacts {
        let mut b = BoxFacts::default();
        f(&mut b);
        b
    }

    fn three() -> Vec<SiteBox> {
        vec![
            a_box("srv", true, 0),
            a_box("agt-1", false, 0),
            a_box("agt-2", false, 0),
        ]
    }

    fn fold_event(
        row: &mut RolloutSiteRecord,
        facts: &mut Vec<(String, BoxFacts)>,
        b: &str,
        body: EventBody,
        t: i64,
    ) -> RowFold {
        fold_box_event(row, "rel-2", b, &three(), facts, &body, at(t)).unwrap()
    }

    fn phase(p: Phase, detail: Option<&str>) -> EventBody {
        EventBody::Phase {
            rollout_id: None,
            release_id: "rel-2".into(),
            phase: p,
            detail: detail.map(Into::into),
        }
    }

    #[test]
    fn a_box_rollback_after_its_commit_is_started_by_a_lease_and_done_by_a_commit_of_rel_1() {
        let mut row = RolloutSiteRecord {
            attempts: 1,
            ..RolloutSiteRecord::default()
        };
        let mut facts = Vec::new();
        let rel1 = |p: Phase| EventBody::Phase {
            rollout_id: None,
            release_id: "rel-1".into(),
            phase: p,
            detail: None,
        };
        // Phases of rel-1 before the box committed rel-2 are no rollback.
        fold_event(&mut row, &mut facts, "srv", rel1(Phase::Leased), 10);
        fold_event(&mut row, &mut facts, "srv", rel1(Phase::Committed), 20);
        let f = &facts[0].1;
        assert_eq!((f.rollback_started_at, f.rolled_back_at), (None, None));
        assert!(!f.upgraded());
        fold_event(
            &mut row,
            &mut facts,
            "srv",
            phase(Phase::Committed, None),
            100,
        );
        assert!(facts[0].1.upgraded() && !facts[0].1.rolled_back_since_commit());
        // The rollback assignment: leased, installing, committed of rel-1.
        fold_event(&mut row, &mut facts, "srv", rel1(Phase::Leased), 200);
        fold_event(&mut row, &mut facts, "srv", rel1(Phase::Installing), 210);
        let f = &facts[0].1;
        assert_eq!(f.rollback_started_at, Some(at(200)));
        assert!(!f.rolled_back_since_commit());
        fold_event(&mut row, &mut facts, "srv", rel1(Phase::Committed), 220);
        let f = &facts[0].1;
        assert_eq!(f.rolled_back_at, Some(at(220)));
        assert!(f.rolled_back_since_commit());
        // `rolled_back` after a commit counts as done as well.
        fold_event(
            &mut row,
            &mut facts,
            "agt-1",
            phase(Phase::Committed, None),
            300,
        );
        fold_event(
            &mut row,
            &mut facts,
            "agt-1",
            phase(Phase::RolledBack, None),
            310,
        );
        let f = &facts.iter().find(|(b, _)| b == "agt-1").unwrap().1;
        assert_eq!(f.rolled_back_at, Some(at(310)));
    }

    #[test]
    fn the_site_commits_once_every_box_did_and_keeps_its_lease_until_then() {
        let mut row = RolloutSiteRecord {
            attempts: 1,
            ..RolloutSiteRecord::default()
        };
        let mut facts = Vec::new();
        for (i, b) in ["srv", "agt-1"].iter().enumerate() {
            let t = 100 * (i as i64 + 1);
            fold_event(&mut row, &mut facts, b, phase(Phase::Installing, None), t);
            let out = fold_event(
                &mut row,
                &mut facts,
                b,
                phase(Phase::Committed, None),
                t + 10,
            );
            assert!(!out.release_lease, "box {b} done, the site is not");
            assert_eq!(row.committed_at, None);
        }
        let out = fold_event(
            &mut row,
            &mut facts,
            "agt-2",
            phase(Phase::Committed, None),
            310,
        );
        assert!(out.release_lease);
        assert_eq!(row.committed_at, Some(at(310)));
        assert_eq!(row.phase, Some(Phase::Committed));
        // The site is healthy since the earliest of its boxes' latest healthy reports.
        for (b, t) in [("srv", 320), ("agt-1", 330)] {
            fold_event(
                &mut row,
                &mut facts,
                b,
                EventBody::Health {
                    healthy: true,
                    summary: Default::default(),
                },
                t,
            );
        }
        assert_eq!(row.last_healthy_at, None, "agt-2 has not reported healthy");
        fold_event(
            &mut row,
            &mut facts,
            "agt-2",
            EventBody::Health {
                healthy: true,
                summary: Default::default(),
            },
            340,
        );
        assert_eq!(row.last_healthy_at, Some(at(320)));
        assert!(facts.iter().all(|(_, f)| f.done()));
    }

    #[test]
    fn one_failed_box_fails_the_site_naming_it() {
        let mut row = RolloutSiteRecord {
            attempts: 1,
            ..RolloutSiteRecord::default()
        };
        let mut facts = Vec::new();
        fold_event(
            &mut row,
            &mut facts,
            "srv",
            phase(Phase::Committed, None),
            100,
        );
        let out = fold_event(
            &mut row,
            &mut facts,
            "agt-1",
            phase(Phase::Failed, Some("health check failed: pos down")),
            200,
        );
        assert!(out.release_lease);
        assert_eq!(row.failed_at, Some(at(200)));
        assert_eq!(
            row.failure.as_deref(),
            Some("box agt-1: health check failed: pos down")
        );
        assert_eq!(row.phase, Some(Phase::Failed));
        assert_eq!(row.committed_at, None);
    }

    #[test]
    fn one_quiet_box_holds_back_every_time_the_site_is_heard_from() {
        let mut row = RolloutSiteRecord {
            attempts: 1,
            ..RolloutSiteRecord::default()
        };
        let mut facts = Vec::new();
        let health = || EventBody::Health {
            healthy: true,
            summary: Default::default(),
        };
        fold_event(
            &mut row,
            &mut facts,
            "srv",
            phase(Phase::Installing, None),
            500,
        );
        fold_event(&mut row, &mut facts, "agt-1", health(), 400);
        // agt-2 never reported: the site has no report time (silence counts from its
        // assignment or the wave's opening).
        assert_eq!(
            (row.last_report_at, row.phase_at, row.leased_at),
            (None, None, None)
        );
        assert_eq!(
            row.detail.as_deref(),
            Some("quietest box agt-2: not heard from in this rollout")
        );
        fold_event(&mut row, &mut facts, "agt-2", health(), 100);
        assert_eq!(row.last_report_at, Some(at(100)));
        assert_eq!(row.phase_at, Some(at(100)), "capped at the quietest box");
        assert_eq!(row.phase, Some(Phase::Installing));
        assert_eq!(
            row.detail.as_deref(),
            Some("quietest box agt-2: last heard at 2027-01-15T08:01:40Z")
        );
        assert!(quiet_box_words(row.detail.as_deref()).is_some());
    }

    #[test]
    fn a_lease_only_moves_forward_and_a_terminal_phase_ends_it() {
        let mut f = box_facts(|_| {});
        lease(&mut f, at(10), at(100));
        lease(&mut f, at(5), at(50));
        assert_eq!((f.leased_at, f.lease_until), (Some(at(10)), Some(at(100))));
        assert_eq!(f.first_leased_at, Some(at(5)));
        assert!(f.holds_lease(at(99)) && !f.holds_lease(at(100)));
        fold_box(&mut f, 1, "rel-2", &phase(Phase::Committed, None), at(20)).unwrap();
        assert_eq!(f.lease_until, None);
        assert!(!f.done(), "committed, not yet healthy");
    }

    #[test]
    fn boxes_on_different_versions_after_the_install_fail_the_site_naming_them() {
        let mut row = RolloutSiteRecord {
            attempts: 1,
            ..RolloutSiteRecord::default()
        };
        let mut facts = Vec::new();
        let installed = |stream: &str, v: &str| EventBody::Installed {
            name: stream.into(),
            release_id: Some(format!("rel-{v}")),
            version: Some(v.into()),
            previous_release_id: None,
        };
        for b in ["srv", "agt-1", "agt-2"] {
            fold_event(&mut row, &mut facts, b, phase(Phase::Committed, None), 100);
            fold_event(&mut row, &mut facts, b, installed("pos", "2"), 101);
            // Another stream with a version of its own per box is not compared to pos.
            fold_event(
                &mut row,
                &mut facts,
                b,
                installed(&format!("cfg-{b}"), "9"),
                101,
            );
        }
        assert_eq!(row.failed_at, None, "{:?}", row.failure);
        // agt-2 is put back on 1 by hand after the install finished.
        fold_event(&mut row, &mut facts, "agt-2", installed("pos", "1"), 200);
        assert_eq!(
            row.failed_at,
            Some(at(101)),
            "the latest commit (the installed report of the release)"
        );
        let f = row.failure.unwrap();
        assert!(
            f.starts_with("inconsistent versions of pos after the install:")
                && f.contains("box agt-2 runs 1")
                && f.contains("box srv runs 2"),
            "{f}"
        );
    }
}
