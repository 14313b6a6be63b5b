//! The release list.

use super::*;

pub(super) struct ReleaseRow {
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
pub(super) struct ReleasesPage {
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
