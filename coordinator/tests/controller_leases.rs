//! Lease decisions: windows in site-local time, freezes, concurrency, rollout state.

use std::collections::BTreeMap;

use fleetwave_coordinator::controller::leases::{
    CONCURRENCY_RETRY_SECS, MAX_RETRY_AFTER_SECS, compartment_limit, compartment_of,
};
use fleetwave_coordinator::controller::{
    LeaseContext, LeaseDenial, LeaseDenialReason, RolloutStatus, lease_decision,
};
use fleetwave_coordinator::plan::{PlanFormat, RolloutPlan, parse_plan};
use fleetwave_shared::window::Freeze;
use jiff::Timestamp;

const PLAN: &str = r#"
name = "pos 2.4"
release = "pos-2.4.0"

[window]
start = "02:00"
end = "05:00"

[[waves]]
name = "pigs"
selector = { cohort = "pig" }
max_concurrent = 2

[[waves]]
name = "rest"
compartment = { label = "region", max_percent = 10 }
"#;

fn plan() -> RolloutPlan {
    parse_plan(PLAN, PlanFormat::Toml).unwrap()
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn berlin() -> BTreeMap<String, String> {
    [("tz", "Europe/Berlin"), ("region", "eu-central")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// 2026-01-15 01:30 UTC is 02:30 in Berlin: inside the window.
const INSIDE: &str = "2026-01-15T01:30:00Z";

fn ctx<'a>(
    plan: &'a RolloutPlan,
    labels: &'a BTreeMap<String, String>,
    freezes: &'a [Freeze],
) -> LeaseContext<'a> {
    LeaseContext {
        plan,
        status: RolloutStatus::Running,
        current_wave: Some(1),
        site_wave: Some(0),
        site_labels: labels,
        assignment_sequence: Some(7),
        requested_sequence: 7,
        deferred_until: None,
        freezes,
        holds_lease: false,
        wave_active_leases: 0,
        compartment_active_leases: 0,
        compartment_sites: 0,
    }
}

fn denied(c: &LeaseContext<'_>, now: &str) -> LeaseDenial {
    lease_decision(c, ts(now)).expect_err("lease should be denied")
}

#[test]
fn granted_inside_the_window_with_room() {
    let (p, l) = (plan(), berlin());
    assert_eq!(lease_decision(&ctx(&p, &l, &[]), ts(INSIDE)), Ok(()));
}

#[test]
fn outside_the_window_retry_after_is_until_it_opens() {
    let (p, l) = (plan(), berlin());
    // 00:30 UTC = 01:30 Berlin: the window opens in 30 minutes.
    let d = denied(&ctx(&p, &l, &[]), "2026-01-15T00:30:00Z");
    assert_eq!(d.reason, LeaseDenialReason::OutsideWindow);
    assert_eq!(d.retry_after_secs, 1800);
    assert!(
        d.message
            .contains("outside the maintenance window 02:00-05:00 (Europe/Berlin); it opens at 2026-01-15 02:00 CET"),
        "{}",
        d.message
    );
    // At noon the next opening is hours away: capped.
    let d = denied(&ctx(&p, &l, &[]), "2026-01-15T12:00:00Z");
    assert_eq!(d.retry_after_secs, MAX_RETRY_AFTER_SECS);
    // The same instant is inside the window for a site in UTC+1 only: a UTC site is out.
    let utc = BTreeMap::new();
    let d = denied(&ctx(&p, &utc, &[]), INSIDE);
    assert_eq!(d.reason, LeaseDenialReason::OutsideWindow);
    assert_eq!(d.retry_after_secs, 1800);
}

#[test]
fn summer_time_moves_the_window_in_utc() {
    let (p, l) = (plan(), berlin());
    // 00:30 UTC in July is 02:30 CEST: inside.
    assert_eq!(
        lease_decision(&ctx(&p, &l, &[]), ts("2026-07-15T00:30:00Z")),
        Ok(())
    );
}

#[test]
fn an_unknown_time_zone_label_is_refused_clearly() {
    let p = plan();
    let mut l = berlin();
    l.insert("tz".into(), "Mars/Olympus".into());
    let d = denied(&ctx(&p, &l, &[]), INSIDE);
    assert_eq!(d.reason, LeaseDenialReason::OutsideWindow);
    assert!(d.message.contains("Mars/Olympus"), "{}", d.message);
}

#[test]
fn freezes_deny_until_the_last_overlapping_one_ends() {
    let (p, l) = (plan(), berlin());
    let freezes = [
        Freeze {
            start: ts("2026-01-15T00:00:00Z"),
            end: ts("2026-01-15T01:45:00Z"),
            reason: "inventory".into(),
        },
        Freeze {
            start: ts("2026-01-15T01:40:00Z"),
            end: ts("2026-01-15T01:50:00Z"),
            reason: String::new(),
        },
    ];
    let d = denied(&ctx(&p, &l, &freezes), INSIDE);
    assert_eq!(d.reason, LeaseDenialReason::Frozen);
    assert_eq!(d.retry_after_secs, 20 * 60);
    assert!(d.message.contains("(inventory)"), "{}", d.message);
    assert_eq!(
        lease_decision(&ctx(&p, &l, &freezes), ts("2026-01-15T01:50:00Z")),
        Ok(())
    );
}

#[test]
fn wave_concurrency_limit_and_renewals() {
    let (p, l) = (plan(), berlin());
    let mut c = ctx(&p, &l, &[]);
    c.wave_active_leases = 1;
    assert_eq!(lease_decision(&c, ts(INSIDE)), Ok(()));
    c.wave_active_leases = 2;
    let d = denied(&c, INSIDE);
    assert_eq!(d.reason, LeaseDenialReason::ConcurrencyLimit);
    assert_eq!(d.retry_after_secs, CONCURRENCY_RETRY_SECS);
    assert_eq!(
        d.message,
        "wave 0 (\"pigs\") already has 2 of 2 sites installing"
    );
    // A site renewing its own lease is already counted.
    c.holds_lease = true;
    assert_eq!(lease_decision(&c, ts(INSIDE)), Ok(()));
}

#[test]
fn compartment_limit_is_a_share_of_the_label_value() {
    let (p, l) = (plan(), berlin());
    let comp = p.waves[1].compartment.as_ref().unwrap();
    assert_eq!(compartment_limit(comp, 25), 2);
    assert_eq!(compartment_limit(comp, 5), 1, "never below one site");
    assert_eq!(
        compartment_of(&p, 1, &l),
        Some(("region", "eu-central".to_string()))
    );
    assert_eq!(compartment_of(&p, 0, &l), None);

    let mut c = ctx(&p, &l, &[]);
    c.site_wave = Some(1);
    c.compartment_sites = 25;
    c.compartment_active_leases = 1;
    assert_eq!(lease_decision(&c, ts(INSIDE)), Ok(()));
    c.compartment_active_leases = 2;
    let d = denied(&c, INSIDE);
    assert_eq!(d.reason, LeaseDenialReason::ConcurrencyLimit);
    assert_eq!(
        d.message,
        "region=eu-central already has 2 of 2 sites installing"
    );
}

#[test]
fn rollout_state_assignment_and_deferral() {
    let (p, l) = (plan(), berlin());
    let check = |f: &dyn Fn(&mut LeaseContext<'_>), reason: LeaseDenialReason| {
        let mut c = ctx(&p, &l, &[]);
        f(&mut c);
        let d = denied(&c, INSIDE);
        assert_eq!(d.reason, reason, "{}", d.message);
        assert!(d.retry_after_secs >= 1 && d.retry_after_secs <= MAX_RETRY_AFTER_SECS);
        d
    };
    check(
        &|c| c.status = RolloutStatus::Paused,
        LeaseDenialReason::RolloutPaused,
    );
    check(
        &|c| c.status = RolloutStatus::Halted,
        LeaseDenialReason::RolloutHalted,
    );
    check(
        &|c| c.status = RolloutStatus::Aborted,
        LeaseDenialReason::RolloutHalted,
    );
    check(&|c| c.site_wave = None, LeaseDenialReason::NotAssigned);
    let d = check(
        &|c| {
            c.site_wave = Some(1);
            c.current_wave = Some(0);
        },
        LeaseDenialReason::NotAssigned,
    );
    assert_eq!(d.message, "the site's wave 1 (\"rest\") has not opened yet");
    check(
        &|c| c.assignment_sequence = None,
        LeaseDenialReason::NotAssigned,
    );
    let d = check(
        &|c| c.requested_sequence = 6,
        LeaseDenialReason::StaleAssignment,
    );
    assert_eq!(d.retry_after_secs, 1);
    let d = check(
        &|c| c.deferred_until = Some(ts("2026-01-15T01:40:00Z")),
        LeaseDenialReason::Deferred,
    );
    assert_eq!(d.retry_after_secs, 600);
    assert_eq!(d.to_protocol().reason.as_str(), "deferred");

    // Stragglers of a completed rollout may still install.
    let mut c = ctx(&p, &l, &[]);
    c.status = RolloutStatus::Completed;
    assert_eq!(lease_decision(&c, ts(INSIDE)), Ok(()));
}
