//! Content-addressed artifacts: `PUT /v1/artifacts/{sha256}` streams the upload to a temp
//! file, checks length and hash, then stores it under its name (renamed into place, or
//! uploaded to the object store); `GET`/`HEAD` serve it with single-range `Range` support,
//! or redirect to a presigned object-store URL (see [`crate::artifact_store`]). Nothing is
//! ever visible under its hash before it matches.

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fleetwave_shared::protocol::operator::{ArtifactInfo, Permission};
use futures_util::StreamExt as _;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::{ApiError, ApiPath, ApiQuery};
use crate::http::auth::{Operator, Reader};
use crate::state::{AppState, random_hex};
use crate::store::ArtifactRecord;

fn check_hash(sha: &str) -> Result<(), ApiError> {
    if sha.len() == 64
        && sha
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "the artifact name must be its SHA-256 as 64 lowercase hex characters",
        ))
    }
}

fn io_err(e: std::io::Error) -> ApiError {
    tracing::error!(error = %e, "artifact store I/O failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        format!("artifact store: {e}"),
    )
    .with_retry_after(5)
}

pub async fn upload(
    State(app): State<AppState>,
    op: Operator,
    ApiPath(sha): ApiPath<String>,
    req: Request,
) -> Result<Response, ApiError> {
    op.require(Permission::Publish)?;
    check_hash(&sha)?;
    let max = app.config.limits.max_artifact_bytes;
    let declared: Option<u64> = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("artifacts are limited to {max} bytes"),
        ));
    }
    let dir = app.artifacts.upload_dir(&app.config);
    tokio::fs::create_dir_all(&dir).await.map_err(io_err)?;
    let tmp_path = dir.join(format!(".upload-{}", random_hex(8)));
    let mut file = tokio::fs::File::create(&tmp_path).await.map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut length: u64 = 0;
    let mut stream = req.into_body().into_data_stream();
    let result: Result<(), ApiError> = async {
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::bad_request(format!("upload interrupted: {e}")))?;
            length += chunk.len() as u64;
            if length > max {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("artifacts are limited to {max} bytes"),
                ));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io_err)?;
        }
        file.sync_all().await.map_err(io_err)?;
        if let Some(d) = declared
            && d != length
        {
            return Err(ApiError::bad_request(format!(
                "Content-Length said {d} bytes but {length} arrived"
            )));
        }
        let got = hex::encode(hasher.clone().finalize());
        if got != sha {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "hash_mismatch",
                format!("the uploaded bytes hash to {got}, not {sha}"),
            ));
        }
        Ok(())
    }
    .await;
    drop(file);
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp_path).await;
        return Err(e);
    }
    app.artifacts.put(&sha, &tmp_path).await.map_err(io_err)?;
    let record = ArtifactRecord {
        sha256: sha.clone(),
        length,
        uploaded_at: app.now(),
        uploaded_by: op.actor(),
    };
    let r = record.clone();
    app.db.run(move |s| s.add_artifact(&r)).await?;
    op.audit(&app, "artifact.upload", &sha, format!("{length} bytes"))
        .await?;
    Ok((StatusCode::CREATED, Json(info(record))).into_response())
}

fn info(r: ArtifactRecord) -> ArtifactInfo {
    ArtifactInfo {
        url: format!("/v1/artifacts/{}", r.sha256),
        sha256: r.sha256,
        length: r.length,
        uploaded_at: r.uploaded_at,
    }
}

/// A parsed single `Range: bytes=a-b` (inclusive), or None for the whole file.
fn parse_range(headers: &HeaderMap, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| ())?;
    let spec = v.strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (len.saturating_sub(n), len.checked_sub(1).ok_or(())?)
        }
        (s, "") => (s.parse().map_err(|_| ())?, len.checked_sub(1).ok_or(())?),
        (s, e) => {
            let s: u64 = s.parse().map_err(|_| ())?;
            let e: u64 = e.parse().map_err(|_| ())?;
            (s, e.min(len.saturating_sub(1)))
        }
    };
    if start > end || start >= len {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// `?direct=1`: stream through the coordinator even when the store hands out presigned URLs
/// (for a client that cannot reach the store).
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DownloadQuery {
    /// `1`: stream the bytes through the coordinator, never redirect.
    #[serde(default)]
    #[param(maximum = 1)]
    direct: Option<u8>,
}

pub async fn download(
    State(app): State<AppState>,
    _reader: Reader,
    ApiPath(sha): ApiPath<String>,
    ApiQuery(query): ApiQuery<DownloadQuery>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_hash(&sha)?;
    let direct = match query.direct {
        None | Some(0) => false,
        Some(1) => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "direct must be 0 or 1, got {other}"
            )));
        }
    };
    let s = sha.clone();
    let record = app
        .db
        .run(move |st| st.artifact(&s))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no artifact {sha}")))?;
    let len = record.length;
    let range = match parse_range(&headers, len) {
        Ok(r) => r,
        Err(()) => {
            let mut res = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the Range must be one byte range within the {len}-byte artifact"),
            )
            .into_response();
            res.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
            );
            return Ok(res);
        }
    };
    let (start, end) = range.unwrap_or((0, len.saturating_sub(1)));
    let count = if len == 0 { 0 } else { end - start + 1 };
    if method == Method::GET
        && !direct
        && let Some(url) = app.artifacts.redirect_url(&sha).await.map_err(io_err)?
    {
        let mut res = StatusCode::TEMPORARY_REDIRECT.into_response();
        let h = res.headers_mut();
        h.insert(
            header::LOCATION,
            HeaderValue::from_str(&url).map_err(|_| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the object store signed a URL that is not a valid header value",
                )
            })?,
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        app.metrics.artifact_redirects.inc();
        return Ok(res);
    }
    let mut res = if method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        let stream = app
            .artifacts
            .read(&sha, start, count)
            .await
            .map_err(io_err)?;
        app.metrics.artifact_bytes_served.inc_by(count);
        Response::new(Body::from_stream(stream))
    };
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{sha}\"")).expect("hex"),
    );
    if range.is_some() {
        *res.status_mut() = StatusCode::PARTIAL_CONTENT;
        res.headers_mut().insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")).expect("ascii"),
        );
    }
    Ok(res)
}
