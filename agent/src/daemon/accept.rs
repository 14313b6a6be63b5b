//! Accepting documents: polling the coordinator, then verifying and accepting (or refusing
//! and reporting) what a poll or an imported bundle delivered.

use std::time::Duration;

use fleetwave_shared::Envelope;
use fleetwave_shared::protocol::{EventBody, Phase};

use super::{Context, Daemon, jittered};
use crate::client::{ClientError, PollAnswer};
use crate::state::StateError;
use crate::state::journal::{Outcome, Step};

impl Daemon {
    /// Polls once (long poll); accepts or refuses what came; returns the delay to the next
    /// poll.
    pub(super) async fn poll_once(&mut self) -> Result<Duration, ClientError> {
        let cfg = &self.ctx.config;
        let default = jittered(Duration::from_secs(cfg.poll.interval_secs), cfg.poll.jitter);
        let Some(session) = &self.session else {
            return Ok(default);
        };
        // The suggested interval counts from the start of this poll: a long poll that the
        // coordinator held open for `wait_secs` has already spent that part of it, so the
        // agent is back in a long poll soon and a newly opened wave reaches it within
        // seconds instead of after a full extra interval.
        let started = self.ctx.clock.instant();
        let answer = session
            .poll(
                cfg.poll.wait_secs,
                self.ctx.trust.root().version,
                self.etag.as_deref(),
                Duration::from_secs(cfg.coordinator.request_timeout_secs),
            )
            .await?;
        let _ = self
            .ctx
            .store
            .set_meta("last_contact", &self.ctx.clock.now().to_string());
        let suggested = |s: Option<u32>| {
            s.map(|s| jittered(Duration::from_secs(u64::from(s)), cfg.poll.jitter))
                .unwrap_or(default)
        };
        match answer {
            PollAnswer::NotModified { next_poll_secs } => Ok(suggested(next_poll_secs)
                .saturating_sub(self.ctx.clock.instant().saturating_duration_since(started))),
            PollAnswer::Changed {
                response,
                etag,
                next_poll_secs,
            } => {
                let next = suggested(next_poll_secs.or(Some(response.next_poll_secs)));
                if let Err(e) = self.on_documents(
                    &response.roots,
                    response.assignment.as_ref(),
                    response.release.as_ref(),
                ) {
                    tracing::error!("cannot store what the coordinator sent: {e}");
                    return Ok(next);
                }
                self.etag = etag;
                Ok(
                    next.saturating_sub(
                        self.ctx.clock.instant().saturating_duration_since(started),
                    ),
                )
            }
        }
    }

    /// Verifies and accepts (or refuses and reports) what a poll or a bundle delivered.
    pub(super) fn on_documents(
        &mut self,
        roots: &[Envelope],
        assignment: Option<&Envelope>,
        release: Option<&Envelope>,
    ) -> Result<(), StateError> {
        if let Accepting::NoAssignment =
            accept_documents(&mut self.ctx, roots, assignment, release)?
        {
            self.withdrawn()?;
        }
        Ok(())
    }

    /// The coordinator has no assignment for this site (rollout aborted or finished):
    /// forget the stored one; an install that changed nothing yet is abandoned.
    pub(super) fn withdrawn(&mut self) -> Result<(), StateError> {
        if let Some(entry) = self.ctx.store.journal_open()? {
            if !matches!(entry.step, Step::Leased | Step::Prepare) {
                return Ok(()); // the box changed: recovery finishes or rolls back
            }
            let why = "the coordinator withdrew the assignment";
            self.ctx.phase(
                Some(&entry.rollout_id),
                &entry.release_id,
                Phase::Failed,
                Some(format!("{why}; abandoned, nothing was changed")),
            )?;
            self.ctx.store.journal_finish(
                entry.id,
                Outcome::Abandoned,
                Some(why),
                self.ctx.clock.now(),
            )?;
        }
        if self.ctx.store.assignment()?.is_some() {
            tracing::info!("the coordinator has no assignment for this site any more");
            self.ctx.store.clear_assignment()?;
        }
        Ok(())
    }
}

/// What [`accept_documents`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepting {
    /// A new assignment was verified and stored.
    Accepted {
        rollout_id: String,
        sequence: u64,
        release_id: String,
    },
    /// The same assignment as before.
    Unchanged,
    /// The coordinator has no assignment for this site.
    NoAssignment,
    /// Refused (reported); `code` is the refusal code.
    Refused { code: String, message: String },
}

/// Follows root rotations, then verifies an assignment and its release exactly as the
/// trust core demands; accepts and persists it or reports the refusal. Network polls and
/// imported bundles both come through here.
pub fn accept_documents(
    ctx: &mut Context,
    roots: &[Envelope],
    assignment: Option<&Envelope>,
    release: Option<&Envelope>,
) -> Result<Accepting, StateError> {
    if !roots.is_empty() {
        let mut next = ctx.trust.clone();
        match next.update_root(roots) {
            Ok(version) if version != ctx.trust.root().version => {
                tracing::info!(version, "root of trust rotated");
                ctx.trust = next;
                ctx.store.save_trust(&ctx.trust.persisted())?;
            }
            Ok(_) => {}
            Err(refusal) => {
                ctx.refuse(&refusal, None)?;
                return Ok(Accepting::Refused {
                    code: refusal.code().into(),
                    message: refusal.to_string(),
                });
            }
        }
    }
    let (Some(assignment), Some(release)) = (assignment, release) else {
        if assignment.is_some() {
            let message = "the assignment came without its release".to_string();
            ctx.report(EventBody::Refusal {
                code: "missing_release".into(),
                message: message.clone(),
                rollout_id: None,
                sequence: None,
            })?;
            return Ok(Accepting::Refused {
                code: "missing_release".into(),
                message,
            });
        }
        return Ok(Accepting::NoAssignment);
    };
    match ctx.evaluate(assignment, release) {
        Ok(accepted) if !accepted.is_new => Ok(Accepting::Unchanged),
        Ok(accepted) => {
            ctx.accept(&accepted)?;
            let a = &accepted.assignment;
            ctx.phase(
                Some(&a.rollout_id),
                &accepted.release.id,
                Phase::Accepted,
                Some(format!("sequence {}", a.sequence)),
            )?;
            Ok(Accepting::Accepted {
                rollout_id: a.rollout_id.clone(),
                sequence: a.sequence,
                release_id: accepted.release.id.clone(),
            })
        }
        Err(refusal) => {
            // The same document refused for the same reason is reported once, so that a
            // coordinator serving it on every poll cannot fill the outbox.
            let key = format!("{}:{}", assignment.digest(), refusal.code());
            if ctx.store.meta("last_refusal")?.as_deref() != Some(key.as_str()) {
                ctx.refuse(&refusal, Some(assignment))?;
                ctx.store.set_meta("last_refusal", &key)?;
            }
            Ok(Accepting::Refused {
                code: refusal.code().into(),
                message: refusal.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::state::Store;
    use fleetwave_shared::docs::{ASSIGNMENT_TYPE, RELEASE_TYPE, ROOT_TYPE, RoleKeys, Roles, Root};
    use fleetwave_shared::keys::{PublicKeyFile, generate};
    use fleetwave_shared::trust::TrustState;
    use fleetwave_shared::{Assignment, KeyId, Release, ReleaseKind};
    use jiff::{SignedDuration, Timestamp};

    struct Fleet {
        root: Envelope,
        release: ed25519_dalek::SigningKey,
        coordinator: ed25519_dalek::SigningKey,
    }

    fn fleet() -> Fleet {
        let (root_key, release, coordinator) = (generate(), generate(), generate());
        let mut keys = std::collections::BTreeMap::new();
        let mut id = |k: &ed25519_dalek::SigningKey| {
            let id = KeyId::of(&k.verifying_key()).0;
            keys.insert(id.clone(), PublicKeyFile::from_key(&k.verifying_key()));
            RoleKeys {
                keyids: vec![id],
                threshold: 1,
            }
        };
        let roles = Roles {
            root: id(&root_key),
            release: id(&release),
            coordinator: id(&coordinator),
        };
        let root = Root {
            version: 1,
            expires: Timestamp::now() + SignedDuration::from_hours(24),
            keys,
            roles,
        };
        Fleet {
            root: Envelope::sign(ROOT_TYPE, &serde_json::to_vec(&root).unwrap(), &[&root_key]),
            release,
            coordinator,
        }
    }

    fn context(fleet: &Fleet, dir: &std::path::Path) -> Context {
        let config = Config::parse(
            &format!(
                "[coordinator]\nurl = \"\"\n[agent]\nstate_dir = {:?}\nsite_id = \"s1\"\n",
                dir.display().to_string()
            ),
            "test",
        )
        .unwrap();
        let store = Store::open(dir).unwrap();
        let trust = TrustState::from_anchor(&fleet.root).unwrap();
        store.save_trust(&trust.persisted()).unwrap();
        Context::open(config).unwrap()
    }

    fn documents(fleet: &Fleet, sequence: u64, expires_in: SignedDuration) -> (Envelope, Envelope) {
        let now = Timestamp::now();
        let release = Release {
            id: "pos-1".into(),
            name: "pos".into(),
            version: "1".into(),
            kind: ReleaseKind::App,
            counter: 1,
            issued_at: now - SignedDuration::from_mins(1),
            expires: now + SignedDuration::from_hours(1),
            artifacts: vec![],
            install: Default::default(),
            min_agent_version: None,
        };
        let release = Envelope::sign(
            RELEASE_TYPE,
            &serde_json::to_vec(&release).unwrap(),
            &[&fleet.release],
        );
        let assignment = Assignment {
            site_id: "s1".into(),
            rollout_id: format!("r{sequence}"),
            wave: 0,
            release_sha256: release.digest(),
            sequence,
            not_before: now,
            issued_at: now - SignedDuration::from_mins(1),
            expires: now + expires_in,
            rollback: false,
            window: None,
        };
        let assignment = Envelope::sign(
            ASSIGNMENT_TYPE,
            &serde_json::to_vec(&assignment).unwrap(),
            &[&fleet.coordinator],
        );
        (assignment, release)
    }

    fn refusals(ctx: &Context) -> Vec<String> {
        ctx.store
            .outbox_peek(100)
            .unwrap()
            .into_iter()
            .filter_map(|e| match e.body {
                EventBody::Refusal { code, .. } => Some(code),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn accepts_once_then_refuses_replay_and_expiry_reporting_each_once() {
        let fleet = fleet();
        let dir = tempfile::tempdir().unwrap();
        let mut ctx = context(&fleet, dir.path());
        let (a5, r) = documents(&fleet, 5, SignedDuration::from_hours(1));
        assert!(matches!(
            accept_documents(&mut ctx, &[], Some(&a5), Some(&r)).unwrap(),
            Accepting::Accepted { sequence: 5, .. }
        ));
        // Persisted: a restarted agent still has it and its sequence.
        assert_eq!(ctx.store.assignment().unwrap().unwrap().assignment, a5);
        assert_eq!(ctx.store.trust().unwrap().unwrap().last_sequence, 5);
        // Polled again: unchanged, not a replay.
        assert_eq!(
            accept_documents(&mut ctx, &[], Some(&a5), Some(&r)).unwrap(),
            Accepting::Unchanged
        );
        // An older sequence is a replay; served twice, reported once.
        let (a4, r4) = documents(&fleet, 4, SignedDuration::from_hours(1));
        for _ in 0..2 {
            assert!(matches!(
                accept_documents(&mut ctx, &[], Some(&a4), Some(&r4)).unwrap(),
                Accepting::Refused { ref code, .. } if code == "replay"
            ));
        }
        // An expired assignment is refused even with a newer sequence.
        let (a9, r9) = documents(&fleet, 9, SignedDuration::from_secs(-1));
        assert!(matches!(
            accept_documents(&mut ctx, &[], Some(&a9), Some(&r9)).unwrap(),
            Accepting::Refused { ref code, .. } if code == "expired"
        ));
        assert_eq!(
            refusals(&ctx),
            vec!["replay".to_string(), "expired".to_string()]
        );
        // The refused documents changed nothing.
        assert_eq!(ctx.store.assignment().unwrap().unwrap().assignment, a5);
    }

    #[test]
    fn a_stored_assignment_stops_verifying_when_the_clock_passes_its_expiry() {
        let fleet = fleet();
        let dir = tempfile::tempdir().unwrap();
        let config = context(&fleet, dir.path()).config;
        let clock = crate::clock::Clock::manual(Timestamp::now());
        let mut ctx = Context::open_with_clock(config, clock.clone()).unwrap();
        let (a, r) = documents(&fleet, 5, SignedDuration::from_hours(1));
        assert!(matches!(
            accept_documents(&mut ctx, &[], Some(&a), Some(&r)).unwrap(),
            Accepting::Accepted { sequence: 5, .. }
        ));
        assert!(ctx.evaluate(&a, &r).is_ok());
        // An hour and a minute later (no sleeping: the clock is moved), it has expired.
        clock.advance(Duration::from_secs(61 * 60));
        let refusal = ctx.evaluate(&a, &r).unwrap_err();
        assert_eq!(refusal.code(), "expired");
        // Reports are stamped with the clock's time.
        let last = ctx.store.outbox_peek(100).unwrap().pop().unwrap();
        assert!(last.at < clock.now());
    }

    #[test]
    fn a_rollback_gets_its_release_verified_again_even_after_it_expired() {
        use crate::state::journal::NewInstall;
        let fleet = fleet();
        let dir = tempfile::tempdir().unwrap();
        let config = context(&fleet, dir.path()).config;
        let clock = crate::clock::Clock::manual(Timestamp::now());
        let daemon = super::super::Daemon::with_clock(config, dir.path(), clock.clone()).unwrap();
        let (a, r) = documents(&fleet, 5, SignedDuration::from_hours(1));
        let begin = |release: &Envelope| {
            let id = daemon
                .ctx
                .store
                .journal_begin(
                    &NewInstall {
                        rollout_id: "r5",
                        sequence: 5,
                        release_id: "pos-1",
                        stream: "pos",
                        assignment: &a,
                        release,
                        lease_id: None,
                    },
                    clock.now(),
                )
                .unwrap();
            let entry = daemon.ctx.store.journal_open().unwrap().unwrap();
            assert_eq!(entry.id, id);
            entry
        };
        let entry = begin(&r);
        assert!(daemon.release_to_roll_back(&entry).is_some());
        // The release expires (in an hour); going back still verifies it, as of the start.
        clock.advance(Duration::from_secs(2 * 3600));
        let release = daemon.release_to_roll_back(&entry).unwrap();
        assert_eq!(release.digest(), r.digest());
        // A release the root never signed never reaches an executor.
        daemon
            .ctx
            .store
            .journal_finish(entry.id, Outcome::RolledBack, None, clock.now())
            .unwrap();
        let mut forged = r.clone();
        forged.signatures.clear();
        let entry = begin(&forged);
        assert!(daemon.release_to_roll_back(&entry).is_none());
    }

    #[test]
    fn an_agent_whose_state_predates_the_record_of_what_ran_learns_it_from_installed() {
        let fleet = fleet();
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        let release = |counter: u64, expires: Timestamp| {
            let doc = Release {
                id: format!("pos-{counter}"),
                name: "pos".into(),
                version: counter.to_string(),
                kind: ReleaseKind::App,
                counter,
                issued_at: now - SignedDuration::from_hours(48),
                expires,
                artifacts: vec![],
                install: Default::default(),
                min_agent_version: None,
            };
            Envelope::sign(
                RELEASE_TYPE,
                &serde_json::to_vec(&doc).unwrap(),
                &[&fleet.release],
            )
        };
        // Release 1 expired an hour ago; the box committed 1, then 2, with an older agent
        // whose trust state has no `ran_releases`.
        let r1 = release(1, now - SignedDuration::from_hours(1));
        let r2 = release(2, now + SignedDuration::from_hours(1));
        drop(context(&fleet, dir.path()));
        let store = Store::open(dir.path()).unwrap();
        let mut old = TrustState::from_anchor(&fleet.root).unwrap();
        old.release_high_water.insert("pos".into(), 2);
        old.rollback_floor.insert("pos".into(), 1);
        for (r, id) in [(&r1, "pos-1"), (&r2, "pos-2")] {
            store
                .record_commit("pos", id, id, r, &old.persisted(), now)
                .unwrap();
        }
        drop(store);

        let mut ctx = Context::open(
            Config::parse(
                &format!(
                    "[coordinator]\nurl = \"\"\n[agent]\nstate_dir = {:?}\nsite_id = \"s1\"\n",
                    dir.path().display().to_string()
                ),
                "test",
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            ctx.trust.ran_releases["pos"],
            vec![r1.digest(), r2.digest()]
        );
        // So the coordinator's rollback to release 1 is accepted although 1 expired.
        let rollback = Assignment {
            site_id: "s1".into(),
            rollout_id: "r-2".into(),
            wave: 0,
            release_sha256: r1.digest(),
            sequence: 3,
            not_before: now,
            issued_at: now - SignedDuration::from_mins(1),
            expires: now + SignedDuration::from_hours(1),
            rollback: true,
            window: None,
        };
        let rollback = Envelope::sign(
            ASSIGNMENT_TYPE,
            &serde_json::to_vec(&rollback).unwrap(),
            &[&fleet.coordinator],
        );
        assert!(matches!(
            accept_documents(&mut ctx, &[], Some(&rollback), Some(&r1)).unwrap(),
            Accepting::Accepted { sequence: 3, .. }
        ));
    }
}
