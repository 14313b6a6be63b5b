//! Liveness, readiness, metrics and the OpenAPI document. Read-only.
//!
//! `/healthz` says the process answers; `/readyz` says it can do its job: the database
//! answers and the wave controller runs (see [`crate::supervisor`]).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fleetwave_shared::protocol::operator::{RolloutStatus, SiteState};

use crate::error::ApiError;
use crate::metrics::{NOT_SEEN_SINCE, SinceLabel, StateLabel, WriterLabel};
use crate::state::AppState;

/// The answer of `/healthz` (`ok`) and `/readyz` (`ready`).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ServiceStatus {
    /// `ok` (alive) or `ready` (the database answers).
    pub status: &'static str,
}

pub async fn healthz() -> Json<ServiceStatus> {
    Json(ServiceStatus { status: "ok" })
}

pub async fn readyz(State(app): State<AppState>) -> Result<Json<ServiceStatus>, ApiError> {
    app.db.run(|s| s.ping()).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("database is not reachable: {e}"),
        )
    })?;
    let serve = app.config.storage.followers == crate::config::Followers::Serve;
    if let Some(standby) = app.controller.status().refusal(serve) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "standby",
            standby,
        ));
    }
    if let Some(problem) = app.controller_problem() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "controller_not_running",
            problem,
        ));
    }
    Ok(Json(ServiceStatus { status: "ready" }))
}

pub async fn metrics(State(app): State<AppState>) -> Result<Response, ApiError> {
    let sites = app.db.run(|s| s.count_sites_by_state()).await?;
    for state in [SiteState::Active, SiteState::Decommissioned] {
        let n = sites
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n);
        app.metrics
            .sites
            .get_or_create(&StateLabel {
                state: state.as_str(),
            })
            .set(n as i64);
    }
    let stuck = app.db.run(|s| s.count_sites_rollback_failed()).await?;
    app.metrics.sites_rollback_failed.set(stuck as i64);
    let now = app.engine.clock.now();
    let cutoffs: Vec<jiff::Timestamp> = NOT_SEEN_SINCE
        .iter()
        .map(|(_, secs)| now - jiff::SignedDuration::from_secs(*secs))
        .collect();
    let not_seen = app
        .db
        .run(move |s| s.count_sites_not_seen_since(&cutoffs))
        .await?;
    for ((since, _), n) in NOT_SEEN_SINCE.iter().zip(not_seen) {
        app.metrics
            .sites_not_seen
            .get_or_create(&SinceLabel { since })
            .set(n as i64);
    }
    let (waiting, longest) = app.engine.approval_waits_at(now);
    app.metrics.waves_awaiting_approval.set(waiting as i64);
    app.metrics.approval_wait_seconds.set(longest.as_secs());
    for (writer, n) in [
        ("reports", app.engine.reports.waiting()),
        ("leases", app.engine.leases.waiting()),
    ] {
        app.metrics
            .group_commit_waiting
            .get_or_create(&WriterLabel { writer })
            .set(n as i64);
    }
    let rollouts = app.db.run(|s| s.list_rollouts()).await?;
    for state in RolloutStatus::ALL {
        let n = rollouts.iter().filter(|r| r.status == state).count();
        app.metrics
            .rollouts
            .get_or_create(&StateLabel {
                state: state.as_str(),
            })
            .set(n as i64);
    }
    app.metrics
        .controller_up
        .set(i64::from(app.controller_problem().is_none()));
    let mut res = app.metrics.encode().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(res)
}

pub async fn openapi() -> Json<serde_json::Value> {
    Json(super::openapi::document())
}
