//! The vendored stylesheet and script, and the icon.

use super::*;

pub(super) const CSS: &str = include_str!("../../../assets/dashboard.css");
pub(super) const JS: &str = include_str!("../../../assets/dashboard.js");
pub(super) const FAVICON: &str = include_str!("../../../assets/favicon.svg");

/// `GET /ui/assets/{file}`: the vendored stylesheet and script and the icon, embedded in
/// the binary.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, ctype) = match file.as_str() {
        "dashboard.css" => (CSS, "text/css; charset=utf-8"),
        "dashboard.js" => (JS, "text/javascript; charset=utf-8"),
        "favicon.svg" => (FAVICON, "image/svg+xml"),
        _ => return error_page(StatusCode::NOT_FOUND, "no such asset"),
    };
    cached(body, ctype)
}

/// `GET /favicon.ico`: the icon (SVG), for browsers that ask for it whatever the page
/// links; no sign-in needed, like the other assets.
pub async fn favicon() -> Response {
    cached(FAVICON, "image/svg+xml")
}

fn cached(body: &'static str, ctype: &'static str) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=300"),
    );
    res
}
