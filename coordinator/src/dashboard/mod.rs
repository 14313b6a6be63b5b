//! The operator dashboard under `/ui/`: server-rendered HTML (askama templates embedded at
//! build time) that works read-only with scripts blocked, one vendored script that patches
//! counters, bars and timelines from a server-sent event stream, and forms for the rollout
//! controls.
//!
//! Security: sign-in with an operator token into a server-side session (cookie HttpOnly,
//! Secure, SameSite=Strict, `__Host-` prefix), a per-session CSRF token on every form that
//! changes anything, the same role checks, rollout engine and audit log as the API, a
//! Content-Security-Policy without `'unsafe-inline'`, and framing refused.
//!
//! It must never take a second path for rollout logic (actions go through
//! [`crate::engine::Engine::rollout_action`]), never render or log a token, and never write to
//! the database except through the engine and the audit log.

mod live;
pub mod model;
mod pages;
pub mod read;
pub mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::error::ApiError;
use crate::http::auth::{Operator, remote};
use crate::http::edge::{Budget, Edge};
use crate::state::AppState;

/// The dashboard's shared state.
pub struct Dash {
    pub app: AppState,
    pub sessions: session::Sessions,
    pub read: Arc<read::ReadModel>,
    pub live: live::Cache,
}

pub type DashState = Arc<Dash>;

/// What went wrong while serving a dashboard page.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// No (live) session: go to the sign-in page.
    #[error("sign in first")]
    SignIn,
    /// The form's CSRF token is missing or not this session's.
    #[error(
        "the form's CSRF token is missing or does not belong to this session; reload the page and try again"
    )]
    Csrf,
    #[error("{}", .0.message)]
    Api(ApiError),
    #[error(transparent)]
    Read(#[from] read::ReadError),
    #[error("page template failed: {0}")]
    Template(#[from] askama::Error),
}

impl From<ApiError> for DashboardError {
    fn from(e: ApiError) -> Self {
        DashboardError::Api(e)
    }
}

impl From<crate::engine::EngineError> for DashboardError {
    fn from(e: crate::engine::EngineError) -> Self {
        DashboardError::Api(e.into())
    }
}

impl From<crate::store::StoreError> for DashboardError {
    fn from(e: crate::store::StoreError) -> Self {
        DashboardError::Api(e.into())
    }
}

impl DashboardError {
    fn status(&self) -> StatusCode {
        match self {
            DashboardError::SignIn => StatusCode::SEE_OTHER,
            DashboardError::Csrf => StatusCode::FORBIDDEN,
            DashboardError::Api(e) => e.status,
            DashboardError::Read(_) => StatusCode::SERVICE_UNAVAILABLE,
            DashboardError::Template(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for DashboardError {
    fn into_response(self) -> Response {
        if let DashboardError::SignIn = self {
            return Redirect::to("/ui/login").into_response();
        }
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "dashboard request failed");
        }
        pages::error_page(status, &self.to_string())
    }
}

/// A signed-in operator: the token record looked up again for this request.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub op: Operator,
    pub csrf: String,
    /// Why the wave controller is not running, shown as a banner on every page.
    pub controller_problem: Option<String>,
}

impl SignedIn {
    pub fn can_operate(&self) -> bool {
        self.op
            .token
            .role
            .permits(fleetwave_shared::protocol::operator::Permission::Operate)
    }

    /// Checks a form's CSRF token against the session's.
    pub fn check_csrf(&self, sent: &str) -> Result<(), DashboardError> {
        if session::same_secret(sent, &self.csrf) {
            Ok(())
        } else {
            Err(DashboardError::Csrf)
        }
    }
}

impl FromRequestParts<DashState> for SignedIn {
    type Rejection = DashboardError;

    async fn from_request_parts(
        parts: &mut Parts,
        dash: &DashState,
    ) -> Result<Self, Self::Rejection> {
        let id = session::cookie(&parts.headers, session::SESSION_COOKIE)
            .ok_or(DashboardError::SignIn)?;
        let s = dash
            .sessions
            .lookup(id, dash.app.now())
            .await?
            .ok_or(DashboardError::SignIn)?;
        let hash = s.token_hash.clone();
        let token = dash
            .app
            .db
            .run(move |st| st.operator_token_by_hash(&hash))
            .await?
            .filter(|t| !t.revoked);
        let Some(token) = token else {
            dash.sessions.close(id).await?;
            return Err(DashboardError::SignIn);
        };
        Ok(SignedIn {
            op: Operator {
                token,
                remote: remote(parts),
            },
            csrf: s.csrf,
            controller_problem: dash.app.controller_problem(),
        })
    }
}

/// The policy every dashboard answer carries: scripts, styles, images and connections
/// from this origin only, no inline code, no framing, forms only to this origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// Gives error answers made below the handlers (time limit, body limit, load shedding,
/// wrong method), which carry only a status, the dashboard's error page.
async fn html_errors(res: Response) -> Response {
    let status = res.status();
    let bare = (status.is_client_error() || status.is_server_error())
        && !res.headers().contains_key(header::CONTENT_TYPE);
    if !bare {
        return res;
    }
    let mut page = pages::error_page(status, crate::error::edge_error(status).1);
    for name in [header::RETRY_AFTER, header::ALLOW] {
        if let Some(v) = res.headers().get(&name) {
            page.headers_mut().insert(name, v.clone());
        }
    }
    page
}

/// The dashboard's routes (`/` redirects to `/ui/`), behind the same limits as the API
/// ([`Edge`]). The sign-in form reads its body (the operator token) before any credential
/// is checked, so it is admitted with the unauthenticated requests; every other route
/// checks the session before it reads a body (or reads none).
pub fn router(app: AppState, edge: &Edge) -> Router {
    let read = Arc::new(read::ReadModel::new(app.db.dashboard_read()));
    let dash = Arc::new(Dash {
        sessions: session::Sessions::new(app.db.clone()),
        app,
        read,
        live: live::Cache::default(),
    });
    let sign_in = Router::new().route("/ui/login", get(pages::login_form).post(pages::login));
    let others = Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(pages::overview))
        .route("/ui/logout", post(pages::logout))
        .route("/ui/rollouts", get(pages::rollouts))
        .route("/ui/rollouts/preview", post(pages::plan_check))
        .route("/ui/rollouts/{id}", get(pages::rollout))
        .route("/ui/rollouts/{id}/confirm/{action}", get(pages::confirm))
        .route("/ui/rollouts/{id}/actions/{action}", post(pages::act))
        .route("/ui/sites", get(pages::sites))
        .route("/ui/sites/grid", get(pages::grid))
        .route("/ui/sites/{id}", get(pages::site))
        .route("/ui/sites/{id}/confirm/{action}", get(pages::site_confirm))
        .route("/ui/sites/{id}/actions/{action}", post(pages::site_act))
        .route("/ui/releases", get(pages::releases))
        .route("/ui/freezes", get(pages::freezes))
        .route("/ui/freezes/confirm-add", get(pages::freeze_confirm_add))
        .route("/ui/freezes/add", post(pages::freeze_add))
        .route(
            "/ui/freezes/{id}/confirm/end",
            get(pages::freeze_confirm_end),
        )
        .route("/ui/freezes/{id}/actions/end", post(pages::freeze_end))
        .route("/ui/channels", get(pages::channels))
        .route("/ui/channels/{id}", get(pages::channel))
        .route(
            "/ui/channels/{id}/actions/resume",
            post(pages::channel_resume),
        )
        .route("/ui/webhooks", get(pages::webhooks))
        .route("/ui/webhooks/add", post(pages::webhook_add))
        .route("/ui/webhooks/{id}", get(pages::webhook))
        .route(
            "/ui/webhooks/{id}/confirm/remove",
            get(pages::webhook_confirm_remove),
        )
        .route(
            "/ui/webhooks/{id}/actions/remove",
            post(pages::webhook_remove),
        )
        .route("/ui/audit", get(pages::audit))
        .route("/ui/live/overview", get(live::overview))
        .route("/ui/live/rollouts/{id}", get(live::rollout))
        .route("/ui/assets/{file}", get(pages::asset))
        .route("/favicon.ico", get(pages::favicon));
    Router::new()
        .merge(edge.guard(sign_in, Budget::Unauthenticated))
        .merge(edge.guard(others, Budget::Requests))
        .layer(middleware::map_response(html_errors))
        .layer(middleware::from_fn(security_headers))
        .with_state(dash)
}
