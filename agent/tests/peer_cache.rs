//! The LAN peer cache over real sockets on loopback: the server serves only verified
//! artifacts by SHA-256 and stays within its bounds; a fetch takes an artifact from a peer,
//! verified, and falls back to the coordinator when a peer misbehaves, keeping none of
//! its bytes; three boxes fetching at once get the artifact from the coordinator once.

#[path = "fixtures/support.rs"]
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fleetwave_agent::config::PeersConfig;
use fleetwave_agent::executor::download::{self, ArtifactSource};
use fleetwave_agent::peer::server::PeerServer;
use fleetwave_agent::peer::{Activity, Board, Peers};
use fleetwave_shared::Artifact;
use support::{Behaviour, FileServer, artifact};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ART_PATH: &str = "/v1/artifacts/app";

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 253) as u8).collect()
}

/// Test settings: short timeouts, a minimum rate a loopback peer easily beats.
fn config(addresses: Vec<String>) -> PeersConfig {
    PeersConfig {
        enabled: true,
        listen: "127.0.0.1:0".into(),
        addresses,
        max_connections: 8,
        timeout_secs: 1,
        min_bytes_per_sec: 1_000_000,
        wait_secs: 60,
    }
}

/// Stages `bytes` as a verified artifact in `staging` (as a finished download does).
fn stage(staging: &Path, bytes: &[u8]) -> Artifact {
    let art = artifact("app.bin", ART_PATH, bytes);
    let path = download::staged_path(staging, &art.sha256);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    art
}

async fn start_server(staging: &Path, board: Board, cfg: &PeersConfig) -> SocketAddr {
    let server = PeerServer::bind(cfg, staging, board).await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run());
    addr
}

/// One raw HTTP exchange: the request as written, the whole answer until close.
async fn raw(addr: SocketAddr, request: &str) -> (u16, String, Vec<u8>) {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    sock.read_to_end(&mut answer).await.unwrap();
    split_answer(&answer)
}

fn split_answer(answer: &[u8]) -> (u16, String, Vec<u8>) {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(answer)));
    let head = String::from_utf8_lossy(&answer[..end]).to_string();
    let status = head[9..12].parse().unwrap();
    (status, head, answer[end + 4..].to_vec())
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: peer\r\n\r\n")
}

#[tokio::test]
async fn a_staged_artifact_is_served_whole_and_by_range() {
    let staging = tempfile::tempdir().unwrap();
    let bytes = payload(100_000);
    let art = stage(staging.path(), &bytes);
    let addr = start_server(staging.path(), Board::default(), &config(vec![])).await;
    let path = format!("/v1/peer/artifacts/{}", art.sha256);

    let (status, _, body) = raw(addr, &get(&path)).await;
    assert_eq!(status, 200);
    assert_eq!(body, bytes);

    let (status, head, body) = raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: peer\r\nRange: bytes=60000-\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 206);
    assert!(
        head.contains("Content-Range: bytes 60000-99999/100000"),
        "{head}"
    );
    assert_eq!(body, &bytes[60_000..]);

    let (status, _, body) = raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nRange: bytes=10-19\r\n\r\n"),
    )
    .await;
    assert_eq!((status, body.as_slice()), (206, &bytes[10..20]));

    let (status, head, _) = raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nRange: bytes=100000-\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 416);
    assert!(head.contains("bytes */100000"), "{head}");

    let (status, head, body) = raw(addr, &format!("HEAD {path} HTTP/1.1\r\n\r\n")).await;
    assert_eq!(status, 200);
    assert!(head.contains("Content-Length: 100000"), "{head}");
    assert!(body.is_empty());
}

#[tokio::test]
async fn the_server_refuses_everything_but_a_verified_artifact_by_sha256() {
    let staging = tempfile::tempdir().unwrap();
    let bytes = payload(1000);
    let art = stage(staging.path(), &bytes);
    let dir = download::artifacts_dir(staging.path());
    // A partial download, a secret beside the staging directory, and a symlink named
    // like an artifact: none of them may be served.
    let partial = payload(500);
    let partial_sha = support::sha256(&partial);
    std::fs::write(download::part_path(staging.path(), &partial_sha), &partial).unwrap();
    std::fs::write(staging.path().join("secret"), b"device key").unwrap();
    let link_sha = "f".repeat(64);
    std::os::unix::fs::symlink(staging.path().join("secret"), dir.join(&link_sha)).unwrap();
    let addr = start_server(staging.path(), Board::default(), &config(vec![])).await;

    let sha = &art.sha256;
    let cases: Vec<(String, u16, &str)> = vec![
        (
            get(&format!("/v1/peer/artifacts/{partial_sha}.part")),
            400,
            "bad_digest",
        ),
        (
            get(&format!("/v1/peer/artifacts/{partial_sha}")),
            404,
            "not_found",
        ),
        (get("/v1/peer/artifacts/../secret"), 400, "bad_digest"),
        (get("/v1/peer/artifacts/..%2fsecret"), 400, "bad_digest"),
        (
            get(&format!("/v1/peer/artifacts/{sha}/../../secret")),
            400,
            "bad_digest",
        ),
        (
            get(&format!("/v1/peer/artifacts/{}", sha.to_uppercase())),
            400,
            "bad_digest",
        ),
        (
            get(&format!("/v1/peer/artifacts/{sha}?x=1")),
            400,
            "bad_digest",
        ),
        (get("/v1/peer/artifacts/"), 400, "bad_digest"),
        (get("/v1/peer/artifacts"), 404, "not_found"),
        (get("/"), 404, "not_found"),
        (get("/secret"), 404, "not_found"),
        (get(&format!("/v1/artifacts/{sha}")), 404, "not_found"),
        (
            get(&format!("/v1/peer/artifacts/{link_sha}")),
            404,
            "not_found",
        ),
        (
            format!("DELETE /v1/peer/artifacts/{sha} HTTP/1.1\r\n\r\n"),
            405,
            "method_not_allowed",
        ),
        (
            format!("GET /v1/peer/artifacts/{sha} HTTP/1.1\r\nRange: bytes=0-1,5-6\r\n\r\n"),
            400,
            "bad_range",
        ),
        ("NOT HTTP AT ALL\r\n\r\n".to_string(), 400, "bad_request"),
        (
            format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9000)),
            431,
            "head_too_large",
        ),
    ];
    for (request, want, code) in cases {
        let (status, _, body) = raw(addr, &request).await;
        let body = String::from_utf8_lossy(&body).to_string();
        let shown = &request[..request.len().min(80)];
        assert_eq!(status, want, "{shown}: {body}");
        assert!(body.contains(code), "{shown}: {body}");
        assert!(!body.contains("device key"), "{shown}: {body}");
    }
    // The real one still works.
    let (status, _, body) = raw(addr, &get(&format!("/v1/peer/artifacts/{sha}"))).await;
    assert_eq!((status, body), (200, bytes));
}

#[tokio::test]
async fn the_server_says_when_it_is_downloading_an_artifact_itself() {
    let staging = tempfile::tempdir().unwrap();
    let board = Board::default();
    let addr = start_server(staging.path(), board.clone(), &config(vec![])).await;
    let sha = "ab".repeat(32);
    let path = format!("/v1/peer/artifacts/{sha}");
    let claim = board.announce(&sha, Activity::Fetching);
    let (status, head, _) = raw(addr, &get(&path)).await;
    assert_eq!(status, 503);
    assert!(head.contains("fleetwave-peer: fetching"), "{head}");
    assert!(head.contains("Retry-After: 2"), "{head}");
    drop(claim);
    let (status, _, _) = raw(addr, &get(&path)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_server_stays_within_its_connection_bound() {
    let staging = tempfile::tempdir().unwrap();
    let bytes = payload(1000);
    let art = stage(staging.path(), &bytes);
    let mut cfg = config(vec![]);
    cfg.max_connections = 2;
    cfg.timeout_secs = 120; // idle connections stay until the test closes them
    let addr = start_server(staging.path(), Board::default(), &cfg).await;

    // Two peers connect and say nothing: they hold both slots.
    let idle_a = TcpStream::connect(addr).await.unwrap();
    let _idle_b = TcpStream::connect(addr).await.unwrap();
    // A third is answered 503 at once and closed.
    let mut third = TcpStream::connect(addr).await.unwrap();
    let mut answer = Vec::new();
    third.read_to_end(&mut answer).await.unwrap();
    let (status, head, _) = split_answer(&answer);
    assert_eq!(status, 503, "{head}");
    assert!(
        !head.contains("fleetwave-peer"),
        "busy is not a download in progress"
    );

    // One idle peer leaves: its slot serves the next request.
    drop(idle_a);
    let path = format!("/v1/peer/artifacts/{}", art.sha256);
    let body = fleetwave_testkit::eventually("a freed slot to serve a request", || async {
        let (status, _, body) = raw(addr, &get(&path)).await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(body, bytes);
}

#[tokio::test]
async fn an_idle_peer_is_disconnected_after_the_timeout() {
    let staging = tempfile::tempdir().unwrap();
    let mut cfg = config(vec![]);
    cfg.max_connections = 1;
    let addr = start_server(staging.path(), Board::default(), &cfg).await;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut answer = Vec::new();
    // The server closes it (timeout_secs = 1) without answering; read_to_end returns.
    idle.read_to_end(&mut answer).await.unwrap();
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
}

/// How a hostile peer answers.
#[derive(Debug, Clone, Copy)]
enum Hostile {
    /// The right length, one byte changed (206 from the asked range).
    WrongBytes,
    /// The artifact, then bytes forever, with no length.
    Endless,
    /// One byte every 300 ms.
    Slow,
    /// A `Content-Length` one above the signed length.
    WrongLength,
    /// Half the bytes, then closes.
    Short,
    /// HTTP 500.
    Error500,
    /// 200 with the whole artifact although a range was asked.
    IgnoresRange,
    /// Says it is downloading, forever.
    AlwaysFetching,
}

/// A hostile peer on loopback; counts the requests it got.
async fn hostile_peer(bytes: Vec<u8>, how: Hostile) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&asked);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let bytes = bytes.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                let from: usize = head
                    .split("range: bytes=")
                    .nth(1)
                    .and_then(|r| r.split('-').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let total = bytes.len();
                let status = if from > 0 {
                    format!(
                        "206 Partial Content\r\nContent-Range: bytes {from}-{}/{total}",
                        total - 1
                    )
                } else {
                    "200 OK".to_string()
                };
                let body = &bytes[from..];
                let _ = match how {
                    Hostile::WrongBytes => {
                        let mut wrong = body.to_vec();
                        let last = wrong.len() - 1;
                        wrong[last] ^= 0xff;
                        let h = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n", wrong.len());
                        sock.write_all(&[h.as_bytes(), &wrong].concat()).await
                    }
                    Hostile::Endless => {
                        let h = format!("HTTP/1.1 {status}\r\nConnection: close\r\n\r\n");
                        let _ = sock.write_all(h.as_bytes()).await;
                        let _ = sock.write_all(body).await;
                        let junk = vec![b'X'; 64 * 1024];
                        while sock.write_all(&junk).await.is_ok() {}
                        Ok(())
                    }
                    Hostile::Slow => {
                        let h = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n", body.len());
                        let _ = sock.write_all(h.as_bytes()).await;
                        for b in body {
                            if sock.write_all(&[*b]).await.is_err() {
                                break;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                        }
                        Ok(())
                    }
                    Hostile::WrongLength => {
                        let h = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n", body.len() + 1);
                        sock.write_all(&[h.as_bytes(), body, b"X"].concat()).await
                    }
                    Hostile::Short => {
                        let h = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n", body.len());
                        sock.write_all(&[h.as_bytes(), &body[..body.len() / 2]].concat()).await
                    }
                    Hostile::Error500 => {
                        sock.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n").await
                    }
                    Hostile::IgnoresRange => {
                        let h = format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n");
                        sock.write_all(&[h.as_bytes(), &bytes].concat()).await
                    }
                    Hostile::AlwaysFetching => {
                        sock.write_all(b"HTTP/1.1 503 Service Unavailable\r\nfleetwave-peer: fetching\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n").await
                    }
                };
                let _ = sock.shutdown().await;
            });
        }
    });
    (addr.to_string(), asked)
}

/// Fetches `art` into `staging` with `peers`, the coordinator being `coordinator`.
async fn fetch_with(
    coordinator: &FileServer,
    peers: Option<&Peers>,
    art: &Artifact,
    staging: &Path,
) -> std::path::PathBuf {
    let client = coordinator.client();
    let source = ArtifactSource {
        client: &client,
        base_url: &coordinator.base_url,
        bearer_token: Some("coordinator-token"),
        max_bytes_per_sec: 0,
        peers,
    };
    download::fetch(&source, art, staging).await.unwrap()
}

/// Bytes the coordinator sent for `path`, from the requests it saw.
fn coordinator_bytes(coordinator: &FileServer, path: &str, length: u64) -> u64 {
    coordinator
        .seen()
        .iter()
        .filter(|s| s.path == path)
        .map(|s| {
            let from = s
                .range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            length - from
        })
        .sum()
}

#[tokio::test]
async fn a_peer_that_holds_the_artifact_serves_it_and_the_coordinator_is_not_asked() {
    let bytes = payload(300_000);
    let holder = tempfile::tempdir().unwrap();
    let art = stage(holder.path(), &bytes);
    let peer = start_server(holder.path(), Board::default(), &config(vec![])).await;
    let coordinator = FileServer::start().await;
    coordinator.put(ART_PATH, bytes.clone(), Behaviour::Normal);

    let staging = tempfile::tempdir().unwrap();
    // An earlier run left a part: the peer is asked for the rest only.
    let part = download::part_path(staging.path(), &art.sha256);
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, &bytes[..120_000]).unwrap();
    let peers = Peers::new(&config(vec![peer.to_string()]), Board::default()).unwrap();
    let path = fetch_with(&coordinator, Some(&peers), &art, staging.path()).await;
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert!(!part.exists());
    assert!(coordinator.seen().is_empty(), "{:?}", coordinator.seen());
}

#[tokio::test]
async fn a_hostile_peer_is_dropped_and_the_coordinator_serves_the_artifact() {
    let bytes = payload(200_000);
    let cases = [
        Hostile::WrongBytes,
        Hostile::Endless,
        Hostile::Slow,
        Hostile::WrongLength,
        Hostile::Short,
        Hostile::Error500,
    ];
    for how in cases {
        let (peer, asked) = hostile_peer(bytes.clone(), how).await;
        let coordinator = FileServer::start().await;
        coordinator.put(ART_PATH, bytes.clone(), Behaviour::Normal);
        let staging = tempfile::tempdir().unwrap();
        let art = artifact("app.bin", ART_PATH, &bytes);
        let peers = Peers::new(&config(vec![peer]), Board::default()).unwrap();
        let path = fetch_with(&coordinator, Some(&peers), &art, staging.path()).await;
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{how:?}");
        assert!(
            !download::part_path(staging.path(), &art.sha256).exists(),
            "{how:?}"
        );
        assert_eq!(
            asked.load(Ordering::SeqCst),
            1,
            "{how:?}: asked once, then dropped"
        );
        let seen = coordinator.seen();
        assert_eq!(seen.len(), 1, "{how:?}: {seen:?}");
        // Nothing the peer sent was kept: the coordinator sent the whole artifact.
        assert_eq!(seen[0].range, None, "{how:?}");
        assert_eq!(
            seen[0].authorization.as_deref(),
            Some("Bearer coordinator-token")
        );
    }
}

#[tokio::test]
async fn a_hostile_peers_bytes_are_cut_off_and_the_download_resumes_where_it_was() {
    let bytes = payload(200_000);
    for how in [Hostile::WrongBytes, Hostile::Short, Hostile::IgnoresRange] {
        let (peer, asked) = hostile_peer(bytes.clone(), how).await;
        let coordinator = FileServer::start().await;
        coordinator.put(ART_PATH, bytes.clone(), Behaviour::Normal);
        let staging = tempfile::tempdir().unwrap();
        let art = artifact("app.bin", ART_PATH, &bytes);
        let part = download::part_path(staging.path(), &art.sha256);
        std::fs::create_dir_all(part.parent().unwrap()).unwrap();
        std::fs::write(&part, &bytes[..50_000]).unwrap();
        let peers = Peers::new(&config(vec![peer]), Board::default()).unwrap();
        let path = fetch_with(&coordinator, Some(&peers), &art, staging.path()).await;
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{how:?}");
        assert_eq!(asked.load(Ordering::SeqCst), 1, "{how:?}");
        let seen = coordinator.seen();
        assert_eq!(seen.len(), 1, "{how:?}");
        assert_eq!(seen[0].range.as_deref(), Some("bytes=50000-"), "{how:?}");
    }
}

#[tokio::test]
async fn a_peer_that_is_always_downloading_is_waited_for_at_most_wait_secs() {
    let bytes = payload(10_000);
    let (peer, asked) = hostile_peer(bytes.clone(), Hostile::AlwaysFetching).await;
    let coordinator = FileServer::start().await;
    coordinator.put(ART_PATH, bytes.clone(), Behaviour::Normal);
    let staging = tempfile::tempdir().unwrap();
    let art = artifact("app.bin", ART_PATH, &bytes);
    let mut cfg = config(vec![peer]);
    cfg.wait_secs = 2;
    let peers = Peers::new(&cfg, Board::default()).unwrap();
    let path = fetch_with(&coordinator, Some(&peers), &art, staging.path()).await;
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert!(
        asked.load(Ordering::SeqCst) >= 2,
        "it was asked again while waiting"
    );
    assert_eq!(coordinator.seen().len(), 1);
}

#[tokio::test]
async fn a_good_peer_after_a_hostile_one_serves_the_artifact() {
    let bytes = payload(150_000);
    let (bad, bad_asked) = hostile_peer(bytes.clone(), Hostile::WrongBytes).await;
    let holder = tempfile::tempdir().unwrap();
    let art = stage(holder.path(), &bytes);
    let good = start_server(holder.path(), Board::default(), &config(vec![])).await;
    let coordinator = FileServer::start().await;
    coordinator.put(ART_PATH, bytes.clone(), Behaviour::Normal);
    let staging = tempfile::tempdir().unwrap();
    let peers = Peers::new(&config(vec![bad, good.to_string()]), Board::default()).unwrap();
    let path = fetch_with(&coordinator, Some(&peers), &art, staging.path()).await;
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(bad_asked.load(Ordering::SeqCst), 1);
    assert!(coordinator.seen().is_empty());
}

/// Three boxes of one site, each serving its peers, fetch one artifact at the same time:
/// the coordinator sends it once. Prints the figure (docs/benchmarks.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_boxes_fetching_at_once_download_the_artifact_from_the_coordinator_once() {
    let length = 8 * 1024 * 1024;
    let bytes = payload(length);
    let art = artifact("app.bin", ART_PATH, &bytes);
    let coordinator = FileServer::start().await;
    coordinator.put(ART_PATH, bytes.clone(), Behaviour::Normal);

    let boxes: Vec<(tempfile::TempDir, Board)> = (0..3)
        .map(|_| (tempfile::tempdir().unwrap(), Board::default()))
        .collect();
    let mut addrs = Vec::new();
    for (dir, board) in &boxes {
        addrs.push(start_server(dir.path(), board.clone(), &config(vec![])).await);
    }
    let peers: Vec<Peers> = boxes
        .iter()
        .enumerate()
        .map(|(i, (_, board))| {
            let others = addrs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, a)| a.to_string())
                .collect();
            Peers::new(&config(others), board.clone()).unwrap()
        })
        .collect();
    let started = std::time::Instant::now();
    let fetches = boxes
        .iter()
        .zip(&peers)
        .map(|((dir, _), p)| fetch_with(&coordinator, Some(p), &art, dir.path()));
    let paths = futures_util::future::join_all(fetches).await;
    let elapsed = started.elapsed();
    for path in &paths {
        assert_eq!(std::fs::read(path).unwrap(), bytes);
    }
    let served = coordinator_bytes(&coordinator, ART_PATH, length as u64);

    // The same three boxes without the cache, for comparison.
    let alone = FileServer::start().await;
    alone.put(ART_PATH, bytes.clone(), Behaviour::Normal);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    futures_util::future::join_all(
        dirs.iter()
            .map(|d| fetch_with(&alone, None, &art, d.path())),
    )
    .await;
    let without = coordinator_bytes(&alone, ART_PATH, length as u64);
    println!(
        "peer cache: 3 boxes, one {length}-byte artifact: the coordinator sent {served} bytes ({:.2} artifacts) in {elapsed:.1?}; without the cache {without} bytes ({:.2} artifacts)",
        served as f64 / length as f64,
        without as f64 / length as f64,
    );
    assert_eq!(served, length as u64, "{:?}", coordinator.seen());
}
