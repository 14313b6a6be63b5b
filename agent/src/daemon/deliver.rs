//! Delivering reports: sending the outbox in batches, splitting refused batches, moving
//! poison events to the dead letters; then the queued golden-signal minutes, in batches
//! the size the coordinator asked for (none to a coordinator that did not ask).

use std::time::Duration;

use fleetwave_shared::protocol::ReportBatch;
use fleetwave_shared::protocol::signals::MAX_SIGNAL_MINUTES_PER_REPORT;

use super::{Context, Daemon};
use crate::client::Session;
use crate::state::StateError;

impl Daemon {
    pub(super) async fn deliver_reports(&mut self) {
        if let Some(session) = &self.session {
            deliver_reports(&self.ctx, session).await;
            // Signals go after the events, and only when every event went: an outage
            // costs one failed request per round, not two.
            if self.ctx.store.outbox_len().is_ok_and(|n| n == 0) {
                deliver_signals(&self.ctx, session).await;
            }
        }
    }
}

/// Sends queued reports in batches until the outbox is empty or a send fails; returns how
/// many were acknowledged.
///
/// A batch the coordinator refuses for its content ([`ClientError::refuses_content`]: 413
/// too large, 400 malformed) is split in halves, first half first, until the refused
/// events stand alone; a single event still refused is a poison event and moves to the
/// dead letters (kept in `agent.db`, shown by `status`, logged at warn), and delivery goes
/// on with the events after it. Any other failure (unreachable, 5xx, 401, 403, 408, 429)
/// leaves every event queued for the next round.
pub async fn deliver_reports(ctx: &Context, session: &Session) -> usize {
    let timeout = Duration::from_secs(ctx.config.coordinator.request_timeout_secs);
    let mut delivered = 0;
    loop {
        let batch = match ctx
            .store
            .outbox_batch(ctx.config.outbox.batch_size, ctx.clock.now())
        {
            Ok(b) if !b.is_empty() => b,
            Ok(_) => return delivered,
            Err(e) => {
                tracing::error!("cannot read the outbox: {e}");
                return delivered;
            }
        };
        // Chunks still to send, the next one last (so the queue order is kept).
        let mut pending = vec![batch];
        while let Some(events) = pending.pop() {
            let batch = ReportBatch {
                events,
                signals: vec![],
            };
            let result = session.report(&batch, timeout).await;
            let mut events = batch.events;
            match result {
                Ok(ack) => {
                    tracing::debug!(
                        accepted = ack.accepted,
                        duplicates = ack.duplicates,
                        "reports delivered"
                    );
                    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
                    if let Err(e) = ctx.store.outbox_ack(&ids) {
                        tracing::error!("cannot remove delivered reports: {e}");
                        return delivered;
                    }
                    delivered += ids.len();
                }
                Err(e) => match e.refuses_content() {
                    Some(refused) if events.len() > 1 => {
                        let second = events.split_off(events.len() / 2);
                        tracing::info!(
                            status = refused.status,
                            code = %refused.code,
                            events = events.len() + second.len(),
                            "the coordinator refused a report batch; sending it in halves \
                             to find the refused event(s): {}",
                            refused.message
                        );
                        pending.push(second);
                        pending.push(events);
                    }
                    Some(refused) => {
                        let event = &events[0];
                        if let Err(e) = dead_letter(ctx, event, &refused) {
                            tracing::error!("cannot move a refused report aside: {e}");
                            return delivered;
                        }
                    }
                    None => {
                        tracing::info!(
                            queued = events.len() + pending.iter().map(Vec::len).sum::<usize>(),
                            "reports not delivered yet: {e}"
                        );
                        return delivered;
                    }
                },
            }
        }
    }
}

/// The `meta` key of the last word on signal delivery (for `status`): why minutes stay
/// queued, or the last refusal.
pub const SIGNAL_DELIVERY_KEY: &str = "signals:delivery";

/// Sends queued signal minutes in batches of at most what the coordinator's session
/// answer allows, until the queue is empty or a send fails; returns how many minutes were
/// acknowledged. A coordinator that does not take signals (an older one) gets none: the
/// minutes stay queued (bounded, oldest dropped first) and `status` says why. A batch
/// refused for its content (400, 413) cannot be sent as it is: its minutes are dropped
/// with a warning and the refusal is kept for `status`.
pub async fn deliver_signals(ctx: &Context, session: &Session) -> usize {
    let timeout = Duration::from_secs(ctx.config.coordinator.request_timeout_secs);
    let note = |text: &str| {
        if ctx
            .store
            .meta(SIGNAL_DELIVERY_KEY)
            .ok()
            .flatten()
            .as_deref()
            != Some(text)
        {
            let _ = ctx.store.set_meta(SIGNAL_DELIVERY_KEY, text);
        }
    };
    if ctx.store.signals_len().is_ok_and(|n| n == 0) {
        return 0;
    }
    let per_report = match session.signal_minutes_per_report().await {
        Ok(Some(n)) if n > 0 => (n as usize).min(MAX_SIGNAL_MINUTES_PER_REPORT),
        Ok(_) => {
            note("the coordinator takes no signals (an older version): minutes stay queued");
            return 0;
        }
        Err(e) => {
            tracing::info!("signal minutes not delivered yet: {e}");
            return 0;
        }
    };
    let mut delivered = 0;
    loop {
        let batch = match ctx.store.signals_batch(per_report) {
            Ok(b) if !b.is_empty() => b,
            Ok(_) => return delivered,
            Err(e) => {
                tracing::error!("cannot read the signal queue: {e}");
                return delivered;
            }
        };
        let (seqs, minutes): (Vec<i64>, Vec<_>) = batch.into_iter().unzip();
        let n = minutes.len();
        let report = ReportBatch {
            events: vec![],
            signals: minutes,
        };
        match session.report(&report, timeout).await {
            Ok(_) => {
                if let Err(e) = ctx.store.signals_ack(&seqs) {
                    tracing::error!("cannot remove delivered signal minutes: {e}");
                    return delivered;
                }
                note("delivering");
                delivered += n;
            }
            Err(e) => match e.refuses_content() {
                Some(refused) => {
                    tracing::warn!(
                        minutes = n,
                        status = refused.status,
                        code = %refused.code,
                        "the coordinator refused a batch of signal minutes ({}); dropped them",
                        refused.message
                    );
                    note(&format!(
                        "the coordinator refused {n} minute(s) at {}, dropped: {} ({})",
                        ctx.clock.now(),
                        refused.message,
                        refused.code
                    ));
                    if let Err(e) = ctx.store.signals_ack(&seqs) {
                        tracing::error!("cannot drop refused signal minutes: {e}");
                        return delivered;
                    }
                }
                None => {
                    tracing::info!(minutes = n, "signal minutes not delivered yet: {e}");
                    return delivered;
                }
            },
        }
    }
}

/// Moves an event the coordinator refused on its own to the dead letters, saying so.
pub(super) fn dead_letter(
    ctx: &Context,
    event: &fleetwave_shared::protocol::Event,
    refused: &crate::state::outbox::Refused,
) -> Result<(), StateError> {
    let kind = crate::state::outbox::kind(&event.body);
    ctx.store
        .outbox_dead_letter(&event.id, refused, ctx.clock.now())?;
    let what = if kind == "health" {
        "a health heartbeat"
    } else {
        "an event the coordinator has NOT seen"
    };
    tracing::warn!(
        event_id = %event.id,
        kind,
        status = refused.status,
        code = %refused.code,
        "the coordinator refused a {kind} report on its own ({}: {}); it is {what}, kept as a \
         dead letter in agent.db (see `fleetwave-agent status`); delivering the reports after it",
        refused.code,
        refused.message
    );
    Ok(())
}
