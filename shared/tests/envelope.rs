//! DSSE envelopes and keys under attack: each adversarial case is its own test, plus
//! property tests (any flipped bit is refused; sign-then-verify always round-trips).

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{Fleet, key, keyid, now};
use ed25519_dalek::{Signature, Signer as _, Verifier as _, VerifyingKey};
use fleetwave_shared::docs::RELEASE_TYPE;
use fleetwave_shared::dsse::{EnvelopeError, KeyRing, MAX_ENVELOPE_BYTES, MAX_SIGNATURES, pae};
use fleetwave_shared::keys::{self, KeyError, PublicKeyFile};
use fleetwave_shared::verify::{DocKind, verify_release, verify_root_anchor};
use fleetwave_shared::{Envelope, Refusal};
use proptest::prelude::*;

const TYPE: &str = "application/vnd.example+json";

fn ring(keys: &[&ed25519_dalek::SigningKey]) -> KeyRing {
    let mut ring = KeyRing::new();
    for k in keys {
        ring.insert(keyid(k), k.verifying_key());
    }
    ring
}

fn decode(s: &str) -> Vec<u8> {
    STANDARD.decode(s).unwrap()
}

#[test]
fn pae_matches_the_dsse_spec_test_vector() {
    assert_eq!(
        pae("http://example.com/HelloWorld", b"hello world"),
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
    );
    // LEN is the byte length in ASCII decimal, also for an empty body and multi-byte types.
    assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    assert_eq!(pae("é", b"x"), "DSSEv1 2 é 1 x".as_bytes().to_vec());
}

#[test]
fn signature_covers_pae_and_envelope_json_has_the_spec_shape() {
    let k = key(7);
    let env = Envelope::sign("http://example.com/HelloWorld", b"hello world", &[&k]);
    let sig = Signature::from_slice(&decode(&env.signatures[0].sig)).unwrap();
    let message = b"DSSEv1 29 http://example.com/HelloWorld 11 hello world";
    k.verifying_key().verify_strict(message, &sig).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&env.to_json()).unwrap();
    assert_eq!(json["payload"], "aGVsbG8gd29ybGQ=");
    assert_eq!(json["payloadType"], "http://example.com/HelloWorld");
    assert_eq!(json["signatures"][0]["keyid"], keyid(&k));
    assert_eq!(
        String::from_utf8(env.to_json()).unwrap(),
        format!(
            r#"{{"payload":"aGVsbG8gd29ybGQ=","payloadType":"http://example.com/HelloWorld","signatures":[{{"keyid":"{}","sig":"{}"}}]}}"#,
            keyid(&k),
            env.signatures[0].sig
        )
    );
}

#[test]
fn valid_envelope_verifies_and_returns_the_payload() {
    let k = key(7);
    let env = Envelope::sign(TYPE, b"{\"a\":1}", &[&k]);
    assert_eq!(env.verify(TYPE, &ring(&[&k]), 1).unwrap(), b"{\"a\":1}");
}

#[test]
fn tampered_payload_is_refused() {
    let k = key(7);
    let mut env = Envelope::sign(TYPE, b"{\"counter\":1}", &[&k]);
    env.payload = STANDARD.encode(b"{\"counter\":9}");
    assert_eq!(
        env.verify(TYPE, &ring(&[&k]), 1),
        Err(EnvelopeError::ThresholdNotMet {
            valid: 0,
            threshold: 1
        })
    );
}

#[test]
fn tampered_payload_type_is_refused() {
    let k = key(7);
    let mut env = Envelope::sign(TYPE, b"{}", &[&k]);
    env.payload_type = "application/vnd.other+json".into();
    // Asked for the original type: the type does not match.
    assert!(matches!(
        env.verify(TYPE, &ring(&[&k]), 1),
        Err(EnvelopeError::WrongPayloadType { .. })
    ));
    // Asked for the tampered type: the signature (over PAE, which includes the type) fails.
    assert_eq!(
        env.verify("application/vnd.other+json", &ring(&[&k]), 1),
        Err(EnvelopeError::ThresholdNotMet {
            valid: 0,
            threshold: 1
        })
    );
}

#[test]
fn signature_over_the_payload_alone_is_refused() {
    let k = key(7);
    let payload = b"{\"counter\":1}";
    let mut env = Envelope::sign(TYPE, payload, &[&k]);
    env.signatures[0].sig = STANDARD.encode(k.sign(payload).to_bytes());
    // The signature is a valid ed25519 signature of the payload bytes...
    let sig = Signature::from_slice(&decode(&env.signatures[0].sig)).unwrap();
    assert!(k.verifying_key().verify_strict(payload, &sig).is_ok());
    // ...but DSSE signs PAE(type, payload), so the envelope is refused.
    assert_eq!(
        env.verify(TYPE, &ring(&[&k]), 1),
        Err(EnvelopeError::ThresholdNotMet {
            valid: 0,
            threshold: 1
        })
    );
}

#[test]
fn unknown_keyid_is_ignored_never_counted() {
    let trusted = key(7);
    let stranger = key(8);
    // A stranger's valid signature under its own key id counts for nothing.
    let env = Envelope::sign(TYPE, b"{}", &[&stranger]);
    assert_eq!(
        env.verify(TYPE, &ring(&[&trusted]), 1),
        Err(EnvelopeError::ThresholdNotMet {
            valid: 0,
            threshold: 1
        })
    );
    // A trusted key's valid signature filed under an unknown key id is not looked up
    // under other ids: it is ignored too.
    let mut env = Envelope::sign(TYPE, b"{}", &[&trusted]);
    env.signatures[0].keyid = "00".repeat(32);
    assert_eq!(
        env.verify(TYPE, &ring(&[&trusted]), 1),
        Err(EnvelopeError::ThresholdNotMet {
            valid: 0,
            threshold: 1
        })
    );
    // And an unknown signature next to a good one does not spoil it.
    let mut env = Envelope::sign(TYPE, b"{}", &[&trusted, &stranger]);
    env.signatures.swap(0, 1);
    assert!(env.verify(TYPE, &ring(&[&trusted]), 1).is_ok());
}

#[test]
fn one_key_signing_twice_does_not_meet_threshold_two() {
    let k = key(7);
    let other = key(8);
    let env = Envelope::sign(TYPE, b"{}", &[&k, &k]);
    assert_eq!(env.signatures.len(), 2);
    assert_eq!(
        env.verify(TYPE, &ring(&[&k, &other]), 2),
        Err(EnvelopeError::ThresholdNotMet {
            valid: 1,
            threshold: 2
        })
    );
    // Two distinct keys do meet it.
    let env = Envelope::sign(TYPE, b"{}", &[&k, &other]);
    assert!(env.verify(TYPE, &ring(&[&k, &other]), 2).is_ok());
}

#[test]
fn one_key_under_two_keyids_in_a_key_ring_counts_once() {
    let k = key(7);
    let mut ring = KeyRing::new();
    ring.insert("alias-a", k.verifying_key());
    ring.insert("alias-b", k.verifying_key());
    let mut env = Envelope::sign(TYPE, b"{}", &[&k, &k]);
    env.signatures[0].keyid = "alias-a".into();
    env.signatures[1].keyid = "alias-b".into();
    assert!(env.verify(TYPE, &ring, 1).is_ok());
    assert_eq!(
        env.verify(TYPE, &ring, 2),
        Err(EnvelopeError::ThresholdNotMet {
            valid: 1,
            threshold: 2
        })
    );
}

#[test]
fn threshold_zero_is_invalid() {
    let k = key(7);
    // Even an envelope with no signatures at all would "meet" threshold 0: refused.
    let mut env = Envelope::sign(TYPE, b"{}", &[&k]);
    assert_eq!(
        env.verify(TYPE, &ring(&[&k]), 0),
        Err(EnvelopeError::InvalidThreshold)
    );
    env.signatures.clear();
    assert_eq!(
        env.verify(TYPE, &ring(&[&k]), 0),
        Err(EnvelopeError::InvalidThreshold)
    );
}

/// The identity point: y = 1, x = 0.
fn identity_key_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[0] = 1;
    bytes
}

#[test]
fn weak_public_key_is_refused_although_plain_verify_accepts_it() {
    let weak = VerifyingKey::from_bytes(&identity_key_bytes()).unwrap();
    assert!(weak.is_weak());
    let message = pae(TYPE, b"{\"counter\":999}");
    // R = identity, S = 0: [S]B - [k]A = identity = R for every message.
    let mut sig_bytes = [0u8; 64];
    sig_bytes[..32].copy_from_slice(&identity_key_bytes());
    let sig = Signature::from_bytes(&sig_bytes);
    assert!(
        weak.verify(&message, &sig).is_ok(),
        "plain verify accepts the forgery (this is why verify_strict is used)"
    );
    assert!(weak.verify_strict(&message, &sig).is_err());

    // Parsing the key refuses it.
    let hex_key = hex::encode(identity_key_bytes());
    assert_eq!(keys::parse_public_key(&hex_key), Err(KeyError::WeakKey));
    let file = PublicKeyFile {
        keytype: "ed25519".into(),
        scheme: "ed25519".into(),
        keyval: keys::PublicKeyVal { public: hex_key },
        keyid: None,
    };
    assert_eq!(file.to_key(), Err(KeyError::WeakKey));

    // And even if such a key reaches a key ring, the forged envelope is refused.
    let mut ring = KeyRing::new();
    ring.insert("weak", weak);
    let env = Envelope {
        payload: STANDARD.encode(b"{\"counter\":999}"),
        payload_type: TYPE.into(),
        signatures: vec![fleetwave_shared::dsse::Signature {
            keyid: "weak".into(),
            sig: STANDARD.encode(sig_bytes),
        }],
    };
    assert_eq!(
        env.verify(TYPE, &ring, 1),
        Err(EnvelopeError::ThresholdNotMet {
            valid: 0,
            threshold: 1
        })
    );
}

/// The order of the ed25519 group, little-endian.
const L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// `s + L` as 32 little-endian bytes (fits: s < L < 2^253).
fn add_l(s: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = s[i] as u16 + L[i] as u16 + carry;
        out[i] = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    out
}

#[test]
fn non_canonical_s_is_refused() {
    let k = key(7);
    let mut env = Envelope::sign(TYPE, b"{}", &[&k]);
    let mut raw = decode(&env.signatures[0].sig);
    let s_plus_l = add_l(&raw[32..]);
    raw[32..].copy_from_slice(&s_plus_l);
    // S + L is the same scalar mod L, so the group equation still holds: only the
    // canonical-S check refuses this malleated signature.
    let malleated = Signature::from_slice(&raw).unwrap();
    assert!(
        k.verifying_key()
            .verify_strict(&pae(TYPE, b"{}"), &malleated)
            .is_err()
    );
    env.signatures[0].sig = STANDARD.encode(&raw);
    assert_eq!(
        env.verify(TYPE, &ring(&[&k]), 1),
        Err(EnvelopeError::ThresholdNotMet {
            valid: 0,
            threshold: 1
        })
    );
}

#[test]
fn non_canonical_public_key_encoding_is_refused() {
    // y = p + 3 encodes the same point as y = 3 (a valid point that is not small-order):
    // a second encoding would give one key a second key id.
    let mut bytes = [0xffu8; 32];
    bytes[0] = 0xed + 3;
    bytes[31] = 0x7f;
    let key = VerifyingKey::from_bytes(&bytes).unwrap();
    assert!(!key.is_weak());
    assert_ne!(keys::canonical_bytes(&key), bytes);
    assert_eq!(
        keys::parse_public_key(&hex::encode(bytes)),
        Err(KeyError::NonCanonical)
    );
    let canonical = keys::canonical_bytes(&key);
    assert!(keys::parse_public_key(&hex::encode(canonical)).is_ok());
}

#[test]
fn oversize_envelope_is_refused_before_parsing() {
    // Not even JSON: the size is checked first.
    let junk = vec![b'x'; MAX_ENVELOPE_BYTES + 1];
    assert_eq!(
        Envelope::from_json(&junk),
        Err(EnvelopeError::TooLarge {
            size: MAX_ENVELOPE_BYTES + 1,
            limit: MAX_ENVELOPE_BYTES
        })
    );
    // A properly signed envelope whose payload is over the cap is refused too.
    let k = key(7);
    let big = vec![b'a'; MAX_ENVELOPE_BYTES];
    let env = Envelope::sign(TYPE, &big, &[&k]);
    assert!(env.to_json().len() > MAX_ENVELOPE_BYTES);
    assert!(matches!(
        Envelope::from_json(&env.to_json()),
        Err(EnvelopeError::TooLarge { .. })
    ));
    assert!(matches!(
        env.verify(TYPE, &ring(&[&k]), 1),
        Err(EnvelopeError::TooLarge { .. })
    ));
    // Through the document verifier, the refusal says which document.
    let fleet = Fleet::new();
    let root = verify_root_anchor(&fleet.root_envelope).unwrap();
    let env = Envelope::sign(RELEASE_TYPE, &big, &[&fleet.release_key]);
    let refusal = verify_release(&root, &env, now()).unwrap_err();
    assert!(matches!(
        refusal,
        Refusal::Envelope {
            doc: DocKind::Release,
            source: EnvelopeError::TooLarge { .. }
        }
    ));
    assert_eq!(refusal.code(), "bad_envelope");
}

#[test]
fn too_many_signatures_are_refused() {
    let k = key(7);
    let keys: Vec<_> = (0..=MAX_SIGNATURES).map(|_| &k).collect();
    let env = Envelope::sign(TYPE, b"{}", &keys);
    assert_eq!(
        env.verify(TYPE, &ring(&[&k]), 1),
        Err(EnvelopeError::TooManySignatures(MAX_SIGNATURES + 1))
    );
}

#[test]
fn envelope_json_with_unknown_fields_or_bad_base64_is_refused() {
    assert!(matches!(
        Envelope::from_json(br#"{"payload":"","payloadType":"t","signatures":[],"extra":1}"#),
        Err(EnvelopeError::Malformed(_))
    ));
    let k = key(7);
    let mut env = Envelope::sign(TYPE, b"{}", &[&k]);
    env.payload = "e30".into(); // "{}" without its padding
    assert_eq!(
        env.verify(TYPE, &ring(&[&k]), 1),
        Err(EnvelopeError::BadPayloadEncoding)
    );
}

#[test]
fn key_files_have_the_tuf_form_and_refuse_mismatched_ids() {
    let k = key(7);
    let file = PublicKeyFile::from_key(&k.verifying_key());
    let json: serde_json::Value = serde_json::to_value(&file).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "keytype": "ed25519",
            "scheme": "ed25519",
            "keyval": {"public": hex::encode(k.verifying_key().as_bytes())},
            "keyid": fleetwave_shared::sha256_hex(k.verifying_key().as_bytes()),
        })
    );
    let mut wrong = file.clone();
    wrong.keyid = Some(keyid(&key(8)));
    assert!(matches!(
        wrong.to_key(),
        Err(KeyError::KeyIdMismatch { .. })
    ));
    let mut upper = file.clone();
    upper.keyval.public = upper.keyval.public.to_uppercase();
    assert_eq!(upper.to_key(), Err(KeyError::BadPublicHex));
}

#[cfg(unix)]
#[test]
fn key_pair_files_are_private_and_never_overwritten() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile_dir();
    let path = dir.join("release-1.key");
    let k = key(7);
    let public = keys::write_key_pair(&path, &k).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        keys::read_private_key(&path).unwrap().to_bytes(),
        k.to_bytes()
    );
    let pub_path = keys::public_path(&path);
    assert_eq!(keys::read_public_key(&pub_path).unwrap(), k.verifying_key());
    assert_eq!(public.keyid.as_deref(), Some(keyid(&k).as_str()));
    // A second write refuses and leaves the first key in place.
    let err = keys::write_key_pair(&path, &key(8)).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(
        keys::read_private_key(&path).unwrap().to_bytes(),
        k.to_bytes()
    );
    // A stray .pub also stops it, before the private key is written.
    let other = dir.join("other.key");
    std::fs::write(keys::public_path(&other), "{}").unwrap();
    assert!(keys::write_key_pair(&other, &key(9)).is_err());
    assert!(!other.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A fresh directory under the system temp dir (the crate has no tempfile dependency).
fn tempfile_dir() -> std::path::PathBuf {
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).unwrap();
    let dir = std::env::temp_dir().join(format!("fleetwave-keys-{}", hex::encode(seed)));
    std::fs::create_dir(&dir).unwrap();
    dir
}

#[test]
fn private_key_file_with_a_wrong_keyid_is_refused() {
    let k = key(7);
    let mut file = keys::PrivateKeyFile::from_key(&k);
    assert_eq!(file.to_key().unwrap().to_bytes(), k.to_bytes());
    file.keyid = keyid(&key(8));
    assert!(matches!(file.to_key(), Err(KeyError::KeyIdMismatch { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn sign_then_verify_always_round_trips(
        payload in proptest::collection::vec(any::<u8>(), 0..2048),
        payload_type in ".{0,64}",
        seed in any::<u8>(),
    ) {
        let k = key(seed);
        let env = Envelope::sign(&payload_type, &payload, &[&k]);
        let parsed = Envelope::from_json(&env.to_json()).unwrap();
        prop_assert_eq!(&parsed, &env);
        prop_assert_eq!(parsed.verify(&payload_type, &ring(&[&k]), 1).unwrap(), payload);
    }

    #[test]
    fn flipping_any_payload_bit_is_refused(
        payload in proptest::collection::vec(any::<u8>(), 1..512),
        bit in any::<proptest::sample::Index>(),
    ) {
        let k = key(7);
        let mut env = Envelope::sign(TYPE, &payload, &[&k]);
        let mut tampered = payload.clone();
        let i = bit.index(tampered.len() * 8);
        tampered[i / 8] ^= 1 << (i % 8);
        env.payload = STANDARD.encode(&tampered);
        prop_assert!(env.verify(TYPE, &ring(&[&k]), 1).is_err());
    }

    #[test]
    fn flipping_any_signature_bit_is_refused(
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        bit in 0usize..512,
    ) {
        let k = key(7);
        let mut env = Envelope::sign(TYPE, &payload, &[&k]);
        let mut sig = decode(&env.signatures[0].sig);
        sig[bit / 8] ^= 1 << (bit % 8);
        env.signatures[0].sig = STANDARD.encode(&sig);
        prop_assert!(env.verify(TYPE, &ring(&[&k]), 1).is_err());
    }
}
