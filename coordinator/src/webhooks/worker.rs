//! The webhook delivery worker: its own task, started by the server next to the wave
//! controller.
//!
//! Every pass reads the pending deliveries that are due (from the store, so that retries
//! survive restarts) and sends each in a task of its own, with at most
//! [`Limits::concurrency`] in flight in all and at most one per endpoint: a slow, failing
//! or huge-answering receiver holds one slot and its own endpoint's queue, never the wave
//! controller or another endpoint. Each attempt has a timeout, reads at most
//! [`Limits::max_answer_bytes`] of the answer, never follows a redirect (a 3xx is a failed
//! attempt) and is recorded with its status, error and duration; a failure is retried on
//! the [`super::retry_delay`] schedule, stored as the delivery's `next_attempt_at`, until
//! [`super::MAX_ATTEMPTS`].
//!
//! Delivery is at least once: a delivery is marked done only after the receiver answered
//! 2xx, so a coordinator that stops mid-attempt sends it again, with the same
//! `webhook-id`, after its restart.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tokio::sync::{Notify, Semaphore, watch};

use super::{BodyFormat, retry_delay, secret_key, sign};
use crate::clock::Clock;
use crate::liveness::ControllerStatus;
use crate::metrics::Metrics;
use crate::store::{AttemptRecord, Db, DueDelivery};

/// How the worker bounds its work.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deliveries in flight at once, over all endpoints.
    pub concurrency: usize,
    /// Time for one attempt: connecting, sending and reading the answer.
    pub timeout: Duration,
    /// At most this much of an answer is read (the rest is dropped with the connection).
    pub max_answer_bytes: usize,
    /// How often the worker looks for due deliveries when nothing woke it.
    pub poll: Duration,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        concurrency: 8,
        timeout: Duration::from_secs(10),
        max_answer_bytes: 64 * 1024,
        poll: Duration::from_millis(500),
    };
}

/// The HTTP client deliveries use: no redirects, the attempt's timeout, the system's CA
/// store for https, and the standard proxy variables (`HTTPS_PROXY`, `NO_PROXY`) of the
/// coordinator's environment.
pub fn client(limits: &Limits) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(limits.timeout)
        .connect_timeout(limits.timeout)
        .pool_max_idle_per_host(1)
        .user_agent(concat!("fleetwave-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the webhook HTTP client builds")
}

/// Runs [`run`] in a task of its own until shutdown, starting it again 5 seconds after it
/// ends otherwise (a panic): deliveries resume from the store, nothing is lost.
pub async fn supervise(
    db: Db,
    clock: Clock,
    metrics: Arc<Metrics>,
    limits: Limits,
    controller: watch::Receiver<ControllerStatus>,
    shutdown: watch::Receiver<bool>,
) {
    let mut stop = shutdown.clone();
    loop {
        let ended = tokio::spawn(run(
            db.clone(),
            clock.clone(),
            metrics.clone(),
            limits,
            controller.clone(),
            shutdown.clone(),
        ))
        .await;
        if *stop.borrow() {
            return;
        }
        let why = match ended {
            Err(e) if e.is_panic() => {
                format!(
                    "it panicked: {}",
                    crate::engine::panic_message(&*e.into_panic())
                )
            }
            Err(e) => format!("its task ended: {e}"),
            Ok(()) => "it returned without a shutdown".to_string(),
        };
        tracing::error!(reason = %why, "the webhook delivery worker stopped; restarting it in 5 s");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Runs the delivery worker until `shutdown` turns true. A replica standing by while
/// another leads the wave controller (`controller`'s `standby`) sends nothing: the leader
/// delivers from the shared outbox, and two senders would deliver twice.
pub async fn run(
    db: Db,
    clock: Clock,
    metrics: Arc<Metrics>,
    limits: Limits,
    controller: watch::Receiver<ControllerStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let http = client(&limits);
    let slots = Arc::new(Semaphore::new(limits.concurrency.max(1)));
    let busy: Arc<Mutex<HashSet<String>>> = Default::default();
    let done = Arc::new(Notify::new());
    loop {
        if *shutdown.borrow() {
            return;
        }
        let taken: Vec<String> = busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        let now = clock.now();
        let free = slots.available_permits();
        let standby = controller.borrow().standby.is_some();
        let due = if free == 0 || standby {
            Ok(Vec::new())
        } else {
            db.run(move |s| s.due_webhook_deliveries(now, &taken, free))
                .await
        };
        match due {
            Ok(due) => {
                for d in due {
                    let endpoint = d.delivery.endpoint_id.clone();
                    if !busy
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(endpoint.clone())
                    {
                        continue;
                    }
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        busy.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&endpoint);
                        break;
                    };
                    let (db, clock, metrics, http) =
                        (db.clone(), clock.clone(), metrics.clone(), http.clone());
                    let (busy, done) = (busy.clone(), done.clone());
                    tokio::spawn(async move {
                        let _permit = permit;
                        deliver(&db, &clock, &metrics, &http, &limits, d).await;
                        busy.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&endpoint);
                        done.notify_one();
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading due webhook deliveries failed"),
        }
        match db
            .run(|s| {
                s.webhook_delivery_counts()
                    .map(|c| c.values().map(|c| c.pending).sum::<u64>())
            })
            .await
        {
            Ok(n) => {
                metrics
                    .webhook_backlog
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            Err(e) => tracing::warn!(error = %e, "counting pending webhook deliveries failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(limits.poll) => {}
            _ = done.notified() => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// What one attempt came to.
struct Answer {
    status: Option<u16>,
    error: Option<String>,
}

/// Sends one attempt of `d` and records it.
async fn deliver(
    db: &Db,
    clock: &Clock,
    metrics: &Metrics,
    http: &reqwest::Client,
    limits: &Limits,
    d: DueDelivery,
) {
    let at = clock.now();
    let started = Instant::now();
    let answer = attempt(http, limits, &d, at.as_second()).await;
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let ok = answer.error.is_none();
    let attempt_no = d.delivery.attempts + 1;
    let next = if ok {
        None
    } else {
        retry_delay(attempt_no).and_then(|wait| {
            let wait = jiff::SignedDuration::try_from(wait).ok()?;
            clock.now().checked_add(wait).ok()
        })
    };
    let outcome = match (ok, next) {
        (true, _) => "delivered",
        (false, Some(_)) => "retrying",
        (false, None) => "failed",
    };
    Metrics::count(&metrics.webhook_deliveries, outcome, 1);
    if !ok {
        tracing::warn!(
            webhook = %d.delivery.endpoint_id,
            webhook_id = %d.delivery.id,
            attempt = attempt_no,
            status = ?answer.status,
            error = answer.error.as_deref().unwrap_or(""),
            outcome,
            "webhook delivery failed"
        );
    }
    let record = AttemptRecord {
        id: 0,
        endpoint_id: d.delivery.endpoint_id.clone(),
        delivery_id: d.delivery.id.clone(),
        event_type: d.delivery.event_type.clone(),
        attempt: attempt_no,
        at,
        status: answer.status,
        error: answer.error,
        duration_ms,
        outcome: outcome.to_string(),
    };
    if let Err(e) = db
        .run(move |s| s.record_webhook_attempt(&record, next))
        .await
    {
        // Not recorded: the delivery stays due and is sent again (at least once).
        tracing::warn!(error = %e, "recording a webhook attempt failed");
    }
}

async fn attempt(http: &reqwest::Client, limits: &Limits, d: &DueDelivery, ts: i64) -> Answer {
    let failed = |status: Option<u16>, error: String| Answer {
        status,
        error: Some(error),
    };
    let format = BodyFormat::parse(&d.format).unwrap_or_default();
    let body = match format.body(&d.event_body) {
        Ok(b) => b,
        Err(e) => return failed(None, e),
    };
    let key = match secret_key(&d.secret) {
        Ok(k) => k,
        Err(e) => return failed(None, format!("stored secret: {e}")),
    };
    let signature = sign(&key, &d.delivery.id, ts, &body);
    let request = http
        .post(&d.url)
        .header("content-type", "application/json")
        .header("webhook-id", &d.delivery.id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(body);
    let read = async {
        let response = request.send().await.map_err(|e| (None, describe(&e)))?;
        let status = response.status();
        // Read (and drop) at most max_answer_bytes: a huge answer costs no more.
        let mut stream = response.bytes_stream();
        let mut read = 0usize;
        while read < limits.max_answer_bytes {
            match stream.next().await {
                Some(Ok(chunk)) => read += chunk.len(),
                Some(Err(e)) => {
                    if status.is_success() {
                        // The status is what counts; a broken body after a 2xx is kept
                        // in the log but delivered.
                        break;
                    }
                    return Err((Some(status.as_u16()), describe(&e)));
                }
                None => break,
            }
        }
        Ok::<_, (Option<u16>, String)>(status)
    };
    match tokio::time::timeout(limits.timeout, read).await {
        Err(_) => failed(
            None,
            format!("no answer within {} s", limits.timeout.as_secs()),
        ),
        Ok(Err((status, e))) => failed(status, e),
        Ok(Ok(status)) if status.is_success() => Answer {
            status: Some(status.as_u16()),
            error: None,
        },
        Ok(Ok(status)) if status.is_redirection() => failed(
            Some(status.as_u16()),
            format!("answered {status}: redirects are not followed; register the final URL"),
        ),
        Ok(Ok(status)) => failed(Some(status.as_u16()), format!("answered {status}")),
    }
}

/// A reqwest error with its causes, on one line.
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    s
}
