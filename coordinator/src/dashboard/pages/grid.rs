//! The site grid: every matching site as one coloured cell.

use super::*;

#[derive(Template)]
#[template(path = "grid.html")]
pub(super) struct GridPage {
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
pub(super) enum GridColour {
    Health,
    /// One colour per version of this stream.
    Version(String),
    /// Each member's state in this rollout.
    Rollout(String, HashMap<String, &'static str>),
}

/// Version colours: the most common versions get one each, the rest share one.
pub(super) const VERSION_COLOURS: usize = 8;

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
pub(super) const GZIP_ABOVE: usize = 64 * 1024;

/// An HTML answer, gzip-compressed (fast level) when large and accepted.
pub(super) fn maybe_gzip(headers: &HeaderMap, body: String) -> Response {
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
pub(super) const HEALTH_KINDS: [(&str, &str); 6] = [
    ("k-ok", "healthy"),
    ("k-bad", "unhealthy"),
    ("k-def", "deferred"),
    ("k-unk", "health unknown"),
    ("k-stale", "not seen recently"),
    ("k-off", "decommissioned"),
];

/// The grid's cells (one `<a>` per site) and the legend: (class, label, count), in the
/// legend's order.
pub(super) fn render_grid(
    cells: &[crate::dashboard::read::GridCell],
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
