//! Leases: the controller decides ([`crate::controller::lease_decision`]) from the
//! rollout's facts in memory (and, for a wave with a limit, the active leases in SQLite);
//! granted leases are written through the lease group commit.

use std::sync::Arc;

use fleetwave_shared::protocol::{LeaseGrant, LeaseRequest};
use jiff::{SignedDuration, Timestamp};

use super::facts::Update;
use super::{Engine, EngineError, Loaded, current_wave};
use crate::controller::{self, RolloutStatus};
use crate::ids::random_hex;
use crate::plan::RolloutPlan;
use crate::store::LeaseRecord;

/// At most this many lease grants go into one transaction.
pub const LEASE_GROUP: crate::group_commit::GroupLimits = crate::group_commit::GroupLimits {
    max_items: 512,
    max_weight: 512,
};

impl crate::group_commit::Weigh for LeaseRecord {}

/// Why a box of a site did not get its lease.
enum BoxLease {
    Denied(controller::LeaseDenial),
    Failed(EngineError),
}

/// A lease decision's inputs other than the active leases, owned, so that the granting
/// transaction can decide again on the leases it counts ([`Engine::grant_counted`]).
struct Recheck {
    plan: Arc<RolloutPlan>,
    status: RolloutStatus,
    current_wave: Option<u32>,
    site_wave: Option<u32>,
    labels: std::collections::BTreeMap<String, String>,
    assignment_sequence: Option<u64>,
    requested_sequence: u64,
    deferred_until: Option<Timestamp>,
    freezes: Arc<Vec<fleetwave_shared::window::Freeze>>,
    holds_lease: bool,
}

impl Recheck {
    fn context(&self, counts: &crate::store::LeaseCounts) -> controller::LeaseContext<'_> {
        let (compartment_sites, compartment_active_leases) = counts.compartment.unwrap_or((0, 0));
        controller::LeaseContext {
            plan: &self.plan,
            status: self.status,
            current_wave: self.current_wave,
            site_wave: self.site_wave,
            site_labels: &self.labels,
            assignment_sequence: self.assignment_sequence,
            requested_sequence: self.requested_sequence,
            deferred_until: self.deferred_until,
            freezes: &self.freezes,
            holds_lease: self.holds_lease,
            wave_active_leases: counts.wave_active,
            compartment_active_leases,
            compartment_sites,
        }
    }
}

/// What a lease decision reads of a rollout.
struct LeaseFacts {
    plan: Arc<RolloutPlan>,
    status: RolloutStatus,
    current_wave: Option<u32>,
    /// The site's wave and whether it was skipped (None: not a member).
    member: Option<(u32, bool)>,
}

impl LeaseFacts {
    fn of(l: &Loaded, site_id: &str) -> LeaseFacts {
        LeaseFacts {
            plan: l.plan.clone(),
            status: l.record.status,
            current_wave: l.current_wave(),
            member: l.site(site_id).map(|m| (m.wave, m.skipped)),
        }
    }
}

impl Engine {
    /// Decides and, if granted, records a lease for `site_id` (asked by its box `box_id`,
    /// when the agent names one).
    ///
    /// The decision is made under the engine lock from memory (plus, for a wave with a
    /// concurrency or compartment limit, the active leases in SQLite). The grant is
    /// written through the lease group commit: a wave opening on 40,000 sites makes
    /// 40,000 requests within seconds, and one fsync each would queue them past the
    /// request limit. A grant that counts against a limit is committed before the lock is
    /// released, so the next decision sees it; any other grant after.
    ///
    /// In a site of several boxes the site's decision comes first (its wave counts the
    /// site once), then the boxes' order ([`controller::boxes::box_lease_decision`]),
    /// under the engine lock so that two boxes never both take the last place; the box's
    /// lease is recorded before the site's.
    pub async fn lease(
        &self,
        site_id: &str,
        box_id: Option<&str>,
        req: &LeaseRequest,
    ) -> Result<LeaseGrant, EngineError> {
        // The site's labels and deferral, read before the engine lock: a reader
        // connection, never the writer.
        let site_rec = {
            let sid = site_id.to_string();
            self.db
                .run(move |s| s.site(&sid))
                .await?
                .ok_or_else(|| EngineError::SiteNotFound(site_id.to_string()))?
        };
        let guard = self.lock.lock().await;
        let now = self.clock.now();
        let deny = |d: controller::LeaseDenial| {
            crate::metrics::Metrics::count(&self.metrics.leases, d.reason.as_str(), 1);
            EngineError::LeaseDenied(d)
        };
        let facts = match self.lease_facts(&req.rollout_id, site_id).await {
            Ok(f) => f,
            Err(EngineError::RolloutNotFound(_)) => {
                return Err(deny(controller::LeaseDenial {
                    reason: controller::LeaseDenialReason::NotAssigned,
                    message: format!("rollout {} does not exist", req.rollout_id),
                    retry_after_secs: controller::leases::NOT_OPEN_RETRY_SECS,
                }));
            }
            Err(e) => return Err(e),
        };
        let rollout_id = req.rollout_id.as_str();
        let (plan, status, current_wave, me) =
            (facts.plan, facts.status, facts.current_wave, facts.member);
        let current = self
            .sites
            .get(site_id)
            .and_then(|slot| slot.view().assignment)
            .filter(|a| a.record.rollout_id == req.rollout_id);
        // A rollback assignment is installed at once: no window, limit or status applies.
        // Inside a site of several boxes, its boxes that took the release go back in
        // reverse box order ([`controller::boxes::box_rollback_decision`]).
        if let Some(a) = &current
            && a.record.rollback
            && a.record.sequence == req.sequence
        {
            if let Some(box_id) = box_id {
                self.lease_box(&plan, rollout_id, site_id, box_id, true, now)
                    .await
                    .map_err(|e| match e {
                        BoxLease::Denied(d) => deny(d),
                        BoxLease::Failed(e) => e,
                    })?;
            }
            drop(guard);
            return self
                .grant(site_id, rollout_id, me.map_or(0, |m| m.0), now)
                .await;
        }
        let site_wave = me.map(|m| m.0);
        // Active leases only count against a wave's or compartment's limit: without one,
        // reading them (thousands while a large wave installs) for every lease would make
        // granting a wave's leases quadratic.
        let limited = site_wave
            .and_then(|w| plan.wave(w))
            .is_some_and(|w| w.max_concurrent.is_some() || w.compartment.is_some());
        let leases = if limited {
            let rid = req.rollout_id.clone();
            self.db.run(move |s| s.active_leases(&rid, now)).await?
        } else {
            Vec::new()
        };
        let holds_lease = leases.iter().any(|x| x.site_id == site_id);
        let wave_active = leases
            .iter()
            .filter(|x| x.site_id != site_id && Some(x.wave) == site_wave)
            .count() as u32;
        let (mut comp_active, mut comp_sites) = (0u32, 0u32);
        if let Some(w) = site_wave
            && let Some((label, value)) =
                controller::leases::compartment_of(&plan, w, &site_rec.labels)
        {
            let (rid, label, sid) = (
                req.rollout_id.clone(),
                label.to_string(),
                site_id.to_string(),
            );
            (comp_sites, comp_active) = self
                .db
                .run(move |s| s.compartment_counts(&rid, &label, &value, &sid, now))
                .await?;
        }
        let freezes = self.effective_freezes();
        let ctx = controller::LeaseContext {
            plan: &plan,
            status,
            current_wave,
            site_wave: if me.is_some_and(|m| m.1) {
                None
            } else {
                site_wave
            },
            site_labels: &site_rec.labels,
            assignment_sequence: current
                .as_ref()
                .filter(|a| !a.record.rollback)
                .map(|a| a.record.sequence),
            requested_sequence: req.sequence,
            deferred_until: site_rec.deferred_until,
            freezes: &freezes,
            holds_lease,
            wave_active_leases: wave_active,
            compartment_active_leases: comp_active,
            compartment_sites: comp_sites,
        };
        controller::lease_decision(&ctx, now).map_err(deny)?;
        if let Some(box_id) = box_id {
            self.lease_box(&plan, rollout_id, site_id, box_id, false, now)
                .await
                .map_err(|e| match e {
                    BoxLease::Denied(d) => deny(d),
                    BoxLease::Failed(e) => e,
                })?;
        }
        if limited && self.db.shared_by_replicas() {
            // Other replicas grant this wave's leases too: count again in the granting
            // transaction, so that the limit holds across all of them.
            let recheck = Recheck {
                plan: plan.clone(),
                status,
                current_wave,
                site_wave: ctx.site_wave,
                labels: site_rec.labels.clone(),
                assignment_sequence: ctx.assignment_sequence,
                requested_sequence: req.sequence,
                deferred_until: site_rec.deferred_until,
                freezes: freezes.clone(),
                holds_lease,
            };
            let granted = self
                .grant_counted(site_id, rollout_id, site_wave.unwrap_or(0), now, recheck)
                .await
                .map_err(|e| match e {
                    BoxLease::Denied(d) => deny(d),
                    BoxLease::Failed(e) => e,
                });
            drop(guard);
            return granted;
        }
        if limited {
            let granted = self
                .grant(site_id, rollout_id, site_wave.unwrap_or(0), now)
                .await;
            drop(guard);
            granted
        } else {
            // Nothing counts this grant: decide the next lease while it commits. Should
            // the rollout end before the commit, the lease row is left behind inert: no
            // lease of a finished rollout is ever read.
            drop(guard);
            self.grant(site_id, rollout_id, site_wave.unwrap_or(0), now)
                .await
        }
    }

    /// Inside a site of several boxes: whether box `box_id` may take a lease now (for the
    /// site's rollback when `rollback`), and if so records it (a one-box site: nothing to
    /// decide).
    async fn lease_box(
        &self,
        plan: &Arc<RolloutPlan>,
        rollout_id: &str,
        site_id: &str,
        box_id: &str,
        rollback: bool,
        now: Timestamp,
    ) -> Result<(), BoxLease> {
        let (rid, sid) = (rollout_id.to_string(), site_id.to_string());
        let (boxes, facts) = self
            .db
            .run(move |s| Ok((s.site_boxes(&sid)?, s.rollout_boxes(&rid, &sid)?)))
            .await
            .map_err(|e| BoxLease::Failed(e.into()))?;
        if boxes.len() < 2 {
            return Ok(());
        }
        if rollback {
            controller::boxes::box_rollback_decision(plan, site_id, &boxes, &facts, box_id)
        } else {
            controller::boxes::box_lease_decision(plan, site_id, &boxes, &facts, box_id, now)
        }
        .map_err(BoxLease::Denied)?;
        let until = crate::time::later(
            now,
            SignedDuration::from_secs(
                i64::try_from(self.settings.lease_ttl_secs).unwrap_or(i64::MAX),
            ),
            "the lease's expiry (now + assignments.lease_ttl_secs)",
        )
        .map_err(|e| BoxLease::Failed(e.into()))?;
        // Decided again on the box facts read in the granting transaction: another
        // replica may have leased another box of the site since they were read above.
        // (The decision above stays: it refuses a box out of turn, the usual answer,
        // without a write transaction.)
        let (rid, sid, bid) = (
            rollout_id.to_string(),
            site_id.to_string(),
            box_id.to_string(),
        );
        let decide = {
            let (plan, boxes, sid, bid) = (
                plan.clone(),
                Arc::new(boxes),
                site_id.to_string(),
                box_id.to_string(),
            );
            move |facts: &[(String, crate::store::boxes::BoxFacts)]| {
                if rollback {
                    controller::boxes::box_rollback_decision(&plan, &sid, &boxes, facts, &bid)
                } else {
                    controller::boxes::box_lease_decision(&plan, &sid, &boxes, facts, &bid, now)
                }
            }
        };
        let decide = Arc::new(decide);
        let d = decide.clone();
        let granted = self
            .db
            .run(move |s| s.lease_box(&rid, &sid, &bid, now, until, &|f| d(f).is_ok()))
            .await
            .map_err(|e| BoxLease::Failed(e.into()))?;
        if granted {
            return Ok(());
        }
        let (rid, sid) = (rollout_id.to_string(), site_id.to_string());
        let facts = self
            .db
            .run(move |s| s.rollout_boxes(&rid, &sid))
            .await
            .map_err(|e| BoxLease::Failed(e.into()))?;
        Err(match decide(&facts) {
            Err(d) => BoxLease::Denied(d),
            Ok(()) => BoxLease::Failed(EngineError::Storage(crate::store::StoreError::Conflict(
                "another box of the site changed while this one was leased; ask again".into(),
            ))),
        })
    }

    /// What a lease decision needs of a rollout: from memory for a live rollout. A
    /// finished rollout is not kept in memory, yet a completed one still grants leases to
    /// late sites: for it, read its record and this site's row only, never all its sites.
    async fn lease_facts(&self, id: &str, site_id: &str) -> Result<LeaseFacts, EngineError> {
        if let Some(f) = self.facts.with(id, |l| LeaseFacts::of(l, site_id)) {
            return Ok(f);
        }
        let record = self.rollout_record(id).await?;
        if record.status.is_active() {
            // Live but not loaded yet (after a restart): load it into memory once.
            return self.with_rollout(id, |l| LeaseFacts::of(l, site_id)).await;
        }
        let plan = self.plan(&record)?;
        let (rid, sid) = (id.to_string(), site_id.to_string());
        let member = self.db.run(move |s| s.rollout_site(&rid, &sid)).await?;
        Ok(LeaseFacts {
            plan,
            status: record.status,
            current_wave: current_wave(&record),
            member: member.map(|m| (m.wave, m.skipped)),
        })
    }

    /// A lease of a limited wave on a store other replicas share: written only if the
    /// controller, given the active leases counted in the granting transaction, still
    /// grants it ([`crate::store::Store::grant_lease_counted`]); then noted in the
    /// rollout's facts.
    async fn grant_counted(
        &self,
        site_id: &str,
        rollout_id: &str,
        wave: u32,
        now: Timestamp,
        recheck: Recheck,
    ) -> Result<LeaseGrant, BoxLease> {
        let lease = self
            .lease_record(site_id, rollout_id, wave, now)
            .map_err(BoxLease::Failed)?;
        let compartment = recheck.site_wave.and_then(|w| {
            controller::leases::compartment_of(&recheck.plan, w, &recheck.labels)
                .map(|(label, value)| (label.to_string(), value))
        });
        let recheck = Arc::new(recheck);
        let (record, r) = (lease.clone(), recheck.clone());
        let outcome = self
            .db
            .run(move |s| {
                let allow = |c: &crate::store::LeaseCounts| {
                    controller::lease_decision(&r.context(c), now).is_ok()
                };
                s.grant_lease_counted(
                    &record,
                    compartment.as_ref().map(|(l, v)| (l.as_str(), v.as_str())),
                    &allow,
                )
            })
            .await
            .map_err(|e| BoxLease::Failed(e.into()))?;
        if let Err(counts) = outcome {
            // Another replica took the place meanwhile: the controller says why not.
            return Err(
                match controller::lease_decision(&recheck.context(&counts), now) {
                    Err(d) => BoxLease::Denied(d),
                    Ok(()) => {
                        BoxLease::Failed(EngineError::Storage(crate::store::StoreError::Conflict(
                            "the lease's limit changed while it was granted; ask again".into(),
                        )))
                    }
                },
            );
        }
        self.facts.apply(
            rollout_id,
            Update::Leased {
                site_id: site_id.to_string(),
                at: now,
            },
        );
        crate::metrics::Metrics::count(&self.metrics.leases, "granted", 1);
        Ok(LeaseGrant {
            lease_id: lease.id,
            rollout_id: lease.rollout_id,
            expires_at: lease.expires_at,
        })
    }

    /// A new lease record for the site, lasting `assignments.lease_ttl_secs` from `now`.
    fn lease_record(
        &self,
        site_id: &str,
        rollout_id: &str,
        wave: u32,
        now: Timestamp,
    ) -> Result<LeaseRecord, EngineError> {
        Ok(LeaseRecord {
            id: format!("lease-{}", random_hex(12)),
            site_id: site_id.to_string(),
            rollout_id: rollout_id.to_string(),
            wave,
            granted_at: now,
            expires_at: crate::time::later(
                now,
                SignedDuration::from_secs(
                    i64::try_from(self.settings.lease_ttl_secs).unwrap_or(i64::MAX),
                ),
                "the lease's expiry (now + assignments.lease_ttl_secs)",
            )?,
        })
    }

    /// Writes a granted lease through the lease group commit, then notes it in the
    /// rollout's facts.
    async fn grant(
        &self,
        site_id: &str,
        rollout_id: &str,
        wave: u32,
        now: Timestamp,
    ) -> Result<LeaseGrant, EngineError> {
        let lease = self.lease_record(site_id, rollout_id, wave, now)?;
        let (db, facts) = (self.db.clone(), self.facts.clone());
        self.leases
            .submit(
                lease.clone(),
                self.db.group_limits(LEASE_GROUP),
                move || {
                    move |leases: Vec<LeaseRecord>| {
                        let (db, facts) = (db.clone(), facts.clone());
                        async move {
                            let noted: Vec<(String, String, Timestamp)> = leases
                                .iter()
                                .map(|l| (l.rollout_id.clone(), l.site_id.clone(), l.granted_at))
                                .collect();
                            let outcomes = db.run(move |s| s.grant_leases(&leases)).await?;
                            for ((rollout, site_id, at), o) in noted.into_iter().zip(&outcomes) {
                                if o.is_ok() {
                                    facts.apply(&rollout, Update::Leased { site_id, at });
                                }
                            }
                            Ok(outcomes)
                        }
                    }
                },
            )
            .await?;
        crate::metrics::Metrics::count(&self.metrics.leases, "granted", 1);
        // No controller wake-up: a grant changes no gate input (only reports do), and at
        // 100,000 sites a pass per grant held the engine lock between every two grants.
        Ok(LeaseGrant {
            lease_id: lease.id,
            rollout_id: lease.rollout_id,
            expires_at: lease.expires_at,
        })
    }
}
