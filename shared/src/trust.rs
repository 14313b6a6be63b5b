//! The agent's trust state and the install decision, as pure values and functions.
//!
//! [`TrustState::evaluate`] takes the state, the envelopes and the clock and returns either
//! [`Accepted`] (the verified documents to act on) or a precise [`Refusal`]. It never reads
//! the clock or the disk; the caller persists the state after [`TrustState::accept`],
//! [`TrustState::record_installed`] or [`TrustState::update_root`].

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::docs::{Assignment, Release, Root};
use crate::dsse::Envelope;
pub use crate::verify::Refusal;
use crate::verify::{
    RanBefore, Verified, verify_assigned_release_ran_before, verify_root_anchor,
    verify_root_rotation,
};

/// How many committed releases [`TrustState::ran_releases`] remembers per stream.
pub const MAX_RAN_RELEASES: usize = 8;

/// What the agent trusts and remembers between runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustState {
    root: Verified<Root>,
    /// Counter of the release committed last, per release stream (release `name`); it only
    /// goes down through an explicit rollback, and never below the floor.
    pub release_high_water: BTreeMap<String, u64>,
    /// The counter committed before the current one, per stream: how far an explicit
    /// rollback may go.
    pub rollback_floor: BTreeMap<String, u64>,
    /// Sequence of the newest assignment accepted.
    pub last_sequence: u64,
    /// Digest of the newest assignment accepted (the same document may be seen again).
    pub last_assignment: Option<String>,
    /// Newest `issued_at` of any accepted document: the clock is never trusted below it.
    pub trusted_time: Option<Timestamp>,
    /// Envelope SHA-256s of the releases committed on this box, per stream, oldest first
    /// (at most [`MAX_RAN_RELEASES`]): an explicit rollback may go back to one of them after
    /// it expired (see [`RanBefore`]).
    pub ran_releases: BTreeMap<String, Vec<String>>,
}

/// The serializable form of [`TrustState`]; the root is kept as its envelope and verified
/// again when restored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PersistedTrust {
    pub root: Envelope,
    #[serde(default)]
    pub release_high_water: BTreeMap<String, u64>,
    #[serde(default)]
    pub rollback_floor: BTreeMap<String, u64>,
    #[serde(default)]
    pub last_sequence: u64,
    #[serde(default)]
    pub last_assignment: Option<String>,
    #[serde(default)]
    pub trusted_time: Option<Timestamp>,
    #[serde(default)]
    pub ran_releases: BTreeMap<String, Vec<String>>,
}

/// An assignment and its release that passed every check: what the agent may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub assignment: Verified<Assignment>,
    pub release: Verified<Release>,
    /// False when this is the assignment already accepted before (polled again).
    pub is_new: bool,
}

impl TrustState {
    /// Starts from a root installed out of band (the trust anchor).
    pub fn from_anchor(root: &Envelope) -> Result<TrustState, Refusal> {
        Ok(TrustState {
            root: verify_root_anchor(root)?,
            release_high_water: BTreeMap::new(),
            rollback_floor: BTreeMap::new(),
            last_sequence: 0,
            last_assignment: None,
            trusted_time: None,
            ran_releases: BTreeMap::new(),
        })
    }

    pub fn restore(saved: PersistedTrust) -> Result<TrustState, Refusal> {
        Ok(TrustState {
            root: verify_root_anchor(&saved.root)?,
            release_high_water: saved.release_high_water,
            rollback_floor: saved.rollback_floor,
            last_sequence: saved.last_sequence,
            last_assignment: saved.last_assignment,
            trusted_time: saved.trusted_time,
            ran_releases: saved.ran_releases,
        })
    }

    pub fn persisted(&self) -> PersistedTrust {
        PersistedTrust {
            root: self.root.envelope().clone(),
            release_high_water: self.release_high_water.clone(),
            rollback_floor: self.rollback_floor.clone(),
            last_sequence: self.last_sequence,
            last_assignment: self.last_assignment.clone(),
            trusted_time: self.trusted_time,
            ran_releases: self.ran_releases.clone(),
        }
    }

    pub fn root(&self) -> &Verified<Root> {
        &self.root
    }

    /// `max(clock, newest trusted issued_at)`: a clock that jumps back cannot replay.
    pub fn effective_now(&self, clock: Timestamp) -> Timestamp {
        self.trusted_time.map_or(clock, |t| t.max(clock))
    }

    /// Follows the root rotation chain: each envelope must be the next version, signed by
    /// a threshold of the previous root keys and of its own. Versions the agent already has
    /// are skipped. On error the state is unchanged.
    pub fn update_root(&mut self, chain: &[Envelope]) -> Result<u64, Refusal> {
        let mut current = self.root.clone();
        for envelope in chain {
            // A root verified by its own keys is only a candidate; versions already trusted
            // are skipped, newer ones must chain from the current root.
            let candidate = verify_root_anchor(envelope)?;
            if candidate.version <= current.version {
                continue;
            }
            current = verify_root_rotation(&current, envelope)?;
        }
        let version = current.version;
        self.root = current;
        Ok(version)
    }

    /// Decides whether this site may act on `assignment` and `release` at `clock`.
    pub fn evaluate(
        &self,
        site_id: &str,
        assignment: &Envelope,
        release: &Envelope,
        clock: Timestamp,
        agent_version: &str,
    ) -> Result<Accepted, Refusal> {
        let now = self.effective_now(clock);
        if self.root.expires <= now {
            return Err(Refusal::RootExpired {
                version: self.root.version,
                expires: self.root.expires,
                now,
            });
        }
        let (assignment, release) = verify_assigned_release_ran_before(
            &self.root,
            assignment,
            release,
            now,
            Some(site_id),
            RanBefore::new(&self.ran_releases),
        )?;
        let seen_before = self.last_assignment.as_deref() == Some(assignment.digest());
        if !seen_before && assignment.sequence <= self.last_sequence {
            return Err(Refusal::Replay {
                sequence: assignment.sequence,
                last: self.last_sequence,
            });
        }
        if let Some(&high_water) = self.release_high_water.get(&release.name)
            && release.counter < high_water
        {
            if !assignment.rollback {
                return Err(Refusal::Rollback {
                    id: release.id.clone(),
                    stream: release.name.clone(),
                    counter: release.counter,
                    high_water,
                });
            }
            let floor = self
                .rollback_floor
                .get(&release.name)
                .copied()
                .unwrap_or(high_water);
            if release.counter < floor {
                return Err(Refusal::RollbackTooFar {
                    id: release.id.clone(),
                    stream: release.name.clone(),
                    counter: release.counter,
                    floor,
                });
            }
        }
        if let Some(required) = &release.min_agent_version
            && version_lt(agent_version, required)
        {
            return Err(Refusal::AgentTooOld {
                id: release.id.clone(),
                required: required.clone(),
                have: agent_version.to_string(),
            });
        }
        Ok(Accepted {
            assignment,
            release,
            is_new: !seen_before,
        })
    }

    /// Records an accepted assignment: its sequence can never be used again and the trusted
    /// time moves up to its `issued_at`.
    pub fn accept(&mut self, accepted: &Accepted) {
        self.last_sequence = self.last_sequence.max(accepted.assignment.sequence);
        self.last_assignment = Some(accepted.assignment.digest().to_string());
        self.advance_time(accepted.assignment.issued_at);
        self.advance_time(accepted.release.issued_at);
    }

    /// Moves the trusted time forward (never back).
    pub fn advance_time(&mut self, at: Timestamp) {
        self.trusted_time = Some(self.trusted_time.map_or(at, |t| t.max(at)));
    }

    /// Records that `release` is now committed on the box.
    ///
    /// An upgrade (counter above the high-water mark) raises the mark and keeps the
    /// previous mark as the floor for an explicit rollback. An explicit rollback (counter
    /// below the mark, which [`TrustState::evaluate`] only lets through from a rollback
    /// assignment and never below the floor) brings the mark down to the release now
    /// running, and leaves the floor where it is: so the next upgrade's floor is the release
    /// the site actually ran before it, and no sequence of rollbacks ever goes below a floor.
    /// The release envelope is remembered as one this site ran ([`TrustState::ran_releases`]).
    pub fn record_installed(&mut self, release: &Verified<Release>) {
        let stream = release.name.clone();
        self.remember_ran(&stream, release.digest());
        match self.release_high_water.get(&stream).copied() {
            Some(high_water) if release.counter > high_water => {
                self.rollback_floor.insert(stream.clone(), high_water);
                self.release_high_water.insert(stream, release.counter);
            }
            Some(high_water) if release.counter < high_water => {
                self.release_high_water.insert(stream, release.counter);
            }
            Some(_) => {}
            None => {
                self.release_high_water.insert(stream, release.counter);
            }
        }
    }

    /// Remembers the release envelope `digest` of `stream` as committed on this box (the
    /// newest last; the oldest is forgotten past [`MAX_RAN_RELEASES`]). The caller vouches
    /// that the envelope verified and was committed: [`TrustState::record_installed`] does,
    /// and an agent whose state predates this record fills it from the releases its
    /// database shows committed.
    pub fn remember_ran(&mut self, stream: &str, digest: &str) {
        let ran = self.ran_releases.entry(stream.to_string()).or_default();
        ran.retain(|d| d != digest);
        ran.push(digest.to_string());
        if ran.len() > MAX_RAN_RELEASES {
            ran.drain(..ran.len() - MAX_RAN_RELEASES);
        }
    }
}

/// Compares dotted numeric versions (`1.2.10` > `1.2.9`); a pre-release or build suffix
/// after `-` or `+` is ignored. Non-numeric parts compare as 0.
pub fn version_lt(have: &str, required: &str) -> bool {
    fn parts(v: &str) -> Vec<u64> {
        let core = v
            .trim_start_matches('v')
            .split(['-', '+'])
            .next()
            .unwrap_or("");
        core.split('.').map(|p| p.parse().unwrap_or(0)).collect()
    }
    let (a, b) = (parts(have), parts(required));
    let n = a.len().max(b.len());
    for i in 0..n {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        if x != y {
            return x < y;
        }
    }
    false
}
