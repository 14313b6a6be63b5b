//! What every request passes through before a handler, the dashboard's included: the
//! request-head limit, admission into a concurrency budget (load shedding), the time limit,
//! the body limit, and the latency metric.
//!
//! Admission keeps three budgets apart, so one kind of traffic never takes the slots of
//! another: requests that carry credentials (`limits.max_concurrent_requests`), parked long
//! polls (`limits.max_long_polls`), and requests without credentials or to routes that read
//! a body before checking any (`limits.max_unauthenticated_requests`: enrollment, the
//! session handshake, the dashboard's sign-in). A flood of the latter is shed with 503 while
//! agents and operators are still served.
//!
//! Nothing here may take a value the client chose into a metric label: labels come from
//! closed sets (known methods, route templates, status codes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;
use tower_http::timeout::TimeoutLayer;

use crate::config::Limits;
use crate::error::error_response;
use crate::http::cookie::{SESSION_COOKIE, cookie};
use crate::metrics::{BudgetLabel, RequestLabels};
use crate::state::AppState;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Which budget a group of routes admits its requests into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Routes that check credentials before they read a body: a request with credentials
    /// (`Authorization`, or the dashboard's session cookie) takes a request slot, one
    /// without takes an unauthenticated slot (it is refused at once anyway).
    Requests,
    /// The long poll: like [`Budget::Requests`], with long-poll slots.
    LongPolls,
    /// Routes that read a body before any credential is checked (enrollment, the session
    /// handshake, the dashboard's sign-in): always an unauthenticated slot.
    Unauthenticated,
}

/// The limits of the HTTP edge, built once from `[limits]` and shared by every route.
#[derive(Clone)]
pub struct Edge {
    requests: Arc<Semaphore>,
    long_polls: Arc<Semaphore>,
    unauthenticated: Arc<Semaphore>,
    /// `limits.request_timeout_secs`.
    pub timeout: Duration,
    /// `limits.max_body_bytes`.
    pub body_limit: usize,
    /// `limits.max_header_bytes`.
    pub header_limit: usize,
    /// Counts requests refused because their budget was full.
    shed: Family<BudgetLabel, Counter>,
}

impl Edge {
    pub fn new(limits: &Limits, shed: Family<BudgetLabel, Counter>) -> Edge {
        let budget = |n: usize| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)));
        Edge {
            requests: budget(limits.max_concurrent_requests),
            long_polls: budget(limits.max_long_polls),
            unauthenticated: budget(limits.max_unauthenticated_requests),
            timeout: Duration::from_secs(limits.request_timeout_secs),
            body_limit: limits.max_body_bytes,
            header_limit: limits.max_header_bytes,
            shed,
        }
    }

    /// `routes` with admission into `budget`, the request time limit (408) and the JSON
    /// body limit (413).
    pub fn guard<S>(&self, routes: Router<S>, budget: Budget) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        self.guard_with(routes, budget, self.timeout, Some(self.body_limit))
    }

    /// [`Edge::guard`] with another time limit and body limit (`None`: the handler enforces
    /// its own, as artifact uploads do).
    pub fn guard_with<S>(
        &self,
        routes: Router<S>,
        budget: Budget,
        timeout: Duration,
        body_limit: Option<usize>,
    ) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let body_limit = match body_limit {
            Some(n) => DefaultBodyLimit::max(n),
            None => DefaultBodyLimit::disable(),
        };
        let admission = Admission {
            budget,
            edge: self.clone(),
        };
        routes
            .layer(body_limit)
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                timeout,
            ))
            .layer(middleware::from_fn_with_state(admission, admit))
    }
}

/// hyper's read buffer for a connection's request heads: twice `limits.max_header_bytes`,
/// so that a head over the limit still reaches [`limit_head`] and gets the JSON answer;
/// only a head over twice the limit is cut off by hyper with a bare 431.
pub fn head_buffer(limits: &Limits) -> usize {
    limits.max_header_bytes.saturating_mul(2).max(8192)
}

#[derive(Clone)]
struct Admission {
    budget: Budget,
    edge: Edge,
}

/// Whether the request carries credentials of any kind (checked later by the handler).
fn has_credentials(headers: &HeaderMap) -> bool {
    headers.contains_key(header::AUTHORIZATION) || cookie(headers, SESSION_COOKIE).is_some()
}

async fn admit(State(admission): State<Admission>, req: Request, next: Next) -> Response {
    let edge = &admission.edge;
    let (budget, name) = match admission.budget {
        Budget::Unauthenticated => (&edge.unauthenticated, "unauthenticated"),
        _ if !has_credentials(req.headers()) => (&edge.unauthenticated, "unauthenticated"),
        Budget::Requests => (&edge.requests, "requests"),
        Budget::LongPolls => (&edge.long_polls, "long_polls"),
    };
    // The slot is held until the answer's head is ready, which covers reading the body.
    let Ok(_slot) = budget.clone().try_acquire_owned() else {
        edge.shed.get_or_create(&BudgetLabel { budget: name }).inc();
        // No body: each area gives it its own shape (JSON for the API, a page for the
        // dashboard).
        let mut res = StatusCode::SERVICE_UNAVAILABLE.into_response();
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return res;
    };
    next.run(req).await
}

/// Refuses a request head (request line and header fields, as sent) over
/// `limits.max_header_bytes` with 431 and the JSON error shape. hyper's own 431 (for heads
/// over [`head_buffer`]) has no body.
pub async fn limit_head(State(limit): State<usize>, req: Request, next: Next) -> Response {
    if head_len(&req) > limit {
        return error_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            &format!(
                "the request line and headers are over the limit of {limit} bytes \
                 (limits.max_header_bytes); send fewer or shorter headers"
            ),
            None,
        );
    }
    next.run(req).await
}

/// The size of the request head on the wire: `METHOD target HTTP/1.1\r\n`, a
/// `name: value\r\n` line per field and the closing `\r\n`.
fn head_len(req: &Request) -> usize {
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    line + fields + 2
}

/// The metric label of a method: the methods the API and dashboard use, `other` for any
/// other (HTTP lets a client invent methods of any length).
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Records the request's latency by method label, route template and status. Apply with
/// `route_layer`, so that a route template ([`MatchedPath`]) is always known.
/// Paths a standby replica still answers: its own health, readiness and metrics.
const STANDBY_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// A replica that does not serve now ([`crate::liveness::ControllerStatus::refusal`]: it
/// does not know which replica leads, followers stand by, or its memory may not follow
/// other replicas' writes) answers everything but [`STANDBY_PATHS`] with 503 and a
/// Retry-After of one renewal period, which agents treat as a coordinator that is down
/// (they move to the next URL of their list).
pub async fn refuse_on_standby(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let serve = app.config.storage.followers == crate::config::Followers::Serve;
    let Some(why) = app.controller.status().refusal(serve) else {
        return next.run(req).await;
    };
    if STANDBY_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let retry = (app.config.storage.leader_lease_secs / 3).max(1);
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "standby",
        &format!("{why}: send this request to another replica"),
        Some(u32::try_from(retry).unwrap_or(u32::MAX)),
    )
}

pub async fn record_latency(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
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

/// The layers every route of the coordinator gets, the API's and the dashboard's: latency
/// metrics and the request-head limit.
pub fn outer_layers(routes: axum::Router, app: AppState, edge: &Edge) -> axum::Router {
    routes
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            refuse_on_standby,
        ))
        .route_layer(axum::middleware::from_fn_with_state(app, record_latency))
        .layer(axum::middleware::from_fn_with_state(
            edge.header_limit,
            limit_head,
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_methods_are_labels() {
        for m in ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] {
            assert_eq!(method_label(&Method::from_bytes(m.as_bytes()).unwrap()), m);
        }
        for m in ["TRACE", "CONNECT", "get", "PROPFIND", &"X".repeat(15_000)] {
            assert_eq!(
                method_label(&Method::from_bytes(m.as_bytes()).unwrap()),
                "other"
            );
        }
    }

    #[test]
    fn the_head_is_measured_as_sent() {
        let req = axum::http::Request::builder()
            .method("POST")
            .uri("/v1/enroll?x=1")
            .header("host", "coord")
            .body(axum::body::Body::empty())
            .unwrap();
        let wire = "POST /v1/enroll?x=1 HTTP/1.1\r\nhost: coord\r\n\r\n";
        assert_eq!(head_len(&req), wire.len());
    }
}
