//! Air-gapped bundles and refused assignments: a bundle is verified exactly like a poll
//! answer, so it is also where the tests hand the agent documents no honest coordinator
//! would send (an expired assignment, a replayed sequence, a tampered artifact).
//!
//! The site enrolls with a real coordinator (for its root and keys), then runs with
//! `coordinator.url = ""` like an air-gapped box. Needs `fleetwave-demo-app` built:
//! `cargo build -p fleetwave-e2e --bin fleetwave-demo-app`.

mod common;

use std::path::{Path, PathBuf};

use common::{Coordinator, Site, demo_artifact, eventually};
use fleetwave_shared::{Assignment, Envelope};
use jiff::{SignedDuration, Timestamp};

fn assignment(
    site: &str,
    rollout: &str,
    sequence: u64,
    release: &Envelope,
    expires_in: SignedDuration,
) -> Assignment {
    let now = Timestamp::now();
    Assignment {
        site_id: site.into(),
        rollout_id: rollout.into(),
        wave: 0,
        release_sha256: release.digest(),
        sequence,
        not_before: now - SignedDuration::from_mins(1),
        issued_at: now - SignedDuration::from_mins(1),
        expires: now + expires_in,
        rollback: false,
        window: None,
    }
}

/// Writes a bundle: manifest, documents and `artifacts/<sha256>` files.
fn write_bundle(
    dir: &Path,
    name: &str,
    assignment: &Envelope,
    release: &Envelope,
    artifacts: &[(&str, &[u8])],
) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut add = |name: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes).unwrap();
    };
    let manifest = serde_json::json!({
        "format": "fleetwave-bundle-v1",
        "roots": [],
        "assignment": "assignment.json",
        "release": "release.json",
    });
    add("manifest.json", manifest.to_string().as_bytes());
    add("assignment.json", &assignment.to_json());
    add("release.json", &release.to_json());
    for (sha, bytes) in artifacts {
        add(&format!("artifacts/{sha}"), bytes);
    }
    tar.into_inner().unwrap().finish().unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn air_gapped_bundle_installs_and_bad_documents_are_refused() {
    let coordinator = Coordinator::start().await;
    let site = Site::new("remote-1", &coordinator);
    site.enroll(&coordinator).await;
    // From now on the box is air-gapped.
    let config = std::fs::read_to_string(&site.config).unwrap();
    let config = config.replace(&format!("url = \"{}\"", coordinator.url), "url = \"\"");
    std::fs::write(&site.config, config).unwrap();
    let dir = site.dir.path();

    let bytes = demo_artifact("1.0.0", true);
    let sha = fleetwave_shared::sha256_hex(&bytes);
    let release = coordinator.sign_demo_release("1.0.0", 1, &bytes, &sha, &site);
    let a1 = coordinator.sign_assignment(&assignment(
        "remote-1",
        "r1",
        1,
        &release,
        SignedDuration::from_hours(1),
    ));
    let good = write_bundle(dir, "good.fwbundle", &a1, &release, &[(&sha, &bytes)]);
    let (code, out, err) = site
        .cli(&["import-bundle", good.to_str().unwrap(), "--json"])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    let imported: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(imported["new_assignment"], true);
    assert!(
        dir.join("staging/artifacts").join(&sha).exists(),
        "artifact staged where the download step finds it"
    );

    // The same bundle again: known, not an error.
    let (code, out, _) = site
        .cli(&["import-bundle", good.to_str().unwrap(), "--json"])
        .await;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["new_assignment"],
        false
    );

    // A different assignment reusing sequence 1: a replay.
    let replay = coordinator.sign_assignment(&assignment(
        "remote-1",
        "r-other",
        1,
        &release,
        SignedDuration::from_hours(1),
    ));
    let path = write_bundle(dir, "replay.fwbundle", &replay, &release, &[(&sha, &bytes)]);
    let (code, _, err) = site.cli(&["import-bundle", path.to_str().unwrap()]).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("replay"), "{err}");

    // An expired assignment, even with a fresh sequence.
    let expired = coordinator.sign_assignment(&assignment(
        "remote-1",
        "r2",
        5,
        &release,
        SignedDuration::from_secs(-10),
    ));
    let path = write_bundle(
        dir,
        "expired.fwbundle",
        &expired,
        &release,
        &[(&sha, &bytes)],
    );
    let (code, _, err) = site.cli(&["import-bundle", path.to_str().unwrap()]).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("expired"), "{err}");

    // Another site's assignment.
    let foreign = coordinator.sign_assignment(&assignment(
        "remote-2",
        "r3",
        7,
        &release,
        SignedDuration::from_hours(1),
    ));
    let path = write_bundle(
        dir,
        "foreign.fwbundle",
        &foreign,
        &release,
        &[(&sha, &bytes)],
    );
    let (code, _, err) = site.cli(&["import-bundle", path.to_str().unwrap()]).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("wrong_site"), "{err}");

    // A tampered artifact: nothing is staged under the signed hash.
    let bytes2 = demo_artifact("2.0.0", true);
    let sha2 = fleetwave_shared::sha256_hex(&bytes2);
    let release2 = coordinator.sign_demo_release("2.0.0", 2, &bytes2, &sha2, &site);
    let a8 = coordinator.sign_assignment(&assignment(
        "remote-1",
        "r4",
        8,
        &release2,
        SignedDuration::from_hours(1),
    ));
    let mut evil = bytes2.clone();
    let last = evil.len() - 1;
    evil[last] ^= 0xff;
    let path = write_bundle(dir, "tampered.fwbundle", &a8, &release2, &[(&sha2, &evil)]);
    let (code, _, err) = site.cli(&["import-bundle", path.to_str().unwrap()]).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("does not match"), "{err}");
    assert!(!dir.join("staging/artifacts").join(&sha2).exists());

    // Every refusal is queued for the coordinator.
    let status = site.status().await;
    assert_eq!(
        status["queued_reports"]["by_kind"]["refusal"], 3,
        "{status}"
    );
    assert_eq!(
        status["assignment"]["rollout_id"], "r1",
        "the refused bundles changed nothing"
    );

    // The daemon installs the imported assignment without a coordinator (no lease).
    let mut agent = site.run(&[]);
    let last = eventually("the bundle's release is committed", || async {
        let last = site.status().await["last_install"].clone();
        last["outcome"].is_string().then_some(last)
    })
    .await;
    assert_eq!(last["outcome"], "committed", "{}", site.logs());
    eventually("demo 1.0.0 answers", || async {
        (site.app_version().await.as_deref() == Some("1.0.0")).then_some(())
    })
    .await;
    agent.kill().await.unwrap();
}
