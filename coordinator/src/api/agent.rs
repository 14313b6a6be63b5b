//! The agent API: enroll, session handshake, poll (ETag, long poll), lease, reports.
//!
//! A site reads only its own assignment and writes only its own reports: every handler
//! takes the site from the authenticated session, never from the request. The poll path
//! reads memory only and verifies no signature.

use std::io::Write as _;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use ed25519_dalek::Signature;
use fleetwave_shared::keys::parse_public_key;
use fleetwave_shared::protocol::operator::SiteState;
use fleetwave_shared::protocol::signals::{MAX_SIGNAL_MINUTES_PER_REPORT, SignalMinute};
use fleetwave_shared::protocol::{
    EnrollRequest, EnrollResponse, LeaseRequest, MAX_EVENT_ID_LEN, MAX_REPORT_EVENTS,
    NEXT_POLL_HEADER, PollQuery, ReportAck, ReportBatch, SESSION_SKEW_SECS, SessionRequest,
    SessionResponse, box_enroll_message, enroll_message, session_message,
};
use fleetwave_shared::{Envelope, sha256_hex};
use jiff::SignedDuration;

use crate::error::{ApiError, ApiJson, ApiQuery};
use crate::http::auth::{Agent, decommissioned, token_hash};
use crate::metrics::Metrics;
use crate::poll_cache::CachedAssignment;
use crate::state::AppState;
use crate::store::{DEFAULT_BOX, Enrollment, MAX_SIGNAL_STREAMS_PER_SITE, StoreError};

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
    let (box_id, role, message) = match &req.box_id {
        None if req.role.is_some() => {
            return Err(ApiError::bad_request(
                "role is given without box_id: a box with a role names its box id too",
            ));
        }
        None => (
            DEFAULT_BOX.to_string(),
            String::new(),
            enroll_message(&req.site_id, &req.token, &req.device_key),
        ),
        Some(box_id) => {
            if !valid_site_id(box_id) {
                return Err(ApiError::bad_request(format!(
                    "box_id {box_id:?} must match [a-z0-9][a-z0-9._-]{{0,62}}"
                )));
            }
            let role = req.role.clone().unwrap_or_default();
            if !role.is_empty() && !valid_site_id(&role) {
                return Err(ApiError::bad_request(format!(
                    "role {role:?} must match [a-z0-9][a-z0-9._-]{{0,62}} (or be left out)"
                )));
            }
            let message =
                box_enroll_message(&req.site_id, box_id, &role, &req.token, &req.device_key);
            (box_id.clone(), role, message)
        }
    };
    let key = parse_public_key(&req.device_key)
        .map_err(|e| ApiError::bad_request(format!("device_key: {e}")))?;
    let sig = signature(&req.proof, "proof")?;
    key.verify_strict(&message, &sig).map_err(|_| {
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
    if req.box_id.is_none() {
        // An agent that names no box is box `main`, and its sessions are the first box's:
        // only right when the site's first box is `main` (or there is no site yet).
        let sid = req.site_id.clone();
        let boxes = app.db.run(move |s| s.site_boxes(&sid)).await?;
        if let Some(first) = boxes.iter().find(|b| b.first)
            && first.box_id != DEFAULT_BOX
        {
            return Err(ApiError::conflict(
                "box_unnamed",
                format!(
                    "site {} has boxes ({}) and this agent names none; give each box of a \
                     site its own id (`[box] id` in the agent's configuration)",
                    req.site_id,
                    boxes
                        .iter()
                        .map(|b| b.box_id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    let enrollment = Enrollment {
        token_hash: hash,
        site_id: req.site_id.clone(),
        box_id: box_id.clone(),
        role: role.clone(),
        device_key: req.device_key.clone(),
        agent_version: req.agent_version.clone(),
        at: app.now(),
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
    // Sessions opened with an earlier key of this box end (their key fingerprint differs).
    let sid = site.id.clone();
    let boxes = app.db.run(move |s| s.site_boxes(&sid)).await?;
    app.engine.sites.set_boxes(&site.id, &boxes);
    app.engine.sites.set_active(&site.id, true);
    let entry = crate::store::AuditRecord {
        id: 0,
        at: app.now(),
        actor: format!("agent {}", site.id),
        action: "site.enroll".into(),
        target: site.id.clone(),
        detail: format!(
            "box {box_id}{} enrolled with token {} (device key {}); the site has {} box{}",
            if role.is_empty() {
                String::new()
            } else {
                format!(" (role {role})")
            },
            token.id,
            req.device_key,
            boxes.len(),
            if boxes.len() == 1 { "" } else { "es" }
        ),
        remote: "agent".into(),
    };
    app.db.run(move |s| s.audit(&entry)).await?;
    if let Err(e) = app.engine.join_rollouts(&site.id).await {
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
    let now = app.now();
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
        return Err(decommissioned(&site.id));
    }
    let device_key = match &req.box_id {
        None => site.device_key.clone(),
        Some(box_id) => {
            let sid = site.id.clone();
            let boxes = app.db.run(move |s| s.site_boxes(&sid)).await?;
            let device_key = boxes
                .iter()
                .find(|b| b.box_id == *box_id)
                .map(|b| b.device_key.clone())
                .ok_or_else(|| {
                    ApiError::unauthorized(
                        "unknown_box",
                        format!(
                            "site {} has no box {box_id:?}; enroll the box first \
                             (`fleetwave-agent enroll`)",
                            site.id
                        ),
                    )
                })?;
            // This coordinator may not have seen the box enroll (another one did).
            app.engine.sites.set_boxes(&site.id, &boxes);
            device_key
        }
    };
    let key = parse_public_key(&device_key)
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
    let keep_until = crate::time::later(
        req.timestamp,
        SignedDuration::from_secs(2 * SESSION_SKEW_SECS),
        "the session nonce's expiry",
    )?;
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
    let expires_at = crate::time::later(
        now,
        SignedDuration::from_secs(i64::try_from(app.config.sessions.ttl_secs).unwrap_or(i64::MAX)),
        "the session's expiry (now + sessions.ttl_secs)",
    )?;
    let token = app
        .sessions
        .open(&site.id, req.box_id.as_deref(), &device_key, expires_at);
    if req.box_id.is_none() {
        app.engine.sites.set_device_key(&site.id, &site.device_key);
    }
    app.engine.sites.set_active(&site.id, true);
    app.engine.saw(&site.id, now);
    Ok(Json(SessionResponse {
        token,
        expires_at,
        signal_minutes_per_report: Some(MAX_SIGNAL_MINUTES_PER_REPORT as u32),
    }))
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

/// The start of a poll's 200 body when the site has nothing to do.
const NOTHING_HEAD: &[u8] = br#"{"assignment":null,"release":null,"roots":"#;

/// The start of a poll's 200 body for an assignment, `{"assignment":…,"release":…,"roots":`,
/// from the compact JSON of both envelopes ([`Envelope::to_json`]), which the site cache
/// serializes once per assignment and release ([`crate::poll_cache::SiteCache::set_assignment`]);
/// [`poll_body`] finishes it. Together they write what serializing a
/// [`PollResponse`](fleetwave_shared::protocol::PollResponse) writes.
pub fn poll_head(assignment_json: &[u8], release_json: &[u8]) -> Bytes {
    const A: &[u8] = br#"{"assignment":"#;
    const R: &[u8] = br#","release":"#;
    const ROOTS: &[u8] = br#","roots":"#;
    let mut head = Vec::with_capacity(
        A.len() + assignment_json.len() + R.len() + release_json.len() + ROOTS.len(),
    );
    head.extend_from_slice(A);
    head.extend_from_slice(assignment_json);
    head.extend_from_slice(R);
    head.extend_from_slice(release_json);
    head.extend_from_slice(ROOTS);
    Bytes::from(head)
}

/// A poll's 200 body: `head` (see [`poll_head`]), the roots and the jittered interval.
fn poll_body(head: &[u8], roots: &[Envelope], next_poll_secs: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(head.len() + 64);
    body.extend_from_slice(head);
    serde_json::to_writer(&mut body, roots).expect("an envelope always serializes");
    write!(body, r#","next_poll_secs":{next_poll_secs}}}"#).expect("writing to memory");
    body
}

/// What a poll answers at one moment, without its body: the ETag and what the 200 body
/// would hold. Building it copies no envelope.
struct Answer {
    etag: String,
    assignment: Option<Arc<CachedAssignment>>,
    /// The roots the body would carry: `TrustChain::envelopes[roots]`.
    roots: Range<usize>,
}

fn render(app: &AppState, site_id: &str, root_version: Option<u64>) -> Answer {
    let now = app.now();
    let assignment = app
        .engine
        .sites
        .get(site_id)
        .and_then(|s| s.assignment())
        .filter(|a| a.record.expires > now);
    let (roots, latest) = {
        let t = app.trust.read().unwrap_or_else(|e| e.into_inner());
        let end = t.envelopes.len();
        let start = usize::try_from(root_version.unwrap_or(0)).map_or(end, |v| v.min(end));
        (start..end, t.latest_version())
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
    Answer {
        etag,
        assignment,
        roots,
    }
}

/// The 200 body of `answer`: the cached head and the roots as they were when the ETag was
/// computed (roots are only ever appended).
fn render_body(app: &AppState, answer: &Answer, next_poll_secs: u32) -> Vec<u8> {
    let head = answer
        .assignment
        .as_ref()
        .map_or(Bytes::from_static(NOTHING_HEAD), |a| {
            poll_head(&a.assignment_json, &a.release.json)
        });
    let t = app.trust.read().unwrap_or_else(|e| e.into_inner());
    let roots = t.envelopes.get(answer.roots.clone()).unwrap_or_default();
    poll_body(&head, roots, next_poll_secs)
}

pub async fn poll(
    State(app): State<AppState>,
    agent: Agent,
    ApiQuery(q): ApiQuery<PollQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.engine.saw(&agent.site_id, app.now());
    let wait = q
        .wait
        .unwrap_or(0)
        .min(app.config.limits.long_poll_cap_secs);
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let slot = app.engine.sites.slot(&agent.site_id);
    let mut site_rx = slot.changed.subscribe();
    let mut roots_rx = app.roots_changed.subscribe();
    let mut shutdown = app.shutdown.clone();
    let mut answer = render(&app, &agent.site_id, q.root_version);
    let matches = |etag: &str| {
        if_none_match
            .as_deref()
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    };
    if matches(&answer.etag) && wait > 0 {
        let deadline = tokio::time::sleep(Duration::from_secs(wait as u64));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = site_rx.changed() => {}
                _ = roots_rx.changed() => {}
                _ = shutdown.changed() => break,
            }
            answer = render(&app, &agent.site_id, q.root_version);
            if !matches(&answer.etag) {
                break;
            }
        }
    }
    let next = next_poll_secs(&app);
    let mut res = if matches(&answer.etag) {
        Metrics::count(&app.metrics.polls, "not_modified", 1);
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Metrics::count(
            &app.metrics.polls,
            if answer.assignment.is_some() {
                "assignment"
            } else {
                "nothing"
            },
            1,
        );
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            render_body(&app, &answer, next),
        )
            .into_response()
    };
    let h = res.headers_mut();
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&answer.etag).expect("hex etag"),
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
    app.engine.saw(&agent.site_id, app.now());
    Ok(Json(
        app.engine
            .lease(&agent.site_id, agent.box_id.as_deref(), &req)
            .await?,
    ))
}

pub async fn reports(
    State(app): State<AppState>,
    agent: Agent,
    ApiJson(batch): ApiJson<ReportBatch>,
) -> Result<Json<ReportAck>, ApiError> {
    let now = app.now();
    app.engine.saw(&agent.site_id, now);
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
    if let Some(problem) = event_id_problem(&batch.events) {
        return Err(ApiError::bad_request(problem));
    }
    check_signals(&batch.signals, now)?;
    // An event dated after its arrival counts at its arrival (store::event_time); far
    // ahead, the box's clock is wrong (or the agent lies): say so.
    let skew = SignedDuration::from_secs(SESSION_SKEW_SECS);
    let ahead = batch
        .events
        .iter()
        .filter(|e| e.at.duration_since(now) > skew);
    if let Some(furthest) = ahead.clone().map(|e| e.at).max() {
        let n = ahead.count();
        tracing::warn!(
            site = %agent.site_id,
            events = n,
            furthest = %furthest,
            "report events dated more than {SESSION_SKEW_SECS}s after they arrived (the box's clock runs ahead?): they count at their arrival time"
        );
        Metrics::count(&app.metrics.report_events, "future_dated", n as u64);
    }
    let signals = batch.signals;
    let outcome = app
        .engine
        .apply_reports(crate::store::ReportInput {
            site_id: agent.site_id.clone(),
            box_id: agent.box_id.clone(),
            events: batch.events,
            received_at: now,
        })
        .await?;
    if !signals.is_empty() {
        let site = agent.site_id.clone();
        let stored = app
            .db
            .run(move |s| s.put_signals(&site, &signals, now))
            .await?;
        Metrics::count(&app.metrics.signal_minutes, "stored", stored.minutes as u64);
        if stored.dropped_streams > 0 {
            tracing::warn!(
                site = %agent.site_id,
                minutes = stored.dropped_streams,
                "signal minutes dropped: the site already has {MAX_SIGNAL_STREAMS_PER_SITE} streams of signals"
            );
            Metrics::count(
                &app.metrics.signal_minutes,
                "dropped_streams",
                stored.dropped_streams as u64,
            );
        }
    }
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
        app.engine.wake_controller();
    }
    Ok(Json(ReportAck {
        accepted: outcome.accepted,
        duplicates: outcome.duplicates,
    }))
}

/// Refuses a batch whose signal minutes go beyond the coordinator's bounds, naming the
/// bound: at most [`MAX_SIGNAL_MINUTES_PER_REPORT`] minutes (413), each within
/// [`SignalMinute::problem`]'s limits, once per stream and minute, and not starting more
/// than [`SESSION_SKEW_SECS`] after `now` (400: a minute from the future would never age
/// out of retention; the box's clock is wrong).
fn check_signals(minutes: &[SignalMinute], now: jiff::Timestamp) -> Result<(), ApiError> {
    if minutes.len() > MAX_SIGNAL_MINUTES_PER_REPORT {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_signal_minutes",
            format!(
                "a batch holds at most {MAX_SIGNAL_MINUTES_PER_REPORT} signal minutes; this one has {}",
                minutes.len()
            ),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, m) in minutes.iter().enumerate() {
        if let Some(problem) = m.problem() {
            return Err(ApiError::bad_request(format!("signals[{i}]: {problem}")));
        }
        if m.minute.duration_since(now) > SignedDuration::from_secs(SESSION_SKEW_SECS) {
            return Err(ApiError::bad_request(format!(
                "signals[{i}]: minute {} is more than {SESSION_SKEW_SECS} s after the coordinator's clock ({now}); fix the box's clock",
                m.minute
            )));
        }
        if !seen.insert((&m.stream, m.minute)) {
            return Err(ApiError::bad_request(format!(
                "signals[{i}]: stream {:?} minute {} appears twice in the batch",
                m.stream, m.minute
            )));
        }
    }
    Ok(())
}

/// What is wrong with the first bad event id of `events` (ids are 1 to
/// [`MAX_EVENT_ID_LEN`] printable ASCII characters), by its index: for report batches
/// and report files alike.
pub(super) fn event_id_problem(events: &[fleetwave_shared::protocol::Event]) -> Option<String> {
    events.iter().enumerate().find_map(|(i, e)| {
        (e.id.is_empty()
            || e.id.len() > MAX_EVENT_ID_LEN
            || !e.id.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| {
            format!("events[{i}].id must be 1 to {MAX_EVENT_ID_LEN} printable ASCII characters")
        })
    })
}

#[cfg(test)]
mod tests {
    use fleetwave_shared::dsse::Signature;
    use fleetwave_shared::protocol::PollResponse;
    use serde_json::Value;

    use super::*;

    fn envelope(payload_type: &str, payload: &str, keyids: &[&str]) -> Envelope {
        Envelope {
            payload: base64::engine::general_purpose::STANDARD.encode(payload),
            payload_type: payload_type.into(),
            signatures: keyids
                .iter()
                .map(|k| Signature {
                    keyid: (*k).into(),
                    sig: base64::engine::general_purpose::STANDARD.encode([7u8; 64]),
                })
                .collect(),
        }
    }

    /// The fast body must be, byte for byte where it matters, what serializing a
    /// `PollResponse` gives: the same JSON value, and it must read back as that response.
    fn assert_same_wire(fast: &[u8], expected: PollResponse) {
        let fast_value: Value = serde_json::from_slice(fast).unwrap_or_else(|e| {
            panic!(
                "fast poll body is not JSON ({e}): {}",
                String::from_utf8_lossy(fast)
            )
        });
        assert_eq!(fast_value, serde_json::to_value(&expected).unwrap());
        assert_eq!(
            serde_json::from_slice::<PollResponse>(fast).unwrap(),
            expected
        );
        assert_eq!(fast, serde_json::to_vec(&expected).unwrap());
    }

    #[test]
    fn fast_poll_body_matches_poll_response_wire_format() {
        let assignment = envelope(
            "application/vnd.fleetwave.assignment+json",
            r#"{"site":"pig-1","quote":"\"x\"\n"}"#,
            &["coordinator"],
        );
        let release = envelope(
            "application/vnd.fleetwave.release+json",
            r#"{"id":"pos-2.4.0"}"#,
            &["rel-1", "rel-2"],
        );
        let roots = [
            envelope("application/vnd.fleetwave.root+json", "{}", &["r1"]),
            envelope(
                "application/vnd.fleetwave.root+json",
                "{\"v\":2}",
                &["r1", "r2"],
            ),
        ];
        let head = poll_head(&assignment.to_json(), &release.to_json());
        for (roots, next) in [(&roots[..0], 30), (&roots[..1], 1), (&roots[..], u32::MAX)] {
            // With an assignment, without and with roots.
            assert_same_wire(
                &poll_body(&head, roots, next),
                PollResponse {
                    assignment: Some(assignment.clone()),
                    release: Some(release.clone()),
                    roots: roots.to_vec(),
                    next_poll_secs: next,
                },
            );
            // Nothing to do.
            assert_same_wire(
                &poll_body(NOTHING_HEAD, roots, next),
                PollResponse {
                    assignment: None,
                    release: None,
                    roots: roots.to_vec(),
                    next_poll_secs: next,
                },
            );
        }
    }
}
