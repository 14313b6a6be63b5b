//! Delivering reports: sending the outbox in batches, splitting refused batches, moving
//! poison events to the dead letters.

use std::time::Duration;

use fleetwave_shared::protocol::ReportBatch;

use super::{Context, Daemon};
use crate::client::Session;
use crate::state::StateError;

impl Daemon {
    pub(super) async fn deliver_reports(&mut self) {
        if let Some(session) = &self.session {
            deliver_reports(&self.ctx, session).await;
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
            let batch = ReportBatch { events };
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
