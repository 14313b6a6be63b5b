//! The coordinator under test: a real `fleetwave-coordinator serve` process on 127.0.0.1
//! with the setup `fleetwave-coordinator init --dev-root` creates (local CA, TLS, SQLite
//! file in its data directory), plus the operator calls a benchmark needs (enrollment
//! token, release, rollout).
//!
//! Running it as its own process keeps its RSS and CPU apart from the load generator's.
//! This module never changes the coordinator's code paths: it only talks HTTPS to it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ed25519_dalek::SigningKey;
use fleetwave_coordinator::init::{InitOptions, init};
use fleetwave_shared::docs::{Artifact, RELEASE_TYPE, Release, ReleaseKind};
use fleetwave_shared::protocol::RolloutStatus;
use fleetwave_shared::{Envelope, keys};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

/// Finds a fleetwave binary: the explicit path, else next to this executable.
pub fn find_binary(explicit: Option<&Path>, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("{} does not exist", p.display());
    }
    let me = std::env::current_exe().context("cannot find this executable's path")?;
    let sibling = me.with_file_name(name);
    if sibling.is_file() {
        return Ok(sibling);
    }
    bail!(
        "{} not found next to {}: build it in the same profile (e.g. `cargo build --release -p fleetwave-coordinator -p fleetwave-sim`) or pass its path",
        name,
        me.display()
    )
}

/// A prepared coordinator directory (kept between runs with `--dir`).
pub struct Setup {
    pub dir: PathBuf,
    pub admin_token: String,
    pub ca_pem: Vec<u8>,
    pub release_key: SigningKey,
}

impl Setup {
    /// Creates the setup in `dir/coordinator` unless it is already there.
    pub fn open_or_create(dir: &Path) -> anyhow::Result<Setup> {
        let cdir = dir.join("coordinator");
        if !cdir.join("coordinator.toml").is_file() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            init(&InitOptions::dev_loopback(cdir.clone()))?;
        }
        let admin_token = std::fs::read_to_string(cdir.join("admin.token"))
            .context("reading the admin token")?
            .trim()
            .to_string();
        let ca_pem = std::fs::read(cdir.join("tls/ca.pem")).context("reading tls/ca.pem")?;
        let release_key = keys::read_private_key(&cdir.join("offline-keys/release.key"))
            .context("reading offline-keys/release.key")?;
        Ok(Setup {
            dir: cdir,
            admin_token,
            ca_pem,
            release_key,
        })
    }

    pub fn database(&self) -> PathBuf {
        self.dir.join("data/coordinator.db")
    }
}

/// Knobs of the coordinator's configuration a benchmark sets.
#[derive(Debug, Clone)]
pub struct Tuning {
    pub poll_interval_secs: u32,
    pub max_concurrent_requests: Option<usize>,
    pub max_keepalive_connections: Option<usize>,
    pub tick_millis: u64,
    /// Keep the coordinator's state in this PostgreSQL database (`[storage] backend =
    /// "postgres"`) instead of the SQLite file in the setup directory.
    pub postgres_url: Option<String>,
    /// Coordinator processes on that database (1 without it): replica `k` listens on
    /// 127.0.0.`k+1` at the first one's port, so that `https://localhost:<port>` names
    /// every replica and each simulated client resolves `localhost` to its own.
    pub replicas: usize,
}

/// A running coordinator process.
pub struct Coordinator {
    child: Child,
    pub pid: u32,
    pub base: String,
    /// Where it listens (`localhost` in `base` names it, for the certificate).
    pub addr: std::net::SocketAddr,
    pub admin: reqwest::Client,
    token: String,
}

/// An HTTPS client trusting the setup's CA: HTTP/1.1 with a shared keep-alive pool, or
/// (`fresh_connections`) a new TCP + TLS connection per request, as agents polling less
/// often than the coordinator keeps idle connections open do.
///
/// `local` binds its connections to a loopback source address: one address has only
/// the ephemeral port range (about 28,000 ports) for all its connections to the
/// coordinator, fewer than a 100,000-site fleet holds open. `localhost` resolves to
/// `coordinator` without asking the system resolver (which failed with EBUSY under the
/// connection burst of a 100,000-site wave).
pub fn client(
    ca_pem: &[u8],
    timeout: Duration,
    fresh_connections: bool,
    local: Option<std::net::Ipv4Addr>,
    coordinator: std::net::SocketAddr,
) -> anyhow::Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(ca_pem).context("tls/ca.pem is not a certificate")?;
    // A fresh connection per request asks the coordinator to close it after the answer,
    // as a server whose keep-alive is shorter than the poll interval would: a socket left
    // to linger until the server's idle timeout holds a file descriptor meanwhile.
    let mut headers = reqwest::header::HeaderMap::new();
    if fresh_connections {
        headers.insert(
            reqwest::header::CONNECTION,
            reqwest::header::HeaderValue::from_static("close"),
        );
    }
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .resolve("localhost", coordinator)
        .local_address(local.map(std::net::IpAddr::V4))
        .add_root_certificate(ca)
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(if fresh_connections { 0 } else { usize::MAX })
        // The coordinator closes keep-alive connections idle for `limits.keepalive_idle_secs`
        // (90 s by default): stay below it, so that a reused connection is never one the
        // server is closing at that moment. Above the 60 s poll interval plus jitter, so a
        // site polling every minute keeps its TLS connection, as an agent does.
        .pool_idle_timeout(Duration::from_secs(80))
        .timeout(timeout)
        .build()?)
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Coordinator {
    /// Starts `bin serve` on a free loopback port and waits until `/readyz` answers.
    pub async fn start(bin: &Path, setup: &Setup, tuning: &Tuning) -> anyhow::Result<Self> {
        Coordinator::start_replica(bin, setup, tuning, 0, free_port()?).await
    }

    /// Starts replica `k` (0: the first) listening on 127.0.0.`k+1`:`port` and waits until
    /// its `/readyz` answers; every replica shares the setup's configuration.
    pub async fn start_replica(
        bin: &Path,
        setup: &Setup,
        tuning: &Tuning,
        k: usize,
        port: u16,
    ) -> anyhow::Result<Self> {
        let mut text = std::fs::read_to_string(setup.dir.join("coordinator.toml"))?;
        text.push_str(&format!(
            "\n[poll]\ninterval_secs = {}\njitter_percent = 0\n\n[controller]\ntick_millis = {}\n",
            tuning.poll_interval_secs, tuning.tick_millis
        ));
        let mut limits = String::new();
        if let Some(n) = tuning.max_concurrent_requests {
            limits.push_str(&format!("max_concurrent_requests = {n}\n"));
        }
        if let Some(n) = tuning.max_keepalive_connections {
            limits.push_str(&format!("max_keepalive_connections = {n}\n"));
        }
        if !limits.is_empty() {
            text.push_str(&format!("\n[limits]\n{limits}"));
        }
        if let Some(url) = &tuning.postgres_url {
            text.push_str(&format!(
                "\n[storage]\nbackend = \"postgres\"\nurl = {}\n",
                serde_json::to_string(url)?
            ));
        }
        let config = setup.dir.join("sim.toml");
        std::fs::write(&config, text)?;
        let ip = std::net::Ipv4Addr::new(127, 0, 0, 1 + k as u8);
        let log_name = if k == 0 {
            "coordinator.log".to_string()
        } else {
            format!("coordinator-{k}.log")
        };
        let log = std::fs::File::create(setup.dir.join(&log_name))?;
        let child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--listen", &format!("{ip}:{port}")])
            // FLEETWAVE_SIM_COORDINATOR_LOG=info shows e.g. how long issuing a wave took.
            .env(
                "FLEETWAVE_LOG",
                std::env::var("FLEETWAVE_SIM_COORDINATOR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id();
        let addr = std::net::SocketAddr::from((ip, port));
        let mut c = Coordinator {
            child,
            pid,
            base: format!("https://localhost:{port}"),
            addr,
            admin: client(&setup.ca_pem, Duration::from_secs(600), false, None, addr)?,
            token: setup.admin_token.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Some(status) = c.child.try_wait()? {
                bail!(
                    "the coordinator exited at start-up ({status}); see {}",
                    setup.dir.join(&log_name).display()
                );
            }
            if let Ok(r) = c.admin.get(format!("{}/readyz", c.base)).send().await
                && r.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                c.stop();
                bail!("the coordinator did not become ready within 300 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(c)
    }

    /// SIGTERM, then wait for the graceful shutdown.
    pub fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// An operator call; fails on a non-2xx answer with the coordinator's message. A
    /// `503` (the coordinator shed it at its request limit, as it may while a large
    /// fleet reports) is sent again after its `Retry-After`, up to 30 times, as an
    /// operator would.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut shed = 0;
        loop {
            let mut req = self
                .admin
                .request(method.clone(), self.url(path))
                .bearer_auth(&self.token);
            if let Some(b) = &body {
                req = req.json(b);
            }
            let res = req
                .send()
                .await
                .with_context(|| format!("{method} {path}"))?;
            let status = res.status();
            let retry = crate::site::retry_after(&res, 1);
            let text = res.text().await?;
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE && shed < 30 {
                shed += 1;
                tokio::time::sleep(retry).await;
                continue;
            }
            if !status.is_success() {
                bail!("{method} {path}: {status}: {text}");
            }
            return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
        }
    }

    /// A multi-use enrollment token for the simulated sites.
    pub async fn enrollment_token(&self, uses: u32) -> anyhow::Result<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/v1/enrollment-tokens",
                Some(json!({"labels": {"sim": "1"}, "uses": uses, "expires_in_secs": 86400})),
            )
            .await?;
        v["token"]
            .as_str()
            .map(str::to_string)
            .context("enrollment token answer without token")
    }

    /// Publishes a new release of stream `sim-app` signed by the setup's release key.
    pub async fn publish_release(&self, setup: &Setup) -> anyhow::Result<(String, Envelope)> {
        let counter = Timestamp::now().as_millisecond() as u64;
        let id = format!("sim-app-{counter}");
        let bytes = format!("simulated artifact {counter}");
        let sha = fleetwave_shared::sha256_hex(bytes.as_bytes());
        let release = Release {
            id: id.clone(),
            name: "sim-app".into(),
            version: format!("1.0.{counter}"),
            kind: ReleaseKind::App,
            counter,
            issued_at: Timestamp::now(),
            expires: Timestamp::now() + SignedDuration::from_hours(24 * 30),
            artifacts: vec![Artifact {
                name: "app.tar.gz".into(),
                url: format!("/v1/artifacts/{sha}"),
                length: bytes.len() as u64,
                sha256: sha,
            }],
            install: Default::default(),
            min_agent_version: None,
        };
        let env = Envelope::sign(
            RELEASE_TYPE,
            &serde_json::to_vec(&release)?,
            &[&setup.release_key],
        );
        self.call(
            reqwest::Method::POST,
            "/v1/releases",
            Some(serde_json::to_value(&env)?),
        )
        .await?;
        Ok((id, env))
    }

    /// Creates a rollout from TOML and returns its id.
    pub async fn create_rollout(&self, plan: &str) -> anyhow::Result<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/v1/rollouts",
                Some(json!({"plan": plan, "format": "toml"})),
            )
            .await?;
        v["id"]
            .as_str()
            .map(str::to_string)
            .context("rollout answer without id")
    }

    pub async fn start_rollout(&self, id: &str) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/rollouts/{id}/start"),
            Some(json!({})),
        )
        .await?;
        Ok(())
    }

    /// Aborts every rollout an earlier run left active (a site takes part in one active
    /// rollout at a time); returns how many.
    pub async fn abort_leftover_rollouts(&self) -> anyhow::Result<usize> {
        let v = self
            .call(reqwest::Method::GET, "/v1/rollouts", None)
            .await?;
        let mut n = 0;
        for r in v["rollouts"].as_array().into_iter().flatten() {
            let active = r["status"]
                .as_str()
                .and_then(RolloutStatus::parse)
                .is_some_and(RolloutStatus::is_active);
            if active && let Some(id) = r["id"].as_str() {
                let aborted = self
                    .call(
                        reqwest::Method::POST,
                        &format!("/v1/rollouts/{id}/abort"),
                        Some(json!({"reason": "left over by an earlier fleetwave-sim run"})),
                    )
                    .await;
                match aborted {
                    Ok(_) => n += 1,
                    // It may have ended meanwhile (its last sites committed just before
                    // the last run stopped): then there is nothing to abort.
                    Err(e) => {
                        let now = self.rollout_status(id).await?;
                        if now.is_active() {
                            return Err(e);
                        }
                    }
                }
            }
        }
        Ok(n)
    }

    /// The rollout's status word (`running`, `completed`, `halted`...).
    pub async fn rollout_status(&self, id: &str) -> anyhow::Result<RolloutStatus> {
        let v = self
            .call(reqwest::Method::GET, &format!("/v1/rollouts/{id}"), None)
            .await?;
        let status = v["status"].as_str().unwrap_or("");
        RolloutStatus::parse(status)
            .ok_or_else(|| anyhow::anyhow!("rollout {id} has an unknown status {status:?}"))
    }

    /// The coordinator's `/metrics` text.
    async fn metrics_text(&self) -> anyhow::Result<String> {
        Ok(self
            .admin
            .get(self.url("/metrics"))
            .send()
            .await?
            .text()
            .await?)
    }

    /// One counter of `/metrics` (sum over its label sets matching `label`).
    pub async fn metric(&self, name: &str, label: &str) -> anyhow::Result<f64> {
        let text = self.metrics_text().await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// The coordinator's latency histogram for `route` now.
    pub async fn route_histogram(&self, route: &str) -> anyhow::Result<Histogram> {
        Ok(Histogram::parse(&self.metrics_text().await?, route))
    }
}

/// The coordinator's own latency histogram of one route (all statuses summed): the
/// cumulative count at each bucket's upper bound, in seconds, `+Inf` last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram(pub Vec<(f64, f64)>);

impl Histogram {
    /// Reads `fleetwave_http_request_duration_seconds` for `route` from OpenMetrics text.
    pub fn parse(text: &str, route: &str) -> Histogram {
        let route = format!("route=\"{route}\"");
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for line in text.lines() {
            if !line.starts_with("fleetwave_http_request_duration_seconds_bucket{")
                || !line.contains(&route)
            {
                continue;
            }
            let le = line
                .split("le=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .and_then(|v| match v {
                    "+Inf" => Some(f64::INFINITY),
                    v => v.parse::<f64>().ok(),
                });
            let count = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
            if let (Some(le), Some(count)) = (le, count) {
                match buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, c)) => *c += count,
                    None => buckets.push((le, count)),
                }
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Histogram(buckets)
    }

    /// What was observed between `earlier` and `self`.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        Histogram(
            self.0
                .iter()
                .map(|&(le, c)| {
                    let before = earlier
                        .0
                        .iter()
                        .find(|(b, _)| *b == le)
                        .map_or(0.0, |x| x.1);
                    (le, c - before)
                })
                .collect(),
        )
    }

    /// The upper bound of the bucket holding quantile `q` (None without samples).
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let total = self.0.last()?.1;
        if total <= 0.0 {
            return None;
        }
        self.0
            .iter()
            .find(|(_, c)| *c >= q * total)
            .map(|&(le, _)| le)
    }

    /// "p50 ≤ …, p99 ≤ … (N requests)".
    pub fn summary(&self) -> String {
        let show = |q| match self.quantile_bound(q) {
            Some(b) if b.is_finite() => format!("≤ {:.1} ms", b * 1e3),
            Some(_) => "over the largest bucket".to_string(),
            None => "no samples".to_string(),
        };
        format!(
            "p50 {}, p99 {} ({} requests; bucket upper bounds)",
            show(0.5),
            show(0.99),
            self.0.last().map_or(0.0, |x| x.1)
        )
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// A four-wave plan over every simulated site: 1%, 10%, 50%, the rest; no bake, so the
/// figure measured is the fleet's reaction time, not a configured wait.
pub fn four_wave_plan(release_id: &str, failure_rate: f64) -> String {
    let ratio = (1.0 - failure_rate * 3.0).clamp(0.0, 1.0);
    let gate = format!(
        "gate = {{ success_ratio = {ratio:.3}, min_sample = 1, bake = \"0s\", report_deadline = \"2h\" }}"
    );
    format!(
        "name = \"sim four waves\"\nrelease = \"{release_id}\"\nselector = {{ sim = \"1\" }}\nassignment_ttl = \"1d\"\n\n\
         [[waves]]\nname = \"canary\"\nshare = 1\n{gate}\n\n\
         [[waves]]\nname = \"early\"\nshare = 10\n{gate}\n\n\
         [[waves]]\nname = \"broad\"\nshare = 50\n{gate}\n\n\
         [[waves]]\nname = \"rest\"\n{gate}\n"
    )
}

/// One wave with every simulated site (the long-poll wake-up test).
pub fn one_wave_plan(release_id: &str) -> String {
    format!(
        "name = \"sim one wave\"\nrelease = \"{release_id}\"\nselector = {{ sim = \"1\" }}\nassignment_ttl = \"1d\"\n\n\
         [[waves]]\nname = \"all\"\ngate = {{ success_ratio = 0.5, bake = \"0s\" }}\n"
    )
}

#[cfg(test)]
mod histogram_tests {
    use super::Histogram;

    #[test]
    fn buckets_of_every_status_add_up_and_quantiles_name_their_bucket() {
        let text = r#"# TYPE fleetwave_http_request_duration_seconds histogram
fleetwave_http_request_duration_seconds_bucket{method="GET",route="/v1/agent/poll",status="304",le="0.001"} 90
fleetwave_http_request_duration_seconds_bucket{method="GET",route="/v1/agent/poll",status="304",le="0.002"} 98
fleetwave_http_request_duration_seconds_bucket{method="GET",route="/v1/agent/poll",status="304",le="+Inf"} 100
fleetwave_http_request_duration_seconds_bucket{method="GET",route="/v1/agent/poll",status="200",le="0.001"} 0
fleetwave_http_request_duration_seconds_bucket{method="GET",route="/v1/agent/poll",status="200",le="0.002"} 0
fleetwave_http_request_duration_seconds_bucket{method="GET",route="/v1/agent/poll",status="200",le="+Inf"} 100
fleetwave_http_request_duration_seconds_bucket{method="POST",route="/v1/agent/reports",status="200",le="0.001"} 7
"#;
        let h = Histogram::parse(text, "/v1/agent/poll");
        assert_eq!(
            h.0,
            vec![(0.001, 90.0), (0.002, 98.0), (f64::INFINITY, 200.0)]
        );
        assert_eq!(h.quantile_bound(0.4), Some(0.001));
        assert_eq!(h.quantile_bound(0.49), Some(0.002));
        assert_eq!(h.quantile_bound(0.99), Some(f64::INFINITY));
        let earlier = Histogram(vec![(0.001, 80.0), (0.002, 80.0), (f64::INFINITY, 80.0)]);
        let d = h.since(&earlier);
        assert_eq!(
            d.0,
            vec![(0.001, 10.0), (0.002, 18.0), (f64::INFINITY, 120.0)]
        );
        assert_eq!(d.quantile_bound(0.5), Some(f64::INFINITY));
        assert_eq!(Histogram::default().quantile_bound(0.5), None);
    }
}
