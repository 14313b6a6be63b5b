//! Fleet freezes: the list (every signed-in role), and for operators a form to add one
//! and a control to end one, each through a confirmation step, then the same engine
//! function and audit entry as `POST /v1/freezes` and `POST /v1/freezes/{id}/end`.

use fleetwave_shared::protocol::operator::FreezeSource;
use jiff::SignedDuration;

use super::*;

pub(super) struct FreezeRow {
    id: String,
    state: &'static str,
    start: String,
    end: String,
    source: &'static str,
    by: String,
    reason: String,
    /// Whether an operator may end it here (stored, not from the configuration file).
    endable: bool,
}

#[derive(Template)]
#[template(path = "freezes.html")]
pub(super) struct FreezesPage {
    nav: Nav,
    rows: Vec<FreezeRow>,
    can_operate: bool,
}

/// `GET /ui/freezes`: the freezes in force now and to come.
pub async fn freezes(State(dash): State<DashState>, who: SignedIn) -> PageResult {
    let rows = dash
        .app
        .engine
        .list_freezes()
        .into_iter()
        .map(|f| FreezeRow {
            state: if f.active { "in force" } else { "upcoming" },
            start: when(Some(f.start)),
            end: when(Some(f.end)),
            source: match f.source {
                FreezeSource::Config => "config file",
                FreezeSource::Api => "api",
            },
            by: f.created_by.unwrap_or_else(|| "—".into()),
            reason: f.reason,
            endable: f.source == FreezeSource::Api,
            id: f.id,
        })
        .collect();
    html(FreezesPage {
        nav: nav(&who, "freezes"),
        rows,
        can_operate: who.can_operate(),
    })
}

/// The "add freeze" form's fields: `end` (RFC 3339) or `duration` (e.g. `2h`), an
/// optional `start` (RFC 3339; now when empty), and a `reason`.
#[derive(Deserialize, Default)]
pub struct FreezeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    start: String,
    #[serde(default)]
    end: String,
    #[serde(default)]
    duration: String,
    #[serde(default)]
    reason: String,
}

fn bad(message: String) -> DashboardError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_freeze", message).into()
}

fn time_field(name: &str, value: &str) -> Result<Option<Timestamp>, DashboardError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| {
        bad(format!(
            "{name}: {value:?} is not a time; write it as RFC 3339, e.g. 2026-11-30T00:00:00Z"
        ))
    })
}

/// `30m`, `12h`, `7d`.
fn duration_field(value: &str) -> Result<SignedDuration, DashboardError> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let unit_secs = match unit {
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => 0,
    };
    match n.parse::<i64>() {
        Ok(n) if unit_secs > 0 && n <= 10 * 366 => Ok(SignedDuration::from_secs(n * unit_secs)),
        _ => Err(bad(format!(
            "duration: {v:?} is not a duration; write it like 90m, 12h or 7d"
        ))),
    }
}

/// The freeze a form asks for: `(start, end)`, start None for "now".
fn freeze_times(
    form: &FreezeForm,
    now: Timestamp,
) -> Result<(Option<Timestamp>, Timestamp), DashboardError> {
    let start = time_field("start", &form.start)?;
    let end = match (
        time_field("end", &form.end)?,
        form.duration.trim().is_empty(),
    ) {
        (Some(end), true) => end,
        (None, false) => start
            .unwrap_or(now)
            .checked_add(duration_field(&form.duration)?)
            .map_err(|_| bad("duration: too long".into()))?,
        _ => return Err(bad("give either an end time or a duration".into())),
    };
    Ok((start, end))
}

#[derive(Template)]
#[template(path = "freeze_confirm.html")]
pub(super) struct FreezeConfirmPage {
    nav: Nav,
    question: String,
    start: String,
    end: String,
    reason: String,
}

/// `GET /ui/freezes/confirm-add?start=&end=&duration=&reason=`: the confirmation step
/// before adding a freeze, with its times worked out.
pub async fn freeze_confirm_add(
    State(dash): State<DashState>,
    who: SignedIn,
    Query(form): Query<FreezeForm>,
) -> PageResult {
    who.op.require(Permission::Operate)?;
    let now = dash.app.now();
    let (start, end) = freeze_times(&form, now)?;
    let question = format!(
        "Add a fleet freeze from {} to {}? No site is granted a lease to install while it is in force, in every rollout; it takes effect at once. Reason: {}",
        start.map_or_else(|| "now".to_string(), |s| when(Some(s))),
        when(Some(end)),
        form.reason.trim()
    );
    html(FreezeConfirmPage {
        nav: nav(&who, "freezes"),
        question,
        start: start.map(|s| s.to_string()).unwrap_or_default(),
        end: end.to_string(),
        reason: form.reason.trim().to_string(),
    })
}

/// `POST /ui/freezes/add`: CSRF, role, then the engine and the audit log as
/// `POST /v1/freezes` does.
pub async fn freeze_add(
    State(dash): State<DashState>,
    who: SignedIn,
    Form(form): Form<FreezeForm>,
) -> PageResult {
    who.check_csrf(&form.csrf)?;
    who.op.require(Permission::Operate)?;
    let app = &dash.app;
    let (start, end) = freeze_times(&form, app.now())?;
    let f = app
        .engine
        .create_freeze(start, end, &form.reason, &who.op.actor())
        .await
        .map_err(ApiError::from)?;
    who.op
        .audit(
            app,
            "freeze.create",
            &f.id,
            format!("{} to {}: {} (dashboard)", f.start, f.end, f.reason),
        )
        .await?;
    Ok(Redirect::to("/ui/freezes").into_response())
}

/// `GET /ui/freezes/{id}/confirm/end`: the confirmation step before ending a freeze.
pub async fn freeze_confirm_end(
    State(dash): State<DashState>,
    who: SignedIn,
    Path(id): Path<String>,
) -> PageResult {
    who.op.require(Permission::Operate)?;
    let f = dash
        .app
        .engine
        .list_freezes()
        .into_iter()
        .find(|f| f.id == id)
        .ok_or_else(|| ApiError::not_found(format!("no freeze {id} in force or to come")))?;
    if f.source == FreezeSource::Config {
        return Err(ApiError::from(crate::engine::EngineError::FreezeFromConfig(id)).into());
    }
    html(ConfirmPage {
        nav: nav(&who, "freezes"),
        post_to: format!("/ui/freezes/{}/actions/end", urlencode(&f.id)),
        cancel: "/ui/freezes".into(),
        label: "End the freeze".into(),
        question: format!(
            "End freeze {} ({}, {} to {}) now? Sites may be granted leases again at once.",
            f.id,
            f.reason,
            when(Some(f.start)),
            when(Some(f.end))
        ),
        wave: String::new(),
        site: String::new(),
        takes_reason: false,
        danger: true,
    })
}

/// `POST /ui/freezes/{id}/actions/end`: CSRF, role, then the engine and the audit log as
/// `POST /v1/freezes/{id}/end` does.
pub async fn freeze_end(
    State(dash): State<DashState>,
    who: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    who.check_csrf(&form.csrf)?;
    who.op.require(Permission::Operate)?;
    let app = &dash.app;
    let f = app
        .engine
        .end_freeze(&id, &who.op.actor())
        .await
        .map_err(ApiError::from)?;
    who.op
        .audit(
            app,
            "freeze.end",
            &f.id,
            format!("was {} to {}: {} (dashboard)", f.start, f.end, f.reason),
        )
        .await?;
    Ok(Redirect::to("/ui/freezes").into_response())
}
