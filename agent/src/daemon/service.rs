//! Service plumbing: systemd status, the stop signals, the health sampler.

use std::sync::Arc;
use std::time::Duration;

use fleetwave_shared::protocol::EventBody;
use fleetwave_shared::service;
use jiff::Timestamp;

use crate::clock::Clock;
use crate::config::Config;
use crate::readiness::{Health, HealthSample};
use crate::state::Store;

/// systemd notifications (no-ops outside systemd).
pub(super) fn status(text: &str) {
    service::status(text);
}

pub(super) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Samples health every `health.interval_secs` and queues a heartbeat; the latest sample
/// is also kept for `status`.
pub(super) fn spawn_sampler(
    store: Store,
    health: Arc<Health>,
    config: &Config,
    clock: Clock,
) -> tokio::task::JoinHandle<()> {
    let every = Duration::from_secs(config.health.interval_secs);
    let max = config.outbox.max_events;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let sample = health.sample().await;
            record_sample(&store, &sample, max, clock.now());
        }
    })
}

/// Queues a heartbeat (at `now`) and keeps the sample for `status`.
pub fn record_sample(store: &Store, sample: &HealthSample, max_events: u64, now: Timestamp) {
    if let Ok(text) = serde_json::to_string(sample) {
        let _ = store.set_meta("last_health", &text);
    }
    if let Err(e) = store.outbox_push(
        EventBody::Health {
            healthy: sample.healthy(),
            summary: sample.summary(),
        },
        now,
        max_events,
    ) {
        tracing::error!("cannot queue a health heartbeat: {e}");
    }
}
