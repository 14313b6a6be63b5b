//! Named adversarial fixtures in `tests/data/`, checked from the files on disk.
//!
//! Every fixture is generated deterministically from fixed seeds and fixed times (ed25519
//! signatures are deterministic), so this test first regenerates them all and requires the
//! files to match byte for byte, then verifies each file as read from disk and requires the
//! outcome listed in `tests/data/README.md`. To rewrite the files after a deliberate change:
//! `FLEETWAVE_REGENERATE_FIXTURES=1 cargo test -p fleetwave-shared --test fixtures`.

mod common;

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{Fleet, assignment_doc, key, release_doc, sign_release, sign_root, ts};
use ed25519_dalek::Signer as _;
use fleetwave_shared::trust::TrustState;
use fleetwave_shared::verify::{
    Verified, verify_assigned_release, verify_release, verify_root_anchor, verify_root_rotation,
};
use fleetwave_shared::{Envelope, Refusal, Root};

/// The time every fixture is checked at (also the CLI tests' `--at`).
const AT: &str = "2026-06-01T00:00:00Z";
const SITE: &str = "store-0042";

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn root_v2() -> Root {
    common::root_doc(
        2,
        "2037-01-01T00:00:00Z",
        common::role(&[&key(3), &key(4)], 2),
        common::role(&[&key(11), &key(13)], 1),
        common::role(&[&key(21)], 1),
    )
}

/// Every fixture, by file name.
fn generate() -> Vec<(&'static str, Envelope)> {
    let fleet = Fleet::new();
    let pos1 = fleet.release(1);
    let pos2 = fleet.release(2);

    let v2_doc = root_v2();
    let root_v2 = sign_root(&v2_doc, &[&key(1), &key(2), &key(3), &key(4)]);
    let root_v2_new_only = sign_root(&v2_doc, &[&key(3), &key(4)]);
    let mut v3_doc = v2_doc.clone();
    v3_doc.version = 3;
    let root_v3_skips = sign_root(&v3_doc, &[&key(1), &key(2), &key(3), &key(4)]);

    let mut tampered = pos2.clone();
    let mut doc = release_doc("pos", 2, "2026-03-01T00:00:00Z", "2027-03-01T00:00:00Z");
    doc.counter = 99;
    tampered.payload = STANDARD.encode(serde_json::to_vec(&doc).unwrap());

    let mut payload_only = pos2.clone();
    let payload = STANDARD.decode(&pos2.payload).unwrap();
    payload_only.signatures[0].sig = STANDARD.encode(fleet.release_key.sign(&payload).to_bytes());

    let mut non_canonical_s = pos2.clone();
    let mut raw = STANDARD.decode(&pos2.signatures[0].sig).unwrap();
    add_group_order(&mut raw[32..]);
    non_canonical_s.signatures[0].sig = STANDARD.encode(&raw);

    let expired = sign_release(
        &release_doc("pos", 3, "2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
        &[&fleet.release_key],
    );
    let by_coordinator = sign_release(
        &release_doc("pos", 3, "2026-03-01T00:00:00Z", "2027-03-01T00:00:00Z"),
        &[&fleet.coordinator_key],
    );

    let assignment = fleet.assign(SITE, &pos2, 2);
    let other_site = fleet.assign("store-0043", &pos2, 2);
    let other_release = fleet.assign(SITE, &pos1, 3);
    let expired_assignment = fleet.sign_assignment(&assignment_doc(
        SITE,
        &pos2,
        4,
        "2026-04-01T00:00:00Z",
        "2026-04-15T00:00:00Z",
    ));

    // Valid in March (when a site installed it), expired at `AT`; and the rollback to it.
    let pos1_expired = sign_release(
        &release_doc("pos", 1, "2026-01-01T00:00:00Z", "2026-04-01T00:00:00Z"),
        &[&fleet.release_key],
    );
    let rollback_to_expired = fleet.rollback(SITE, &pos1_expired, 3);

    vec![
        ("root-v1.json", fleet.root_envelope.clone()),
        ("root-v2.json", root_v2),
        ("root-v2-new-keys-only.json", root_v2_new_only),
        ("root-v3-skips-v2.json", root_v3_skips),
        ("release-pos-1.json", pos1),
        ("release-pos-2.json", pos2),
        ("release-tampered-payload.json", tampered),
        ("release-payload-only-signature.json", payload_only),
        ("release-non-canonical-s.json", non_canonical_s),
        ("release-expired.json", expired),
        ("release-signed-by-coordinator.json", by_coordinator),
        ("assignment-store-0042-pos-2.json", assignment),
        ("assignment-other-site.json", other_site),
        ("assignment-other-release.json", other_release),
        ("assignment-expired.json", expired_assignment),
        ("release-pos-1-expired-in-april.json", pos1_expired),
        (
            "assignment-store-0042-rollback-to-pos-1-expired.json",
            rollback_to_expired,
        ),
    ]
}

/// `s += L` (the group order), little-endian, in place.
fn add_group_order(s: &mut [u8]) {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for (byte, l) in s.iter_mut().zip(L) {
        let sum = *byte as u16 + l as u16 + carry;
        *byte = sum as u8;
        carry = sum >> 8;
    }
}

fn file_bytes(envelope: &Envelope) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(envelope).unwrap();
    bytes.push(b'\n');
    bytes
}

fn load(name: &str) -> Envelope {
    let bytes = std::fs::read(data_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    Envelope::from_json(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn fixtures_on_disk_match_their_generator() {
    let regenerate = std::env::var_os("FLEETWAVE_REGENERATE_FIXTURES").is_some();
    let dir = data_dir();
    for (name, envelope) in generate() {
        let path = dir.join(name);
        let expected = file_bytes(&envelope);
        if regenerate {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &expected).unwrap();
            continue;
        }
        let actual = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; regenerate with FLEETWAVE_REGENERATE_FIXTURES=1",
                path.display()
            )
        });
        assert!(
            actual == expected,
            "{} differs from its generator; regenerate with FLEETWAVE_REGENERATE_FIXTURES=1",
            path.display()
        );
    }
}

fn anchor() -> Verified<Root> {
    verify_root_anchor(&load("root-v1.json")).unwrap()
}

fn code(result: Result<impl Sized, Refusal>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(refusal) => refusal.code(),
    }
}

#[test]
fn root_fixtures_have_their_documented_outcome() {
    let v1 = anchor();
    assert_eq!(code(verify_root_rotation(&v1, &load("root-v2.json"))), "ok");
    assert_eq!(
        code(verify_root_rotation(
            &v1,
            &load("root-v2-new-keys-only.json")
        )),
        "threshold_not_met"
    );
    assert_eq!(
        code(verify_root_rotation(&v1, &load("root-v3-skips-v2.json"))),
        "root_version"
    );
}

#[test]
fn release_fixtures_have_their_documented_outcome() {
    let root = anchor();
    let at = ts(AT);
    for (name, expected) in [
        ("release-pos-1.json", "ok"),
        ("release-pos-2.json", "ok"),
        ("release-tampered-payload.json", "threshold_not_met"),
        ("release-payload-only-signature.json", "threshold_not_met"),
        ("release-non-canonical-s.json", "threshold_not_met"),
        ("release-expired.json", "expired"),
        ("release-signed-by-coordinator.json", "threshold_not_met"),
    ] {
        assert_eq!(
            code(verify_release(&root, &load(name), at)),
            expected,
            "{name}"
        );
    }
}

#[test]
fn assignment_fixtures_have_their_documented_outcome() {
    let root = anchor();
    let at = ts(AT);
    let pos2 = load("release-pos-2.json");
    for (name, expected) in [
        ("assignment-store-0042-pos-2.json", "ok"),
        ("assignment-other-site.json", "wrong_site"),
        ("assignment-other-release.json", "release_mismatch"),
        ("assignment-expired.json", "expired"),
    ] {
        let result = verify_assigned_release(&root, &load(name), &pos2, at, Some(SITE));
        assert_eq!(code(result), expected, "{name}");
    }
    // Through the agent's trust state, after the root rotation, the good pair installs.
    let mut state = TrustState::from_anchor(&load("root-v1.json")).unwrap();
    state.update_root(&[load("root-v2.json")]).unwrap();
    let accepted = state
        .evaluate(
            SITE,
            &load("assignment-store-0042-pos-2.json"),
            &pos2,
            at,
            "0.1.0",
        )
        .unwrap();
    assert_eq!(accepted.release.id, "pos-1.2.0");
}

#[test]
fn rollback_to_an_expired_release_needs_a_site_that_ran_it() {
    let root = anchor();
    let at = ts(AT);
    let fleet = Fleet::new();
    let expired = load("release-pos-1-expired-in-april.json");
    let rollback = load("assignment-store-0042-rollback-to-pos-1-expired.json");
    assert_eq!(code(verify_release(&root, &expired, at)), "expired");
    // Stateless (the CLI's `verify`, the coordinator): an expired release is expired.
    assert_eq!(
        code(verify_assigned_release(
            &root,
            &rollback,
            &expired,
            at,
            Some(SITE)
        )),
        "expired"
    );

    // A site that installed it in March (when it was valid), then pos-2: it may go back.
    let march = ts("2026-03-15T00:00:00Z");
    let pos2 = load("release-pos-2.json");
    let mut ran_it = TrustState::from_anchor(&load("root-v1.json")).unwrap();
    let first = fleet.sign_assignment(&common::assignment_doc(
        SITE,
        &expired,
        1,
        "2026-03-01T00:00:00Z",
        "2026-09-01T00:00:00Z",
    ));
    for (assignment, release, clock) in [
        (&first, &expired, march),
        (&load("assignment-store-0042-pos-2.json"), &pos2, at),
    ] {
        let accepted = ran_it
            .evaluate(SITE, assignment, release, clock, "0.1.0")
            .unwrap();
        ran_it.accept(&accepted);
        ran_it.record_installed(&accepted.release);
    }
    assert_eq!(
        code(ran_it.evaluate(SITE, &rollback, &expired, at, "0.1.0")),
        "ok"
    );

    // A site that ran another envelope of counter 1 (release-pos-1.json), then pos-2: it
    // never ran this one, so its expiry stands.
    let pos1 = load("release-pos-1.json");
    let mut ran_other = TrustState::from_anchor(&load("root-v1.json")).unwrap();
    for (assignment, release) in [
        (fleet.assign(SITE, &pos1, 1), &pos1),
        (load("assignment-store-0042-pos-2.json"), &pos2),
    ] {
        let accepted = ran_other
            .evaluate(SITE, &assignment, release, at, "0.1.0")
            .unwrap();
        ran_other.accept(&accepted);
        ran_other.record_installed(&accepted.release);
    }
    assert_eq!(
        code(ran_other.evaluate(SITE, &rollback, &expired, at, "0.1.0")),
        "expired"
    );
}
