//! The install state machine: which step an install runs next, as a pure function.
//!
//! [`next`] takes the state an install is in and what just happened (an [`Event`]) and
//! returns the [`Transition`]: the next state and what the daemon must do. It does no I/O
//! and reads no clock; the daemon (`daemon::install`, `daemon::rollback`) runs the steps,
//! writes the journal and reports, and feeds each result back in. [`resume`] is where an
//! install found open at start-up picks up again ([`journal::recovery`] decides).
//!
//! ```text
//!   Prepare ──ok──▶ Install ──ok──▶ Verify ──ok──▶ Commit ──ok──▶ Committed
//!     │  ╰─retryable─▶ (wait) ╰─restart agent─▶ HandedOver        ╰─failed─▶ (wait)
//!     ╰─failed / no executor─▶ Abandoned
//!   Install, Verify ──failed / refused──▶ Rollback ──ok──▶ RolledBack
//!   Rollback ──failed (attempt n < rollback_attempts)──▶ Rollback (wait)
//!   Rollback ──failed (attempt n = rollback_attempts)──▶ RollbackFailed
//! ```

use crate::state::journal::{self, Outcome, Recovery, Step, StepState};

/// Where an install is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Downloading and unpacking; nothing on the box changed yet.
    Prepare,
    /// Switching to the new version.
    Install,
    /// Watching health for the verify period after the switch.
    Verify,
    /// Health was verified: recording the new version as committed.
    Commit,
    /// Switching back; `failures` rollback attempts failed so far.
    Rollback { failures: u32 },
    /// The agent replaced itself and exits; the new agent verifies (journal: `verify`).
    HandedOver,
    /// The install ended (the journal entry is closed with this outcome).
    Done(Outcome),
}

impl State {
    /// The state of an install that starts (or goes on) at journal step `step`.
    pub fn at(step: Step) -> State {
        match step {
            Step::Leased | Step::Prepare => State::Prepare,
            Step::Install => State::Install,
            Step::Verify => State::Verify,
            Step::Commit => State::Commit,
            Step::Rollback => State::Rollback { failures: 0 },
        }
    }

    /// The journal step this state runs, if it runs one.
    pub fn step(self) -> Option<Step> {
        match self {
            State::Prepare => Some(Step::Prepare),
            State::Install => Some(Step::Install),
            State::Verify => Some(Step::Verify),
            State::Commit => Some(Step::Commit),
            State::Rollback { .. } => Some(Step::Rollback),
            State::HandedOver | State::Done(_) => None,
        }
    }

    /// Whether the install is over for this agent process.
    pub fn is_final(self) -> bool {
        matches!(self, State::HandedOver | State::Done(_))
    }
}

/// What happened in the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The state's step succeeded (for `Verify`: healthy for the whole period).
    Succeeded,
    /// The state's step failed. `retryable`: a download that may work later (`Prepare`);
    /// a bookkeeping failure of a commit is always retried.
    Failed { retryable: bool },
    /// The install step replaced the agent itself: restart into the new agent.
    RestartAgent,
    /// No executor can handle the release (bad install parameters).
    NoExecutor,
    /// The documents no longer verify (for `Rollback`: the release cannot be read at all).
    Refused,
}

/// What the daemon does after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run the new state's step now.
    Run,
    /// Run the new state's step again later (after its back-off); the journal entry stays
    /// open at that step and polls go on meanwhile.
    RetryLater,
    /// Start the self-update guard and restart the service.
    Exit,
    /// Close the journal entry with the outcome of the new (final) state.
    Finish,
    /// Nothing (an event for a final state).
    None,
}

/// The next state and what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub state: State,
    pub action: Action,
}

/// What the transitions depend on besides state and event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `install.rollback_attempts`: failed rollback attempts before giving up (at least 1).
    pub rollback_attempts: u32,
}

fn go(state: State, action: Action) -> Transition {
    Transition { state, action }
}

/// The install state machine. Pure: same state and event, same transition.
pub fn next(state: State, event: Event, policy: Policy) -> Transition {
    use Action::*;
    use Event::*;
    let rollback = State::Rollback { failures: 0 };
    let done = |o| go(State::Done(o), Finish);
    match (state, event) {
        (State::HandedOver | State::Done(_), _) => go(state, None),
        (State::Rollback { failures }, Failed { .. } | NoExecutor) => {
            let failures = failures.saturating_add(1);
            if failures >= policy.rollback_attempts.max(1) {
                done(Outcome::RollbackFailed)
            } else {
                go(State::Rollback { failures }, RetryLater)
            }
        }
        (State::Rollback { .. }, Succeeded) => done(Outcome::RolledBack),
        // Nothing can be rolled back with an unreadable release: closed as rolled back.
        (State::Rollback { .. }, Refused) => done(Outcome::RolledBack),
        (State::Rollback { .. }, RestartAgent) => go(state, Run),
        // No executor: nothing was done by this process; closed.
        (_, NoExecutor) => done(Outcome::Abandoned),
        // A document that no longer verifies is never acted on: back to the previous one.
        (_, Refused) => go(rollback, Run),
        (State::Prepare, Succeeded) => go(State::Install, Run),
        (State::Prepare, Failed { retryable: true }) => go(State::Prepare, RetryLater),
        (State::Prepare, Failed { retryable: false }) => done(Outcome::Abandoned),
        (State::Install, Succeeded) => go(State::Verify, Run),
        (State::Install, RestartAgent) => go(State::HandedOver, Exit),
        (State::Install | State::Verify, Failed { .. }) => go(rollback, Run),
        (State::Verify, Succeeded) => go(State::Commit, Run),
        (State::Commit, Succeeded) => done(Outcome::Committed),
        // Verified healthy: a failed bookkeeping step is retried, not rolled back.
        (State::Commit, Failed { .. }) => go(State::Commit, RetryLater),
        // Only the install step replaces the agent; elsewhere the event means nothing.
        (State::Prepare | State::Verify | State::Commit, RestartAgent) => go(state, Run),
    }
}

/// The state an install found open at start-up resumes in: `journal::recovery` decides
/// from the step and state the journal recorded and whether the assignment may still be
/// acted on; `failures` are the rollback attempts already failed (kept across restarts).
pub fn resume(step: Step, state: StepState, assignment_current: bool, failures: u32) -> State {
    match journal::recovery(step, state, assignment_current) {
        Recovery::Resume => State::Prepare,
        Recovery::Abandon => State::Done(Outcome::Abandoned),
        Recovery::Reinstall => State::Install,
        Recovery::Reverify => State::Verify,
        Recovery::FinishCommit => State::Commit,
        Recovery::RollBack | Recovery::FinishRollback => State::Rollback { failures },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POLICY: Policy = Policy {
        rollback_attempts: 3,
    };

    fn t(state: State, event: Event) -> (State, Action) {
        let t = next(state, event, POLICY);
        (t.state, t.action)
    }

    const RB: State = State::Rollback { failures: 0 };

    #[test]
    fn the_happy_path_runs_every_step_in_order() {
        let mut s = State::Prepare;
        let mut steps = vec![];
        while let Some(step) = s.step() {
            steps.push(step);
            let tr = next(s, Event::Succeeded, POLICY);
            s = tr.state;
        }
        assert_eq!(
            steps,
            [Step::Prepare, Step::Install, Step::Verify, Step::Commit]
        );
        assert_eq!(s, State::Done(Outcome::Committed));
    }

    #[test]
    fn each_transition() {
        use Action::*;
        use Event::*;
        let no = Failed { retryable: false };
        let yes = Failed { retryable: true };
        let done = |o| (State::Done(o), Finish);
        // Prepare: nothing changed yet.
        assert_eq!(t(State::Prepare, Succeeded), (State::Install, Run));
        assert_eq!(t(State::Prepare, yes), (State::Prepare, RetryLater));
        assert_eq!(t(State::Prepare, no), done(Outcome::Abandoned));
        assert_eq!(t(State::Prepare, NoExecutor), done(Outcome::Abandoned));
        assert_eq!(t(State::Prepare, Refused), (RB, Run));
        // Install.
        assert_eq!(t(State::Install, Succeeded), (State::Verify, Run));
        assert_eq!(t(State::Install, RestartAgent), (State::HandedOver, Exit));
        assert_eq!(t(State::Install, no), (RB, Run));
        assert_eq!(t(State::Install, yes), (RB, Run));
        assert_eq!(t(State::Install, Refused), (RB, Run));
        assert_eq!(t(State::Install, NoExecutor), done(Outcome::Abandoned));
        // Verify.
        assert_eq!(t(State::Verify, Succeeded), (State::Commit, Run));
        assert_eq!(t(State::Verify, no), (RB, Run));
        assert_eq!(t(State::Verify, Refused), (RB, Run));
        // Commit: verified healthy, so a failure is retried.
        assert_eq!(t(State::Commit, Succeeded), done(Outcome::Committed));
        assert_eq!(t(State::Commit, no), (State::Commit, RetryLater));
        assert_eq!(t(State::Commit, Refused), (RB, Run));
        // Rollback, bounded.
        assert_eq!(t(RB, Succeeded), done(Outcome::RolledBack));
        assert_eq!(t(RB, Refused), done(Outcome::RolledBack));
        assert_eq!(t(RB, no), (State::Rollback { failures: 1 }, RetryLater));
        assert_eq!(
            t(State::Rollback { failures: 1 }, NoExecutor),
            (State::Rollback { failures: 2 }, RetryLater)
        );
        assert_eq!(
            t(State::Rollback { failures: 2 }, no),
            done(Outcome::RollbackFailed)
        );
        // Final states stay.
        for s in [State::HandedOver, State::Done(Outcome::Committed)] {
            assert_eq!(t(s, Succeeded), (s, None));
        }
    }

    #[test]
    fn one_rollback_attempt_means_no_retry() {
        let p = Policy {
            rollback_attempts: 1,
        };
        assert_eq!(
            next(RB, Event::Failed { retryable: true }, p).state,
            State::Done(Outcome::RollbackFailed)
        );
        let p = Policy {
            rollback_attempts: 0,
        };
        assert_eq!(
            next(RB, Event::NoExecutor, p).state,
            State::Done(Outcome::RollbackFailed)
        );
    }

    #[test]
    fn resume_follows_the_recovery_decision() {
        use StepState::*;
        assert_eq!(resume(Step::Leased, Done, true, 0), State::Prepare);
        assert_eq!(
            resume(Step::Prepare, Started, false, 0),
            State::Done(Outcome::Abandoned)
        );
        assert_eq!(resume(Step::Install, Started, true, 0), State::Install);
        assert_eq!(
            resume(Step::Install, Started, false, 2),
            State::Rollback { failures: 2 }
        );
        assert_eq!(resume(Step::Verify, Started, true, 0), State::Verify);
        assert_eq!(resume(Step::Verify, Done, false, 0), State::Commit);
        assert_eq!(
            resume(Step::Rollback, Started, true, 1),
            State::Rollback { failures: 1 }
        );
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            Just(Event::Succeeded),
            any::<bool>().prop_map(|retryable| Event::Failed { retryable }),
            Just(Event::RestartAgent),
            Just(Event::NoExecutor),
            Just(Event::Refused),
        ]
    }

    fn step() -> impl Strategy<Value = Step> {
        proptest::sample::select(Step::ALL.to_vec())
    }

    fn step_state() -> impl Strategy<Value = StepState> {
        prop_oneof![Just(StepState::Started), Just(StepState::Done)]
    }

    /// Runs `events` from `start`; once they are used up, every step succeeds (the world
    /// stops failing). Returns the states visited with the events that led there.
    fn run(start: State, events: &[Event], policy: Policy) -> Vec<(State, Event, State)> {
        let mut s = start;
        let mut trace = vec![];
        let mut more = events
            .iter()
            .copied()
            .chain(std::iter::repeat(Event::Succeeded));
        for _ in 0..events.len() + 16 {
            if s.is_final() {
                break;
            }
            let e = more.next().unwrap();
            let n = next(s, e, policy).state;
            trace.push((s, e, n));
            s = n;
        }
        trace
    }

    proptest! {
        /// Never committed without a healthy verify after the switch: `Commit` is entered
        /// only from a succeeded `Verify` (or resumed where the journal says verify was done).
        #[test]
        fn commit_only_after_a_successful_health_check(
            start in prop_oneof![Just(State::Prepare), Just(State::Install), Just(State::Verify)],
            events in proptest::collection::vec(event(), 0..40),
            attempts in 1u32..6,
        ) {
            let policy = Policy { rollback_attempts: attempts };
            for (from, e, to) in run(start, &events, policy) {
                if to == State::Commit && from != State::Commit {
                    prop_assert_eq!((from, e), (State::Verify, Event::Succeeded));
                }
                if to == State::Done(Outcome::Committed) {
                    prop_assert_eq!((from, e), (State::Commit, Event::Succeeded));
                }
            }
        }

        /// A failure after the switch always ends rolled back or rollback failed, within
        /// `rollback_attempts` attempts, whatever else happens.
        #[test]
        fn a_failed_step_after_the_switch_ends_rolled_back_or_rollback_failed(
            from in prop_oneof![Just(State::Install), Just(State::Verify)],
            events in proptest::collection::vec(event(), 0..40),
            attempts in 1u32..6,
        ) {
            let policy = Policy { rollback_attempts: attempts };
            let first = next(from, Event::Failed { retryable: false }, policy).state;
            prop_assert_eq!(first, State::Rollback { failures: 0 });
            // From the rollback on, every event may fail: it still ends.
            let mut s = first;
            let mut failed_attempts = 0;
            for e in events.iter().copied().chain(std::iter::repeat(Event::Failed { retryable: true })) {
                if s.is_final() {
                    break;
                }
                if matches!(e, Event::Failed { .. } | Event::NoExecutor) {
                    failed_attempts += 1;
                }
                s = next(s, e, policy).state;
                prop_assert!(failed_attempts <= attempts);
            }
            prop_assert!(
                matches!(s, State::Done(Outcome::RolledBack | Outcome::RollbackFailed)),
                "ended in {:?}", s
            );
        }

        /// An install found open after a crash at any persisted step, with any history of
        /// failed rollbacks, reaches a final state once the world stops failing, and never
        /// runs more than `rollback_attempts` failed rollback attempts in all.
        #[test]
        fn crash_resume_from_any_persisted_step_reaches_a_final_state(
            step in step(),
            state in step_state(),
            current in any::<bool>(),
            attempts in 1u32..6,
            already in 0u32..6,
            events in proptest::collection::vec(event(), 0..40),
        ) {
            let policy = Policy { rollback_attempts: attempts };
            // Failed rollback attempts are on record only for an install the journal
            // shows rolling back.
            let already = if step == Step::Rollback { already.min(attempts - 1) } else { 0 };
            let start = resume(step, state, current, already);
            let trace = run(start, &events, policy);
            let end = trace.last().map_or(start, |(_, _, s)| *s);
            prop_assert!(end.is_final(), "stuck in {:?} after {:?}", end, trace);
            let failed_rollbacks = trace
                .iter()
                .filter(|(from, e, _)| {
                    matches!(from, State::Rollback { .. })
                        && matches!(e, Event::Failed { .. } | Event::NoExecutor)
                })
                .count() as u32;
            prop_assert!(already + failed_rollbacks <= attempts);
            // Nothing changed on the box: never rolled back, only abandoned or resumed.
            if matches!(step, Step::Leased | Step::Prepare) && !current {
                prop_assert_eq!(end, State::Done(Outcome::Abandoned));
            }
        }

        /// The function is pure: the same state and event give the same transition.
        #[test]
        fn next_is_deterministic(
            step in step(),
            failures in 0u32..5,
            e in event(),
            attempts in 1u32..6,
        ) {
            let s = match State::at(step) {
                State::Rollback { .. } => State::Rollback { failures },
                s => s,
            };
            let p = Policy { rollback_attempts: attempts };
            prop_assert_eq!(next(s, e, p), next(s, e, p));
        }
    }
}
