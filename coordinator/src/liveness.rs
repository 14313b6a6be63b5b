//! The wave controller's liveness: what `/readyz`, `/metrics` (`fleetwave_controller_up`,
//! `fleetwave_controller_restarts_total`) and the dashboard's banner report, written by
//! the controller (each completed pass) and by [`crate::supervisor`] (deaths and
//! restarts). Not running, or no completed pass for [`stale_after`] the tick, is a
//! problem in words. `Instant`s here measure how long the task has been quiet; they are
//! not clock reads.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// What is known about the controller task.
#[derive(Debug, Clone)]
pub struct ControllerStatus {
    /// The task runs (false from its death until its restart).
    pub running: bool,
    /// When the task last (re)started.
    pub started: Instant,
    /// When it last completed a pass over every rollout (None: not since the start of
    /// the process).
    pub last_pass: Option<Instant>,
    /// The same, as a time for people.
    pub last_pass_at: Option<Timestamp>,
    /// Why it last stopped, and when it restarts (None: it never stopped).
    pub stopped: Option<String>,
    /// How many times it was restarted.
    pub restarts: u64,
    /// Why this replica does not run passes although nothing is wrong: another replica
    /// leads the wave controller (see [`crate::leadership`]). None: it leads.
    pub standby: Option<String>,
    /// Another replica leads (known from the database), as opposed to not knowing who
    /// leads (the database does not answer).
    pub follower: bool,
    /// Why this replica's memory may not follow what other replicas commit (its change
    /// feed is down, or reloading after it broke); None: it follows, or nothing else
    /// writes (one process).
    pub incoherent: Option<String>,
}

impl ControllerStatus {
    /// Why this replica answers requests with 503 now (None: it serves): it does not know
    /// which replica leads (the database does not answer), another replica leads and
    /// followers stand by (`serve_as_follower` false: `storage.followers = "stand_by"`),
    /// or its memory may not follow other replicas' writes.
    pub fn refusal(&self, serve_as_follower: bool) -> Option<String> {
        if let Some(standby) = &self.standby
            && !(self.follower && serve_as_follower)
        {
            return Some(standby.clone());
        }
        self.incoherent.clone()
    }

    /// Why the controller is not doing its job at `now`, in words; None when it is: the
    /// task runs and completed a pass within `stale_after` (counted from its start until
    /// its first pass).
    pub fn problem(&self, now: Instant, stale_after: Duration) -> Option<String> {
        if self.running && self.standby.is_some() {
            return None;
        }
        if !self.running {
            return Some(format!(
                "the wave controller is not running: {}; no rollout advances, halts or \
                 completes until it is back",
                self.stopped.as_deref().unwrap_or("it has stopped")
            ));
        }
        let since = self.last_pass.unwrap_or(self.started).max(self.started);
        let quiet = now.saturating_duration_since(since);
        if quiet > stale_after {
            let last = match self.last_pass_at {
                Some(t) => format!("its last completed pass was at {t}"),
                None => "it has not completed a pass since it started".to_string(),
            };
            return Some(format!(
                "the wave controller has not completed a pass for {}s (expected at least \
                 every {}s): {last}; it may be stuck on the database or the engine lock",
                quiet.as_secs(),
                stale_after.as_secs()
            ));
        }
        None
    }
}

/// The controller's liveness, shared by the supervisor, the controller and the readers.
pub struct Liveness {
    status: watch::Sender<ControllerStatus>,
    up: Gauge,
    restarts: Counter,
}

impl Liveness {
    /// Running as of now (the server starts the controller with itself).
    pub fn new(metrics: &Metrics) -> Liveness {
        metrics.controller_up.set(1);
        Liveness {
            status: watch::Sender::new(ControllerStatus {
                running: true,
                started: Instant::now(),
                last_pass: None,
                last_pass_at: None,
                stopped: None,
                restarts: 0,
                standby: None,
                follower: false,
                incoherent: None,
            }),
            up: metrics.controller_up.clone(),
            restarts: metrics.controller_restarts.clone(),
        }
    }

    /// A copy of the current status.
    pub fn status(&self) -> ControllerStatus {
        self.status.borrow().clone()
    }

    /// Every change of the status (for tests and watchers).
    pub fn subscribe(&self) -> watch::Receiver<ControllerStatus> {
        self.status.subscribe()
    }

    /// The controller completed a pass.
    pub fn pass_completed(&self, at: Timestamp) {
        self.status.send_modify(|s| {
            s.last_pass = Some(Instant::now());
            s.last_pass_at = Some(at);
        });
    }

    /// What this replica now is to the wave controller: a leader is expected to complete
    /// passes from now on; a follower or a candidate stands by, which is no problem.
    pub fn role(&self, role: &crate::leadership::Role) {
        use crate::leadership::Role;
        self.status.send_modify(|s| match role {
            Role::Leader { .. } => {
                s.standby = None;
                s.follower = false;
                s.started = Instant::now();
            }
            Role::Follower { holder } => {
                s.follower = true;
                s.standby = Some(format!(
                    "replica {holder} leads the wave controller; this one stands by"
                ));
            }
            Role::Candidate => {
                s.follower = false;
                s.standby = Some(
                    "waiting to learn from the database which replica leads the wave controller"
                        .to_string(),
                );
            }
        });
    }

    /// Whether this replica's memory follows what other replicas commit (see
    /// [`ControllerStatus::incoherent`]).
    pub fn coherence(&self, problem: Option<String>) {
        self.status.send_if_modified(|s| {
            if s.incoherent == problem {
                return false;
            }
            s.incoherent = problem;
            true
        });
    }

    /// The task ended without a shutdown, for `why`; it restarts after `delay`.
    pub(crate) fn stopped(&self, why: String, delay: Duration) {
        self.up.set(0);
        self.status.send_modify(|s| {
            s.running = false;
            s.stopped = Some(format!(
                "{why} (restart {} in {}s)",
                s.restarts + 1,
                delay.as_secs_f64().ceil() as u64
            ));
        });
    }

    /// The task was started again.
    pub(crate) fn restarted(&self) {
        self.restarts.inc();
        self.up.set(1);
        self.status.send_modify(|s| {
            s.running = true;
            s.started = Instant::now();
            s.restarts += 1;
        });
    }
}

/// How long the controller may go without completing a pass before `/readyz` fails: ten
/// ticks, and never less than a minute (a pass waits for the engine lock, which a wave
/// opening on many sites holds while it signs their assignments).
pub fn stale_after(tick: Duration) -> Duration {
    tick.saturating_mul(10).max(Duration::from_secs(60))
}
