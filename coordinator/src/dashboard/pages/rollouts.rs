//! The rollout list, one rollout's page, and its controls (confirm, then act).

use fleetwave_shared::protocol::operator::PlanPreview;

use super::*;

pub(super) struct RolloutListRow {
    id: String,
    release_id: String,
    status: String,
    reason: String,
    created: String,
    updated: String,
}

#[derive(Template)]
#[template(path = "rollouts.html")]
pub(super) struct RolloutsPage {
    nav: Nav,
    rows: Vec<RolloutListRow>,
    can_operate: bool,
    /// The "check a plan" form starts empty, in TOML.
    plan_text: String,
    json: bool,
}

/// `GET /ui/rollouts`
pub async fn rollouts(State(dash): State<DashState>, who: SignedIn) -> PageResult {
    let mut all = dash.app.db.run(|s| s.list_rollouts()).await?;
    all.sort_by_key(|r| std::cmp::Reverse(r.created_at));
    html(RolloutsPage {
        can_operate: who.can_operate(),
        plan_text: String::new(),
        json: false,
        nav: nav(&who, "rollouts"),
        rows: all
            .into_iter()
            .map(|r| RolloutListRow {
                id: r.id,
                release_id: r.release_id,
                status: r.status.as_str().to_string(),
                reason: r.status_reason.unwrap_or_default(),
                created: format!("{} by {}", when(Some(r.created_at)), r.created_by),
                updated: when(Some(r.updated_at)),
            })
            .collect(),
    })
}

pub(super) struct WaveRow {
    w: model::WaveModel,
    bar: String,
    counts: Vec<(String, String, u32)>,
    /// Failed sites of the wave (a retry control shows when there are any).
    failed: u32,
    /// The wave's golden-signal analysis as pictures (escaped HTML; empty: none).
    analysis: String,
}

#[derive(Template)]
#[template(path = "rollout.html")]
pub(super) struct RolloutPage {
    nav: Nav,
    m: Arc<model::RolloutModel>,
    waves: Vec<WaveRow>,
    total_bar: String,
    can_operate: bool,
    /// (action, label, href, shown now)
    controls: Vec<(String, String, String, bool)>,
    legend: Vec<(String, String)>,
    /// "2026-12-05 01:00:00 UTC (2026-12-05 02:00 CET (Europe/Berlin))" before a rollout
    /// with a start_at starts; empty otherwise.
    starts_at: String,
    /// The dry run of the plan, before the rollout starts.
    preview: Option<PreviewView>,
}

/// A plan preview as the dashboard shows it.
pub(super) struct PreviewView {
    at: String,
    /// (index, name, count, first sites, earliest open, why)
    waves: Vec<(u32, String, u64, String, String, String)>,
    /// (reason, count, first sites with details)
    excluded: Vec<(String, u64, String)>,
    refused: String,
    notes: Vec<String>,
}

impl PreviewView {
    pub(super) fn of(p: &PlanPreview) -> PreviewView {
        let first = |ids: Vec<String>, total: u64| {
            let more = total.saturating_sub(ids.len() as u64);
            let mut text = ids.join(", ");
            if more > 0 {
                text.push_str(&format!(" and {more} more"));
            }
            text
        };
        PreviewView {
            at: when(Some(p.at)),
            waves: p
                .waves
                .iter()
                .map(|w| {
                    (
                        w.index,
                        w.name.clone(),
                        w.count,
                        first(w.sites.iter().take(20).cloned().collect(), w.count),
                        w.earliest_open
                            .map(|t| when(Some(t)))
                            .unwrap_or_else(|| "unknown".into()),
                        w.earliest_open_reason.clone(),
                    )
                })
                .collect(),
            excluded: p
                .excluded
                .iter()
                .map(|g| {
                    let ids = g
                        .sites
                        .iter()
                        .take(20)
                        .map(|s| match &s.detail {
                            Some(d) => format!("{} ({d})", s.site_id),
                            None => s.site_id.clone(),
                        })
                        .collect();
                    (
                        g.reason.as_str().replace('_', " "),
                        g.count,
                        first(ids, g.count),
                    )
                })
                .collect(),
            refused: p.refused.clone().unwrap_or_default(),
            notes: p.notes.clone(),
        }
    }
}

pub(super) const CONTROLS: [(&str, &str); 6] = [
    ("start", "Start"),
    ("pause", "Pause"),
    ("resume", "Resume"),
    ("approve", "Approve wave"),
    ("abort", "Abort"),
    ("rollback", "Roll back"),
];

#[derive(Template)]
#[template(path = "plan_check.html")]
pub(super) struct PlanCheckPage {
    nav: Nav,
    plan_text: String,
    json: bool,
    /// Why the plan was refused (empty: it was not).
    error: String,
    preview: Option<PreviewView>,
}

/// The "check a plan" form: the plan's text and its format (`toml` or `json`).
#[derive(Deserialize, Default)]
pub struct PlanCheckForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    plan: String,
    #[serde(default)]
    format: String,
}

/// `POST /ui/rollouts/preview`: a pasted plan's dry run (as `POST /v1/rollouts/plan`,
/// operator role), shown with the form to change and check it again. Stores nothing.
pub async fn plan_check(
    State(dash): State<DashState>,
    who: SignedIn,
    Form(form): Form<PlanCheckForm>,
) -> PageResult {
    who.check_csrf(&form.csrf)?;
    who.op.require(Permission::Operate)?;
    let (format, json) = match form.format.as_str() {
        "json" => (fleetwave_shared::protocol::operator::PlanFormat::Json, true),
        "toml" | "" => (
            fleetwave_shared::protocol::operator::PlanFormat::Toml,
            false,
        ),
        other => {
            return Err(ApiError::bad_request(format!(
                "format {other:?} is not a plan format: use toml or json"
            ))
            .into());
        }
    };
    let (status, preview, error) = match dash.app.engine.preview_plan(&form.plan, format).await {
        Ok(p) => (StatusCode::OK, Some(PreviewView::of(&p)), String::new()),
        Err(crate::engine::EngineError::InvalidPlan(why)) => {
            (StatusCode::UNPROCESSABLE_ENTITY, None, why)
        }
        Err(e) => return Err(e.into()),
    };
    let page = html(PlanCheckPage {
        nav: nav(&who, "rollouts"),
        plan_text: form.plan,
        json,
        error,
        preview,
    })?;
    Ok((status, page).into_response())
}

/// `GET /ui/rollouts/{id}`
pub async fn rollout(
    State(dash): State<DashState>,
    who: SignedIn,
    Path(id): Path<String>,
) -> PageResult {
    let m = dash.rollout_model(&id, false).await?;
    let mut pictures = analysis_pictures(&dash, &m.id);
    let waves = m
        .waves
        .iter()
        .map(|w| WaveRow {
            bar: bar_svg(&format!("{}.w{}", m.id, w.index), &w.segments),
            counts: model::SEGMENTS
                .iter()
                .map(|(s, l)| (format!("w{}.{s}", w.index), l.to_string(), w.counts.get(s)))
                .collect(),
            failed: w.counts.get("failed"),
            analysis: pictures.remove(&w.index).unwrap_or_default(),
            w: w.clone(),
        })
        .collect();
    let controls = CONTROLS
        .iter()
        .map(|(a, label)| {
            let href = match (*a, m.approve_wave) {
                ("approve", Some(w)) => format!("/ui/rollouts/{}/confirm/approve?wave={w}", m.id),
                _ => format!("/ui/rollouts/{}/confirm/{a}", m.id),
            };
            (
                a.to_string(),
                label.to_string(),
                href,
                m.controls.contains(a),
            )
        })
        .collect();
    // Before it starts, the page shows what its plan would do now (a dry run, nothing
    // stored).
    let preview = if matches!(m.status, "pending" | "scheduled") {
        Some(dash.app.engine.preview_rollout(&m.id).await?)
    } else {
        None
    };
    let starts_at = preview
        .as_ref()
        .and_then(|p| p.start_at.as_ref())
        .map(|s| match &s.zone {
            Some(_) => format!("{} ({})", when(Some(s.at)), s.local),
            None => when(Some(s.at)),
        })
        .unwrap_or_default();
    html(RolloutPage {
        starts_at,
        preview: preview.as_ref().map(PreviewView::of),
        nav: nav(&who, "rollouts"),
        total_bar: bar_svg(&format!("{}.total", m.id), &m.total_segments),
        waves,
        can_operate: who.can_operate(),
        controls,
        legend: model::SEGMENTS
            .iter()
            .map(|(s, l)| (s.to_string(), l.to_string()))
            .collect(),
        m,
    })
}

/// Each wave's golden-signal analysis as the controller last judged it, drawn.
fn analysis_pictures(dash: &DashState, id: &str) -> BTreeMap<u32, String> {
    dash.app
        .engine
        .analyses(id)
        .into_iter()
        .map(|(w, facts)| (w, super::analysis::wave_analysis_html(w, &facts)))
        .collect()
}

#[derive(Deserialize, Default)]
pub struct ConfirmQuery {
    #[serde(default)]
    wave: Option<u32>,
    #[serde(default)]
    site: Option<String>,
}

pub(super) fn action_words(action: &str) -> Option<(&'static str, bool, bool)> {
    // (button label, takes a reason, dangerous)
    Some(match action {
        "start" => ("Start the rollout", false, false),
        "pause" => ("Pause the rollout", true, false),
        "resume" => ("Resume the rollout", false, false),
        "approve" => ("Approve the wave", false, false),
        "abort" => ("Abort the rollout", true, true),
        "rollback" => ("Roll the rollout back", true, true),
        "skip" => ("Skip the site", false, true),
        "retry" => ("Retry", false, false),
        _ => return None,
    })
}

/// `GET /ui/rollouts/{id}/confirm/{action}`: the confirmation step before any control.
pub async fn confirm(
    State(dash): State<DashState>,
    who: SignedIn,
    Path((id, action)): Path<(String, String)>,
    Query(q): Query<ConfirmQuery>,
) -> PageResult {
    who.op.require(Permission::Operate)?;
    let (label, takes_reason, danger) = action_words(&action)
        .ok_or_else(|| ApiError::not_found(format!("no rollout action {action:?}")))?;
    let m = dash.rollout_model(&id, true).await?;
    let question = match action.as_str() {
        "start" if m.status == "scheduled" => format!(
            "Start rollout {} now, ahead of its plan's start_at? Its first wave opens now.",
            m.id
        ),
        "start" => format!(
            "Start rollout {}? Its first wave opens now, or at its plan's start_at when that is later (it waits as scheduled until then).",
            m.id
        ),
        "pause" => format!(
            "Pause rollout {}? No new wave opens and no lease is granted until it resumes; installs already running finish.",
            m.id
        ),
        "resume" => format!(
            "Resume rollout {}? It is {} now ({}).",
            m.id, m.status, m.status_reason
        ),
        "approve" => {
            let w = q
                .wave
                .ok_or_else(|| ApiError::bad_request("approve needs ?wave=N"))?;
            let wave = m
                .waves
                .get(w as usize)
                .ok_or_else(|| ApiError::bad_request(format!("wave {w} does not exist")))?;
            format!(
                "Approve wave {} ({})? Where it stands: {}. Once approved, the next wave opens (or the rollout completes) when the gate passes.",
                w, wave.name, wave.numbers
            )
        }
        "abort" => format!(
            "Abort rollout {} for good? Sites keep what they run now; nothing new starts and the rollout cannot be resumed.",
            m.id
        ),
        "rollback" => format!(
            "Roll back rollout {}? Every site that took {} is sent back to the release it ran before.",
            m.id, m.release_id
        ),
        "skip" => format!(
            "Skip site {} in rollout {}? The gate leaves it out.",
            q.site.clone().unwrap_or_default(),
            m.id
        ),
        "retry" => match (&q.site, q.wave) {
            (Some(site), _) => format!(
                "Retry site {site} in rollout {}? It installs {} again as a new attempt, under a lease and in its window; the gate counts it once, by this attempt.",
                m.id, m.release_id
            ),
            (None, Some(w)) => format!(
                "Retry every failed site of wave {w} in rollout {}? Each installs {} again as a new attempt; the gate counts each once, by its last attempt.",
                m.id, m.release_id
            ),
            (None, None) => {
                return Err(ApiError::bad_request("retry needs ?site=ID or ?wave=N").into());
            }
        },
        _ => unreachable!("action_words accepted only the actions above"),
    };
    html(ConfirmPage {
        nav: nav(&who, "rollouts"),
        post_to: format!("/ui/rollouts/{}/actions/{action}", m.id),
        cancel: format!("/ui/rollouts/{}", m.id),
        label: label.to_string(),
        question,
        wave: q.wave.map(|w| w.to_string()).unwrap_or_default(),
        site: q.site.unwrap_or_default(),
        takes_reason,
        danger,
    })
}

#[derive(Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    wave: String,
    #[serde(default)]
    site: String,
}

/// `POST /ui/rollouts/{id}/actions/{action}`: CSRF, role, then the engine and the audit
/// log exactly as `POST /v1/rollouts/{id}/{action}` does.
pub async fn act(
    State(dash): State<DashState>,
    who: SignedIn,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> PageResult {
    who.check_csrf(&form.csrf)?;
    who.op.require(Permission::Operate)?;
    let reason = Some(form.reason.trim().to_string()).filter(|r| !r.is_empty());
    if reason.as_ref().is_some_and(|r| r.len() > 500) {
        return Err(ApiError::bad_request("the reason must be at most 500 characters").into());
    }
    let (act, name) = match action.as_str() {
        "start" => (Action::Start, "rollout.start"),
        "pause" => (Action::Pause(reason), "rollout.pause"),
        "resume" => (Action::Resume, "rollout.resume"),
        "approve" => {
            let wave = form.wave.trim().parse::<u32>().map_err(|_| {
                ApiError::bad_request(format!("wave {:?} must be a wave number", form.wave))
            })?;
            (Action::Approve(wave), "rollout.approve")
        }
        "abort" => (Action::Abort(reason), "rollout.abort"),
        "rollback" => (Action::Rollback(reason), "rollout.rollback"),
        "skip" => {
            if form.site.trim().is_empty() {
                return Err(ApiError::bad_request("skip needs the site id").into());
            }
            (Action::Skip(form.site.trim().to_string()), "rollout.skip")
        }
        "retry" => {
            let target = if !form.site.trim().is_empty() {
                RetryTarget::Site(form.site.trim().to_string())
            } else {
                let wave = form.wave.trim().parse::<u32>().map_err(|_| {
                    ApiError::bad_request(format!("wave {:?} must be a wave number", form.wave))
                })?;
                RetryTarget::FailedOfWave(wave)
            };
            (Action::Retry(target), "rollout.retry")
        }
        other => {
            return Err(ApiError::not_found(format!("no rollout action {other:?}")).into());
        }
    };
    perform(&dash, &who.op, &id, act, name).await?;
    dash.invalidate(&id).await;
    Ok(Redirect::to(&format!("/ui/rollouts/{id}")).into_response())
}

/// The API's action path: the engine applies the action, then the audit entry is written
/// (same action names and detail as `POST /v1/rollouts/{id}/...`).
pub(super) async fn perform(
    dash: &DashState,
    op: &Operator,
    id: &str,
    action: Action,
    name: &str,
) -> Result<(), ApiError> {
    op.require(Permission::Operate)?;
    let detail = format!("{action:?}");
    dash.app
        .engine
        .rollout_action(id, action, &op.actor())
        .await?;
    op.audit(&dash.app, name, id, format!("{detail} (dashboard)"))
        .await
}
