//! The root of trust: structure checks and rotation, each adversarial case its own test.

mod common;

use common::{Fleet, key, keyid, now, role, root_doc, sign_release, sign_root};
use fleetwave_shared::docs::{ROOT_TYPE, Role};
use fleetwave_shared::dsse::EnvelopeError;
use fleetwave_shared::keys::PublicKeyFile;
use fleetwave_shared::verify::{
    DocKind, check_root_structure, verify_release, verify_root_anchor, verify_root_rotation,
};
use fleetwave_shared::{Envelope, Refusal, TrustState};

/// Version 2 of the test fleet's root: root keys 3 and 4 replace 1 and 2, release key 13
/// replaces 11 and 12.
fn root_v2_doc() -> fleetwave_shared::Root {
    root_doc(
        2,
        "2037-01-01T00:00:00Z",
        role(&[&key(3), &key(4)], 2),
        role(&[&key(13)], 1),
        role(&[&key(21)], 1),
    )
}

fn root_v3_doc() -> fleetwave_shared::Root {
    root_doc(
        3,
        "2038-01-01T00:00:00Z",
        role(&[&key(5)], 1),
        role(&[&key(13)], 1),
        role(&[&key(22)], 1),
    )
}

#[test]
fn root_anchor_signed_by_its_threshold_verifies() {
    let fleet = Fleet::new();
    let root = verify_root_anchor(&fleet.root_envelope).unwrap();
    assert_eq!(root.version, 1);
    assert_eq!(root.digest(), fleet.root_envelope.digest());
    // One of the two root keys is not enough for threshold 2.
    let half = sign_root(&fleet.root, &[&fleet.root_keys[0]]);
    let refusal = verify_root_anchor(&half).unwrap_err();
    assert!(matches!(
        refusal,
        Refusal::Signature {
            doc: DocKind::Root,
            role: Role::Root,
            source: EnvelopeError::ThresholdNotMet {
                valid: 1,
                threshold: 2
            }
        }
    ));
    assert_eq!(refusal.code(), "threshold_not_met");
}

#[test]
fn root_with_one_key_under_two_keyids_is_refused() {
    let fleet = Fleet::new();
    let mut root = fleet.root.clone();
    // The second root key's entry is replaced by the first key: one key, two key ids.
    let first = PublicKeyFile::from_key(&fleet.root_keys[0].verifying_key());
    let mut alias = first.clone();
    alias.keyid = None;
    root.keys.insert(keyid(&fleet.root_keys[1]), alias);
    let refusal = check_root_structure(&root).unwrap_err();
    assert_eq!(refusal.code(), "invalid_root");
    assert!(refusal.to_string().contains("same public key"), "{refusal}");
    // Signed by the one key under both key ids, it is refused as an anchor as well.
    let mut env = sign_root(&root, &[&fleet.root_keys[0], &fleet.root_keys[0]]);
    env.signatures[1].keyid = keyid(&fleet.root_keys[1]);
    assert_eq!(verify_root_anchor(&env).unwrap_err().code(), "invalid_root");
}

#[test]
fn root_role_listing_a_keyid_twice_is_refused() {
    let fleet = Fleet::new();
    let mut root = fleet.root.clone();
    let first = keyid(&fleet.root_keys[0]);
    root.roles.root.keyids = vec![first.clone(), first];
    let refusal = check_root_structure(&root).unwrap_err();
    assert!(refusal.to_string().contains("twice"), "{refusal}");
}

#[test]
fn root_with_threshold_zero_is_refused() {
    let fleet = Fleet::new();
    for role in [Role::Root, Role::Release, Role::Coordinator] {
        let mut root = fleet.root.clone();
        match role {
            Role::Root => root.roles.root.threshold = 0,
            Role::Release => root.roles.release.threshold = 0,
            Role::Coordinator => root.roles.coordinator.threshold = 0,
        }
        let refusal = check_root_structure(&root).unwrap_err();
        assert!(
            refusal
                .to_string()
                .contains(&format!("roles.{role}.threshold must be at least 1")),
            "{refusal}"
        );
        let env = sign_root(&root, &[&fleet.root_keys[0], &fleet.root_keys[1]]);
        assert_eq!(verify_root_anchor(&env).unwrap_err().code(), "invalid_root");
    }
}

#[test]
fn root_with_unreachable_threshold_or_unknown_keyid_is_refused() {
    let fleet = Fleet::new();
    let mut root = fleet.root.clone();
    root.roles.coordinator.threshold = 2;
    assert!(
        check_root_structure(&root)
            .unwrap_err()
            .to_string()
            .contains("only 1 distinct keys")
    );
    let mut root = fleet.root.clone();
    root.roles.release.keyids.push("ff".repeat(32));
    assert!(
        check_root_structure(&root)
            .unwrap_err()
            .to_string()
            .contains("not in keys")
    );
}

#[test]
fn root_rotation_signed_by_old_and_new_keys_is_accepted() {
    let fleet = Fleet::new();
    let v1 = verify_root_anchor(&fleet.root_envelope).unwrap();
    let v2 = sign_root(&root_v2_doc(), &[&key(1), &key(2), &key(3), &key(4)]);
    let rotated = verify_root_rotation(&v1, &v2).unwrap();
    assert_eq!(rotated.version, 2);
}

#[test]
fn root_rotation_skipping_a_version_is_refused() {
    let fleet = Fleet::new();
    let v1 = verify_root_anchor(&fleet.root_envelope).unwrap();
    let mut doc = root_v2_doc();
    doc.version = 3;
    // Properly signed by old and new keys, but 1 -> 3 skips 2.
    let v3 = sign_root(&doc, &[&key(1), &key(2), &key(3), &key(4)]);
    let refusal = verify_root_rotation(&v1, &v3).unwrap_err();
    assert_eq!(refusal, Refusal::RootVersion { current: 1, got: 3 });
    assert_eq!(refusal.code(), "root_version");
    // Nor may the version stay the same.
    let mut doc = root_v2_doc();
    doc.version = 1;
    let same = sign_root(&doc, &[&key(1), &key(2), &key(3), &key(4)]);
    assert_eq!(
        verify_root_rotation(&v1, &same).unwrap_err().code(),
        "root_version"
    );
}

#[test]
fn root_rotation_signed_only_by_the_new_keys_is_refused() {
    let fleet = Fleet::new();
    let v1 = verify_root_anchor(&fleet.root_envelope).unwrap();
    let v2 = sign_root(&root_v2_doc(), &[&key(3), &key(4)]);
    // On its own it is a well-formed, self-signed root...
    assert!(verify_root_anchor(&v2).is_ok());
    // ...but not a rotation of version 1.
    let refusal = verify_root_rotation(&v1, &v2).unwrap_err();
    assert!(matches!(
        refusal,
        Refusal::Signature {
            doc: DocKind::Root,
            role: Role::Root,
            source: EnvelopeError::ThresholdNotMet {
                valid: 0,
                threshold: 2
            }
        }
    ));
}

#[test]
fn root_rotation_signed_only_by_the_old_keys_is_refused() {
    let fleet = Fleet::new();
    let v1 = verify_root_anchor(&fleet.root_envelope).unwrap();
    let v2 = sign_root(&root_v2_doc(), &[&key(1), &key(2)]);
    let refusal = verify_root_rotation(&v1, &v2).unwrap_err();
    assert_eq!(refusal.code(), "threshold_not_met");
    // One old key plus both new ones does not meet the old threshold of 2 either.
    let v2 = sign_root(&root_v2_doc(), &[&key(1), &key(3), &key(4)]);
    assert_eq!(
        verify_root_rotation(&v1, &v2).unwrap_err().code(),
        "threshold_not_met"
    );
}

#[test]
fn root_chain_is_followed_by_update_root() {
    let fleet = Fleet::new();
    let mut state = TrustState::from_anchor(&fleet.root_envelope).unwrap();
    let v2 = sign_root(&root_v2_doc(), &[&key(1), &key(2), &key(3), &key(4)]);
    let v3 = sign_root(&root_v3_doc(), &[&key(3), &key(4), &key(5)]);
    // Versions already trusted (v1) are skipped; v2 then v3 chain from it.
    let version = state
        .update_root(&[fleet.root_envelope.clone(), v2.clone(), v3.clone()])
        .unwrap();
    assert_eq!(version, 3);
    assert_eq!(state.root().version, 3);
    assert_eq!(state.root().digest(), v3.digest());
    // Following the chain again is a no-op.
    assert_eq!(state.update_root(&[v2, v3]).unwrap(), 3);
}

#[test]
fn root_chain_with_a_gap_leaves_the_state_unchanged() {
    let fleet = Fleet::new();
    let mut state = TrustState::from_anchor(&fleet.root_envelope).unwrap();
    let before = state.clone();
    // Even signed by version 1's keys, version 3 cannot follow version 1.
    let v3 = sign_root(&root_v3_doc(), &[&key(1), &key(2), &key(5)]);
    let refusal = state.update_root(&[v3]).unwrap_err();
    assert_eq!(refusal.code(), "root_version");
    assert_eq!(state, before);
    // A good v2 followed by a v3 signed without the v2 keys: nothing is applied.
    let v2 = sign_root(&root_v2_doc(), &[&key(1), &key(2), &key(3), &key(4)]);
    let bad_v3 = sign_root(&root_v3_doc(), &[&key(5)]);
    assert_eq!(
        state.update_root(&[v2, bad_v3]).unwrap_err().code(),
        "threshold_not_met"
    );
    assert_eq!(state, before);
}

#[test]
fn release_signed_by_a_retired_key_is_refused_after_rotation() {
    let fleet = Fleet::new();
    let mut state = TrustState::from_anchor(&fleet.root_envelope).unwrap();
    let old_release = fleet.release(5);
    // Before the rotation the old release key is trusted.
    assert!(verify_release(state.root(), &old_release, now()).is_ok());
    let v2 = sign_root(&root_v2_doc(), &[&key(1), &key(2), &key(3), &key(4)]);
    state.update_root(&[v2]).unwrap();
    let refusal = verify_release(state.root(), &old_release, now()).unwrap_err();
    assert!(matches!(
        refusal,
        Refusal::Signature {
            doc: DocKind::Release,
            role: Role::Release,
            ..
        }
    ));
    // The new release key is.
    let doc = common::release_doc("pos", 6, "2026-03-01T00:00:00Z", "2027-03-01T00:00:00Z");
    let new_release = sign_release(&doc, &[&key(13)]);
    assert!(verify_release(state.root(), &new_release, now()).is_ok());
}

#[test]
fn tampered_root_anchor_is_refused() {
    let fleet = Fleet::new();
    let mut root = fleet.root.clone();
    root.roles.release.keyids.push(keyid(&key(99)));
    root.keys.insert(
        keyid(&key(99)),
        PublicKeyFile::from_key(&key(99).verifying_key()),
    );
    let payload = serde_json::to_vec(&root).unwrap();
    use base64::Engine as _;
    let mut env: Envelope = fleet.root_envelope.clone();
    env.payload = base64::engine::general_purpose::STANDARD.encode(payload);
    assert_eq!(
        verify_root_anchor(&env).unwrap_err().code(),
        "threshold_not_met"
    );
    // A root envelope of the wrong payload type is refused before anything is parsed.
    let mut env = fleet.root_envelope.clone();
    env.payload_type = "application/vnd.fleetwave.release+json".into();
    assert_eq!(verify_root_anchor(&env).unwrap_err().code(), "bad_envelope");
    assert_ne!(env.payload_type, ROOT_TYPE);
}
