//! Bundles for air-gapped sites (`POST /v1/bundles`) against a real coordinator: the tar
//! carries the manifest first (every entry's SHA-256 and size), the root chain, the
//! release, each chosen site's assignment (signed for the plan's `bundle_validity`) and
//! each artifact once; the rollout's timeline names the sites served by bundle; operators
//! only, audited; every refusal names what is wrong.

mod common;

use std::collections::BTreeMap;
use std::io::Read as _;

use base64::Engine as _;
use common::{Agent, Harness};
use fleetwave_shared::Envelope;
use fleetwave_shared::protocol::bundle::Manifest;
use jiff::Timestamp;
use reqwest::StatusCode;
use serde_json::{Value, json};

const PLAN: &str = r#"
name = "pos 2.5 to the stores"
release = "pos-2.5.0"
selector = { format = "store" }
bundle_validity = "10d"

[[waves]]
name = "all"
gate = { bake = "1h" }
"#;

/// POSTs a bundle request; the status, the headers and the body.
async fn export(
    h: &Harness,
    token: &str,
    body: Value,
) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
    let res = h
        .http
        .post(h.url("/v1/bundles"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    (status, headers, res.bytes().await.unwrap().to_vec())
}

/// The entries of a tar, in order.
fn entries(tar_bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(tar_bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            assert_eq!(e.header().entry_type(), tar::EntryType::Regular);
            let name = e.path().unwrap().display().to_string();
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).unwrap();
            (name, bytes)
        })
        .collect()
}

fn payload(env_json: &[u8]) -> Value {
    let env = Envelope::from_json(env_json).unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&env.payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn error(body: &[u8]) -> (String, String) {
    let v: Value = serde_json::from_slice(body).unwrap();
    (
        v["error"]["code"].as_str().unwrap().to_string(),
        v["error"]["message"].as_str().unwrap().to_string(),
    )
}

/// Uploads `artifact` and publishes release `pos-2.5.0` (counter 25) carrying it; returns
/// its SHA-256 and the release as published.
async fn upload_and_publish(h: &Harness, artifact: &[u8]) -> (String, Envelope) {
    let sha = fleetwave_shared::sha256_hex(artifact);
    let res = h
        .http
        .put(h.url(&format!("/v1/artifacts/{sha}")))
        .bearer_auth(&h.admin)
        .body(artifact.to_vec())
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let release = h.release_envelope("pos-2.5.0", 25, artifact);
    let (s, v) = h.publish_envelope(&release).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    (sha, release)
}

#[tokio::test]
async fn a_bundle_carries_roots_release_the_chosen_sites_assignments_and_each_artifact_once() {
    let h = Harness::new().await;
    let alice = h.token("alice", "operator").await;
    let victor = h.token("victor", "viewer").await;
    let artifact = b"pretend this is the tarball of pos 2.5.0".to_vec();
    let (sha, release) = upload_and_publish(&h, &artifact).await;
    let mut agents = Vec::new();
    for (site, region) in [
        ("store-1", "north"),
        ("store-2", "north"),
        ("store-3", "south"),
    ] {
        agents.push(Agent::enroll(&h, site, json!({"format": "store", "region": region})).await);
    }
    let id = h.create_rollout(PLAN).await;
    let (s, v) = h
        .post(&format!("/v1/rollouts/{id}/start"), &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for a in &agents {
        a.assignment(&h).await;
    }

    // Refusals, each named.
    let body = json!({"rollout": id, "wave": 0});
    let (s, _, _) = export(&h, &victor, body.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    for (body, status, code, words) in [
        (
            json!({}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_bundle",
            "name either `site`, or `rollout` with `wave`",
        ),
        (
            json!({"rollout": id}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_bundle",
            "wave: a bundle for a rollout names one of its waves",
        ),
        (
            json!({"site": "store-1", "rollout": id, "wave": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_bundle",
            "name either",
        ),
        (
            json!({"rollout": id, "wave": 3}),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "wave 3 does not exist",
        ),
        (
            json!({"rollout": id, "wave": 0, "labels": {"region": "west"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_bundle",
            "no site of rollout",
        ),
        (
            json!({"site": "nowhere"}),
            StatusCode::NOT_FOUND,
            "not_found",
            "no site nowhere",
        ),
        (
            json!({"rollout": "ro-nothing", "wave": 0}),
            StatusCode::NOT_FOUND,
            "not_found",
            "no rollout ro-nothing",
        ),
    ] {
        let (s, _, out) = export(&h, &alice, body.clone()).await;
        assert_eq!(s, status, "{body}: {}", String::from_utf8_lossy(&out));
        let (c, message) = error(&out);
        assert_eq!(c, code, "{body}: {message}");
        assert!(message.contains(words), "{body}: {message}");
    }

    // The north stores of wave 0.
    let before = Timestamp::now();
    let (s, headers, tar_bytes) = export(
        &h,
        &alice,
        json!({"rollout": id, "wave": 0, "labels": {"region": "north"}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&tar_bytes));
    assert_eq!(headers["content-type"], "application/x-tar");
    assert_eq!(headers["x-fleetwave-bundle-sites"], "2");
    assert_eq!(
        headers["content-length"].to_str().unwrap(),
        tar_bytes.len().to_string()
    );
    let files = entries(&tar_bytes);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    let artifact_entry = format!("artifacts/{sha}");
    assert_eq!(
        names,
        [
            "manifest.json",
            "roots/1.json",
            "release.json",
            "assignments/store-1.json",
            "assignments/store-2.json",
            artifact_entry.as_str(),
        ]
    );
    let by_name: BTreeMap<&str, &[u8]> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let manifest: Manifest = serde_json::from_slice(by_name["manifest.json"]).unwrap();
    assert_eq!(manifest.format, "fleetwave-bundle-v1");
    assert_eq!(manifest.assignment, None);
    assert_eq!(
        manifest.assignments.keys().collect::<Vec<_>>(),
        ["store-1", "store-2"]
    );
    assert_eq!(manifest.files.len(), files.len() - 1);
    for (name, digest) in &manifest.files {
        let bytes = by_name[name.as_str()];
        assert_eq!(digest.size, bytes.len() as u64, "{name}");
        assert_eq!(digest.sha256, fleetwave_shared::sha256_hex(bytes), "{name}");
    }
    assert_eq!(by_name[artifact_entry.as_str()], artifact.as_slice());
    assert_eq!(
        Envelope::from_json(by_name["release.json"]).unwrap(),
        release
    );
    for site in ["store-1", "store-2"] {
        let a = payload(by_name[format!("assignments/{site}.json").as_str()]);
        assert_eq!(a["site_id"], site);
        assert_eq!(a["rollout_id"], id.as_str());
        assert_eq!(a["release_sha256"], release.digest());
        let issued: Timestamp = a["issued_at"].as_str().unwrap().parse().unwrap();
        let expires: Timestamp = a["expires"].as_str().unwrap().parse().unwrap();
        assert!(
            issued
                >= before
                    .checked_sub(jiff::SignedDuration::from_secs(5))
                    .unwrap()
        );
        assert_eq!(
            expires.duration_since(issued),
            jiff::SignedDuration::from_hours(240),
            "bundle_validity = 10d"
        );
    }

    // The timeline names the sites served by bundle, the audit log the export.
    let timeline = h.rollout(&id).await["decisions"].clone();
    let note = timeline
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "bundle_exported")
        .unwrap_or_else(|| panic!("no bundle_exported decision: {timeline}"));
    let words = note["reason"].as_str().unwrap();
    assert!(
        words.starts_with("2 site(s) served by bundle")
            && words.contains("store-1, store-2")
            && !words.contains("store-3")
            && words.contains("bundle_validity 10d"),
        "{words}"
    );
    let (_, audit) = h.get("/v1/audit", &h.admin).await;
    let export_entry = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "bundle.export")
        .unwrap_or_else(|| panic!("no bundle.export in {audit}"))
        .clone();
    assert_eq!(export_entry["target"], id.as_str());
    assert!(
        export_entry["actor"].as_str().unwrap().contains("alice"),
        "{export_entry}"
    );

    // One site: a single `assignment`, the same layout the agent has always read.
    let (s, _, tar_bytes) = export(&h, &alice, json!({"site": "store-3"})).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&tar_bytes));
    let files = entries(&tar_bytes);
    let manifest: Manifest = serde_json::from_slice(&files[0].1).unwrap();
    assert_eq!(manifest.assignment.as_deref(), Some("assignment.json"));
    assert!(manifest.assignments.is_empty());
    let a = files.iter().find(|(n, _)| n == "assignment.json").unwrap();
    assert_eq!(payload(&a.1)["site_id"], "store-3");
    h.stop().await;
}

#[tokio::test]
async fn a_bundle_is_refused_when_the_coordinator_does_not_hold_an_artifact() {
    let h = Harness::new().await;
    h.publish("2.5.0", 25).await; // its artifact was never uploaded
    let agent = Agent::enroll(&h, "store-1", json!({"format": "store"})).await;
    let id = h.create_rollout(PLAN).await;
    let (s, v) = h
        .post(&format!("/v1/rollouts/{id}/start"), &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    agent.assignment(&h).await;
    let decisions_before = h.rollout(&id).await["decisions"].as_array().unwrap().len();
    let (s, _, out) = export(&h, &h.admin, json!({"site": "store-1"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (code, message) = error(&out);
    assert_eq!(code, "invalid_bundle");
    assert!(
        message.contains("is not stored on this coordinator"),
        "{message}"
    );
    // Nothing was signed or recorded for it.
    assert_eq!(
        h.rollout(&id).await["decisions"].as_array().unwrap().len(),
        decisions_before
    );
    h.stop().await;
}

#[tokio::test]
async fn a_site_served_by_bundle_turns_silent_only_after_its_bundle_expires() {
    const PLAN: &str = r#"
name = "pos 2.5, couriers"
release = "pos-2.5.0"
selector = { format = "store" }
bundle_validity = "2d"

[[waves]]
name = "all"
gate = { bake = "1h", report_deadline = "1h", on_silent = "exclude" }
"#;
    let h = Harness::new().await;
    let artifact = b"pos 2.5.0".to_vec();
    upload_and_publish(&h, &artifact).await;
    let mut agents = Vec::new();
    for site in ["store-1", "store-2"] {
        agents.push(Agent::enroll(&h, site, json!({"format": "store"})).await);
    }
    let id = h.create_rollout(PLAN).await;
    let (s, v) = h
        .post(&format!("/v1/rollouts/{id}/start"), &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for a in &agents {
        a.assignment(&h).await;
    }
    let (s, _, out) = export(&h, &h.admin, json!({"site": "store-1"})).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&out));

    let states = || async {
        let (_, v) = h.get(&format!("/v1/rollouts/{id}/sites"), &h.admin).await;
        v["sites"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["site_id"].as_str().unwrap().to_string(),
                    (
                        s["state"].as_str().unwrap().to_string(),
                        s["bundle_until"].as_str().map(str::to_string),
                    ),
                )
            })
            .collect::<BTreeMap<_, _>>()
    };
    // Three hours on: the site that only polls is silent, the courier's is not.
    h.clock.advance(std::time::Duration::from_secs(3 * 3600));
    let now = fleetwave_testkit::eventually("store-2 to turn silent", || async {
        let s = states().await;
        (s["store-2"].0 == "silent").then_some(s)
    })
    .await;
    assert_ne!(now["store-1"].0, "silent", "{now:?}");
    assert!(now["store-1"].1.is_some(), "{now:?}");
    assert_eq!(now["store-2"].1, None);
    // Past the bundle's expiry plus the report deadline, it is silent too.
    h.clock
        .advance(std::time::Duration::from_secs(2 * 24 * 3600));
    fleetwave_testkit::eventually("store-1 to turn silent", || async {
        (states().await["store-1"].0 == "silent").then_some(())
    })
    .await;
    h.stop().await;
}

/// Writes `n` active stores straight into the coordinator's database, as if enrolled.
fn insert_sites(h: &Harness, n: usize) {
    let db = fleetwave_coordinator::config::Config::load(&h.dir.path().join("coordinator.toml"))
        .unwrap()
        .database_path();
    let mut conn = rusqlite::Connection::open(&db).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .unwrap();
    let tx = conn.transaction().unwrap();
    for i in 0..n {
        tx.execute(
            "INSERT INTO sites (id, device_key, labels, state, agent_version, enrolled_at) \
             VALUES (?1, ?2, ?3, 'active', '0.1.0', ?4)",
            rusqlite::params![
                format!("store-{i:04}"),
                "00".repeat(32),
                json!({"format": "store"}).to_string(),
                Timestamp::now().as_millisecond()
            ],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_for_more_sites_than_an_agent_reads_is_refused() {
    let h = Harness::new().await;
    insert_sites(&h, 3901);
    let artifact = b"pos 2.5.0".to_vec();
    upload_and_publish(&h, &artifact).await;
    let id = h.create_rollout(PLAN).await;
    let (s, v) = h
        .post(&format!("/v1/rollouts/{id}/start"), &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    common::eventually("the wave to open", || async {
        (!h.rollout(&id).await["waves"][0]["opened_at"].is_null()).then_some(())
    })
    .await;
    let (s, _, out) = export(&h, &h.admin, json!({"rollout": id, "wave": 0})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (code, message) = error(&out);
    assert_eq!(code, "invalid_bundle");
    assert!(
        message.contains("3901 sites match: one bundle carries at most 3900"),
        "{message}"
    );
    // Narrowed, it goes (here: one site).
    // (Once its assignment is issued: a wave's are issued in chunks after it opens.)
    let headers = common::eventually("store-0007's bundle", || async {
        let (s, headers, _) = export(&h, &h.admin, json!({"site": "store-0007"})).await;
        (s == StatusCode::OK).then_some(headers)
    })
    .await;
    assert_eq!(headers["x-fleetwave-bundle-sites"], "1");
    let timeline = h.rollout(&id).await["decisions"].to_string();
    assert_eq!(timeline.matches("bundle_exported").count(), 1, "{timeline}");
    h.stop().await;
}

/// The figure issue 18 asks for: a bundle for a wave of 1,000 sites with a 100 MiB
/// artifact is about 100 MiB plus the documents (the artifact once), streamed; prints the
/// size and the time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_for_a_thousand_sites_carries_a_100_mib_artifact_once() {
    let h = Harness::new().await;
    insert_sites(&h, 1000);
    let artifact: Vec<u8> = (0..100u32 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    upload_and_publish(&h, &artifact).await;
    drop(artifact);
    let id = h.create_rollout(PLAN).await;
    let (s, v) = h
        .post(&format!("/v1/rollouts/{id}/start"), &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    common::eventually("the wave to open", || async {
        (!h.rollout(&id).await["waves"][0]["opened_at"].is_null()).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    let (status, headers, tar_bytes) =
        export(&h, &h.admin, json!({"rollout": id, "wave": 0})).await;
    let elapsed = started.elapsed();
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&tar_bytes[..200.min(tar_bytes.len())])
    );
    assert_eq!(headers["x-fleetwave-bundle-sites"], "1000");
    let files = entries(&tar_bytes);
    let artifacts: Vec<_> = files
        .iter()
        .filter(|(n, _)| n.starts_with("artifacts/"))
        .collect();
    assert_eq!(artifacts.len(), 1);
    assert_eq!(artifacts[0].1.len(), 100 * 1024 * 1024);
    let documents = tar_bytes.len() - 100 * 1024 * 1024;
    println!(
        "bundle for 1000 sites, one 100 MiB artifact: {} bytes ({:.1} MiB; {documents} bytes \
         besides the artifact, {} per site) in {:.2} s",
        tar_bytes.len(),
        tar_bytes.len() as f64 / (1024.0 * 1024.0),
        documents / 1000,
        elapsed.as_secs_f64()
    );
    assert!(documents < 1000 * 4096, "{documents} bytes of documents");
    h.stop().await;
}
