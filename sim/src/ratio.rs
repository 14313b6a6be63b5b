//! The poll-path ratio: the coordinator's poll throughput against a minimal axum server
//! that answers a response of the same size (same status, headers and body as a real
//! poll answer) over the same TLS certificate and keep-alive, loaded the same way in the
//! same run.
//!
//! The baseline runs in its own process (this binary's hidden `baseline-server` command), as
//! the coordinator does, so that both servers' CPU time is read from `/proc` alone, apart
//! from the load generator's: the figure that counts is CPU time per 100,000 polls, which
//! does not depend on how fast the load generator is. Nothing here measures time against a
//! target.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tower::ServiceExt as _;

use crate::fleet::Fleet;
use crate::procstat;
use crate::stats::{Counter, Latencies};

/// A captured poll answer.
#[derive(Clone)]
struct Canned {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// [`Canned`] as the baseline process reads it.
#[derive(serde::Serialize, serde::Deserialize)]
struct CannedFile {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Canned {
    fn to_file(&self) -> CannedFile {
        CannedFile {
            status: self.status.as_u16(),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
                .collect(),
            body: self.body.clone(),
        }
    }

    fn from_file(f: CannedFile) -> anyhow::Result<Canned> {
        let mut headers = HeaderMap::new();
        for (k, v) in f.headers {
            headers.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes())?,
                HeaderValue::from_str(&v)?,
            );
        }
        Ok(Canned {
            status: StatusCode::from_u16(f.status)?,
            headers,
            body: f.body,
        })
    }
}

/// One request of a site: (bearer token, If-None-Match).
#[derive(Clone)]
struct Req {
    token: String,
    etag: Option<String>,
}

async fn capture(
    http: &reqwest::Client,
    url: &str,
    req: &Req,
) -> anyhow::Result<(Canned, Option<String>)> {
    let mut r = http.get(url).bearer_auth(&req.token);
    if let Some(e) = &req.etag {
        r = r.header(reqwest::header::IF_NONE_MATCH, e);
    }
    let res = r.send().await?;
    let status = StatusCode::from_u16(res.status().as_u16())?;
    let mut headers = HeaderMap::new();
    for (k, v) in res.headers() {
        let name = k.as_str();
        if matches!(
            name,
            "etag" | "x-fleetwave-next-poll" | "cache-control" | "content-type"
        ) {
            headers.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes())?,
                HeaderValue::from_bytes(v.as_bytes())?,
            );
        }
    }
    let etag = res
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = res.bytes().await?.to_vec();
    Ok((
        Canned {
            status,
            headers,
            body,
        },
        etag,
    ))
}

/// Closed-loop load: `workers` loops sending requests for `secs`, round-robin over `reqs`.
/// Returns requests per second, latencies, errors and requests answered.
async fn load(
    http: &reqwest::Client,
    url: &str,
    reqs: Arc<Vec<Req>>,
    workers: usize,
    secs: f64,
) -> (f64, Latencies, u64, u64) {
    let lat = Arc::new(Latencies::default());
    let done = Arc::new(Counter::default());
    let errors = Arc::new(Counter::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (http, url, reqs, lat, done, errors, stop) = (
            http.clone(),
            url.to_string(),
            reqs.clone(),
            lat.clone(),
            done.clone(),
            errors.clone(),
            stop.clone(),
        );
        tasks.spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let req = &reqs[i % reqs.len()];
                i += workers;
                let started = Instant::now();
                let mut r = http.get(&url).bearer_auth(&req.token);
                if let Some(e) = &req.etag {
                    r = r.header(reqwest::header::IF_NONE_MATCH, e);
                }
                match r.send().await {
                    Ok(res) if res.status().as_u16() < 400 => {
                        let _ = res.bytes().await;
                        lat.record(started.elapsed());
                        done.add(1);
                    }
                    _ => errors.add(1),
                }
            }
        });
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let n = done.get();
    let elapsed = started.elapsed().as_secs_f64();
    while tasks.join_next().await.is_some() {}
    // Requests answered after the stop flag count too (their CPU was spent).
    let total = done.get();
    let lat = Arc::try_unwrap(lat).unwrap_or_default();
    (n as f64 / elapsed, lat, errors.get(), total)
}

/// The hidden `baseline-server` command: serves the canned answer in `canned` (JSON) for
/// every request on 127.0.0.1:0 over the TLS files of the coordinator configured in
/// `config`, prints its port on stdout, and runs until killed.
pub async fn run_baseline_server(
    config: &std::path::Path,
    canned: &std::path::Path,
) -> anyhow::Result<()> {
    let canned: CannedFile = serde_json::from_slice(
        &std::fs::read(canned).with_context(|| format!("reading {}", canned.display()))?,
    )?;
    let (port, task) = baseline_server(config, Canned::from_file(canned)?).await?;
    println!("{port}");
    use std::io::Write as _;
    std::io::stdout().flush()?;
    task.await?;
    Ok(())
}

/// The baseline server in its own process; killed on drop.
struct BaselineProcess {
    child: std::process::Child,
    port: u16,
}

impl BaselineProcess {
    fn start(fleet: &Fleet, canned: &Canned) -> anyhow::Result<BaselineProcess> {
        use std::io::BufRead as _;
        let file = fleet.setup.dir.join("baseline-canned.json");
        std::fs::write(&file, serde_json::to_vec(&canned.to_file())?)?;
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .arg("baseline-server")
            .arg("--config")
            .arg(fleet.setup.dir.join("coordinator.toml"))
            .arg("--canned")
            .arg(&file)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting the baseline server process")?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("its stdout")?).read_line(&mut line)?;
        let port = line
            .trim()
            .parse()
            .with_context(|| format!("the baseline server printed {line:?}, not its port"))?;
        Ok(BaselineProcess { child, port })
    }
}

impl Drop for BaselineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves `canned` for every request on 127.0.0.1:0 over the coordinator's TLS files.
async fn baseline_server(
    config: &std::path::Path,
    canned: Canned,
) -> anyhow::Result<(u16, tokio::task::JoinHandle<()>)> {
    let config = fleetwave_coordinator::config::Config::load(config)?;
    let acceptor = fleetwave_coordinator::server::tls_acceptor(&config)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let canned = Arc::new(canned);
    let router = axum::Router::new().route(
        "/v1/agent/poll",
        axum::routing::get(move || {
            let c = canned.clone();
            async move {
                let mut res = Response::new(Body::from(c.body.clone()));
                *res.status_mut() = c.status;
                *res.headers_mut() = c.headers.clone();
                res
            }
        }),
    );
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc =
                    tower::service_fn(move |req: axum::extract::Request<hyper::body::Incoming>| {
                        router.clone().oneshot(req.map(Body::new))
                    });
                let builder = Builder::new(TokioExecutor::new());
                let _ = builder
                    .http1_only()
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc))
                    .await;
            });
        }
    });
    Ok((port, task))
}

/// Measures both servers with `workers` concurrent keep-alive loops for `secs` each.
/// `not_modified`: requests carry the current ETag (the usual 304 poll); otherwise none
/// (a 200 with the full poll body).
pub async fn poll_ratio(
    fleet: Fleet,
    workers: usize,
    secs: f64,
    not_modified: bool,
) -> anyhow::Result<f64> {
    let url = fleet
        .coordinator
        .url("/v1/agent/poll?wait=0&root_version=1");
    let http = fleet.net.client(0).clone();
    let mut reqs = Vec::new();
    let mut canned = None;
    for site in &fleet.sites {
        let token = site.token().context("a site has no session")?.to_string();
        let (_, etag) = capture(
            &http,
            &url,
            &Req {
                token: token.clone(),
                etag: None,
            },
        )
        .await?;
        let req = Req {
            token,
            etag: if not_modified { etag } else { None },
        };
        if canned.is_none() {
            canned = Some(capture(&http, &url, &req).await?.0);
        }
        reqs.push(req);
    }
    let canned = canned.context("no sites")?;
    let size = canned.body.len();
    let status = canned.status;
    let reqs = Arc::new(reqs);
    // Warm both pools, then measure.
    let _ = load(&http, &url, reqs.clone(), workers, 1.0).await;
    let s0 = fleet.sample()?;
    let (coord_rps, coord_lat, coord_err, coord_n) =
        load(&http, &url, reqs.clone(), workers, secs).await;
    let s1 = fleet.sample()?;
    let baseline = BaselineProcess::start(&fleet, &canned)?;
    let base_url = format!(
        "https://localhost:{}/v1/agent/poll?wait=0&root_version=1",
        baseline.port
    );
    let _ = load(&http, &base_url, reqs.clone(), workers, 1.0).await;
    let b0 = procstat::sample(baseline.child.id())?;
    let (base_rps, base_lat, base_err, base_n) = load(&http, &base_url, reqs, workers, secs).await;
    let b1 = procstat::sample(baseline.child.id())?;
    drop(baseline);
    let ratio = coord_rps / base_rps;
    let per_100k = |from: &procstat::Sample, to: &procstat::Sample, n: u64| {
        procstat::cpu_secs(from, to) / n.max(1) as f64 * 100_000.0
    };
    let coord_cpu = per_100k(&s0, &s1, coord_n);
    let base_cpu = per_100k(&b0, &b1, base_n);
    println!(
        "poll-path ratio: {} sites, {workers} keep-alive loops, {secs:.0} s each, answer {status} with a {size}-byte body (load average {})",
        fleet.sites.len(),
        procstat::load_average()
    );
    println!(
        "  coordinator poll: {coord_rps:.0} req/s, {}, errors {coord_err}",
        coord_lat.summary()
    );
    println!(
        "    coordinator CPU {:.0}% of one core, RSS {:.0} MiB",
        procstat::cpu_percent(&s0, &s1),
        procstat::mib(s1.rss_bytes)
    );
    println!(
        "  minimal axum baseline (same TLS, same answer, its own process): {base_rps:.0} req/s, {}, errors {base_err}",
        base_lat.summary()
    );
    println!(
        "    baseline CPU {:.0}% of one core, RSS {:.0} MiB",
        procstat::cpu_percent(&b0, &b1),
        procstat::mib(b1.rss_bytes)
    );
    println!("  throughput: {:.0}% of the baseline's", ratio * 100.0);
    println!(
        "  CPU time per 100,000 polls (from /proc): coordinator {coord_cpu:.2} s ({coord_n} polls), baseline {base_cpu:.2} s ({base_n} polls): ratio {:.2}x (target 1.5x or less)",
        coord_cpu / base_cpu.max(f64::MIN_POSITIVE)
    );
    Ok(ratio)
}
