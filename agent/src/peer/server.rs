//! The peer cache's server: a read-only HTTP/1.1 server for the site's other boxes.
//!
//! It answers exactly one kind of request, `GET` (or `HEAD`) of
//! `/v1/peer/artifacts/{sha256}` with 64 lowercase hex characters, from the verified
//! artifacts in `<staging_dir>/artifacts/` (a file there only ever appears by a rename
//! after its length and SHA-256 verified). `Range: bytes=START-` and `bytes=START-END` are
//! honoured so a peer can resume. Anything else is refused: other paths, other methods, a
//! malformed digest (so no `..`, no `.part` file, no listing), symlinks. While this box
//! is itself claiming or downloading an artifact it does not hold, the answer is 503 with
//! the [`ACTIVITY_HEADER`](super::ACTIVITY_HEADER) and a `Retry-After`.
//!
//! Bounded: at most `peers.max_connections` peers at once (one more is answered 503 and
//! closed without reading), the request head within `peers.timeout_secs` and 8 KiB, each
//! write within `peers.timeout_secs`, the whole body within `timeout_secs` plus its length
//! at `peers.min_bytes_per_sec`, one request per connection. It must never serve a path
//! it did not build from a checked digest, nor read a request body.

use std::net::SocketAddr;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::{ACTIVITY_HEADER, ARTIFACT_PATH, Activity, Board};
use crate::config::PeersConfig;
use crate::executor::download;

/// Longest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Most request headers parsed.
const MAX_HEADERS: usize = 32;
/// `Retry-After` sent while this box downloads an artifact itself.
const FETCHING_RETRY_AFTER_SECS: u64 = 2;
/// The answer to a connection over the limit.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// The bound listener and what it serves.
#[derive(Debug)]
pub struct PeerServer {
    listener: TcpListener,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    artifacts_dir: PathBuf,
    board: Board,
    slots: Arc<Semaphore>,
    timeout: Duration,
    min_bytes_per_sec: u64,
}

impl PeerServer {
    /// Binds `peers.listen`; serves from `staging_dir`'s verified artifacts and tells
    /// peers what `board` says about the rest.
    pub async fn bind(
        config: &PeersConfig,
        staging_dir: &Path,
        board: Board,
    ) -> std::io::Result<PeerServer> {
        // Validated as an address and port when the configuration was loaded.
        let addr: SocketAddr = config
            .listen
            .parse()
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not host:port"))?;
        let listener = TcpListener::bind(addr).await?;
        Ok(PeerServer {
            listener,
            shared: Arc::new(Shared {
                artifacts_dir: download::artifacts_dir(staging_dir),
                board,
                slots: Arc::new(Semaphore::new(config.max_connections)),
                timeout: Duration::from_secs(config.timeout_secs),
                min_bytes_per_sec: config.min_bytes_per_sec,
            }),
        })
    }

    /// Where it listens (the port when `listen` asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the task is dropped.
    pub async fn run(self) {
        loop {
            let (sock, _) = match self.listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!("peer server: accepting failed: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            match Arc::clone(&self.shared.slots).try_acquire_owned() {
                Ok(slot) => {
                    let shared = Arc::clone(&self.shared);
                    tokio::spawn(async move {
                        let _slot = slot;
                        // A peer that goes away or reads too slowly is simply dropped.
                        let _ = serve(sock, &shared).await;
                    });
                }
                Err(_) => {
                    let _ = sock.try_write(BUSY);
                }
            }
        }
    }
}

/// What a request gets.
enum Reply {
    /// A JSON error: status, code, message.
    Refuse(u16, &'static str, &'static str),
    /// This box is claiming or downloading the artifact itself.
    Busy(Activity),
    /// The range starts at or past the end of a file this long.
    Unsatisfiable(u64),
    /// Bytes `start..end` of a `len`-byte verified artifact, opened (`partial`: asked by
    /// range).
    Artifact {
        file: std::fs::File,
        start: u64,
        end: u64,
        len: u64,
        partial: bool,
        head_only: bool,
    },
}

/// One connection, one request.
async fn serve(mut sock: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let reply = match tokio::time::timeout(shared.timeout, read_head(&mut sock)).await {
        Ok(Ok(Some(head))) => route(&head, shared).await?,
        Ok(Ok(None)) | Err(_) => return Ok(()), // closed or too slow: nothing to answer
        Ok(Err(HeadError::TooLarge)) => {
            Reply::Refuse(431, "head_too_large", "request head over 8 KiB")
        }
        Ok(Err(HeadError::Io(e))) => return Err(e),
    };
    let (head, body) = match reply {
        Reply::Refuse(status, code, message) => (refusal(status, code, message), None),
        Reply::Busy(activity) => {
            let retry_after = match activity {
                Activity::Fetching => FETCHING_RETRY_AFTER_SECS,
                Activity::Claiming(_) => 1,
            };
            let head = format!(
                "HTTP/1.1 503 Service Unavailable\r\n{ACTIVITY_HEADER}: {}\r\nRetry-After: {retry_after}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                activity.header_value()
            );
            (head, None)
        }
        Reply::Unsatisfiable(len) => (
            format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
            None,
        ),
        Reply::Artifact {
            file,
            start,
            end,
            len,
            partial,
            head_only,
        } => {
            let status = if partial {
                format!(
                    "206 Partial Content\r\nContent-Range: bytes {start}-{}/{len}",
                    end - 1
                )
            } else {
                "200 OK".to_string()
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
                end - start
            );
            (head, (!head_only).then_some((file, start, end - start)))
        }
    };
    write_timed(&mut sock, head.as_bytes(), shared.timeout).await?;
    if let Some((file, start, count)) = body {
        let file = Arc::new(file);
        let deadline = tokio::time::Instant::now()
            + shared.timeout
            + Duration::from_secs(count / shared.min_bytes_per_sec);
        let (mut offset, end) = (start, start + count);
        let mut buf = vec![0u8; 64 * 1024];
        while offset < end {
            let want = buf
                .len()
                .min(usize::try_from(end - offset).unwrap_or(usize::MAX));
            let f = Arc::clone(&file);
            let (back, read) = tokio::task::spawn_blocking(move || {
                let read = f.read_at(&mut buf[..want], offset);
                (buf, read)
            })
            .await
            .map_err(std::io::Error::other)?;
            buf = back;
            let n = read?;
            if n == 0 {
                break; // the file went away under us: the peer sees a short body
            }
            let wait = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(shared.timeout);
            write_timed(&mut sock, &buf[..n], wait).await?;
            offset += n as u64;
        }
    }
    sock.shutdown().await
}

/// Decides the answer to a request head; opens the artifact it names, if any.
async fn route(head: &[u8], shared: &Shared) -> std::io::Result<Reply> {
    let Some(req) = Head::parse(head) else {
        return Ok(Reply::Refuse(400, "bad_request", "not an HTTP/1.1 request"));
    };
    let head_only = match req.method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return Ok(Reply::Refuse(
                405,
                "method_not_allowed",
                "only GET and HEAD",
            ));
        }
    };
    let Some(sha256) = req.path.strip_prefix(ARTIFACT_PATH) else {
        return Ok(Reply::Refuse(
            404,
            "not_found",
            "the only path is /v1/peer/artifacts/{sha256}",
        ));
    };
    if !download::is_sha256_hex(sha256) {
        return Ok(Reply::Refuse(
            400,
            "bad_digest",
            "an artifact is named by 64 lowercase hex characters",
        ));
    }
    let path = shared.artifacts_dir.join(sha256);
    // A regular file only (not a symlink), opened without following one.
    let opened = tokio::task::spawn_blocking(move || -> std::io::Result<(std::fs::File, u64)> {
        let meta = std::fs::symlink_metadata(&path)?;
        if !meta.file_type().is_file() {
            return Err(std::io::ErrorKind::NotFound.into());
        }
        Ok((std::fs::File::open(&path)?, meta.len()))
    })
    .await
    .map_err(std::io::Error::other)?;
    let Ok((file, len)) = opened else {
        return Ok(match shared.board.activity(sha256) {
            Some(activity) => Reply::Busy(activity),
            None => Reply::Refuse(404, "not_found", "no such artifact here"),
        });
    };
    let (start, end) = match req.range.map(|r| parse_range(r, len)) {
        None => (0, len),
        Some(Ok(r)) => r,
        Some(Err(RangeError::Malformed)) => {
            return Ok(Reply::Refuse(
                400,
                "bad_range",
                "Range must be bytes=START- or bytes=START-END",
            ));
        }
        Some(Err(RangeError::Unsatisfiable)) => return Ok(Reply::Unsatisfiable(len)),
    };
    Ok(Reply::Artifact {
        file,
        start,
        end,
        len,
        partial: req.range.is_some(),
        head_only,
    })
}

/// The parts of a request head the server looks at.
#[derive(Debug, PartialEq, Eq)]
struct Head<'a> {
    method: &'a str,
    path: &'a str,
    range: Option<&'a str>,
}

impl<'a> Head<'a> {
    /// `METHOD SP PATH SP HTTP/1.x`, then `Name: value` lines; None when it is not that.
    /// Only `Range` is read (the last one wins); every other header is ignored.
    fn parse(head: &'a [u8]) -> Option<Head<'a>> {
        let text = std::str::from_utf8(head).ok()?;
        let mut lines = text.strip_suffix("\r\n\r\n")?.split("\r\n");
        let mut parts = lines.next()?.split(' ');
        let (method, path, version) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || method.is_empty()
            || !path.starts_with('/')
            || !matches!(version, "HTTP/1.0" | "HTTP/1.1")
            || text.len() > MAX_HEAD
        {
            return None;
        }
        let mut range = None;
        for (n, line) in lines.enumerate() {
            let (name, value) = line.split_once(':')?;
            if n >= MAX_HEADERS || name.is_empty() || name.contains(' ') {
                return None;
            }
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim());
            }
        }
        Some(Head {
            method,
            path,
            range,
        })
    }
}

enum HeadError {
    TooLarge,
    Io(std::io::Error),
}

/// Reads up to the blank line ending the head (None: closed before it).
async fn read_head(sock: &mut TcpStream) -> Result<Option<Vec<u8>>, HeadError> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = sock.read(&mut buf).await.map_err(HeadError::Io)?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n")
            && end + 4 <= MAX_HEAD
        {
            head.truncate(end + 4);
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

async fn write_timed(sock: &mut TcpStream, bytes: &[u8], wait: Duration) -> std::io::Result<()> {
    match tokio::time::timeout(wait, sock.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the peer reads too slowly",
        )),
    }
}

fn refusal(status: u16, code: &str, message: &str) -> String {
    let reason = match status {
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Request Header Fields Too Large",
    };
    let body = format!(r#"{{"error":{{"code":"{code}","message":"{message}"}}}}"#);
    let allow = if status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\n{allow}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[derive(Debug, PartialEq, Eq)]
enum RangeError {
    Malformed,
    Unsatisfiable,
}

/// `bytes=START-` or `bytes=START-END` (inclusive) of a `len`-byte file, as the half-open
/// `(start, end)`.
fn parse_range(value: &str, len: u64) -> Result<(u64, u64), RangeError> {
    let spec = value
        .trim()
        .strip_prefix("bytes=")
        .ok_or(RangeError::Malformed)?;
    let (start, end) = spec.split_once('-').ok_or(RangeError::Malformed)?;
    let start: u64 = start.trim().parse().map_err(|_| RangeError::Malformed)?;
    let end = match end.trim() {
        "" => None,
        e => Some(e.parse::<u64>().map_err(|_| RangeError::Malformed)?),
    };
    if end.is_some_and(|e| e < start) {
        return Err(RangeError::Malformed);
    }
    if start >= len {
        return Err(RangeError::Unsatisfiable);
    }
    let end = end.map_or(len, |e| e.saturating_add(1).min(len));
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_is_read_strictly() {
        let h = Head::parse(b"GET /v1/x HTTP/1.1\r\nHost: a\r\nrange: bytes=5-\r\n\r\n").unwrap();
        assert_eq!(
            (h.method, h.path, h.range),
            ("GET", "/v1/x", Some("bytes=5-"))
        );
        let h = Head::parse(b"HEAD / HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!((h.method, h.range), ("HEAD", None));
        for bad in [
            &b"GET /x HTTP/2\r\n\r\n"[..],
            b"GET  /x HTTP/1.1\r\n\r\n",
            b"GET x HTTP/1.1\r\n\r\n",
            b"GET /x HTTP/1.1 extra\r\n\r\n",
            b"GET /x HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET /x HTTP/1.1\r\nBad Name: v\r\n\r\n",
            b"GET /x HTTP/1.1\r\n",
            b"\xff /x HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(Head::parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn ranges_are_read_strictly() {
        assert_eq!(parse_range("bytes=0-", 10), Ok((0, 10)));
        assert_eq!(parse_range("bytes=4-", 10), Ok((4, 10)));
        assert_eq!(parse_range("bytes=4-5", 10), Ok((4, 6)));
        assert_eq!(parse_range("bytes=4-99", 10), Ok((4, 10)));
        assert_eq!(parse_range("bytes=10-", 10), Err(RangeError::Unsatisfiable));
        for bad in [
            "bytes=-5",
            "bytes=5-4",
            "items=0-",
            "bytes=0-1,3-4",
            "bytes=x-",
        ] {
            assert_eq!(parse_range(bad, 10), Err(RangeError::Malformed), "{bad}");
        }
    }
}
