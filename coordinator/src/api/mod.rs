//! The HTTP API: one composable router per area, merged in [`router`] with the limits,
//! timeouts, load shedding, latency metrics and JSON errors that apply to every request.
//! Later parts (the dashboard) merge their own router here.

pub mod agent;
pub mod artifacts;
pub mod auth;
pub mod meta;
pub mod openapi;
pub mod operator;

use std::time::{Duration, Instant};

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tower::ServiceBuilder;
use tower_http::timeout::TimeoutLayer;

use crate::error::{error_response, json_errors};
use crate::metrics::RequestLabels;
use crate::state::AppState;

/// The long-poll route, with its own load shedding: parked polls count against
/// `limits.max_long_polls`, never against the request slots of everything else.
pub fn poll_router(app: &AppState) -> Router<AppState> {
    let timeout = Duration::from_secs(app.config.limits.request_timeout_secs);
    let poll_timeout = timeout + Duration::from_secs(app.config.limits.long_poll_cap_secs as u64);
    Router::new().route(
        "/v1/agent/poll",
        get(agent::poll).layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(overloaded))
                .load_shed()
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                    app.config.limits.max_long_polls,
                ))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    poll_timeout,
                )),
        ),
    )
}

/// Agent routes besides the poll (enroll, session, lease, reports).
pub fn agent_router(app: &AppState) -> Router<AppState> {
    let timeout = Duration::from_secs(app.config.limits.request_timeout_secs);
    Router::new()
        .route("/v1/enroll", post(agent::enroll))
        .route("/v1/agent/session", post(agent::session))
        .route("/v1/agent/lease", post(agent::lease))
        .route("/v1/agent/reports", post(agent::reports))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
}

/// Operator routes.
pub fn operator_router(app: &AppState) -> Router<AppState> {
    use operator::*;
    let timeout = Duration::from_secs(app.config.limits.request_timeout_secs);
    Router::new()
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
        .route("/v1/releases", post(publish_release).get(list_releases))
        .route("/v1/releases/{id}", get(get_release))
        .route("/v1/roots", post(publish_root).get(list_roots))
        .route("/v1/rollouts", post(create_rollout).get(list_rollouts))
        .route("/v1/rollouts/{id}", get(get_rollout))
        .route("/v1/rollouts/{id}/sites", get(list_rollout_sites))
        .route("/v1/rollouts/{id}/start", post(start_rollout))
        .route("/v1/rollouts/{id}/pause", post(pause_rollout))
        .route("/v1/rollouts/{id}/resume", post(resume_rollout))
        .route("/v1/rollouts/{id}/approve", post(approve_wave))
        .route("/v1/rollouts/{id}/abort", post(abort_rollout))
        .route("/v1/rollouts/{id}/rollback", post(rollback_rollout))
        .route("/v1/rollouts/{id}/skip", post(skip_site))
        .route("/v1/audit", get(list_audit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
}

/// Artifact routes: their own (large) body limit and timeout.
pub fn artifact_router(app: &AppState) -> Router<AppState> {
    let timeout = Duration::from_secs(app.config.limits.artifact_timeout_secs);
    Router::new()
        .route(
            "/v1/artifacts/{sha256}",
            put(artifacts::upload)
                .get(artifacts::download)
                .head(artifacts::download),
        )
        .layer(DefaultBodyLimit::disable())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
}

/// Health, readiness, metrics, OpenAPI: never shed, never authenticated.
pub fn meta_router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(meta::healthz))
        .route("/readyz", get(meta::readyz))
        .route("/metrics", get(meta::metrics))
        .route("/openapi.json", get(meta::openapi))
}

async fn overloaded(_: tower::BoxError) -> Response {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "the coordinator is at its concurrent request limit; retry after the Retry-After delay",
        Some(1),
    )
}

async fn record_latency(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let res = next.run(req).await;
    app.metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: res.status().as_u16(),
        })
        .observe(start.elapsed().as_secs_f64());
    res
}

async fn not_found() -> Response {
    StatusCode::NOT_FOUND.into_response()
}

/// The whole API.
pub fn router(app: AppState) -> Router {
    let body_limit = app.config.limits.max_body_bytes;
    let shed = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(overloaded))
        .load_shed()
        // Global: one semaphore shared by every route (axum layers each route separately).
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            app.config.limits.max_concurrent_requests,
        ));
    let v1 = Router::new()
        .merge(agent_router(&app).layer(DefaultBodyLimit::max(body_limit)))
        .merge(operator_router(&app).layer(DefaultBodyLimit::max(body_limit)))
        .merge(artifact_router(&app))
        .layer(shed);
    Router::new()
        .merge(v1)
        .merge(poll_router(&app))
        .merge(meta_router())
        .fallback(not_found)
        .route_layer(middleware::from_fn_with_state(app.clone(), record_latency))
        .layer(middleware::map_response(json_errors))
        .with_state(app)
}
