//! Artifact download against a real HTTP server on loopback: resume with `Range`, refusal of
//! tampered and oversized artifacts, the token kept off mirrors.

#[path = "fixtures/support.rs"]
mod support;

use fleetwave_agent::executor::download::{self, ArtifactSource};
use support::{Behaviour, FileServer, artifact};

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn a_partial_download_left_on_disk_is_resumed_with_a_range_request() {
    let server = FileServer::start().await;
    let bytes = payload(200_000);
    server.put("/v1/artifacts/a", bytes.clone(), Behaviour::Normal);
    let staging = tempfile::tempdir().unwrap();
    let art = artifact("app.bin", "/v1/artifacts/a", &bytes);

    // An earlier run (killed) left the first 80,000 bytes.
    let part = download::part_path(staging.path(), &art.sha256);
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, &bytes[..80_000]).unwrap();

    let client = server.client();
    let src = ArtifactSource {
        client: &client,
        base_url: &server.base_url,
        bearer_token: Some("tok"),
        max_bytes_per_sec: 0,
        peers: None,
    };
    let path = download::fetch(&src, &art, staging.path()).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert!(!part.exists(), "the .part file is renamed into place");
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].range.as_deref(), Some("bytes=80000-"));
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer tok"));

    // Idempotent: a verified file is used again without a request.
    let again = download::fetch(&src, &art, staging.path()).await.unwrap();
    assert_eq!(again, path);
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn a_cut_connection_keeps_the_partial_file_and_the_next_call_resumes_it() {
    let server = FileServer::start().await;
    let bytes = payload(150_000);
    server.put("/art", bytes.clone(), Behaviour::CutAfter(50_000));
    let staging = tempfile::tempdir().unwrap();
    let art = artifact("app.bin", "/art", &bytes);
    let client = server.client();
    let src = ArtifactSource {
        client: &client,
        base_url: &server.base_url,
        bearer_token: None,
        max_bytes_per_sec: 0,
        peers: None,
    };
    let err = download::fetch(&src, &art, staging.path())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "download_failed", "{err}");
    assert!(err.is_retryable());
    let part = download::part_path(staging.path(), &art.sha256);
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0 && kept < bytes.len() as u64, "kept {kept} bytes");

    server.set_behaviour("/art", Behaviour::Normal);
    let path = download::fetch(&src, &art, staging.path()).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), bytes);
    let seen = server.seen();
    assert_eq!(
        seen[1].range.as_deref(),
        Some(format!("bytes={kept}-").as_str())
    );
}

#[tokio::test]
async fn a_server_that_ignores_range_is_downloaded_from_the_start() {
    let server = FileServer::start().await;
    let bytes = payload(10_000);
    server.put("/art", bytes.clone(), Behaviour::IgnoreRange);
    let staging = tempfile::tempdir().unwrap();
    let art = artifact("app.bin", "/art", &bytes);
    let part = download::part_path(staging.path(), &art.sha256);
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, &bytes[..4_000]).unwrap();
    let client = server.client();
    let src = ArtifactSource {
        client: &client,
        base_url: &server.base_url,
        bearer_token: None,
        max_bytes_per_sec: 0,
        peers: None,
    };
    let path = download::fetch(&src, &art, staging.path()).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), bytes);
}

#[tokio::test]
async fn a_tampered_artifact_is_refused_and_deleted() {
    let server = FileServer::start().await;
    let good = payload(5_000);
    let mut bad = good.clone();
    bad[100] ^= 0xff;
    server.put("/art", bad, Behaviour::Normal);
    let staging = tempfile::tempdir().unwrap();
    let art = artifact("app.bin", "/art", &good);
    let client = server.client();
    let src = ArtifactSource {
        client: &client,
        base_url: &server.base_url,
        bearer_token: None,
        max_bytes_per_sec: 0,
        peers: None,
    };
    let err = download::fetch(&src, &art, staging.path())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "artifact_mismatch", "{err}");
    assert!(err.to_string().contains("sha256"), "{err}");
    assert!(!download::part_path(staging.path(), &art.sha256).exists());
    assert!(!download::staged_path(staging.path(), &art.sha256).exists());
}

#[tokio::test]
async fn more_bytes_than_the_signed_length_are_refused() {
    for behaviour in [
        Behaviour::ExtraBytes(10),
        Behaviour::ExtraBytesNoLength(70_000),
    ] {
        let server = FileServer::start().await;
        let bytes = payload(20_000);
        server.put("/art", bytes.clone(), behaviour);
        let staging = tempfile::tempdir().unwrap();
        let art = artifact("app.bin", "/art", &bytes);
        let client = server.client();
        let src = ArtifactSource {
            client: &client,
            base_url: &server.base_url,
            bearer_token: None,
            max_bytes_per_sec: 0,
            peers: None,
        };
        let err = download::fetch(&src, &art, staging.path())
            .await
            .unwrap_err();
        assert_eq!(err.code(), "artifact_too_large", "{behaviour:?}: {err}");
        assert!(!download::part_path(staging.path(), &art.sha256).exists());
        assert!(!download::staged_path(staging.path(), &art.sha256).exists());
    }
}

#[tokio::test]
async fn a_missing_artifact_is_a_download_failure_naming_the_status() {
    let server = FileServer::start().await;
    let staging = tempfile::tempdir().unwrap();
    let art = artifact("app.bin", "/nope", b"x");
    let client = server.client();
    let src = ArtifactSource {
        client: &client,
        base_url: &server.base_url,
        bearer_token: None,
        max_bytes_per_sec: 0,
        peers: None,
    };
    let err = download::fetch(&src, &art, staging.path())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "download_failed");
    assert!(err.to_string().contains("404"), "{err}");
    assert!(err.to_string().contains("no such artifact"), "{err}");
}

#[tokio::test]
async fn the_session_token_is_not_sent_to_a_mirror() {
    let coordinator = FileServer::start().await;
    let mirror = FileServer::start().await;
    let bytes = payload(1_000);
    mirror.put("/mirror/app.bin", bytes.clone(), Behaviour::Normal);
    let staging = tempfile::tempdir().unwrap();
    let art = artifact(
        "app.bin",
        &format!("{}/mirror/app.bin", mirror.base_url),
        &bytes,
    );
    let client = mirror.client();
    let src = ArtifactSource {
        client: &client,
        base_url: &coordinator.base_url,
        bearer_token: Some("secret"),
        max_bytes_per_sec: 0,
        peers: None,
    };
    download::fetch(&src, &art, staging.path()).await.unwrap();
    let seen = mirror.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authorization, None);
    assert!(coordinator.seen().is_empty());
}

#[tokio::test]
async fn an_imported_bundle_file_is_verified_like_a_download() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = payload(3_000);
    let art = artifact("app.bin", "/v1/artifacts/x", &bytes);
    let good = dir.path().join("good");
    std::fs::write(&good, &bytes).unwrap();
    let staging = dir.path().join("staging");
    let p = download::import(&good, &art, &staging).await.unwrap();
    assert_eq!(std::fs::read(p).unwrap(), bytes);

    let bad = dir.path().join("bad");
    std::fs::write(&bad, &bytes[1..]).unwrap();
    let mut other = art.clone();
    other.sha256 = support::sha256(b"something else");
    let err = download::import(&bad, &other, &staging).await.unwrap_err();
    assert_eq!(err.code(), "artifact_mismatch");
}

/// `download.max_bytes_per_sec`: reading is paced, so the download cannot finish sooner
/// than its size over the limit. Prints the rate measured (no upper bound on time is
/// asserted: a busy machine is only ever slower).
#[tokio::test]
async fn the_bandwidth_limit_paces_the_download() {
    let server = FileServer::start().await;
    let bytes = payload(600_000);
    server.put("/big", bytes.clone(), Behaviour::Normal);
    let staging = tempfile::tempdir().unwrap();
    let art = artifact("big.bin", "/big", &bytes);
    let client = server.client();
    let limit = 300_000u64;
    let src = ArtifactSource {
        client: &client,
        base_url: &server.base_url,
        bearer_token: None,
        max_bytes_per_sec: limit,
        peers: None,
    };
    let started = std::time::Instant::now();
    let path = download::fetch(&src, &art, staging.path()).await.unwrap();
    let took = started.elapsed().as_secs_f64();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let rate = bytes.len() as f64 / took;
    println!(
        "bandwidth limit {limit} B/s: {} bytes in {took:.2} s = {rate:.0} B/s ({:+.1} % of the limit)",
        bytes.len(),
        (rate / limit as f64 - 1.0) * 100.0
    );
    // The last chunk may land up to one chunk early; never much faster than the limit.
    assert!(
        rate <= limit as f64 * 1.10,
        "{rate:.0} B/s over a {limit} B/s limit"
    );
}

/// The coordinator's `307` to an object store is followed by the download code: the range
/// goes along, the token does not.
#[tokio::test]
async fn a_redirect_to_the_object_store_is_followed_without_the_token() {
    let coordinator = FileServer::start().await;
    let store = FileServer::start().await;
    let bytes = payload(30_000);
    store.put(
        "/bucket/a?X-Amz-Signature=s3cr3t",
        bytes.clone(),
        Behaviour::Normal,
    );
    coordinator.redirect(
        "/v1/artifacts/a",
        &format!("{}/bucket/a?X-Amz-Signature=s3cr3t", store.base_url),
    );
    let staging = tempfile::tempdir().unwrap();
    let art = artifact("app.bin", "/v1/artifacts/a", &bytes);
    let part = download::part_path(staging.path(), &art.sha256);
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, &bytes[..10_000]).unwrap();
    let client = coordinator.client();
    let src = ArtifactSource {
        client: &client,
        base_url: &coordinator.base_url,
        bearer_token: Some("tok"),
        max_bytes_per_sec: 0,
        peers: None,
    };
    let path = download::fetch(&src, &art, staging.path()).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), bytes);
    let at_coordinator = coordinator.seen();
    assert_eq!(at_coordinator.len(), 1);
    assert_eq!(
        at_coordinator[0].authorization.as_deref(),
        Some("Bearer tok")
    );
    let at_store = store.seen();
    assert_eq!(at_store.len(), 1);
    assert_eq!(at_store[0].path, "/bucket/a?X-Amz-Signature=s3cr3t");
    assert_eq!(
        at_store[0].authorization, None,
        "the token stays on the coordinator"
    );
    assert_eq!(at_store[0].range.as_deref(), Some("bytes=10000-"));
}

/// A store that refuses (here 404) or cannot be reached: the coordinator is asked to stream
/// the bytes itself (`?direct=1`, with the token); the presigned URL's signature appears in
/// no error.
#[tokio::test]
async fn a_failing_object_store_falls_back_to_the_coordinator_streaming_the_artifact() {
    let coordinator = FileServer::start().await;
    let store = FileServer::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let bytes = payload(20_000);
    coordinator.put("/v1/artifacts/a?direct=1", bytes.clone(), Behaviour::Normal);
    coordinator.put("/v1/artifacts/b?direct=1", bytes.clone(), Behaviour::Normal);
    // a: the store answers 404; b: nothing listens where the store should be.
    coordinator.redirect(
        "/v1/artifacts/a",
        &format!("{}/bucket/a?sig=x", store.base_url),
    );
    coordinator.redirect(
        "/v1/artifacts/b",
        &format!("http://{closed}/bucket/b?sig=x"),
    );
    let client = coordinator.client();
    let src = ArtifactSource {
        client: &client,
        base_url: &coordinator.base_url,
        bearer_token: Some("tok"),
        max_bytes_per_sec: 0,
        peers: None,
    };
    for url in ["/v1/artifacts/a", "/v1/artifacts/b"] {
        let staging = tempfile::tempdir().unwrap();
        let art = artifact("app.bin", url, &bytes);
        let path = download::fetch(&src, &art, staging.path()).await.unwrap();
        assert_eq!(std::fs::read(path).unwrap(), bytes, "{url}");
    }
    let seen: Vec<_> = coordinator
        .seen()
        .into_iter()
        .map(|s| (s.path, s.authorization))
        .collect();
    let tok = Some("Bearer tok".to_string());
    assert_eq!(
        seen,
        vec![
            ("/v1/artifacts/a".to_string(), tok.clone()),
            ("/v1/artifacts/a?direct=1".to_string(), tok.clone()),
            ("/v1/artifacts/b".to_string(), tok.clone()),
            ("/v1/artifacts/b?direct=1".to_string(), tok),
        ]
    );
}

/// When the coordinator cannot stream either, the error names the coordinator's URL and
/// what the store said, without the presigned signature; a redirect loop ends.
#[tokio::test]
async fn a_store_and_coordinator_both_failing_is_a_download_failure_without_the_signature() {
    let coordinator = FileServer::start().await;
    let store = FileServer::start().await;
    let bytes = payload(1_000);
    coordinator.redirect(
        "/v1/artifacts/a",
        &format!("{}/bucket/a?sig=s3cr3t", store.base_url),
    );
    coordinator.redirect("/loop", "/loop");
    let client = coordinator.client();
    let src = ArtifactSource {
        client: &client,
        base_url: &coordinator.base_url,
        bearer_token: Some("tok"),
        max_bytes_per_sec: 0,
        peers: None,
    };
    let staging = tempfile::tempdir().unwrap();
    let err = download::fetch(
        &src,
        &artifact("app.bin", "/v1/artifacts/a", &bytes),
        staging.path(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), "download_failed");
    let text = err.to_string();
    assert!(text.contains("404"), "{text}");
    assert!(!text.contains("s3cr3t"), "{text}");
    let err = download::fetch(&src, &artifact("app.bin", "/loop", &bytes), staging.path())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("more than 5 redirects"), "{err}");
}
