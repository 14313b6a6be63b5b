//! The vendored stylesheet and script.

use super::*;

pub(super) const CSS: &str = include_str!("../../../assets/dashboard.css");
pub(super) const JS: &str = include_str!("../../../assets/dashboard.js");

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
