//! The rollout list, one rollout's page, and its controls (confirm, then act).

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
}

/// `GET /ui/rollouts`
pub async fn rollouts(State(dash): State<DashState>, who: SignedIn) -> PageResult {
    let mut all = dash.app.db.run(|s| s.list_rollouts()).await?;
    all.sort_by_key(|r| std::cmp::Reverse(r.created_at));
    html(RolloutsPage {
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
}

pub(super) const CONTROLS: [(&str, &str); 6] = [
    ("start", "Start"),
    ("pause", "Pause"),
    ("resume", "Resume"),
    ("approve", "Approve wave"),
    ("abort", "Abort"),
    ("rollback", "Roll back"),
];

/// `GET /ui/rollouts/{id}`
pub async fn rollout(
    State(dash): State<DashState>,
    who: SignedIn,
    Path(id): Path<String>,
) -> PageResult {
    let m = dash.rollout_model(&id, false).await?;
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
    html(RolloutPage {
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
        "start" => format!("Start rollout {}? Its first wave opens now.", m.id),
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
