//! The dashboard's read model as a trait: aggregate and paginated reads over the fleet
//! that [`super::Store`] does not offer (counts by state, version and health, filtered
//! pages with a total, one compact row per site for the grid, a site's reports).
//!
//! A backend implements [`DashboardRead`] on read-only access that never blocks its
//! writer (SQLite: [`super::sqlite::dashboard::SqliteReadModel`], read-only connections
//! in WAL mode). Every method is blocking: the dashboard calls it through
//! `dashboard::read::ReadModel::run`, on tokio's blocking pool.

use std::collections::BTreeMap;

use fleetwave_shared::protocol::Event;
use jiff::Timestamp;

use super::{ReportKind, StoreResult};

/// Which sites a list or grid shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteQuery {
    /// The start of the site id, or part of a label value (case-insensitive).
    pub search: Option<String>,
    /// Every `key=value` must match.
    pub labels: BTreeMap<String, String>,
    /// `active` or `decommissioned`.
    pub state: Option<String>,
    /// Sites that report this version installed (any stream).
    pub version: Option<String>,
}

/// One row of the sites list.
#[derive(Debug, Clone)]
pub struct SiteRow {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub state: String,
    pub last_seen: Option<Timestamp>,
    pub versions: Vec<String>,
    pub healthy: Option<bool>,
    pub deferred_until: Option<Timestamp>,
}

/// One cell of the grid: what colours it.
#[derive(Debug, Clone)]
pub struct GridCell {
    pub id: String,
    pub state: String,
    pub healthy: Option<bool>,
    pub last_seen_ms: Option<i64>,
    pub deferred_until_ms: Option<i64>,
    /// The site's version of the grid's chosen stream (when colouring by version).
    pub version: Option<String>,
}

/// The range of site ids that start with a search's text, `[low, high)`: a search finds
/// sites by the start of their id through the id index (site ids are `[a-z0-9._-]`, so
/// the text is matched in lower case and `~`, above every character of an id, closes the
/// range), and by any part of a label value.
pub fn id_prefix_range(text: &str) -> (String, String) {
    let low = text.to_ascii_lowercase();
    let high = format!("{low}~");
    (low, high)
}

/// A filtered sites list counts its matches up to this many past its page.
pub const SITE_COUNT_PAST_PAGE: u64 = 1_000;

/// How many matches a filtered page at `offset` of `limit` sites counts at most
/// ([`DashboardRead::site_page`]).
pub fn count_limit(offset: u64, limit: u64) -> u64 {
    offset
        .saturating_add(limit)
        .saturating_add(SITE_COUNT_PAST_PAGE)
        .min(i64::MAX as u64 - 1)
}

/// The fleet at a glance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetCounts {
    pub total: u64,
    pub active: u64,
    pub decommissioned: u64,
    pub healthy: u64,
    pub unhealthy: u64,
    pub health_unknown: u64,
    pub deferred: u64,
    /// Active sites not seen for the stale threshold (or never).
    pub stale: u64,
    /// (stream, version, active sites running it), most sites first.
    pub versions: Vec<(String, String, u64)>,
    /// Active sites that report no version at all.
    pub no_version: u64,
    /// The stalest active sites: (id, last seen).
    pub stalest: Vec<(String, Option<Timestamp>)>,
}

/// The dashboard's reads. Never writes.
pub trait DashboardRead: Send + Sync + 'static {
    /// Counts for the overview. `stale_before`: sites not seen since then are stale.
    fn fleet_counts(&self, now: Timestamp, stale_before: Timestamp) -> StoreResult<FleetCounts>;

    /// Every (stream, version) some site reports, by version then stream; at most 200.
    fn version_pairs(&self) -> StoreResult<Vec<(String, String)>>;

    /// Every version some site reports (for the filter's choices).
    fn versions(&self) -> StoreResult<Vec<String>> {
        let mut out: Vec<String> = self.version_pairs()?.into_iter().map(|(_, v)| v).collect();
        out.dedup();
        Ok(out)
    }

    /// One page of sites (ordered by id) and how many match: with a filter, counted up
    /// to [`count_limit`] (`count_limit + 1` means "more than that": the matches past it
    /// are not read); without one, every site, exactly.
    fn site_page(&self, q: &SiteQuery, offset: u64, limit: u64)
    -> StoreResult<(Vec<SiteRow>, u64)>;

    /// Every matching site as one grid cell, ordered by id. `stream`: also read each
    /// site's version of that release stream.
    fn grid(&self, q: &SiteQuery, stream: Option<&str>) -> StoreResult<Vec<GridCell>>;

    /// The backend's queries for a site query's count, page and grid, each with its query
    /// plan as the backend explains it (for checking the plans at scale).
    fn query_plans(&self, q: &SiteQuery) -> StoreResult<Vec<(String, Vec<String>)>>;

    /// A site's newest reports (optionally of one kind), newest first.
    fn site_events(
        &self,
        site_id: &str,
        kind: Option<ReportKind>,
        limit: u32,
    ) -> StoreResult<Vec<Event>>;

    /// A site's reports around `at`, oldest first: the `before` newest at or before it and
    /// the `after` oldest after it.
    fn site_events_around(
        &self,
        site_id: &str,
        at: Timestamp,
        before: u32,
        after: u32,
    ) -> StoreResult<Vec<Event>>;

    /// When the site last got an assignment: (sequence, rollout, release, rollback).
    fn last_assignment(&self, site_id: &str) -> StoreResult<Option<(u64, String, String, bool)>>;
}
