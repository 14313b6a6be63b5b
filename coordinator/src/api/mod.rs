//! The HTTP API: one composable router per area, assembled in [`router`] behind the
//! limits, timeouts, load shedding, latency metrics and error answers of
//! [`crate::http::edge`] that apply to every request (the dashboard's routes included:
//! [`crate::server`] merges them in and adds [`crate::http::edge::outer_layers`]).

pub mod agent;
pub mod artifacts;
pub mod bundles;
pub mod channels;
pub mod export;
pub mod meta;
pub mod openapi;
pub mod operator;
pub mod report_import;
pub mod site_import;
pub mod webhooks;

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tower_http::timeout::TimeoutLayer;

use crate::error::json_errors;
use crate::http::edge::{Budget, Edge};
use crate::state::AppState;

/// The long-poll route. Parked polls count against `limits.max_long_polls`, never against
/// the request slots of everything else; their time limit is the request limit plus the
/// longest wait.
pub fn poll_router(app: &AppState, edge: &Edge) -> Router<AppState> {
    let poll_timeout =
        edge.timeout + Duration::from_secs(app.config.limits.long_poll_cap_secs as u64);
    let routes = Router::new().route("/v1/agent/poll", get(agent::poll));
    edge.guard_with(
        routes,
        Budget::LongPolls,
        poll_timeout,
        Some(edge.body_limit),
    )
}

/// Agent routes that read a body before any credential is checked: enrollment (a one-time
/// token in the body) and the session handshake (a signature over the body).
pub fn open_agent_router(edge: &Edge) -> Router<AppState> {
    let routes = Router::new()
        .route("/v1/enroll", post(agent::enroll))
        .route("/v1/agent/session", post(agent::session));
    edge.guard(routes, Budget::Unauthenticated)
}

/// Agent routes with a session (lease, reports).
pub fn agent_router(edge: &Edge) -> Router<AppState> {
    let routes = Router::new()
        .route("/v1/agent/lease", post(agent::lease))
        .route("/v1/agent/reports", post(agent::reports));
    edge.guard(routes, Budget::Requests)
}

/// Operator routes.
pub fn operator_router(edge: &Edge) -> Router<AppState> {
    use operator::*;
    let routes = Router::new()
        .route(
            "/v1/enrollment-tokens",
            post(create_enrollment_token).get(list_enrollment_tokens),
        )
        .route(
            "/v1/enrollment-tokens/{id}/revoke",
            post(revoke_enrollment_token),
        )
        .route(
            "/v1/operator-tokens",
            post(create_operator_token).get(list_operator_tokens),
        )
        .route(
            "/v1/operator-tokens/{id}/revoke",
            post(revoke_operator_token),
        )
        .route("/v1/sites", get(list_sites))
        .route("/v1/sites/{id}", get(get_site))
        .route("/v1/sites/{id}/labels", post(relabel_site))
        .route("/v1/sites/{id}/decommission", post(decommission_site))
        .route("/v1/sites/{id}/reenable", post(reenable_site))
        .route("/v1/sites/{id}/rekey", post(rekey_site))
        .route("/v1/sites/{id}/hold", post(hold_site))
        .route("/v1/sites/{id}/unhold", post(unhold_site))
        .route(
            "/v1/sites/{id}/reports/import",
            post(report_import::import_reports),
        )
        .route("/v1/releases", post(publish_release).get(list_releases))
        .route("/v1/releases/{id}", get(get_release))
        .route("/v1/roots", post(publish_root).get(list_roots))
        .route("/v1/rollouts", post(create_rollout).get(list_rollouts))
        .route("/v1/rollouts/plan", post(preview_plan))
        .route("/v1/rollouts/{id}/plan", get(preview_rollout))
        .route("/v1/rollouts/{id}", get(get_rollout))
        .route("/v1/rollouts/{id}/sites", get(list_rollout_sites))
        .route("/v1/rollouts/{id}/export", get(export::export_rollout))
        .route("/v1/rollouts/{id}/start", post(start_rollout))
        .route("/v1/rollouts/{id}/pause", post(pause_rollout))
        .route("/v1/rollouts/{id}/resume", post(resume_rollout))
        .route("/v1/rollouts/{id}/approve", post(approve_wave))
        .route("/v1/rollouts/{id}/abort", post(abort_rollout))
        .route("/v1/rollouts/{id}/rollback", post(rollback_rollout))
        .route("/v1/rollouts/{id}/skip", post(skip_site))
        .route("/v1/rollouts/{id}/retry", post(retry_sites))
        .route("/v1/freezes", post(create_freeze).get(list_freezes))
        .route("/v1/freezes/{id}/end", post(end_freeze))
        .route("/v1/audit", get(list_audit))
        .route(
            "/v1/webhooks",
            post(webhooks::create_webhook).get(webhooks::list_webhooks),
        )
        .route(
            "/v1/webhooks/{id}",
            get(webhooks::get_webhook).delete(webhooks::delete_webhook),
        )
        .route(
            "/v1/webhooks/{id}/deliveries",
            get(webhooks::webhook_deliveries),
        )
        .route("/v1/webhooks/{id}/test", post(webhooks::test_webhook))
        .route(
            "/v1/channels",
            get(channels::list_channels).post(channels::create_channel),
        )
        .route(
            "/v1/channels/{id}",
            get(channels::get_channel).delete(channels::delete_channel),
        )
        .route("/v1/channels/{id}/set", post(channels::set_channel))
        .route("/v1/channels/{id}/resume", post(channels::resume_channel));
    edge.guard(routes, Budget::Requests)
}

/// The site import: bodies up to `MAX_SITE_IMPORT_BYTES` and the artifact time limit
/// (100,000 sites take seconds).
pub fn site_import_router(app: &AppState, edge: &Edge) -> Router<AppState> {
    use fleetwave_shared::protocol::operator::{MAX_SITE_IMPORT_BYTES, paths};
    let timeout = Duration::from_secs(app.config.limits.artifact_timeout_secs);
    let routes = Router::new().route(paths::SITE_IMPORT, post(site_import::import_sites));
    edge.guard_with(
        routes,
        Budget::Requests,
        timeout,
        Some(MAX_SITE_IMPORT_BYTES),
    )
}

/// Artifact routes and bundles (which carry artifacts): their own time limit, and no body limit here (uploads enforce
/// `limits.max_artifact_bytes` themselves).
pub fn artifact_router(app: &AppState, edge: &Edge) -> Router<AppState> {
    let timeout = Duration::from_secs(app.config.limits.artifact_timeout_secs);
    let routes = Router::new()
        .route(
            "/v1/artifacts/{sha256}",
            put(artifacts::upload)
                .get(artifacts::download)
                .head(artifacts::download),
        )
        .route(
            "/v1/bundles",
            post(bundles::export_bundle).layer(axum::extract::DefaultBodyLimit::max(64 * 1024)),
        );
    edge.guard_with(routes, Budget::Requests, timeout, None)
}

/// Health, readiness, metrics, OpenAPI: never shed, never authenticated, but timed.
pub fn meta_router(edge: &Edge) -> Router<AppState> {
    Router::new()
        .route("/healthz", get(meta::healthz))
        .route("/readyz", get(meta::readyz))
        .route("/metrics", get(meta::metrics))
        .route("/openapi.json", get(meta::openapi))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            edge.timeout,
        ))
}

async fn not_found() -> Response {
    StatusCode::NOT_FOUND.into_response()
}

/// The API's routes with their error answers, for `edge` (the outer layers are
/// [`crate::http::edge::outer_layers`]).
pub fn router(app: AppState, edge: &Edge) -> Router {
    Router::new()
        .merge(open_agent_router(edge))
        .merge(agent_router(edge))
        .merge(operator_router(edge))
        .merge(artifact_router(&app, edge))
        .merge(site_import_router(&app, edge))
        .merge(poll_router(&app, edge))
        .merge(meta_router(edge))
        .fallback(not_found)
        .layer(middleware::map_response(json_errors))
        .with_state(app)
}
