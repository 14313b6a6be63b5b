//! The operator API: tokens, sites, releases, roots, rollouts, audit log.
//!
//! Every handler checks the caller's role first and writes an audit entry for every
//! change before it answers. Shapes live in `fleetwave_shared::protocol::operator`.

use std::collections::{BTreeMap, HashSet};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fleetwave_shared::Envelope;
use fleetwave_shared::protocol::operator::*;
use fleetwave_shared::verify::{verify_release, verify_root_rotation};
use jiff::{SignedDuration, Timestamp};

use crate::controller;
use crate::engine::{Action, Loaded, RetryTarget};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::http::auth::{Operator, token_hash};
use crate::state::{AppState, random_hex};
use crate::store::*;

fn enrollment_info(t: EnrollmentTokenRecord) -> EnrollmentTokenInfo {
    EnrollmentTokenInfo {
        id: t.id,
        labels: t.labels,
        site_id: t.site_id,
        expires_at: t.expires_at,
        uses_total: t.uses_total,
        uses_left: t.uses_left,
        revoked: t.revoked,
        created_at: t.created_at,
        created_by: t.created_by,
    }
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    for (k, v) in labels {
        if let Some(problem) = label_problem(k, v) {
            return Err(ApiError::bad_request(problem));
        }
    }
    Ok(())
}

/// What is wrong with a label (key and value), if anything: the one rule for labels
/// set by tokens, relabelling and imports.
pub(super) fn label_problem(k: &str, v: &str) -> Option<String> {
    let ok = !k.is_empty()
        && k.len() <= 63
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if !ok {
        return Some(format!(
            "label key {k:?} must be 1-63 characters of [A-Za-z0-9._/-]"
        ));
    }
    if v.len() > 255 || v.contains(',') || v.contains('=') {
        return Some(format!(
            "label {k}: value {v:?} must be at most 255 characters without ',' or '='"
        ));
    }
    None
}

pub async fn create_enrollment_token(
    State(app): State<AppState>,
    op: Operator,
    ApiJson(req): ApiJson<CreateEnrollmentToken>,
) -> Result<(StatusCode, Json<EnrollmentTokenCreated>), ApiError> {
    op.require(Permission::Operate)?;
    check_labels(&req.labels)?;
    if let Some(site) = &req.site_id {
        if !super::agent::valid_site_id(site) {
            return Err(ApiError::bad_request(format!(
                "site_id {site:?} must match [a-z0-9][a-z0-9._-]{{0,62}}"
            )));
        }
        // A token for an enrolled site would replace its device key: that is a rekey,
        // its own audited action.
        let i = site.clone();
        if app.db.run(move |s| s.site(&i)).await?.is_some() {
            return Err(crate::error::site_exists(site));
        }
    }
    let uses = req.uses.unwrap_or(1);
    if uses == 0 || uses > 100_000 {
        return Err(ApiError::bad_request("uses must be between 1 and 100000"));
    }
    let (record, token) = mint_enrollment_token(
        &app,
        &op,
        req.labels.clone(),
        req.site_id.clone(),
        uses,
        req.expires_in_secs,
    )
    .await?;
    op.audit(
        &app,
        "enrollment_token.create",
        &record.id,
        format!(
            "uses {uses}, expires {}, labels {:?}, site {:?}",
            record.expires_at, record.labels, record.site_id
        ),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(EnrollmentTokenCreated {
            id: record.id,
            token,
            expires_at: record.expires_at,
            uses,
        }),
    ))
}

/// Creates and stores an enrollment token; returns its record and its secret (which only
/// the caller's answer shows). The caller checks labels and site id, and audits.
async fn mint_enrollment_token(
    app: &AppState,
    op: &Operator,
    labels: BTreeMap<String, String>,
    site_id: Option<String>,
    uses: u32,
    expires_in_secs: Option<u64>,
) -> Result<(EnrollmentTokenRecord, String), ApiError> {
    let expires_at = token_expiry(app.now(), expires_in_secs)?;
    let (record, token) =
        new_enrollment_token(labels, site_id, uses, app.now(), expires_at, op.actor());
    let (hash, r) = (token_hash(&token), record.clone());
    app.db
        .run(move |s| s.create_enrollment_token(&hash, &r))
        .await?;
    Ok((record, token))
}

/// When an enrollment token made `now` expires: `expires_in_secs` later (default a day).
pub(super) fn token_expiry(
    now: Timestamp,
    expires_in_secs: Option<u64>,
) -> Result<Timestamp, ApiError> {
    let secs = expires_in_secs.unwrap_or(86_400);
    if secs == 0 || secs > 365 * 86_400 {
        return Err(ApiError::bad_request(
            "expires_in_secs must be between 1 and 31536000 (a year)",
        ));
    }
    Ok(now + SignedDuration::from_secs(secs as i64))
}

/// A new enrollment token's record and secret (not stored yet).
pub(super) fn new_enrollment_token(
    labels: BTreeMap<String, String>,
    site_id: Option<String>,
    uses: u32,
    now: Timestamp,
    expires_at: Timestamp,
    created_by: String,
) -> (EnrollmentTokenRecord, String) {
    let token = format!("fwe_{}", random_hex(24));
    let record = EnrollmentTokenRecord {
        id: format!("et-{}", random_hex(6)),
        labels,
        site_id,
        expires_at,
        uses_total: uses,
        uses_left: uses,
        revoked: false,
        created_at: now,
        created_by,
    };
    (record, token)
}

/// `POST /v1/sites/{id}/rekey`: a one-use enrollment token bound to an enrolled site, so
/// that a re-imaged or replaced box can enroll a new device key for it. The current key
/// keeps working until the new one enrolls; the site keeps its labels and history.
pub async fn rekey_site(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<RekeySite>,
) -> Result<(StatusCode, Json<EnrollmentTokenCreated>), ApiError> {
    op.require(Permission::Operate)?;
    let site = load_site(&app, &id).await?;
    if site.state == SiteState::Decommissioned {
        return Err(ApiError::conflict(
            "site_decommissioned",
            format!(
                "site {id} is decommissioned; re-enable it first (`fleetwave site enable {id}`), \
                 then rekey it"
            ),
        ));
    }
    let (record, token) = mint_enrollment_token(
        &app,
        &op,
        BTreeMap::new(),
        Some(id.clone()),
        1,
        req.expires_in_secs,
    )
    .await?;
    op.audit(
        &app,
        "site.rekey",
        &id,
        format!(
            "enrollment token {} may enroll a new device key for this site once, until {}; \
             the current key {} works until then",
            record.id, record.expires_at, site.device_key
        ),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(EnrollmentTokenCreated {
            id: record.id,
            token,
            expires_at: record.expires_at,
            uses: 1,
        }),
    ))
}

pub async fn list_enrollment_tokens(
    State(app): State<AppState>,
    op: Operator,
) -> Result<Json<EnrollmentTokenList>, ApiError> {
    op.require(Permission::Read)?;
    let tokens = app.db.run(|s| s.list_enrollment_tokens()).await?;
    Ok(Json(EnrollmentTokenList {
        tokens: tokens.into_iter().map(enrollment_info).collect(),
    }))
}

pub async fn revoke_enrollment_token(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    op.require(Permission::Operate)?;
    let i = id.clone();
    app.db.run(move |s| s.revoke_enrollment_token(&i)).await?;
    op.audit(&app, "enrollment_token.revoke", &id, "").await?;
    Ok(StatusCode::NO_CONTENT)
}

fn op_info(t: OperatorTokenRecord) -> OperatorTokenInfo {
    OperatorTokenInfo {
        id: t.id,
        name: t.name,
        role: t.role,
        created_at: t.created_at,
        created_by: t.created_by,
        revoked: t.revoked,
    }
}

pub async fn create_operator_token(
    State(app): State<AppState>,
    op: Operator,
    ApiJson(req): ApiJson<CreateOperatorToken>,
) -> Result<(StatusCode, Json<OperatorTokenCreated>), ApiError> {
    op.require(Permission::Admin)?;
    if req.name.trim().is_empty() || req.name.len() > 100 {
        return Err(ApiError::bad_request("name must be 1 to 100 characters"));
    }
    let token = format!("fwo_{}", random_hex(24));
    let record = OperatorTokenRecord {
        id: format!("ot-{}", random_hex(6)),
        name: req.name.clone(),
        role: req.role,
        created_at: app.now(),
        created_by: op.actor(),
        revoked: false,
    };
    let (hash, r) = (token_hash(&token), record.clone());
    app.db
        .run(move |s| s.create_operator_token(&hash, &r))
        .await?;
    op.audit(
        &app,
        "operator_token.create",
        &record.id,
        format!("name {:?}, role {}", record.name, record.role.as_str()),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(OperatorTokenCreated {
            id: record.id,
            token,
            name: record.name,
            role: record.role,
        }),
    ))
}

pub async fn list_operator_tokens(
    State(app): State<AppState>,
    op: Operator,
) -> Result<Json<OperatorTokenList>, ApiError> {
    op.require(Permission::Admin)?;
    let tokens = app.db.run(|s| s.list_operator_tokens()).await?;
    Ok(Json(OperatorTokenList {
        tokens: tokens.into_iter().map(op_info).collect(),
    }))
}

pub async fn revoke_operator_token(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    op.require(Permission::Admin)?;
    if id == op.token.id {
        return Err(ApiError::conflict(
            "conflict",
            "an operator token cannot revoke itself",
        ));
    }
    let i = id.clone();
    app.db.run(move |s| s.revoke_operator_token(&i)).await?;
    op.audit(&app, "operator_token.revoke", &id, "").await?;
    Ok(StatusCode::NO_CONTENT)
}

fn site_info(s: SiteRecord, rollout_id: Option<String>, hold: Option<SiteHold>) -> SiteInfo {
    SiteInfo {
        id: s.id,
        labels: s.labels,
        state: s.state,
        agent_version: s.agent_version,
        device_key: s.device_key,
        enrolled_at: s.enrolled_at,
        last_seen: s.last_seen,
        installed: s
            .installed
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    InstalledInfo {
                        release_id: v.release_id,
                        version: v.version,
                        previous_release_id: v.previous_release_id,
                        at: v.at,
                    },
                )
            })
            .collect(),
        healthy: s.healthy,
        health_at: s.health_at,
        deferred_until: s.deferred_until,
        rollout_id,
        hold: hold.map(|h| SiteHoldInfo {
            reason: h.reason,
            held_by: h.held_by,
            held_at: h.held_at,
        }),
        signals: vec![],
        boxes: vec![],
    }
}

pub async fn list_sites(
    State(app): State<AppState>,
    op: Operator,
    ApiQuery(q): ApiQuery<SiteListQuery>,
) -> Result<Json<SiteList>, ApiError> {
    op.require(Permission::Read)?;
    let mut filter = SiteFilter {
        limit: q.limit.unwrap_or(100).clamp(1, 1000) as usize,
        after: q.after.clone(),
        version: q.version.clone(),
        ..Default::default()
    };
    if let Some(state) = &q.state {
        filter.state = Some(SiteState::parse(state).ok_or_else(|| {
            ApiError::bad_request(format!("state {state:?} must be active or decommissioned"))
        })?);
    }
    if let Some(labels) = &q.label {
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                ApiError::bad_request(format!("label filter {pair:?} must be key=value"))
            })?;
            filter.labels.insert(k.to_string(), v.to_string());
        }
    }
    let limit = filter.limit;
    let sites = app.db.run(move |s| s.list_sites(&filter)).await?;
    let next_after = (sites.len() == limit)
        .then(|| sites.last().map(|s| s.id.clone()))
        .flatten();
    let mut holds = app.db.run(|st| st.site_holds()).await?;
    let mut out = Vec::with_capacity(sites.len());
    for s in sites {
        let id = s.id.clone();
        let rollout = app.db.run(move |st| st.active_rollout_of_site(&id)).await?;
        let hold = holds.remove(&s.id);
        out.push(site_info(s, rollout, hold));
    }
    Ok(Json(SiteList {
        sites: out,
        next_after,
    }))
}

pub(super) async fn load_site(app: &AppState, id: &str) -> Result<SiteRecord, ApiError> {
    let i = id.to_string();
    app.db
        .run(move |s| s.site(&i))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no site {id}")))
}

pub async fn get_site(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SiteInfo>, ApiError> {
    op.require(Permission::Read)?;
    let site = load_site(&app, &id).await?;
    let i = id.clone();
    let rollout = app.db.run(move |s| s.active_rollout_of_site(&i)).await?;
    let hold = app.db.run(|s| s.site_holds()).await?.remove(&id);
    let i = id.clone();
    let signals = app.db.run(move |s| s.latest_signals(&i)).await?;
    let boxes = site_boxes(&app, &id, rollout.as_deref()).await?;
    let mut info = site_info(site, rollout, hold);
    info.signals = signals
        .into_iter()
        .map(|(m, at)| SiteSignals::new(m, at))
        .collect();
    info.boxes = boxes;
    Ok(Json(info))
}

/// The boxes of a site of several boxes with their facts in the site's active rollout
/// (`rollout`), in that rollout's box order; empty for a one-box site.
pub(crate) async fn site_boxes(
    app: &AppState,
    site_id: &str,
    rollout: Option<&str>,
) -> Result<Vec<fleetwave_shared::protocol::operator::SiteBoxInfo>, ApiError> {
    let sid = site_id.to_string();
    let boxes = app.db.run(move |s| s.site_boxes(&sid)).await?;
    if boxes.len() < 2 {
        return Ok(Vec::new());
    }
    let (facts, order) = match rollout {
        Some(r) => {
            let (rid, sid) = (r.to_string(), site_id.to_string());
            let facts = app.db.run(move |s| s.rollout_boxes(&rid, &sid)).await?;
            let order = app
                .engine
                .rollout_plan(r)
                .await
                .map(|p| p.box_order.clone())
                .unwrap_or_default();
            (facts, order)
        }
        None => (Vec::new(), Vec::new()),
    };
    let now = app.now();
    Ok(crate::controller::boxes::ordered(&order, &boxes)
        .into_iter()
        .map(|b| {
            let f = facts.iter().find(|(id, _)| *id == b.box_id).map(|(_, f)| f);
            fleetwave_shared::protocol::operator::SiteBoxInfo {
                box_id: b.box_id.clone(),
                role: b.role.clone(),
                installed: f.map(|f| f.installed.clone()).unwrap_or_default(),
                phase: f.and_then(|f| f.phase).map(|p| p.as_str().to_string()),
                last_report_at: f.and_then(|f| f.last_report_at),
                state: match (rollout, f) {
                    (None, _) => "idle",
                    (Some(_), None) => "waiting",
                    (Some(_), Some(f)) => f.state(now),
                }
                .to_string(),
            }
        })
        .collect())
}

/// `POST /v1/sites/{id}/hold`: keeps the site at what it runs (see `engine::holds`).
pub async fn hold_site(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<HoldSite>,
) -> Result<Json<SiteInfo>, ApiError> {
    op.require(Permission::Operate)?;
    let outcome = app.engine.hold_site(&id, &req.reason, &op.actor()).await?;
    let mut detail = format!("reason: {}", req.reason.trim());
    if !outcome.skipped_in.is_empty() {
        detail.push_str(&format!("; left out of {}", outcome.skipped_in.join(", ")));
    }
    if !outcome.started_in.is_empty() {
        detail.push_str(&format!(
            "; install already under way in {}",
            outcome.started_in.join(", ")
        ));
    }
    op.audit(&app, "site.hold", &id, detail).await?;
    get_site(State(app), op, ApiPath(id)).await
}

/// `POST /v1/sites/{id}/unhold`: lifts the hold; the site joins the active rollouts
/// that select it.
pub async fn unhold_site(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SiteInfo>, ApiError> {
    op.require(Permission::Operate)?;
    let was = app.engine.release_hold(&id).await?;
    op.audit(
        &app,
        "site.unhold",
        &id,
        if was { "" } else { "was not held" },
    )
    .await?;
    get_site(State(app), op, ApiPath(id)).await
}

pub async fn relabel_site(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<RelabelSite>,
) -> Result<Json<SiteInfo>, ApiError> {
    op.require(Permission::Operate)?;
    check_labels(&req.set)?;
    let mut site = load_site(&app, &id).await?;
    for k in &req.remove {
        site.labels.remove(k);
    }
    site.labels.extend(req.set.clone());
    let (i, labels) = (id.clone(), site.labels.clone());
    app.db.run(move |s| s.set_site_labels(&i, &labels)).await?;
    op.audit(
        &app,
        "site.relabel",
        &id,
        format!("set {:?}, remove {:?}", req.set, req.remove),
    )
    .await?;
    app.engine.join_rollouts(&id).await?;
    let i = id.clone();
    let rollout = app.db.run(move |s| s.active_rollout_of_site(&i)).await?;
    let hold = app.db.run(|s| s.site_holds()).await?.remove(&id);
    Ok(Json(site_info(site, rollout, hold)))
}

pub async fn decommission_site(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SiteInfo>, ApiError> {
    op.require(Permission::Operate)?;
    app.engine.set_site_active(&id, false).await?;
    op.audit(&app, "site.decommission", &id, "sessions refused")
        .await?;
    get_site(State(app), op, ApiPath(id)).await
}

pub async fn reenable_site(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SiteInfo>, ApiError> {
    op.require(Permission::Operate)?;
    app.engine.set_site_active(&id, true).await?;
    op.audit(&app, "site.reenable", &id, "").await?;
    get_site(State(app), op, ApiPath(id)).await
}

pub(super) fn release_info(r: ReleaseRecord) -> ReleaseInfo {
    ReleaseInfo {
        id: r.id,
        digest: r.digest,
        name: r.name,
        version: r.version,
        kind: r.kind,
        counter: r.counter,
        published_at: r.published_at,
        published_by: r.published_by,
        envelope: r.envelope,
    }
}

pub async fn publish_release(
    State(app): State<AppState>,
    op: Operator,
    ApiJson(envelope): ApiJson<Envelope>,
) -> Result<(StatusCode, Json<ReleaseInfo>), ApiError> {
    op.require(Permission::Publish)?;
    let now = app.now();
    let verified = {
        let trust = app.trust.read().unwrap_or_else(|e| e.into_inner());
        verify_release(&trust.current, &envelope, now)
    }
    .map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "release_refused",
            format!("{} ({})", e, e.code()),
        )
    })?;
    let record = ReleaseRecord {
        id: verified.id.clone(),
        digest: verified.digest().to_string(),
        name: verified.name.clone(),
        version: verified.version.clone(),
        kind: verified.kind.as_str().to_string(),
        counter: verified.counter,
        envelope: envelope.clone(),
        published_at: now,
        published_by: op.actor(),
    };
    let r = record.clone();
    app.db
        .run(move |s| s.publish_release(&r))
        .await
        .map_err(|e| match e {
            StoreError::Conflict(m) => ApiError::conflict("release_conflict", m),
            other => other.into(),
        })?;
    op.audit(
        &app,
        "release.publish",
        &record.id,
        format!(
            "stream {:?}, version {}, counter {}, digest {}",
            record.name, record.version, record.counter, record.digest
        ),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(release_info(record))))
}

pub async fn list_releases(
    State(app): State<AppState>,
    op: Operator,
) -> Result<Json<ReleaseList>, ApiError> {
    op.require(Permission::Read)?;
    let releases = app.db.run(|s| s.list_releases()).await?;
    Ok(Json(ReleaseList {
        releases: releases.into_iter().map(release_info).collect(),
    }))
}

pub async fn get_release(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ReleaseInfo>, ApiError> {
    op.require(Permission::Read)?;
    let i = id.clone();
    let r = app
        .db
        .run(move |s| s.release(&i))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no release {id}")))?;
    Ok(Json(release_info(r)))
}

pub async fn list_roots(
    State(app): State<AppState>,
    op: Operator,
) -> Result<Json<RootList>, ApiError> {
    op.require(Permission::Read)?;
    let t = app.trust.read().unwrap_or_else(|e| e.into_inner());
    let mut roots = Vec::new();
    for env in &t.envelopes {
        if let Ok(v) = fleetwave_shared::verify::verify_root_anchor(env) {
            roots.push(RootInfo {
                version: v.version,
                expires: v.expires,
            });
        }
    }
    Ok(Json(RootList { roots }))
}

pub async fn publish_root(
    State(app): State<AppState>,
    op: Operator,
    ApiJson(envelope): ApiJson<Envelope>,
) -> Result<(StatusCode, Json<RootInfo>), ApiError> {
    op.require(Permission::Admin)?;
    let rotated = {
        let trust = app.trust.read().unwrap_or_else(|e| e.into_inner());
        verify_root_rotation(&trust.current, &envelope)
    }
    .map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "root_refused",
            format!("{} ({})", e, e.code()),
        )
    })?;
    let version = rotated.version;
    let env = envelope.clone();
    let now = app.now();
    app.db
        .run(move |s| s.add_root(version, &env, now))
        .await
        .map_err(|e| match e {
            StoreError::Conflict(m) => ApiError::conflict("root_conflict", m),
            other => other.into(),
        })?;
    {
        let mut trust = app.trust.write().unwrap_or_else(|e| e.into_inner());
        trust.envelopes.push(envelope);
        trust.current = rotated.clone();
    }
    app.roots_changed.send_modify(|n| *n += 1);
    op.audit(
        &app,
        "root.publish",
        &format!("root v{version}"),
        format!("expires {}", rotated.expires),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(RootInfo {
            version,
            expires: rotated.expires,
        }),
    ))
}

fn summary(r: &RolloutRecord) -> RolloutSummary {
    RolloutSummary {
        id: r.id.clone(),
        release_id: r.release_id.clone(),
        status: r.status,
        status_reason: r.status_reason.clone(),
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

pub async fn create_rollout(
    State(app): State<AppState>,
    op: Operator,
    ApiJson(req): ApiJson<CreateRollout>,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    op.require(Permission::Operate)?;
    let record = app
        .engine
        .create_rollout(req.plan, req.format, &op.actor())
        .await?;
    op.audit(
        &app,
        "rollout.create",
        &record.id,
        format!("release {}", record.release_id),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(rollout_view(&app, &record.id).await?),
    ))
}

/// `POST /v1/rollouts/plan`: what a plan would do now (the same body and the same 422
/// `invalid_plan` answers as creating it), without storing anything.
pub async fn preview_plan(
    State(app): State<AppState>,
    op: Operator,
    ApiJson(req): ApiJson<CreateRollout>,
) -> Result<Json<PlanPreview>, ApiError> {
    op.require(Permission::Operate)?;
    Ok(Json(app.engine.preview_plan(&req.plan, req.format).await?))
}

/// `GET /v1/rollouts/{id}/plan`: what a created rollout's plan would do now.
pub async fn preview_rollout(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<PlanPreview>, ApiError> {
    op.require(Permission::Read)?;
    Ok(Json(app.engine.preview_rollout(&id).await?))
}

pub async fn list_rollouts(
    State(app): State<AppState>,
    op: Operator,
) -> Result<Json<RolloutList>, ApiError> {
    op.require(Permission::Read)?;
    let rollouts = app.db.run(|s| s.list_rollouts()).await?;
    Ok(Json(RolloutList {
        rollouts: rollouts.iter().map(summary).collect(),
    }))
}

/// A site's state word in a rollout (one of [`ROLLOUT_SITE_STATES`]), without the words
/// that describe it: those are made only for the sites an answer lists.
fn site_state_word(
    gate: &crate::plan::Gate,
    opened_at: Option<Timestamp>,
    site: &controller::SiteFacts,
    rolled_back: bool,
    now: Timestamp,
) -> &'static str {
    if rolled_back {
        return "rolled_back";
    }
    match opened_at {
        Some(opened) => controller::site_state(gate, opened, site, now).as_str(),
        None if site.skipped => "skipped",
        None => "pending",
    }
}

/// Calls `each(wave, site, state)` for every site of the rollout, wave by wave: the one
/// pass that both the status view and the site list read their states from. 100,000
/// sites at scale: one set lookup per site, no search.
pub(super) fn for_each_site<'a>(
    l: &Loaded,
    view: &'a controller::RolloutView,
    now: Timestamp,
    mut each: impl FnMut(u32, &'a controller::SiteFacts, &'static str),
) {
    let rolled_back_sites: HashSet<&str> = l
        .sites
        .iter()
        .filter(|s| s.rollback_sequence.is_some())
        .map(|s| s.site_id.as_str())
        .collect();
    for (i, plan_wave) in l.plan.waves.iter().enumerate() {
        let Some(wv) = view.waves.get(i) else {
            continue;
        };
        for f in &wv.sites {
            let rolled_back = rolled_back_sites.contains(f.site_id.as_str());
            let state = site_state_word(&plan_wave.gate, wv.opened_at, f, rolled_back, now);
            each(i as u32, f, state);
        }
    }
}

/// One listed site, with its phase and the reason for its state in words.
pub(super) fn site_view(
    l: &Loaded,
    view: &controller::RolloutView,
    wave: u32,
    site: &controller::SiteFacts,
    state: &'static str,
    now: Timestamp,
) -> RolloutSiteView {
    let gate = &l.plan.waves[wave as usize].gate;
    let detail = match view.waves[wave as usize].opened_at {
        // A silent site of several boxes: its reason names the quietest box.
        Some(opened) if state == "silent" => {
            let words = controller::site_status(gate, opened, site, now).detail;
            let quiet = l
                .site(&site.site_id)
                .and_then(|r| crate::store::boxes::quiet_box_words(r.detail.as_deref()));
            Some(match quiet {
                Some(q) => format!("{words}; {q}"),
                None => words,
            })
        }
        Some(opened) => Some(controller::site_status(gate, opened, site, now).detail),
        None if state == "pending" => Some("wave not open yet".to_string()),
        None => None,
    };
    RolloutSiteView {
        site_id: site.site_id.clone(),
        wave,
        state: state.to_string(),
        phase: site.last_phase.map(|p| p.as_str().to_string()),
        detail,
        bundle_until: site.bundle_until,
    }
}

/// Keeps the `n` smallest entries of `entries` by `key`, sorted: linear time, not a sort
/// of every site of a 100,000-site rollout.
fn smallest<T, K: Ord>(entries: &mut Vec<T>, n: usize, key: impl Fn(&T) -> K) {
    if entries.len() > n && n > 0 {
        entries.select_nth_unstable_by(n - 1, |a, b| key(a).cmp(&key(b)));
    }
    entries.truncate(n);
    entries.sort_unstable_by_key(key);
}

/// Where a state stands in the status view's list of sites needing attention (None: not
/// listed there).
fn attention_rank(state: &str) -> Option<u8> {
    match state {
        "failed" => Some(0),
        "silent" => Some(1),
        "rolled_back" => Some(2),
        "in_progress" => Some(3),
        _ => None,
    }
}

/// The status of a rollout: waves with complete tallies and gate standing, the sites that
/// need attention (at most [`ROLLOUT_VIEW_SITES`]), the timeline. Built in the rollout's
/// facts where they are kept, without copying them.
pub async fn rollout_view(app: &AppState, id: &str) -> Result<RolloutView, ApiError> {
    let analysis = app.engine.analyses(id);
    let now = app.now();
    let view = app
        .engine
        .with_rollout(id, |l| status_view(l, &analysis, now))
        .await?;
    with_decisions(app, view).await
}

/// [`rollout_view`] of a rollout already loaded.
pub(super) async fn rollout_view_of(app: &AppState, l: &Loaded) -> Result<RolloutView, ApiError> {
    let analysis = app.engine.analyses(&l.record.id);
    with_decisions(app, status_view(l, &analysis, app.now())).await
}

/// `view` with the rollout's decisions (the timeline), from the store.
async fn with_decisions(app: &AppState, mut view: RolloutView) -> Result<RolloutView, ApiError> {
    let rid = view.id.clone();
    let decisions = app.db.run(move |s| s.decisions(&rid)).await?;
    view.decisions = decisions
        .into_iter()
        .map(|d| DecisionView {
            at: d.at,
            kind: d.kind,
            wave: d.wave,
            reason: d.reason,
        })
        .collect();
    Ok(view)
}

/// [`rollout_view`] without its decisions: one pass over the kept controller view.
fn status_view(
    l: &Loaded,
    analysis: &BTreeMap<u32, Vec<controller::analysis::AnalysisFact>>,
    now: Timestamp,
) -> RolloutView {
    l.with_view_analysed(analysis, |view| {
        let mut tallies: Vec<WaveTally> = vec![WaveTally::default(); l.plan.waves.len()];
        let mut attention = Vec::new();
        let mut total: u64 = 0;
        // One pass over every site: every answer to a rollout action renders this view.
        for_each_site(l, view, now, |wave, f, state| {
            total += 1;
            let tally = &mut tallies[wave as usize];
            tally.sites += 1;
            match state {
                "pending" | "deferred" => tally.pending += 1,
                "in_progress" => tally.in_progress += 1,
                "succeeded" => tally.succeeded += 1,
                "failed" => tally.failed += 1,
                "silent" => tally.silent += 1,
                "skipped" => tally.skipped += 1,
                "rolled_back" => tally.rolled_back += 1,
                _ => {}
            }
            if let Some(rank) = attention_rank(state) {
                attention.push((rank, wave, f, state));
            }
        });
        smallest(&mut attention, ROLLOUT_VIEW_SITES, |&(rank, wave, f, _)| {
            (rank, wave, f.site_id.as_str())
        });
        let sites: Vec<RolloutSiteView> = attention
            .iter()
            .map(|&(_, wave, f, state)| site_view(l, view, wave, f, state, now))
            .collect();
        let mut waves = Vec::new();
        for ((i, plan_wave), tally) in l.plan.waves.iter().enumerate().zip(tallies) {
            let rec = l.record.waves.get(i).cloned().unwrap_or_default();
            let gate = match controller::wave_verdict(view, i as u32, now) {
                Some(v) => v.reason().to_string(),
                None => "not open".to_string(),
            };
            waves.push(WaveView {
                index: i as u32,
                name: plan_wave.name.clone(),
                opened_at: rec.opened_at,
                passed_at: rec.passed_at,
                approval_required: plan_wave.gate.approval,
                approved_at: rec.approved_at,
                tally,
                gate,
                analysis: view
                    .waves
                    .get(i)
                    .map(|w| {
                        w.analysis
                            .iter()
                            .filter_map(|f| f.numbers.clone())
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
        RolloutView {
            id: l.record.id.clone(),
            release_id: l.record.release_id.clone(),
            status: l.record.status,
            status_reason: l.record.status_reason.clone(),
            created_at: l.record.created_at,
            created_by: l.record.created_by.clone(),
            updated_at: l.record.updated_at,
            waves,
            sites_omitted: total - sites.len() as u64,
            sites,
            decisions: Vec::new(),
            plan: l.record.plan_source.clone(),
            plan_format: if l.record.plan_format == "json" {
                PlanFormat::Json
            } else {
                PlanFormat::Toml
            },
            start_at: l
                .plan
                .start_at
                .as_ref()
                .map(crate::plan_preview::start_at_view),
        }
    })
}

/// `GET /v1/rollouts/{id}/sites`: every site of a rollout, by site id, one page at a time,
/// optionally only one wave's or one state's.
pub async fn list_rollout_sites(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<RolloutSiteQuery>,
) -> Result<Json<RolloutSiteList>, ApiError> {
    op.require(Permission::Read)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000) as usize;
    let state: Option<&'static str> = match &q.state {
        Some(s) => Some(
            ROLLOUT_SITE_STATES
                .iter()
                .copied()
                .find(|w| w == s)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "state {s:?} is not a site state: use one of {}",
                        ROLLOUT_SITE_STATES.join(", ")
                    ))
                })?,
        ),
        None => None,
    };
    let now = app.now();
    let page = app
        .engine
        .with_rollout(&id, |l| {
            let waves = l.plan.waves.len();
            if let Some(w) = q.wave
                && w as usize >= waves
            {
                return Err(ApiError::bad_request(format!(
                    "wave {w} is out of range: rollout {id} has {waves} waves, numbered 0 to {}",
                    waves.saturating_sub(1)
                )));
            }
            // Read in the kept facts and view: a page of a million-site rollout copies
            // only its own sites.
            Ok(l.with_view(|view| {
                let after = q.after.as_deref();
                let mut page = Vec::new();
                for_each_site(l, view, now, |wave, f, st| {
                    if q.wave.is_some_and(|w| w != wave)
                        || state.is_some_and(|s| s != st)
                        || after.is_some_and(|a| f.site_id.as_str() <= a)
                    {
                        return;
                    }
                    page.push((wave, f, st));
                });
                smallest(&mut page, limit, |&(_, f, _)| f.site_id.as_str());
                let next_after = (page.len() == limit)
                    .then(|| page.last().map(|(_, f, _)| f.site_id.clone()))
                    .flatten();
                RolloutSiteList {
                    sites: page
                        .iter()
                        .map(|&(wave, f, st)| site_view(l, view, wave, f, st, now))
                        .collect(),
                    next_after,
                }
            }))
        })
        .await??;
    Ok(Json(page))
}

pub async fn get_rollout(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RolloutView>, ApiError> {
    op.require(Permission::Read)?;
    Ok(Json(rollout_view(&app, &id).await?))
}

async fn act(
    app: AppState,
    op: Operator,
    id: String,
    action: Action,
    name: &str,
) -> Result<Json<RolloutView>, ApiError> {
    op.require(Permission::Operate)?;
    let detail = format!("{action:?}");
    app.engine.rollout_action(&id, action, &op.actor()).await?;
    op.audit(&app, name, &id, detail).await?;
    Ok(Json(rollout_view(&app, &id).await?))
}

pub async fn start_rollout(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RolloutView>, ApiError> {
    act(app, op, id, Action::Start, "rollout.start").await
}

pub async fn pause_rollout(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<Json<RolloutView>, ApiError> {
    act(app, op, id, Action::Pause(reason(&body)?), "rollout.pause").await
}

pub async fn resume_rollout(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RolloutView>, ApiError> {
    act(app, op, id, Action::Resume, "rollout.resume").await
}

pub async fn approve_wave(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ApproveWave>,
) -> Result<Json<RolloutView>, ApiError> {
    act(app, op, id, Action::Approve(req.wave), "rollout.approve").await
}

pub async fn abort_rollout(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<Json<RolloutView>, ApiError> {
    act(app, op, id, Action::Abort(reason(&body)?), "rollout.abort").await
}

pub async fn rollback_rollout(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<Json<RolloutView>, ApiError> {
    act(
        app,
        op,
        id,
        Action::Rollback(reason(&body)?),
        "rollout.rollback",
    )
    .await
}

pub async fn skip_site(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<SkipSite>,
) -> Result<Json<RolloutView>, ApiError> {
    act(app, op, id, Action::Skip(req.site_id), "rollout.skip").await
}

pub async fn retry_sites(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<RetrySites>,
) -> Result<Json<RolloutView>, ApiError> {
    let target = match (req.site_id, req.wave) {
        (Some(site), None) if !site.trim().is_empty() => RetryTarget::Site(site),
        (None, Some(wave)) => RetryTarget::FailedOfWave(wave),
        _ => {
            return Err(ApiError::bad_request(
                "a retry names exactly one of site_id (one failed site) or wave (every failed site of that wave)",
            ));
        }
    };
    act(app, op, id, Action::Retry(target), "rollout.retry").await
}

pub async fn list_audit(
    State(app): State<AppState>,
    op: Operator,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditList>, ApiError> {
    op.require(Permission::Read)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000) as usize;
    let before = q.before;
    let entries = app.db.run(move |s| s.list_audit(before, limit)).await?;
    let next_before = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(Json(AuditList {
        entries: entries.into_iter().map(audit_entry).collect(),
        next_before,
    }))
}

pub async fn list_freezes(
    State(app): State<AppState>,
    op: Operator,
) -> Result<Json<FreezeList>, ApiError> {
    op.require(Permission::Read)?;
    Ok(Json(FreezeList {
        freezes: app.engine.list_freezes(),
    }))
}

pub async fn create_freeze(
    State(app): State<AppState>,
    op: Operator,
    ApiJson(req): ApiJson<CreateFreeze>,
) -> Result<(StatusCode, Json<FreezeInfo>), ApiError> {
    op.require(Permission::Operate)?;
    let f = app
        .engine
        .create_freeze(req.start, req.end, &req.reason, &op.actor())
        .await?;
    op.audit(
        &app,
        "freeze.create",
        &f.id,
        format!("{} to {}: {}", f.start, f.end, f.reason),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(crate::engine::freezes::stored_info(&f, app.now())),
    ))
}

pub async fn end_freeze(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<FreezeInfo>, ApiError> {
    op.require(Permission::Operate)?;
    let f = app.engine.end_freeze(&id, &op.actor()).await?;
    op.audit(
        &app,
        "freeze.end",
        &f.id,
        format!("was {} to {}: {}", f.start, f.end, f.reason),
    )
    .await?;
    Ok(Json(crate::engine::freezes::stored_info(&f, app.now())))
}

/// The optional `{"reason": "..."}` body of pause, abort and rollback.
fn reason(body: &[u8]) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    crate::error::require_object(body)?;
    let r: ActionReason = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))?;
    Ok(r.reason)
}

pub(super) fn audit_entry(e: crate::store::AuditRecord) -> AuditEntry {
    AuditEntry {
        id: e.id,
        at: e.at,
        actor: e.actor,
        action: e.action,
        target: e.target,
        detail: e.detail,
        remote: e.remote,
    }
}
