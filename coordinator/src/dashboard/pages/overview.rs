//! The overview page: the fleet at a glance.

use super::*;

pub(super) struct RolloutRow {
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

pub(super) fn rollout_row(m: &model::RolloutModel) -> RolloutRow {
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

pub(super) struct VersionRow {
    stream: String,
    version: String,
    count: u64,
    key: String,
    href: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
pub(super) struct OverviewPage {
    nav: Nav,
    c: FleetCounts,
    rollouts: Vec<RolloutRow>,
    versions: Vec<VersionRow>,
    stalest: Vec<(String, String)>,
    stale_after: String,
    /// When the counts were counted (clock time, updated live) and how long ago.
    as_of: String,
    counts_age: String,
    shape: String,
    channels: Vec<crate::engine::channels::ChannelGlance>,
}

/// `GET /ui/`: the fleet at a glance.
pub async fn overview(State(dash): State<DashState>, who: SignedIn) -> PageResult {
    let m = dash.overview_model().await?;
    let now = dash.app.now();
    let channels = dash
        .app
        .engine
        .channels_at_a_glance()
        .await
        .map_err(ApiError::from)?;
    html(OverviewPage {
        channels,
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
        as_of: super::super::live::as_of(m.counts_at),
        counts_age: ago(Some(m.counts_at), now),
        shape: m
            .rollouts
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        c: m.counts.clone(),
    })
}
