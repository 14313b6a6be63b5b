//! A compromised coordinator, for tests only: a TLS-terminating man in the middle between
//! one agent and the real coordinator, on 127.0.0.1.
//!
//! It simulates an attacker who took over the coordinator's host (or its name and TLS key):
//! it presents the coordinator's own server certificate (`tls/server.pem` and `server.key`
//! from `fleetwave-coordinator init`, issued by the fleet's local CA, so the agent's pinned
//! CA accepts it) and it can sign with the coordinator's online key (`coordinator.key`, the
//! root's `coordinator` role) through [`Forger`]. It has no offline root or release key:
//! the releases it serves are ones the real release key signed, or ones it signed itself
//! with a key that is not a release key.
//!
//! Every request is forwarded to the real coordinator (with reqwest, trusting only the
//! fleet CA) and every answer comes back unchanged, except the answers to
//! `GET /v1/agent/poll`: forwarded 200 answers that carry an assignment are recorded (to
//! replay them later), and while the test has set a forged answer with [`Mitm::serve`],
//! the poll is still forwarded (so the coordinator sees the site and a 401 still reaches
//! the agent) but a successful answer is replaced by the forged
//! [`PollResponse`](fleetwave_shared::protocol::PollResponse), without an `ETag`.
//!
//! The agent is pointed at it by [`Mitm::front`], which rewrites the site's configured
//! coordinator URL and restarts its agent. This module is a test fixture: it must never
//! listen on anything but loopback, and never be built into a fleetwave binary.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use ed25519_dalek::SigningKey;
use fleetwave_shared::docs::ASSIGNMENT_TYPE;
use fleetwave_shared::protocol::{NEXT_POLL_HEADER, PollResponse, paths};
use fleetwave_shared::{Assignment, Envelope};
use jiff::{SignedDuration, Timestamp};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::cluster::{Coordinator, Fleet};
use crate::error::{HarnessError, Result};

/// Largest request or answer body the man in the middle buffers (artifacts included).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// What the running proxy shares with the test thread.
struct Shared {
    upstream: String,
    client: reqwest::Client,
    forged: Mutex<Option<PollResponse>>,
    recorded: Mutex<Vec<PollResponse>>,
    polls: AtomicU64,
    forged_served: AtomicU64,
}

/// A running man in the middle. Dropping it closes its listener and connections.
pub struct Mitm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Mitm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mitm")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .finish_non_exhaustive()
    }
}

impl Mitm {
    /// Starts a man in the middle on `127.0.0.1:<free port>` in front of `coordinator`,
    /// with the coordinator's TLS certificate and key; it passes everything through.
    pub fn start(coordinator: &Coordinator) -> Result<Mitm> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = coordinator.dir.join("tls");
        let acceptor = acceptor(&tls.join("server.pem"), &tls.join("server.key"))?;
        let pem = std::fs::read(&coordinator.ca).map_err(|e| {
            HarnessError::io(
                format!("reading the fleet CA {}", coordinator.ca.display()),
                e,
            )
        })?;
        let ca = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| HarnessError::Proxy(format!("the fleet CA is not PEM: {e}")))?;
        let client = reqwest::Client::builder()
            .tls_backend_rustls()
            .tls_certs_only([ca])
            .https_only(true)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| HarnessError::Proxy(format!("building the forwarding client: {e}")))?;
        let shared = Arc::new(Shared {
            upstream: coordinator.url.trim_end_matches('/').to_string(),
            client,
            forged: Mutex::new(None),
            recorded: Mutex::new(Vec::new()),
            polls: AtomicU64::new(0),
            forged_served: AtomicU64::new(0),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mitm")
            .enable_all()
            .build()
            .map_err(|e| HarnessError::io("starting the man in the middle's runtime", e))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
            .map_err(|e| HarnessError::io("binding the man in the middle on 127.0.0.1:0", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| HarnessError::io("reading the man in the middle's address", e))?;
        runtime.spawn(accept_loop(listener, acceptor, Arc::clone(&shared)));
        Ok(Mitm {
            addr,
            shared,
            runtime: Some(runtime),
        })
    }

    /// Starts a man in the middle in front of the fleet's coordinator, points `site`'s
    /// agent at it (the `[coordinator] url` of its config) and (re)starts that agent;
    /// returns once the agent polled through it.
    pub fn front(fleet: &mut Fleet, site: &str) -> Result<Mitm> {
        let mitm = Mitm::start(&fleet.coordinator)?;
        let config = fleet.site(site)?.dirs.config.clone();
        let text = std::fs::read_to_string(&config)
            .map_err(|e| HarnessError::io(format!("reading {}", config.display()), e))?;
        let current = toml::from_str::<toml::Value>(&text)
            .ok()
            .and_then(|v| {
                v.get("coordinator")?
                    .get("url")?
                    .as_str()
                    .map(str::to_string)
            })
            .ok_or_else(|| {
                HarnessError::Fleet(format!("{} has no [coordinator] url", config.display()))
            })?;
        let quote = |s: &str| serde_json::to_string(s).expect("a string serializes");
        let from = format!("url = {}", quote(&current));
        if !text.contains(&from) {
            return Err(HarnessError::Fleet(format!(
                "{} has no line `{from}`: cannot point the agent at the man in the middle",
                config.display()
            )));
        }
        let text = text.replacen(&from, &format!("url = {}", quote(&mitm.url())), 1);
        std::fs::write(&config, text)
            .map_err(|e| HarnessError::io(format!("writing {}", config.display()), e))?;
        fleet.start_agent(site)?;
        crate::eventually_default(
            &format!("{site} to poll through the man in the middle"),
            || {
                let polls = mitm.polls();
                anyhow::ensure!(polls > 0, "no poll forwarded yet");
                Ok(())
            },
        )?;
        Ok(mitm)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port>`, what the agent is configured with.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// From now on, every successful poll is answered with `answer` instead of the
    /// coordinator's answer.
    pub fn serve(&self, answer: PollResponse) {
        *lock(&self.shared.forged) = Some(answer);
    }

    /// From now on, poll answers are the coordinator's again.
    pub fn pass(&self) {
        *lock(&self.shared.forged) = None;
    }

    /// Polls forwarded to the coordinator so far.
    pub fn polls(&self) -> u64 {
        self.shared.polls.load(Ordering::SeqCst)
    }

    /// Polls answered with a forged answer so far.
    pub fn forged_served(&self) -> u64 {
        self.shared.forged_served.load(Ordering::SeqCst)
    }

    /// The coordinator's poll answers that carried an assignment, each distinct assignment
    /// once, oldest first: what an attacker on the path keeps to replay.
    pub fn recorded(&self) -> Vec<PollResponse> {
        lock(&self.shared.recorded).clone()
    }
}

impl Drop for Mitm {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A TLS acceptor with the coordinator's certificate and key (HTTP/1.1, as the agent asks).
fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    let bad = |what: &Path, e: String| HarnessError::Proxy(format!("{}: {e}", what.display()));
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e.to_string()))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(cert, e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(25)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, std::convert::Infallible>(handle(&shared, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}

/// Forwards one request; replaces or records a poll answer.
async fn handle(shared: &Shared, request: Request<hyper::body::Incoming>) -> Response<Body> {
    match forward(shared, request).await {
        Ok(response) => response,
        Err(message) => {
            let mut response = Response::new(Body::from(message));
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            response
        }
    }
}

async fn forward(
    shared: &Shared,
    request: Request<hyper::body::Incoming>,
) -> std::result::Result<Response<Body>, String> {
    let (parts, body) = request.into_parts();
    let is_poll = parts.method == Method::GET && parts.uri.path() == paths::POLL;
    let forged = if is_poll {
        lock(&shared.forged).clone()
    } else {
        None
    };
    let target = format!(
        "{}{}",
        shared.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let body = axum::body::to_bytes(Body::new(body), MAX_BODY)
        .await
        .map_err(|e| format!("reading the request body: {e}"))?;
    let mut headers = hop_by_hop_removed(&parts.headers);
    if forged.is_some() {
        // A fresh answer, not a 304, so that a successful poll can be replaced.
        headers.remove(header::IF_NONE_MATCH);
    }
    let answer = shared
        .client
        .request(parts.method.clone(), &target)
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("forwarding to {target}: {e}"))?;
    let status = answer.status();
    let headers = hop_by_hop_removed(answer.headers());
    let bytes = answer
        .bytes()
        .await
        .map_err(|e| format!("reading the answer of {target}: {e}"))?;
    if is_poll {
        shared.polls.fetch_add(1, Ordering::SeqCst);
    }
    if let Some(forged) =
        forged.filter(|_| status.is_success() || status == StatusCode::NOT_MODIFIED)
    {
        shared.forged_served.fetch_add(1, Ordering::SeqCst);
        let json = serde_json::to_vec(&forged).map_err(|e| e.to_string())?;
        let mut response = Response::new(Body::from(json));
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(NEXT_POLL_HEADER, HeaderValue::from(forged.next_poll_secs));
        return Ok(response);
    }
    if is_poll
        && status == StatusCode::OK
        && let Ok(poll) = serde_json::from_slice::<PollResponse>(&bytes)
        && let Some(assignment) = &poll.assignment
    {
        let mut recorded = lock(&shared.recorded);
        if !recorded
            .iter()
            .any(|r| r.assignment.as_ref() == Some(assignment))
        {
            recorded.push(poll);
        }
    }
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// The headers that describe one connection or one encoding of the body, not the message.
fn hop_by_hop_removed(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    for name in [
        header::HOST,
        header::CONNECTION,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TE,
        header::TRAILER,
        header::PROXY_AUTHORIZATION,
    ] {
        out.remove(name);
    }
    out.remove("keep-alive");
    out
}

/// Signs documents with a key the test took from the coordinator's directory, as the
/// attacker who owns the coordinator can.
pub struct Forger {
    key: SigningKey,
}

impl std::fmt::Debug for Forger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forger").finish_non_exhaustive()
    }
}

impl Forger {
    /// The coordinator's online signing key (`coordinator.key`): assignments it signs carry
    /// the `coordinator` role's signature, exactly like real ones.
    pub fn coordinator(coordinator: &Coordinator) -> Result<Forger> {
        Forger::from_key(&coordinator.dir.join("coordinator.key"))
    }

    pub fn from_key(path: &Path) -> Result<Forger> {
        let key = fleetwave_shared::keys::read_private_key(path).map_err(|e| {
            HarnessError::Fleet(format!("reading the private key {}: {e}", path.display()))
        })?;
        Ok(Forger { key })
    }

    /// Signs `assignment` as an assignment envelope.
    pub fn assignment(&self, assignment: &Assignment) -> Envelope {
        let payload = serde_json::to_vec(assignment).expect("an assignment serializes");
        Envelope::sign(ASSIGNMENT_TYPE, &payload, &[&self.key])
    }
}

/// An assignment of `release` to `site_id` with `sequence`, issued a minute ago, startable
/// now and valid for an hour; a scenario changes the fields it attacks.
pub fn assignment_for(site_id: &str, release: &Envelope, sequence: u64) -> Assignment {
    let now = Timestamp::now();
    Assignment {
        site_id: site_id.to_string(),
        rollout_id: format!("forged-{sequence}"),
        wave: 0,
        release_sha256: release.digest(),
        sequence,
        not_before: now - SignedDuration::from_mins(1),
        issued_at: now - SignedDuration::from_mins(1),
        expires: now + SignedDuration::from_hours(1),
        rollback: false,
        window: None,
    }
}

/// A poll answer carrying `assignment` and `release`, asking for the next poll in a second.
pub fn poll_answer(assignment: Envelope, release: Envelope) -> PollResponse {
    PollResponse {
        assignment: Some(assignment),
        release: Some(release),
        roots: Vec::new(),
        next_poll_secs: 1,
    }
}

/// An assignment's fields, read without verifying its signatures (to name a recorded one).
pub fn read_assignment(envelope: &Envelope) -> Result<Assignment> {
    use base64::Engine as _;
    let bad = |e: String| HarnessError::Fleet(format!("not an assignment envelope: {e}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&envelope.payload)
        .map_err(|e| bad(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))
}

/// Waits until the coordinator stored a `refusal` report from `site` with `code` about the
/// assignment of `rollout_id` and `sequence`; returns the report's body.
pub fn wait_refusal(
    fleet: &Fleet,
    site: &str,
    code: &str,
    rollout_id: &str,
    sequence: u64,
) -> Result<serde_json::Value> {
    let db = crate::inspect::CoordinatorDb::new(fleet.coordinator.database());
    crate::eventually_default(
        &format!("{site} to report a {code} refusal of {rollout_id}#{sequence}"),
        || {
            let refusals: Vec<serde_json::Value> = db
                .reports(site)?
                .into_iter()
                .filter(|r| r.body["kind"] == "refusal")
                .map(|r| r.body)
                .collect();
            refusals
                .iter()
                .find(|b| {
                    b["code"] == code && b["rollout_id"] == rollout_id && b["sequence"] == sequence
                })
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("refusals reported so far: {refusals:?}"))
        },
    )
}

/// Checks that `release` left no trace at `site`: not on disk, not served, not installed
/// or assigned in the agent's `status --json`, no install phase reported. `on_disk` is the
/// version the site must still run (None: nothing ever installed).
pub fn assert_untouched(
    fleet: &Fleet,
    site: &str,
    release: &crate::release::DemoRelease,
    on_disk: Option<&str>,
) -> Result<()> {
    let s = fleet.site(site)?;
    let fail = |what: String| Err(HarnessError::Fleet(format!("{site}: {what}")));
    let disk = s.version_on_disk()?;
    if disk.as_deref() != on_disk {
        return fail(format!("runs {disk:?} on disk, expected {on_disk:?}"));
    }
    if let Some(version) = on_disk {
        let served = s.version_served()?;
        if served != version {
            return fail(format!("the app serves {served:?}, expected {version:?}"));
        }
    }
    let unpacked = s
        .dirs
        .app
        .join(crate::release::DEMO_STREAM)
        .join(&release.version);
    if unpacked.exists() {
        return fail(format!("{} was unpacked", unpacked.display()));
    }
    let out = fleet.agent_cli(site, &["status", "--json"])?;
    let status: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| HarnessError::Fleet(format!("status --json is not JSON ({e}): {out}")))?;
    let installed = status["installed"].as_array().cloned().unwrap_or_default();
    if installed
        .iter()
        .any(|i| i["release_id"] == release.id.as_str())
    {
        return fail(format!("status shows {} installed: {out}", release.id));
    }
    if status["assignment"]["release_id"] == release.id.as_str() {
        return fail(format!("status shows {} assigned: {out}", release.id));
    }
    if status["last_install"]["release_id"] == release.id.as_str() {
        return fail(format!("status shows an install of {}: {out}", release.id));
    }
    let phases = fleet.phases(site, &release.id)?;
    if !phases.is_empty() {
        return fail(format!("reported phases {phases:?} for {}", release.id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:1"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"e\""));
        let out = hop_by_hop_removed(&h);
        assert!(out.get(header::HOST).is_none());
        assert!(out.get(header::CONNECTION).is_none());
        assert_eq!(out.get(header::AUTHORIZATION).unwrap(), "Bearer x");
        assert_eq!(out.get(header::IF_NONE_MATCH).unwrap(), "\"e\"");
    }

    #[test]
    fn a_forged_assignment_verifies_against_the_signing_key_only() {
        let key = fleetwave_shared::keys::generate();
        let forger = Forger { key: key.clone() };
        let release = Envelope::sign("x", b"{}", &[&key]);
        let a = assignment_for("pig-1", &release, 7);
        assert_eq!(a.release_sha256, release.digest());
        assert!(a.issued_at < a.expires && a.not_before <= Timestamp::now());
        let envelope = forger.assignment(&a);
        let mut ring = fleetwave_shared::dsse::KeyRing::new();
        let id = fleetwave_shared::KeyId::of(&key.verifying_key()).0;
        ring.insert(id, key.verifying_key());
        assert!(envelope.verify(ASSIGNMENT_TYPE, &ring, 1).is_ok());
        let other = fleetwave_shared::dsse::KeyRing::new();
        assert!(envelope.verify(ASSIGNMENT_TYPE, &other, 1).is_err());
    }
}
