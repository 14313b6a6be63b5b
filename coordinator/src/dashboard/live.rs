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
use super::read::{FleetCounts, ReadError, ReadModel};
use super::{Dash, DashState, DashboardError, SignedIn, session};

/// How long a computed model is served before it is computed again.
pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// Active sites not seen for this long count as "not seen recently".
pub const STALE_AFTER: SignedDuration = SignedDuration::from_hours(1);

/// A recount of the fleet that took at least this long is no longer waited for: the
/// overview shows the counts it has (with their time) and recounts in the background.
/// Quicker recounts (fleets up to about 50,000 sites) are made while the request waits,
/// so a small fleet's overview is always counted afresh.
pub const COUNTS_WAIT: Duration = Duration::from_millis(100);
/// A slow recount runs at most once per this many times its own duration (at most a
/// tenth of one core spent on counting, however many pages are open).
pub const COUNTS_DUTY: u32 = 10;

/// The overview's data.
#[derive(Debug, Clone)]
pub struct OverviewModel {
    pub counts: FleetCounts,
    /// When `counts` were counted (the coordinator's clock).
    pub counts_at: Timestamp,
    pub rollouts: Vec<RolloutModel>,
}

/// The fleet's counts and when they were counted.
#[derive(Debug, Clone)]
pub struct CountsAt {
    pub at: Timestamp,
    /// How long the recount took (wall time).
    pub took: Duration,
    pub counts: FleetCounts,
}

#[derive(Default)]
struct CountsState {
    last: Option<Arc<CountsAt>>,
    /// A recount runs in the background.
    running: bool,
    /// Something changed since the last recount started (a site's state, an action).
    dirty: bool,
}

/// The fleet's counts, recounted from the store (a full count: exact as of its time),
/// kept between requests. A recount quicker than the cache's wait is made while the
/// request waits, whenever the last is older than [`FRESH_FOR`] or something changed; a
/// slower one runs in the background (one at a time, at most once per [`COUNTS_DUTY`]
/// times its duration, sooner after a change) while requests get the last counts with
/// their time.
pub struct FleetCountsCache {
    state: Arc<tokio::sync::Mutex<CountsState>>,
    wait: Duration,
}

impl Default for FleetCountsCache {
    fn default() -> Self {
        FleetCountsCache::with_wait(COUNTS_WAIT)
    }
}

async fn recount(read: &Arc<ReadModel>, now: Timestamp) -> Result<CountsAt, ReadError> {
    let t = std::time::Instant::now();
    let counts = read
        .run(move |r| r.fleet_counts(now, now - STALE_AFTER))
        .await?;
    Ok(CountsAt {
        at: now,
        took: t.elapsed(),
        counts,
    })
}

impl FleetCountsCache {
    /// A cache that waits for recounts quicker than `wait` (zero: never waits once it has
    /// counts).
    pub fn with_wait(wait: Duration) -> FleetCountsCache {
        FleetCountsCache {
            state: Arc::default(),
            wait,
        }
    }

    /// Something the counts count changed: recount at the next request.
    pub async fn invalidate(&self) {
        self.state.lock().await.dirty = true;
    }

    /// Whether a background recount is running.
    pub async fn refreshing(&self) -> bool {
        self.state.lock().await.running
    }

    /// The counts for a request at `now`: see [`FleetCountsCache`].
    pub async fn get(
        &self,
        read: &Arc<ReadModel>,
        now: Timestamp,
    ) -> Result<Arc<CountsAt>, ReadError> {
        let mut st = self.state.lock().await;
        if let Some(last) = st.last.clone() {
            let every = FRESH_FOR.max(last.took * COUNTS_DUTY);
            if !st.dirty && younger(last.at, now, every) {
                return Ok(last);
            }
            if last.took >= self.wait {
                if !st.running {
                    st.running = true;
                    st.dirty = false;
                    let state = self.state.clone();
                    let read = read.clone();
                    tokio::spawn(async move {
                        let counted = recount(&read, now).await;
                        let mut st = state.lock().await;
                        st.running = false;
                        match counted {
                            Ok(c) => st.last = Some(Arc::new(c)),
                            Err(e) => {
                                tracing::warn!(error = %e, "recounting the fleet for the dashboard failed")
                            }
                        }
                    });
                }
                return Ok(last);
            }
        }
        let c = Arc::new(recount(read, now).await?);
        st.last = Some(c.clone());
        st.dirty = false;
        Ok(c)
    }
}

/// Models computed recently, shared by pages and streams.
#[derive(Default)]
pub struct Cache {
    overview: tokio::sync::Mutex<Option<(Timestamp, Arc<OverviewModel>)>>,
    rollouts: tokio::sync::Mutex<HashMap<String, (Timestamp, Arc<RolloutModel>)>>,
    pub counts: FleetCountsCache,
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
        // The fleet's counts (kept, recounted by SQL on the blocking pool) and the active
        // rollouts' models are independent: computed side by side.
        let counts = self.live.counts.get(&self.read, now);
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
        let m = Arc::new(OverviewModel {
            counts: counts.counts.clone(),
            counts_at: counts.at,
            rollouts,
        });
        *cache = Some((now, m.clone()));
        Ok(m)
    }

    /// Forgets the overview's cached model (after a site changed state).
    pub async fn invalidate_overview(&self) {
        *self.live.overview.lock().await = None;
        self.live.counts.invalidate().await;
    }

    /// Forgets a rollout's cached model (after an action) and the overview's.
    pub async fn invalidate(&self, id: &str) {
        self.live.rollouts.lock().await.remove(id);
        *self.live.overview.lock().await = None;
        self.live.counts.invalidate().await;
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
    text.insert("fleet.as_of".into(), as_of(m.counts_at).into());
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

/// When the overview's counts were counted, as the page shows it.
pub fn as_of(at: Timestamp) -> String {
    at.strftime("%H:%M:%S UTC").to_string()
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use fleetwave_shared::protocol::operator::SiteState;

    use crate::store::{ImportedSite, SqliteStore, Store};

    fn site(id: &str, at: Timestamp) -> ImportedSite {
        ImportedSite {
            id: id.into(),
            device_key: "ab".repeat(32),
            labels: BTreeMap::from([("region".to_string(), "eu".to_string())]),
            at,
        }
    }

    /// Waits (up to a generous deadline) until no background recount runs.
    async fn settled(cache: &FleetCountsCache) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while cache.refreshing().await {
            assert!(
                std::time::Instant::now() < deadline,
                "the background recount never ended"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn slow_counts_are_served_with_their_time_and_recounted_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db.sqlite")).unwrap();
        let read = Arc::new(ReadModel::new(store.dashboard_read()));
        let t0 = Timestamp::now();
        let recount = |now: Timestamp| {
            store
                .dashboard_read()
                .fleet_counts(now, now - STALE_AFTER)
                .unwrap()
        };
        store
            .import_sites(&[site("s1", t0), site("s2", t0)], &[])
            .unwrap();

        // Zero wait: every recount after the first runs in the background.
        let cache = FleetCountsCache::with_wait(Duration::ZERO);
        let first = cache.get(&read, t0).await.unwrap();
        assert_eq!((first.at, first.counts.total), (t0, 2));
        assert_eq!(first.counts, recount(t0));

        store.import_sites(&[site("s3", t0)], &[]).unwrap();
        // Fresh and nothing said to have changed: the same counts.
        let same = cache.get(&read, t0).await.unwrap();
        assert!(Arc::ptr_eq(&first, &same));
        // A change: the last counts with their time, a recount in the background.
        cache.invalidate().await;
        let old = cache
            .get(&read, t0 + SignedDuration::from_millis(10))
            .await
            .unwrap();
        assert_eq!((old.at, old.counts.total), (t0, 2));
        settled(&cache).await;
        let t1 = t0 + SignedDuration::from_millis(10);
        let new = cache.get(&read, t1).await.unwrap();
        assert_eq!((new.at, new.counts.total), (t1, 3));
        assert_eq!(new.counts, recount(t1));

        // Too old (past FRESH_FOR and ten times the recount): recounted in the background.
        store
            .set_site_state("s1", SiteState::Decommissioned)
            .unwrap();
        let t2 = t1 + SignedDuration::from_secs(3600);
        let old = cache.get(&read, t2).await.unwrap();
        assert_eq!((old.at, old.counts.decommissioned), (t1, 0));
        settled(&cache).await;
        let new = cache.get(&read, t2).await.unwrap();
        assert_eq!((new.at, new.counts.decommissioned), (t2, 1));
        assert_eq!(new.counts, recount(t2));

        // A recount quicker than the wait is made while the request waits: exact at once.
        let cache = FleetCountsCache::with_wait(Duration::from_secs(3600));
        assert_eq!(cache.get(&read, t2).await.unwrap().counts.total, 3);
        store.import_sites(&[site("s4", t2)], &[]).unwrap();
        cache.invalidate().await;
        let now = cache.get(&read, t2).await.unwrap();
        assert!(!cache.refreshing().await);
        assert_eq!((now.at, now.counts.total), (t2, 4));
        assert_eq!(now.counts, recount(t2));
        let t3 = t2 + SignedDuration::from_secs(2);
        store
            .set_site_state("s2", SiteState::Decommissioned)
            .unwrap();
        let later = cache.get(&read, t3).await.unwrap();
        assert_eq!((later.at, later.counts.decommissioned), (t3, 2));
    }
}
