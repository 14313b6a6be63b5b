//! One site's page and its controls (decommission, re-enable, hold, lift the hold).

use super::*;

pub(super) struct EventRow {
    at: String,
    kind: String,
    text: String,
}

pub(super) fn event_text(e: &Event) -> String {
    match &e.body {
        EventBody::Phase {
            rollout_id,
            release_id,
            phase,
            detail,
        } => format!(
            "{} {release_id}{}{}",
            phase.as_str(),
            rollout_id
                .as_ref()
                .map(|r| format!(" (rollout {r})"))
                .unwrap_or_default(),
            detail
                .as_ref()
                .filter(|d| !d.is_empty())
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        ),
        EventBody::Health { healthy, summary } => format!(
            "{}: {} passed, {} failed{}",
            if *healthy { "healthy" } else { "unhealthy" },
            summary.passed,
            summary.failed,
            if summary.failing.is_empty() {
                String::new()
            } else {
                format!(" ({})", summary.failing.join("; "))
            }
        ),
        EventBody::Deferral { until, reason } => match until {
            Some(t) => format!(
                "deferred until {}{}",
                when(Some(*t)),
                reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
            None => "deferral lifted".to_string(),
        },
        EventBody::Installed {
            name,
            release_id,
            version,
            previous_release_id,
        } => format!(
            "installed {name}: {} ({}), previous {}",
            version.as_deref().unwrap_or("?"),
            release_id.as_deref().unwrap_or("?"),
            previous_release_id.as_deref().unwrap_or("none")
        ),
        EventBody::Refusal { code, message, .. } => format!("refused ({code}): {message}"),
        #[allow(unreachable_patterns)]
        _ => "event".to_string(),
    }
}

pub(super) fn event_kind(e: &Event) -> &'static str {
    match &e.body {
        EventBody::Phase { .. } => "phase",
        EventBody::Health { .. } => "health",
        EventBody::Deferral { .. } => "deferral",
        EventBody::Installed { .. } => "installed",
        EventBody::Refusal { .. } => "refusal",
        #[allow(unreachable_patterns)]
        _ => "event",
    }
}

/// One stream's latest golden-signal minute on the site page.
pub(super) struct SignalRow {
    stream: String,
    minute: String,
    release: String,
    values: Vec<(String, String)>,
    /// What went wrong in the minute (empty: nothing).
    problem: String,
}

pub(super) struct InstalledRow {
    stream: String,
    current: String,
    previous: String,
    at: String,
}

/// One box of a site of several boxes (the `Boxes` table).
pub(super) struct BoxRow {
    id: String,
    role: String,
    installed: String,
    phase: String,
    last_report: String,
    state: String,
}

#[derive(Template)]
#[template(path = "site.html")]
pub(super) struct SitePage {
    nav: Nav,
    id: String,
    state: String,
    labels: Vec<(String, String)>,
    agent_version: String,
    enrolled: String,
    last_seen: String,
    health: String,
    health_class: String,
    deferral: String,
    installed: Vec<InstalledRow>,
    signals: Vec<SignalRow>,
    boxes: Vec<BoxRow>,
    assigned: String,
    rollout: String,
    /// Set when the site's newest install phase is `rollback_failed`: what the agent said.
    rollback_failed: String,
    /// Set when an operator holds the site: why, by whom, since when.
    hold: String,
    events: Vec<EventRow>,
    health_history: Vec<EventRow>,
    can_operate: bool,
}

/// The agent's words when the newest phase among `events` (newest first) is
/// `rollback_failed`: the agent gave up and the box needs an operator. Empty otherwise.
pub(super) fn rollback_failed_alert(events: &[Event]) -> String {
    let newest_phase = events.iter().find_map(|e| match &e.body {
        EventBody::Phase {
            phase,
            release_id,
            detail,
            ..
        } => Some((*phase, release_id, detail)),
        _ => None,
    });
    match newest_phase {
        Some((fleetwave_shared::protocol::Phase::RollbackFailed, release_id, detail)) => format!(
            "The agent gave up rolling back {release_id}: the box may run neither release and \
             needs an operator. {}",
            detail.as_deref().unwrap_or_default()
        ),
        _ => String::new(),
    }
}

/// `GET /ui/sites/{id}`
pub async fn site(
    State(dash): State<DashState>,
    who: SignedIn,
    Path(id): Path<String>,
) -> PageResult {
    let i = id.clone();
    let site = dash
        .app
        .db
        .run(move |s| s.site(&i))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no site {id}")))?;
    let i = id.clone();
    let rollout = dash
        .app
        .db
        .run(move |s| s.active_rollout_of_site(&i))
        .await?;
    let hold = dash
        .app
        .db
        .run(|s| s.site_holds())
        .await?
        .remove(&id)
        .map(|h| {
            format!(
                "Held by {} since {}: {}. No rollout takes it until the hold is lifted.",
                h.held_by,
                when(Some(h.held_at)),
                h.reason
            )
        })
        .unwrap_or_default();
    let i = id.clone();
    let signals = dash
        .app
        .db
        .run(move |s| s.latest_signals(&i))
        .await?
        .into_iter()
        .map(|(m, received)| {
            let info = fleetwave_shared::protocol::operator::SiteSignals::new(m, received);
            SignalRow {
                stream: info.stream,
                minute: format!(
                    "{} (received {})",
                    when(Some(info.minute)),
                    when(Some(info.received_at))
                ),
                release: info.release_id.unwrap_or_else(|| "?".into()),
                values: info
                    .values
                    .iter()
                    .map(|(k, v)| (k.clone(), format!("{v:.4}")))
                    .collect(),
                problem: info.problem.unwrap_or_default(),
            }
        })
        .collect();
    let i = id.clone();
    let (events, health, last_assignment) = dash
        .read
        .run(move |r| {
            Ok((
                r.site_events(&i, None, 100)?,
                r.site_events(&i, Some(ReportKind::Health), 30)?,
                r.last_assignment(&i)?,
            ))
        })
        .await?;
    let assigned = match last_assignment {
        Some((seq, rollout_id, release_id, rollback)) => {
            let rid = release_id.clone();
            let version = dash
                .app
                .db
                .run(move |s| s.release(&rid))
                .await?
                .map(|r| r.version)
                .unwrap_or_else(|| "?".into());
            format!(
                "{release_id} (version {version}) by rollout {rollout_id}, assignment #{seq}{}",
                if rollback { ", a rollback" } else { "" }
            )
        }
        None => "nothing assigned".into(),
    };
    let now = dash.app.now();
    let boxes = crate::api::operator::site_boxes(&dash.app, &id, rollout.as_deref())
        .await?
        .into_iter()
        .map(|b| BoxRow {
            id: b.box_id,
            role: if b.role.is_empty() {
                "—".into()
            } else {
                b.role
            },
            installed: if b.installed.is_empty() {
                "—".into()
            } else {
                b.installed
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            phase: b.phase.unwrap_or_else(|| "—".into()),
            last_report: format!(
                "{} ({})",
                ago(b.last_report_at, now),
                when(b.last_report_at)
            ),
            state: b.state,
        })
        .collect();
    let rows = |v: &[Event]| {
        v.iter()
            .map(|e| EventRow {
                at: when(Some(e.at)),
                kind: event_kind(e).to_string(),
                text: event_text(e),
            })
            .collect::<Vec<_>>()
    };
    html(SitePage {
        nav: nav(&who, "sites"),
        state: site.state.as_str().to_string(),
        labels: site
            .labels
            .iter()
            .map(|(k, v)| {
                let text = format!("{k}={v}");
                let href = format!("/ui/sites?label={}", urlencode(&text));
                (text, href)
            })
            .collect(),
        agent_version: site.agent_version.clone(),
        enrolled: when(Some(site.enrolled_at)),
        last_seen: format!("{} ({})", ago(site.last_seen, now), when(site.last_seen)),
        health: match site.healthy {
            Some(true) => format!("healthy (reported {})", ago(site.health_at, now)),
            Some(false) => format!("unhealthy (reported {})", ago(site.health_at, now)),
            None => "no health report yet".into(),
        },
        health_class: cell_class(
            site.state.as_str(),
            site.healthy,
            site.last_seen.map(|t| t.as_millisecond()),
            site.deferred_until.map(|t| t.as_millisecond()),
            now,
        )
        .into(),
        deferral: match site.deferred_until {
            Some(t) if t > now => format!("deferred by the site until {}", when(Some(t))),
            Some(t) => format!("not deferred (last deferral ended {})", when(Some(t))),
            None => "not deferred".into(),
        },
        installed: site
            .installed
            .iter()
            .map(|(stream, i)| InstalledRow {
                stream: stream.clone(),
                current: format!(
                    "{} ({})",
                    i.version.as_deref().unwrap_or("?"),
                    i.release_id.as_deref().unwrap_or("?")
                ),
                previous: i.previous_release_id.clone().unwrap_or_else(|| "—".into()),
                at: when(Some(i.at)),
            })
            .collect(),
        signals,
        boxes,
        assigned,
        rollout: rollout.unwrap_or_default(),
        rollback_failed: rollback_failed_alert(&events),
        hold,
        events: rows(&events),
        health_history: rows(&health),
        can_operate: who.can_operate(),
        id: site.id,
    })
}

/// `GET /ui/sites/{id}/confirm/{action}`: the confirmation step before decommissioning
/// or re-enabling a site.
pub async fn site_confirm(
    State(dash): State<DashState>,
    who: SignedIn,
    Path((id, action)): Path<(String, String)>,
) -> PageResult {
    who.op.require(Permission::Operate)?;
    let i = id.clone();
    let site = dash
        .app
        .db
        .run(move |s| s.site(&i))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no site {id}")))?;
    let mut takes_reason = false;
    let (label, question, danger) = match action.as_str() {
        "decommission" => (
            "Decommission the site",
            format!(
                "Decommission site {}? The coordinator refuses its agent from now on (no polls, leases or reports) until it is re-enabled; it leaves the fleet's counts. It is {} now.",
                site.id,
                site.state.as_str()
            ),
            true,
        ),
        "reenable" => (
            "Re-enable the site",
            format!(
                "Re-enable site {}? Its agent is served again and it joins the active rollouts its labels select. It is {} now.",
                site.id,
                site.state.as_str()
            ),
            false,
        ),
        "hold" => {
            takes_reason = true;
            (
                "Hold the site",
                format!(
                    "Hold site {} at what it runs? No new rollout places it and it joins none; an active rollout that has not started on it leaves it out of its gate. An install already under way goes on. Say why below (required).",
                    site.id
                ),
                false,
            )
        }
        "unhold" => (
            "Lift the hold",
            format!(
                "Lift the hold on site {}? It joins the active rollouts its labels select.",
                site.id
            ),
            false,
        ),
        other => return Err(ApiError::not_found(format!("no site action {other:?}")).into()),
    };
    html(ConfirmPage {
        nav: nav(&who, "sites"),
        post_to: format!("/ui/sites/{}/actions/{action}", urlencode(&site.id)),
        cancel: format!("/ui/sites/{}", urlencode(&site.id)),
        label: label.to_string(),
        question,
        wave: String::new(),
        site: site.id,
        takes_reason,
        danger,
    })
}

/// `POST /ui/sites/{id}/actions/{action}`: CSRF, role, then the engine and the audit log
/// exactly as `POST /v1/sites/{id}/decommission` or `/reenable` do: the same store change,
/// session refusal, rollout joining and audit entry.
pub async fn site_act(
    State(dash): State<DashState>,
    who: SignedIn,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<SiteActForm>,
) -> PageResult {
    who.check_csrf(&form.csrf)?;
    who.op.require(Permission::Operate)?;
    let app = &dash.app;
    match action.as_str() {
        "hold" => {
            let outcome = app
                .engine
                .hold_site(&id, &form.reason, &who.op.actor())
                .await
                .map_err(ApiError::from)?;
            let mut detail = format!("reason: {} (dashboard)", form.reason.trim());
            if !outcome.skipped_in.is_empty() {
                detail.push_str(&format!("; left out of {}", outcome.skipped_in.join(", ")));
            }
            who.op.audit(app, "site.hold", &id, detail).await?;
        }
        "unhold" => {
            let was = app.engine.release_hold(&id).await.map_err(ApiError::from)?;
            who.op
                .audit(
                    app,
                    "site.unhold",
                    &id,
                    if was { "" } else { "was not held" },
                )
                .await?;
        }
        "decommission" => {
            app.engine
                .set_site_active(&id, false)
                .await
                .map_err(ApiError::from)?;
            who.op
                .audit(app, "site.decommission", &id, "sessions refused")
                .await?;
        }
        "reenable" => {
            app.engine
                .set_site_active(&id, true)
                .await
                .map_err(ApiError::from)?;
            who.op.audit(app, "site.reenable", &id, "").await?;
        }
        other => return Err(ApiError::not_found(format!("no site action {other:?}")).into()),
    }
    dash.invalidate_overview().await;
    Ok(Redirect::to(&format!("/ui/sites/{}", urlencode(&id))).into_response())
}

/// The form of a site control: the session's CSRF token, and the reason of a hold.
#[derive(serde::Deserialize)]
pub struct SiteActForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}
