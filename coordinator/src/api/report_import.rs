//! `POST /v1/sites/{id}/reports/import`: an air-gapped site's reports, carried back by file
//! (`fleetwave-agent export-reports`, then `fleetwave site import-reports FILE`).
//!
//! The file is a DSSE envelope signed with the site's device key. It is verified against
//! the key the site enrolled before a byte of it is parsed; its events then go through the
//! engine's report path exactly as an online batch does ([`crate::engine::Engine::apply_reports`]),
//! so each event id counts once, whether it came by file, twice by file, or online too.
//! This module never applies an event of a file that does not verify.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fleetwave_shared::Envelope;
use fleetwave_shared::dsse::KeyRing;
use fleetwave_shared::keys::{KeyId, parse_public_key};
use fleetwave_shared::protocol::MAX_REPORT_EVENTS;
use fleetwave_shared::protocol::operator::{Permission, SiteState};
use fleetwave_shared::protocol::report_file::{
    MAX_REPORT_FILE_EVENTS, REPORT_FILE_FORMAT, REPORT_FILE_TYPE, ReportFile, ReportImport,
};

use super::operator::load_site;
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::http::auth::Operator;
use crate::state::AppState;

fn refused(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

pub async fn import_reports(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
    ApiJson(envelope): ApiJson<Envelope>,
) -> Result<Json<ReportImport>, ApiError> {
    op.require(Permission::Operate)?;
    let site = load_site(&app, &id).await?;
    if site.state == SiteState::Decommissioned {
        return Err(ApiError::conflict(
            "site_decommissioned",
            format!("site {id} is decommissioned: its reports are not taken"),
        ));
    }
    let key = parse_public_key(&site.device_key).map_err(|e| {
        ApiError::internal(format!("site {id}'s stored device key does not parse: {e}"))
    })?;
    let keyid = KeyId::of(&key).0;
    let mut ring = KeyRing::new();
    ring.insert(keyid.clone(), key);
    let payload = envelope.verify(REPORT_FILE_TYPE, &ring, 1).map_err(|e| {
        if envelope.signatures.iter().all(|s| s.keyid != keyid) {
            refused(
                "other_site",
                format!(
                    "the report file is not signed by site {id}'s device key (key id \
                         {keyid}): it comes from another site, or from this box before it was \
                         re-keyed ({e})"
                ),
            )
        } else {
            refused(
                "bad_signature",
                format!(
                    "the report file does not verify with site {id}'s device key: it was \
                         altered after the agent signed it ({e})"
                ),
            )
        }
    })?;
    let file: ReportFile = serde_json::from_slice(&payload).map_err(|e| {
        refused(
            "malformed",
            format!("the report file is signed but its content is not a report file: {e}"),
        )
    })?;
    if file.format != REPORT_FILE_FORMAT {
        return Err(refused(
            "malformed",
            format!(
                "the report file's format is {:?}; this coordinator reads {REPORT_FILE_FORMAT:?}",
                file.format
            ),
        ));
    }
    if file.site_id != id {
        return Err(refused(
            "other_site",
            format!(
                "the report file is of site {}, not {id}: import it for that site",
                file.site_id
            ),
        ));
    }
    if file.events.len() > MAX_REPORT_FILE_EVENTS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!(
                "a report file holds at most {MAX_REPORT_FILE_EVENTS} events; this one has {}",
                file.events.len()
            ),
        ));
    }
    if let Some(problem) = super::agent::event_id_problem(&file.events) {
        return Err(refused("malformed", problem));
    }
    let now = app.now();
    let total = file.events.len() as u32;
    let (mut applied, mut duplicates, mut touched) = (0u32, 0u32, false);
    let mut events = file.events;
    while !events.is_empty() {
        let rest = events.split_off(events.len().min(MAX_REPORT_EVENTS));
        let outcome = app
            .engine
            .apply_reports(crate::store::ReportInput {
                box_id: None,
                site_id: id.clone(),
                events,
                received_at: now,
            })
            .await?;
        applied += outcome.accepted;
        duplicates += outcome.duplicates;
        touched |= !outcome.rollouts_touched.is_empty();
        events = rest;
    }
    if touched {
        app.engine.wake_controller();
    }
    op.audit(
        &app,
        "site.import_reports",
        &id,
        format!(
            "{total} event(s) from a file written {}: {applied} applied, {duplicates} already known",
            file.created_at
        ),
    )
    .await?;
    Ok(Json(ReportImport {
        site_id: id,
        events: total,
        applied,
        duplicates,
    }))
}
