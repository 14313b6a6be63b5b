//! The agent's HTTP client for the coordinator API: enroll, session handshake, poll,
//! lease, reports.
//!
//! TLS trusts only the fleet CA from the configuration (a rustls `RootCertStore` with that
//! CA alone) unless `use_system_roots` is set. Every response body is read with a size cap.
//! After enrollment the agent opens a session by signing
//! [`session_message`](fleetwave_shared::protocol::session_message) with its device key and
//! then sends the bearer token; a `401` opens a new session once and retries. This module
//! never decides what to do with an answer and never verifies documents: it moves bytes.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use fleetwave_shared::protocol::{
    self, EnrollRequest, EnrollResponse, ErrorBody, LeaseDenialReason, LeaseGrant, LeaseRequest,
    NEXT_POLL_HEADER, PollResponse, ReportAck, ReportBatch, SessionRequest, SessionResponse, paths,
};
use jiff::Timestamp;
use reqwest::{Method, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::CoordinatorConfig;

/// Largest poll answer read (assignment, release and root envelopes).
pub const MAX_POLL_BYTES: usize = 8 * 1024 * 1024;
/// Largest answer read from any other agent route.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// How long an idle connection to the coordinator is kept for the next request. Long polls
/// are back-to-back (the next poll interval counts from the start of the previous poll), so
/// at the coordinator's suggested interval (60 s by default) the gap between two polls is
/// well under this and every poll reuses the same TLS connection. It matches the
/// coordinator's default `limits.keepalive_idle_secs` (90 s): keeping a connection longer
/// than the coordinator does would not save a handshake, only risk sending on a connection
/// it is closing. (Also reqwest's default; set here so that a dependency update cannot
/// change it.) A coordinator over its `limits.max_keepalive_connections` closes the
/// connection after the answer instead; the next request resumes the TLS session from the
/// ticket it sent (rustls keeps it in the client's in-memory session cache).
pub const POOL_IDLE: Duration = Duration::from_secs(90);

/// Why a request to the coordinator failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read the fleet CA file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
    #[error("coordinator URL {url} cannot be used: {message}")]
    Url { url: String, message: String },
    #[error("cannot reach the coordinator at {url}: {message}")]
    Transport { url: String, message: String },
    #[error("coordinator answered {status} to {path}: {code}: {message}")]
    Status {
        path: &'static str,
        status: u16,
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("lease denied for rollout {rollout_id}: {reason}: {message}")]
    LeaseDenied {
        rollout_id: String,
        reason: LeaseDenialReason,
        message: String,
        retry_after: Duration,
    },
    #[error("coordinator answer to {path} is over the {limit}-byte limit")]
    TooLarge { path: &'static str, limit: usize },
    #[error("coordinator answer to {path} is not valid: {message}")]
    Body { path: &'static str, message: String },
    #[error("this box is not enrolled (no site id or device key); run `fleetwave-agent enroll`")]
    NotEnrolled,
}

impl ClientError {
    /// How long the coordinator asked the agent to wait, if it did (429, 503, lease denied).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Status { retry_after, .. } => *retry_after,
            ClientError::LeaseDenied { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The coordinator refused what was sent, not the request as such: `413` (over its
    /// body or batch limit), or `400` with its own JSON error (a `400` without it comes
    /// from something in between, and says nothing about the content). Sending the same
    /// bytes again cannot succeed; sending less (a smaller batch) may.
    pub fn refuses_content(&self) -> Option<crate::state::outbox::Refused> {
        match self {
            ClientError::Status {
                status,
                code,
                message,
                ..
            } if *status == 413 || (*status == 400 && code != "http_error") => {
                Some(crate::state::outbox::Refused {
                    status: *status,
                    code: code.clone(),
                    message: message.clone(),
                })
            }
            _ => None,
        }
    }

    /// True for failures of reaching the coordinator at all (worth retrying later).
    pub fn is_unreachable(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// Builds the TLS-pinned HTTP client.
pub fn http_client(config: &CoordinatorConfig) -> Result<reqwest::Client, ClientError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(config.request_timeout_secs.min(30)))
        .read_timeout(Duration::from_secs(
            config.request_timeout_secs + u64::from(protocol::MAX_POLL_WAIT_SECS),
        ))
        .pool_idle_timeout(POOL_IDLE)
        .user_agent(concat!("fleetwave-agent/", env!("CARGO_PKG_VERSION")))
        // Artifact downloads follow redirects by hand (executor::download), to keep the
        // token on the coordinator and fall back to it when an object store fails.
        .redirect(reqwest::redirect::Policy::none())
        .https_only(true);
    let ca_exists = config.ca_file.exists();
    let builder = if config.use_system_roots {
        let mut b = builder.tls_backend_rustls();
        if ca_exists {
            let pem = read_ca(&config.ca_file)?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| ClientError::CaFile {
                path: config.ca_file.display().to_string(),
                message: e.to_string(),
            })?;
            b = b.tls_certs_merge([cert]);
        }
        b
    } else {
        let roots = pinned_roots(&config.ca_file)?;
        let mut tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        builder.tls_backend_preconfigured(tls)
    };
    builder
        .build()
        .map_err(|e| ClientError::Setup(e.to_string()))
}

fn read_ca(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::CaFile {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// A root store holding only the certificates in the fleet CA file.
pub fn pinned_roots(path: &Path) -> Result<rustls::RootCertStore, ClientError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let pem = read_ca(path)?;
    let bad = |message: String| ClientError::CaFile {
        path: path.display().to_string(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("certificate refused: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    Ok(roots)
}

fn join(base: &str, path: &str) -> String {
    format!("{}{}", base.trim_end_matches('/'), path)
}

fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // An HTTP date: how far in the future it is. The date is the coordinator's wall clock,
    // so it is compared with this box's real clock (never a test's manual one).
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let secs = at.as_second() - Timestamp::now().as_second();
    Some(Duration::from_secs(secs.max(0) as u64))
}

/// Reads a body up to `limit` bytes.
async fn read_capped(
    path: &'static str,
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, ClientError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ClientError::TooLarge { path, limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| ClientError::Transport {
        url: path.to_string(),
        message: e.to_string(),
    })? {
        if body.len() + chunk.len() > limit {
            return Err(ClientError::TooLarge { path, limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn parse_json<T: DeserializeOwned>(path: &'static str, body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|e| ClientError::Body {
        path,
        message: e.to_string(),
    })
}

async fn error_from(path: &'static str, response: reqwest::Response) -> ClientError {
    let status = response.status().as_u16();
    let retry = retry_after(response.headers());
    let body = read_capped(path, response, 64 * 1024)
        .await
        .unwrap_or_default();
    let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(b) => (b.error.code, b.error.message),
        Err(_) => (
            "http_error".to_string(),
            String::from_utf8_lossy(&body).chars().take(300).collect(),
        ),
    };
    ClientError::Status {
        path,
        status,
        code,
        message,
        retry_after: retry,
    }
}

/// Enrolls this box (no session needed): proves possession of `key` with the token.
pub async fn enroll(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    site_id: &str,
    named_box: Option<(&str, &str)>,
    key: &SigningKey,
) -> Result<EnrollResponse, ClientError> {
    let device_key = hex::encode(key.verifying_key().as_bytes());
    let message = match named_box {
        None => protocol::enroll_message(site_id, token, &device_key),
        Some((box_id, role)) => {
            protocol::box_enroll_message(site_id, box_id, role, token, &device_key)
        }
    };
    let proof = key.sign(&message);
    let request = EnrollRequest {
        token: token.to_string(),
        site_id: site_id.to_string(),
        device_key,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        proof: base64::engine::general_purpose::STANDARD.encode(proof.to_bytes()),
        box_id: named_box.map(|(b, _)| b.to_string()),
        role: named_box
            .map(|(_, r)| r.to_string())
            .filter(|r| !r.is_empty()),
    };
    let url = join(base, paths::ENROLL);
    let response = http
        .post(&url)
        .json(&request)
        .send()
        .await
        .map_err(|e| transport(&url, e))?;
    if !response.status().is_success() {
        return Err(error_from(paths::ENROLL, response).await);
    }
    let body = read_capped(paths::ENROLL, response, MAX_POLL_BYTES).await?;
    parse_json(paths::ENROLL, &body)
}

/// Whether an error means "this coordinator cannot serve now" (another may): the
/// connection failed or timed out, or it answered 502, 503 or 504.
fn fails_over(e: &ClientError) -> bool {
    match e {
        ClientError::Transport { .. } => true,
        ClientError::Status { status, .. } => matches!(status, 502..=504),
        _ => false,
    }
}

fn transport(url: &str, e: reqwest::Error) -> ClientError {
    // The full chain says whether it was DNS, refused, TLS or a timeout.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    ClientError::Transport {
        url: url.to_string(),
        message,
    }
}

/// The answer to a poll.
#[derive(Debug, Clone, PartialEq)]
pub enum PollAnswer {
    /// Nothing changed since the ETag the agent sent.
    NotModified { next_poll_secs: Option<u32> },
    Changed {
        response: PollResponse,
        etag: Option<String>,
        next_poll_secs: Option<u32>,
    },
}

/// A session with the coordinator for one enrolled site.
///
/// With several coordinator URLs (replicas of one fleet), requests go to the current one;
/// when it cannot be reached (connection refused or reset, timeout, 502/503/504) the same
/// request is tried at once on the next, in order, and the session stays there. Session
/// tokens are valid on every coordinator of the fleet, so failing over needs no handshake.
pub struct Session {
    http: reqwest::Client,
    bases: Vec<String>,
    /// Index into `bases` of the coordinator in use.
    current: std::sync::atomic::AtomicUsize,
    site_id: String,
    /// The box this agent enrolled as, when it named one (sessions name it too).
    box_id: Option<String>,
    key: SigningKey,
    token: Mutex<Option<String>>,
    /// What the last session answer said about signal minutes per report (`None`: an
    /// older coordinator that takes none).
    signal_minutes: Mutex<Option<u32>>,
    /// The time a session request is signed with.
    clock: crate::clock::Clock,
}

impl Session {
    pub fn new(http: reqwest::Client, base: &str, site_id: &str, key: SigningKey) -> Session {
        Session::with_coordinators(http, &[base.to_string()], site_id, key)
    }

    /// A session that fails over between `bases` (tried in order; at least one).
    pub fn with_coordinators(
        http: reqwest::Client,
        bases: &[String],
        site_id: &str,
        key: SigningKey,
    ) -> Session {
        assert!(!bases.is_empty(), "a session needs a coordinator URL");
        Session {
            http,
            bases: bases
                .iter()
                .map(|b| b.trim_end_matches('/').to_string())
                .collect(),
            current: std::sync::atomic::AtomicUsize::new(0),
            site_id: site_id.to_string(),
            box_id: None,
            key,
            token: Mutex::new(None),
            signal_minutes: Mutex::new(None),
            clock: crate::clock::Clock::system(),
        }
    }

    /// The same session, for the box `box_id` of the site (as it enrolled naming it).
    pub fn with_box(self, box_id: Option<String>) -> Session {
        Session { box_id, ..self }
    }

    /// The same session, signing its requests with the time of `clock`.
    pub fn with_clock(self, clock: crate::clock::Clock) -> Session {
        Session { clock, ..self }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The coordinator in use now.
    pub fn base_url(&self) -> &str {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        &self.bases[i % self.bases.len()]
    }

    /// Moves to the next coordinator after `failed` (the index that failed), unless
    /// another request already moved on.
    fn fail_over(&self, failed: usize, why: &ClientError) {
        if self.bases.len() < 2 {
            return;
        }
        let next = (failed + 1) % self.bases.len();
        if self
            .current
            .compare_exchange(
                failed,
                next,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_ok()
        {
            tracing::warn!(
                from = %self.bases[failed],
                to = %self.bases[next],
                error = %why,
                "coordinator unreachable; failing over"
            );
        }
    }

    /// Runs `attempt` against the current coordinator, then each next one while the
    /// answer says the coordinator is unreachable (each at most once).
    async fn failing_over<T, F, Fut>(&self, mut attempt: F) -> Result<T, ClientError>
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut last = None;
        for _ in 0..self.bases.len() {
            let i = self.current.load(std::sync::atomic::Ordering::Relaxed) % self.bases.len();
            match attempt(self.bases[i].clone()).await {
                Err(e) if fails_over(&e) => {
                    self.fail_over(i, &e);
                    last = Some(e);
                }
                other => return other,
            }
        }
        Err(last.expect("at least one coordinator was tried"))
    }

    /// The current bearer token, opening a session first if there is none.
    pub async fn bearer(&self) -> Result<String, ClientError> {
        if let Some(t) = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(t);
        }
        self.handshake().await
    }

    /// Opens a new session (signed, with a fresh nonce and the current time).
    pub async fn handshake(&self) -> Result<String, ClientError> {
        let timestamp = self.clock.now();
        let nonce = crate::state::random_id();
        let signature = self
            .key
            .sign(&protocol::session_message(&self.site_id, timestamp, &nonce));
        let request = SessionRequest {
            site_id: self.site_id.clone(),
            timestamp,
            nonce,
            signature: base64::engine::general_purpose::STANDARD.encode(signature.to_bytes()),
            box_id: self.box_id.clone(),
        };
        let session: SessionResponse = self
            .failing_over(|base| {
                let url = join(&base, paths::SESSION);
                let request = &request;
                async move {
                    let response = self
                        .http
                        .post(&url)
                        .json(request)
                        .send()
                        .await
                        .map_err(|e| transport(&url, e))?;
                    if !response.status().is_success() {
                        return Err(error_from(paths::SESSION, response).await);
                    }
                    let body = read_capped(paths::SESSION, response, MAX_ANSWER_BYTES).await?;
                    parse_json(paths::SESSION, &body)
                }
            })
            .await?;
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(session.token.clone());
        *self
            .signal_minutes
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = session.signal_minutes_per_report;
        tracing::debug!(expires_at = %session.expires_at, "session opened");
        Ok(session.token)
    }

    /// How many signal minutes the coordinator takes in one report batch, opening a
    /// session first if there is none; `None`: it takes none (an older coordinator).
    pub async fn signal_minutes_per_report(&self) -> Result<Option<u32>, ClientError> {
        self.bearer().await?;
        Ok(*self
            .signal_minutes
            .lock()
            .unwrap_or_else(|p| p.into_inner()))
    }

    fn forget_token(&self) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Sends an authenticated request; on 401 opens a new session and tries once more.
    async fn send(
        &self,
        path: &'static str,
        method: Method,
        query: &str,
        body: Option<Vec<u8>>,
        etag: Option<&str>,
        timeout: Duration,
    ) -> Result<reqwest::Response, ClientError> {
        self.failing_over(|base| {
            let body = body.clone();
            let method = method.clone();
            async move {
                let response = self
                    .send_to(&base, path, method, query, body, etag, timeout)
                    .await?;
                // A replica that answers 502/503/504 is as good as unreachable: try the next.
                if matches!(response.status().as_u16(), 502..=504) {
                    return Err(error_from(path, response).await);
                }
                Ok(response)
            }
        })
        .await
    }

    /// [`Session::send`] to one coordinator.
    #[allow(clippy::too_many_arguments)]
    async fn send_to(
        &self,
        base: &str,
        path: &'static str,
        method: Method,
        query: &str,
        body: Option<Vec<u8>>,
        etag: Option<&str>,
        timeout: Duration,
    ) -> Result<reqwest::Response, ClientError> {
        let url = format!("{base}{path}{query}");
        for attempt in 0..2 {
            let token = self.bearer().await?;
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&token)
                .timeout(timeout);
            if let Some(tag) = etag {
                request = request.header(header::IF_NONE_MATCH, tag);
            }
            if let Some(b) = &body {
                request = request
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(b.clone());
            }
            let response = request.send().await.map_err(|e| transport(&url, e))?;
            if response.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                tracing::info!(path, "session no longer valid; opening a new one");
                self.forget_token();
                continue;
            }
            return Ok(response);
        }
        unreachable!("the loop returns on its second attempt")
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &'static str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).expect("request bodies serialize");
        let response = self
            .send(path, Method::POST, "", Some(bytes), None, timeout)
            .await?;
        if !response.status().is_success() {
            return Err(error_from(path, response).await);
        }
        let body = read_capped(path, response, MAX_ANSWER_BYTES).await?;
        parse_json(path, &body)
    }

    /// `GET /v1/agent/poll`: long-polls up to `wait` seconds.
    pub async fn poll(
        &self,
        wait: u32,
        root_version: u64,
        etag: Option<&str>,
        request_timeout: Duration,
    ) -> Result<PollAnswer, ClientError> {
        let query = format!("?wait={wait}&root_version={root_version}");
        let timeout = request_timeout + Duration::from_secs(u64::from(wait));
        let response = self
            .send(paths::POLL, Method::GET, &query, None, etag, timeout)
            .await?;
        let next_poll_secs = response
            .headers()
            .get(NEXT_POLL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u32>().ok());
        if response.status() == StatusCode::NOT_MODIFIED {
            return Ok(PollAnswer::NotModified { next_poll_secs });
        }
        if !response.status().is_success() {
            return Err(error_from(paths::POLL, response).await);
        }
        let etag = response
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_capped(paths::POLL, response, MAX_POLL_BYTES).await?;
        Ok(PollAnswer::Changed {
            response: parse_json(paths::POLL, &body)?,
            etag,
            next_poll_secs,
        })
    }

    /// `POST /v1/agent/lease`.
    pub async fn lease(
        &self,
        rollout_id: &str,
        sequence: u64,
        timeout: Duration,
    ) -> Result<LeaseGrant, ClientError> {
        let request = LeaseRequest {
            rollout_id: rollout_id.to_string(),
            sequence,
        };
        let bytes = serde_json::to_vec(&request).expect("serializes");
        let response = self
            .send(paths::LEASE, Method::POST, "", Some(bytes), None, timeout)
            .await?;
        if response.status() == StatusCode::CONFLICT {
            let header_retry = retry_after(response.headers());
            let body = read_capped(paths::LEASE, response, MAX_ANSWER_BYTES).await?;
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let err = &value["error"];
            let text = |k: &str| err.get(k).and_then(|v| v.as_str()).map(str::to_string);
            // A reason this build does not know (or none) is `unknown`: wait and ask again.
            let reason = err
                .get("reason")
                .cloned()
                .and_then(|r| serde_json::from_value(r).ok())
                .unwrap_or(LeaseDenialReason::Unknown);
            let retry = err
                .get("retry_after_secs")
                .and_then(|v| v.as_u64())
                .map(Duration::from_secs)
                .or(header_retry)
                .unwrap_or(Duration::from_secs(60));
            return Err(ClientError::LeaseDenied {
                rollout_id: rollout_id.to_string(),
                reason,
                message: text("message").unwrap_or_default(),
                retry_after: retry,
            });
        }
        if !response.status().is_success() {
            return Err(error_from(paths::LEASE, response).await);
        }
        let body = read_capped(paths::LEASE, response, MAX_ANSWER_BYTES).await?;
        parse_json(paths::LEASE, &body)
    }

    /// `POST /v1/agent/reports`: one batch (at most [`protocol::MAX_REPORT_EVENTS`]).
    pub async fn report(
        &self,
        batch: &ReportBatch,
        timeout: Duration,
    ) -> Result<ReportAck, ClientError> {
        self.call(paths::REPORTS, batch, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds() {
        let mut h = header::HeaderMap::new();
        h.insert(header::RETRY_AFTER, "120".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(120)));
        h.insert(header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn only_413_and_the_coordinators_own_400_refuse_the_content() {
        let status = |status: u16, code: &str| ClientError::Status {
            path: paths::REPORTS,
            status,
            code: code.into(),
            message: "m".into(),
            retry_after: None,
        };
        assert_eq!(
            status(413, "payload_too_large")
                .refuses_content()
                .map(|r| r.status),
            Some(413)
        );
        assert_eq!(
            status(400, "bad_request").refuses_content().map(|r| r.code),
            Some("bad_request".to_string())
        );
        // A 400 without the coordinator's JSON error came from something in between.
        assert!(status(400, "http_error").refuses_content().is_none());
        for (s, code) in [
            (401, "session_expired"),
            (403, "forbidden"),
            (408, "timeout"),
            (415, "unsupported_media_type"),
            (429, "too_many_requests"),
            (503, "overloaded"),
        ] {
            assert!(status(s, code).refuses_content().is_none(), "{s}");
        }
        let unreachable = ClientError::Transport {
            url: "https://x".into(),
            message: "connection refused".into(),
        };
        assert!(unreachable.refuses_content().is_none());
    }

    #[test]
    fn missing_or_empty_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = pinned_roots(&missing).unwrap_err().to_string();
        assert!(err.contains("nope.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = pinned_roots(&empty).unwrap_err().to_string();
        assert!(err.contains("holds no certificate"), "{err}");
    }
}
