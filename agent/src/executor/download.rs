//! Resumable artifact download into the staging directory, verified before use.
//!
//! Layout: `<staging_dir>/artifacts/<sha256>.part` while incomplete (kept across restarts
//! and resumed with an HTTP `Range` request), `<staging_dir>/artifacts/<sha256>` once its
//! length and SHA-256 match the signed values. Nothing else in the agent reads a `.part`
//! file, and nothing here ever accepts more bytes than the signed length.
//!
//! With `[peers]` on, the site's other boxes are asked first (see the `peer` module); what
//! they send goes through the same [`receive`] and verification as any download.
//!
//! The bearer token goes only to the coordinator (relative artifact URLs or URLs under the
//! coordinator's base URL), never to a mirror.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetwave_shared::Artifact;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::ExecError;

/// Longest wait for the next chunk of a download before giving up (resumed later).
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where artifacts come from.
#[derive(Debug, Clone, Copy)]
pub struct ArtifactSource<'a> {
    /// The agent's HTTP client (the coordinator CA pinned; mirrors over HTTPS need the
    /// roots the daemon configured).
    pub client: &'a reqwest::Client,
    /// The coordinator's base URL, e.g. `https://coordinator.example:8443`. Relative
    /// artifact URLs (`/v1/artifacts/<sha256>`) are joined to it.
    pub base_url: &'a str,
    /// The session's bearer token, sent only to the coordinator.
    pub bearer_token: Option<&'a str>,
    /// At most this many bytes a second (`download.max_bytes_per_sec`); 0: no limit.
    /// Reading is paced, so TCP's flow control slows the sender down too.
    pub max_bytes_per_sec: u64,
    /// The site's other boxes (`[peers]`), asked before the coordinator or mirror; None:
    /// no peer cache.
    pub peers: Option<&'a crate::peer::Peers>,
}

/// Directory holding downloaded artifacts.
pub fn artifacts_dir(staging_dir: &Path) -> PathBuf {
    staging_dir.join("artifacts")
}

/// The verified artifact's path (exists only once verified).
pub fn staged_path(staging_dir: &Path, sha256: &str) -> PathBuf {
    artifacts_dir(staging_dir).join(sha256)
}

/// The partial download's path.
pub fn part_path(staging_dir: &Path, sha256: &str) -> PathBuf {
    artifacts_dir(staging_dir).join(format!("{sha256}.part"))
}

/// 64 lowercase hex characters: the only form of SHA-256 the agent names files by.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

fn check_digest_form(artifact: &Artifact) -> Result<(), ExecError> {
    if is_sha256_hex(&artifact.sha256) {
        Ok(())
    } else {
        Err(ExecError::ArtifactMismatch {
            name: artifact.name.clone(),
            message: format!(
                "signed sha256 {:?} is not 64 lowercase hex characters",
                artifact.sha256
            ),
        })
    }
}

/// The full URL of an artifact and whether it is on the coordinator (gets the token).
pub fn resolve_url(base_url: &str, url: &str) -> Result<(String, bool), ExecError> {
    let base = base_url.trim_end_matches('/');
    if url.starts_with("https://") || url.starts_with("http://") {
        let on_coordinator =
            !base.is_empty() && (url == base || url.starts_with(&format!("{base}/")));
        Ok((url.to_string(), on_coordinator))
    } else if url.starts_with('/') {
        if base.is_empty() {
            return Err(ExecError::DownloadFailed {
                url: url.to_string(),
                message: "relative artifact URL but no coordinator base URL".into(),
            });
        }
        Ok((format!("{base}{url}"), true))
    } else {
        Err(ExecError::DownloadFailed {
            url: url.to_string(),
            message: "artifact URL must be absolute http(s) or a path starting with /".into(),
        })
    }
}

/// Downloads `artifact` (resuming a `.part` file left by an earlier attempt), verifies its
/// length and SHA-256, and returns the verified file's path. Idempotent: a verified file
/// already in place is checked again and returned without a request.
///
/// Errors: `download_failed` (network, HTTP status, stalled or short body: the partial file
/// is kept and the next call resumes), `artifact_too_large` (more bytes than signed: the
/// partial file is deleted), `artifact_mismatch` (wrong SHA-256: deleted), `disk_full`.
pub async fn fetch(
    source: &ArtifactSource<'_>,
    artifact: &Artifact,
    staging_dir: &Path,
) -> Result<PathBuf, ExecError> {
    check_digest_form(artifact)?;
    let dir = artifacts_dir(staging_dir);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ExecError::io("creating", &dir, e))?;
    let done = staged_path(staging_dir, &artifact.sha256);
    let part = part_path(staging_dir, &artifact.sha256);

    if tokio::fs::try_exists(&done).await.unwrap_or(false) {
        match verify_file(&done, artifact).await {
            Ok(()) => return Ok(done),
            Err(_) => {
                // A verified file that no longer verifies (disk corruption): fetch again.
                let _ = tokio::fs::remove_file(&done).await;
            }
        }
    }

    // The site's other boxes first; while this box downloads from the coordinator itself,
    // `_fetching` tells its peers so (they wait for it instead of downloading too).
    let _fetching = match source.peers {
        Some(peers) => match peers.fetch(artifact, staging_dir).await {
            crate::peer::PeerOutcome::Staged(path) => return Ok(path),
            crate::peer::PeerOutcome::Download(claim) => Some(claim),
        },
        None => None,
    };

    let (url, on_coordinator) = resolve_url(source.base_url, &artifact.url)?;
    // One retry from zero when the server refuses our range (stale or foreign .part).
    for attempt in 0..2 {
        let have = part_len(&part).await;
        if have > artifact.length {
            remove(&part).await?;
            continue;
        }
        if have == artifact.length {
            return finish(&part, &done, artifact).await;
        }
        let resp = request(source, &url, on_coordinator, have).await?;
        let status = resp.status();
        match status.as_u16() {
            200 | 206 => {}
            416 if attempt == 0 => {
                remove(&part).await?;
                continue;
            }
            _ => {
                let body = read_error_body(resp).await;
                return Err(ExecError::DownloadFailed {
                    url,
                    message: format!("HTTP {status}{body}"),
                });
            }
        }
        let transfer = Transfer {
            url: &url,
            have,
            artifact,
            part: &part,
            stall: STALL_TIMEOUT,
            deadline: None,
            max_bytes_per_sec: source.max_bytes_per_sec,
        };
        if let Err(e) = receive(resp, &transfer).await {
            if matches!(e, ExecError::ArtifactTooLarge { .. }) {
                let _ = tokio::fs::remove_file(&part).await;
            }
            return Err(e);
        }
        return finish(&part, &done, artifact).await;
    }
    Err(ExecError::DownloadFailed {
        url,
        message: "the server refused to resume the download twice".into(),
    })
}

/// Most redirects an artifact request follows.
const MAX_REDIRECTS: usize = 5;

/// One GET (from byte `have`), never following a redirect; the token only when asked.
async fn send(
    source: &ArtifactSource<'_>,
    url: &str,
    token: bool,
    have: u64,
) -> Result<reqwest::Response, String> {
    let mut req = source.client.get(url);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    if token && let Some(t) = source.bearer_token {
        req = req.bearer_auth(t);
    }
    // Without the URL: a presigned URL's query is a credential, kept out of logs and reports.
    req.send().await.map_err(|e| error_chain(&e.without_url()))
}

/// `url` without its query (a presigned URL's signature stays out of logs and reports).
fn shown(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// Requests an artifact, following redirects by hand (the agent's client follows none):
/// the bearer token goes only to the coordinator, and when the coordinator redirected to a
/// place this box cannot download from (an object store's presigned URL that is unreachable
/// or refuses), the coordinator is asked to stream the bytes itself (`?direct=1`). The
/// answer is the first response that is not a redirect; its status is the caller's to judge.
async fn request(
    source: &ArtifactSource<'_>,
    url: &str,
    on_coordinator: bool,
    have: u64,
) -> Result<reqwest::Response, ExecError> {
    let failed = |url: &str, message: String| ExecError::DownloadFailed {
        url: shown(url).to_string(),
        message,
    };
    let mut current = url.to_string();
    let mut token = on_coordinator;
    let mut hops = 0;
    let problem = loop {
        let resp = send(source, &current, token, have).await;
        let redirected = hops > 0 && on_coordinator;
        match resp {
            Ok(r) if r.status().is_redirection() => {
                hops += 1;
                let location = r
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        failed(&current, format!("HTTP {} without a Location", r.status()))
                    })?;
                let next = reqwest::Url::parse(&current)
                    .and_then(|base| base.join(location))
                    .map_err(|e| failed(&current, format!("redirect to a bad Location: {e}")))?;
                if hops > MAX_REDIRECTS {
                    return Err(failed(url, format!("more than {MAX_REDIRECTS} redirects")));
                }
                current = next.to_string();
                // The token follows only within the coordinator.
                token = token && resolve_url(source.base_url, &current).is_ok_and(|(_, c)| c);
            }
            Ok(r) if redirected && !r.status().is_success() => {
                break format!("HTTP {}{}", r.status(), read_error_body(r).await);
            }
            Err(message) if redirected => break message,
            Ok(r) => return Ok(r),
            Err(message) => return Err(failed(&current, message)),
        }
    };
    tracing::warn!(
        store = shown(&current),
        problem = %problem,
        "cannot download from where the coordinator redirected; downloading through the coordinator"
    );
    let direct = format!("{url}{}direct=1", if url.contains('?') { '&' } else { '?' });
    match send(source, &direct, true, have).await {
        Ok(r) if r.status().is_redirection() => Err(failed(
            url,
            format!(
                "{problem} at {}, and the coordinator redirected again",
                shown(&current)
            ),
        )),
        Ok(r) => Ok(r),
        Err(message) => Err(failed(url, message)),
    }
}

/// The length of the `.part` file (0 when there is none).
pub(crate) async fn part_len(part: &Path) -> u64 {
    match tokio::fs::metadata(part).await {
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// One HTTP response being written into the `.part` file.
pub(crate) struct Transfer<'a> {
    /// Where the bytes come from (named in errors).
    pub url: &'a str,
    /// Bytes the `.part` file held when the request was sent (its `Range` start).
    pub have: u64,
    pub artifact: &'a Artifact,
    pub part: &'a Path,
    /// Longest wait for the next chunk.
    pub stall: Duration,
    /// The whole transfer must be over by then (a peer's minimum rate); None: no limit.
    pub deadline: Option<tokio::time::Instant>,
    /// Pacing (`download.max_bytes_per_sec`); 0: none.
    pub max_bytes_per_sec: u64,
}

/// Writes a 200 or 206 response's body into the `.part` file: from byte `have` for a 206
/// that starts there, from zero for a 200. Ok once the file holds exactly the signed
/// length (not yet verified). Never writes a byte past the signed length; what arrived is
/// kept (synced) on every error except `artifact_too_large`, where the caller decides.
pub(crate) async fn receive(resp: reqwest::Response, t: &Transfer<'_>) -> Result<(), ExecError> {
    let failed = |message: String| ExecError::DownloadFailed {
        url: t.url.to_string(),
        message,
    };
    let too_large = || ExecError::ArtifactTooLarge {
        name: t.artifact.name.clone(),
        length: t.artifact.length,
    };
    let append = resp.status().as_u16() == 206;
    if append {
        let start = content_range_start(resp.headers());
        if start != Some(t.have) {
            return Err(failed(format!(
                "asked for bytes from {}, server sent a range starting at {start:?}",
                t.have
            )));
        }
    }
    let offset = if append { t.have } else { 0 };
    let remaining = t.artifact.length - offset;
    if let Some(len) = resp.content_length()
        && len > remaining
    {
        return Err(too_large());
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(t.part)
        .await
        .map_err(|e| ExecError::io("opening", t.part, e))?;
    let mut written = 0u64;
    let started = tokio::time::Instant::now();
    let mut stream = resp.bytes_stream();
    let outcome: Result<(), ExecError> = loop {
        let wait = match t.deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    break Err(failed(format!(
                        "too slow: {written} of {remaining} bytes in {} s",
                        started.elapsed().as_secs()
                    )));
                }
                left.min(t.stall)
            }
            None => t.stall,
        };
        let next = match tokio::time::timeout(wait, stream.next()).await {
            Ok(n) => n,
            Err(_) if wait < t.stall => {
                break Err(failed(format!(
                    "too slow: {written} of {remaining} bytes in {} s",
                    started.elapsed().as_secs()
                )));
            }
            Err(_) => {
                break Err(failed(format!("no data for {} s", t.stall.as_secs())));
            }
        };
        match next {
            None => break Ok(()),
            Some(Err(e)) => break Err(failed(error_chain(&e))),
            Some(Ok(chunk)) => {
                if written + chunk.len() as u64 > remaining {
                    break Err(too_large());
                }
                if let Err(e) = file.write_all(&chunk).await {
                    break Err(ExecError::io("writing", t.part, e));
                }
                written += chunk.len() as u64;
                pace(written, t.max_bytes_per_sec, started).await;
            }
        }
    };
    // Keep what arrived (for the next resume), durably.
    let synced = async {
        file.flush().await?;
        file.sync_all().await
    }
    .await;
    drop(file);
    outcome?;
    synced.map_err(|e| ExecError::io("syncing", t.part, e))?;
    if written < remaining {
        return Err(failed(format!(
            "connection closed after {} of {} bytes; the download resumes next time",
            offset + written,
            t.artifact.length
        )));
    }
    Ok(())
}

/// Waits until `written` bytes since `started` are within `max_bytes_per_sec` (0: never
/// waits).
async fn pace(written: u64, max_bytes_per_sec: u64, started: tokio::time::Instant) {
    if max_bytes_per_sec == 0 {
        return;
    }
    let due = started + Duration::from_secs_f64(written as f64 / max_bytes_per_sec as f64);
    tokio::time::sleep_until(due).await;
}

/// Copies a local file (an air-gapped bundle's artifact) into the staging directory and
/// verifies it exactly like a download. Returns the verified path.
pub async fn import(
    from: &Path,
    artifact: &Artifact,
    staging_dir: &Path,
) -> Result<PathBuf, ExecError> {
    check_digest_form(artifact)?;
    let dir = artifacts_dir(staging_dir);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ExecError::io("creating", &dir, e))?;
    let len = tokio::fs::metadata(from)
        .await
        .map_err(|e| ExecError::io("reading", from, e))?
        .len();
    if len > artifact.length {
        return Err(ExecError::ArtifactTooLarge {
            name: artifact.name.clone(),
            length: artifact.length,
        });
    }
    let part = part_path(staging_dir, &artifact.sha256);
    tokio::fs::copy(from, &part)
        .await
        .map_err(|e| ExecError::io("copying to", &part, e))?;
    finish(&part, &staged_path(staging_dir, &artifact.sha256), artifact).await
}

/// Verifies the complete `.part` file and renames it into place (durably).
async fn finish(part: &Path, done: &Path, artifact: &Artifact) -> Result<PathBuf, ExecError> {
    if let Err(e) = verify_file(part, artifact).await {
        let _ = tokio::fs::remove_file(part).await;
        return Err(e);
    }
    promote(part, done).await
}

/// Renames a verified `.part` file into place (durably). Only for a file that was just
/// verified against the signed length and SHA-256.
pub(crate) async fn promote(part: &Path, done: &Path) -> Result<PathBuf, ExecError> {
    tokio::fs::rename(part, done)
        .await
        .map_err(|e| ExecError::io("renaming", part, e))?;
    if let Some(parent) = done.parent() {
        sync_dir(parent).await;
    }
    Ok(done.to_path_buf())
}

/// Checks a file's length and SHA-256 against the signed values.
pub async fn verify_file(path: &Path, artifact: &Artifact) -> Result<(), ExecError> {
    let p = path.to_path_buf();
    let digest = tokio::task::spawn_blocking(move || -> std::io::Result<(u64, String)> {
        let mut f = std::fs::File::open(&p)?;
        let mut h = Sha256::new();
        let n = std::io::copy(&mut f, &mut h)?;
        Ok((n, hex::encode(h.finalize())))
    })
    .await
    .map_err(|e| ExecError::Failed {
        step: super::Step::Prepare,
        message: format!("hashing task failed: {e}"),
    })?
    .map_err(|e| ExecError::io("hashing", path, e))?;
    let (len, sha) = digest;
    if len != artifact.length {
        return Err(ExecError::ArtifactMismatch {
            name: artifact.name.clone(),
            message: format!("{len} bytes, the release signs {}", artifact.length),
        });
    }
    if sha != artifact.sha256 {
        return Err(ExecError::ArtifactMismatch {
            name: artifact.name.clone(),
            message: format!("sha256 {sha}, the release signs {}", artifact.sha256),
        });
    }
    Ok(())
}

async fn remove(path: &Path) -> Result<(), ExecError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ExecError::io("removing", path, e)),
    }
}

/// fsync a directory so a rename in it survives a power cut (best effort).
pub(crate) async fn sync_dir(dir: &Path) {
    let dir = dir.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || {
        if let Ok(f) = std::fs::File::open(&dir) {
            let _ = f.sync_all();
        }
    })
    .await;
}

fn content_range_start(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let v = headers.get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.strip_prefix("bytes ")?;
    let (start, _) = rest.split_once('-')?;
    start.trim().parse().ok()
}

async fn read_error_body(resp: reqwest::Response) -> String {
    let mut stream = resp.bytes_stream();
    let mut body = Vec::new();
    while let Ok(Some(Ok(chunk))) =
        tokio::time::timeout(Duration::from_secs(5), stream.next()).await
    {
        body.extend_from_slice(&chunk);
        if body.len() > 4096 {
            break;
        }
    }
    if let Ok(e) = serde_json::from_slice::<fleetwave_shared::protocol::ErrorBody>(&body) {
        format!(": {} ({})", e.error.message, e.error.code)
    } else {
        String::new()
    }
}

pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_resolve_and_the_token_stays_on_the_coordinator() {
        let base = "https://coord:8443/";
        assert_eq!(
            resolve_url(base, "/v1/artifacts/ab").unwrap(),
            ("https://coord:8443/v1/artifacts/ab".to_string(), true)
        );
        assert!(
            resolve_url(base, "https://coord:8443/v1/artifacts/ab")
                .unwrap()
                .1
        );
        assert!(!resolve_url(base, "https://coord:84430/x").unwrap().1);
        assert!(!resolve_url(base, "https://mirror/x").unwrap().1);
        assert!(resolve_url(base, "ftp://x").is_err());
        assert!(resolve_url("", "/v1/x").is_err());
    }

    #[test]
    fn content_range_is_parsed() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::CONTENT_RANGE,
            "bytes 100-199/200".parse().unwrap(),
        );
        assert_eq!(content_range_start(&h), Some(100));
    }
}
