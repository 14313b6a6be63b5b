//! Channels: the list (stream, selector, release, how many sites are off it, whether the
//! convergence is paused) and one channel's page with its sites off its release, each with
//! why, and the resume action when its convergence paused. The same calls and audit
//! entries as `/v1/channels`.

use fleetwave_shared::protocol::channels::{ChannelDetail, ChannelInfo};

use super::*;
use crate::api::channels as api;
use crate::engine::channels::Actor;

#[derive(Template)]
#[template(path = "channels.html")]
pub(super) struct ChannelsPage {
    nav: Nav,
    channels: Vec<ChannelInfo>,
}

/// `GET /ui/channels`
pub async fn channels(State(dash): State<DashState>, who: SignedIn) -> PageResult {
    who.op.require(Permission::Read)?;
    let mut out = Vec::new();
    for c in dash.app.engine.channels().await.map_err(ApiError::from)? {
        let s = dash
            .app
            .engine
            .channel_status(&c.name, "", 0)
            .await
            .map_err(ApiError::from)?;
        out.push(api::info(&s));
    }
    html(ChannelsPage {
        nav: nav(&who, "channels"),
        channels: out,
    })
}

pub(super) struct OffRow {
    site: String,
    runs: String,
    reason: String,
    detail: String,
    seen: String,
}

#[derive(Template)]
#[template(path = "channel.html")]
pub(super) struct ChannelPage {
    nav: Nav,
    d: ChannelDetail,
    rows: Vec<OffRow>,
    by_reason: String,
    can_operate: bool,
}

/// `GET /ui/channels/{name}`: the channel and its first 200 sites off its release.
pub async fn channel(
    State(dash): State<DashState>,
    who: SignedIn,
    Path(name): Path<String>,
) -> PageResult {
    who.op.require(Permission::Read)?;
    let d = api::detail(&dash.app, &name, "", 200)
        .await
        .map_err(ApiError::from)?;
    let rows = d
        .off
        .iter()
        .map(|o| OffRow {
            site: o.site_id.clone(),
            runs: o.version.clone().unwrap_or_else(|| "—".into()),
            reason: o.reason.clone(),
            detail: match o.deferred_until {
                Some(t) => format!("{}; deferred until {}", o.detail, when(Some(t))),
                None => o.detail.clone(),
            },
            seen: format!(
                "{}{}",
                ago(o.last_seen, dash.app.now()),
                if o.offline { " (offline)" } else { "" }
            ),
        })
        .collect();
    let by_reason = d
        .off_by_reason
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    html(ChannelPage {
        nav: nav(&who, "channels"),
        can_operate: who.op.require(Permission::Operate).is_ok(),
        d,
        rows,
        by_reason,
    })
}

/// `POST /ui/channels/{name}/actions/resume`: CSRF, role, then the same call and audit
/// entry as `POST /v1/channels/{name}/resume`.
pub async fn channel_resume(
    State(dash): State<DashState>,
    who: SignedIn,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    who.check_csrf(&form.csrf)?;
    who.op.require(Permission::Operate)?;
    let actor = Actor {
        name: format!("{} (dashboard)", who.op.actor()),
        remote: who.op.remote.clone(),
    };
    dash.app
        .engine
        .resume_channel(&name, &actor)
        .await
        .map_err(ApiError::from)?;
    Ok(Redirect::to(&format!("/ui/channels/{}", urlencode(&name))).into_response())
}
