//! Live updates: one server-sent event stream per page, coalesced.
//!
//! Models are computed at most once a second whatever the number of open pages (a shared
//! cache with single flight), and a stream sends a message only when its page's data
//! changed, at most once a second. Streams end when the session ends or the server stops.
//! Never polls the database faster than that, never sends anything a page would not show.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use jiff::{SignedDuration, Timestamp};

use super::model::{self, RolloutModel};
use super::read::FleetCounts;
use super::{Dash, DashState, DashboardError, SignedIn, session};

/// How long a computed model is served before it is computed again.
pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// Active sites not seen for this long count as "not seen recently".
pub const STALE_AFTER: SignedDuration = SignedDuration::from_hours(1);

/// The overview's data.
#[derive(Debug, Clone)]
pub struct OverviewModel {
    pub counts: FleetCounts,
    pub rollouts: Vec<RolloutModel>,
}

/// Models computed recently, shared by pages and streams.
#[derive(Default)]
pub struct Cache {
    overview: tokio::sync::Mutex<Option<(Timestamp, Arc<OverviewModel>)>>,
    rollouts: tokio::sync::Mutex<HashMap<String, (Timestamp, Arc<RolloutModel>)>>,
}

/// Whether something computed at `at` is younger than `than` at `now` (times from the
/// coordinator's clock, so tests can move past a cache's freshness).
fn younger(at: Timestamp, now: Timestamp, than: Duration) -> bool {
    now.duration_since(at).as_secs_f64() < than.as_secs_f64()
}

impl Dash {
    /// A rollout's model, at most [`FRESH_FOR`] old (`fresh`: computed now).
    pub async fn rollout_model(
        &self,
        id: &str,
        fresh: bool,
    ) -> Result<Arc<RolloutModel>, DashboardError> {
        let mut cache = self.live.rollouts.lock().await;
        let now = self.app.now();
        if !fresh
            && let Some((at, m)) = cache.get(id)
            && younger(*at, now, FRESH_FOR)
        {
            return Ok(m.clone());
        }
        // On the engine's facts in place: a copy of a million members took longer than
        // the model itself.
        let mut m = self
            .app
            .engine
            .with_rollout(id, |l| model::rollout_model(l, now))
            .await?;
        let rid = id.to_string();
        let decisions = self.app.db.run(move |s| s.decisions(&rid)).await?;
        m.decisions = model::decision_rows(&decisions, 200);
        let m = Arc::new(m);
        cache.retain(|_, (at, _)| younger(*at, now, Duration::from_secs(60)));
        cache.insert(id.to_string(), (now, m.clone()));
        Ok(m)
    }

    /// The overview's model, at most [`FRESH_FOR`] old.
    pub async fn overview_model(&self) -> Result<Arc<OverviewModel>, DashboardError> {
        let mut cache = self.live.overview.lock().await;
        let now = self.app.now();
        if let Some((at, m)) = cache.as_ref()
            && younger(*at, now, FRESH_FOR)
        {
            return Ok(m.clone());
        }
        // The fleet's counts (SQL on the blocking pool) and the active rollouts' models
        // are independent: computed side by side.
        let counts = self
            .read
            .run(move |r| r.fleet_counts(now, now - STALE_AFTER));
        let rollouts = async {
            let all = self.app.db.run(|s| s.list_rollouts()).await?;
            let mut rollouts = Vec::new();
            for r in all.iter().filter(|r| r.status.is_active()) {
                // Shared with the rollout's own page: computed once a second for both.
                rollouts.push(RolloutModel::clone(
                    &*self.rollout_model(&r.id, false).await?,
                ));
            }
            Ok::<_, DashboardError>(rollouts)
        };
        let (counts, rollouts) = tokio::join!(counts, rollouts);
        let (counts, rollouts) = (counts?, rollouts?);
        let m = Arc::new(OverviewModel { counts, rollouts });
        *cache = Some((now, m.clone()));
        Ok(m)
    }

    /// Forgets the overview's cached model (after a site changed state).
    pub async fn invalidate_overview(&self) {
        *self.live.overview.lock().await = None;
    }

    /// Forgets a rollout's cached model (after an action) and the overview's.
    pub async fn invalidate(&self, id: &str) {
        self.live.rollouts.lock().await.remove(id);
        *self.live.overview.lock().await = None;
    }
}

/// The overview's live message.
pub fn overview_live(m: &OverviewModel) -> serde_json::Value {
    let c = &m.counts;
    let mut text = serde_json::Map::new();
    for (k, v) in [
        ("fleet.total", c.total),
        ("fleet.active", c.active),
        ("fleet.decommissioned", c.decommissioned),
        ("fleet.healthy", c.healthy),
        ("fleet.unhealthy", c.unhealthy),
        ("fleet.health_unknown", c.health_unknown),
        ("fleet.deferred", c.deferred),
        ("fleet.stale", c.stale),
        ("fleet.no_version", c.no_version),
    ] {
        text.insert(k.into(), v.to_string().into());
    }
    for (stream, version, n) in &c.versions {
        text.insert(format!("version.{stream}.{version}"), n.to_string().into());
    }
    let mut bars = serde_json::Map::new();
    for r in &m.rollouts {
        text.insert(format!("{}.status", r.id), r.status.into());
        text.insert(format!("{}.current", r.id), r.current.clone().into());
        for (state, _) in model::SEGMENTS {
            text.insert(
                format!("{}.{state}", r.id),
                r.totals.get(state).to_string().into(),
            );
        }
        bars.insert(
            format!("{}.total", r.id),
            serde_json::to_value(&r.total_segments).unwrap_or_default(),
        );
    }
    // The set of active rollouts: when it changes the page reloads to show the new set.
    let shape: Vec<&str> = m.rollouts.iter().map(|r| r.id.as_str()).collect();
    serde_json::json!({"text": text, "bars": bars, "shape": shape.join(" ")})
}

type EventStream = axum::response::Response;

/// A stream that sends `compute()` whenever it changed, checking once a second.
fn coalesced<F, Fut>(dash: DashState, session_id: String, compute: F) -> EventStream
where
    F: Fn(DashState) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<String>> + Send,
{
    let stop = dash.app.shutdown.clone();
    let state = (
        dash,
        session_id,
        None::<String>,
        stop,
        Arc::new(compute),
        true,
    );
    let stream = futures_util::stream::unfold(
        state,
        |(dash, sid, last, mut stop, compute, first)| async move {
            loop {
                if !first || last.is_some() {
                    tokio::select! {
                        _ = tokio::time::sleep(FRESH_FOR) => {}
                        _ = stop.changed() => return None,
                    }
                }
                if *stop.borrow() || !dash.sessions.is_live(&sid, dash.app.now()).await {
                    return None;
                }
                let Some(json) = compute(dash.clone()).await else {
                    if first {
                        tokio::time::sleep(FRESH_FOR).await;
                    }
                    continue;
                };
                if last.as_deref() == Some(json.as_str()) {
                    continue;
                }
                let event = Event::default().event("update").data(json.clone());
                return Some((Ok(event), (dash, sid, Some(json), stop, compute, false)));
            }
        },
    );
    let stream: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> =
        Box::pin(stream);
    axum::response::IntoResponse::into_response(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn session_id(headers: &axum::http::HeaderMap) -> String {
    session::cookie(headers, session::SESSION_COOKIE)
        .unwrap_or_default()
        .to_string()
}

/// `GET /ui/live/overview`
pub async fn overview(
    State(dash): State<DashState>,
    _who: SignedIn,
    headers: axum::http::HeaderMap,
) -> EventStream {
    coalesced(dash, session_id(&headers), |dash| async move {
        dash.overview_model()
            .await
            .ok()
            .map(|m| overview_live(&m).to_string())
    })
}

/// `GET /ui/live/rollouts/{id}`
pub async fn rollout(
    State(dash): State<DashState>,
    _who: SignedIn,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> Result<EventStream, DashboardError> {
    dash.rollout_model(&id, false).await?;
    Ok(coalesced(dash, session_id(&headers), move |dash| {
        let id = id.clone();
        async move {
            dash.rollout_model(&id, false)
                .await
                .ok()
                .map(|m| model::rollout_live(&m).to_string())
        }
    }))
}
