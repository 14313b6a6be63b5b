//! Outgoing webhooks, following the Standard Webhooks specification
//! (<https://www.standardwebhooks.com>).
//!
//! - [`EventKind`]: the catalogue of event types an endpoint can subscribe to;
//! - [`WebhookEvent`]: one event, built from the decision or audit entry that causes it
//!   ([`WebhookEvent::from_decision`], [`WebhookEvent::from_audit`],
//!   [`WebhookEvent::site_failed`]). The store writes it to its outbox in the same
//!   transaction as that decision or audit entry, so an acknowledged decision always has
//!   its event stored;
//! - signing ([`sign`]), secrets ([`new_secret`], [`secret_key`]) and endpoint URL rules
//!   ([`validate_url`]);
//! - the retry schedule ([`retry_delay`], [`MAX_ATTEMPTS`]);
//! - [`worker`]: the delivery task (kept running by [`worker::supervise`]);
//! - [`silence`]: the task that finds sites gone silent (`site.silent`), which no
//!   decision records.

pub mod silence;
pub mod worker;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::store::{AuditRecord, DecisionRecord, WebhookRecord};

/// The kinds of events an endpoint can subscribe to. The list grows (channel changes
/// are to come); a stored endpoint keeps the kinds it named.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[schema(as = WebhookEventType)]
pub enum EventKind {
    #[serde(rename = "rollout.created")]
    RolloutCreated,
    #[serde(rename = "rollout.started")]
    RolloutStarted,
    #[serde(rename = "rollout.completed")]
    RolloutCompleted,
    #[serde(rename = "rollout.halted")]
    RolloutHalted,
    #[serde(rename = "rollout.rolled_back")]
    RolloutRolledBack,
    #[serde(rename = "rollout.aborted")]
    RolloutAborted,
    #[serde(rename = "wave.opened")]
    WaveOpened,
    #[serde(rename = "gate.awaiting_approval")]
    GateAwaitingApproval,
    #[serde(rename = "site.failed")]
    SiteFailed,
    #[serde(rename = "site.silent")]
    SiteSilent,
    #[serde(rename = "freeze.added")]
    FreezeAdded,
    #[serde(rename = "freeze.ended")]
    FreezeEnded,
    /// Sent only by `POST /v1/webhooks/{id}/test`, to that endpoint, whatever its filter.
    #[serde(rename = "webhook.test")]
    WebhookTest,
}

impl EventKind {
    /// Every kind an endpoint can subscribe to (the test event is not one).
    pub const ALL: [EventKind; 12] = [
        EventKind::RolloutCreated,
        EventKind::RolloutStarted,
        EventKind::RolloutCompleted,
        EventKind::RolloutHalted,
        EventKind::RolloutRolledBack,
        EventKind::RolloutAborted,
        EventKind::WaveOpened,
        EventKind::GateAwaitingApproval,
        EventKind::SiteFailed,
        EventKind::SiteSilent,
        EventKind::FreezeAdded,
        EventKind::FreezeEnded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RolloutCreated => "rollout.created",
            EventKind::RolloutStarted => "rollout.started",
            EventKind::RolloutCompleted => "rollout.completed",
            EventKind::RolloutHalted => "rollout.halted",
            EventKind::RolloutRolledBack => "rollout.rolled_back",
            EventKind::RolloutAborted => "rollout.aborted",
            EventKind::WaveOpened => "wave.opened",
            EventKind::GateAwaitingApproval => "gate.awaiting_approval",
            EventKind::SiteFailed => "site.failed",
            EventKind::SiteSilent => "site.silent",
            EventKind::FreezeAdded => "freeze.added",
            EventKind::FreezeEnded => "freeze.ended",
            EventKind::WebhookTest => "webhook.test",
        }
    }

    /// A subscribable kind by its name.
    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The names of every subscribable kind, for error messages.
    pub fn names() -> String {
        EventKind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an event is about. Fields that do not apply are left out of the JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = WebhookEventData)]
pub struct EventData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_id: Option<String>,
    /// The decision's reason with its gate numbers, the site's failure, or the freeze's
    /// details, as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who did it (operator actions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Path of the dashboard page about it (relative to the coordinator's URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// One event, as sent in the body of a delivery (the shape Standard Webhooks
/// recommends: `type`, `timestamp`, `data`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = WebhookEvent)]
pub struct WebhookEvent {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub timestamp: Timestamp,
    pub data: EventData,
}

fn rollout_link(id: &str) -> Option<String> {
    Some(format!("/ui/rollouts/{id}"))
}

impl WebhookEvent {
    /// The event a rollout decision causes (None for decisions no event follows, such as
    /// `waiting` or `membership`).
    pub fn from_decision(d: &DecisionRecord, release_id: &str) -> Option<WebhookEvent> {
        let kind = match d.kind.as_str() {
            "created" => EventKind::RolloutCreated,
            "started" => EventKind::RolloutStarted,
            "complete" => EventKind::RolloutCompleted,
            "halt" => EventKind::RolloutHalted,
            "rollback" => EventKind::RolloutRolledBack,
            "aborted" => EventKind::RolloutAborted,
            "open_wave" => EventKind::WaveOpened,
            "request_approval" => EventKind::GateAwaitingApproval,
            _ => return None,
        };
        Some(WebhookEvent {
            kind,
            timestamp: d.at,
            data: EventData {
                rollout_id: Some(d.rollout_id.clone()),
                release_id: Some(release_id.to_string()),
                wave: d.wave,
                reason: Some(d.reason.clone()),
                link: rollout_link(&d.rollout_id),
                ..Default::default()
            },
        })
    }

    /// The event an audit entry causes (freezes added and ended).
    pub fn from_audit(a: &AuditRecord) -> Option<WebhookEvent> {
        let kind = match a.action.as_str() {
            "freeze.create" => EventKind::FreezeAdded,
            "freeze.end" => EventKind::FreezeEnded,
            _ => return None,
        };
        Some(WebhookEvent {
            kind,
            timestamp: a.at,
            data: EventData {
                freeze_id: Some(a.target.clone()),
                reason: Some(a.detail.clone()),
                actor: Some(a.actor.clone()),
                link: Some("/ui/freezes".into()),
                ..Default::default()
            },
        })
    }

    /// A site's install of a rollout's release failed (reported by its agent).
    pub fn site_failed(
        rollout_id: &str,
        release_id: &str,
        wave: u32,
        site_id: &str,
        failure: Option<&str>,
        at: Timestamp,
    ) -> WebhookEvent {
        WebhookEvent {
            kind: EventKind::SiteFailed,
            timestamp: at,
            data: EventData {
                rollout_id: Some(rollout_id.to_string()),
                release_id: Some(release_id.to_string()),
                wave: Some(wave),
                site_id: Some(site_id.to_string()),
                reason: failure.map(str::to_string),
                link: Some(format!("/ui/sites/{site_id}")),
                ..Default::default()
            },
        }
    }

    /// A site found silent in a rollout.
    pub fn site_silent(x: &crate::store::SiteSilence) -> WebhookEvent {
        WebhookEvent {
            kind: EventKind::SiteSilent,
            timestamp: x.at,
            data: EventData {
                rollout_id: Some(x.rollout_id.clone()),
                release_id: Some(x.release_id.clone()),
                wave: Some(x.wave),
                site_id: Some(x.site_id.clone()),
                reason: Some(x.reason.clone()),
                link: Some(format!("/ui/sites/{}", x.site_id)),
                ..Default::default()
            },
        }
    }

    /// The test event of `POST /v1/webhooks/{id}/test`.
    pub fn test(at: Timestamp, actor: &str) -> WebhookEvent {
        WebhookEvent {
            kind: EventKind::WebhookTest,
            timestamp: at,
            data: EventData {
                reason: Some("a test delivery asked for through the API".into()),
                actor: Some(actor.to_string()),
                ..Default::default()
            },
        }
    }

    /// The JSON body (`format = "json"`).
    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("an event serializes")
    }

    /// One line for people (the `format = "slack"` body's text).
    pub fn text(&self) -> String {
        let d = &self.data;
        let mut s = format!("fleetwave: {}", self.kind);
        if let Some(r) = &d.rollout_id {
            s.push_str(&format!(" rollout {r}"));
        }
        if let Some(r) = &d.release_id {
            s.push_str(&format!(" (release {r})"));
        }
        if let Some(w) = d.wave {
            s.push_str(&format!(" wave {w}"));
        }
        if let Some(site) = &d.site_id {
            s.push_str(&format!(" site {site}"));
        }
        if let Some(f) = &d.freeze_id {
            s.push_str(&format!(" freeze {f}"));
        }
        if let Some(reason) = d.reason.as_deref().filter(|r| !r.is_empty()) {
            s.push_str(&format!(": {reason}"));
        }
        if let Some(a) = &d.actor {
            s.push_str(&format!(" (by {a})"));
        }
        s
    }
}

/// How an endpoint's body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyFormat {
    /// The JSON event.
    #[default]
    Json,
    /// `{"text": "..."}`, which Slack's (and compatible) incoming webhooks show.
    Slack,
}

impl BodyFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            BodyFormat::Json => "json",
            BodyFormat::Slack => "slack",
        }
    }

    pub fn parse(s: &str) -> Option<BodyFormat> {
        match s {
            "json" => Some(BodyFormat::Json),
            "slack" => Some(BodyFormat::Slack),
            _ => None,
        }
    }

    /// The body of a delivery of `event_json` (the stored JSON event).
    pub fn body(self, event_json: &str) -> Result<String, String> {
        match self {
            BodyFormat::Json => Ok(event_json.to_string()),
            BodyFormat::Slack => {
                let event: WebhookEvent = serde_json::from_str(event_json)
                    .map_err(|e| format!("stored event does not parse: {e}"))?;
                Ok(serde_json::json!({ "text": event.text() }).to_string())
            }
        }
    }
}

/// A webhook endpoint to create breaks a rule: `field` names the request's field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidWebhook {
    pub field: &'static str,
    pub message: String,
}

/// Checks a request to create an endpoint and makes its record, with a new id and secret.
pub fn new_endpoint(
    req: &fleetwave_shared::protocol::operator::CreateWebhook,
    actor: &str,
    now: Timestamp,
) -> Result<WebhookRecord, InvalidWebhook> {
    use fleetwave_shared::protocol::operator::WebhookFormat;
    let invalid = |field, message: String| InvalidWebhook { field, message };
    validate_url(req.url.trim(), req.allow_insecure_http).map_err(|m| invalid("url", m))?;
    if req.events.is_empty() {
        return Err(invalid(
            "events",
            format!("name at least one event type of: {}", EventKind::names()),
        ));
    }
    let mut kinds = Vec::new();
    for e in &req.events {
        let Some(k) = EventKind::parse(e.trim()) else {
            return Err(invalid(
                "events",
                format!("unknown event type {e:?}; known: {}", EventKind::names()),
            ));
        };
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    kinds.sort();
    if req.description.chars().count() > 200 {
        return Err(invalid("description", "at most 200 characters".to_string()));
    }
    Ok(WebhookRecord {
        id: format!("wh-{}", crate::ids::random_hex(6)),
        url: req.url.trim().to_string(),
        secret: new_secret(),
        kinds: kinds.iter().map(|k| k.as_str().to_string()).collect(),
        format: match req.format {
            WebhookFormat::Json => BodyFormat::Json,
            WebhookFormat::Slack => BodyFormat::Slack,
        }
        .as_str()
        .to_string(),
        allow_insecure_http: req.allow_insecure_http,
        description: req.description.trim().to_string(),
        created_at: now,
        created_by: actor.to_string(),
    })
}

/// How the API shows an endpoint (never its secret).
pub fn info(
    w: &WebhookRecord,
    counts: &crate::store::DeliveryCounts,
) -> fleetwave_shared::protocol::operator::WebhookInfo {
    use fleetwave_shared::protocol::operator::{WebhookFormat, WebhookInfo};
    WebhookInfo {
        id: w.id.clone(),
        url: w.url.clone(),
        events: w.kinds.clone(),
        format: match BodyFormat::parse(&w.format) {
            Some(BodyFormat::Slack) => WebhookFormat::Slack,
            _ => WebhookFormat::Json,
        },
        allow_insecure_http: w.allow_insecure_http,
        description: w.description.clone(),
        secret_hint: secret_hint(&w.secret),
        created_at: w.created_at,
        created_by: w.created_by.clone(),
        pending: counts.pending,
        delivered: counts.delivered,
        failed: counts.failed,
    }
}

/// The prefix of every secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A new secret: `whsec_` and the base64 of 32 random bytes.
pub fn new_secret() -> String {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).expect("the operating system's random generator failed");
    format!("{SECRET_PREFIX}{}", B64.encode(key))
}

/// The signing key of a secret: the base64-decoded bytes after `whsec_`.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or_else(|| format!("a webhook secret starts with {SECRET_PREFIX}"))?;
    let key = B64
        .decode(b64)
        .map_err(|e| format!("the webhook secret after {SECRET_PREFIX} is not base64: {e}"))?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "a webhook secret holds 24 to 64 bytes, this one {}",
            key.len()
        ));
    }
    Ok(key)
}

/// What `webhook list` and `show` print instead of a secret: its prefix and last 4
/// characters.
pub fn secret_hint(secret: &str) -> String {
    let tail: String = secret
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{SECRET_PREFIX}…{tail}")
}

/// The `webhook-signature` header: `v1,` and the base64 HMAC-SHA256 of
/// `{id}.{timestamp}.{body}` with `key`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

/// A new `webhook-id`: `msg_` and 26 base32 characters of 128 random bits.
pub fn new_message_id() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    let mut n = u128::from_be_bytes(bytes);
    let mut s = [0u8; 26];
    for c in s.iter_mut().rev() {
        *c = ALPHABET[(n & 31) as usize];
        n >>= 5;
    }
    format!("msg_{}", String::from_utf8_lossy(&s))
}

/// Checks an endpoint URL: http(s), a host, no user name or password in it; https unless
/// `allow_insecure_http`.
pub fn validate_url(url: &str, allow_insecure_http: bool) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_insecure_http => {}
        "http" => {
            return Err(format!(
                "{url:?} is plain http: use https, or create the endpoint with allow_insecure_http: true"
            ));
        }
        other => return Err(format!("{url:?}: the scheme must be https (not {other})")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "{url:?} carries a user name or password: receivers verify the webhook-signature instead"
        ));
    }
    if parsed.fragment().is_some() {
        return Err(format!("{url:?} has a #fragment, which is never sent"));
    }
    Ok(parsed)
}

/// Attempts per delivery: the first and then one after each of [`RETRY_DELAYS_SECS`].
pub const MAX_ATTEMPTS: u32 = 8;

/// Waits before the 2nd, 3rd, ... attempt (the schedule Standard Webhooks suggests):
/// 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h; about 27.5 hours in all.
pub const RETRY_DELAYS_SECS: [u64; 7] = [5, 300, 1800, 7200, 18000, 36000, 36000];

/// How long to wait after the `attempts`th attempt failed; None: give up.
pub fn retry_delay(attempts: u32) -> Option<std::time::Duration> {
    let i = usize::try_from(attempts.checked_sub(1)?).ok()?;
    RETRY_DELAYS_SECS
        .get(i)
        .map(|s| std::time::Duration::from_secs(*s))
}

/// Attempts kept in an endpoint's delivery log (older ones are deleted).
pub const ATTEMPTS_KEPT: usize = 200;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        // From the specification repository (standard-webhooks/standard-webhooks).
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            sign(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                r#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_whsec_and_32_bytes_and_hinted_only() {
        let s = new_secret();
        assert!(s.starts_with("whsec_"), "{s}");
        assert_eq!(secret_key(&s).unwrap().len(), 32);
        assert_ne!(new_secret(), s);
        let hint = secret_hint(&s);
        assert!(
            hint.starts_with("whsec_…") && hint.chars().count() == 11,
            "{hint}"
        );
        assert!(secret_key("nope").unwrap_err().contains("whsec_"));
        assert!(secret_key("whsec_!!!").unwrap_err().contains("base64"));
        assert!(secret_key("whsec_AAAA").unwrap_err().contains("24 to 64"));
    }

    #[test]
    fn message_ids_are_msg_and_26_characters() {
        let id = new_message_id();
        assert!(id.starts_with("msg_") && id.len() == 30, "{id}");
        assert_ne!(new_message_id(), id);
    }

    #[test]
    fn urls_are_https_unless_allowed_and_carry_no_credentials() {
        assert!(validate_url("https://hooks.example.com/x", false).is_ok());
        let e = validate_url("http://hooks.example.com/x", false).unwrap_err();
        assert!(e.contains("allow_insecure_http"), "{e}");
        assert!(validate_url("http://127.0.0.1:9/x", true).is_ok());
        let e = validate_url("https://user:pw@hooks.example.com/", false).unwrap_err();
        assert!(e.contains("user name or password"), "{e}");
        assert!(
            validate_url("ftp://x/", true)
                .unwrap_err()
                .contains("scheme")
        );
        assert!(
            validate_url("not a url", true)
                .unwrap_err()
                .contains("not a URL")
        );
    }

    #[test]
    fn the_retry_schedule_is_bounded() {
        assert_eq!(retry_delay(1), Some(std::time::Duration::from_secs(5)));
        assert_eq!(retry_delay(7), Some(std::time::Duration::from_secs(36000)));
        assert_eq!(retry_delay(MAX_ATTEMPTS), None);
        assert_eq!(retry_delay(0), None);
        assert_eq!(RETRY_DELAYS_SECS.len() as u32 + 1, MAX_ATTEMPTS);
    }

    #[test]
    fn decisions_map_to_events_and_slack_text() {
        let d = DecisionRecord {
            id: 1,
            rollout_id: "r-1".into(),
            at: "2026-12-04T10:00:00Z".parse().unwrap(),
            kind: "halt".into(),
            wave: Some(2),
            reason: "failure budget exceeded: 3 of 10 failed".into(),
        };
        let e = WebhookEvent::from_decision(&d, "app-1.2.0").unwrap();
        assert_eq!(e.kind, EventKind::RolloutHalted);
        let json: serde_json::Value = serde_json::from_str(&e.json()).unwrap();
        assert_eq!(json["type"], "rollout.halted");
        assert_eq!(json["timestamp"], "2026-12-04T10:00:00Z");
        assert_eq!(json["data"]["wave"], 2);
        assert_eq!(json["data"]["link"], "/ui/rollouts/r-1");
        let slack: serde_json::Value =
            serde_json::from_str(&BodyFormat::Slack.body(&e.json()).unwrap()).unwrap();
        let text = slack["text"].as_str().unwrap();
        assert!(text.contains("rollout.halted rollout r-1") && text.contains("3 of 10"));
        let waiting = DecisionRecord {
            kind: "waiting".into(),
            ..d
        };
        assert_eq!(WebhookEvent::from_decision(&waiting, "x"), None);
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
    }
}
