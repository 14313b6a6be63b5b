//! Webhook endpoints (admins only, like the API): the list with delivery counts, a form to
//! register one (its secret shown once, on the page that answers the form), one
//! endpoint's delivery log, and removal through a confirmation step. The same calls and
//! audit entries as `/v1/webhooks`.

use fleetwave_shared::protocol::operator::{CreateWebhook, WebhookFormat, WebhookInfo};

use super::*;
use crate::api::webhooks as hooks;
use crate::webhooks::EventKind;

pub(super) struct EventChoice {
    name: &'static str,
}

#[derive(Template)]
#[template(path = "webhooks.html")]
pub(super) struct WebhooksPage {
    nav: Nav,
    hooks: Vec<WebhookInfo>,
    kinds: Vec<EventChoice>,
}

fn choices() -> Vec<EventChoice> {
    EventKind::ALL
        .iter()
        .map(|k| EventChoice { name: k.as_str() })
        .collect()
}

/// `GET /ui/webhooks`: every endpoint, and the form to register one.
pub async fn webhooks(State(dash): State<DashState>, who: SignedIn) -> PageResult {
    who.op.require(Permission::Admin)?;
    html(WebhooksPage {
        nav: nav(&who, "webhooks"),
        hooks: hooks::list(&dash.app).await?,
        kinds: choices(),
    })
}

#[derive(Template)]
#[template(path = "webhook_created.html")]
pub(super) struct WebhookCreatedPage {
    nav: Nav,
    hook: WebhookInfo,
    secret: String,
}

/// `POST /ui/webhooks/add`: `csrf`, `url`, one `event` per chosen type, `format`,
/// `allow_insecure_http`, `description`. CSRF, role, then the same call and audit entry as
/// `POST /v1/webhooks`; the answer shows the secret this once.
pub async fn webhook_add(
    State(dash): State<DashState>,
    who: SignedIn,
    Form(fields): Form<Vec<(String, String)>>,
) -> PageResult {
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    who.check_csrf(&field("csrf"))?;
    let req = CreateWebhook {
        url: field("url"),
        events: fields
            .iter()
            .filter(|(k, _)| k == "event")
            .map(|(_, v)| v.clone())
            .collect(),
        format: if field("format") == "slack" {
            WebhookFormat::Slack
        } else {
            WebhookFormat::Json
        },
        allow_insecure_http: field("allow_insecure_http") == "on",
        description: field("description"),
    };
    let created = hooks::create(&dash.app, &who.op, &req, " (dashboard)").await?;
    html(WebhookCreatedPage {
        nav: nav(&who, "webhooks"),
        hook: created.webhook,
        secret: created.secret,
    })
}

pub(super) struct DeliveryRow {
    id: String,
    event: String,
    state: String,
    attempts: u32,
    next: String,
    last: String,
}

pub(super) struct AttemptRow {
    at: String,
    delivery: String,
    event: String,
    attempt: u32,
    status: String,
    duration_ms: u64,
    outcome: String,
    error: String,
}

#[derive(Template)]
#[template(path = "webhook.html")]
pub(super) struct WebhookPage {
    nav: Nav,
    hook: WebhookInfo,
    deliveries: Vec<DeliveryRow>,
    attempts: Vec<AttemptRow>,
}

/// `GET /ui/webhooks/{id}`: one endpoint and its delivery log.
pub async fn webhook(
    State(dash): State<DashState>,
    who: SignedIn,
    Path(id): Path<String>,
) -> PageResult {
    who.op.require(Permission::Admin)?;
    let hook = hooks::one(&dash.app, &id).await?;
    let log = hooks::log(&dash.app, &id).await?;
    let status = |s: Option<u16>| s.map_or_else(|| "—".to_string(), |s| s.to_string());
    html(WebhookPage {
        nav: nav(&who, "webhooks"),
        hook,
        deliveries: log
            .deliveries
            .into_iter()
            .map(|d| DeliveryRow {
                next: d
                    .next_attempt_at
                    .map_or_else(|| "—".into(), |t| when(Some(t))),
                last: match (&d.last_status, &d.last_error) {
                    (_, Some(e)) => e.clone(),
                    (Some(s), None) => s.to_string(),
                    (None, None) => "—".into(),
                },
                id: d.id,
                event: d.event_type,
                state: d.state,
                attempts: d.attempts,
            })
            .collect(),
        attempts: log
            .attempts
            .into_iter()
            .map(|a| AttemptRow {
                at: when(Some(a.at)),
                delivery: a.delivery_id,
                event: a.event_type,
                attempt: a.attempt,
                status: status(a.status),
                duration_ms: a.duration_ms,
                outcome: a.outcome,
                error: a.error.unwrap_or_default(),
            })
            .collect(),
    })
}

/// `GET /ui/webhooks/{id}/confirm/remove`: the confirmation step before removing one.
pub async fn webhook_confirm_remove(
    State(dash): State<DashState>,
    who: SignedIn,
    Path(id): Path<String>,
) -> PageResult {
    who.op.require(Permission::Admin)?;
    let hook = hooks::one(&dash.app, &id).await?;
    html(ConfirmPage {
        nav: nav(&who, "webhooks"),
        post_to: format!("/ui/webhooks/{}/actions/remove", urlencode(&hook.id)),
        cancel: format!("/ui/webhooks/{}", urlencode(&hook.id)),
        label: "Remove the webhook".into(),
        question: format!(
            "Remove webhook {} ({})? Its {} pending deliveries are dropped and its delivery log deleted.",
            hook.id, hook.url, hook.pending
        ),
        wave: String::new(),
        site: String::new(),
        takes_reason: false,
        danger: true,
    })
}

/// `POST /ui/webhooks/{id}/actions/remove`: CSRF, role, then the same call and audit
/// entry as `DELETE /v1/webhooks/{id}`.
pub async fn webhook_remove(
    State(dash): State<DashState>,
    who: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    who.check_csrf(&form.csrf)?;
    hooks::delete(&dash.app, &who.op, &id, " (dashboard)").await?;
    Ok(Redirect::to("/ui/webhooks").into_response())
}
