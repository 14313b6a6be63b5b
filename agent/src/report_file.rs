//! `fleetwave-agent export-reports --out FILE`: the queued outbox of an air-gapped box as
//! one file for an operator to carry back (`fleetwave site import-reports FILE`).
//!
//! The file is a DSSE envelope (payload type
//! [`REPORT_FILE_TYPE`](fleetwave_shared::protocol::report_file::REPORT_FILE_TYPE)) over a
//! [`ReportFile`]: the site id, when it was written, and the queued events with the ids
//! they would be sent with online, signed with the box's device key. Exporting changes
//! nothing in the outbox: events stay queued until the coordinator acknowledges them
//! online, and the coordinator applies each id once, so a file imported and the same
//! events sent later count once. This module must never delete or alter a queued event.

use std::io::Write as _;
use std::path::Path;

use fleetwave_shared::Envelope;
use fleetwave_shared::dsse::MAX_ENVELOPE_BYTES;
use fleetwave_shared::protocol::report_file::{
    MAX_REPORT_FILE_EVENTS, REPORT_FILE_FORMAT, REPORT_FILE_TYPE, ReportFile,
};
use serde::Serialize;

use crate::daemon::{Context, DaemonError};
use crate::state::StateError;

/// Bytes of a report file's payload besides its events (format, site id, time, brackets).
const PAYLOAD_OVERHEAD: usize = 4096;

/// Why no report file was written.
#[derive(Debug, thiserror::Error)]
pub enum ReportFileError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Key(#[from] DaemonError),
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exported {
    pub site_id: String,
    /// Events in the file.
    pub events: usize,
    /// Queued events left out (newer ones, beyond what one file carries); they go in a
    /// later file or online.
    pub left_out: u64,
    /// Size of the file.
    pub bytes: u64,
}

/// Writes the queued outbox (oldest first, as many events as one file carries) to `out`,
/// signed with the device key; written to `out.partial` and renamed when complete.
pub fn export(ctx: &Context, out: &Path) -> Result<Exported, ReportFileError> {
    let queued = ctx.store.outbox_len()?;
    let mut events = ctx.store.outbox_peek(MAX_REPORT_FILE_EVENTS)?;
    // Keep the oldest events whose JSON fits the envelope's payload limit.
    let mut size = PAYLOAD_OVERHEAD;
    let mut fit = 0;
    for e in &events {
        let n = serde_json::to_vec(e)
            .map(|v| v.len() + 1)
            .unwrap_or(usize::MAX);
        if size.saturating_add(n) > MAX_ENVELOPE_BYTES {
            break;
        }
        size += n;
        fit += 1;
    }
    events.truncate(fit);
    let file = ReportFile {
        format: REPORT_FILE_FORMAT.to_string(),
        site_id: ctx.site_id.clone(),
        created_at: ctx.clock.now(),
        events,
    };
    let payload = serde_json::to_vec(&file).expect("a report file always serializes");
    let key = ctx.device_key()?;
    let envelope = Envelope::sign(REPORT_FILE_TYPE, &payload, &[&key]);
    let bytes = envelope.to_json();
    write_atomically(out, &bytes)?;
    Ok(Exported {
        site_id: ctx.site_id.clone(),
        events: file.events.len(),
        left_out: queued.saturating_sub(file.events.len() as u64),
        bytes: bytes.len() as u64,
    })
}

fn write_atomically(out: &Path, bytes: &[u8]) -> Result<(), ReportFileError> {
    let partial = out.with_extension("partial");
    let err = |p: &Path, e: std::io::Error| ReportFileError::Write {
        path: p.display().to_string(),
        message: e.to_string(),
    };
    let mut f = std::fs::File::create(&partial).map_err(|e| err(&partial, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| err(&partial, e))?;
    std::fs::rename(&partial, out).map_err(|e| err(out, e))
}
