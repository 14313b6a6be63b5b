//! Talking to systemd, for both daemons: readiness, status, stopping, and the watchdog.
//! Every call is a no-op when the process does not run under systemd (`NOTIFY_SOCKET`
//! unset). Feature `service`.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tells systemd the daemon is up (`Type=notify` units wait for this).
pub fn ready() {
    notify(&[NotifyState::Ready]);
}

/// Tells systemd the daemon is shutting down.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// One line for `systemctl status`.
pub fn status(text: &str) {
    notify(&[NotifyState::Status(text)]);
}

fn notify(state: &[NotifyState<'_>]) {
    // Failing to reach systemd's socket changes nothing for the daemon: it keeps running.
    let _ = sd_notify::notify(false, state);
}

/// Pings the systemd watchdog at half its timeout when the unit sets `WatchdogSec=`
/// (`WATCHDOG_USEC`): a runtime that stops scheduling tasks is killed and restarted.
/// None when no watchdog is configured. Abort the task (or drop the runtime) on shutdown.
pub fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    let every = Duration::from_micros(usec / 2);
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            notify(&[NotifyState::Watchdog]);
        }
    }))
}
