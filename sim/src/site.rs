//! One simulated site speaking the real agent protocol: enroll with a one-time token and a
//! device key, open a session through the signed handshake, poll (ETag, long poll),
//! verify what it receives with [`TrustState::evaluate`], take a lease, "install" with a
//! simulated executor and report phases and health.
//!
//! Sites share one HTTPS client (a keep-alive pool) and one verified trust anchor; each
//! keeps only its own small state. Nothing here is faked towards the coordinator: every
//! request is what an agent would send.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use fleetwave_shared::protocol::{
    EnrollResponse, Event, EventBody, HealthSummary, LeaseGrant, NEXT_POLL_HEADER, Phase,
    PollResponse, ReportAck, SessionResponse, enroll_message, paths, session_message,
};
use fleetwave_shared::trust::{Accepted, TrustState};
use jiff::Timestamp;
use reqwest::StatusCode;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::stats::{Counter, Errors, Latencies};

/// Why one protocol step failed (counted by kind, the run goes on).
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("{step}: transport: {source}")]
    Transport {
        step: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("{step}: HTTP {status} {code}")]
    Status {
        step: &'static str,
        status: u16,
        code: String,
    },
    #[error("{step}: refused by verification: {code}")]
    Refused { step: &'static str, code: String },
    #[error("{step}: {message}")]
    Protocol { step: &'static str, message: String },
}

impl SiteError {
    /// A short kind for error counts, e.g. `poll: HTTP 503 overloaded`.
    pub fn kind(&self) -> String {
        match self {
            SiteError::Transport { step, source } => {
                let what = if source.is_timeout() {
                    "timeout"
                } else if source.is_connect() {
                    "connect"
                } else {
                    "transport"
                };
                format!("{step}: {what}")
            }
            other => other.to_string(),
        }
    }
}

/// Everything sites share: the client pool, the coordinator's address, the counters.
pub struct Net {
    /// Clients by shard (see [`Net::client`]).
    clients: Vec<reqwest::Client>,
    /// Requests in flight per client shard (see [`Net::slot`]).
    slots: Vec<tokio::sync::Semaphore>,
    pub base: String,
    pub poll_latency: Latencies,
    pub report_latency: Latencies,
    pub polls: Counter,
    pub report_posts: Counter,
    pub report_events: Counter,
    /// Failures the run did not recover from.
    pub errors: Errors,
    /// Requests shed (408, 429, 503) or failed and then retried with back-off, as an agent
    /// does: the cost of a burst, not a failure.
    pub retried: Errors,
}

impl Net {
    /// `clients` shards the sites' connection pools (at least one client).
    pub fn new(clients: Vec<reqwest::Client>, base: String, per_client: usize) -> Arc<Net> {
        assert!(!clients.is_empty(), "a simulated fleet needs a client");
        Arc::new(Net {
            slots: (0..clients.len())
                .map(|_| tokio::sync::Semaphore::new(per_client.max(1)))
                .collect(),
            clients,
            base,
            poll_latency: Latencies::default(),
            report_latency: Latencies::default(),
            polls: Counter::default(),
            report_posts: Counter::default(),
            report_events: Counter::default(),
            errors: Errors::default(),
            retried: Errors::default(),
        })
    }

    /// The client of simulated site `index`. Sites are spread over several clients, each
    /// with its own connection pool, as real agents each have their own: one pool for
    /// 100,000 sites made the client library itself the bottleneck (its pool walks its
    /// queue of waiting requests on every returned connection, quadratic in a burst).
    pub fn client(&self, index: usize) -> &reqwest::Client {
        &self.clients[index % self.clients.len()]
    }

    /// A turn to send a request on site `index`'s client: at most `per_client` requests
    /// are in flight per client, so the simulator holds at most that many connections per
    /// client, as a fleet of agents holds one each. A pool without this bound opens a
    /// connection per waiting request whenever answers slow down (20,000 at 100,000
    /// sites: more than the open-file limit and than real agents ever hold). Latencies are
    /// measured from the turn on, so waiting for one is not counted as the coordinator's.
    pub async fn slot(&self, index: usize) -> tokio::sync::SemaphorePermit<'_> {
        self.slots[index % self.slots.len()]
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// The device key of simulated site `index`: derived from the index, so that a fleet
/// enrolled once can be used again by later runs.
pub fn device_key(index: usize) -> SigningKey {
    let seed: [u8; 32] = Sha256::digest(format!("fleetwave-sim device {index}")).into();
    SigningKey::from_bytes(&seed)
}

pub fn site_id(index: usize) -> String {
    format!("sim-{index:06}")
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("random");
    hex::encode(b)
}

async fn error_of(step: &'static str, res: reqwest::Response) -> SiteError {
    let status = res.status().as_u16();
    let body: serde_json::Value = res.json().await.unwrap_or_default();
    SiteError::Status {
        step,
        status,
        code: body["error"]["code"].as_str().unwrap_or("").to_string(),
    }
}

fn transport(step: &'static str) -> impl Fn(reqwest::Error) -> SiteError {
    move |source| SiteError::Transport { step, source }
}

/// The answer's `Retry-After` in seconds (`default` without one), kept within 1-30 s.
pub fn retry_after(res: &reqwest::Response, default: u64) -> Duration {
    let secs = res
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(default)
        .clamp(1, 30);
    Duration::from_secs(secs)
}

/// Failures an agent retries instead of giving up: the coordinator shed the request
/// (408, 429, 503) or could not be reached.
fn retryable(e: &SiteError) -> bool {
    match e {
        SiteError::Transport { .. } => true,
        SiteError::Status { status, .. } => matches!(status, 408 | 429 | 503),
        _ => false,
    }
}

/// Retries of one lease or report after shed or failed requests, before the site gives up.
const RETRIES: u32 = 20;

/// The agent's back-off after the `n`th failure in a row (from 0): 1 s doubling up to
/// 30 s, spread upward by up to half with jitter so a shed crowd does not return at once.
fn backoff(n: u32) -> Duration {
    let base = (1u64 << n.min(5)).min(30) as f64;
    let mut b = [0u8; 2];
    getrandom::fill(&mut b).expect("random");
    let spread = u16::from_le_bytes(b) as f64 / u16::MAX as f64 * 0.5;
    Duration::from_secs_f64(base * (1.0 + spread))
}

/// What a poll brought.
pub enum Fetched {
    /// 304: nothing changed.
    NotModified,
    /// 200: the answer, not yet verified.
    Body(Box<PollResponse>),
}

/// What a poll brought, once verified.
pub enum PollOutcome {
    /// 304: nothing changed.
    NotModified,
    /// 200 without an assignment.
    Nothing,
    /// A verified assignment this site had not accepted before.
    New(Box<Accepted>),
    /// The assignment already accepted, served again.
    Same,
}

/// The simulated executor: how long an install takes and how often it fails.
#[derive(Debug, Clone, Copy)]
pub struct Executor {
    pub install: Duration,
    pub failure_rate: f64,
}

impl Executor {
    fn fails(&self) -> bool {
        if self.failure_rate <= 0.0 {
            return false;
        }
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("random");
        (u64::from_le_bytes(b) as f64 / u64::MAX as f64) < self.failure_rate
    }
}

/// One simulated site.
pub struct Site {
    pub id: String,
    index: usize,
    key: SigningKey,
    token: Option<String>,
    etag: Option<String>,
    /// This site's own trust state once it accepted something; before that the shared anchor.
    trust: Option<Box<TrustState>>,
    next_event: u64,
    pub installed: Option<String>,
}

impl Site {
    pub fn new(index: usize) -> Site {
        Site {
            id: site_id(index),
            index,
            key: device_key(index),
            token: None,
            etag: None,
            trust: None,
            next_event: 0,
            installed: None,
        }
    }

    /// `POST /v1/enroll`; returns the coordinator's root chain.
    pub async fn enroll(&self, net: &Net, token: &str) -> Result<EnrollResponse, SiteError> {
        let device = hex::encode(self.key.verifying_key().as_bytes());
        let proof = base64::engine::general_purpose::STANDARD.encode(
            self.key
                .sign(&enroll_message(&self.id, token, &device))
                .to_bytes(),
        );
        let _slot = net.slot(self.index).await;
        let res = net
            .client(self.index)
            .post(net.url(paths::ENROLL))
            .json(
                &json!({"token": token, "site_id": self.id, "device_key": device,
                          "agent_version": "0.1.0-sim", "proof": proof}),
            )
            .send()
            .await
            .map_err(transport("enroll"))?;
        if !res.status().is_success() {
            return Err(error_of("enroll", res).await);
        }
        res.json().await.map_err(transport("enroll"))
    }

    /// `POST /v1/agent/session`: a signed handshake with a fresh nonce.
    pub async fn open_session(&mut self, net: &Net) -> Result<(), SiteError> {
        let at = Timestamp::now();
        let nonce = random_hex(16);
        let sig = base64::engine::general_purpose::STANDARD.encode(
            self.key
                .sign(&session_message(&self.id, at, &nonce))
                .to_bytes(),
        );
        let _slot = net.slot(self.index).await;
        let res = net
            .client(self.index)
            .post(net.url(paths::SESSION))
            .json(&json!({"site_id": self.id, "timestamp": at, "nonce": nonce, "signature": sig}))
            .send()
            .await
            .map_err(transport("session"))?;
        if !res.status().is_success() {
            return Err(error_of("session", res).await);
        }
        let s: SessionResponse = res.json().await.map_err(transport("session"))?;
        self.token = Some(s.token);
        Ok(())
    }

    fn bearer(&self) -> &str {
        self.token.as_deref().unwrap_or("")
    }

    /// `GET /v1/agent/poll` with the last ETag; long-polls `wait` seconds if > 0. Verifies
    /// a served assignment against `anchor` (or this site's own trust state).
    pub async fn poll(
        &mut self,
        net: &Net,
        wait: u32,
        anchor: &TrustState,
    ) -> Result<PollOutcome, SiteError> {
        match self.fetch(net, wait, anchor).await? {
            Fetched::NotModified => Ok(PollOutcome::NotModified),
            Fetched::Body(body) => self.check(&body, anchor),
        }
    }

    /// The network half of [`Site::poll`]: the request and the parsed answer, not yet
    /// verified. The long-poll benchmark times a site's wake-up to here, and checks each
    /// answer after the timed window: a real site verifies on its own CPU, while here
    /// 10,000 sites' checks would share the coordinator's two cores.
    pub async fn fetch(
        &mut self,
        net: &Net,
        wait: u32,
        anchor: &TrustState,
    ) -> Result<Fetched, SiteError> {
        let _slot = net.slot(self.index).await;
        let started = Instant::now();
        let mut req = net
            .client(self.index)
            .get(format!(
                "{}?wait={wait}&root_version={}",
                net.url(paths::POLL),
                anchor.root().version
            ))
            .bearer_auth(self.bearer());
        if let Some(etag) = &self.etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let res = req.send().await.map_err(transport("poll"))?;
        let status = res.status();
        if status == StatusCode::UNAUTHORIZED {
            // Session expired (or the coordinator restarted): open a new one, as agents do.
            let e = error_of("poll", res).await;
            self.token = None;
            return Err(e);
        }
        if status == StatusCode::NOT_MODIFIED {
            if wait == 0 {
                net.poll_latency.record(started.elapsed());
            }
            net.polls.add(1);
            return Ok(Fetched::NotModified);
        }
        if !status.is_success() {
            return Err(error_of("poll", res).await);
        }
        let etag = res
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let _next = res.headers().get(NEXT_POLL_HEADER).cloned();
        let body: PollResponse = res.json().await.map_err(transport("poll"))?;
        if wait == 0 {
            net.poll_latency.record(started.elapsed());
        }
        net.polls.add(1);
        self.etag = etag;
        Ok(Fetched::Body(Box::new(body)))
    }

    /// The checking half of [`Site::poll`]: verifies a served assignment as the agent
    /// does and, when it is new, accepts it into this site's trust state.
    pub fn check(
        &mut self,
        body: &PollResponse,
        anchor: &TrustState,
    ) -> Result<PollOutcome, SiteError> {
        let (Some(assignment), Some(release)) = (&body.assignment, &body.release) else {
            return Ok(PollOutcome::Nothing);
        };
        let trust = self.trust.as_deref().unwrap_or(anchor);
        let accepted = trust
            .evaluate(&self.id, assignment, release, Timestamp::now(), "0.1.0-sim")
            .map_err(|r| SiteError::Refused {
                step: "poll",
                code: r.code().to_string(),
            })?;
        if !accepted.is_new {
            return Ok(PollOutcome::Same);
        }
        let mut own = self
            .trust
            .take()
            .unwrap_or_else(|| Box::new(anchor.clone()));
        own.accept(&accepted);
        self.trust = Some(own);
        Ok(PollOutcome::New(Box::new(accepted)))
    }

    /// `POST /v1/agent/lease`, retrying after a denial's `Retry-After` (at most `tries`)
    /// and, as an agent does, after shed or failed requests with back-off (each such
    /// failure is counted in the run's retried requests; only giving up is an error).
    pub async fn lease(
        &self,
        net: &Net,
        rollout_id: &str,
        sequence: u64,
        tries: u32,
    ) -> Result<LeaseGrant, SiteError> {
        let (mut denials, mut failures) = (0, 0);
        while denials < tries {
            let slot = net.slot(self.index).await;
            let sent = net
                .client(self.index)
                .post(net.url(paths::LEASE))
                .bearer_auth(self.bearer())
                .json(&json!({"rollout_id": rollout_id, "sequence": sequence}))
                .send()
                .await;
            let failure = match sent {
                Ok(res) if res.status().is_success() => {
                    return res.json().await.map_err(transport("lease"));
                }
                Ok(res) if res.status() == StatusCode::CONFLICT => {
                    drop(slot);
                    tokio::time::sleep(retry_after(&res, 5)).await;
                    denials += 1;
                    continue;
                }
                Ok(res) => error_of("lease", res).await,
                Err(e) => transport("lease")(e),
            };
            drop(slot);
            if !retryable(&failure) || failures >= RETRIES {
                return Err(failure);
            }
            net.retried.add(failure.kind());
            tokio::time::sleep(backoff(failures)).await;
            failures += 1;
        }
        Err(SiteError::Protocol {
            step: "lease",
            message: format!("denied {tries} times"),
        })
    }

    /// A new event with an id unique per site and per run (a later run over the same
    /// `--dir` must not resend ids the coordinator already holds: it would take them for
    /// duplicates and apply nothing).
    pub fn event(&mut self, body: EventBody) -> Event {
        static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let run = RUN.get_or_init(|| format!("{:x}", Timestamp::now().as_millisecond()));
        self.next_event += 1;
        Event {
            id: format!("{}-{run}-{}", self.id, self.next_event),
            at: Timestamp::now(),
            body,
        }
    }

    pub fn health(&mut self) -> Event {
        self.event(EventBody::Health {
            healthy: true,
            summary: HealthSummary {
                passed: 3,
                failed: 0,
                samples: 1,
                ..HealthSummary::default()
            },
        })
    }

    /// `POST /v1/agent/reports`, retrying shed or failed requests with back-off as an
    /// agent's outbox does (each such failure is counted in the run's retried requests). The event
    /// ids make a retry of a batch the coordinator did apply harmless.
    pub async fn report(&self, net: &Net, events: &[Event]) -> Result<ReportAck, SiteError> {
        let mut failures = 0;
        loop {
            match self.report_once(net, events).await {
                Err(e) if retryable(&e) && failures < RETRIES => {
                    net.retried.add(e.kind());
                    tokio::time::sleep(backoff(failures)).await;
                    failures += 1;
                }
                done => return done,
            }
        }
    }

    pub async fn report_once(&self, net: &Net, events: &[Event]) -> Result<ReportAck, SiteError> {
        let _slot = net.slot(self.index).await;
        let started = Instant::now();
        let res = net
            .client(self.index)
            .post(net.url(paths::REPORTS))
            .bearer_auth(self.bearer())
            .json(&json!({ "events": events }))
            .send()
            .await
            .map_err(transport("reports"))?;
        if !res.status().is_success() {
            return Err(error_of("reports", res).await);
        }
        let ack: ReportAck = res.json().await.map_err(transport("reports"))?;
        net.report_latency.record(started.elapsed());
        net.report_posts.add(1);
        net.report_events.add(events.len() as u64);
        Ok(ack)
    }

    /// Acts on a new assignment as an agent does: accepted → lease → install (simulated)
    /// → committed (or failed and rolled back) with an installed report and a heartbeat.
    pub async fn install(
        &mut self,
        net: &Net,
        accepted: &Accepted,
        executor: Executor,
    ) -> Result<bool, SiteError> {
        let rollout = accepted.assignment.rollout_id.clone();
        let release = accepted.release.id.clone();
        let phase = |phase: Phase| EventBody::Phase {
            rollout_id: Some(rollout.clone()),
            release_id: release.clone(),
            phase,
            detail: None,
        };
        let first = vec![self.event(phase(Phase::Accepted))];
        self.report(net, &first).await?;
        self.lease(net, &rollout, accepted.assignment.sequence, 40)
            .await?;
        let mut events = vec![
            self.event(phase(Phase::Leased)),
            self.event(phase(Phase::Downloading)),
            self.event(phase(Phase::Installing)),
        ];
        self.report(net, &events).await?;
        tokio::time::sleep(executor.install).await;
        let ok = !executor.fails();
        events.clear();
        events.push(self.event(phase(Phase::Verifying)));
        if ok {
            events.push(self.event(phase(Phase::Committed)));
            events.push(self.event(EventBody::Installed {
                name: accepted.release.name.clone(),
                release_id: Some(release.clone()),
                version: Some(accepted.release.version.clone()),
                previous_release_id: self.installed.clone(),
            }));
            events.push(self.health());
        } else {
            events.push(self.event(EventBody::Phase {
                rollout_id: Some(rollout.clone()),
                release_id: release.clone(),
                phase: Phase::Failed,
                detail: Some("simulated install failure".into()),
            }));
            events.push(self.event(phase(Phase::RolledBack)));
        }
        self.report(net, &events).await?;
        if ok {
            self.installed = Some(release);
            if let Some(t) = self.trust.as_deref_mut() {
                t.record_installed(&accepted.release);
            }
        }
        Ok(ok)
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn has_session(&self) -> bool {
        self.token.is_some()
    }
}
