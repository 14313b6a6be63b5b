//! The site list: search, filters and pages.

use super::*;

#[derive(Deserialize, Default, Clone)]
pub struct SitesQuery {
    #[serde(default)]
    pub(super) q: String,
    #[serde(default)]
    pub(super) label: String,
    #[serde(default)]
    pub(super) state: String,
    #[serde(default)]
    pub(super) version: String,
    #[serde(default)]
    pub(super) page: Option<u64>,
    /// The grid's colours: `health` (the default), `version` or `rollout`.
    #[serde(default)]
    pub(super) colour: String,
    /// Colouring by version: the release stream.
    #[serde(default)]
    pub(super) stream: String,
    /// Colouring by rollout state: the rollout.
    #[serde(default)]
    pub(super) rollout: String,
}

impl SitesQuery {
    pub(super) fn to_query(&self) -> Result<SiteQuery, ApiError> {
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
    pub(super) fn link(&self) -> String {
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

pub(super) fn urlencode(s: &str) -> String {
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

pub(super) struct SiteListRow {
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
pub(super) struct SitesPage {
    nav: Nav,
    f: SitesQuery,
    versions: Vec<String>,
    rows: Vec<SiteListRow>,
    /// How many match: a number, or "more than N" when a filter's count stopped.
    total: String,
    first: u64,
    last: u64,
    page: u64,
    pages: String,
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
    // A filter's count stops past the count limit: "more than" that, and a next page.
    let more = total > crate::store::read::count_limit(offset, PAGE_SIZE);
    let counted = if more { total - 1 } else { total };
    let pages = counted.div_ceil(PAGE_SIZE).max(1) + u64::from(more);
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
        total: if more {
            format!("more than {counted}")
        } else {
            total.to_string()
        },
        page,
        pages: if more {
            format!("more than {}", pages - 1)
        } else {
            pages.to_string()
        },
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
