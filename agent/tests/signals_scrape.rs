//! Golden-signal scrapes against a real HTTP server on loopback that serves good
//! expositions, counters going backwards, garbage, huge and endless bodies, and a
//! connection that never answers. Each failure is a reason in the stream's status; the
//! scrape task keeps it in the agent's state for `fleetwave-agent status`. The demo app's
//! `/metrics` (simulated traffic, degradation set in its app file) is scraped for real.

#[path = "fixtures/support.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fleetwave_agent::clock::Clock;
use fleetwave_agent::config::Config;
use fleetwave_agent::signals::summary::{self, Reading, bucket_quantile};
use fleetwave_agent::signals::{self, Scraper, StreamStatus, status_lines};
use jiff::Timestamp;
use support::DemoAppGuard;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A loopback HTTP/1.1 server; `/good` serves the `n`-th body of a sequence (one per
/// request, the last repeated).
struct MetricsServer {
    port: u16,
    requests: Arc<AtomicUsize>,
}

fn exposition(requests: u64, errors: u64, fast: u64, slow: u64) -> String {
    format!(
        "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n\
         http_requests_total{{code=\"200\"}} {}\nhttp_requests_total{{code=\"500\"}} {errors}\n\
         # TYPE http_errors_total counter\nhttp_errors_total {errors}\n\
         # TYPE http_request_duration_seconds histogram\n\
         http_request_duration_seconds_bucket{{le=\"0.1\"}} {fast}\n\
         http_request_duration_seconds_bucket{{le=\"1\"}} {}\n\
         http_request_duration_seconds_bucket{{le=\"+Inf\"}} {}\n\
         http_request_duration_seconds_sum 1\nhttp_request_duration_seconds_count {}\n",
        requests - errors,
        fast + slow,
        fast + slow,
        fast + slow
    )
}

async fn start_server() -> MetricsServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let bodies = [
        exposition(1000, 10, 900, 100),
        exposition(1600, 40, 1400, 200),
        // The application restarted: every counter starts again.
        exposition(300, 30, 200, 100),
    ];
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let bodies = bodies.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&got).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let ok = |body: &str| {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                match path.as_str() {
                    "/good" => {
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        let _ = sock
                            .write_all(ok(&bodies[n.min(bodies.len() - 1)]).as_bytes())
                            .await;
                    }
                    "/garbage" => {
                        let _ = sock
                            .write_all(ok("<html><body>502 Bad Gateway</body></html>\n").as_bytes())
                            .await;
                    }
                    "/error" => {
                        let _ = sock
                            .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                    }
                    "/huge" => {
                        // Announces 2 MiB (and would send them).
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2097152\r\nconnection: close\r\n\r\n")
                            .await;
                        let line = "a_metric 1\n".repeat(1000);
                        while sock.write_all(line.as_bytes()).await.is_ok() {}
                    }
                    "/endless" => {
                        // No length, never ends: valid lines forever.
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
                            .await;
                        let line = "a_metric 1\n".repeat(1000);
                        while sock.write_all(line.as_bytes()).await.is_ok() {}
                    }
                    "/hung" => {
                        // Reads the request and never answers.
                        std::future::pending::<()>().await;
                    }
                    _ => {
                        let _ = sock
                            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                            .await;
                    }
                }
            });
        }
    });
    MetricsServer { port, requests }
}

fn config(port: u16, path: &str, timeout_secs: u64) -> Config {
    let text = format!(
        r#"
[coordinator]
url = "https://fleet.invalid"
[signals.shop]
scrape_url = "http://127.0.0.1:{port}{path}"
timeout_secs = {timeout_secs}
max_body_bytes = 65536
[[signals.shop.signal]]
name = "request_rate"
kind = "rate"
metric = "http_requests_total"
[[signals.shop.signal]]
name = "error_ratio"
kind = "ratio"
numerator = "http_errors_total"
denominator = "http_requests_total"
[[signals.shop.signal]]
name = "latency_p95"
kind = "quantile"
metric = "http_request_duration_seconds"
quantile = 0.95
"#
    );
    Config::parse(&text, "test").unwrap()
}

fn scraper(port: u16, path: &str, timeout_secs: u64) -> Scraper {
    let c = config(port, path, timeout_secs);
    Scraper::new("shop", c.signals["shop"].clone()).unwrap()
}

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

async fn error_of(path: &str, timeout_secs: u64) -> String {
    let server = start_server().await;
    let mut s = scraper(server.port, path, timeout_secs);
    s.scrape(t("2026-12-04T18:00:00Z"), None).await;
    s.status()
        .error
        .clone()
        .unwrap_or_else(|| panic!("{path}: the scrape should fail"))
}

#[tokio::test]
async fn good_scrapes_give_per_minute_rates_ratios_quantiles_and_resets() {
    let server = start_server().await;
    let mut s = scraper(server.port, "/good", 5);
    assert_eq!(
        s.scrape(t("2026-12-04T18:00:10Z"), Some("shop-2")).await,
        None
    );
    let first = s
        .scrape(t("2026-12-04T18:01:10Z"), Some("shop-2"))
        .await
        .unwrap();
    assert_eq!(first.minute, t("2026-12-04T18:00:00Z"));
    assert!(
        first.values.is_empty(),
        "one scrape gives no rate: {first:?}"
    );
    let m = s
        .scrape(t("2026-12-04T18:02:10Z"), Some("shop-2"))
        .await
        .unwrap();
    assert_eq!(m.minute, t("2026-12-04T18:01:00Z"));
    assert_eq!(m.release_id.as_deref(), Some("shop-2"));
    assert_eq!(m.values["request_rate"], 10.0);
    assert_eq!(m.values["error_ratio"], 0.05);
    // 600 new observations: 500 ≤ 0.1 s, 100 in (0.1, 1]; rank 570 → 0.1 + 0.9 * 70/100.
    assert!((m.values["latency_p95"] - 0.73).abs() < 1e-9, "{m:?}");
    assert!(m.resets.is_empty());
    assert_eq!(s.status().error, None);
    // The third body went backwards: a reset, named in the minute and in `status`.
    let m = s
        .scrape(t("2026-12-04T18:03:10Z"), Some("shop-2"))
        .await
        .unwrap();
    assert_eq!(m.minute, t("2026-12-04T18:02:00Z"));
    assert_eq!(m.resets, vec!["request_rate", "error_ratio", "latency_p95"]);
    assert_eq!(
        m.values["request_rate"], 5.0,
        "300 requests since the reset, over 60 s"
    );
    let lines = status_lines("shop", Some(s.status()));
    assert!(
        lines[0].starts_with("shop: scraped http://127.0.0.1:"),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l == "shop: counters went backwards (reset, the app restarted?) for request_rate, error_ratio, latency_p95"),
        "{lines:?}"
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn garbage_is_a_format_error_naming_the_line() {
    assert_eq!(
        error_of("/garbage", 5).await,
        "not the Prometheus text format: line 1: \"<html><body>502\" is not a metric name"
    );
}

#[tokio::test]
async fn an_error_status_is_named() {
    assert_eq!(error_of("/error", 5).await, "status 503, expected 200");
}

#[tokio::test]
async fn a_huge_body_is_refused_before_reading_it() {
    assert_eq!(
        error_of("/huge", 5).await,
        "body larger than 65536 bytes (signals.shop.max_body_bytes)"
    );
}

#[tokio::test]
async fn an_endless_body_stops_at_the_bound() {
    assert_eq!(
        error_of("/endless", 5).await,
        "body larger than 65536 bytes (signals.shop.max_body_bytes)"
    );
}

#[tokio::test]
async fn a_hung_connection_times_out() {
    assert_eq!(
        error_of("/hung", 1).await,
        "no complete answer within 1 s (signals.shop.timeout_secs)"
    );
}

#[tokio::test]
async fn a_refused_connection_is_named() {
    // A port nobody listens on: bind one, learn it, close it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut s = scraper(port, "/metrics", 5);
    s.scrape(t("2026-12-04T18:00:00Z"), None).await;
    let e = s.status().error.clone().unwrap();
    assert!(e.starts_with("connection failed"), "{e}");
}

/// The daemon's task: a hung endpoint's failure reaches the stored status that
/// `fleetwave-agent status` prints, while the scrape runs in its own task.
#[tokio::test]
async fn the_scrape_task_keeps_the_reason_for_status() {
    let server = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let store = fleetwave_agent::state::Store::open(dir.path()).unwrap();
    let mut c = config(server.port, "/hung", 1);
    c.signals.get_mut("shop").unwrap().interval_secs = 5;
    let _tasks = signals::spawn(store.clone(), &c.signals, Clock::system());
    let status: StreamStatus = fleetwave_testkit::eventually("the hung scrape's status", || {
        let store = store.clone();
        let signals = c.signals.clone();
        async move {
            signals::load_statuses(&store, &signals)
                .ok()?
                .remove("shop")
                .flatten()
        }
    })
    .await;
    let lines = status_lines("shop", Some(&status));
    assert!(
        lines[0].contains("SCRAPE FAILING")
            && lines[0].ends_with(
                "no complete answer within 1 s (signals.shop.timeout_secs); last success never"
            ),
        "{lines:?}"
    );
}

/// The demo app's `/metrics`: a degrading release (error ratio 1 % → 4 %, latency 50 ms →
/// 65 ms) shows in the scraped increases. Two readings of the running app, taken once at
/// least 20,000 simulated requests apart so that counting in whole requests does not
/// matter; nothing depends on how long that takes.
#[tokio::test]
async fn the_demo_app_exports_its_configured_traffic() {
    let mut p95 = Vec::new();
    for (error_ratio, latency) in [(0.01, 0.05), (0.04, 0.065)] {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(
            app.join("app.toml"),
            format!(
                "version = \"1.0.0\"\nhealthy = true\n[metrics]\nrequests_per_second = 200000.0\nerror_ratio = {error_ratio}\nlatency_seconds = {latency}\n"
            ),
        )
        .unwrap();
        let port = support::free_port();
        let pid_file = dir.path().join("pid");
        let _guard = DemoAppGuard {
            pid_file: pid_file.clone(),
        };
        let started = std::process::Command::new(support::demo_app())
            .args(["restart", "--dir", app.to_str().unwrap(), "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--pid-file")
            .arg(&pid_file)
            .status()
            .unwrap();
        assert!(started.success());
        let c = config(port, "/metrics", 5);
        let stream = c.signals["shop"].clone();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let read = || {
            let (client, stream) = (client.clone(), stream.clone());
            async move {
                let text = signals::fetch(&client, "shop", &stream).await.unwrap();
                summary::read(&text, &stream.signals, stream.max_series).unwrap()
            }
        };
        let first = read().await;
        let Ok(Reading::Pair(errors0, requests0)) = first[1].clone() else {
            panic!("{first:?}")
        };
        let Ok(Reading::Buckets(buckets0)) = first[2].clone() else {
            panic!("{first:?}")
        };
        let second = fleetwave_testkit::eventually("20,000 more simulated requests", || {
            let read = read();
            async move {
                let r = read.await;
                matches!(r[1], Ok(Reading::Pair(_, req)) if req >= requests0 + 20_000.0)
                    .then_some(r)
            }
        })
        .await;
        let Ok(Reading::Pair(errors1, requests1)) = second[1].clone() else {
            panic!("{second:?}")
        };
        let Ok(Reading::Buckets(buckets1)) = second[2].clone() else {
            panic!("{second:?}")
        };
        let ratio = (errors1 - errors0) / (requests1 - requests0);
        assert!(
            (ratio - error_ratio).abs() < 0.001,
            "error ratio {ratio}, configured {error_ratio}"
        );
        let delta: Vec<(f64, f64)> = buckets0
            .iter()
            .zip(&buckets1)
            .map(|(a, b)| (b.0, b.1 - a.1))
            .collect();
        p95.push(bucket_quantile(0.95, &delta).unwrap());
    }
    // Latencies spread over [0.5 L, 1.5 L]: the true p95 is 1.45 L; the buckets blur it.
    assert!(p95[0] > 0.05 && p95[0] <= 0.1, "healthy p95 {}", p95[0]);
    assert!(
        p95[1] > p95[0] * 1.2,
        "degraded p95 {} vs healthy {}",
        p95[1],
        p95[0]
    );
}
