//! The agent's install decision ([`TrustState::evaluate`]) under attack: expiry, rollback,
//! replay, wrong site, wrong release, a clock that goes backwards.

mod common;

use common::{Fleet, assignment_doc, key, now, release_doc, sign_release, ts};
use fleetwave_shared::trust::PersistedTrust;
use fleetwave_shared::verify::DocKind;
use fleetwave_shared::{Accepted, Envelope, Refusal, TrustState};

const SITE: &str = "store-0042";
const AGENT: &str = "0.1.0";

fn state(fleet: &Fleet) -> TrustState {
    TrustState::from_anchor(&fleet.root_envelope).unwrap()
}

/// Evaluates, accepts and records the install, as the agent does after a good install.
fn install(state: &mut TrustState, assignment: &Envelope, release: &Envelope) -> Accepted {
    let accepted = state
        .evaluate(SITE, assignment, release, now(), AGENT)
        .unwrap();
    state.accept(&accepted);
    state.record_installed(&accepted.release);
    accepted
}

#[test]
fn valid_assignment_and_release_are_accepted() {
    let fleet = Fleet::new();
    let state = state(&fleet);
    let release = fleet.release(1);
    let assignment = fleet.assign(SITE, &release, 1);
    let accepted = state
        .evaluate(SITE, &assignment, &release, now(), AGENT)
        .unwrap();
    assert!(accepted.is_new);
    assert_eq!(accepted.release.counter, 1);
    assert_eq!(accepted.assignment.site_id, SITE);
    assert_eq!(accepted.release.digest(), release.digest());
}

#[test]
fn expired_release_is_refused() {
    let fleet = Fleet::new();
    let doc = release_doc("pos", 1, "2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z");
    let release = sign_release(&doc, &[&fleet.release_key]);
    let assignment = fleet.assign(SITE, &release, 1);
    let refusal = state(&fleet)
        .evaluate(SITE, &assignment, &release, now(), AGENT)
        .unwrap_err();
    assert!(matches!(
        refusal,
        Refusal::Expired {
            doc: DocKind::Release,
            ..
        }
    ));
    assert_eq!(refusal.code(), "expired");
}

#[test]
fn expired_assignment_is_refused() {
    let fleet = Fleet::new();
    let release = fleet.release(1);
    let doc = assignment_doc(
        SITE,
        &release,
        1,
        "2026-04-01T00:00:00Z",
        "2026-05-01T00:00:00Z",
    );
    let assignment = fleet.sign_assignment(&doc);
    let refusal = state(&fleet)
        .evaluate(SITE, &assignment, &release, now(), AGENT)
        .unwrap_err();
    assert!(matches!(
        refusal,
        Refusal::Expired {
            doc: DocKind::Assignment,
            ..
        }
    ));
    // The expiry instant itself is already expired.
    let refusal = state(&fleet)
        .evaluate(
            SITE,
            &assignment,
            &release,
            ts("2026-05-01T00:00:00Z"),
            AGENT,
        )
        .unwrap_err();
    assert_eq!(refusal.code(), "expired");
}

#[test]
fn expired_root_is_refused() {
    let fleet = Fleet::new();
    let release = fleet.release(1);
    let assignment = fleet.assign(SITE, &release, 1);
    let refusal = state(&fleet)
        .evaluate(
            SITE,
            &assignment,
            &release,
            ts("2036-01-01T00:00:01Z"),
            AGENT,
        )
        .unwrap_err();
    assert_eq!(refusal.code(), "root_expired");
}

#[test]
fn release_counter_going_back_is_refused() {
    let fleet = Fleet::new();
    let mut state = state(&fleet);
    let r5 = fleet.release(5);
    install(&mut state, &fleet.assign(SITE, &r5, 1), &r5);
    let r4 = fleet.release(4);
    let refusal = state
        .evaluate(SITE, &fleet.assign(SITE, &r4, 2), &r4, now(), AGENT)
        .unwrap_err();
    assert_eq!(
        refusal,
        Refusal::Rollback {
            id: "pos-1.4.0".into(),
            stream: "pos".into(),
            counter: 4,
            high_water: 5
        }
    );
    // Another stream has its own counter.
    let other = fleet.release_named("kiosk", 1);
    assert!(
        state
            .evaluate(SITE, &fleet.assign(SITE, &other, 3), &other, now(), AGENT)
            .is_ok()
    );
    // The same counter again (the release already running) is fine.
    assert!(
        state
            .evaluate(SITE, &fleet.assign(SITE, &r5, 4), &r5, now(), AGENT)
            .is_ok()
    );
}

#[test]
fn rollback_assignment_to_the_previous_release_is_allowed() {
    let fleet = Fleet::new();
    let mut state = state(&fleet);
    let (r1, r2, r3) = (fleet.release(1), fleet.release(2), fleet.release(3));
    install(&mut state, &fleet.assign(SITE, &r1, 1), &r1);
    install(&mut state, &fleet.assign(SITE, &r2, 2), &r2);
    install(&mut state, &fleet.assign(SITE, &r3, 3), &r3);
    assert_eq!(state.release_high_water["pos"], 3);
    assert_eq!(state.rollback_floor["pos"], 2);
    let accepted = install(&mut state, &fleet.rollback(SITE, &r2, 4), &r2);
    assert_eq!(accepted.release.counter, 2);
}

#[test]
fn rollback_below_the_floor_is_refused() {
    let fleet = Fleet::new();
    let mut state = state(&fleet);
    let (r1, r2, r3) = (fleet.release(1), fleet.release(2), fleet.release(3));
    install(&mut state, &fleet.assign(SITE, &r1, 1), &r1);
    // A rollback assignment naming the running release itself is fine.
    let same = state
        .evaluate(SITE, &fleet.rollback(SITE, &r1, 2), &r1, now(), AGENT)
        .unwrap();
    assert_eq!(same.release.counter, 1);
    install(&mut state, &fleet.assign(SITE, &r2, 3), &r2);
    install(&mut state, &fleet.assign(SITE, &r3, 4), &r3);
    let refusal = state
        .evaluate(SITE, &fleet.rollback(SITE, &r1, 5), &r1, now(), AGENT)
        .unwrap_err();
    assert_eq!(
        refusal,
        Refusal::RollbackTooFar {
            id: "pos-1.1.0".into(),
            stream: "pos".into(),
            counter: 1,
            floor: 2
        }
    );
    assert_eq!(refusal.code(), "rollback_too_far");
}

#[test]
fn rollback_with_no_previous_release_is_refused() {
    let fleet = Fleet::new();
    let mut state = state(&fleet);
    let (r1, r2) = (fleet.release(1), fleet.release(2));
    install(&mut state, &fleet.assign(SITE, &r2, 1), &r2);
    let refusal = state
        .evaluate(SITE, &fleet.rollback(SITE, &r1, 2), &r1, now(), AGENT)
        .unwrap_err();
    assert_eq!(refusal.code(), "rollback_too_far");
}

#[test]
fn rollback_then_upgrade_keeps_the_floor_at_what_the_site_ran() {
    let fleet = Fleet::new();
    let mut state = state(&fleet);
    let (r2, r3, r4) = (fleet.release(2), fleet.release(3), fleet.release(4));
    install(&mut state, &fleet.assign(SITE, &r2, 1), &r2);
    install(&mut state, &fleet.assign(SITE, &r3, 2), &r3);
    install(&mut state, &fleet.rollback(SITE, &r2, 3), &r2);
    // After the rollback the site runs 2; the floor did not move.
    assert_eq!(state.release_high_water["pos"], 2);
    assert_eq!(state.rollback_floor["pos"], 2);
    // Nothing goes below 2, even through a rollback assignment.
    let r1 = fleet.release(1);
    assert_eq!(
        state
            .evaluate(SITE, &fleet.rollback(SITE, &r1, 4), &r1, now(), AGENT)
            .unwrap_err()
            .code(),
        "rollback_too_far"
    );
    // Upgrading to 4 and rolling back returns to 2, what the site ran before 4.
    install(&mut state, &fleet.assign(SITE, &r4, 5), &r4);
    assert_eq!(state.rollback_floor["pos"], 2);
    assert!(
        state
            .evaluate(SITE, &fleet.rollback(SITE, &r2, 6), &r2, now(), AGENT)
            .is_ok()
    );
}

#[test]
fn assignment_sequence_replayed_is_refused() {
    let fleet = Fleet::new();
    let mut state = state(&fleet);
    let (r1, r2) = (fleet.release(1), fleet.release(2));
    let first = fleet.assign(SITE, &r1, 7);
    install(&mut state, &first, &r1);
    // A different assignment with the same or an older sequence is a replay.
    for sequence in [7, 6] {
        let refusal = state
            .evaluate(SITE, &fleet.assign(SITE, &r2, sequence), &r2, now(), AGENT)
            .unwrap_err();
        assert_eq!(refusal, Refusal::Replay { sequence, last: 7 });
    }
    // The very same assignment polled again is recognised, not new.
    let again = state.evaluate(SITE, &first, &r1, now(), AGENT).unwrap();
    assert!(!again.is_new);
    // A newer sequence is accepted.
    assert!(
        state
            .evaluate(SITE, &fleet.assign(SITE, &r2, 8), &r2, now(), AGENT)
            .unwrap()
            .is_new
    );
}

#[test]
fn assignment_for_another_site_is_refused() {
    let fleet = Fleet::new();
    let release = fleet.release(1);
    let assignment = fleet.assign("store-0043", &release, 1);
    let refusal = state(&fleet)
        .evaluate(SITE, &assignment, &release, now(), AGENT)
        .unwrap_err();
    assert_eq!(
        refusal,
        Refusal::WrongSite {
            expected: SITE.into(),
            got: "store-0043".into()
        }
    );
    assert_eq!(refusal.code(), "wrong_site");
}

#[test]
fn assignment_pointing_at_another_releases_hash_is_refused() {
    let fleet = Fleet::new();
    let (r1, r2) = (fleet.release(1), fleet.release(2));
    let assignment = fleet.assign(SITE, &r1, 1);
    let refusal = state(&fleet)
        .evaluate(SITE, &assignment, &r2, now(), AGENT)
        .unwrap_err();
    assert_eq!(
        refusal,
        Refusal::ReleaseMismatch {
            expected: r1.digest(),
            got: r2.digest()
        }
    );
    assert_eq!(refusal.code(), "release_mismatch");
    // The digest covers the envelope, so a re-signed copy of the same release (one more
    // signature) is not the release the assignment names either.
    let mut resigned = r1.clone();
    resigned
        .signatures
        .extend(Envelope::sign(&r1.payload_type, b"x", &[&key(12)]).signatures);
    assert_eq!(
        state(&fleet)
            .evaluate(SITE, &assignment, &resigned, now(), AGENT)
            .unwrap_err()
            .code(),
        "release_mismatch"
    );
}

#[test]
fn assignment_signed_by_a_release_key_is_refused() {
    let fleet = Fleet::new();
    let release = fleet.release(1);
    let doc = assignment_doc(
        SITE,
        &release,
        1,
        "2026-05-01T00:00:00Z",
        "2026-09-01T00:00:00Z",
    );
    let forged = common::sign_assignment(&doc, &[&fleet.release_key]);
    let refusal = state(&fleet)
        .evaluate(SITE, &forged, &release, now(), AGENT)
        .unwrap_err();
    assert_eq!(refusal.code(), "threshold_not_met");
    // And a release signed by the coordinator's online key is refused: it cannot ship code.
    let doc = release_doc("pos", 9, "2026-03-01T00:00:00Z", "2027-03-01T00:00:00Z");
    let rogue = sign_release(&doc, &[&fleet.coordinator_key]);
    let assignment = fleet.assign(SITE, &rogue, 1);
    let refusal = state(&fleet)
        .evaluate(SITE, &assignment, &rogue, now(), AGENT)
        .unwrap_err();
    assert_eq!(refusal.code(), "threshold_not_met");
    assert!(refusal.to_string().contains("release"), "{refusal}");
}

#[test]
fn clock_moved_backwards_cannot_revive_an_expired_document() {
    let fleet = Fleet::new();
    let mut state = state(&fleet);
    let r1 = fleet.release(1);
    // Accept an assignment issued 2026-05-01: trusted time is now at least that.
    install(&mut state, &fleet.assign(SITE, &r1, 1), &r1);
    assert_eq!(state.trusted_time, Some(ts("2026-05-01T00:00:00Z")));
    // An assignment that expired on 2026-04-15, replayed to a box whose clock was set
    // back to 2026-04-01.
    let r2 = fleet.release(2);
    let doc = assignment_doc(SITE, &r2, 2, "2026-04-01T00:00:00Z", "2026-04-15T00:00:00Z");
    let stale = fleet.sign_assignment(&doc);
    let clock = ts("2026-04-01T00:00:00Z");
    assert_eq!(state.effective_now(clock), ts("2026-05-01T00:00:00Z"));
    let refusal = state.evaluate(SITE, &stale, &r2, clock, AGENT).unwrap_err();
    assert!(matches!(
        refusal,
        Refusal::Expired {
            doc: DocKind::Assignment,
            ..
        }
    ));
    // A fresh box with the same wrong clock would have accepted it: the trusted time is
    // what refused it.
    let fresh = TrustState::from_anchor(&fleet.root_envelope).unwrap();
    assert!(fresh.evaluate(SITE, &stale, &r2, clock, AGENT).is_ok());
    // And the trusted time never moves back.
    state.advance_time(ts("2020-01-01T00:00:00Z"));
    assert_eq!(state.trusted_time, Some(ts("2026-05-01T00:00:00Z")));
    // A clock ahead of the trusted time is used as is.
    assert_eq!(state.effective_now(now()), now());
}

#[test]
fn release_needing_a_newer_agent_is_refused() {
    let fleet = Fleet::new();
    let mut doc = release_doc("pos", 1, "2026-03-01T00:00:00Z", "2027-03-01T00:00:00Z");
    doc.min_agent_version = Some("0.10.0".into());
    let release = sign_release(&doc, &[&fleet.release_key]);
    let assignment = fleet.assign(SITE, &release, 1);
    let state = state(&fleet);
    let refusal = state
        .evaluate(SITE, &assignment, &release, now(), "0.9.3")
        .unwrap_err();
    assert_eq!(refusal.code(), "agent_too_old");
    assert!(
        state
            .evaluate(SITE, &assignment, &release, now(), "0.10.0")
            .is_ok()
    );
}

#[test]
fn persisted_state_restores_to_the_same_decisions() {
    let fleet = Fleet::new();
    let mut state = state(&fleet);
    let (r1, r2) = (fleet.release(1), fleet.release(2));
    install(&mut state, &fleet.assign(SITE, &r1, 1), &r1);
    install(&mut state, &fleet.assign(SITE, &r2, 2), &r2);
    let json = serde_json::to_string(&state.persisted()).unwrap();
    let restored =
        TrustState::restore(serde_json::from_str::<PersistedTrust>(&json).unwrap()).unwrap();
    assert_eq!(restored, state);
    assert_eq!(
        restored
            .evaluate(SITE, &fleet.assign(SITE, &r1, 2), &r1, now(), AGENT)
            .unwrap_err()
            .code(),
        "replay"
    );
    // A persisted root that was tampered with does not restore.
    let mut saved = state.persisted();
    saved.root.signatures.pop();
    assert_eq!(
        TrustState::restore(saved).unwrap_err().code(),
        "threshold_not_met"
    );
}

// ---- rollback to a release past its expiry ------------------------------------------------
//
// Expiry limits new installs. Going back (an explicit rollback assignment) to a release this
// site itself committed before is allowed after that release expired; nothing else changes.

/// Release `pos` counter `counter`, issued 2026-01-01, expiring 2026-04-01: valid when the
/// site installed it in March, expired at `now()` (2026-06-01).
fn expiring_release(fleet: &Fleet, counter: u64) -> Envelope {
    let doc = release_doc(
        "pos",
        counter,
        "2026-01-01T00:00:00Z",
        "2026-04-01T00:00:00Z",
    );
    sign_release(&doc, &[&fleet.release_key])
}

/// Installs `release` on 2026-03-15, while it is still valid.
fn install_in_march(fleet: &Fleet, state: &mut TrustState, release: &Envelope, sequence: u64) {
    let doc = assignment_doc(
        SITE,
        release,
        sequence,
        "2026-03-01T00:00:00Z",
        "2026-09-01T00:00:00Z",
    );
    let accepted = state
        .evaluate(
            SITE,
            &fleet.sign_assignment(&doc),
            release,
            ts("2026-03-15T00:00:00Z"),
            AGENT,
        )
        .unwrap();
    state.accept(&accepted);
    state.record_installed(&accepted.release);
}

#[test]
fn rollback_to_an_expired_release_this_site_ran_is_allowed() {
    let fleet = Fleet::new();
    let mut state = state(&fleet);
    let r1 = expiring_release(&fleet, 1);
    install_in_march(&fleet, &mut state, &r1, 1);
    let r2 = fleet.release(2);
    install(&mut state, &fleet.assign(SITE, &r2, 2), &r2);
    assert_eq!(state.ran_releases["pos"], vec![r1.digest(), r2.digest()]);

    let rollback = fleet.rollback(SITE, &r1, 3);
    let accepted = install(&mut state, &rollback, &r1);
    assert_eq!(accepted.release.counter, 1);
    assert!(accepted.release.expires <= now(), "the release has expired");
    assert_eq!(state.release_high_water["pos"], 1);
    // The same rollback assignment polled again is still fine.
    assert!(
        state
            .evaluate(SITE, &rollback, &r1, now(), AGENT)
            .is_ok_and(|a| !a.is_new)
    );
}

#[test]
fn rollback_to_an_expired_release_this_site_never_ran_is_refused() {
    let fleet = Fleet::new();
    let expired = expiring_release(&fleet, 1);
    // A site that ran releases 1 and 2 of the stream, but another envelope of counter 1:
    // what it ran is decided by the envelope's SHA-256, not by the counter or the id.
    let mut state = state(&fleet);
    let (r1, r2) = (fleet.release(1), fleet.release(2));
    install(&mut state, &fleet.assign(SITE, &r1, 1), &r1);
    install(&mut state, &fleet.assign(SITE, &r2, 2), &r2);
    let refusal = state
        .evaluate(
            SITE,
            &fleet.rollback(SITE, &expired, 3),
            &expired,
            now(),
            AGENT,
        )
        .unwrap_err();
    assert_eq!(
        refusal,
        Refusal::ExpiredRollback {
            id: "pos-1.1.0".into(),
            expires: ts("2026-04-01T00:00:00Z"),
            now: now(),
        }
    );
    assert_eq!(refusal.code(), "expired");
    assert!(refusal.to_string().contains("never committed"), "{refusal}");

    // A site that ran nothing of the stream.
    let refusal = TrustState::from_anchor(&fleet.root_envelope)
        .unwrap()
        .evaluate(
            SITE,
            &fleet.rollback(SITE, &expired, 1),
            &expired,
            now(),
            AGENT,
        )
        .unwrap_err();
    assert_eq!(refusal.code(), "expired");

    // Another site's record does not count: `ran_releases` of this box decides.
    let mut other = TrustState::from_anchor(&fleet.root_envelope).unwrap();
    install_in_march(&fleet, &mut other, &expired, 1);
    assert!(other.ran_releases["pos"].contains(&expired.digest()));
    assert!(!state.ran_releases["pos"].contains(&expired.digest()));
}

#[test]
fn an_expired_release_that_ran_before_is_refused_without_a_rollback_assignment() {
    let fleet = Fleet::new();
    let mut state = state(&fleet);
    let r1 = expiring_release(&fleet, 1);
    install_in_march(&fleet, &mut state, &r1, 1);
    let r2 = fleet.release(2);
    install(&mut state, &fleet.assign(SITE, &r2, 2), &r2);
    // An ordinary assignment is a new install: expiry applies (and the counter rule too,
    // but expiry is checked first).
    let refusal = state
        .evaluate(SITE, &fleet.assign(SITE, &r1, 3), &r1, now(), AGENT)
        .unwrap_err();
    assert!(
        matches!(
            refusal,
            Refusal::Expired {
                doc: DocKind::Release,
                ..
            }
        ),
        "{refusal:?}"
    );
    // The stateless check (as the CLI and the coordinator make it) never allows it.
    let rollback = fleet.rollback(SITE, &r1, 3);
    assert_eq!(
        fleetwave_shared::verify::verify_assigned_release(
            state.root(),
            &rollback,
            &r1,
            now(),
            Some(SITE)
        )
        .unwrap_err()
        .code(),
        "expired"
    );
}

#[test]
fn rollback_to_an_expired_release_keeps_every_other_check() {
    let fleet = Fleet::new();
    let mut state = state(&fleet);
    let r1 = expiring_release(&fleet, 1);
    install_in_march(&fleet, &mut state, &r1, 1);
    let r2 = fleet.release(2);
    install(&mut state, &fleet.assign(SITE, &r2, 2), &r2);
    fn code(state: &TrustState, assignment: &Envelope, release: &Envelope) -> &'static str {
        state
            .evaluate(SITE, assignment, release, now(), AGENT)
            .map(|_| ())
            .unwrap_err()
            .code()
    }

    // The assignment itself must not have expired.
    let mut doc = assignment_doc(SITE, &r1, 3, "2026-05-01T00:00:00Z", "2026-05-15T00:00:00Z");
    doc.rollback = true;
    assert_eq!(code(&state, &fleet.sign_assignment(&doc), &r1), "expired");
    // For this site.
    assert_eq!(
        code(&state, &fleet.rollback("store-0043", &r1, 3), &r1),
        "wrong_site"
    );
    // Naming this release envelope by its SHA-256.
    assert_eq!(
        code(&state, &fleet.rollback(SITE, &r2, 3), &r1),
        "release_mismatch"
    );
    // Signed by the coordinator role.
    let mut doc = assignment_doc(SITE, &r1, 3, "2026-05-01T00:00:00Z", "2026-09-01T00:00:00Z");
    doc.rollback = true;
    let forged = common::sign_assignment(&doc, &[&fleet.release_key]);
    assert_eq!(code(&state, &forged, &r1), "threshold_not_met");
    // The release still signed by the release role: a tampered copy is another envelope.
    let mut tampered = r1.clone();
    tampered.signatures[0].keyid = common::keyid(&key(12));
    assert_eq!(
        code(&state, &fleet.rollback(SITE, &tampered, 3), &tampered),
        "threshold_not_met"
    );
    // A fresh sequence.
    assert_eq!(code(&state, &fleet.rollback(SITE, &r1, 2), &r1), "replay");

    // And never below the floor: after 1, 2, 3 the floor is 2.
    let r3 = fleet.release(3);
    install(&mut state, &fleet.assign(SITE, &r3, 3), &r3);
    assert!(state.ran_releases["pos"].contains(&r1.digest()));
    assert_eq!(
        code(&state, &fleet.rollback(SITE, &r1, 4), &r1),
        "rollback_too_far"
    );
}

#[test]
fn the_record_of_what_ran_is_bounded_and_survives_a_restart() {
    let fleet = Fleet::new();
    let mut state = state(&fleet);
    let releases: Vec<Envelope> = (1..=10).map(|c| fleet.release(c)).collect();
    for (i, r) in releases.iter().enumerate() {
        install(&mut state, &fleet.assign(SITE, r, i as u64 + 1), r);
    }
    let expected: Vec<String> = releases[2..].iter().map(|r| r.digest()).collect();
    assert_eq!(
        state.ran_releases["pos"], expected,
        "the last 8, oldest first"
    );

    let json = serde_json::to_string(&state.persisted()).unwrap();
    let restored =
        TrustState::restore(serde_json::from_str::<PersistedTrust>(&json).unwrap()).unwrap();
    assert_eq!(restored.ran_releases, state.ran_releases);
    // A state saved before the record existed restores with an empty one.
    let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
    old.as_object_mut().unwrap().remove("ran_releases");
    let restored = TrustState::restore(serde_json::from_value(old).unwrap()).unwrap();
    assert!(restored.ran_releases.is_empty());
}
