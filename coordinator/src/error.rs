//! The API's error type and its JSON shape `{"error": {"code", "message"}}`.
//!
//! Every handler returns [`ApiError`] on failure; [`json_errors`] turns the few answers
//! produced outside handlers (unknown route, wrong method, timeouts, limits) into the same
//! shape. Bad input must never become a 500: only storage and internal failures do.

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fleetwave_shared::protocol::{ErrorBody, ErrorDetail, LeaseDenialReason};
use serde::de::DeserializeOwned;

use crate::store::StoreError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u32>,
    /// Set on 409 `lease_denied` only: sent as `error.reason` (with
    /// `error.retry_after_secs`) so agents act on the reason, not on the message text.
    pub lease_denial: Option<LeaseDenialReason>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            lease_denial: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, code, message)
    }
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, code, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    pub fn with_retry_after(mut self, secs: u32) -> ApiError {
        self.retry_after = Some(secs);
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::Conflict(m) => ApiError::conflict("conflict", m),
            StoreError::SiteExists(site) => site_exists(&site),
            StoreError::BoxExists { site_id, box_id } => box_exists(&site_id, &box_id),
            other => {
                tracing::error!(error = %other, "storage failure");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    format!("the coordinator could not complete the request: {other}"),
                )
                .with_retry_after(5)
            }
        }
    }
}

/// The one place where the engine's failures become HTTP answers (the dashboard shows
/// the same answer as a page).
impl From<crate::engine::EngineError> for ApiError {
    fn from(e: crate::engine::EngineError) -> ApiError {
        use crate::engine::EngineError as E;
        let message = e.to_string();
        match e {
            E::Storage(store) => store.into(),
            E::RolloutNotFound(_) | E::SiteNotFound(_) => ApiError::not_found(message),
            E::Refused { .. } => ApiError::conflict("invalid_state", message),
            E::NoSuchWave { .. } => ApiError::bad_request(message),
            E::WaveNotOpen(_) => ApiError::conflict("wave_not_open", message),
            E::NothingToRetry(_) => ApiError::conflict("nothing_to_retry", message),
            E::InvalidHold(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_hold", message)
            }
            E::ChannelNotFound(_) => ApiError::not_found(message),
            E::InvalidChannel(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_channel", message)
            }
            E::ChannelConflict(_) => ApiError::conflict("channel_conflict", message),
            E::InvalidPlan(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_plan", message)
            }
            E::RolloutConflict(_) => ApiError::conflict("rollout_conflict", message),
            E::LeaseDenied(d) => ApiError {
                lease_denial: Some(d.reason),
                ..ApiError::conflict("lease_denied", message).with_retry_after(d.retry_after_secs)
            },
            E::InvalidBundle(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_bundle", message)
            }
            E::FreezeNotFound(_) => ApiError::not_found(message),
            E::InvalidFreeze { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_freeze", message)
            }
            E::FreezeFromConfig(_) => ApiError::conflict("freeze_from_config", message),
            E::StoredPlan { .. } | E::ReleaseMissing { .. } | E::Time(_) => {
                ApiError::internal(message)
            }
        }
    }
}

impl From<crate::time::TimeOverflow> for ApiError {
    fn from(e: crate::time::TimeOverflow) -> Self {
        ApiError::internal(e.to_string())
    }
}

/// 409 `site_exists`: an enrollment or token named a site that is already enrolled. Only a
/// token from `fleetwave site rekey` replaces an enrolled site's device key.
pub fn site_exists(site: &str) -> ApiError {
    ApiError::conflict(
        "site_exists",
        format!(
            "site {site} is already enrolled; a token without a site only creates new sites, and \
             a new box joins an enrolled site, or a box of it gets a new device key, only with \
             a token from `fleetwave site rekey {site}` (for a new, re-imaged or replaced box); \
             otherwise enroll under another site id"
        ),
    )
}

pub fn box_exists(site: &str, box_id: &str) -> ApiError {
    ApiError::conflict(
        "box_exists",
        format!(
            "site {site} already has a box {box_id}; give this box another box id (the agent's \
             `[box] id`) to add it to the site, or, to replace box {box_id} (re-imaged or \
             swapped), enroll with a token from `fleetwave site rekey {site}`"
        ),
    )
}

/// The JSON error response for `status`.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    retry_after: Option<u32>,
) -> Response {
    error_response_with(status, code, message, retry_after, None)
}

/// [`error_response`] with the lease-denial reason a 409 `lease_denied` carries.
fn error_response_with(
    status: StatusCode,
    code: &str,
    message: &str,
    retry_after: Option<u32>,
    lease_denial: Option<LeaseDenialReason>,
) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.to_string(),
            message: message.to_string(),
            retry_after_secs: lease_denial.and(retry_after),
            reason: lease_denial,
        },
    };
    let mut res = (status, axum::Json(body)).into_response();
    if let Some(secs) = retry_after {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    res
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response_with(
            self.status,
            self.code,
            &self.message,
            self.retry_after,
            self.lease_denial,
        )
    }
}

/// A JSON request body: `Content-Type: application/json` (or `application/*+json`), within
/// the route's body limit, and a JSON **object**. serde would also fill a struct from an
/// array, field by field in declaration order; a body's meaning never depends on that.
/// Rejections are [`ApiError`]s that name the problem.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !json_content_type(req.headers()) {
            return Err(unsupported_media_type());
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| json_rejection(r.into()))?;
        require_object(&bytes)?;
        axum::Json::<T>::from_bytes(&bytes)
            .map(|axum::Json(v)| ApiJson(v))
            .map_err(json_rejection)
    }
}

/// Refuses a JSON body that is not an object: serde would also fill a struct from an
/// array, field by field in declaration order, and a body's meaning never depends on that.
pub fn require_object(bytes: &[u8]) -> Result<(), ApiError> {
    let first = bytes
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first.is_some_and(|b| *b != b'{') {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object (`{...}` with named members), \
             not an array or another JSON value",
        ));
    }
    Ok(())
}

/// `application/json`, or any `application/<name>+json`, with or without parameters.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let subtype = subtype.to_ascii_lowercase();
    kind.eq_ignore_ascii_case("application") && (subtype == "json" || subtype.ends_with("+json"))
}

fn unsupported_media_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the body as JSON with `Content-Type: application/json`",
    )
}

fn json_rejection(r: JsonRejection) -> ApiError {
    let status = r.status();
    let text = r.body_text();
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(status, "payload_too_large", text),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => unsupported_media_type(),
        _ => ApiError::bad_request(format!("the request body is not valid: {text}")),
    }
}

/// `axum::extract::Query` with [`ApiError`] rejections.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|r: QueryRejection| {
                ApiError::bad_request(format!("the query string is not valid: {}", r.body_text()))
            })
    }
}

/// `axum::extract::Path` with [`ApiError`] rejections.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|r: PathRejection| {
                ApiError::bad_request(format!("the path is not valid: {}", r.body_text()))
            })
    }
}

/// The code and message of an error answer made below the handlers (router, time, body
/// and header limits, load shedding), which carries only its status.
pub fn edge_error(status: StatusCode) -> (&'static str, &'static str) {
    match status {
        StatusCode::NOT_FOUND => ("not_found", "no such route; see /openapi.json for the API"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this route does not accept that method",
        ),
        StatusCode::REQUEST_TIMEOUT => ("timeout", "the request took too long and was cut off"),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            "the request body is over the size limit",
        ),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
            "headers_too_large",
            "the request headers are over the size limit",
        ),
        StatusCode::SERVICE_UNAVAILABLE => (
            "overloaded",
            "the coordinator is at its concurrent request limit; retry after the Retry-After delay",
        ),
        StatusCode::TOO_MANY_REQUESTS => (
            "too_many_requests",
            "too many requests; retry after the Retry-After delay",
        ),
        s if s.is_client_error() => ("bad_request", "the request was refused"),
        _ => ("internal", "the coordinator failed to handle the request"),
    }
}

/// Turns error answers that are not JSON yet (unknown route, wrong method, timeout, body
/// or header limits from lower layers) into the JSON error shape.
pub async fn json_errors(res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return res;
    }
    let retry_after = res
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let allow = res.headers().get(header::ALLOW).cloned();
    let (code, message) = edge_error(status);
    let mut out = error_response(status, code, message, retry_after);
    if let Some(allow) = allow {
        out.headers_mut().insert(header::ALLOW, allow);
    }
    out
}
