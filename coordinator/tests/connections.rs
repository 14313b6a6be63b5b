//! Connections over real TLS to an in-process coordinator: keep-alive within
//! `limits.max_keepalive_connections`, connections over it end with their answer, and a
//! client that reconnects resumes its TLS session from a stateless ticket.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleetwave_coordinator::config::Config;
use fleetwave_coordinator::init::{InitOptions, init};
use fleetwave_coordinator::server::{Running, Transport, start};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};

struct Coordinator {
    _dir: tempfile::TempDir,
    running: Running,
    tls: Arc<rustls::ClientConfig>,
}

async fn coordinator(extra: &str) -> Coordinator {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let out = init(&InitOptions::dev_loopback(dir.path().to_path_buf())).unwrap();
    let mut text = std::fs::read_to_string(&out.config).unwrap();
    text.push_str(extra);
    std::fs::write(&out.config, text).unwrap();
    let config = Config::load(&out.config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = start(config, Transport::Tls, listener).await.unwrap();
    Coordinator {
        tls: client_config(&out.ca_cert),
        _dir: dir,
        running,
    }
}

/// A client configuration trusting the setup's CA; connections made with the same one
/// share its TLS session cache, as an agent's do.
fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

struct Connection {
    sender: SendRequest<Empty<Bytes>>,
    task: tokio::task::JoinHandle<()>,
    resumed: bool,
    suite: Option<rustls::CipherSuite>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Coordinator {
    async fn connect(&self) -> Connection {
        let tcp = tokio::net::TcpStream::connect(self.running.local_addr)
            .await
            .unwrap();
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let suite = tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Connection {
            sender,
            task,
            resumed,
            suite,
        }
    }
}

impl Connection {
    /// `GET path`; returns the status, the `Connection` header and the body.
    async fn get(&mut self, path: &str) -> (u16, Option<String>, String) {
        self.sender.ready().await.unwrap();
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = self.sender.send_request(req).await.unwrap();
        let status = res.status().as_u16();
        let connection = res
            .headers()
            .get(hyper::header::CONNECTION)
            .map(|v| v.to_str().unwrap().to_string());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            connection,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    /// Whether the coordinator closed this connection (within a few seconds).
    async fn closed(&mut self) -> bool {
        let task = &self.task;
        fleetwave_testkit::wait(
            fleetwave_testkit::patience(Duration::from_secs(10)),
            || async { if task.is_finished() { Ok(()) } else { Err(()) } },
        )
        .await
        .is_ok()
    }
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in /metrics:\n{text}"))
}

#[tokio::test]
async fn connections_over_the_keepalive_budget_end_with_their_answer() {
    let c = coordinator("\n[limits]\nmax_keepalive_connections = 2\n").await;
    let mut a = c.connect().await;
    let mut b = c.connect().await;
    assert_eq!(a.get("/healthz").await.1, None, "first connection is kept");
    assert_eq!(b.get("/healthz").await.1, None, "second connection is kept");

    // A third open connection is over the budget: its answer closes it.
    let mut third = c.connect().await;
    let (status, connection, _) = third.get("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(connection.as_deref(), Some("close"));
    assert!(
        third.closed().await,
        "the coordinator closed the third connection"
    );

    // The kept connections still carry further requests.
    assert_eq!(a.get("/healthz").await.0, 200);
    let (_, connection, metrics) = b.get("/metrics").await;
    assert_eq!(connection, None);
    assert_eq!(metric(&metrics, "fleetwave_keepalive_declined_total "), 1.0);
    assert_eq!(metric(&metrics, "fleetwave_connections_open "), 2.0);

    // Once connections close, new ones are kept again.
    drop(a);
    drop(b);
    let mut d = fleetwave_testkit::eventually("closed connections to leave the count", || async {
        let mut d = c.connect().await;
        let (_, _, metrics) = d.get("/metrics").await;
        (metric(&metrics, "fleetwave_connections_open ") <= 2.0).then_some(d)
    })
    .await;
    assert_eq!(d.get("/healthz").await.1, None);
    assert!(!d.task.is_finished());
    c.running.stop().await;
}

#[tokio::test]
async fn a_reconnecting_client_resumes_its_tls_session_from_a_ticket() {
    let c = coordinator("").await;
    let mut first = c.connect().await;
    assert!(!first.resumed, "the first handshake is a full one");
    // The client asks for AES-256-GCM-SHA384 first; the coordinator's order wins.
    assert_eq!(
        first.suite,
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
    // The answer carries the session ticket the client stores.
    assert_eq!(first.get("/healthz").await.0, 200);
    drop(first);

    let mut second = c.connect().await;
    assert!(second.resumed, "the second handshake resumes the session");
    let (_, _, metrics) = second.get("/metrics").await;
    assert_eq!(
        metric(&metrics, "fleetwave_tls_handshakes_total{result=\"full\"} "),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "fleetwave_tls_handshakes_total{result=\"resumed\"} "
        ),
        1.0
    );
    c.running.stop().await;
}

/// `POST path` with `body` on a fresh connection, then `GET /healthz` on the same one if
/// the answer left it open. Returns the status, the `Connection` header, and whether the
/// second request went through.
async fn post_then_reuse(c: &Coordinator, path: &str, body: String) -> (u16, Option<String>, bool) {
    use http_body_util::Full;
    let tcp = tokio::net::TcpStream::connect(c.running.local_addr)
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(c.tls.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::post(path)
        .header(hyper::header::HOST, "localhost")
        .header(hyper::header::AUTHORIZATION, "Bearer not-a-session")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    let connection = res
        .headers()
        .get(hyper::header::CONNECTION)
        .map(|v| v.to_str().unwrap().to_string());
    res.into_body().collect().await.unwrap();
    let mut reused = false;
    if connection.is_none() && sender.ready().await.is_ok() {
        let req = hyper::Request::get("/healthz")
            .header(hyper::header::HOST, "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        reused = sender.send_request(req).await.is_ok();
    }
    task.abort();
    (status, connection, reused)
}

/// An answer given before the request body was read (a refusal by credentials, type or
/// size) must not reset the connection under it while the client is still sending: the
/// coordinator reads the rest past (up to `limits.max_body_bytes`) and the connection
/// carries the next request. A body over that limit ends the connection, and the answer
/// says so, or the client sends its next request into a closed connection (the fuzz pass
/// saw TLS EOF errors on both).
#[tokio::test]
async fn an_answer_before_the_body_was_read_keeps_or_closes_the_connection_cleanly() {
    let c = coordinator("").await;
    let events = |n: usize| format!("{{\"events\": [{}]}}", vec!["{}"; n].join(","));
    let (status, connection, reused) =
        post_then_reuse(&c, "/v1/agent/reports", events(30_000)).await;
    assert_eq!(status, 401);
    assert_eq!(connection, None, "the unread 90 KB are read past");
    assert!(reused, "the connection carries the next request");

    let over_limit = events(1_100_000); // 3.3 MB, over the 2 MiB body limit
    let (status, connection, _) = post_then_reuse(&c, "/v1/agent/reports", over_limit).await;
    assert_eq!(status, 401);
    assert_eq!(
        connection.as_deref(),
        Some("close"),
        "too much to read past"
    );

    // /v1/enroll reads the whole body before it refuses it.
    let (status, connection, reused) = post_then_reuse(&c, "/v1/enroll", events(30_000)).await;
    assert_eq!(status, 400);
    assert_eq!(connection, None, "the body was read");
    assert!(reused, "the connection carries the next request");
    c.running.stop().await;
}
