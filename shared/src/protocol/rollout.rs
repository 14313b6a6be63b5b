//! A rollout's life: its status, which operator action each status allows, and why a
//! lease is refused. One definition for the coordinator (engine, API, dashboard), the
//! agent and the CLI; pure, no clock.

use serde::{Deserialize, Serialize};

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RolloutStatus {
    /// Created, not started: no assignments yet.
    Pending,
    /// Started by an operator ahead of its plan's `start_at`: no assignments yet; the
    /// wave controller starts it at `start_at` (an operator may start it early).
    Scheduled,
    /// Waves open as their predecessors' gates pass.
    Running,
    /// Paused by an operator: no new wave opens, no lease is granted; gates still halt.
    Paused,
    /// Stopped by its gate (failure budget crossed) or an operator: nothing new starts
    /// until the operator resumes, aborts or rolls back.
    Halted,
    /// Every wave passed its gate. Stragglers may still install.
    Completed,
    /// Stopped for good by an operator.
    Aborted,
    /// Its sites were sent back to the previous release.
    RolledBack,
}

impl RolloutStatus {
    pub const ALL: [RolloutStatus; 8] = [
        RolloutStatus::Pending,
        RolloutStatus::Scheduled,
        RolloutStatus::Running,
        RolloutStatus::Paused,
        RolloutStatus::Halted,
        RolloutStatus::Completed,
        RolloutStatus::Aborted,
        RolloutStatus::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutStatus::Pending => "pending",
            RolloutStatus::Scheduled => "scheduled",
            RolloutStatus::Running => "running",
            RolloutStatus::Paused => "paused",
            RolloutStatus::Halted => "halted",
            RolloutStatus::Completed => "completed",
            RolloutStatus::Aborted => "aborted",
            RolloutStatus::RolledBack => "rolled_back",
        }
    }

    pub fn parse(s: &str) -> Option<RolloutStatus> {
        RolloutStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// An active rollout (pending, scheduled, running, paused, halted) holds its sites: no other
    /// rollout may take them. A halted rollout waits for the operator's resume, abort or
    /// rollback.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RolloutStatus::Pending
                | RolloutStatus::Scheduled
                | RolloutStatus::Running
                | RolloutStatus::Paused
                | RolloutStatus::Halted
        )
    }

    /// Completed, aborted or rolled back: nothing will change any more.
    pub fn is_final(self) -> bool {
        !self.is_active()
    }

    /// Whether an operator may apply `action` to a rollout in this status, and if not, a
    /// sentence saying why (e.g. `only a pending rollout starts`). The one rule the
    /// engine enforces and the API and dashboard show.
    pub fn allows(self, action: ActionKind) -> Result<(), ActionRefused> {
        use RolloutStatus::*;
        let allowed = match action {
            ActionKind::Start => matches!(self, Pending | Scheduled),
            ActionKind::Pause => self == Running,
            ActionKind::Resume => matches!(self, Paused | Halted),
            ActionKind::Approve | ActionKind::Abort | ActionKind::Skip => self.is_active(),
            ActionKind::Rollback => matches!(self, Running | Paused | Halted | Completed),
            ActionKind::Retry => matches!(self, Running | Paused | Halted),
        };
        if allowed {
            Ok(())
        } else {
            Err(ActionRefused {
                status: self,
                action,
            })
        }
    }

    /// Every action this status allows, in a fixed order.
    pub fn allowed_actions(self) -> Vec<ActionKind> {
        ActionKind::ALL
            .into_iter()
            .filter(|a| self.allows(*a).is_ok())
            .collect()
    }
}

impl std::fmt::Display for RolloutStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RolloutStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RolloutStatus::parse(s).ok_or_else(|| format!("{s:?} is not a rollout status"))
    }
}

/// An operator action on a rollout, without its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionKind {
    Start,
    Pause,
    Resume,
    Approve,
    Abort,
    Rollback,
    Skip,
    /// Install again on failed sites (one, or every failed site of a wave).
    Retry,
}

impl ActionKind {
    pub const ALL: [ActionKind; 8] = [
        ActionKind::Start,
        ActionKind::Pause,
        ActionKind::Resume,
        ActionKind::Approve,
        ActionKind::Abort,
        ActionKind::Rollback,
        ActionKind::Skip,
        ActionKind::Retry,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Start => "start",
            ActionKind::Pause => "pause",
            ActionKind::Resume => "resume",
            ActionKind::Approve => "approve",
            ActionKind::Abort => "abort",
            ActionKind::Rollback => "rollback",
            ActionKind::Skip => "skip",
            ActionKind::Retry => "retry",
        }
    }

    /// What the action does, as the end of "cannot ...".
    fn cannot(self) -> &'static str {
        match self {
            ActionKind::Start => "start it (only a pending or scheduled rollout starts)",
            ActionKind::Pause => "pause it (only a running rollout pauses)",
            ActionKind::Resume => "resume it (only a paused or halted rollout resumes)",
            ActionKind::Approve => "approve a wave",
            ActionKind::Abort => "abort it",
            ActionKind::Rollback => "roll it back",
            ActionKind::Skip => "skip a site",
            ActionKind::Retry => "retry failed sites (only while it runs, is paused or halted)",
        }
    }
}

/// An action the rollout's status does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rollout is {status}: cannot {}", action.cannot())]
pub struct ActionRefused {
    pub status: RolloutStatus,
    pub action: ActionKind,
}

impl ActionRefused {
    /// The refusal for rollout `id`, as operators read it:
    /// `rollout ID is STATUS: cannot ...`.
    pub fn for_rollout(&self, id: &str) -> String {
        format!(
            "rollout {id} is {}: cannot {}",
            self.status,
            self.action.cannot()
        )
    }
}

/// Why a lease was refused: the `reason` of a 409 `lease_denied` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum LeaseDenialReason {
    /// The site is outside its maintenance window.
    OutsideWindow,
    /// A fleet freeze is in force.
    Frozen,
    /// The wave (or the site's compartment) has as many installs running as it allows.
    ConcurrencyLimit,
    RolloutPaused,
    RolloutHalted,
    /// The site has no assignment in this rollout.
    NotAssigned,
    /// The agent asked with an assignment sequence that is no longer current.
    StaleAssignment,
    /// The site asked to defer the install.
    Deferred,
    /// Another box of the site installs first (the plan's `box_order` and
    /// `max_unavailable_per_site`): ask again later.
    BoxOrder,
    /// A reason this build does not know (a newer coordinator): treated as "ask again".
    #[serde(other)]
    Unknown,
}

impl LeaseDenialReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseDenialReason::OutsideWindow => "outside_window",
            LeaseDenialReason::Frozen => "frozen",
            LeaseDenialReason::ConcurrencyLimit => "concurrency_limit",
            LeaseDenialReason::RolloutPaused => "rollout_paused",
            LeaseDenialReason::RolloutHalted => "rollout_halted",
            LeaseDenialReason::NotAssigned => "not_assigned",
            LeaseDenialReason::StaleAssignment => "stale_assignment",
            LeaseDenialReason::Deferred => "deferred",
            LeaseDenialReason::BoxOrder => "box_order",
            LeaseDenialReason::Unknown => "unknown",
        }
    }

    /// A refusal that asking again will not change: an agent resuming an install that
    /// changed nothing yet abandons it instead of waiting. `not_assigned` is not final: it
    /// also answers a site whose wave has not opened or that has not polled its assignment
    /// yet; an assignment really withdrawn shows in the next poll.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            LeaseDenialReason::StaleAssignment | LeaseDenialReason::RolloutHalted
        )
    }
}

impl std::fmt::Display for LeaseDenialReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_names() {
        for s in RolloutStatus::ALL {
            assert_eq!(RolloutStatus::parse(s.as_str()), Some(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert_eq!(RolloutStatus::parse("Running"), None);
    }

    #[test]
    fn the_action_table() {
        use ActionKind::*;
        use RolloutStatus::*;
        let table = [
            (Pending, vec![Start, Approve, Abort, Skip]),
            (Scheduled, vec![Start, Approve, Abort, Skip]),
            (Running, vec![Pause, Approve, Abort, Rollback, Skip, Retry]),
            (Paused, vec![Resume, Approve, Abort, Rollback, Skip, Retry]),
            (Halted, vec![Resume, Approve, Abort, Rollback, Skip, Retry]),
            (Completed, vec![Rollback]),
            (Aborted, vec![]),
            (RolledBack, vec![]),
        ];
        for (status, allowed) in table {
            assert_eq!(status.allowed_actions(), allowed, "{status}");
        }
        let refused = Completed.allows(Pause).unwrap_err();
        assert_eq!(
            refused.for_rollout("r-1"),
            "rollout r-1 is completed: cannot pause it (only a running rollout pauses)"
        );
    }

    #[test]
    fn final_is_not_active() {
        for s in RolloutStatus::ALL {
            assert_ne!(s.is_active(), s.is_final(), "{s}");
        }
    }

    #[test]
    fn unknown_lease_reasons_are_tolerated_and_not_final() {
        let r: LeaseDenialReason = serde_json::from_str("\"solar_eclipse\"").unwrap();
        assert_eq!(r, LeaseDenialReason::Unknown);
        assert!(!r.is_final());
        let r: LeaseDenialReason = serde_json::from_str("\"stale_assignment\"").unwrap();
        assert!(r.is_final());
        assert_eq!(
            serde_json::to_string(&LeaseDenialReason::OutsideWindow).unwrap(),
            "\"outside_window\""
        );
    }
}
