//! The memory an idle keep-alive connection costs the coordinator: opens one TLS
//! connection per simulated site, as every real agent holds one between polls when the
//! coordinator's keep-alive outlasts the poll interval, polls once over it (a 200 with
//! the site's answer, then a 304 with its ETag: the steady state of an agent) and leaves
//! it idle. The coordinator's RSS is read from `/proc` before, after each step and after
//! all connections are closed again; the figure is the growth per open connection.
//!
//! Each connection is its own TCP + TLS + HTTP/1.1 connection (hyper's client over
//! tokio-rustls), not a pooled client's, so the count of open connections is exact. It
//! prints figures and never asserts them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::fleet::{Fleet, shard_address};
use crate::procstat::{self, mib};

/// One open, idle connection: dropping it closes the connection.
struct Idle {
    _sender: Option<SendRequest<Empty<Bytes>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Idle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn tls_client(ca_pem: &[u8]) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.context("tls/ca.pem holds a broken certificate")?)
            .context("tls/ca.pem is not a usable CA certificate")?;
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// What became of one connection.
enum Opened {
    /// Polled twice and left open.
    Idle(Idle),
    /// The coordinator answered the first poll with `Connection: close`: it was over its
    /// `limits.max_keepalive_connections`.
    Declined,
}

/// Opens a connection from `source`, polls twice over it (200, then 304 with the ETag)
/// and returns it idle.
async fn open(
    tls: &tokio_rustls::TlsConnector,
    coordinator: std::net::SocketAddr,
    source: std::net::Ipv4Addr,
    path: &str,
    token: &str,
) -> anyhow::Result<Opened> {
    let (mut sender, task) = connect(tls, coordinator, source).await?;
    let mut idle = Idle {
        _sender: None,
        task,
    };
    // From here on, dropping `idle` on an error closes the connection.
    let mut etag = None;
    for want in [200u16, 304] {
        let mut req = hyper::Request::get(path)
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        if let Some(e) = &etag {
            req = req.header(hyper::header::IF_NONE_MATCH, e);
        }
        sender.ready().await.context("connection closed")?;
        let res = sender
            .send_request(req.body(Empty::<Bytes>::new())?)
            .await?;
        let status = res.status().as_u16();
        etag = res.headers().get(hyper::header::ETAG).cloned();
        let close = res
            .headers()
            .get(hyper::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        res.into_body().collect().await?;
        if status != want {
            bail!("poll answered {status}, expected {want}");
        }
        if close {
            return Ok(Opened::Declined);
        }
    }
    idle._sender = Some(sender);
    Ok(Opened::Idle(idle))
}

/// RSS of the coordinator after it settled for `settle`.
async fn settled_rss(pid: u32, settle: Duration) -> anyhow::Result<u64> {
    tokio::time::sleep(settle).await;
    Ok(procstat::sample(pid)?.rss_bytes)
}

/// Opens `fleet.sites.len()` idle connections in `steps` steps, reading the
/// coordinator's RSS after each, holds them `hold`, then closes them. Returns the count of
/// connections that failed to open.
pub async fn idle_connections(fleet: Fleet, steps: usize, hold: Duration) -> anyhow::Result<u64> {
    let pid = fleet.coordinator.pid;
    let tls = tls_client(&fleet.setup.ca_pem)?;
    let addr = fleet.coordinator.addr;
    let root_version = fleet.anchor.root().version;
    let path = format!(
        "{}?wait=0&root_version={root_version}",
        fleetwave_shared::protocol::paths::POLL
    );
    let settle = Duration::from_secs(3);
    let sites: Vec<(usize, String)> = fleet
        .sites
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.token().map(|t| (i, t.to_string())))
        .collect();
    if sites.len() < fleet.sites.len() {
        bail!(
            "{} of {} sites have no session",
            fleet.sites.len() - sites.len(),
            fleet.sites.len()
        );
    }
    // The simulator's own pools are idle by now; their connections count in the baseline.
    let base = settled_rss(pid, settle).await?;
    println!(
        "idle keep-alive connections: {} sites, coordinator RSS before {:.1} MiB",
        sites.len(),
        mib(base)
    );
    let mut open_now: Vec<Idle> = Vec::with_capacity(sites.len());
    let (mut failed, mut declined) = (0u64, 0u64);
    let per_step = sites.len().div_ceil(steps.max(1));
    for chunk in sites.chunks(per_step) {
        let started = Instant::now();
        let results: Vec<anyhow::Result<Opened>> =
            futures_util::stream::iter(chunk.iter().map(|(i, token)| {
                let (tls, path) = (tls.clone(), path.clone());
                async move { open(&tls, addr, shard_address(*i % 256), &path, token).await }
            }))
            .buffer_unordered(64)
            .collect()
            .await;
        for r in results {
            match r {
                Ok(Opened::Idle(c)) => open_now.push(c),
                Ok(Opened::Declined) => declined += 1,
                Err(e) => {
                    if failed < 3 {
                        eprintln!("open connection: {e:#}");
                    }
                    failed += 1;
                }
            }
        }
        let opened = started.elapsed();
        let rss = settled_rss(pid, settle).await?;
        let per = (rss as f64 - base as f64) / open_now.len().max(1) as f64;
        println!(
            "  {:>6} open ({declined} closed by the coordinator after their answer): RSS {:.1} MiB, {:+.1} MiB over the baseline, {:.1} KiB per open connection (step opened in {:.1} s)",
            open_now.len(),
            mib(rss),
            (rss as f64 - base as f64) / 1048576.0,
            per / 1024.0,
            opened.as_secs_f64()
        );
    }
    tokio::time::sleep(hold).await;
    let held = procstat::sample(pid)?.rss_bytes;
    println!(
        "  after {:.0} s idle: RSS {:.1} MiB, {:.1} KiB per connection",
        hold.as_secs_f64(),
        mib(held),
        (held as f64 - base as f64) / open_now.len().max(1) as f64 / 1024.0
    );
    let n = open_now.len();
    drop(open_now);
    let after = settled_rss(pid, settle).await?;
    println!(
        "  {n} closed: RSS {:.1} MiB ({:+.1} MiB over the baseline: what the allocator kept)",
        mib(after),
        (after as f64 - base as f64) / 1048576.0
    );
    Ok(failed)
}

/// One poll over a sender: `GET path` with `If-None-Match` (a 304, the usual poll).
async fn poll_304(
    sender: &mut SendRequest<Empty<Bytes>>,
    path: &str,
    token: &str,
    etag: &hyper::header::HeaderValue,
) -> anyhow::Result<()> {
    sender.ready().await.context("connection closed")?;
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, "localhost")
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(hyper::header::IF_NONE_MATCH, etag)
        .body(Empty::<Bytes>::new())?;
    let res = sender.send_request(req).await?;
    let status = res.status().as_u16();
    res.into_body().collect().await?;
    if status != 304 {
        bail!("poll answered {status}, expected 304");
    }
    Ok(())
}

/// A connection ready for requests, and the task driving it.
async fn connect(
    tls: &tokio_rustls::TlsConnector,
    coordinator: std::net::SocketAddr,
    source: std::net::Ipv4Addr,
) -> anyhow::Result<(SendRequest<Empty<Bytes>>, tokio::task::JoinHandle<()>)> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    let tcp = socket.connect(coordinator).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let stream = tls
        .connect(ServerName::try_from("localhost")?, tcp)
        .await
        .context("TLS handshake")?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, task))
}

/// The coordinator's cost of a poll on a kept connection against a poll on a new
/// connection that resumes its TLS session (what an agent over the coordinator's
/// `limits.max_keepalive_connections` does): `workers` loops poll for `seconds` each way;
/// the coordinator's CPU time per poll comes from `/proc`, the handshake kinds from its
/// metrics. Returns the count of failed polls.
pub async fn handshake_cost(fleet: Fleet, workers: usize, seconds: f64) -> anyhow::Result<u64> {
    let pid = fleet.coordinator.pid;
    let tls = tls_client(&fleet.setup.ca_pem)?;
    let addr = fleet.coordinator.addr;
    let path = format!(
        "{}?wait=0&root_version={}",
        fleetwave_shared::protocol::paths::POLL,
        fleet.anchor.root().version
    );
    // Each worker polls as one site; its first poll (a 200) gives the ETag.
    let mut sites = Vec::new();
    for (i, site) in fleet.sites.iter().take(workers).enumerate() {
        let token = site.token().context("a site has no session")?.to_string();
        let (mut sender, task) = connect(&tls, addr, shard_address(i % 256)).await?;
        sender.ready().await?;
        let res = sender
            .send_request(
                hyper::Request::get(&path)
                    .header(hyper::header::HOST, "localhost")
                    .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
                    .body(Empty::<Bytes>::new())?,
            )
            .await?;
        let etag = res
            .headers()
            .get(hyper::header::ETAG)
            .cloned()
            .context("the poll answer has no ETag")?;
        res.into_body().collect().await?;
        task.abort();
        sites.push((i, token, etag));
    }
    let failed = Arc::new(crate::stats::Counter::default());
    for fresh in [false, true] {
        let latency = Arc::new(crate::stats::Latencies::default());
        let polls = Arc::new(crate::stats::Counter::default());
        let handshakes_before = handshakes(&fleet).await?;
        let from = procstat::sample(pid)?;
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let tasks: Vec<_> = sites
            .iter()
            .cloned()
            .map(|(i, token, etag)| {
                // Each loop has its own session cache, as each agent has.
                let tls = tls_client(&fleet.setup.ca_pem);
                let path = path.clone();
                let (latency, polls, failed) = (latency.clone(), polls.clone(), failed.clone());
                tokio::spawn(async move {
                    let tls = tls?;
                    let source = shard_address(i % 256);
                    let mut kept = None;
                    while Instant::now() < deadline {
                        let started = Instant::now();
                        let done = async {
                            if kept.is_none() || fresh {
                                kept = Some(connect(&tls, addr, source).await?);
                            }
                            let (sender, _) = kept.as_mut().expect("connected above");
                            poll_304(sender, &path, &token, &etag).await
                        }
                        .await;
                        if fresh && let Some((_, task)) = kept.take() {
                            task.abort();
                        }
                        match done {
                            Ok(()) => {
                                latency.record(started.elapsed());
                                polls.add(1);
                            }
                            Err(e) => {
                                if failed.get() < 3 {
                                    eprintln!("poll: {e:#}");
                                }
                                failed.add(1);
                                kept = None;
                            }
                        }
                    }
                    if let Some((_, task)) = kept {
                        task.abort();
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        let to = procstat::sample(pid)?;
        let (full, resumed) = handshakes(&fleet).await?;
        let n = polls.get();
        let cpu = procstat::cpu_secs(&from, &to);
        println!(
            "{}: {workers} loops for {seconds:.0} s",
            if fresh {
                "a new connection per poll (TLS resumed from a ticket)"
            } else {
                "polls on kept connections"
            }
        );
        println!(
            "  {:.0} polls/s, latency {}; handshakes: {} full, {} resumed",
            n as f64 / to.at.duration_since(from.at).as_secs_f64(),
            latency.summary(),
            full - handshakes_before.0,
            resumed - handshakes_before.1
        );
        println!(
            "  coordinator: CPU {:.1}% of one core, {:.0} us of CPU per poll",
            procstat::cpu_percent(&from, &to),
            cpu * 1e6 / n.max(1) as f64
        );
    }
    Ok(failed.get())
}

/// The coordinator's TLS handshakes so far: (full, resumed).
async fn handshakes(fleet: &Fleet) -> anyhow::Result<(u64, u64)> {
    let full = fleet
        .coordinator
        .metric("fleetwave_tls_handshakes_total", "result=\"full\"")
        .await?;
    let resumed = fleet
        .coordinator
        .metric("fleetwave_tls_handshakes_total", "result=\"resumed\"")
        .await?;
    Ok((full as u64, resumed as u64))
}
