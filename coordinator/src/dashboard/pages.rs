//! The dashboard's pages and forms: each handler reads through the store, the read model or
//! the rollout engine, fills an askama template and answers HTML.
//!
//! Every form that changes something checks the session's CSRF token and the operator's
//! role, then calls the same engine function and writes the same audit entry as the API.
//! Handlers never build HTML by hand except the bars and grid cells, whose every value is
//! escaped here.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use fleetwave_shared::protocol::operator::Permission;
use fleetwave_shared::protocol::{Event, EventBody};
use jiff::Timestamp;
use serde::Deserialize;

use super::live::STALE_AFTER;
use super::model::{self, Segment, ago, when};
use super::read::{FleetCounts, SiteQuery};
use super::session::{self, LOGIN_COOKIE, SESSION_COOKIE};
use super::{DashState, DashboardError, SignedIn};
use crate::api::auth::Operator;
use crate::controller::gate::human;
use crate::engine::Action;
use crate::error::ApiError;
use crate::state::random_hex;
use crate::store::ReportKind;

type PageResult = Result<Response, DashboardError>;

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A stacked progress bar as inline SVG (attributes, not inline styles: the CSP forbids
/// those). `key` names it for live updates.
pub fn bar_svg(key: &str, segs: &[Segment]) -> String {
    let total: u32 = segs.iter().map(|s| s.count).sum();
    let mut out = format!(
        "<svg class=\"bar\" data-bar=\"{}\" viewBox=\"0 0 1000 20\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"{} sites\">",
        esc(key),
        total
    );
    for s in segs {
        let _ = write!(
            out,
            "<rect class=\"seg-{}\" data-seg=\"{}\" x=\"{}\" y=\"0\" width=\"{}\" height=\"20\"><title>{}: {}</title></rect>",
            s.state, s.state, s.x, s.width, s.label, s.count
        );
    }
    out.push_str("</svg>");
    out
}

fn html(t: impl Template) -> PageResult {
    Ok(Html(t.render()?).into_response())
}

/// What every signed-in page shows in its header.
pub struct Nav {
    pub user: String,
    pub role: String,
    pub csrf: String,
    pub section: &'static str,
    /// Why the wave controller is not running (a banner on every page), or None.
    pub controller_problem: Option<String>,
}

fn nav(who: &SignedIn, section: &'static str) -> Nav {
    Nav {
        user: who.op.token.name.clone(),
        role: who.op.token.role.as_str().to_string(),
        csrf: who.csrf.clone(),
        section,
        controller_problem: who.controller_problem.clone(),
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    status: u16,
    reason: String,
    message: String,
}

/// An error as a page (no secrets: messages come from the API's errors).
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let page = ErrorPage {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("error").to_string(),
        message: message.to_string(),
    };
    match page.render() {
        Ok(body) => (status, Html(body)).into_response(),
        Err(_) => (status, message.to_string()).into_response(),
    }
}

// ---------------------------------------------------------------- assets

const CSS: &str = include_str!("../../assets/dashboard.css");
const JS: &str = include_str!("../../assets/dashboard.js");

/// `GET /ui/assets/{file}`: the vendored stylesheet and script, embedded in the binary.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, ctype) = match file.as_str() {
        "dashboard.css" => (CSS, "text/css; charset=utf-8"),
        "dashboard.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return error_page(StatusCode::NOT_FOUND, "no such asset"),
    };
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=300"),
    );
    res
}

// ---------------------------------------------------------------- sign-in

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    csrf: String,
    error: String,
}

fn login_page(status: StatusCode, error: &str) -> Response {
    let csrf = random_hex(32);
    let page = LoginPage {
        csrf: csrf.clone(),
        error: error.to_string(),
    };
    match page.render() {
        Ok(body) => {
            let mut res = (status, Html(body)).into_response();
            if let Ok(v) = HeaderValue::from_str(&session::set_cookie(LOGIN_COOKIE, &csrf, 600)) {
                res.headers_mut().append(header::SET_COOKIE, v);
            }
            res
        }
        Err(e) => DashboardError::Template(e).into_response(),
    }
}

/// `GET /ui/login`
pub async fn login_form() -> Response {
    login_page(StatusCode::OK, "")
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    csrf: String,
}

/// `POST /ui/login`: an operator token in, a session cookie out.
pub async fn login(
    State(dash): State<DashState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> PageResult {
    let expected = session::cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !session::same_secret(&form.csrf, expected) {
        return Ok(login_page(
            StatusCode::FORBIDDEN,
            "The sign-in form expired or came from elsewhere; try again.",
        ));
    }
    let hash = crate::api::auth::token_hash(form.token.trim());
    let h = hash.clone();
    let token = dash
        .app
        .db
        .run(move |s| s.operator_token_by_hash(&h))
        .await?
        .filter(|t| !t.revoked);
    let Some(token) = token else {
        tracing::info!("dashboard sign-in refused: unknown or revoked operator token");
        return Ok(login_page(
            StatusCode::UNAUTHORIZED,
            "That operator token is unknown or revoked.",
        ));
    };
    let id = dash.sessions.open(hash, dash.app.now());
    tracing::info!(operator = %token.name, role = token.role.as_str(), "dashboard sign-in");
    let mut res = Redirect::to("/ui/").into_response();
    let h = res.headers_mut();
    for c in [
        session::set_cookie(SESSION_COOKIE, &id, session::SESSION_LIFETIME.as_secs()),
        session::set_cookie(LOGIN_COOKIE, "", 0),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    Ok(res)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /ui/logout`
pub async fn logout(
    State(dash): State<DashState>,
    who: SignedIn,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    who.check_csrf(&form.csrf)?;
    if let Some(id) = session::cookie(&headers, SESSION_COOKIE) {
        dash.sessions.close(id);
    }
    let mut res = Redirect::to("/ui/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(SESSION_COOKIE, "", 0)) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(res)
}

// ---------------------------------------------------------------- overview

struct RolloutRow {
    id: String,
    name: String,
    status: String,
    current: String,
    release_id: String,
    bar: String,
    succeeded: u32,
    in_progress: u32,
    failed: u32,
    silent: u32,
    pending: u32,
    total: u32,
}

fn rollout_row(m: &model::RolloutModel) -> RolloutRow {
    RolloutRow {
        id: m.id.clone(),
        name: m.name.clone(),
        status: m.status.to_string(),
        current: m.current.clone(),
        release_id: m.release_id.clone(),
        bar: bar_svg(&format!("{}.total", m.id), &m.total_segments),
        succeeded: m.totals.get("succeeded"),
        in_progress: m.totals.get("in_progress"),
        failed: m.totals.get("failed"),
        silent: m.totals.get("silent"),
        pending: m.totals.get("pending"),
        total: m.totals.total,
    }
}

struct VersionRow {
    stream: String,
    version: String,
    count: u64,
    key: String,
    href: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    nav: Nav,
    c: FleetCounts,
    rollouts: Vec<RolloutRow>,
    versions: Vec<VersionRow>,
    stalest: Vec<(String, String)>,
    stale_after: String,
    shape: String,
}

/// `GET /ui/`: the fleet at a glance.
pub async fn overview(State(dash): State<DashState>, who: SignedIn) -> PageResult {
    let m = dash.overview_model().await?;
    let now = dash.app.now();
    html(OverviewPage {
        nav: nav(&who, "overview"),
        rollouts: m.rollouts.iter().map(rollout_row).collect(),
        versions: m
            .counts
            .versions
            .iter()
            .map(|(s, v, n)| VersionRow {
                stream: s.clone(),
                version: v.clone(),
                count: *n,
                key: format!("version.{s}.{v}"),
                href: format!("/ui/sites?version={}", urlencode(v)),
            })
            .collect(),
        stalest: m
            .counts
            .stalest
            .iter()
            .map(|(id, seen)| (id.clone(), ago(*seen, now)))
            .collect(),
        stale_after: human(STALE_AFTER),
        shape: m
            .rollouts
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        c: m.counts.clone(),
    })
}

// ---------------------------------------------------------------- rollouts

struct RolloutListRow {
    id: String,
    release_id: String,
    status: String,
    reason: String,
    created: String,
    updated: String,
}

#[derive(Template)]
#[template(path = "rollouts.html")]
struct RolloutsPage {
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

struct WaveRow {
    w: model::WaveModel,
    bar: String,
    counts: Vec<(String, String, u32)>,
}

#[derive(Template)]
#[template(path = "rollout.html")]
struct RolloutPage {
    nav: Nav,
    m: Arc<model::RolloutModel>,
    waves: Vec<WaveRow>,
    total_bar: String,
    can_operate: bool,
    /// (action, label, href, shown now)
    controls: Vec<(String, String, String, bool)>,
    legend: Vec<(String, String)>,
}

const CONTROLS: [(&str, &str); 6] = [
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

#[derive(Template)]
#[template(path = "confirm.html")]
struct ConfirmPage {
    nav: Nav,
    /// Where the form posts, and where Cancel goes.
    post_to: String,
    cancel: String,
    label: String,
    question: String,
    wave: String,
    site: String,
    takes_reason: bool,
    danger: bool,
}

fn action_words(action: &str) -> Option<(&'static str, bool, bool)> {
    // (button label, takes a reason, dangerous)
    Some(match action {
        "start" => ("Start the rollout", false, false),
        "pause" => ("Pause the rollout", true, false),
        "resume" => ("Resume the rollout", false, false),
        "approve" => ("Approve the wave", false, false),
        "abort" => ("Abort the rollout", true, true),
        "rollback" => ("Roll the rollout back", true, true),
        "skip" => ("Skip the site", false, true),
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
async fn perform(
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

// ---------------------------------------------------------------- sites

#[derive(Deserialize, Default, Clone)]
pub struct SitesQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    page: Option<u64>,
    /// The grid's colours: `health` (the default), `version` or `rollout`.
    #[serde(default)]
    colour: String,
    /// Colouring by version: the release stream.
    #[serde(default)]
    stream: String,
    /// Colouring by rollout state: the rollout.
    #[serde(default)]
    rollout: String,
}

impl SitesQuery {
    fn to_query(&self) -> Result<SiteQuery, ApiError> {
        let mut labels = BTreeMap::new();
        for pair in self
            .label
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                ApiError::bad_request(format!("label filter {pair:?} must be key=value"))
            })?;
            labels.insert(k.trim().to_string(), v.trim().to_string());
        }
        let state = match self.state.as_str() {
            "" => None,
            "active" | "decommissioned" => Some(self.state.clone()),
            other => {
                return Err(ApiError::bad_request(format!(
                    "state {other:?} must be active or decommissioned"
                )));
            }
        };
        Ok(SiteQuery {
            search: Some(self.q.trim().to_string()).filter(|s| !s.is_empty()),
            labels,
            state,
            version: Some(self.version.trim().to_string()).filter(|s| !s.is_empty()),
        })
    }

    /// The query string for links (without the page).
    fn link(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("q", &self.q),
            ("label", &self.label),
            ("state", &self.state),
            ("version", &self.version),
        ] {
            if !v.is_empty() {
                parts.push(format!("{k}={}", urlencode(v)));
            }
        }
        parts.join("&")
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

struct SiteListRow {
    id: String,
    labels: String,
    state: String,
    versions: String,
    health: String,
    health_class: String,
    seen: String,
    deferred: String,
}

#[derive(Template)]
#[template(path = "sites.html")]
struct SitesPage {
    nav: Nav,
    f: SitesQuery,
    versions: Vec<String>,
    rows: Vec<SiteListRow>,
    total: u64,
    first: u64,
    last: u64,
    page: u64,
    pages: u64,
    prev: String,
    next: String,
    grid: String,
}

/// Sites per list page.
pub const PAGE_SIZE: u64 = 50;

/// `GET /ui/sites`: search and filters, paginated on the server.
pub async fn sites(
    State(dash): State<DashState>,
    who: SignedIn,
    Query(f): Query<SitesQuery>,
) -> PageResult {
    let q = f.to_query()?;
    let page = f.page.unwrap_or(1).max(1);
    let offset = (page - 1) * PAGE_SIZE;
    let ((rows, total), versions) = dash
        .read
        .run(move |r| Ok((r.site_page(&q, offset, PAGE_SIZE)?, r.versions()?)))
        .await?;
    let now = dash.app.now();
    let pages = total.div_ceil(PAGE_SIZE).max(1);
    let link = f.link();
    let href = |p: u64| {
        if link.is_empty() {
            format!("/ui/sites?page={p}")
        } else {
            format!("/ui/sites?{link}&page={p}")
        }
    };
    html(SitesPage {
        nav: nav(&who, "sites"),
        versions,
        first: if total == 0 { 0 } else { offset + 1 },
        last: offset + rows.len() as u64,
        rows: rows
            .into_iter()
            .map(|s| SiteListRow {
                labels: s
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                versions: if s.versions.is_empty() {
                    "—".into()
                } else {
                    s.versions.join(", ")
                },
                health: match s.healthy {
                    Some(true) => "healthy",
                    Some(false) => "unhealthy",
                    None => "unknown",
                }
                .into(),
                health_class: cell_class(
                    &s.state,
                    s.healthy,
                    s.last_seen.map(|t| t.as_millisecond()),
                    s.deferred_until.map(|t| t.as_millisecond()),
                    now,
                )
                .into(),
                seen: ago(s.last_seen, now),
                deferred: match s.deferred_until {
                    Some(t) if t > now => format!("until {}", when(Some(t))),
                    _ => String::new(),
                },
                state: s.state,
                id: s.id,
            })
            .collect(),
        total,
        page,
        pages,
        prev: if page > 1 {
            href(page - 1)
        } else {
            String::new()
        },
        next: if page < pages {
            href(page + 1)
        } else {
            String::new()
        },
        grid: if link.is_empty() {
            "/ui/sites/grid".into()
        } else {
            format!("/ui/sites/grid?{link}")
        },
        f,
    })
}

/// The colour class of a site: decommissioned, stale, unhealthy, deferred, healthy,
/// unknown. Shared by the list and the grid.
pub fn cell_class(
    state: &str,
    healthy: Option<bool>,
    last_seen_ms: Option<i64>,
    deferred_until_ms: Option<i64>,
    now: Timestamp,
) -> &'static str {
    let now_ms = now.as_millisecond();
    if state != "active" {
        "k-off"
    } else if last_seen_ms.is_none_or(|s| s < now_ms - STALE_AFTER.as_millis() as i64) {
        "k-stale"
    } else if healthy == Some(false) {
        "k-bad"
    } else if deferred_until_ms.is_some_and(|d| d > now_ms) {
        "k-def"
    } else if healthy == Some(true) {
        "k-ok"
    } else {
        "k-unk"
    }
}

#[derive(Template)]
#[template(path = "grid.html")]
struct GridPage {
    nav: Nav,
    f: SitesQuery,
    cells: String,
    total: usize,
    legend: Vec<(String, String, usize)>,
    list: String,
    /// `health`, `version` or `rollout`.
    colour: &'static str,
    /// What the colours show, in words.
    coloured_by: String,
    streams: Vec<String>,
    stream: String,
    /// (id, "id (status)") of every rollout, newest first.
    rollouts: Vec<(String, String)>,
    rollout: String,
}

/// How the grid colours its cells.
enum GridColour {
    Health,
    /// One colour per version of this stream.
    Version(String),
    /// Each member's state in this rollout.
    Rollout(String, HashMap<String, &'static str>),
}

/// Version colours: the most common versions get one each, the rest share one.
const VERSION_COLOURS: usize = 8;

/// `GET /ui/sites/grid`: every matching site as one coloured cell, coloured by health, by
/// version of a stream, or by state in a rollout (`colour=health|version|rollout`, with
/// `stream=` or `rollout=`; a plain form, so it works with scripts blocked). Sent
/// gzip-compressed when the browser accepts it: the page is large with a large fleet.
pub async fn grid(
    State(dash): State<DashState>,
    who: SignedIn,
    headers: HeaderMap,
    Query(f): Query<SitesQuery>,
) -> PageResult {
    let q = f.to_query()?;
    let now = dash.app.now();
    let streams: Vec<String> = {
        let pairs = dash.read.run(|r| r.version_pairs()).await?;
        let mut s: Vec<String> = pairs.into_iter().map(|(s, _)| s).collect();
        s.sort();
        s.dedup();
        s
    };
    let mut rollouts = dash.app.db.run(|s| s.list_rollouts()).await?;
    rollouts.sort_by_key(|r| std::cmp::Reverse(r.created_at));
    // The rollout (for colouring by its state) loads while the grid's query runs.
    let rollout_id = match f.colour.as_str() {
        "rollout" => Some(
            Some(f.rollout.trim().to_string())
                .filter(|s| !s.is_empty())
                .or_else(|| {
                    rollouts
                        .iter()
                        .find(|r| r.status.is_active())
                        .or(rollouts.first())
                        .map(|r| r.id.clone())
                })
                .ok_or_else(|| ApiError::not_found("there is no rollout to colour the grid by"))?,
        ),
        "" | "health" | "version" => None,
        other => {
            return Err(ApiError::bad_request(format!(
                "colour {other:?} must be health, version or rollout"
            ))
            .into());
        }
    };
    let stream = (f.colour == "version").then(|| {
        Some(f.stream.trim().to_string())
            .filter(|s| !s.is_empty())
            .or_else(|| streams.first().cloned())
            .unwrap_or_default()
    });
    let s = stream.clone();
    let cells = dash.read.run(move |r| r.grid(&q, s.as_deref()));
    let loaded = async {
        match &rollout_id {
            Some(id) => Ok::<_, ApiError>(Some(dash.app.engine.load_rollout(id).await?)),
            None => Ok(None),
        }
    };
    let (cells, loaded) = tokio::join!(cells, loaded);
    let (cells, loaded) = (cells?, loaded?);
    let colour = match (stream, rollout_id, loaded) {
        (Some(stream), _, _) => GridColour::Version(stream),
        (None, Some(id), Some(l)) => GridColour::Rollout(id, model::member_states(&l, now)),
        _ => GridColour::Health,
    };
    let (html_cells, legend) = render_grid(&cells, &colour, now);
    let link = f.link();
    let (colour_name, coloured_by, stream, rollout) = match &colour {
        GridColour::Health => ("health", "health".to_string(), String::new(), String::new()),
        GridColour::Version(s) => (
            "version",
            format!("version of {s}"),
            s.clone(),
            String::new(),
        ),
        GridColour::Rollout(id, _) => (
            "rollout",
            format!("state in rollout {id}"),
            String::new(),
            id.clone(),
        ),
    };
    let body = GridPage {
        nav: nav(&who, "sites"),
        total: cells.len(),
        cells: html_cells,
        legend,
        list: if link.is_empty() {
            "/ui/sites".into()
        } else {
            format!("/ui/sites?{link}")
        },
        colour: colour_name,
        coloured_by,
        streams,
        stream,
        rollouts: rollouts
            .iter()
            .map(|r| (r.id.clone(), format!("{} ({})", r.id, r.status.as_str())))
            .collect(),
        rollout,
        f,
    }
    .render()?;
    Ok(maybe_gzip(&headers, body))
}

/// Pages above this size are sent gzip-compressed to browsers that accept it.
const GZIP_ABOVE: usize = 64 * 1024;

/// An HTML answer, gzip-compressed (fast level) when large and accepted.
fn maybe_gzip(headers: &HeaderMap, body: String) -> Response {
    let accepts = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    if !accepts || body.len() <= GZIP_ABOVE {
        return Html(body).into_response();
    }
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 8),
        flate2::Compression::fast(),
    );
    if gz.write_all(body.as_bytes()).is_err() {
        return Html(body).into_response();
    }
    match gz.finish() {
        Ok(bytes) => {
            let mut res = Html(bytes).into_response();
            let h = res.headers_mut();
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
            res
        }
        Err(_) => Html(body).into_response(),
    }
}

/// The health colours: (class, legend label).
const HEALTH_KINDS: [(&str, &str); 6] = [
    ("k-ok", "healthy"),
    ("k-bad", "unhealthy"),
    ("k-def", "deferred"),
    ("k-unk", "health unknown"),
    ("k-stale", "not seen recently"),
    ("k-off", "decommissioned"),
];

/// The grid's cells (one `<a>` per site) and the legend: (class, label, count), in the
/// legend's order.
fn render_grid(
    cells: &[super::read::GridCell],
    colour: &GridColour,
    now: Timestamp,
) -> (String, Vec<(String, String, usize)>) {
    // The legend's entries, and for each cell the index of its entry.
    let mut legend: Vec<(String, String, usize)> = Vec::new();
    let mut kind_of: Vec<usize> = Vec::with_capacity(cells.len());
    match colour {
        GridColour::Health => {
            legend.extend(
                HEALTH_KINDS
                    .iter()
                    .map(|(k, l)| (k.to_string(), l.to_string(), 0)),
            );
            for c in cells {
                let class = cell_class(
                    &c.state,
                    c.healthy,
                    c.last_seen_ms,
                    c.deferred_until_ms,
                    now,
                );
                kind_of.push(
                    HEALTH_KINDS
                        .iter()
                        .position(|(k, _)| *k == class)
                        .unwrap_or(3),
                );
            }
        }
        GridColour::Version(stream) => {
            let mut by_version: HashMap<&str, usize> = HashMap::new();
            for c in cells {
                if let Some(v) = c.version.as_deref() {
                    *by_version.entry(v).or_default() += 1;
                }
            }
            let mut versions: Vec<(&str, usize)> = by_version.into_iter().collect();
            versions.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
            let shown: HashMap<&str, usize> = versions
                .iter()
                .take(VERSION_COLOURS)
                .enumerate()
                .map(|(i, (v, _))| (*v, i))
                .collect();
            for (i, (v, _)) in versions.iter().take(VERSION_COLOURS).enumerate() {
                legend.push((format!("v{i}"), v.to_string(), 0));
            }
            let other = legend.len();
            legend.push(("v-other".into(), "other versions".into(), 0));
            let none = legend.len();
            legend.push(("v-none".into(), format!("no version of {stream}"), 0));
            for c in cells {
                kind_of.push(match c.version.as_deref() {
                    Some(v) => shown.get(v).copied().unwrap_or(other),
                    None => none,
                });
            }
        }
        GridColour::Rollout(_, states) => {
            legend.extend(
                model::SEGMENTS
                    .iter()
                    .map(|(s, l)| (format!("r-{s}"), l.to_string(), 0)),
            );
            let none = legend.len();
            legend.push(("r-none".into(), "not in the rollout".into(), 0));
            for c in cells {
                kind_of.push(
                    states
                        .get(&c.id)
                        .and_then(|s| model::SEGMENTS.iter().position(|(k, _)| k == s))
                        .unwrap_or(none),
                );
            }
        }
    }
    let mut out = String::with_capacity(cells.len() * 48);
    for (c, &k) in cells.iter().zip(&kind_of) {
        legend[k].2 += 1;
        // Relative to /ui/sites/grid; the script adds the id as a tooltip on hover.
        let _ = write!(out, "<a class={} href=\"{}\"></a>", legend[k].0, esc(&c.id));
    }
    // Versions that no cell shows, and the catch-alls when empty, stay out of the legend.
    if matches!(colour, GridColour::Version(_)) {
        legend.retain(|(_, _, n)| *n > 0);
    }
    (out, legend)
}

struct EventRow {
    at: String,
    kind: String,
    text: String,
}

fn event_text(e: &Event) -> String {
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

fn event_kind(e: &Event) -> &'static str {
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

struct InstalledRow {
    stream: String,
    current: String,
    previous: String,
    at: String,
}

#[derive(Template)]
#[template(path = "site.html")]
struct SitePage {
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
    assigned: String,
    rollout: String,
    /// Set when the site's newest install phase is `rollback_failed`: what the agent said.
    rollback_failed: String,
    events: Vec<EventRow>,
    health_history: Vec<EventRow>,
    can_operate: bool,
}

/// The agent's words when the newest phase among `events` (newest first) is
/// `rollback_failed`: the agent gave up and the box needs an operator. Empty otherwise.
fn rollback_failed_alert(events: &[Event]) -> String {
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
        assigned,
        rollout: rollout.unwrap_or_default(),
        rollback_failed: rollback_failed_alert(&events),
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
        takes_reason: false,
        danger,
    })
}

/// `POST /ui/sites/{id}/actions/{action}`: CSRF, role, then the operator API's own handler
/// (`POST /v1/sites/{id}/decommission` or `/reenable`): the same store change, session
/// refusal, rollout joining and audit entry.
pub async fn site_act(
    State(dash): State<DashState>,
    who: SignedIn,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    who.check_csrf(&form.csrf)?;
    who.op.require(Permission::Operate)?;
    let app = State(dash.app.clone());
    let path = crate::error::ApiPath(id.clone());
    match action.as_str() {
        "decommission" => {
            let _site = crate::api::operator::decommission_site(app, who.op.clone(), path).await?;
        }
        "reenable" => {
            let _site = crate::api::operator::reenable_site(app, who.op.clone(), path).await?;
        }
        other => return Err(ApiError::not_found(format!("no site action {other:?}")).into()),
    }
    dash.invalidate_overview().await;
    Ok(Redirect::to(&format!("/ui/sites/{}", urlencode(&id))).into_response())
}

// ---------------------------------------------------------------- releases, audit

struct ReleaseRow {
    id: String,
    name: String,
    version: String,
    kind: String,
    counter: u64,
    digest: String,
    published: String,
}

#[derive(Template)]
#[template(path = "releases.html")]
struct ReleasesPage {
    nav: Nav,
    rows: Vec<ReleaseRow>,
}

/// `GET /ui/releases`
pub async fn releases(State(dash): State<DashState>, who: SignedIn) -> PageResult {
    let mut all = dash.app.db.run(|s| s.list_releases()).await?;
    all.sort_by_key(|r| std::cmp::Reverse(r.published_at));
    html(ReleasesPage {
        nav: nav(&who, "releases"),
        rows: all
            .into_iter()
            .map(|r| ReleaseRow {
                id: r.id,
                name: r.name,
                version: r.version,
                kind: r.kind,
                counter: r.counter,
                digest: r.digest.chars().take(16).collect(),
                published: format!("{} by {}", when(Some(r.published_at)), r.published_by),
            })
            .collect(),
    })
}

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    #[serde(default)]
    before: Option<i64>,
}

struct AuditRow {
    id: i64,
    at: String,
    actor: String,
    action: String,
    target: String,
    detail: String,
    remote: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    nav: Nav,
    rows: Vec<AuditRow>,
    older: String,
}

/// `GET /ui/audit`: newest first, 100 a page.
pub async fn audit(
    State(dash): State<DashState>,
    who: SignedIn,
    Query(q): Query<AuditQuery>,
) -> PageResult {
    let before = q.before;
    let entries = dash.app.db.run(move |s| s.list_audit(before, 100)).await?;
    let older = match (entries.len(), entries.last()) {
        (100, Some(e)) => format!("/ui/audit?before={}", e.id),
        _ => String::new(),
    };
    html(AuditPage {
        nav: nav(&who, "audit"),
        rows: entries
            .into_iter()
            .map(|e| AuditRow {
                id: e.id,
                at: when(Some(e.at)),
                actor: e.actor,
                action: e.action,
                target: e.target,
                detail: e.detail,
                remote: e.remote,
            })
            .collect(),
        older,
    })
}
