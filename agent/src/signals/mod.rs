//! Golden signals from the managed application: per release stream (`[signals.<stream>]`),
//! scrape its local Prometheus/OpenMetrics endpoint, keep the named series and summarize
//! them per minute ([`summary`]); what the last scrape gave, or why it failed, is kept for
//! `fleetwave-agent status`.
//!
//! Each stream's scrapes run in their own task with bounded reads (`max_body_bytes`,
//! `max_series`) under a deadline (`timeout_secs`): a broken or hostile endpoint (huge or
//! endless body, garbage, a hung connection) fails that scrape with a reason and never
//! blocks health checks, installs or reports. Each finished minute goes to the signal
//! queue ([`crate::state::signal_queue`], bounded), which the daemon delivers with its
//! reports. This module never talks to the coordinator.

pub mod config;
pub mod exposition;
pub mod summary;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt as _;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use fleetwave_shared::protocol::signals::{MAX_SIGNAL_MINUTES, SignalMinute};

use crate::clock::Clock;
use crate::state::Store;
use config::StreamSignals;
use summary::Summarizer;

/// The `status` key (agent state `meta`) of a stream's last scrape.
pub fn status_key(stream: &str) -> String {
    format!("signals:{stream}")
}

/// What `fleetwave-agent status` shows for one stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamStatus {
    pub scrape_url: String,
    #[serde(default)]
    pub last_scrape_at: Option<Timestamp>,
    #[serde(default)]
    pub last_success_at: Option<Timestamp>,
    /// Why the last scrape failed; `None` when it worked.
    #[serde(default)]
    pub error: Option<String>,
    /// Signals the last good scrape could not read, and why.
    #[serde(default)]
    pub signal_problems: BTreeMap<String, String>,
    /// The last complete minute.
    #[serde(default)]
    pub last_minute: Option<SignalMinute>,
}

/// Why one scrape failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScrapeError {
    #[error("no complete answer within {secs} s (signals.{stream}.timeout_secs)")]
    Timeout { stream: String, secs: u64 },
    #[error("body larger than {max} bytes (signals.{stream}.max_body_bytes)")]
    TooLarge { stream: String, max: u64 },
    #[error("status {0}, expected 200")]
    Status(u16),
    #[error("{0}")]
    Http(String),
    #[error("body is not UTF-8 text")]
    NotUtf8,
    #[error("not the Prometheus text format: {0}")]
    Format(#[from] exposition::ExpositionError),
}

/// One stream's scraper: the HTTP client, the settings and the running summary.
pub struct Scraper {
    stream: String,
    config: StreamSignals,
    client: reqwest::Client,
    summarizer: Summarizer,
    status: StreamStatus,
}

impl Scraper {
    pub fn new(stream: &str, config: StreamSignals) -> Result<Scraper, ScrapeError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(1)
            .pool_idle_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| ScrapeError::Http(format!("cannot build the HTTP client: {e}")))?;
        Ok(Scraper {
            stream: stream.to_string(),
            summarizer: Summarizer::new(stream, config.signals.clone()),
            status: StreamStatus {
                scrape_url: config.scrape_url.clone(),
                ..StreamStatus::default()
            },
            config,
            client,
        })
    }

    pub fn status(&self) -> &StreamStatus {
        &self.status
    }

    /// Scrapes once at `now` and updates the status; returns the minute this scrape
    /// completed, if any.
    pub async fn scrape(
        &mut self,
        now: Timestamp,
        release_id: Option<&str>,
    ) -> Option<SignalMinute> {
        let result = fetch(&self.client, &self.stream, &self.config)
            .await
            .and_then(|text| {
                summary::read(&text, &self.config.signals, self.config.max_series)
                    .map_err(ScrapeError::from)
            });
        self.status.last_scrape_at = Some(now);
        let finished = match result {
            Ok(readings) => {
                self.status.error = None;
                self.status.last_success_at = Some(now);
                self.status.signal_problems = self
                    .config
                    .signals
                    .iter()
                    .zip(&readings)
                    .filter_map(|(d, r)| r.as_ref().err().map(|e| (d.name.clone(), e.clone())))
                    .collect();
                self.summarizer.observe(now, Some(&readings), release_id)
            }
            Err(e) => {
                self.status.error = Some(e.to_string());
                self.status.signal_problems.clear();
                self.summarizer.observe(now, None, release_id)
            }
        };
        if let Some(m) = &finished {
            self.status.last_minute = Some(m.clone());
        }
        finished
    }
}

/// GETs the scrape URL: status 200, at most `max_body_bytes`, all within `timeout_secs`.
pub async fn fetch(
    client: &reqwest::Client,
    stream: &str,
    config: &StreamSignals,
) -> Result<String, ScrapeError> {
    let max = config.max_body_bytes;
    let too_large = || ScrapeError::TooLarge {
        stream: stream.to_string(),
        max,
    };
    let attempt = async {
        let resp = client
            .get(&config.scrape_url)
            .header("accept", "text/plain;version=0.0.4")
            .send()
            .await
            .map_err(|e| ScrapeError::Http(short_error(&e)))?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(ScrapeError::Status(resp.status().as_u16()));
        }
        if resp.content_length().is_some_and(|n| n > max) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        let mut chunks = resp.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| ScrapeError::Http(short_error(&e)))?;
            if body.len() as u64 + chunk.len() as u64 > max {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|_| ScrapeError::NotUtf8)
    };
    match tokio::time::timeout(Duration::from_secs(config.timeout_secs), attempt).await {
        Ok(r) => r,
        Err(_) => Err(ScrapeError::Timeout {
            stream: stream.to_string(),
            secs: config.timeout_secs,
        }),
    }
}

fn short_error(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reading the body failed"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

/// Starts one scrape task per configured stream, each keeping its status in the state's
/// `meta` for `status`. They run until the runtime stops (the daemon's lifetime).
pub fn spawn(
    store: Store,
    signals: &BTreeMap<String, StreamSignals>,
    clock: Clock,
) -> Vec<tokio::task::JoinHandle<()>> {
    signals
        .iter()
        .map(|(stream, config)| {
            let (store, clock, stream, config) =
                (store.clone(), clock.clone(), stream.clone(), config.clone());
            tokio::spawn(async move {
                let every = Duration::from_secs(config.interval_secs);
                let mut scraper = match Scraper::new(&stream, config) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(%stream, "signals: {e}");
                        return;
                    }
                };
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let release = store
                        .installed_stream(&stream)
                        .ok()
                        .flatten()
                        .map(|i| i.release_id);
                    let now = clock.now();
                    if let Some(minute) = scraper.scrape(now, release.as_deref()).await {
                        match store.signals_push(&minute, MAX_SIGNAL_MINUTES, now) {
                            Ok(0) => {}
                            Ok(n) => tracing::warn!(
                                %stream,
                                dropped = n,
                                "signal queue full ({MAX_SIGNAL_MINUTES} minutes): dropped the oldest"
                            ),
                            Err(e) => tracing::error!(%stream, "cannot queue a signal minute: {e}"),
                        }
                    }
                    if let Some(e) = &scraper.status().error {
                        tracing::warn!(%stream, "signals scrape failed: {e}");
                    }
                    if let Ok(text) = serde_json::to_string(scraper.status()) {
                        let _ = store.set_meta(&status_key(&stream), &text);
                    }
                }
            })
        })
        .collect()
}

/// Reads the stored status of every configured stream (for `status`).
pub fn load_statuses(
    store: &Store,
    signals: &BTreeMap<String, StreamSignals>,
) -> Result<BTreeMap<String, Option<StreamStatus>>, crate::state::StateError> {
    signals
        .keys()
        .map(|stream| {
            let status = store
                .meta(&status_key(stream))?
                .and_then(|t| serde_json::from_str(&t).ok());
            Ok((stream.clone(), status))
        })
        .collect()
}

/// `status` lines for the signal queue: how many minutes wait for the coordinator, how
/// many were dropped because the queue was full, and why minutes stay queued.
pub fn queue_lines(
    queued: u64,
    dropped: &crate::state::signal_queue::Dropped,
    delivery: Option<&str>,
) -> Vec<String> {
    let mut lines = vec![format!(
        "queue: {queued} minute(s) waiting for the coordinator (at most {MAX_SIGNAL_MINUTES})"
    )];
    if dropped.minutes > 0 {
        lines.push(format!(
            "queue: DROPPED {} oldest minute(s) while the queue was full (newest dropped {}, last at {}); the coordinator never sees them",
            dropped.minutes,
            dropped
                .newest_dropped_minute
                .map(|t| t.to_string())
                .unwrap_or_else(|| "?".into()),
            dropped
                .last_drop_at
                .map(|t| t.to_string())
                .unwrap_or_else(|| "?".into()),
        ));
    }
    if let Some(d) = delivery.filter(|d| *d != "delivering") {
        lines.push(format!("queue: {d}"));
    }
    lines
}

/// `status` lines for one stream: what the last scrape gave, or why it failed.
pub fn status_lines(stream: &str, status: Option<&StreamStatus>) -> Vec<String> {
    let Some(s) = status else {
        return vec![format!("{stream}: not scraped yet")];
    };
    let mut lines = Vec::new();
    let at = s
        .last_scrape_at
        .map(|t| t.to_string())
        .unwrap_or_else(|| "never".into());
    match &s.error {
        Some(e) => lines.push(format!(
            "{stream}: SCRAPE FAILING at {at} ({}): {e}; last success {}",
            s.scrape_url,
            s.last_success_at
                .map(|t| t.to_string())
                .unwrap_or_else(|| "never".into())
        )),
        None => lines.push(format!("{stream}: scraped {} at {at}", s.scrape_url)),
    }
    for (signal, why) in &s.signal_problems {
        lines.push(format!("{stream}: signal {signal} has no reading: {why}"));
    }
    if let Some(m) = &s.last_minute {
        let values: Vec<String> = m
            .values
            .iter()
            .map(|(k, v)| format!("{k} {v:.4}"))
            .collect();
        lines.push(format!(
            "{stream}: minute {}: {} ({} scrape(s), {} failed)",
            m.minute,
            if values.is_empty() {
                "no values".to_string()
            } else {
                values.join(", ")
            },
            m.scrapes,
            m.failed_scrapes
        ));
        if !m.resets.is_empty() {
            lines.push(format!(
                "{stream}: counters went backwards (reset, the app restarted?) for {}",
                m.resets.join(", ")
            ));
        }
    }
    lines
}
