//! Channels and convergence: a fleet is not a rollout.
//!
//! A **channel** names a target (a release stream and a label selector) and the release
//! that target should run. A rollout that completes sets its channel's release (the plan's
//! `channel` key; by default the channel of the stream with the rollout's selector, created
//! when there is none and no other channel of the stream takes any of its sites); an
//! operator can set it too (audited; moving to a lower counter is an explicit rollback).
//!
//! A site that matches a channel and does not run its release **converges**: new sites,
//! re-keyed boxes (what a re-keyed box runs is unknown until it says), relabelled sites,
//! sites that were offline, deferred, skipped or outside their window for a whole rollout.
//! Convergence runs through an ordinary rollout that the coordinator makes per channel and
//! release (its plan has `converge = "<channel>"`, one wave, the channel's concurrency
//! limit, window and failure budget; see [`crate::controller::convergence`]), so every
//! convergence install has what a rollout's has: signed per-site assignments, leases,
//! windows, freezes, concurrency limits, health and reports, a timeline.
//!
//! Why a rollout and not a separate mechanism: the safety of an install lives in the
//! assignment, lease, gate and report paths; a second path would have to repeat each of
//! them and could drift. The cost is that convergence rollouts appear in the rollout list
//! (marked as the channel's).
//!
//! The convergence pass ([`Engine::converge`], every few seconds from the controller loop)
//! finds, per channel, the active sites off its release that no active rollout holds, are
//! not held and match no other channel of the stream; it adds them to the channel's
//! convergence rollout, or makes one. A rollout an operator creates takes precedence: the
//! convergence rollouts holding any of its sites end (their installs under way finish).

use std::collections::{BTreeMap, HashMap, HashSet};

use fleetwave_shared::protocol::operator::RolloutStatus as WireStatus;
use fleetwave_shared::window::Window;
use jiff::{SignedDuration, Timestamp};

use super::facts::Update;
use super::{Engine, EngineError, Head, Loaded};
use crate::plan::{ChannelKey, PlanFormat, Selector, check_selector, parse_plan};
use crate::store::{
    AuditRecord, ChannelRecord, OffVersionSite, ReleaseRecord, RolloutRecord, RolloutSiteRecord,
    StoreError,
};

/// Most sites of a channel installing at once, unless the channel says otherwise.
pub const DEFAULT_MAX_CONCURRENT: u32 = 10;
/// The largest `max_concurrent` a channel takes.
pub const MAX_MAX_CONCURRENT: u32 = 10_000;
/// Failures a channel's convergence tolerates before it pauses, unless it says otherwise:
/// the first failure pauses it and tells the operator.
pub const DEFAULT_FAILURE_BUDGET: u32 = 0;
/// Sites read per query while listing the sites off a channel's release.
const PAGE: usize = 5_000;
/// How often a convergence pass walks every site instead of reading the indexes only (it
/// also finds sites that report other streams but none of the channel's).
pub const FULL_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// Site names in one `site_joined` timeline entry (the rest are counted).
const NAMES_IN_NOTE: usize = 10;
/// A site not seen for this long is "offline" in the answer to "why is it off its
/// channel's release".
pub const OFFLINE_AFTER: SignedDuration = SignedDuration::from_mins(15);

/// Who asks for a change, for the audit log.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub remote: String,
}

impl Actor {
    fn audit(&self, at: Timestamp, action: &str, target: &str, detail: String) -> AuditRecord {
        AuditRecord {
            id: 0,
            at,
            actor: self.name.clone(),
            action: action.to_string(),
            target: target.to_string(),
            detail,
            remote: self.remote.clone(),
        }
    }

    /// The coordinator itself (a rollout completing moves its channel).
    pub fn coordinator() -> Actor {
        Actor {
            name: "coordinator".into(),
            remote: String::new(),
        }
    }
}

/// A channel to create.
#[derive(Debug, Clone, Default)]
pub struct NewChannel {
    pub name: String,
    pub stream: String,
    pub selector: Selector,
    pub release: Option<String>,
    pub max_concurrent: Option<u32>,
    pub failure_budget: Option<u32>,
    pub window: Option<Window>,
}

/// A change to a channel: its release and/or its limits.
#[derive(Debug, Clone, Default)]
pub struct ChannelChange {
    pub release: Option<String>,
    /// Required to move the release to a lower counter.
    pub rollback: bool,
    pub reason: Option<String>,
    pub max_concurrent: Option<u32>,
    pub failure_budget: Option<u32>,
    /// `Some(None)`: remove the window.
    pub window: Option<Option<Window>>,
}

/// Why a site of a channel is not on its release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffReason {
    /// Held by an operator (the hold's reason).
    Held(String),
    /// Also matches these other channels of the stream: it converges to neither.
    Ambiguous(Vec<String>),
    /// In this active rollout, which is not the channel's convergence: it decides.
    InRollout { rollout: String, status: WireStatus },
    /// The channel's convergence is paused (halted or paused rollout): why.
    Paused(String),
    /// Converging: its state in the convergence rollout, in words.
    Converging(String),
    /// Failed in the convergence rollout: the agent's words.
    Failed(String),
    /// The next convergence pass takes it.
    Waiting,
}

/// A site of a channel that is not on the channel's release, and why.
#[derive(Debug, Clone)]
pub struct OffSite {
    pub site_id: String,
    /// What it runs in the stream (None: it said nothing of it).
    pub version: Option<String>,
    pub reason: OffReason,
    pub last_seen: Option<Timestamp>,
    /// Not seen for [`OFFLINE_AFTER`].
    pub offline: bool,
    pub deferred_until: Option<Timestamp>,
}

/// A channel with what its sites run.
#[derive(Debug, Clone)]
pub struct ChannelStatus {
    pub channel: ChannelRecord,
    pub release: Option<ReleaseRecord>,
    /// Its active convergence rollout: id, status and status reason.
    pub convergence: Option<(String, WireStatus, Option<String>)>,
    /// Sites off the release (at most `limit` of them listed, in id order).
    pub off: Vec<OffSite>,
    /// Every site off the release, listed or not.
    pub off_total: usize,
    /// How many of them have each reason ([`OffReason::key`]).
    pub by_reason: BTreeMap<&'static str, u64>,
}

/// A channel on the overview.
#[derive(Debug, Clone)]
pub struct ChannelGlance {
    pub name: String,
    /// `id (version)`, None without a release.
    pub release: Option<String>,
    pub off: u64,
    pub paused: bool,
}

/// What one convergence pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConvergePass {
    /// Sites found off their channel's release and free to converge.
    pub found: usize,
    /// Of them, added to a convergence rollout in this pass.
    pub added: usize,
    /// Convergence rollouts made in this pass.
    pub created: usize,
    /// How long the pass held the engine lock (leases wait on it; polls never take it).
    pub locked: std::time::Duration,
    /// Whether it walked every site ([`FULL_SWEEP_EVERY`]) or read the indexes only.
    pub full: bool,
}

impl Engine {
    pub async fn channels(&self) -> Result<Vec<ChannelRecord>, EngineError> {
        Ok(self.db.run(|s| s.channels()).await?)
    }

    async fn channel(&self, name: &str) -> Result<ChannelRecord, EngineError> {
        self.channels()
            .await?
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| EngineError::ChannelNotFound(name.to_string()))
    }

    /// Creates a channel. Refuses a taken name, a bad field (named), a release that is not
    /// published or of another stream, and a selector that takes a site another channel
    /// of the stream already has (naming both channels and the site).
    pub async fn create_channel(
        &self,
        new: NewChannel,
        who: &Actor,
    ) -> Result<ChannelRecord, EngineError> {
        let invalid = |m: String| EngineError::InvalidChannel(m);
        crate::plan::validate_channel_name(&new.name).map_err(|m| invalid(format!("name: {m}")))?;
        if new.stream.trim().is_empty() {
            return Err(invalid(
                "stream: name the release stream (a release's name)".into(),
            ));
        }
        check_selector(&new.selector).map_err(|m| invalid(format!("selector: {m}")))?;
        if let Some(w) = &new.window {
            w.validate().map_err(|e| invalid(format!("window: {e}")))?;
        }
        let max_concurrent = limit_field(
            "max_concurrent",
            new.max_concurrent.unwrap_or(DEFAULT_MAX_CONCURRENT),
        )?;
        let failure_budget = new.failure_budget.unwrap_or(DEFAULT_FAILURE_BUDGET);
        let existing = self.channels().await?;
        if existing.iter().any(|c| c.name == new.name) {
            return Err(EngineError::ChannelConflict(format!(
                "channel {} already exists; change it with fleetwave channel set",
                new.name
            )));
        }
        self.check_overlap(&new.name, &new.stream, &new.selector, &existing)
            .await?;
        if let Some(r) = &new.release {
            self.channel_release(&new.stream, r).await?;
        }
        let now = self.clock.now();
        let record = ChannelRecord {
            name: new.name.clone(),
            stream: new.stream.clone(),
            selector: new.selector.clone(),
            release_id: new.release.clone(),
            max_concurrent,
            failure_budget,
            window: new.window.clone(),
            set_by: who.name.clone(),
            set_at: now,
            set_reason: format!("created by {}", who.name),
            created_at: now,
            created_by: who.name.clone(),
        };
        let audit = who.audit(
            now,
            "channel.create",
            &record.name,
            format!(
                "stream {}, selector {}, release {}, max_concurrent {max_concurrent}, \
                 failure_budget {failure_budget}",
                record.stream,
                record.selector,
                record.release_id.as_deref().unwrap_or("none")
            ),
        );
        let (r, a) = (record.clone(), audit);
        self.db.run(move |s| s.put_channel(&r, &a)).await?;
        self.converge_soon();
        Ok(record)
    }

    /// Changes a channel's release and/or limits. Moving the release to a lower counter
    /// needs `rollback`. The channel's convergence rollout of the old release ends.
    pub async fn change_channel(
        &self,
        name: &str,
        change: ChannelChange,
        who: &Actor,
    ) -> Result<ChannelRecord, EngineError> {
        let mut ch = self.channel(name).await?;
        let now = self.clock.now();
        let mut what = Vec::new();
        let mut action = "channel.set";
        if let Some(rid) = &change.release {
            let new = self.channel_release(&ch.stream, rid).await?;
            if let Some(old_id) = ch.release_id.clone().filter(|o| o != rid) {
                let old = self.db.run(move |s| s.release(&old_id)).await?;
                if let Some(old) = old
                    && new.counter < old.counter
                {
                    if !change.rollback {
                        return Err(EngineError::InvalidChannel(format!(
                            "release: {} (counter {}) is older than channel {name}'s release {} \
                             (counter {}); moving a channel backwards is a rollback: say so \
                             (fleetwave channel set --rollback, or \"rollback\": true)",
                            new.id, new.counter, old.id, old.counter
                        )));
                    }
                    action = "channel.rollback";
                }
            }
            what.push(format!(
                "release {} -> {}",
                ch.release_id.as_deref().unwrap_or("none"),
                new.id
            ));
            ch.release_id = Some(new.id.clone());
            ch.set_by = who.name.clone();
            ch.set_at = now;
            ch.set_reason = match change.reason.as_deref().map(str::trim) {
                Some(r) if !r.is_empty() => format!("set by {}: {r}", who.name),
                _ => format!("set by {}", who.name),
            };
        }
        if let Some(n) = change.max_concurrent {
            ch.max_concurrent = limit_field("max_concurrent", n)?;
            what.push(format!("max_concurrent {n}"));
        }
        if let Some(n) = change.failure_budget {
            ch.failure_budget = n;
            what.push(format!("failure_budget {n}"));
        }
        if let Some(window) = change.window {
            if let Some(w) = &window {
                w.validate()
                    .map_err(|e| EngineError::InvalidChannel(format!("window: {e}")))?;
            }
            what.push(match &window {
                Some(w) => format!("window {}-{}", w.start, w.end),
                None => "no window".to_string(),
            });
            ch.window = window;
        }
        if what.is_empty() {
            return Err(EngineError::InvalidChannel(
                "nothing to change: give a release, max_concurrent, failure_budget or window"
                    .into(),
            ));
        }
        let mut detail = what.join(", ");
        if let Some(r) = change.reason.as_deref().filter(|r| !r.trim().is_empty()) {
            detail.push_str(&format!("; reason: {}", r.trim()));
        }
        let _guard = self.lock.lock().await;
        let audit = who.audit(now, action, name, detail.clone());
        let (r, a) = (ch.clone(), audit);
        self.db.run(move |s| s.put_channel(&r, &a)).await?;
        // Its convergence rollout was made with the old release and limits: end it; the
        // next pass makes one with the new ones.
        self.end_convergence(
            name,
            &format!("channel {name} changed by {} ({detail})", who.name),
            now,
        )
        .await?;
        drop(_guard);
        self.converge_soon();
        Ok(ch)
    }

    /// Deletes a channel; its convergence rollout ends (installs under way finish).
    pub async fn delete_channel(&self, name: &str, who: &Actor) -> Result<(), EngineError> {
        self.channel(name).await?;
        let _guard = self.lock.lock().await;
        let now = self.clock.now();
        self.end_convergence(
            name,
            &format!("channel {name} deleted by {}", who.name),
            now,
        )
        .await?;
        let audit = who.audit(now, "channel.delete", name, String::new());
        let n = name.to_string();
        self.db.run(move |s| s.delete_channel(&n, &audit)).await?;
        Ok(())
    }

    /// Resumes a channel's paused convergence: a halted convergence rollout ends and the
    /// next pass makes a new one with every site still off the release (the failed ones
    /// try again); a paused one resumes.
    pub async fn resume_channel(&self, name: &str, who: &Actor) -> Result<String, EngineError> {
        self.channel(name).await?;
        let Some((id, status)) = self.convergence_of(name).await? else {
            return Err(EngineError::InvalidChannel(format!(
                "channel {name}'s convergence is not paused (it has no convergence rollout now)"
            )));
        };
        let now = self.clock.now();
        let what = match status {
            WireStatus::Halted => {
                let _guard = self.lock.lock().await;
                self.end_convergence(
                    name,
                    &format!(
                        "convergence resumed by {}: a new convergence rollout takes every site \
                         still off the channel's release, failed ones included",
                        who.name
                    ),
                    now,
                )
                .await?;
                format!("halted convergence rollout {id} ended; a new one starts")
            }
            WireStatus::Paused => {
                self.rollout_action(&id, super::Action::Resume, &who.name)
                    .await?;
                format!("convergence rollout {id} resumed")
            }
            _ => {
                return Err(EngineError::InvalidChannel(format!(
                    "channel {name}'s convergence is not paused: rollout {id} is {}",
                    status.as_str()
                )));
            }
        };
        let audit = who.audit(now, "channel.resume", name, what.clone());
        self.db.run(move |s| s.audit(&audit)).await?;
        self.converge_soon();
        Ok(what)
    }

    /// The release `id`, which a channel of `stream` may take.
    async fn channel_release(&self, stream: &str, id: &str) -> Result<ReleaseRecord, EngineError> {
        let rid = id.to_string();
        let release = self
            .db
            .run(move |s| s.release(&rid))
            .await?
            .ok_or_else(|| {
                EngineError::InvalidChannel(format!(
                    "release: release {id:?} is not published on this coordinator"
                ))
            })?;
        if release.name != stream {
            return Err(EngineError::InvalidChannel(format!(
                "release: release {id} is of stream {:?}, the channel's stream is {stream:?}",
                release.name
            )));
        }
        Ok(release)
    }

    /// Refuses a channel of `stream` with `selector` when an enrolled site matches it and
    /// another channel of the stream.
    async fn check_overlap(
        &self,
        name: &str,
        stream: &str,
        selector: &Selector,
        existing: &[ChannelRecord],
    ) -> Result<(), EngineError> {
        let others: Vec<&ChannelRecord> = existing
            .iter()
            .filter(|c| c.stream == stream && c.name != name)
            .collect();
        if others.is_empty() {
            return Ok(());
        }
        let sites = self.db.run(|s| s.site_labels(None)).await?;
        for site in sites.iter().filter(|s| selector.matches(&s.labels)) {
            if let Some(other) = others.iter().find(|c| c.selector.matches(&site.labels)) {
                return Err(EngineError::ChannelConflict(format!(
                    "channel {name} (stream {stream}, selector {selector}) would overlap channel \
                     {} (selector {}): site {} matches both. Channels of one stream must not \
                     share sites; narrow one selector (e.g. with {{ not = ... }})",
                    other.name, other.selector, site.id
                )));
            }
        }
        Ok(())
    }

    /// The active convergence rollout of channel `name`: its id and status.
    async fn convergence_of(
        &self,
        name: &str,
    ) -> Result<Option<(String, WireStatus)>, EngineError> {
        let rollouts = self.db.run(|s| s.list_rollouts()).await?;
        for r in rollouts.iter().filter(|r| r.status.is_active()) {
            if self.plan(r)?.converge.as_deref() == Some(name) {
                return Ok(Some((r.id.clone(), r.status)));
            }
        }
        Ok(None)
    }

    /// Ends channel `name`'s active convergence rollout, if any, with `why` (aborted: the
    /// sites that have not started get no assignment from it any more; installs under way
    /// finish and report). Call with the engine lock held.
    pub(super) async fn end_convergence(
        &self,
        name: &str,
        why: &str,
        now: Timestamp,
    ) -> Result<(), EngineError> {
        let Some((id, _)) = self.convergence_of(name).await? else {
            return Ok(());
        };
        self.end_rollout(&id, why, now).await
    }

    /// Aborts rollout `id` on the coordinator's own account (a superseded or outdated
    /// convergence rollout). Call with the engine lock held.
    pub(super) async fn end_rollout(
        &self,
        id: &str,
        why: &str,
        now: Timestamp,
    ) -> Result<(), EngineError> {
        let mut l = self.load_rollout(id).await?;
        if !l.record.status.is_active() {
            return Ok(());
        }
        self.withdraw_assignments(&l);
        l.record.status = WireStatus::Aborted;
        l.record.status_reason = Some(why.to_string());
        l.record.updated_at = now;
        self.save_rollout(
            &l.record,
            vec![("aborted".into(), None, why.to_string())],
            now,
        )
        .await
    }

    /// Ends the convergence rollouts that hold any of `sites` (a rollout an operator
    /// creates takes precedence). Returns a sentence for the new rollout's timeline. Call
    /// with the engine lock held.
    pub(super) async fn supersede_convergence(
        &self,
        sites: &HashSet<&str>,
        by: &str,
        now: Timestamp,
    ) -> Result<Option<String>, EngineError> {
        let rollouts = self.db.run(|s| s.list_rollouts()).await?;
        let mut ended = Vec::new();
        for r in rollouts.iter().filter(|r| r.status.is_active()) {
            let Some(channel) = self.plan(r)?.converge.clone() else {
                continue;
            };
            let overlaps = self
                .with_rollout(&r.id, |l| {
                    l.sites.iter().any(|s| sites.contains(s.site_id.as_str()))
                })
                .await?;
            if overlaps {
                self.end_rollout(
                    &r.id,
                    &format!(
                        "superseded by {by}, which takes some of its sites; channel {channel}'s \
                         convergence goes on with its other sites in a new convergence rollout"
                    ),
                    now,
                )
                .await?;
                ended.push(format!("{} (channel {channel})", r.id));
            }
        }
        Ok((!ended.is_empty()).then(|| {
            format!(
                "convergence rollout(s) holding some of its sites ended: {}",
                ended.join(", ")
            )
        }))
    }

    /// Sets the channel of a rollout that completed to its release and returns a sentence
    /// for its timeline. Call with the engine lock held.
    pub(super) async fn channel_after_completion(
        &self,
        l: &Loaded,
        now: Timestamp,
    ) -> Result<Option<String>, EngineError> {
        if l.plan.converge.is_some() {
            return Ok(None);
        }
        let stream = l.release.name.clone();
        let channels = self.channels().await?;
        let mut ch = match &l.plan.channel {
            Some(ChannelKey::Flag(_)) => return Ok(None),
            Some(ChannelKey::Named(n)) => match channels.iter().find(|c| c.name == *n) {
                Some(c) if c.stream == stream => c.clone(),
                Some(c) => {
                    return Ok(Some(format!(
                        "channel {n} not moved: it is of stream {}, the release of stream {stream}",
                        c.stream
                    )));
                }
                None => {
                    return Ok(Some(format!(
                        "channel {n} not moved: there is no such channel (create it with \
                         fleetwave channel create)"
                    )));
                }
            },
            None => match channels
                .iter()
                .find(|c| c.stream == stream && c.selector == l.plan.selector)
            {
                Some(c) => c.clone(),
                None => {
                    let name = default_channel_name(&stream, &l.plan.selector);
                    if channels.iter().any(|c| c.name == name) {
                        return Ok(Some(format!(
                            "no channel moved: the default name {name} is taken by a channel \
                             with another selector; name a channel in the plan's `channel` key"
                        )));
                    }
                    if let Err(e) = self
                        .check_overlap(&name, &stream, &l.plan.selector, &channels)
                        .await
                    {
                        return Ok(Some(format!(
                            "no channel moved: {e}; name a channel in the plan's `channel` key, \
                             or set channel = false"
                        )));
                    }
                    let last = l.plan.waves.last();
                    ChannelRecord {
                        name,
                        stream: stream.clone(),
                        selector: l.plan.selector.clone(),
                        release_id: None,
                        // Never a bigger blast radius than the rollout's last wave had.
                        max_concurrent: last
                            .and_then(|w| w.max_concurrent)
                            .map_or(DEFAULT_MAX_CONCURRENT, |n| n.min(DEFAULT_MAX_CONCURRENT))
                            .max(1),
                        failure_budget: DEFAULT_FAILURE_BUDGET,
                        window: l.plan.window.clone(),
                        set_by: String::new(),
                        set_at: now,
                        set_reason: String::new(),
                        created_at: now,
                        created_by: format!("rollout {}", l.record.id),
                    }
                }
            },
        };
        let old = ch.release_id.clone();
        if old.as_deref() == Some(l.release.id.as_str()) {
            return Ok(None);
        }
        ch.release_id = Some(l.release.id.clone());
        ch.set_by = format!("rollout {}", l.record.id);
        ch.set_at = now;
        ch.set_reason = format!("rollout {} completed", l.record.id);
        let audit = Actor::coordinator().audit(
            now,
            "channel.set",
            &ch.name,
            format!(
                "release {} -> {}: rollout {} completed",
                old.as_deref().unwrap_or("none"),
                l.release.id,
                l.record.id
            ),
        );
        let (r, a) = (ch.clone(), audit);
        self.db.run(move |s| s.put_channel(&r, &a)).await?;
        self.end_convergence(
            &ch.name,
            &format!(
                "channel {} moved to release {} (rollout {} completed)",
                ch.name, l.release.id, l.record.id
            ),
            now,
        )
        .await?;
        Ok(Some(format!(
            "channel {} now names release {} (was {}): its sites off it converge",
            ch.name,
            l.release.id,
            old.as_deref().unwrap_or("none")
        )))
    }

    /// After an operator rolled back rollout `l`: each channel that names its release
    /// because this rollout set it goes back to the release most of the rollout's sites
    /// ran before (none known: the channel names no release, so nothing converges), audited
    /// as `channel.rollback`. Returns a sentence for the rollback's reason. Call with the
    /// engine lock held.
    pub(super) async fn channel_after_rollback(
        &self,
        l: &Loaded,
        actor: &str,
        now: Timestamp,
    ) -> Result<Option<String>, EngineError> {
        let set_by = format!("rollout {}", l.record.id);
        let moved: Vec<ChannelRecord> = self
            .channels()
            .await?
            .into_iter()
            .filter(|c| {
                c.set_by == set_by && c.release_id.as_deref() == Some(l.release.id.as_str())
            })
            .collect();
        if moved.is_empty() {
            return Ok(None);
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &l.sites {
            if let Some(p) = &s.previous_release_id {
                *counts.entry(p.as_str()).or_default() += 1;
            }
        }
        let mut previous = counts
            .iter()
            .max_by_key(|(id, n)| (**n, std::cmp::Reverse(**id)))
            .map(|(id, _)| id.to_string());
        if let Some(p) = previous.clone()
            && self.db.run(move |s| s.release(&p)).await?.is_none()
        {
            previous = None; // not published here: no channel may name it
        }
        let mut said = Vec::new();
        for mut ch in moved {
            ch.release_id = previous.clone();
            ch.set_by = actor.to_string();
            ch.set_at = now;
            ch.set_reason = format!("rollout {} rolled back by {actor}", l.record.id);
            let detail = format!(
                "release {} -> {}: rollout {} rolled back",
                l.release.id,
                previous.as_deref().unwrap_or("none"),
                l.record.id
            );
            let audit = Actor {
                name: actor.to_string(),
                remote: String::new(),
            }
            .audit(now, "channel.rollback", &ch.name, detail);
            let (r, a) = (ch.clone(), audit);
            self.db.run(move |s| s.put_channel(&r, &a)).await?;
            self.end_convergence(
                &ch.name,
                &format!(
                    "channel {} moved back: rollout {} rolled back",
                    ch.name, l.record.id
                ),
                now,
            )
            .await?;
            said.push(match &previous {
                Some(p) => format!("channel {} moved back to {p}", ch.name),
                None => format!(
                    "channel {} names no release now (none known from before)",
                    ch.name
                ),
            });
        }
        Ok(Some(said.join("; ")))
    }

    /// One convergence pass over every channel: sites off their channel's release that are
    /// free (no active rollout, no hold, one channel) join the channel's convergence
    /// rollout, which is made when there is none. A channel whose convergence rollout is
    /// halted or paused is left alone (its convergence is paused).
    pub async fn converge(&self, full: bool) -> Result<ConvergePass, EngineError> {
        let channels = self.channels().await?;
        let mut pass = ConvergePass {
            full,
            ..ConvergePass::default()
        };
        // Channels of one stream on one release read the sites off it once.
        let mut off_by_version: HashMap<(String, String), Vec<OffVersionSite>> = HashMap::new();
        if !channels.iter().any(|c| c.release_id.is_some()) {
            return Ok(pass);
        }
        let _guard = self.lock.lock().await;
        let locked_at = std::time::Instant::now();
        let now = self.clock.now();
        let holds = self.db.run(|s| s.site_holds()).await?;
        let rollouts = self.db.run(|s| s.list_rollouts()).await?;
        // Rollouts whose assignments can still be leased.
        let leasable: HashSet<String> = rollouts
            .iter()
            .filter(|r| matches!(r.status, WireStatus::Running | WireStatus::Completed))
            .map(|r| r.id.clone())
            .collect();
        let mut convergence: HashMap<String, RolloutRecord> = HashMap::new();
        for r in rollouts.into_iter().filter(|r| r.status.is_active()) {
            if let Some(c) = self.plan(&r)?.converge.clone() {
                convergence.insert(c, r);
            }
        }
        for ch in &channels {
            let Some(release_id) = ch.release_id.clone() else {
                continue;
            };
            let mut current = convergence.remove(&ch.name);
            if let Some(r) = &current
                && r.release_id != release_id
            {
                self.end_rollout(
                    &r.id,
                    &format!("channel {} names release {release_id} now", ch.name),
                    now,
                )
                .await?;
                current = None;
            }
            if current
                .as_ref()
                .is_some_and(|r| !matches!(r.status, WireStatus::Running))
            {
                continue;
            }
            let rid = release_id.clone();
            let Some(release) = self.db.run(move |s| s.release(&rid)).await? else {
                continue;
            };
            let others: Vec<&ChannelRecord> = channels
                .iter()
                .filter(|c| c.stream == ch.stream && c.name != ch.name)
                .collect();
            let key = (ch.stream.clone(), release.version.clone());
            if !off_by_version.contains_key(&key) {
                let found = self.free_sites_off_version(&key.0, &key.1, full).await?;
                off_by_version.insert(key.clone(), found);
            }
            let free: Vec<&OffVersionSite> = off_by_version[&key]
                .iter()
                .filter(|s| {
                    ch.selector.matches(&s.labels)
                        && !holds.contains_key(&s.id)
                        && !others.iter().any(|o| o.selector.matches(&s.labels))
                        && !self.already_sent(&s.id, &release.id, &leasable)
                })
                .collect();
            if free.is_empty() {
                continue;
            }
            pass.found += free.len();
            let members: Vec<RolloutSiteRecord> = free
                .iter()
                .map(|s| RolloutSiteRecord {
                    site_id: s.id.clone(),
                    wave: 0,
                    deferred_until: s.deferred_until,
                    ..RolloutSiteRecord::default()
                })
                .collect();
            match current {
                Some(r) => {
                    pass.added += self.join_convergence(&r.id, members, now).await?;
                }
                None => {
                    pass.added += self.start_convergence(ch, &release, members, now).await?;
                    pass.created += 1;
                }
            }
        }
        pass.locked = locked_at.elapsed();
        Ok(pass)
    }

    /// The active sites in no active rollout that do not run `version` of `stream`:
    /// through the indexes only, or walking every site when `full`.
    async fn free_sites_off_version(
        &self,
        stream: &str,
        version: &str,
        full: bool,
    ) -> Result<Vec<OffVersionSite>, EngineError> {
        let (stream, version) = (stream.to_string(), version.to_string());
        if !full {
            return Ok(self
                .db
                .run(move |s| s.sites_off_version_indexed(&stream, &version, true))
                .await?);
        }
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let (st, v, a) = (stream.clone(), version.clone(), after);
            let page = self
                .db
                .run(move |s| s.sites_off_version(&st, &v, true, &a, PAGE))
                .await?;
            let more = page.len() == PAGE;
            after = page.last().map(|l| l.id.clone()).unwrap_or_default();
            out.extend(page);
            if !more {
                return Ok(out);
            }
        }
    }

    /// Whether the site already holds an assignment to `release_id` that it can act on: a
    /// rollback assignment, or one of a running or completed rollout (a re-imaged box picks
    /// up its completed rollout's assignment again). It is on its way there; a convergence
    /// assignment would only replace that one (and a rollback's with one the agent refuses
    /// as a downgrade).
    fn already_sent(&self, site_id: &str, release_id: &str, leasable: &HashSet<String>) -> bool {
        self.sites.get(site_id).is_some_and(|slot| {
            slot.view().assignment.is_some_and(|a| {
                a.record.release_id == release_id
                    && (a.record.rollback || leasable.contains(&a.record.rollout_id))
            })
        })
    }

    /// Adds `members` to the running convergence rollout `id` and assigns them.
    async fn join_convergence(
        &self,
        id: &str,
        mut members: Vec<RolloutSiteRecord>,
        now: Timestamp,
    ) -> Result<usize, EngineError> {
        for m in &mut members {
            m.rollout_id = id.to_string();
        }
        let (stream, release) = self
            .with_rollout(id, |l| (l.release.name.clone(), l.release.id.clone()))
            .await?;
        let previous = self.previous_releases(&stream, &release, &members).await?;
        for m in &mut members {
            m.previous_release_id = previous.get(&m.site_id).cloned();
        }
        let to_add = members.clone();
        let added = self.db.run(move |s| s.add_rollout_sites(&to_add)).await?;
        if added.is_empty() {
            return Ok(0);
        }
        let added_set: HashSet<&str> = added.iter().map(String::as_str).collect();
        self.facts.apply_all(
            id,
            members
                .into_iter()
                .filter(|m| added_set.contains(m.site_id.as_str()))
                .map(Update::Joined),
        );
        self.record_decisions(
            id,
            vec![("site_joined".into(), Some(0), joined_note(&added))],
            now,
        )
        .await?;
        let (head, record) = self
            .with_rollout(id, |l| (Head::of(l), l.record.clone()))
            .await?;
        self.assign_open_waves(&head, &record, now).await?;
        Ok(added.len())
    }

    /// Makes channel `ch`'s convergence rollout of `release` with `members`, running.
    async fn start_convergence(
        &self,
        ch: &ChannelRecord,
        release: &ReleaseRecord,
        mut members: Vec<RolloutSiteRecord>,
        now: Timestamp,
    ) -> Result<usize, EngineError> {
        let plan_source = serde_json::to_string_pretty(&serde_json::json!({
            "name": format!("converge {}", ch.name),
            "release": release.id,
            "selector": ch.selector,
            "window": ch.window,
            "channel": false,
            "converge": ch.name,
            "waves": [{
                "name": "converge",
                "max_concurrent": ch.max_concurrent,
                "gate": {
                    "failure_budget": ch.failure_budget,
                    "on_silent": "exclude",
                    "success_ratio": 0.0,
                    "min_sample": 1,
                },
            }],
        }))
        .expect("a plan serializes");
        // The plan must be one the controller can read back.
        parse_plan(&plan_source, PlanFormat::Json).map_err(|e| EngineError::StoredPlan {
            rollout: format!("convergence of channel {}", ch.name),
            error: e.to_string(),
        })?;
        let id = format!(
            "converge-{}-{}",
            ch.name.replace(['.', '_'], "-"),
            crate::ids::random_hex(4)
        );
        for m in &mut members {
            m.rollout_id = id.clone();
        }
        let previous = self
            .previous_releases(&release.name, &release.id, &members)
            .await?;
        for m in &mut members {
            m.previous_release_id = previous.get(&m.site_id).cloned();
        }
        let record = RolloutRecord {
            id: id.clone(),
            release_id: release.id.clone(),
            plan_source,
            plan_format: "json".into(),
            status: WireStatus::Running,
            waves: vec![Default::default()],
            created_at: now,
            created_by: format!("channel {}", ch.name),
            updated_at: now,
            status_reason: None,
        };
        let n = members.len();
        let names: Vec<String> = members.iter().map(|m| m.site_id.clone()).collect();
        let (r, m) = (record, members);
        match self.db.run(move |s| s.create_rollout(&r, &m)).await {
            Ok(()) => {}
            // A site joined another rollout meanwhile: the next pass tries again.
            Err(StoreError::Conflict(_)) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
        self.record_decisions(
            &id,
            vec![
                (
                    "created".into(),
                    None,
                    format!(
                        "convergence rollout of channel {} (stream {}, selector {}) to release \
                         {}, made by the coordinator for {n} site(s) off it",
                        ch.name, ch.stream, ch.selector, release.id
                    ),
                ),
                ("site_joined".into(), Some(0), joined_note(&names)),
            ],
            now,
        )
        .await?;
        self.tick_isolated(&id, now).await;
        Ok(n)
    }

    /// The release each of `members` ran in the rollout's stream before (for a rollback).
    async fn previous_releases(
        &self,
        stream: &str,
        release: &str,
        members: &[RolloutSiteRecord],
    ) -> Result<HashMap<String, String>, EngineError> {
        let ids: Vec<String> = members.iter().map(|m| m.site_id.clone()).collect();
        let sites = self
            .db
            .run(move |s| {
                ids.iter()
                    .filter_map(|id| s.site(id).transpose())
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(sites
            .into_iter()
            .filter_map(|s| {
                let prev = s
                    .installed
                    .get(stream)
                    .and_then(|i| i.release_id.clone())
                    .filter(|r| r != release)?;
                Some((s.id, prev))
            })
            .collect())
    }

    /// Every channel at a glance, through indexes only (the overview): its release's
    /// version, how many of its sites are off it (sites that report other streams but none
    /// of the channel's are left out of this count; the channel's page counts them), and
    /// whether its convergence is paused.
    pub async fn channels_at_a_glance(&self) -> Result<Vec<ChannelGlance>, EngineError> {
        let channels = self.channels().await?;
        let mut out = Vec::with_capacity(channels.len());
        let mut off_by_version: HashMap<(String, String), Vec<OffVersionSite>> = HashMap::new();
        for ch in &channels {
            let release = match ch.release_id.clone() {
                Some(id) => self.db.run(move |s| s.release(&id)).await?,
                None => None,
            };
            let paused = matches!(
                self.convergence_of(&ch.name).await?,
                Some((_, s)) if s != WireStatus::Running
            );
            let off = match &release {
                Some(r) => {
                    let key = (ch.stream.clone(), r.version.clone());
                    if !off_by_version.contains_key(&key) {
                        let (st, v) = key.clone();
                        let found = self
                            .db
                            .run(move |s| s.sites_off_version_indexed(&st, &v, false))
                            .await?;
                        off_by_version.insert(key.clone(), found);
                    }
                    off_by_version[&key]
                        .iter()
                        .filter(|s| ch.selector.matches(&s.labels))
                        .count() as u64
                }
                None => 0,
            };
            out.push(ChannelGlance {
                name: ch.name.clone(),
                release: release.map(|r| format!("{} ({})", r.id, r.version)),
                off,
                paused,
            });
        }
        Ok(out)
    }

    /// Channel `name` with what its sites run: the sites off its release (at most `limit`
    /// listed, after site id `after`), each with why.
    pub async fn channel_status(
        &self,
        name: &str,
        after: &str,
        limit: usize,
    ) -> Result<ChannelStatus, EngineError> {
        let channel = self.channel(name).await?;
        let channels = self.channels().await?;
        let now = self.clock.now();
        let release = match channel.release_id.clone() {
            Some(id) => self.db.run(move |s| s.release(&id)).await?,
            None => None,
        };
        let convergence = match self.convergence_of(name).await? {
            Some((id, status)) => {
                let reason = self
                    .with_rollout(&id, |l| l.record.status_reason.clone())
                    .await?;
                Some((id, status, reason))
            }
            None => None,
        };
        let mut status = ChannelStatus {
            channel,
            release,
            convergence,
            off: Vec::new(),
            off_total: 0,
            by_reason: BTreeMap::new(),
        };
        let Some(release) = status.release.clone() else {
            return Ok(status);
        };
        let holds = self.db.run(|s| s.site_holds()).await?;
        let others: Vec<&ChannelRecord> = channels
            .iter()
            .filter(|c| c.stream == status.channel.stream && c.name != name)
            .collect();
        let statuses: HashMap<String, WireStatus> = self
            .db
            .run(|s| s.list_rollouts())
            .await?
            .into_iter()
            .filter(|r| r.status.is_active())
            .map(|r| (r.id, r.status))
            .collect();
        // Each convergence member's state, in one look at the rollout's facts.
        let states: HashMap<String, (crate::controller::SiteState, String)> =
            match &status.convergence {
                Some((id, _, _)) => {
                    self.with_rollout(id, |l| {
                        let view = l.view();
                        let (Some(wave), Some(plan_wave)) = (view.waves.first(), view.plan.wave(0))
                        else {
                            return HashMap::new();
                        };
                        let Some(opened) = wave.opened_at else {
                            return HashMap::new();
                        };
                        wave.sites
                            .iter()
                            .map(|f| {
                                let st =
                                    crate::controller::site_status(&plan_wave.gate, opened, f, now);
                                (f.site_id.clone(), (st.state, st.detail))
                            })
                            .collect()
                    })
                    .await?
                }
                None => HashMap::new(),
            };
        let look = Lookups {
            holds: &holds,
            others: &others,
            convergence: &status.convergence,
            statuses: &statuses,
            states: &states,
        };
        let mut cursor = String::new();
        let mut by_reason: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut listed = Vec::new();
        loop {
            let (stream, version, a) = (
                status.channel.stream.clone(),
                release.version.clone(),
                cursor,
            );
            let page = self
                .db
                .run(move |s| s.sites_off_version(&stream, &version, false, &a, PAGE))
                .await?;
            let Some(last) = page.last() else { break };
            cursor = last.id.clone();
            let full = page.len() == PAGE;
            for site in page
                .into_iter()
                .filter(|s| status.channel.selector.matches(&s.labels))
            {
                status.off_total += 1;
                let reason = look.reason(&site);
                *by_reason.entry(reason.key()).or_default() += 1;
                if site.id.as_str() <= after || listed.len() >= limit {
                    continue;
                }
                listed.push(OffSite {
                    offline: site
                        .last_seen
                        .is_none_or(|t| now.duration_since(t) > OFFLINE_AFTER),
                    site_id: site.id,
                    version: site.version,
                    reason,
                    last_seen: site.last_seen,
                    deferred_until: site.deferred_until.filter(|t| *t > now),
                });
            }
            if !full {
                break;
            }
        }
        status.off = listed;
        status.by_reason = by_reason;
        Ok(status)
    }
}

/// What [`Engine::channel_status`] reads once to say why each site is off.
struct Lookups<'a> {
    holds: &'a BTreeMap<String, crate::store::SiteHold>,
    others: &'a [&'a ChannelRecord],
    convergence: &'a Option<(String, WireStatus, Option<String>)>,
    statuses: &'a HashMap<String, WireStatus>,
    states: &'a HashMap<String, (crate::controller::SiteState, String)>,
}

impl Lookups<'_> {
    fn reason(&self, site: &OffVersionSite) -> OffReason {
        if let Some(h) = self.holds.get(&site.id) {
            return OffReason::Held(format!("{} (by {})", h.reason, h.held_by));
        }
        let also: Vec<String> = self
            .others
            .iter()
            .filter(|c| c.selector.matches(&site.labels))
            .map(|c| c.name.clone())
            .collect();
        if !also.is_empty() {
            return OffReason::Ambiguous(also);
        }
        let paused = |s: &WireStatus, reason: &Option<String>| {
            OffReason::Paused(reason.clone().unwrap_or_else(|| s.as_str().to_string()))
        };
        let Some(rollout) = site.rollout_id.clone() else {
            return match self.convergence {
                Some((_, s, reason)) if *s != WireStatus::Running => paused(s, reason),
                _ => OffReason::Waiting,
            };
        };
        match self.convergence {
            Some((id, s, reason)) if *id == rollout => match self.states.get(&site.id) {
                Some((crate::controller::SiteState::Failed, detail)) => {
                    OffReason::Failed(detail.clone())
                }
                _ if *s != WireStatus::Running => paused(s, reason),
                Some((_, detail)) => OffReason::Converging(detail.clone()),
                None => OffReason::Converging("waiting for its assignment".into()),
            },
            _ => OffReason::InRollout {
                status: self
                    .statuses
                    .get(&rollout)
                    .copied()
                    .unwrap_or(WireStatus::Pending),
                rollout,
            },
        }
    }
}

impl OffReason {
    /// A short key (`held`, `ambiguous`, `in_rollout`, `paused`, `converging`, `failed`,
    /// `waiting`).
    pub fn key(&self) -> &'static str {
        match self {
            OffReason::Held(_) => "held",
            OffReason::Ambiguous(_) => "ambiguous",
            OffReason::InRollout { .. } => "in_rollout",
            OffReason::Paused(_) => "paused",
            OffReason::Converging(_) => "converging",
            OffReason::Failed(_) => "failed",
            OffReason::Waiting => "waiting",
        }
    }

    /// In words, for the CLI and the dashboard.
    pub fn describe(&self) -> String {
        match self {
            OffReason::Held(why) => format!("held: {why}"),
            OffReason::Ambiguous(also) => format!(
                "also matches channel(s) {} of the stream: converges to none",
                also.join(", ")
            ),
            OffReason::InRollout { rollout, status } => {
                format!("in rollout {rollout} ({}), which decides", status.as_str())
            }
            OffReason::Paused(why) => format!("convergence paused: {why}"),
            OffReason::Converging(detail) => format!("converging: {detail}"),
            OffReason::Failed(detail) => format!("failed: {detail}"),
            OffReason::Waiting => "waiting for the next convergence pass".to_string(),
        }
    }
}

fn limit_field(field: &str, n: u32) -> Result<u32, EngineError> {
    if n == 0 || n > MAX_MAX_CONCURRENT {
        return Err(EngineError::InvalidChannel(format!(
            "{field}: must be between 1 and {MAX_MAX_CONCURRENT} (got {n})"
        )));
    }
    Ok(n)
}

/// The name of the channel a rollout creates by default: the stream, then each selector
/// entry (`pos`, `pos-region-emea`), cut to a channel name's rules.
pub fn default_channel_name(stream: &str, selector: &Selector) -> String {
    let mut name = stream.to_string();
    for (k, m) in &selector.0 {
        name.push('-');
        name.push_str(k);
        match m {
            crate::plan::LabelMatch::Is(v) => name.push_str(&format!("-{v}")),
            crate::plan::LabelMatch::AnyOf(vs) => name.push_str(&format!("-{}", vs.join("-"))),
            crate::plan::LabelMatch::Not(vs) => name.push_str(&format!("-not-{}", vs.join("-"))),
        }
    }
    let mut out: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    let mut out = out.trim_matches('-').to_string();
    out.truncate(64);
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        "channel".to_string()
    } else {
        out
    }
}

fn joined_note(sites: &[String]) -> String {
    let mut names: Vec<&str> = sites
        .iter()
        .map(String::as_str)
        .take(NAMES_IN_NOTE)
        .collect();
    names.sort();
    let more = sites.len().saturating_sub(NAMES_IN_NOTE);
    format!(
        "{} site(s) off the channel's release joined: {}{}",
        sites.len(),
        names.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}
