//! The agent API: enroll, session handshake, poll (ETag, long poll), lease, reports.
//!
//! A site reads only its own assignment and writes only its own reports: every handler
//! takes the site from the authenticated session, never from the request. The poll path
//! reads memory only and verifies no signature.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use ed25519_dalek::Signature;
use fleetwave_shared::keys::parse_public_key;
use fleetwave_shared::protocol::operator::SiteState;
use fleetwave_shared::protocol::{
    EnrollRequest, EnrollResponse, LeaseRequest, MAX_EVENT_ID_LEN, MAX_REPORT_EVENTS,
    NEXT_POLL_HEADER, PollQuery, PollResponse, ReportAck, ReportBatch, SESSION_SKEW_SECS,
    SessionRequest, SessionResponse, enroll_message, session_message,
};
use fleetwave_shared::sha256_hex;
use jiff::{SignedDuration, Timestamp};

use super::auth::{Agent, decommissioned, token_hash};
use crate::error::{ApiError, ApiJson, ApiQuery};
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::store::{Enrollment, StoreError};

/// `[a-z0-9][a-z0-9._-]{0,62}`
pub fn valid_site_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

fn signature(b64: &str, field: &str) -> Result<Signature, ApiError> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| ApiError::bad_request(format!("{field} is not standard base64")))?;
    Signature::from_slice(&raw)
        .map_err(|_| ApiError::bad_request(format!("{field} is not a 64-byte ed25519 signature")))
}

pub async fn enroll(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> Result<Json<EnrollResponse>, ApiError> {
    if !valid_site_id(&req.site_id) {
        return Err(ApiError::bad_request(format!(
            "site_id {:?} must match [a-z0-9][a-z0-9._-]{{0,62}}",
            req.site_id
        )));
    }
    let key = parse_public_key(&req.device_key)
        .map_err(|e| ApiError::bad_request(format!("device_key: {e}")))?;
    let sig = signature(&req.proof, "proof")?;
    key.verify_strict(
        &enroll_message(&req.site_id, &req.token, &req.device_key),
        &sig,
    )
    .map_err(|_| {
        ApiError::unauthorized(
            "bad_proof",
            "proof is not the device key's signature over the enrollment message",
        )
    })?;
    let hash = token_hash(&req.token);
    let h = hash.clone();
    let token = app
        .db
        .run(move |s| s.enrollment_token_by_hash(&h))
        .await?
        .ok_or_else(|| {
            ApiError::unauthorized("invalid_token", "the enrollment token is not known")
        })?;
    if let Some(fixed) = &token.site_id
        && *fixed != req.site_id
    {
        return Err(ApiError::forbidden(
            "token_site_mismatch",
            format!(
                "this enrollment token is for site {fixed}, not {}",
                req.site_id
            ),
        ));
    }
    let sid = req.site_id.clone();
    if let Some(site) = app.db.run(move |s| s.site(&sid)).await?
        && site.state == SiteState::Decommissioned
    {
        return Err(decommissioned(&req.site_id));
    }
    let enrollment = Enrollment {
        token_hash: hash,
        site_id: req.site_id.clone(),
        device_key: req.device_key.clone(),
        agent_version: req.agent_version.clone(),
        at: Timestamp::now(),
    };
    let site = app
        .db
        .run(move |s| s.enroll(&enrollment))
        .await
        .map_err(|e| match e {
            StoreError::Conflict(m) | StoreError::NotFound(m) => {
                ApiError::unauthorized("invalid_token", m)
            }
            other => other.into(),
        })?;
    app.sessions.drop_site(&site.id);
    app.sites.set_active(&site.id, true);
    let entry = crate::store::AuditRecord {
        id: 0,
        at: Timestamp::now(),
        actor: format!("agent {}", site.id),
        action: "site.enroll".into(),
        target: site.id.clone(),
        detail: format!(
            "enrolled with token {} (device key {})",
            token.id, req.device_key
        ),
        remote: "agent".into(),
    };
    app.db.run(move |s| s.audit(&entry)).await?;
    if let Err(e) = app.join_rollouts(&site.id).await {
        tracing::warn!(site = %site.id, error = %e, "could not place the enrolled site in its rollouts");
    }
    let roots = app
        .trust
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .envelopes
        .clone();
    Ok(Json(EnrollResponse {
        site_id: site.id,
        labels: site.labels,
        roots,
    }))
}

pub async fn session(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<SessionRequest>,
) -> Result<Json<SessionResponse>, ApiError> {
    let now = Timestamp::now();
    let skew = req.timestamp.duration_since(now).abs();
    if skew > SignedDuration::from_secs(SESSION_SKEW_SECS) {
        return Err(ApiError::unauthorized(
            "clock_skew",
            format!(
                "timestamp {} is more than {SESSION_SKEW_SECS}s from the coordinator's clock ({now}); fix the box's clock",
                req.timestamp
            ),
        ));
    }
    if req.nonce.len() != 32
        || !req
            .nonce
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(ApiError::bad_request(
            "nonce must be 32 lowercase hex characters",
        ));
    }
    let sid = req.site_id.clone();
    let site = app.db.run(move |s| s.site(&sid)).await?.ok_or_else(|| {
        ApiError::unauthorized(
            "unknown_site",
            format!("site {:?} is not enrolled", req.site_id),
        )
    })?;
    if site.state != SiteState::Active {
        app.sessions.drop_site(&site.id);
        return Err(decommissioned(&site.id));
    }
    let key = parse_public_key(&site.device_key)
        .map_err(|e| ApiError::internal(format!("stored device key: {e}")))?;
    let sig = signature(&req.signature, "signature")?;
    key.verify_strict(
        &session_message(&req.site_id, req.timestamp, &req.nonce),
        &sig,
    )
    .map_err(|_| {
        ApiError::unauthorized(
            "bad_signature",
            "signature is not this site's device key over the session message",
        )
    })?;
    let (sid, nonce) = (site.id.clone(), req.nonce.clone());
    let keep_until = req.timestamp + SignedDuration::from_secs(2 * SESSION_SKEW_SECS);
    let fresh = app
        .db
        .run(move |s| s.record_session_nonce(&sid, &nonce, keep_until))
        .await?;
    if !fresh {
        return Err(ApiError::unauthorized(
            "replayed",
            "this session handshake (nonce) was already used; sign a new one",
        ));
    }
    let expires_at = now + SignedDuration::from_secs(app.config.sessions.ttl_secs as i64);
    let token = app.sessions.open(&site.id, expires_at);
    app.sites.set_active(&site.id, true);
    app.saw(&site.id, now);
    Ok(Json(SessionResponse { token, expires_at }))
}

fn next_poll_secs(app: &AppState) -> u32 {
    let base = app.config.poll.interval_secs as i64;
    let spread = base * app.config.poll.jitter_percent as i64 / 100;
    if spread == 0 {
        return base as u32;
    }
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("random");
    let r = (u64::from_le_bytes(b) % (2 * spread as u64 + 1)) as i64 - spread;
    (base + r).max(1) as u32
}

fn render(app: &AppState, site_id: &str, root_version: Option<u64>) -> (String, PollResponse) {
    let view = app.sites.get(site_id).map(|s| s.view()).unwrap_or_default();
    let now = Timestamp::now();
    let assignment = view.assignment.filter(|a| a.record.expires > now);
    let (roots, latest) = {
        let t = app.trust.read().unwrap_or_else(|e| e.into_inner());
        (t.newer_than(root_version), t.latest_version())
    };
    let etag = format!(
        "\"{}\"",
        &sha256_hex(
            format!(
                "{}|{}|{}",
                assignment.as_ref().map_or("none", |a| a.digest.as_str()),
                latest,
                root_version.unwrap_or(0).min(latest)
            )
            .as_bytes()
        )[..32]
    );
    let body = PollResponse {
        release: assignment.as_ref().map(|a| a.release.clone()),
        assignment: assignment.map(|a| a.record.envelope.clone()),
        roots,
        next_poll_secs: 0,
    };
    (etag, body)
}

pub async fn poll(
    State(app): State<AppState>,
    agent: Agent,
    ApiQuery(q): ApiQuery<PollQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.saw(&agent.site_id, Timestamp::now());
    let wait = q
        .wait
        .unwrap_or(0)
        .min(app.config.limits.long_poll_cap_secs);
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let slot = app.sites.slot(&agent.site_id);
    let mut site_rx = slot.changed.subscribe();
    let mut roots_rx = app.roots_changed.subscribe();
    let mut shutdown = app.shutdown.clone();
    let (mut etag, mut body) = render(&app, &agent.site_id, q.root_version);
    let matches = |etag: &str| {
        if_none_match
            .as_deref()
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    };
    if matches(&etag) && wait > 0 {
        let deadline = tokio::time::sleep(Duration::from_secs(wait as u64));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = site_rx.changed() => {}
                _ = roots_rx.changed() => {}
                _ = shutdown.changed() => break,
            }
            (etag, body) = render(&app, &agent.site_id, q.root_version);
            if !matches(&etag) {
                break;
            }
        }
    }
    let next = next_poll_secs(&app);
    let mut res = if matches(&etag) {
        Metrics::count(&app.metrics.polls, "not_modified", 1);
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Metrics::count(
            &app.metrics.polls,
            if body.assignment.is_some() {
                "assignment"
            } else {
                "nothing"
            },
            1,
        );
        body.next_poll_secs = next;
        Json(body).into_response()
    };
    let h = res.headers_mut();
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex etag"),
    );
    h.insert(NEXT_POLL_HEADER, HeaderValue::from(next));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

pub async fn lease(
    State(app): State<AppState>,
    agent: Agent,
    ApiJson(req): ApiJson<LeaseRequest>,
) -> Result<Json<fleetwave_shared::protocol::LeaseGrant>, ApiError> {
    app.saw(&agent.site_id, Timestamp::now());
    Ok(Json(app.lease(&agent.site_id, &req).await?))
}

pub async fn reports(
    State(app): State<AppState>,
    agent: Agent,
    ApiJson(batch): ApiJson<ReportBatch>,
) -> Result<Json<ReportAck>, ApiError> {
    let now = Timestamp::now();
    app.saw(&agent.site_id, now);
    if batch.events.len() > MAX_REPORT_EVENTS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!(
                "a batch holds at most {MAX_REPORT_EVENTS} events; this one has {}",
                batch.events.len()
            ),
        ));
    }
    for (i, e) in batch.events.iter().enumerate() {
        if e.id.is_empty()
            || e.id.len() > MAX_EVENT_ID_LEN
            || !e.id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ApiError::bad_request(format!(
                "events[{i}].id must be 1 to {MAX_EVENT_ID_LEN} printable ASCII characters"
            )));
        }
    }
    let outcome = app
        .apply_reports(crate::store::ReportInput {
            site_id: agent.site_id.clone(),
            events: batch.events,
            received_at: now,
        })
        .await?;
    Metrics::count(
        &app.metrics.report_events,
        "accepted",
        outcome.accepted as u64,
    );
    Metrics::count(
        &app.metrics.report_events,
        "duplicate",
        outcome.duplicates as u64,
    );
    if !outcome.rollouts_touched.is_empty() {
        app.wake_controller();
    }
    Ok(Json(ReportAck {
        accepted: outcome.accepted,
        duplicates: outcome.duplicates,
    }))
}
