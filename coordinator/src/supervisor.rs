//! Keeps the wave controller running, and says whether it is.
//!
//! [`supervise`] runs the controller in a task of its own and starts it again, after a
//! back-off, whenever it ends without a shutdown (a panic or an unexpected return).
//! [`Liveness`] is what `/readyz`, `/metrics` (`fleetwave_controller_up`,
//! `fleetwave_controller_restarts_total`) and the dashboard's banner report: not running,
//! or no completed pass for [`stale_after`] the tick, is a problem in words.
//!
//! A rollout whose evaluation fails is the engine's business (it halts that rollout and
//! goes on); this module sees only the controller as a whole and never decides anything
//! about a rollout.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::state::AppState;

pub use crate::liveness::{ControllerStatus, Liveness, stale_after};

/// Waits between a death of the controller and its restart: `first`, doubling up to
/// `max`; back to `first` once a run lasted `reset_after`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Backoff {
    pub const DEFAULT: Backoff = Backoff {
        first: Duration::from_secs(1),
        max: Duration::from_secs(60),
        reset_after: Duration::from_secs(300),
    };
}

/// Runs `run(app)` in its own task until shutdown, starting it again after `backoff`
/// whenever it ends otherwise (a panic or a return), and records all of it in
/// `app.controller` and the log.
pub async fn supervise<F, Fut>(app: AppState, run: F, backoff: Backoff)
where
    F: Fn(AppState) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut shutdown = app.shutdown.clone();
    let mut delay = backoff.first;
    loop {
        let began = Instant::now();
        let ended = tokio::spawn(run(app.clone())).await;
        if *shutdown.borrow() {
            return;
        }
        let why = match ended {
            Ok(()) => "it returned without a shutdown".to_string(),
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                format!("it panicked: {}", panic_message(&*payload))
            }
            Err(e) => format!("its task ended: {e}"),
        };
        if began.elapsed() >= backoff.reset_after {
            delay = backoff.first;
        }
        tracing::error!(
            reason = %why,
            restart_in_secs = delay.as_secs_f64(),
            "the wave controller stopped; restarting it"
        );
        app.controller.stopped(why, delay);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
        delay = delay.saturating_mul(2).min(backoff.max);
        app.controller.restarted();
    }
}

pub use crate::engine::panic_message;

/// Runs the engine's wave controller ([`crate::engine::Engine::run_controller`]) at the
/// configured tick until shutdown while this replica leads ([`crate::leadership`]; on
/// SQLite, always), recording each completed pass in `app.controller`.
pub async fn run_controller(app: AppState) {
    let leadership = std::sync::Arc::new(crate::leadership::Leadership::configured(
        app.db.clone(),
        &app.config,
    ));
    run_controller_for(app, leadership).await
}

/// [`run_controller`] with this replica's claimant (the server claims once before it
/// serves, then runs this).
pub async fn run_controller_for(
    app: AppState,
    leadership: std::sync::Arc<crate::leadership::Leadership>,
) {
    let tick = Duration::from_millis(app.config.controller.tick_millis);
    let app = &app;
    leadership
        .lead(
            app.shutdown.clone(),
            |role| app.controller.role(role),
            |fence| async move {
                // Another replica may have led since this one last did (a token other
                // than SQLite's 0): what it changed is read from the store again, not
                // from this replica's memory.
                if fence.token != 0 {
                    app.engine.facts.clear();
                    if let Err(e) = app.engine.load_poll_cache().await {
                        tracing::warn!(error = %e, "could not reload the poll cache on taking over the wave controller; the controller's passes refresh it");
                    }
                }
                app.engine
                    .run_controller(tick, app.shutdown.clone(), |at| {
                        app.controller.pass_completed(at)
                    })
                    .await
            },
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(running: bool, started: Instant, last_pass: Option<Instant>) -> ControllerStatus {
        ControllerStatus {
            running,
            started,
            last_pass,
            last_pass_at: None,
            stopped: (!running).then(|| "it panicked: boom (restart 1 in 1s)".to_string()),
            restarts: 0,
            standby: None,
            follower: false,
            incoherent: None,
        }
    }

    #[test]
    fn a_controller_that_stopped_or_went_quiet_is_a_problem_in_words() {
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Running, passes completing: fine.
        assert_eq!(
            status(true, t0, Some(at(50))).problem(at(100), minute),
            None
        );
        // Just started, no pass yet: fine for a while, then a problem.
        assert_eq!(status(true, t0, None).problem(at(59), minute), None);
        let p = status(true, t0, None).problem(at(61), minute).unwrap();
        assert!(p.contains("has not completed a pass for 61s"), "{p}");
        // Passes stopped completing (stuck).
        let p = status(true, t0, Some(at(10)))
            .problem(at(200), minute)
            .unwrap();
        assert!(p.contains("not completed a pass for 190s"), "{p}");
        // A restart counts from the restart, not from a pass before the death.
        assert_eq!(
            status(true, at(300), Some(at(10))).problem(at(330), minute),
            None
        );
        // Not running: a problem at once, with the reason.
        let p = status(false, t0, Some(at(1)))
            .problem(at(2), minute)
            .unwrap();
        assert!(p.starts_with("the wave controller is not running: it panicked: boom"));
    }

    #[test]
    fn stale_after_is_ten_ticks_and_at_least_a_minute() {
        assert_eq!(
            stale_after(Duration::from_millis(1000)),
            Duration::from_secs(60)
        );
        assert_eq!(
            stale_after(Duration::from_secs(60)),
            Duration::from_secs(600)
        );
    }

    #[test]
    fn panic_messages_are_read_from_str_and_string_payloads() {
        let p = std::panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_message(&*p), "static");
        let p = std::panic::catch_unwind(|| panic!("formatted {}", 7)).unwrap_err();
        assert_eq!(panic_message(&*p), "formatted 7");
    }
}
