//! Channels: `GET/POST /v1/channels`, `GET/DELETE /v1/channels/{name}`,
//! `POST /v1/channels/{name}/set`, `POST /v1/channels/{name}/resume`. Reading needs a
//! viewer; changing needs an operator; every change is audited (see
//! [`crate::engine::channels`]).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fleetwave_shared::protocol::channels::*;
use fleetwave_shared::protocol::operator::Permission;

use crate::engine::EngineError;
use crate::engine::channels::{Actor, ChannelChange, ChannelStatus, NewChannel};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::http::auth::Operator;
use crate::plan::Selector;
use crate::state::AppState;

fn actor(op: &Operator) -> Actor {
    Actor {
        name: op.actor(),
        remote: op.remote.clone(),
    }
}

/// The channel as the API shows it.
pub fn info(s: &ChannelStatus) -> ChannelInfo {
    let c = &s.channel;
    ChannelInfo {
        name: c.name.clone(),
        stream: c.stream.clone(),
        selector: serde_json::to_value(&c.selector).unwrap_or_default(),
        selector_text: c.selector.to_string(),
        release_id: c.release_id.clone(),
        release_version: s.release.as_ref().map(|r| r.version.clone()),
        max_concurrent: c.max_concurrent,
        failure_budget: c.failure_budget,
        window: c.window.as_ref().and_then(|w| serde_json::to_value(w).ok()),
        set_by: c.set_by.clone(),
        set_at: c.set_at,
        set_reason: c.set_reason.clone(),
        created_at: c.created_at,
        created_by: c.created_by.clone(),
        paused: s
            .convergence
            .as_ref()
            .is_some_and(|(_, st, _)| !matches!(st, crate::controller::RolloutStatus::Running)),
        convergence: s
            .convergence
            .as_ref()
            .map(|(id, status, reason)| ConvergenceInfo {
                rollout_id: id.clone(),
                status: *status,
                reason: reason.clone(),
            }),
        off_release: s.off_total as u64,
    }
}

pub async fn list_channels(
    State(app): State<AppState>,
    op: Operator,
) -> Result<Json<ChannelList>, ApiError> {
    op.require(Permission::Read)?;
    let mut channels = Vec::new();
    for c in app.engine.channels().await? {
        let s = app.engine.channel_status(&c.name, "", 0).await?;
        channels.push(info(&s));
    }
    Ok(Json(ChannelList { channels }))
}

pub async fn get_channel(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<ChannelQuery>,
) -> Result<Json<ChannelDetail>, ApiError> {
    op.require(Permission::Read)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000) as usize;
    let after = q.after.unwrap_or_default();
    Ok(Json(detail(&app, &name, &after, limit).await?))
}

/// A channel with a page of its sites off its release.
pub async fn detail(
    app: &AppState,
    name: &str,
    after: &str,
    limit: usize,
) -> Result<ChannelDetail, EngineError> {
    let s = app.engine.channel_status(name, after, limit).await?;
    let listed_to_end = s
        .by_reason
        .values()
        .sum::<u64>()
        .saturating_sub(s.off.len() as u64);
    let next_after = (s.off.len() == limit && listed_to_end > 0)
        .then(|| s.off.last().map(|o| o.site_id.clone()))
        .flatten();
    Ok(ChannelDetail {
        channel: info(&s),
        off: s
            .off
            .iter()
            .map(|o| OffChannelSite {
                site_id: o.site_id.clone(),
                version: o.version.clone(),
                reason: o.reason.key().to_string(),
                detail: o.reason.describe(),
                last_seen: o.last_seen,
                offline: o.offline,
                deferred_until: o.deferred_until,
            })
            .collect(),
        off_by_reason: s
            .by_reason
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect::<BTreeMap<_, _>>(),
        next_after,
    })
}

/// A selector or window from a request, with the field named when it does not parse.
fn field<T: serde::de::DeserializeOwned>(
    name: &str,
    value: serde_json::Value,
) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_channel",
            format!("{name}: {e}"),
        )
    })
}

pub async fn create_channel(
    State(app): State<AppState>,
    op: Operator,
    ApiJson(req): ApiJson<CreateChannel>,
) -> Result<(StatusCode, Json<ChannelDetail>), ApiError> {
    op.require(Permission::Operate)?;
    let selector: Selector = field(
        "selector",
        serde_json::Value::Object(req.selector.into_iter().collect()),
    )?;
    let window = req.window.map(|w| field("window", w)).transpose()?;
    let created = app
        .engine
        .create_channel(
            NewChannel {
                name: req.name,
                stream: req.stream,
                selector,
                release: req.release,
                max_concurrent: req.max_concurrent,
                failure_budget: req.failure_budget,
                window,
            },
            &actor(&op),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(detail(&app, &created.name, "", 100).await?),
    ))
}

pub async fn set_channel(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<ChangeChannel>,
) -> Result<Json<ChannelDetail>, ApiError> {
    op.require(Permission::Operate)?;
    let window = match (req.window, req.clear_window) {
        (Some(_), true) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_channel",
                "window: give a window or clear_window, not both",
            ));
        }
        (Some(w), false) => Some(Some(field("window", w)?)),
        (None, true) => Some(None),
        (None, false) => None,
    };
    app.engine
        .change_channel(
            &name,
            ChannelChange {
                release: req.release,
                rollback: req.rollback,
                reason: req.reason,
                max_concurrent: req.max_concurrent,
                failure_budget: req.failure_budget,
                window,
            },
            &actor(&op),
        )
        .await?;
    Ok(Json(detail(&app, &name, "", 100).await?))
}

pub async fn resume_channel(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ChannelResumed>, ApiError> {
    op.require(Permission::Operate)?;
    let outcome = app.engine.resume_channel(&name, &actor(&op)).await?;
    Ok(Json(ChannelResumed {
        channel: name,
        outcome,
    }))
}

pub async fn delete_channel(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    op.require(Permission::Operate)?;
    app.engine.delete_channel(&name, &actor(&op)).await?;
    Ok(StatusCode::NO_CONTENT)
}
