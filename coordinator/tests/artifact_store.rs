//! Artifacts in a real S3-compatible object store (SeaweedFS on loopback, over TLS signed by
//! the test's own CA): uploads are hashed before they appear in the bucket, downloads are
//! redirected to presigned URLs that serve the right bytes and ranges, `?direct=1` streams
//! through the coordinator, bundles read from the bucket, and a coordinator configured with a
//! wrong bucket or wrong credentials refuses to start and says why.

mod common;

use common::Harness;
use fleetwave_testkit::weed::{ACCESS_KEY, SECRET_KEY, Weed};
use reqwest::StatusCode;
use serde_json::json;

/// A CA and a certificate for 127.0.0.1 signed by it (the object store's TLS), as files.
fn store_tls(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &Issuer::new(ca, ca_key)).unwrap();
    let (ca_path, cert, key) = (
        dir.join("s3-ca.pem"),
        dir.join("s3.pem"),
        dir.join("s3.key"),
    );
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    std::fs::write(&cert, leaf_cert.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    (ca_path, cert, key)
}

struct Setup {
    _dir: tempfile::TempDir,
    weed: Weed,
    ca: std::path::PathBuf,
    secret_file: std::path::PathBuf,
}

fn start_store() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = store_tls(dir.path());
    let weed = Weed::start(&dir.path().join("weed"), &cert, &key, "artifacts").unwrap();
    let secret_file = dir.path().join("s3-secret");
    std::fs::write(&secret_file, format!("{SECRET_KEY}\n")).unwrap();
    Setup {
        _dir: dir,
        weed,
        ca,
        secret_file,
    }
}

fn s3_config(s: &Setup, bucket: &str, redirect: bool) -> String {
    format!(
        "\n[artifacts]\nstore = \"s3\"\n\n[artifacts.s3]\nbucket = \"{bucket}\"\nendpoint = \"{}\"\n\
         access_key_id = \"{ACCESS_KEY}\"\nsecret_access_key_file = \"{}\"\nca_file = \"{}\"\n\
         prefix = \"fleet-a/artifacts\"\nredirect = {redirect}\n",
        s.weed.https_endpoint,
        s.secret_file.display(),
        s.ca.display()
    )
}

async fn metric(h: &Harness, name: &str) -> u64 {
    let text = h
        .http
        .get(h.url("/metrics"))
        .bearer_auth(&h.admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("fleetwave_{name}_total ")))
        .unwrap_or_else(|| panic!("no fleetwave_{name}_total in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

async fn upload(h: &Harness, sha: &str, bytes: Vec<u8>) -> StatusCode {
    h.http
        .put(h.url(&format!("/v1/artifacts/{sha}")))
        .bearer_auth(&h.admin)
        .body(bytes)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_live_in_the_bucket_and_agents_are_redirected_to_presigned_urls() {
    let store = start_store();
    let h = Harness::with_config(&s3_config(&store, "artifacts", true)).await;
    let store_client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&store.ca).unwrap()).unwrap(),
        )
        .build()
        .unwrap();

    // 1 MiB and a bit, so the upload is more than one part of the buffered writer.
    let artifact: Vec<u8> = (0..1_100_000u32).map(|i| (i % 251) as u8).collect();
    let sha = fleetwave_shared::sha256_hex(&artifact);

    // Bytes that do not match their name never reach the bucket.
    assert_eq!(
        upload(&h, &sha, b"not the artifact".to_vec()).await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let res = h
        .http
        .get(h.url(&format!("/v1/artifacts/{sha}")))
        .bearer_auth(&h.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    assert_eq!(
        upload(&h, &sha, artifact.clone()).await,
        StatusCode::CREATED
    );
    // Nothing of the upload stays on the coordinator's disk.
    let uploads = h.dir.path().join("data").join("artifact-uploads");
    let left: Vec<_> = std::fs::read_dir(&uploads)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", uploads.display());

    // A download is a redirect to a presigned URL of the store, which serves the bytes
    // (and ranges of them) without the coordinator.
    let served_before = metric(&h, "artifact_bytes_served").await;
    let res = h
        .http
        .get(h.url(&format!("/v1/artifacts/{sha}")))
        .bearer_auth(&h.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let location = res.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with(&format!(
            "{}/artifacts/fleet-a/artifacts/{sha}?",
            store.weed.https_endpoint
        )) && location.contains("X-Amz-Signature="),
        "{location}"
    );
    let got = store_client.get(&location).send().await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap().as_ref(), &artifact[..]);
    let got = store_client
        .get(&location)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(got.bytes().await.unwrap().as_ref(), &artifact[1000..2000]);
    // The signature covers the object: the same URL for another key is refused.
    let other = location.replace(&sha, &"0".repeat(64));
    let got = store_client.get(&other).send().await.unwrap();
    assert!(got.status().is_client_error(), "{}", got.status());
    assert_eq!(metric(&h, "artifact_bytes_served").await, served_before);
    assert_eq!(metric(&h, "artifact_redirects").await, 1);

    // `direct=1` streams through the coordinator, ranges included.
    let res = h
        .http
        .get(h.url(&format!("/v1/artifacts/{sha}?direct=1")))
        .bearer_auth(&h.admin)
        .header("range", "bytes=1099990-")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        res.headers()["content-range"],
        "bytes 1099990-1099999/1100000"
    );
    assert_eq!(res.bytes().await.unwrap().as_ref(), &artifact[1_099_990..]);
    assert_eq!(
        metric(&h, "artifact_bytes_served").await,
        served_before + 10
    );
    let res = h
        .http
        .get(h.url(&format!("/v1/artifacts/{sha}?direct=yes")))
        .bearer_auth(&h.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // A bundle carries the artifact read from the bucket.
    let release = h.release_envelope("pos-3.0.0", 1, &artifact);
    let (s, v) = h.publish_envelope(&release).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let agent = common::Agent::enroll(&h, "store-1", json!({})).await;
    let rollout = h
        .create_rollout(
            "name = \"pos 3\"\nrelease = \"pos-3.0.0\"\n\n[[waves]]\nname = \"all\"\ngate = { bake = \"1h\" }\n",
        )
        .await;
    let (s, v) = h
        .post(
            &format!("/v1/rollouts/{rollout}/start"),
            &h.admin,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    agent.assignment(&h).await;
    let res = h
        .http
        .post(h.url("/v1/bundles"))
        .bearer_auth(&h.admin)
        .json(&json!({"site": "store-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let tar_bytes = res.bytes().await.unwrap();
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let mut found = None;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_string_lossy() == format!("artifacts/{sha}") {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut b).unwrap();
            found = Some(b);
        }
    }
    assert_eq!(
        found.as_deref(),
        Some(&artifact[..]),
        "the bundle's artifact"
    );

    // The coordinator restarted on the same bucket still serves it (nothing was local).
    let mut h = h;
    h.restart().await;
    let res = h
        .http
        .get(h.url(&format!("/v1/artifacts/{sha}?direct=1")))
        .bearer_auth(&h.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().as_ref(), &artifact[..]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redirect_the_coordinator_streams_from_the_bucket() {
    let store = start_store();
    let h = Harness::with_config(&s3_config(&store, "artifacts", false)).await;
    let artifact = b"a small artifact".to_vec();
    let sha = fleetwave_shared::sha256_hex(&artifact);
    assert_eq!(
        upload(&h, &sha, artifact.clone()).await,
        StatusCode::CREATED
    );
    let res = h
        .http
        .get(h.url(&format!("/v1/artifacts/{sha}")))
        .bearer_auth(&h.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().as_ref(), &artifact[..]);
    // `direct` is 0 or 1 (the API fuzzer sent 49).
    let res = h
        .http
        .get(h.url(&format!("/v1/artifacts/{sha}?direct=49")))
        .bearer_auth(&h.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_bucket_or_wrong_credentials_stop_the_start_with_the_reason() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = start_store();
    let dir = tempfile::tempdir().unwrap();
    let out = fleetwave_coordinator::init::init(
        &fleetwave_coordinator::init::InitOptions::dev_loopback(dir.path().to_path_buf()),
    )
    .unwrap();
    let base = std::fs::read_to_string(&out.config).unwrap();

    for (extra, expect) in [
        (s3_config(&store, "no-such-bucket", true), "artifact store"),
        (
            s3_config(&store, "artifacts", true).replace(ACCESS_KEY, "someone-else"),
            "artifact store",
        ),
    ] {
        std::fs::write(&out.config, format!("{base}{extra}")).unwrap();
        let config = fleetwave_coordinator::config::Config::load(&out.config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = match fleetwave_coordinator::server::start_with_clock(
            config,
            fleetwave_coordinator::server::Transport::Tls,
            listener,
            fleetwave_coordinator::clock::Clock::adjustable(),
        )
        .await
        {
            Ok(_) => panic!("started with {extra}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(expect), "{err}");
        assert!(err.contains("S3 bucket"), "{err}");
    }

    // Half-given credentials are a configuration error naming the key.
    let half = s3_config(&store, "artifacts", true).replace(
        &format!(
            "secret_access_key_file = \"{}\"\n",
            store.secret_file.display()
        ),
        "",
    );
    std::fs::write(&out.config, format!("{base}{half}")).unwrap();
    let err = fleetwave_coordinator::config::Config::load(&out.config)
        .unwrap_err()
        .to_string();
    assert!(err.contains("artifacts.s3.access_key_id"), "{err}");
}
