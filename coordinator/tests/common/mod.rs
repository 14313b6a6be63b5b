//! The one coordinator test harness (`mod common;` in each test file): a coordinator
//! in-process over TLS with a temp SQLite file ([`Harness`]), or without a listener or
//! controller task ([`InProcess`], for engine-level tests); agents that speak the real
//! agent API; a plain-HTTP browser stand-in with a cookie jar; headless Chromium through
//! chromedriver; and [`eventually`], the waiting helper of every suite.
#![allow(dead_code)]

pub mod analysis;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use fleetwave_coordinator::clock::Clock;
use fleetwave_coordinator::config::Config;
use fleetwave_coordinator::init::{InitOptions, init};
use fleetwave_coordinator::server::{Running, Transport, start_with_clock};
use fleetwave_shared::docs::{Artifact, RELEASE_TYPE, Release, ReleaseKind};
use fleetwave_shared::protocol::*;
use fleetwave_shared::{Envelope, keys};
use jiff::{SignedDuration, Timestamp};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Starts the coordinator configured in `dir` on a free loopback port, over TLS, reading
/// time from `clock`.
async fn boot(dir: &Path, clock: &Clock) -> Running {
    let mut config = Config::load(&dir.join("coordinator.toml")).unwrap();
    config.controller.tick_millis = 100;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_with_clock(config, Transport::Tls, listener, clock.clone())
        .await
        .unwrap()
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub running: Option<Running>,
    pub base: String,
    pub http: reqwest::Client,
    pub admin: String,
    pub ca: PathBuf,
    /// The coordinator's clock: tests move it instead of sleeping; agents date their
    /// reports and sessions by it.
    pub clock: Clock,
}

impl Harness {
    pub async fn new() -> Harness {
        Harness::with_config("").await
    }

    /// A harness whose config file gets `extra` TOML appended.
    pub async fn with_config(extra: &str) -> Harness {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let out = init(&InitOptions::dev_loopback(dir.path().to_path_buf())).unwrap();
        if !extra.is_empty() {
            let mut text = std::fs::read_to_string(&out.config).unwrap();
            text.push_str(extra);
            std::fs::write(&out.config, text).unwrap();
        }
        let clock = Clock::adjustable();
        let running = boot(dir.path(), &clock).await;
        let http = client(&out.ca_cert);
        let base = format!("https://localhost:{}", running.local_addr.port());
        Harness {
            dir,
            running: Some(running),
            base,
            http,
            admin: out.admin_token,
            ca: out.ca_cert.clone(),
            clock,
        }
    }

    /// Stops the coordinator and starts it again on the same directory (a new port).
    pub async fn restart(&mut self) {
        self.running.take().unwrap().stop().await;
        let running = boot(self.dir.path(), &self.clock).await;
        self.base = format!("https://localhost:{}", running.local_addr.port());
        self.running = Some(running);
    }

    /// An offline key written by `init` (e.g. `release.key`).
    pub fn offline_key(&self, name: &str) -> SigningKey {
        keys::read_private_key(&self.dir.path().join("offline-keys").join(name)).unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    pub async fn token(&self, name: &str, role: &str) -> String {
        let (s, v) = self
            .post(
                "/v1/operator-tokens",
                &self.admin,
                json!({"name": name, "role": role}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    pub async fn enrollment_token(&self, labels: Value, uses: u32) -> String {
        self.enrollment_token_expiring(labels, uses, 3600).await
    }

    pub async fn enrollment_token_expiring(
        &self,
        labels: Value,
        uses: u32,
        expires: u64,
    ) -> String {
        let (s, v) = self
            .post(
                "/v1/enrollment-tokens",
                &self.admin,
                json!({"labels": labels, "uses": uses, "expires_in_secs": expires}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    /// Release `id` of stream `pos` (version: `id` without `pos-`) with one artifact,
    /// signed with the offline release key.
    pub fn release_envelope(&self, id: &str, counter: u64, artifact: &[u8]) -> Envelope {
        let release = Release {
            id: id.into(),
            name: "pos".into(),
            version: id.trim_start_matches("pos-").into(),
            kind: ReleaseKind::App,
            counter,
            issued_at: Timestamp::now(),
            expires: Timestamp::now() + SignedDuration::from_hours(24 * 30),
            artifacts: vec![Artifact {
                name: "pos.tar.gz".into(),
                url: format!("/v1/artifacts/{}", fleetwave_shared::sha256_hex(artifact)),
                length: artifact.len() as u64,
                sha256: fleetwave_shared::sha256_hex(artifact),
            }],
            install: Default::default(),
            min_agent_version: None,
        };
        Envelope::sign(
            RELEASE_TYPE,
            &serde_json::to_vec(&release).unwrap(),
            &[&self.offline_key("release.key")],
        )
    }

    /// Publishes an envelope as the admin; the answer as it came.
    pub async fn publish_envelope(&self, env: &Envelope) -> (StatusCode, Value) {
        self.post(
            "/v1/releases",
            &self.admin,
            serde_json::to_value(env).unwrap(),
        )
        .await
    }

    /// Publishes release `pos-{version}` (stream `pos`) signed with the offline key.
    pub async fn publish(&self, version: &str, counter: u64) -> String {
        let id = format!("pos-{version}");
        let env = self.release_envelope(&id, counter, format!("pos {version}").as_bytes());
        let (s, v) = self.publish_envelope(&env).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        id
    }

    pub async fn create_rollout(&self, plan: &str) -> String {
        let (s, v) = self
            .post(
                "/v1/rollouts",
                &self.admin,
                json!({"plan": plan, "format": "toml"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    pub async fn rollout(&self, id: &str) -> Value {
        let (s, v) = self.get(&format!("/v1/rollouts/{id}"), &self.admin).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }
}

pub fn client(ca: &Path) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn nonce() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).unwrap();
    hex::encode(b)
}

/// A simulated agent: enrolls with its own device key and speaks the agent API.
pub struct Agent {
    pub site: String,
    pub key: SigningKey,
    pub token: String,
    seq: u32,
}

impl Agent {
    pub async fn enroll(h: &Harness, site: &str, labels: Value) -> Agent {
        let token = h.enrollment_token(labels, 1).await;
        Agent::enroll_with(h, site, &token).await
    }

    /// Enrolls with `token` (one from `site rekey` re-keys the site: a new box).
    pub async fn enroll_with(h: &Harness, site: &str, token: &str) -> Agent {
        let key = keys::generate();
        let device = hex::encode(key.verifying_key().as_bytes());
        let proof = base64::engine::general_purpose::STANDARD
            .encode(key.sign(&enroll_message(site, token, &device)).to_bytes());
        let (s, v) = h
            .post(
                "/v1/enroll",
                "",
                json!({"token": token, "site_id": site, "device_key": device, "agent_version": "0.1.0", "proof": proof}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let mut agent = Agent {
            site: site.into(),
            key,
            token: String::new(),
            seq: 0,
        };
        agent.open_session(h).await;
        agent
    }

    /// Opens a new session (after a restart, or once the clock moved past the last
    /// session's expiry).
    pub async fn open_session(&mut self, h: &Harness) {
        let at = h.clock.now();
        let n = nonce();
        let sig = base64::engine::general_purpose::STANDARD.encode(
            self.key
                .sign(&session_message(&self.site, at, &n))
                .to_bytes(),
        );
        let (s, v) = h
            .post(
                "/v1/agent/session",
                "",
                json!({"site_id": self.site, "timestamp": at, "nonce": n, "signature": sig}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        self.token = v["token"].as_str().unwrap().to_string();
    }

    /// Polls once; returns (rollout id, assignment sequence) if assigned.
    pub async fn poll(&self, h: &Harness) -> Option<(String, u64)> {
        let res = h
            .http
            .get(h.url("/v1/agent/poll?wait=0&root_version=1"))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "poll: {}", res.status());
        let body: PollResponse = res.json().await.unwrap();
        let env = body.assignment?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&env.payload)
            .unwrap();
        let payload: Value = serde_json::from_slice(&bytes).unwrap();
        Some((
            payload["rollout_id"].as_str().unwrap().to_string(),
            payload["sequence"].as_u64().unwrap(),
        ))
    }

    /// Polls until assigned.
    pub async fn assignment(&self, h: &Harness) -> (String, u64) {
        eventually(&format!("{} to get an assignment", self.site), || {
            self.poll(h)
        })
        .await
    }

    pub async fn lease(&self, h: &Harness, rollout: &str, sequence: u64) {
        let (s, v) = h
            .post(
                "/v1/agent/lease",
                &self.token,
                json!({"rollout_id": rollout, "sequence": sequence}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "lease for {}: {v}", self.site);
    }

    pub async fn report(&mut self, h: &Harness, body: Value) {
        self.seq += 1;
        let mut e = body;
        // Each box its own ids, as agents make them: a re-keyed box starts again at 1.
        let box_id = &hex::encode(self.key.verifying_key().as_bytes())[..8];
        e["id"] = json!(format!("{}-{box_id}-e{}", self.site, self.seq));
        e["at"] = json!(h.clock.now());
        let (s, v) = h
            .post("/v1/agent/reports", &self.token, json!({"events": [e]}))
            .await;
        assert_eq!(s, StatusCode::OK, "report from {}: {v}", self.site);
    }

    pub async fn phase(&mut self, h: &Harness, rollout: &str, release: &str, phase: &str) {
        self.report(
            h,
            json!({"kind": "phase", "rollout_id": rollout, "release_id": release, "phase": phase}),
        )
        .await;
    }

    pub async fn failed(&mut self, h: &Harness, rollout: &str, release: &str, why: &str) {
        self.report(
            h,
            json!({"kind": "phase", "rollout_id": rollout, "release_id": release, "phase": "failed", "detail": why}),
        )
        .await;
    }

    pub async fn health(&mut self, h: &Harness, healthy: bool) {
        self.report(
            h,
            json!({"kind": "health", "healthy": healthy, "summary": {"passed": if healthy {3} else {2}, "failed": if healthy {0} else {1}, "failing": if healthy {json!([])} else {json!(["http:app: status 500"])}}}),
        )
        .await;
    }

    pub async fn installed(&mut self, h: &Harness, release: &str, version: &str) {
        self.report(
            h,
            json!({"kind": "installed", "name": "pos", "release_id": release, "version": version}),
        )
        .await;
    }

    /// Poll, lease, install, commit: the target release is committed (baking).
    pub async fn install(&mut self, h: &Harness, release: &str) -> String {
        let (rollout, seq) = self.assignment(h).await;
        self.lease(h, &rollout, seq).await;
        for p in [
            "leased",
            "downloading",
            "installing",
            "verifying",
            "committed",
        ] {
            self.phase(h, &rollout, release, p).await;
        }
        let version = release.trim_start_matches("pos-").to_string();
        self.installed(h, release, &version).await;
        rollout
    }
}

#[allow(unused_imports)] // not every test file waits
pub use fleetwave_testkit::eventually;

/// A browser stand-in over plain HTTP requests: a cookie jar and form posts.
pub struct WebClient {
    pub http: reqwest::Client,
    pub base: String,
    pub cookies: BTreeMap<String, String>,
}

impl WebClient {
    pub fn new(h: &Harness) -> WebClient {
        WebClient {
            http: client(&h.ca),
            base: h.base.clone(),
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep(&mut self, res: &reqwest::Response) {
        for v in res.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let (pair, _) = v.split_once(';').unwrap_or((v, ""));
            let (k, val) = pair.split_once('=').unwrap();
            if val.is_empty() || v.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_string(), val.to_string());
            }
        }
    }

    pub async fn get(&mut self, path: &str) -> (StatusCode, reqwest::header::HeaderMap, String) {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep(&res);
        let (s, h) = (res.status(), res.headers().clone());
        (s, h, res.text().await.unwrap())
    }

    pub async fn post(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap, String) {
        let res = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(form))
            .send()
            .await
            .unwrap();
        self.keep(&res);
        let (s, h) = (res.status(), res.headers().clone());
        (s, h, res.text().await.unwrap())
    }

    /// Signs in with `token`; returns the session's CSRF token as the pages carry it.
    pub async fn login(&mut self, token: &str) -> String {
        let (s, _, page) = self.get("/ui/login").await;
        assert_eq!(s, StatusCode::OK);
        let csrf = hidden(&page, "csrf");
        let (s, h, body) = self
            .post("/ui/login", &[("token", token), ("csrf", &csrf)])
            .await;
        assert_eq!(s, StatusCode::SEE_OTHER, "{body}");
        assert_eq!(h["location"], "/ui/");
        let (s, _, page) = self.get("/ui/").await;
        assert_eq!(s, StatusCode::OK, "{page}");
        hidden(&page, "csrf")
    }
}

/// `application/x-www-form-urlencoded` encoding of a form.
pub fn form_body(form: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                    (b as char).to_string()
                } else if b == b' ' {
                    "+".to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    form.iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The value of the first hidden input named `name` in a page.
pub fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no hidden {name} in page"))
        + marker.len();
    let end = page[start..].find('"').unwrap() + start;
    page[start..end].to_string()
}

/// chromedriver on a free loopback port, killed on drop.
pub struct Driver {
    child: Child,
    pub url: String,
    pub profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn chromedriver() -> Driver {
    for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: install Debian's chromium and chromium-driver (scripts/test does)"
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    // Owned at once: dropped (killed and waited for) on every path, panics included.
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
        profile: tempfile::tempdir().unwrap(),
    };
    let probe = reqwest::Client::new();
    let status = format!("{}/status", driver.url);
    eventually(&format!("chromedriver to answer on {status}"), || async {
        probe
            .get(&status)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
            .then_some(())
    })
    .await;
    driver
}

/// A headless Chromium session (fresh profile) driven through `driver`.
pub async fn browser(driver: &Driver) -> fantoccini::Client {
    let profile = driver.profile.path().join(nonce());
    let mut caps = serde_json::Map::new();
    caps.insert("acceptInsecureCerts".into(), json!(true));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--ignore-certificate-errors", "--window-size=1360,1000",
                "--disable-dev-shm-usage",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    fantoccini::ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("open a Chromium session through chromedriver")
}

/// Whether this run writes screenshots (FLEETWAVE_SCREENSHOTS=1).
pub fn screenshots() -> bool {
    std::env::var("FLEETWAVE_SCREENSHOTS").as_deref() == Ok("1")
}

/// Writes a screenshot to docs/screenshots when FLEETWAVE_SCREENSHOTS=1.
pub async fn screenshot(c: &fantoccini::Client, name: &str) {
    if !screenshots() {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// A coordinator in-process without a listener or controller task, over a fresh SQLite
/// file with sites written straight into it and release `app-2` published: for tests of
/// the engine itself (passes, leases, reports) at sizes enrollment would make slow.
pub struct InProcess {
    pub dir: tempfile::TempDir,
    pub app: std::sync::Arc<fleetwave_coordinator::state::App>,
    pub release: String,
    pub admin: String,
    pub stop: tokio::sync::watch::Sender<bool>,
}

impl InProcess {
    /// `sites`: (id, labels) of active sites.
    pub async fn with_sites(sites: &[(String, Value)]) -> InProcess {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let out = init(&InitOptions::dev_loopback(dir.path().to_path_buf())).unwrap();
        let config = Config::load(&dir.path().join("coordinator.toml")).unwrap();
        let db = config.database_path();
        drop(fleetwave_coordinator::store::SqliteStore::open(&db).unwrap());
        add_sites(&db, sites);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let app = fleetwave_coordinator::server::build_app(config, stop_rx)
            .await
            .unwrap();
        let env = Envelope::sign("x", b"{}", &[&keys::generate()]);
        let release = fleetwave_coordinator::store::ReleaseRecord {
            id: "app-2".into(),
            digest: env.digest(),
            name: "app".into(),
            version: "2".into(),
            kind: "app".into(),
            counter: 2,
            envelope: env,
            published_at: Timestamp::now(),
            published_by: "test".into(),
        };
        app.db
            .run(move |s| s.publish_release(&release))
            .await
            .unwrap();
        InProcess {
            dir,
            app,
            release: "app-2".into(),
            admin: out.admin_token,
            stop,
        }
    }

    pub fn db_path(&self) -> PathBuf {
        Config::load(&self.dir.path().join("coordinator.toml"))
            .unwrap()
            .database_path()
    }

    /// A fresh connection to the database file (sees only committed data).
    pub fn conn(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.db_path()).unwrap()
    }

    /// Writes more active sites, as if they had enrolled.
    pub fn add_sites(&self, sites: &[(String, Value)]) {
        add_sites(&self.db_path(), sites);
    }
}

/// Writes `sites` (id, labels) as active sites in one transaction.
fn add_sites(db: &Path, sites: &[(String, Value)]) {
    let mut conn = rusqlite::Connection::open(db).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut st = tx
            .prepare(
                "INSERT INTO sites (id, device_key, labels, state, agent_version, enrolled_at) VALUES (?1, ?2, ?3, 'active', '0.1.0', ?4)",
            )
            .unwrap();
        for (id, labels) in sites {
            st.execute(rusqlite::params![
                id,
                "00".repeat(32),
                labels.to_string(),
                Timestamp::now().as_millisecond()
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}
