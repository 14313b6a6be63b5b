//! Webhook endpoints: `GET/POST /v1/webhooks`, `GET/DELETE /v1/webhooks/{id}`,
//! `GET /v1/webhooks/{id}/deliveries`, `POST /v1/webhooks/{id}/test`. Admin role only
//! (the secret signs what receivers act on, and the URL receives fleet events); every
//! change is audited in the same transaction as the change.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fleetwave_shared::protocol::operator::{
    CreateWebhook, CreatedWebhook, Permission, WebhookAttemptView, WebhookDeliveries,
    WebhookDeliveryView, WebhookInfo, WebhookList, WebhookTestQueued,
};

use crate::error::{ApiError, ApiJson, ApiPath};
use crate::http::auth::Operator;
use crate::state::AppState;
use crate::store::{AuditRecord, DeliveryCounts};
use crate::webhooks::{self, WebhookEvent};

/// Deliveries and attempts `GET /v1/webhooks/{id}/deliveries` shows.
pub const LOG_LIMIT: usize = 100;

fn audit(app: &AppState, op: &Operator, action: &str, target: &str, detail: String) -> AuditRecord {
    AuditRecord {
        id: 0,
        at: app.now(),
        actor: op.actor(),
        action: action.to_string(),
        target: target.to_string(),
        detail,
        remote: op.remote.clone(),
    }
}

pub fn invalid(e: webhooks::InvalidWebhook) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_webhook",
        e.to_string(),
    )
}

/// Creates an endpoint for `req` (checked), audited as `webhook.create`; the answer
/// carries the secret, this once.
pub async fn create(
    app: &AppState,
    op: &Operator,
    req: &CreateWebhook,
    via: &str,
) -> Result<CreatedWebhook, ApiError> {
    op.require(Permission::Admin)?;
    let record = webhooks::new_endpoint(req, &op.actor(), app.now()).map_err(invalid)?;
    let entry = audit(
        app,
        op,
        "webhook.create",
        &record.id,
        format!(
            "{} ({}; {}){via}",
            record.url,
            record.kinds.join(", "),
            record.format
        ),
    );
    let r = record.clone();
    app.db.run(move |s| s.create_webhook(&r, &entry)).await?;
    Ok(CreatedWebhook {
        webhook: webhooks::info(&record, &DeliveryCounts::default()),
        secret: record.secret,
    })
}

/// Deletes an endpoint with its pending deliveries and log, audited as `webhook.delete`.
pub async fn delete(app: &AppState, op: &Operator, id: &str, via: &str) -> Result<(), ApiError> {
    op.require(Permission::Admin)?;
    let wid = id.to_string();
    let found = app
        .db
        .run(move |s| s.webhook(&wid))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no webhook {id}")))?;
    let entry = audit(app, op, "webhook.delete", id, format!("{}{via}", found.url));
    let wid = id.to_string();
    app.db.run(move |s| s.delete_webhook(&wid, &entry)).await?;
    Ok(())
}

/// Every endpoint with its delivery counts.
pub async fn list(app: &AppState) -> Result<Vec<WebhookInfo>, ApiError> {
    let (hooks, counts) = app
        .db
        .run(|s| Ok((s.webhooks()?, s.webhook_delivery_counts()?)))
        .await?;
    Ok(hooks
        .iter()
        .map(|w| webhooks::info(w, &counts.get(&w.id).cloned().unwrap_or_default()))
        .collect())
}

/// One endpoint, or 404.
pub async fn one(app: &AppState, id: &str) -> Result<WebhookInfo, ApiError> {
    let wid = id.to_string();
    let (hook, counts) = app
        .db
        .run(move |s| Ok((s.webhook(&wid)?, s.webhook_delivery_counts()?)))
        .await?;
    let hook = hook.ok_or_else(|| ApiError::not_found(format!("no webhook {id}")))?;
    Ok(webhooks::info(
        &hook,
        &counts.get(id).cloned().unwrap_or_default(),
    ))
}

/// An endpoint's newest deliveries and attempts.
pub async fn log(app: &AppState, id: &str) -> Result<WebhookDeliveries, ApiError> {
    one(app, id).await?;
    let wid = id.to_string();
    let (deliveries, attempts) = app
        .db
        .run(move |s| {
            Ok((
                s.webhook_deliveries(&wid, LOG_LIMIT)?,
                s.webhook_attempts(&wid, LOG_LIMIT)?,
            ))
        })
        .await?;
    Ok(WebhookDeliveries {
        deliveries: deliveries
            .into_iter()
            .map(|d| WebhookDeliveryView {
                next_attempt_at: (d.state == "pending").then_some(d.next_attempt_at),
                id: d.id,
                event_type: d.event_type,
                state: d.state,
                attempts: d.attempts,
                created_at: d.created_at,
                last_status: d.last_status,
                last_error: d.last_error,
                finished_at: d.finished_at,
            })
            .collect(),
        attempts: attempts
            .into_iter()
            .map(|a| WebhookAttemptView {
                delivery_id: a.delivery_id,
                event_type: a.event_type,
                attempt: a.attempt,
                at: a.at,
                status: a.status,
                error: a.error,
                duration_ms: a.duration_ms,
                outcome: a.outcome,
            })
            .collect(),
    })
}

pub async fn create_webhook(
    State(app): State<AppState>,
    op: Operator,
    ApiJson(req): ApiJson<CreateWebhook>,
) -> Result<(StatusCode, Json<CreatedWebhook>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(create(&app, &op, &req, "").await?),
    ))
}

pub async fn list_webhooks(
    State(app): State<AppState>,
    op: Operator,
) -> Result<Json<WebhookList>, ApiError> {
    op.require(Permission::Admin)?;
    Ok(Json(WebhookList {
        webhooks: list(&app).await?,
    }))
}

pub async fn get_webhook(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WebhookInfo>, ApiError> {
    op.require(Permission::Admin)?;
    Ok(Json(one(&app, &id).await?))
}

pub async fn delete_webhook(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    delete(&app, &op, &id, "").await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn webhook_deliveries(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WebhookDeliveries>, ApiError> {
    op.require(Permission::Admin)?;
    Ok(Json(log(&app, &id).await?))
}

pub async fn test_webhook(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<WebhookTestQueued>), ApiError> {
    op.require(Permission::Admin)?;
    let event = WebhookEvent::test(app.now(), &op.actor());
    let entry = audit(&app, &op, "webhook.test", &id, String::new());
    let wid = id.clone();
    let webhook_id = app
        .db
        .run(move |s| s.enqueue_webhook_test(&wid, &event, &entry))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(WebhookTestQueued { webhook_id })))
}
