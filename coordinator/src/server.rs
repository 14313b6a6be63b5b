//! Starting and stopping the coordinator: open the store, load keys and the root chain,
//! warm the poll cache, serve the API over TLS (rustls, ring) or — for local development
//! only — plain HTTP, run the background tasks, and shut down gracefully.
//!
//! Start-up errors name the file or key at fault. Nothing here handles a request.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use fleetwave_shared::Envelope;
use fleetwave_shared::protocol::operator::OperatorRole;
use fleetwave_shared::service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt as _;

use crate::clock::Clock;
use crate::config::Config;
use crate::engine::{self, Engine};
use crate::http::auth::{RemoteAddr, token_hash};
use crate::metrics::Metrics;
use crate::state::{App, AppState, Sessions, TrustChain, random_hex};
use crate::store::{Db, OperatorTokenRecord};

/// How the server listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tls,
    /// Plain HTTP: `--insecure-plain-http`, local development only.
    InsecurePlainHttp,
}

/// A running coordinator.
pub struct Running {
    pub local_addr: SocketAddr,
    pub app: AppState,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets requests in flight finish (up to 10 s), flushes last-seen
    /// times and returns.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Builds the TLS acceptor from the configured PEM files.
pub fn tls_acceptor(config: &Config) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = config.tls.as_ref().context("config key [tls] is missing: give tls.cert and tls.key, or run with --insecure-plain-http for local development")?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .with_context(|| format!("tls.cert: cannot read {}", tls.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "tls.cert: {} is not a PEM certificate chain",
                tls.cert.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!("tls.cert: {} holds no certificate", tls.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).with_context(|| {
        format!(
            "tls.key: cannot read a PEM private key from {}",
            tls.key.display()
        )
    })?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(tls_provider()))
        .with_safe_default_protocol_versions()
        .context("the TLS provider supports no safe protocol version")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("tls.cert and tls.key do not form a usable certificate and key")?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    server.ignore_client_order = true;
    // Stateless session tickets: an agent reconnecting (after the coordinator closed its
    // idle connection, see `limits.max_keepalive_connections`) resumes its TLS session
    // without a certificate signature on our side or a chain verification on its side,
    // and the coordinator keeps no per-session state for it. Ticket keys live in memory
    // and rotate; after a restart agents do one full handshake. Resumption still runs an
    // ephemeral key exchange, so traffic keeps forward secrecy.
    server.ticketer = rustls::crypto::ring::Ticketer::new()
        .context("cannot create the TLS session ticket key")?;
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

/// ring's TLS provider with the SHA-256 suites first. Clients (rustls among them) ask for
/// AES-256-GCM with SHA-384 first, whose key schedule runs SHA-512 in software: it was
/// the largest single cost of a resumed handshake (12 % of the coordinator's CPU with
/// an agent reconnecting per poll), where SHA-256 uses the CPU's SHA instructions.
/// AES-128-GCM is as strong as the protocol around it needs.
pub fn tls_provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    provider
}

/// Loads the root chain: the stored roots, extended by configured root files.
async fn load_trust(config: &Config, db: &Db, clock: &Clock) -> anyhow::Result<TrustChain> {
    let stored = db.run(|s| s.roots()).await?;
    let mut chain = stored.clone();
    for (i, path) in config.roots.iter().enumerate() {
        let bytes = std::fs::read(path)
            .with_context(|| format!("roots[{i}]: cannot read {}", path.display()))?;
        let env = Envelope::from_json(&bytes)
            .with_context(|| format!("roots[{i}]: {} is not a root envelope", path.display()))?;
        if chain.contains(&env) {
            continue;
        }
        chain.push(env);
    }
    if chain.is_empty() {
        anyhow::bail!(
            "no root of trust: config key `roots` must list the root envelope file(s) on the first start"
        );
    }
    let trust = TrustChain::verify(chain)
        .map_err(|e| anyhow::anyhow!("root chain does not verify: {e}"))?;
    for (i, env) in trust.envelopes.iter().enumerate().skip(stored.len()) {
        let (v, e) = ((i + 1) as u64, env.clone());
        let now = clock.now();
        db.run(move |s| s.add_root(v, &e, now)).await?;
    }
    Ok(trust)
}

/// Opens everything the server needs, on the system clock.
pub async fn build_app(
    config: Config,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<AppState> {
    build_app_with_clock(config, shutdown, Clock::system()).await
}

/// Opens everything the server needs; every "now" is read from `clock`.
pub async fn build_app_with_clock(
    config: Config,
    shutdown: watch::Receiver<bool>,
    clock: Clock,
) -> anyhow::Result<AppState> {
    let opening = config.clone();
    let store = tokio::task::spawn_blocking(move || crate::store::open_configured(&opening))
        .await?
        .with_context(|| format!("database {}", config.database_name()))?;
    let db = Db::new(store);
    let signer = fleetwave_shared::keys::read_private_key(&config.signing_key)
        .with_context(|| "config key signing_key")?;
    let trust = load_trust(&config, &db, &clock).await?;
    let keyid = fleetwave_shared::KeyId::of(&signer.verifying_key()).0;
    if !trust.current.roles.coordinator.keyids.contains(&keyid) {
        anyhow::bail!(
            "signing_key {} (key id {keyid}) is not a coordinator key of root version {}: agents would refuse every assignment",
            config.signing_key.display(),
            trust.current.version
        );
    }
    if let Some(path) = &config.admin_token_file {
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("admin_token_file: cannot read {}", path.display()))?;
        let token = token.trim().to_string();
        if token.len() < 16 {
            anyhow::bail!(
                "admin_token_file: {} must hold a token of at least 16 characters",
                path.display()
            );
        }
        let hash = token_hash(&token);
        let h = hash.clone();
        if db
            .run(move |s| s.operator_token_by_hash(&h))
            .await?
            .is_none()
        {
            let record = OperatorTokenRecord {
                id: format!("ot-{}", random_hex(6)),
                name: "bootstrap-admin".into(),
                role: OperatorRole::Admin,
                created_at: clock.now(),
                created_by: "admin_token_file".into(),
                revoked: false,
            };
            db.run(move |s| s.create_operator_token(&hash, &record))
                .await?;
        }
    }
    let artifacts = crate::artifact_store::ArtifactStore::open(&config)
        .map_err(|e| anyhow::anyhow!("config key {e}"))?;
    artifacts
        .check()
        .await
        .with_context(|| format!("artifact store ({})", artifacts.describe()))?;
    tracing::info!(store = %artifacts.describe(), "artifact store");
    let metrics = Arc::new(Metrics::new());
    let controller = crate::liveness::Liveness::new(&metrics);
    let sessions = Sessions::new(&signer);
    let engine = Engine::new(
        db.clone(),
        signer,
        metrics.clone(),
        clock.clone(),
        engine::Settings::of(&config),
    );
    let app = Arc::new(App {
        db: db.clone(),
        sessions,
        trust: RwLock::new(trust),
        roots_changed: watch::channel(0).0,
        metrics,
        controller,
        shutdown,
        engine,
        clock,
        config,
        artifacts,
    });
    // The stored freezes, in force for leases from the first request on.
    app.engine.load_freezes().await?;
    // Warm the poll cache: every site's state and newest assignment.
    app.engine.load_poll_cache().await?;
    Ok(app)
}

/// Every route the server answers: the API and the dashboard. The OpenAPI tests read
/// the routes from this router, so that the document covers what is really served.
pub fn router(app: AppState) -> axum::Router {
    let edge = crate::http::edge::Edge::new(&app.config.limits, app.metrics.requests_shed.clone());
    let routes =
        crate::api::router(app.clone(), &edge).merge(crate::dashboard::router(app.clone(), &edge));
    crate::http::edge::outer_layers(routes, app, &edge)
}

/// Starts the server on `listener`, on the system clock.
pub async fn start(
    config: Config,
    transport: Transport,
    listener: TcpListener,
) -> anyhow::Result<Running> {
    start_with_clock(config, transport, listener, Clock::system()).await
}

/// Starts the server on `listener`; every "now" is read from `clock` (tests pass an
/// adjustable one and move it instead of sleeping).
pub async fn start_with_clock(
    config: Config,
    transport: Transport,
    listener: TcpListener,
    clock: Clock,
) -> anyhow::Result<Running> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let acceptor = match transport {
        Transport::Tls => Some(tls_acceptor(&config)?),
        Transport::InsecurePlainHttp => None,
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let app = build_app_with_clock(config, shutdown_rx.clone(), clock).await?;
    let local_addr = listener.local_addr()?;
    let router = router(app.clone());
    let head_buffer = crate::http::edge::head_buffer(&app.config.limits);
    let idle = Duration::from_secs(app.config.limits.keepalive_idle_secs);
    let connections = Arc::new(tokio::sync::Semaphore::new(connection_limit(
        app.config.limits.max_connections,
    )));
    let keepalive_max =
        i64::try_from(app.config.limits.max_keepalive_connections).unwrap_or(i64::MAX);
    let drain = Drain {
        max_bytes: app.config.limits.max_body_bytes as u64,
        within: Duration::from_secs(app.config.limits.request_timeout_secs),
    };

    // Whether this replica leads the wave controller or stands by, known before it serves.
    let leadership = Arc::new(crate::leadership::Leadership::configured(
        app.db.clone(),
        &app.config,
    ));
    leadership
        .first_claim(|role| app.controller.role(role))
        .await
        .context("claiming the wave controller's leadership")?;
    // Other replicas' writes, followed in memory (PostgreSQL with serving followers).
    let coherence = crate::coherence::start(app.clone())
        .await
        .context("listening for other replicas' changes")?;
    let controller = tokio::spawn(crate::supervisor::supervise(
        app.clone(),
        move |app| crate::supervisor::run_controller_for(app, leadership.clone()),
        crate::supervisor::Backoff::DEFAULT,
    ));
    let flusher = {
        let app = app.clone();
        let mut stop = shutdown_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => break,
                }
                if let Err(e) = app.engine.flush_seen().await {
                    tracing::warn!(error = %e, "flushing last-seen times failed");
                }
            }
        })
    };

    let trimmer = crate::memory::spawn_trimmer(shutdown_rx.clone());
    let pruner = crate::retention::spawn_pruner(app.clone(), shutdown_rx.clone());
    // Webhook deliveries: a task of their own, never in the controller's way.
    let webhooks = tokio::spawn(crate::webhooks::worker::supervise(
        app.db.clone(),
        app.clock.clone(),
        app.metrics.clone(),
        crate::webhooks::worker::Limits::DEFAULT,
        app.controller.subscribe(),
        shutdown_rx.clone(),
    ));
    // Sites gone silent, for site.silent webhooks (only while an endpoint wants them).
    let silences = tokio::spawn(crate::webhooks::silence::run(app.clone()));

    let task_app = app.clone();
    let task = tokio::spawn(async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut stop = shutdown_rx.clone();
        loop {
            // At the connection limit, new connections wait in the listen backlog.
            let permit = tokio::select! {
                p = connections.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = stop.changed() => break,
            };
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.changed() => break,
            };
            let _ = tcp.set_nodelay(true);
            let router = router.clone();
            let app = task_app.clone();
            let svc = tower::service_fn(
                move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(RemoteAddr(remote));
                    let (req, body) = RequestBody::wrap(req, drain);
                    let answer = router.clone().oneshot(req.map(axum::body::Body::new));
                    let app = app.clone();
                    async move {
                        let mut res = answer.await?;
                        if body.abandoned() {
                            // Answered before the body was read (a refusal by credentials,
                            // type or size) and too much of it is left to read past: hyper
                            // ends the connection, so say so, or the client sends its next
                            // request into a closed connection.
                            res.headers_mut().insert(
                                axum::http::header::CONNECTION,
                                axum::http::HeaderValue::from_static("close"),
                            );
                        } else if app.metrics.connections_open.get() > keepalive_max {
                            // Over the keep-alive budget: this connection ends with its
                            // answer and the agent reconnects (resuming its TLS session)
                            // at its next poll, instead of holding 25-27 KiB here meanwhile.
                            res.headers_mut().insert(
                                axum::http::header::CONNECTION,
                                axum::http::HeaderValue::from_static("close"),
                            );
                            app.metrics.keepalive_declined.inc();
                        }
                        Ok::<_, std::convert::Infallible>(res)
                    }
                },
            );
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                // Above `limits.max_header_bytes`, which `http::edge::limit_head` enforces
                // with a JSON answer; hyper's own 431 beyond this buffer has no body.
                .max_buf_size(head_buffer)
                .timer(hyper_util::rt::TokioTimer::new())
                // hyper's header read timeout also bounds the idle time between requests
                // on a keep-alive connection: it must outlast the poll interval.
                .header_read_timeout(idle);
            let builder = builder.http1_only();
            let acceptor = acceptor.clone();
            let watcher = graceful.watcher();
            let conn_app = task_app.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _open = OpenConnection::new(&conn_app.metrics);
                let svc = TowerToHyperService::new(svc);
                match acceptor {
                    Some(acceptor) => {
                        let tls = match tokio::time::timeout(
                            Duration::from_secs(10),
                            acceptor.accept(tcp),
                        )
                        .await
                        {
                            Ok(Ok(s)) => s,
                            _ => return,
                        };
                        let kind = match tls.get_ref().1.handshake_kind() {
                            Some(rustls::HandshakeKind::Resumed) => "resumed",
                            _ => "full",
                        };
                        Metrics::count(&conn_app.metrics.tls_handshakes, kind, 1);
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
                        let _ = watcher.watch(conn.into_owned()).await;
                    }
                    None => {
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
                        let _ = watcher.watch(conn.into_owned()).await;
                    }
                }
            });
        }
        drop(listener);
        let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
        let _ = controller.await;
        let _ = flusher.await;
        let _ = trimmer.await;
        let _ = pruner.await;
        let _ = webhooks.await;
        let _ = silences.await;
        if let Some(coherence) = coherence {
            let _ = coherence.await;
        }
        if let Err(e) = task_app.engine.flush_seen().await {
            tracing::warn!(error = %e, "final flush of last-seen times failed");
        }
    });
    Ok(Running {
        local_addr,
        app,
        shutdown: shutdown_tx,
        task,
    })
}

/// Connections the kernel queues for `accept` (it caps this at `net.core.somaxconn`).
/// Tokio's default of 1,024 overflowed when about 1,000 agents a second reconnected:
/// the kernel then drops their SYNs and each retries after 1, 3, 7 s, which shows as
/// poll latencies of seconds (`nstat TcpExtListenOverflows` counts the drops).
pub const LISTEN_BACKLOG: u32 = 65_535;

/// A listening socket on `addr` with [`LISTEN_BACKLOG`].
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// `fleetwave-coordinator serve`: runs until SIGTERM or SIGINT.
pub async fn serve(config: Config, transport: Transport) -> anyhow::Result<()> {
    let listener =
        listen(config.listen).with_context(|| format!("listen: cannot bind {}", config.listen))?;
    if transport == Transport::InsecurePlainHttp {
        tracing::warn!(
            "serving PLAIN HTTP without TLS (--insecure-plain-http): for local development only"
        );
    }
    let running = start(config, transport, listener).await?;
    tracing::info!(addr = %running.local_addr, "fleetwave-coordinator listening");
    service::ready();
    let watchdog = service::spawn_watchdog();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    service::stopping();
    running.stop().await;
    if let Some(w) = watchdog {
        w.abort();
    }
    Ok(())
}

/// How much of a request body the server reads past when its answer did not need it.
#[derive(Clone, Copy)]
struct Drain {
    max_bytes: u64,
    within: Duration,
}

const BODY_UNREAD: u8 = 0;
const BODY_READ: u8 = 1;
const BODY_DRAINING: u8 = 2;

/// Whether a request body was read to its end, is being read past, or was abandoned.
#[derive(Clone)]
struct BodyState(Arc<std::sync::atomic::AtomicU8>);

impl BodyState {
    fn set(&self, state: u8) {
        self.0.store(state, std::sync::atomic::Ordering::Relaxed);
    }

    /// The body was dropped before its end and is not being read past: hyper closes the
    /// connection after the answer.
    fn abandoned(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed) == BODY_UNREAD
    }
}

/// A request body that records when it has been read to its end. Dropped before that (a
/// handler answered without it), it reads the rest past in the background, up to
/// `drain`: the client is still sending it, and closing on unread bytes would reset the
/// connection under the answer (a client sees an EOF instead of the 401 or 413). A body
/// known to be over the limit is not read past (the answer says `Connection: close`); a
/// chunked one found over it while read past ends the connection then.
struct RequestBody {
    inner: Option<hyper::body::Incoming>,
    state: BodyState,
    drain: Drain,
}

impl RequestBody {
    fn wrap(
        req: axum::extract::Request<hyper::body::Incoming>,
        drain: Drain,
    ) -> (axum::extract::Request<RequestBody>, BodyState) {
        use hyper::body::Body as _;
        let state = BodyState(Arc::new(std::sync::atomic::AtomicU8::new(
            if req.body().is_end_stream() {
                BODY_READ
            } else {
                BODY_UNREAD
            },
        )));
        let body_state = state.clone();
        let req = req.map(|inner| RequestBody {
            inner: Some(inner),
            state,
            drain,
        });
        (req, body_state)
    }
}

impl hyper::body::Body for RequestBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        let polled = std::pin::Pin::new(&mut *inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || inner.is_end_stream() {
            self.state.set(BODY_READ);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| hyper::body::SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        use hyper::body::Body as _;
        let Some(mut body) = self.inner.take() else {
            return;
        };
        if body.is_end_stream() {
            self.state.set(BODY_READ);
            return;
        }
        if body.size_hint().lower() > self.drain.max_bytes {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.state.set(BODY_DRAINING);
        let drain = self.drain;
        runtime.spawn(async move {
            let _ = tokio::time::timeout(drain.within, async {
                let mut read = 0u64;
                while let Some(Ok(frame)) =
                    std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
                {
                    read += frame.data_ref().map_or(0, |d| d.len() as u64);
                    if read > drain.max_bytes {
                        break;
                    }
                }
            })
            .await;
        });
    }
}

/// Counts a connection in `connections_open` while it lives.
struct OpenConnection(prometheus_client::metrics::gauge::Gauge);

impl OpenConnection {
    fn new(metrics: &Metrics) -> OpenConnection {
        metrics.connections_open.inc();
        OpenConnection(metrics.connections_open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// File descriptors kept back from connections: SQLite's database, WAL and temporary
/// files, artifacts being served, the listener, logs.
pub const FD_RESERVE: u64 = 1024;

/// The connection limit this process can keep: `limits.max_connections`, lowered to what
/// the open-file limit leaves after [`FD_RESERVE`] (the soft limit is raised to the hard
/// one first). Past the open-file limit accept fails and SQLite cannot open its files, so
/// every request fails with `storage_unavailable`; under it, extra connections wait in the
/// listen backlog.
fn connection_limit(configured: usize) -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives on this stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return configured;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    // rlim_t is 32 bits wide on some 32-bit targets.
    #[allow(clippy::unnecessary_cast)]
    let open_files = lim.rlim_cur as u64;
    let effective = clamp_connections(configured, open_files);
    if effective < configured {
        tracing::warn!(
            configured,
            effective,
            open_files,
            "limits.max_connections is above what the open-file limit (LimitNOFILE, ulimit -n) \
             leaves; using the lower figure. Raise the open-file limit to serve more connections"
        );
    }
    effective
}

/// `configured`, at most the open-file limit `open_files` minus [`FD_RESERVE`] (never
/// below 16).
pub fn clamp_connections(configured: usize, open_files: u64) -> usize {
    let room = open_files.saturating_sub(FD_RESERVE).max(16);
    configured.min(usize::try_from(room).unwrap_or(usize::MAX))
}
