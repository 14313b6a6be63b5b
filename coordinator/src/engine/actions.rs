//! Rollouts created from plans, operators' actions on them, and sites joining the
//! active rollouts that select them.

use fleetwave_shared::protocol::operator::{
    self as op, RolloutStatus as WireStatus, SiteState as WireSiteState,
};

use super::facts::Update;
use super::{Engine, EngineError, Head, plan_format};
use crate::controller;
use crate::ids::random_hex;
use crate::plan::parse_new_plan;
use crate::store::{ReleaseRecord, RolloutRecord, RolloutSiteRecord, StoreError};

impl Engine {
    /// Creates a rollout from a plan: validates it, computes every site's wave and refuses
    /// sites that already belong to an active rollout.
    pub async fn create_rollout(
        &self,
        plan_text: String,
        format: op::PlanFormat,
        actor: &str,
    ) -> Result<RolloutRecord, EngineError> {
        let plan = parse_new_plan(&plan_text, plan_format(format), self.clock.now())
            .map_err(|e| EngineError::InvalidPlan(e.to_string()))?;
        let release_id = plan.release.clone();
        let release = self
            .db
            .run(move |s| s.release(&release_id))
            .await?
            .ok_or_else(|| {
                EngineError::InvalidPlan(format!(
                    "release: release {:?} is not published on this coordinator",
                    plan.release
                ))
            })?;
        let id = rollout_id(&plan.name);
        let stream = release.name.clone();
        let sites = self.db.run(move |s| s.site_labels(Some(&stream))).await?;
        // Held sites stay at what they run: no new rollout places them.
        let holds = self.db.run(|s| s.site_holds()).await?;
        let sites: Vec<_> = sites
            .into_iter()
            .filter(|s| s.state == WireSiteState::Active && !holds.contains_key(&s.id))
            .collect();
        let candidates: Vec<controller::Candidate> = sites
            .iter()
            .map(|site| controller::Candidate {
                site_id: &site.id,
                labels: &site.labels,
            })
            .collect();
        let members: Vec<RolloutSiteRecord> = sites
            .iter()
            .zip(controller::place(&plan, &id, 0, &candidates))
            .filter_map(|(site, wave)| {
                Some(RolloutSiteRecord {
                    rollout_id: id.clone(),
                    site_id: site.id.clone(),
                    wave: wave?,
                    previous_release_id: previous_release(site.installed.as_ref(), &release),
                    ..RolloutSiteRecord::default()
                })
            })
            .collect();
        self.check_box_order(&plan, members.iter().map(|m| m.site_id.as_str()))
            .await?;
        let now = self.clock.now();
        let record = RolloutRecord {
            id: id.clone(),
            release_id: release.id.clone(),
            plan_source: plan_text,
            plan_format: match format {
                op::PlanFormat::Json => "json".into(),
                op::PlanFormat::Toml => "toml".into(),
            },
            status: WireStatus::Pending,
            waves: vec![Default::default(); plan.waves.len()],
            created_at: now,
            created_by: actor.to_string(),
            updated_at: now,
            status_reason: None,
        };
        let _guard = self.lock.lock().await;
        // A rollout an operator creates takes precedence over channels' convergence.
        let superseded = {
            let ids: std::collections::HashSet<&str> =
                members.iter().map(|m| m.site_id.as_str()).collect();
            self.supersede_convergence(&ids, &format!("rollout {id}"), now)
                .await?
        };
        let (r, m) = (record.clone(), members);
        let n = m.len();
        self.db
            .run(move |s| s.create_rollout(&r, &m))
            .await
            .map_err(|e| match e {
                StoreError::Conflict(msg) => EngineError::RolloutConflict(msg),
                other => other.into(),
            })?;
        self.record_decisions(
            &id,
            vec![(
                "created".into(),
                None,
                format!(
                    "rollout created by {actor} for release {} with {n} site(s) in {} wave(s){}",
                    release.id,
                    plan.waves.len(),
                    superseded.map(|s| format!("; {s}")).unwrap_or_default()
                ),
            )],
            now,
        )
        .await?;
        Ok(record)
    }

    /// Decommissions (`active = false`) or re-enables a site: its stored state, its
    /// sessions (refused from now on: 403 `site_decommissioned`, dropped on use) and, when
    /// re-enabled, the active rollouts it matches. The caller writes the audit entry.
    pub async fn set_site_active(&self, site_id: &str, active: bool) -> Result<(), EngineError> {
        let sid = site_id.to_string();
        if self.db.run(move |s| s.site(&sid)).await?.is_none() {
            return Err(EngineError::SiteNotFound(site_id.to_string()));
        }
        let state = if active {
            WireSiteState::Active
        } else {
            WireSiteState::Decommissioned
        };
        let sid = site_id.to_string();
        self.db.run(move |s| s.set_site_state(&sid, state)).await?;
        self.sites.set_active(site_id, active);
        if active {
            self.join_rollouts(site_id).await?;
        }
        Ok(())
    }

    /// Adds a site that enrolled, was relabelled or re-enabled to every active rollout
    /// that selects it, in the first wave that still takes it
    /// ([`controller::wave_for_joiner`]: an opened share wave does not); assigns it at
    /// once if that wave is open. A wave that has not opened places it again with the
    /// others when it opens.
    pub async fn join_rollouts(&self, site_id: &str) -> Result<(), EngineError> {
        let sid = site_id.to_string();
        let Some(site) = self.db.run(move |s| s.site(&sid)).await? else {
            return Ok(());
        };
        if site.state != WireSiteState::Active || self.is_held(site_id).await? {
            return Ok(());
        }
        // It may be off its channel's release now.
        self.converge_soon();
        let _guard = self.lock.lock().await;
        let rollouts = self.db.run(|s| s.list_rollouts()).await?;
        for r in rollouts.into_iter().filter(|r| r.status.is_active()) {
            let (member_already, head, opened) = self
                .with_rollout(&r.id, |l| {
                    (l.site(&site.id).is_some(), Head::of(l), l.current_wave())
                })
                .await?;
            // Channels' convergence takes sites in its own pass (which checks what they
            // run, holds and other channels).
            if member_already || head.plan.converge.is_some() {
                continue;
            }
            let Some(wave) = controller::wave_for_joiner(&head.plan, &site.labels, opened) else {
                continue;
            };
            let member = RolloutSiteRecord {
                rollout_id: r.id.clone(),
                site_id: site.id.clone(),
                wave,
                previous_release_id: previous_release(
                    site.installed.get(&head.release.name),
                    &head.release,
                ),
                deferred_until: site.deferred_until,
                ..RolloutSiteRecord::default()
            };
            let m = member.clone();
            let added = self.db.run(move |s| s.add_rollout_sites(&[m])).await?;
            if added.is_empty() {
                continue;
            }
            self.facts.apply(&r.id, Update::Joined(member));
            let now = self.clock.now();
            self.record_decisions(
                &r.id,
                vec![(
                    "site_joined".into(),
                    Some(wave),
                    format!("site {} joined wave {wave}", site.id),
                )],
                now,
            )
            .await?;
            if matches!(r.status, WireStatus::Running | WireStatus::Paused) {
                let record = self.with_rollout(&r.id, |l| l.record.clone()).await?;
                self.assign_open_waves(&head, &record, now).await?;
            }
            break;
        }
        Ok(())
    }

    /// Refuses a plan whose `box_order` has a selector that matches no box of a member
    /// site of several boxes, naming the site and the selector
    /// ([`controller::boxes::unmatched_selector`]).
    async fn check_box_order<'a>(
        &self,
        plan: &crate::plan::RolloutPlan,
        members: impl Iterator<Item = &'a str>,
    ) -> Result<(), EngineError> {
        if plan.box_order.is_empty() {
            return Ok(());
        }
        let boxes = self.db.run(|s| s.boxes_of_multi_box_sites()).await?;
        let mut by_site: std::collections::BTreeMap<&str, Vec<crate::store::SiteBox>> =
            std::collections::BTreeMap::new();
        for b in &boxes {
            by_site
                .entry(b.site_id.as_str())
                .or_default()
                .push(b.clone());
        }
        for site in members {
            if let Some(boxes) = by_site.get(site)
                && let Some(problem) = controller::boxes::unmatched_selector(plan, site, boxes)
            {
                return Err(EngineError::InvalidPlan(problem));
            }
        }
        Ok(())
    }

    /// Applies an operator action to a rollout. Returns the rollout after the action.
    pub async fn rollout_action(
        &self,
        id: &str,
        action: Action,
        actor: &str,
    ) -> Result<(), EngineError> {
        let _guard = self.lock.lock().await;
        let now = self.clock.now();
        // The record and plan only: a copy of every member (a million at scale) is taken
        // by the rare actions that need one (rollback, retry).
        let (mut record, plan) = self
            .with_rollout(id, |l| (l.record.clone(), l.plan.clone()))
            .await?;
        let status = record.status;
        status
            .allows(action.kind())
            .map_err(|refused| EngineError::Refused {
                rollout: id.to_string(),
                refused,
            })?;
        if let Some(channel) = &plan.converge
            && matches!(action, Action::Abort(_) | Action::Rollback(_))
        {
            return Err(EngineError::InvalidChannel(format!(
                "rollout {id} is channel {channel}'s convergence: pause it to stop the \
                 channel's convergence, move the channel back (fleetwave channel set {channel} \
                 --release ... --rollback) or delete the channel"
            )));
        }
        let note: Option<(String, Option<u32>, String)>;
        match &action {
            Action::Start => {
                // Boxes may have joined (or left) member sites since the plan was checked.
                let members: Vec<String> = self
                    .with_rollout(id, |l| l.sites.iter().map(|m| m.site_id.clone()).collect())
                    .await?;
                self.check_box_order(&plan, members.iter().map(String::as_str))
                    .await?;
                let start_at = plan.start_at.as_ref();
                let (status, why) = match (status, start_at) {
                    (WireStatus::Pending, Some(s)) if s.at > now => (
                        WireStatus::Scheduled,
                        format!(
                            "started by {actor}: scheduled; the wave controller starts it at its \
                             start_at {} ({})",
                            s.at,
                            s.local()
                        ),
                    ),
                    (WireStatus::Scheduled, Some(s)) => (
                        WireStatus::Running,
                        format!("started early by {actor}, ahead of its start_at {}", s.at),
                    ),
                    _ => (WireStatus::Running, format!("started by {actor}")),
                };
                record.status_reason = match (status, start_at) {
                    (WireStatus::Scheduled, Some(s)) => {
                        Some(format!("starts at {} ({})", s.at, s.local()))
                    }
                    _ => None,
                };
                record.status = status;
                note = Some(("started".into(), None, why));
            }
            Action::Pause(reason) => {
                record.status = WireStatus::Paused;
                record.status_reason = Some(format!("paused by {actor}{}", reason_tail(reason)));
                note = Some((
                    "paused".into(),
                    None,
                    record.status_reason.clone().unwrap_or_default(),
                ));
            }
            Action::Resume => {
                record.status = WireStatus::Running;
                record.status_reason = None;
                note = Some(("resumed".into(), None, format!("resumed by {actor}")));
            }
            Action::Approve(wave) => {
                let waves = plan.waves.len();
                let w = record
                    .waves
                    .get_mut(*wave as usize)
                    .ok_or(EngineError::NoSuchWave { wave: *wave, waves })?;
                if w.opened_at.is_none() {
                    return Err(EngineError::WaveNotOpen(*wave));
                }
                w.approved_at = Some(now);
                w.approved_by = Some(actor.to_string());
                note = Some((
                    "approved".into(),
                    Some(*wave),
                    format!("wave {wave} approved by {actor}"),
                ));
            }
            Action::Abort(reason) => {
                record.status = WireStatus::Aborted;
                record.status_reason = Some(format!("aborted by {actor}{}", reason_tail(reason)));
                note = Some((
                    "aborted".into(),
                    None,
                    record.status_reason.clone().unwrap_or_default(),
                ));
                self.with_rollout(id, |l| self.withdraw_assignments(l))
                    .await?;
            }
            Action::Rollback(reason) => {
                let l = self.load_rollout(id).await?;
                let sites = controller::sites_to_roll_back(&l.view());
                let (issued, missing) = self.roll_back(&Head::of(&l), &sites, now).await?;
                record.status = WireStatus::RolledBack;
                let mut why = format!(
                    "rolled back by {actor}{}: {issued} site(s) sent back to their previous release",
                    reason_tail(reason)
                );
                if !missing.is_empty() {
                    why.push_str(&format!(
                        "; no previous release known for: {}",
                        missing.join(", ")
                    ));
                }
                // A channel this rollout moved goes back with it: otherwise its
                // convergence would install the release again on the sites just sent back.
                if let Some(moved) = self.channel_after_rollback(&l, actor, now).await? {
                    why.push_str(&format!("; {moved}"));
                }
                record.status_reason = Some(why.clone());
                note = Some(("rollback".into(), None, why));
            }
            Action::Retry(target) => {
                let l = self.load_rollout(id).await?;
                note = Some(self.retry(&l, target, actor, now).await?);
            }
            Action::Skip(site_id) => {
                let (rid, sid) = (id.to_string(), site_id.clone());
                self.db
                    .run(move |s| s.set_rollout_site_skipped(&rid, &sid))
                    .await?;
                self.facts.apply(
                    id,
                    Update::Skipped {
                        site_id: site_id.clone(),
                    },
                );
                note = Some((
                    "skipped".into(),
                    None,
                    format!("site {site_id} skipped by {actor}"),
                ));
            }
        }
        record.updated_at = now;
        self.save_rollout(&record, note.into_iter().collect(), now)
            .await?;
        if matches!(record.status, WireStatus::Running | WireStatus::Paused) {
            self.tick_isolated(id, now).await;
        }
        Ok(())
    }
}

impl Engine {
    /// Takes the rollout's (non-rollback) assignments out of the poll cache: sites that
    /// have not started get nothing from it any more.
    pub(super) fn withdraw_assignments(&self, l: &super::Loaded) {
        let id = &l.record.id;
        for s in &l.sites {
            if let Some(slot) = self.sites.get(&s.site_id)
                && slot
                    .view()
                    .assignment
                    .is_some_and(|a| a.record.rollout_id == *id && !a.record.rollback)
            {
                self.sites.clear_assignment(&s.site_id);
            }
        }
    }
}

/// An operator action on a rollout.
#[derive(Debug, Clone)]
pub enum Action {
    Start,
    Pause(Option<String>),
    Resume,
    Approve(u32),
    Abort(Option<String>),
    Rollback(Option<String>),
    Skip(String),
    Retry(RetryTarget),
}

/// Which failed sites a retry installs on again.
#[derive(Debug, Clone)]
pub enum RetryTarget {
    Site(String),
    /// Every failed site of the wave.
    FailedOfWave(u32),
}

impl Action {
    /// The action without its arguments, as [`RolloutStatus::allows`] judges it.
    pub fn kind(&self) -> op::ActionKind {
        match self {
            Action::Start => op::ActionKind::Start,
            Action::Pause(_) => op::ActionKind::Pause,
            Action::Resume => op::ActionKind::Resume,
            Action::Approve(_) => op::ActionKind::Approve,
            Action::Abort(_) => op::ActionKind::Abort,
            Action::Rollback(_) => op::ActionKind::Rollback,
            Action::Skip(_) => op::ActionKind::Skip,
            Action::Retry(_) => op::ActionKind::Retry,
        }
    }
}

fn reason_tail(reason: &Option<String>) -> String {
    reason
        .as_deref()
        .filter(|r| !r.is_empty())
        .map(|r| format!(": {r}"))
        .unwrap_or_default()
}

/// The release a site ran in the rollout's stream before it (`installed`: what the site
/// said it runs of that stream), unless it is `release` itself.
fn previous_release(
    installed: Option<&crate::store::InstalledRelease>,
    release: &ReleaseRecord,
) -> Option<String> {
    installed
        .and_then(|i| i.release_id.clone())
        .filter(|id| *id != release.id)
}

/// A rollout id from the plan's name: a slug plus a random suffix (unique).
fn rollout_id(name: &str) -> String {
    let mut slug: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    slug.truncate(40);
    let slug = slug.trim_matches('-');
    let slug = if slug.is_empty() { "rollout" } else { slug };
    format!("{slug}-{}", random_hex(4))
}
