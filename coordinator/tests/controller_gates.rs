//! Gates and the controller's tick, driven with synthetic site facts and a fixed clock.

use fleetwave_coordinator::controller::gate::{failure_budget, needed};
use fleetwave_coordinator::controller::{
    Decision, GateVerdict, RolloutStatus, RolloutView, SiteFacts, SiteState, WaitBlocker,
    WaveGateFacts, WaveView, evaluate_gate, site_state, sites_to_roll_back, tally, tick,
};
use fleetwave_coordinator::plan::{Gate, OnSilent, PlanFormat, RolloutPlan, parse_plan};
use fleetwave_shared::protocol::Phase;
use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

fn t0() -> Timestamp {
    "2026-03-02T10:00:00Z".parse().unwrap()
}

/// `t0` plus `m` minutes.
fn at(m: i64) -> Timestamp {
    t0() + SignedDuration::from_mins(m)
}

fn gate(extra: &str) -> Gate {
    let text =
        format!("name = \"x\"\nrelease = \"r\"\n[[waves]]\nname = \"w\"\ngate = {{ {extra} }}\n");
    parse_plan(&text, PlanFormat::Toml).unwrap().waves[0]
        .gate
        .clone()
}

/// A site assigned at t0 that committed at `commit` and reported healthy at `healthy`.
fn committed(id: &str, commit: i64, healthy: i64) -> SiteFacts {
    SiteFacts {
        assigned_at: Some(t0()),
        leased_at: Some(at(commit - 5)),
        last_phase: Some(Phase::Committed),
        last_phase_at: Some(at(commit)),
        committed_at: Some(at(commit)),
        last_healthy_at: Some(at(healthy)),
        last_report_at: Some(at(healthy)),
        ..SiteFacts::new(id)
    }
}

fn assigned(id: &str) -> SiteFacts {
    SiteFacts {
        assigned_at: Some(t0()),
        ..SiteFacts::new(id)
    }
}

fn failed(id: &str, when: i64) -> SiteFacts {
    SiteFacts {
        assigned_at: Some(t0()),
        leased_at: Some(at(when - 5)),
        last_phase: Some(Phase::Failed),
        last_phase_at: Some(at(when)),
        last_report_at: Some(at(when)),
        failed_at: Some(at(when)),
        failure: Some("restart command exited 1".into()),
        ..SiteFacts::new(id)
    }
}

fn verdict(g: &Gate, sites: &[SiteFacts], now: Timestamp, approved: bool) -> GateVerdict {
    let t = tally(g, t0(), sites, now);
    evaluate_gate(
        g,
        &t,
        WaveGateFacts {
            opened_at: t0(),
            approved,
        },
        now,
    )
}

#[test]
fn success_needs_commit_and_health_for_the_whole_bake() {
    let g = gate("bake = \"30m\"");
    // Committed at 10, healthy at 39: still baking.
    let s = committed("a", 10, 39);
    assert_eq!(site_state(&g, t0(), &s, at(39)), SiteState::InProgress);
    // A healthy report at 40 (= commit + bake) closes the bake.
    let s = committed("a", 10, 40);
    assert_eq!(site_state(&g, t0(), &s, at(40)), SiteState::Succeeded);
    // An unhealthy report during the bake fails it, whatever came after.
    let s = SiteFacts {
        first_unhealthy_after_commit_at: Some(at(25)),
        ..committed("a", 10, 60)
    };
    assert_eq!(site_state(&g, t0(), &s, at(60)), SiteState::Failed);
    // Unhealthy only after a healthy report closed the bake: it succeeded.
    let s = SiteFacts {
        first_unhealthy_after_commit_at: Some(at(50)),
        ..committed("a", 10, 45)
    };
    assert_eq!(site_state(&g, t0(), &s, at(60)), SiteState::Succeeded);
    // Healthy reports from before the commit are no evidence.
    let s = committed("a", 10, 5);
    assert_eq!(site_state(&g, t0(), &s, at(50)), SiteState::InProgress);
}

#[test]
fn a_committed_site_that_goes_quiet_is_silent_not_succeeded() {
    let g = gate("bake = \"30m\", report_deadline = \"1h\"");
    let s = committed("a", 10, 12);
    assert_eq!(site_state(&g, t0(), &s, at(71)), SiteState::InProgress);
    assert_eq!(site_state(&g, t0(), &s, at(72)), SiteState::Silent);
    assert_eq!(site_state(&g, t0(), &s, at(10_000)), SiteState::Silent);
}

#[test]
fn silence_counts_from_the_latest_sign_of_life() {
    let g = gate("report_deadline = \"1h\"");
    let mut s = assigned("a");
    assert_eq!(site_state(&g, t0(), &s, at(59)), SiteState::Pending);
    assert_eq!(site_state(&g, t0(), &s, at(60)), SiteState::Silent);
    // A heartbeat restarts the clock.
    s.last_report_at = Some(at(50));
    assert_eq!(site_state(&g, t0(), &s, at(100)), SiteState::Pending);
    assert_eq!(site_state(&g, t0(), &s, at(110)), SiteState::Silent);
    // A site never assigned (it has not polled) turns silent from the wave's opening.
    let never = SiteFacts::new("b");
    assert_eq!(site_state(&g, t0(), &never, at(61)), SiteState::Silent);
}

#[test]
fn deferred_sites_are_not_silent_while_deferred() {
    let g = gate("report_deadline = \"1h\"");
    let s = SiteFacts {
        deferred_until: Some(at(6 * 60)),
        last_report_at: Some(at(1)),
        ..assigned("a")
    };
    assert_eq!(site_state(&g, t0(), &s, at(5 * 60)), SiteState::Deferred);
    // After the deferral the deadline runs from its end.
    assert_eq!(
        site_state(&g, t0(), &s, at(6 * 60 + 59)),
        SiteState::Pending
    );
    assert_eq!(site_state(&g, t0(), &s, at(7 * 60)), SiteState::Silent);
}

#[test]
fn failures_rollbacks_and_skips() {
    let g = Gate::default();
    assert_eq!(
        site_state(&g, t0(), &failed("a", 10), at(11)),
        SiteState::Failed
    );
    let rb = SiteFacts {
        rolled_back: true,
        last_phase: Some(Phase::RolledBack),
        last_phase_at: Some(at(12)),
        ..assigned("b")
    };
    assert_eq!(site_state(&g, t0(), &rb, at(13)), SiteState::Failed);
    // A later successful commit wins over an earlier failure (the agent retried).
    let retried = SiteFacts {
        failed_at: Some(at(5)),
        ..committed("c", 20, 40)
    };
    assert_eq!(site_state(&g, t0(), &retried, at(40)), SiteState::Succeeded);
    let skipped = SiteFacts {
        skipped: true,
        ..failed("d", 3)
    };
    assert_eq!(site_state(&g, t0(), &skipped, at(4)), SiteState::Skipped);
}

#[test]
fn counting_rules_round_sensibly() {
    let g = gate("success_ratio = 0.95");
    assert_eq!(needed(&g, 20), 19);
    assert_eq!(needed(&g, 48), 46);
    assert_eq!(needed(&g, 0), 0);
    assert_eq!(failure_budget(&g, 48), 2);
    let g = gate("success_ratio = 0.9, failure_budget = 3, failure_budget_percent = 5");
    assert_eq!(failure_budget(&g, 40), 2);
    assert_eq!(failure_budget(&g, 100), 3);
    let g = gate("failure_budget_percent = 10");
    assert_eq!(failure_budget(&g, 9), 0);
    assert_eq!(failure_budget(&g, 10), 1);
}

#[test]
fn on_silent_fail_counts_silence_as_failure_after_the_deadline() {
    let g = gate(
        "success_ratio = 0.8, failure_budget = 0, bake = \"10m\", report_deadline = \"1h\", on_silent = \"fail\"",
    );
    let mut sites: Vec<SiteFacts> = (0..9).map(|i| committed(&format!("s{i}"), 5, 20)).collect();
    sites.push(assigned("quiet"));
    // Before the deadline the quiet site is pending: 9 of 8 needed, it may pass.
    assert!(matches!(
        verdict(&g, &sites, at(30), false),
        GateVerdict::Pass { .. }
    ));
    // After the deadline it is a failure, and the budget is 0.
    match verdict(&g, &sites, at(61), false) {
        GateVerdict::Fail { reason } => {
            assert!(
                reason.starts_with(
                    "failure budget crossed: 1 failures (0 failed, 1 silent) of budget 0"
                ),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn on_silent_exclude_lets_the_rollout_continue() {
    let g = gate(
        "success_ratio = 1.0, failure_budget = 0, bake = \"10m\", report_deadline = \"1h\", on_silent = \"exclude\"",
    );
    let mut sites: Vec<SiteFacts> = (0..9).map(|i| committed(&format!("s{i}"), 5, 20)).collect();
    sites.push(assigned("quiet"));
    // Before the deadline the quiet site holds the wave (ratio 1.0).
    match verdict(&g, &sites, at(30), false) {
        GateVerdict::Wait { blocker, reason } => {
            assert_eq!(blocker, WaitBlocker::Successes);
            assert!(
                reason.contains("succeeded 9 of 10 needed (10 counted)"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    // After it, it is left out: 9 of 9.
    match verdict(&g, &sites, at(61), false) {
        GateVerdict::Pass { reason } => {
            assert!(
                reason.contains("succeeded 9 of 9 needed (9 counted)"),
                "{reason}"
            );
            assert!(reason.contains("1 silent (excluded)"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_wave_of_only_silent_sites_never_passes() {
    let g = gate("on_silent = \"exclude\", report_deadline = \"1h\"");
    let sites: Vec<SiteFacts> = (0..5).map(|i| assigned(&format!("s{i}"))).collect();
    assert!(matches!(
        verdict(&g, &sites, at(90), false),
        GateVerdict::Fail { .. }
    ));
}

#[test]
fn bake_time_is_required_at_site_and_wave_level() {
    let g = gate("success_ratio = 1.0, bake = \"30m\"");
    // Sites that were already on the target release before the wave opened succeed at
    // once, but the wave still stays open for its bake.
    let early: Vec<SiteFacts> = (0..3)
        .map(|i| SiteFacts {
            committed_at: Some(t0() - SignedDuration::from_hours(2)),
            last_healthy_at: Some(at(1)),
            ..SiteFacts::new(format!("s{i}"))
        })
        .collect();
    match verdict(&g, &early, at(12), false) {
        GateVerdict::Wait { blocker, reason } => {
            assert_eq!(blocker, WaitBlocker::Bake);
            assert!(reason.contains("wave open 12m of 30m bake"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        verdict(&g, &early, at(30), false),
        GateVerdict::Pass { .. }
    ));
    // Sites committed 12 minutes ago are baking, not succeeded.
    let baking: Vec<SiteFacts> = (0..3)
        .map(|i| committed(&format!("s{i}"), 40, 52))
        .collect();
    match verdict(&g, &baking, at(52), false) {
        GateVerdict::Wait { blocker, reason } => {
            assert_eq!(blocker, WaitBlocker::Successes);
            assert!(reason.contains("3 baking, furthest 12m of 30m"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn min_sample_is_capped_at_the_wave_size() {
    let g = gate("success_ratio = 0.5, min_sample = 4, bake = \"0s\"");
    let mut sites = vec![committed("a", 1, 2), committed("b", 1, 2)];
    sites.extend((0..3).map(|i| SiteFacts {
        leased_at: Some(at(1)),
        last_report_at: Some(at(2)),
        ..assigned(&format!("p{i}"))
    }));
    // ⌈0.5 × 5⌉ = 3 successes needed, 2 so far.
    assert!(matches!(
        verdict(&g, &sites, at(3), false),
        GateVerdict::Wait {
            blocker: WaitBlocker::Successes,
            ..
        }
    ));
    sites[2] = committed("p0", 1, 2);
    match verdict(&g, &sites, at(3), false) {
        GateVerdict::Wait { blocker, reason } => {
            assert_eq!(blocker, WaitBlocker::MinSample);
            assert!(reason.contains("finished 3 of min sample 4"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // A 2-site wave with min_sample 4 passes once both finished.
    let two = vec![committed("a", 1, 2), committed("b", 1, 2)];
    assert!(matches!(
        verdict(&g, &two, at(3), false),
        GateVerdict::Pass { .. }
    ));
}

#[test]
fn a_wave_that_cannot_reach_its_ratio_fails_instead_of_waiting() {
    // A generous budget, but 3 of 10 failed and the ratio needs 9.
    let g = gate("success_ratio = 0.9, failure_budget = 5");
    let mut sites: Vec<SiteFacts> = (0..7).map(|i| committed(&format!("s{i}"), 1, 20)).collect();
    sites.extend((0..3).map(|i| failed(&format!("f{i}"), 3)));
    match verdict(&g, &sites, at(20), false) {
        GateVerdict::Fail { reason } => assert!(
            reason.starts_with("cannot reach the success ratio any more: at most 7 of 9 needed"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
}

// ---- tick ------------------------------------------------------------------------

const PLAN: &str = r#"
name = "pos 2.4"
release = "pos-2.4.0"
auto_rollback = true

[[waves]]
name = "pigs"
selector = { cohort = "pig" }
gate = { success_ratio = 1.0, failure_budget = 0, bake = "10m" }

[[waves]]
name = "canary"
share = 10
gate = { success_ratio = 0.9, failure_budget = 1, bake = "10m", approval = true }

[[waves]]
name = "rest"
gate = { success_ratio = 0.9, bake = "10m" }
"#;

fn plan() -> RolloutPlan {
    parse_plan(PLAN, PlanFormat::Toml).unwrap()
}

fn view(status: RolloutStatus, current: Option<u32>, waves: Vec<WaveView>) -> RolloutView {
    RolloutView {
        rollout_id: "r-1".into(),
        plan: plan(),
        status,
        current_wave: current,
        waves,
    }
}

fn open(sites: Vec<SiteFacts>) -> WaveView {
    WaveView {
        opened_at: Some(t0()),
        approved_at: None,
        sites,
        analysis: vec![],
    }
}

fn good(prefix: &str, n: usize) -> Vec<SiteFacts> {
    (0..n)
        .map(|i| committed(&format!("{prefix}{i}"), 1, 20))
        .collect()
}

#[test]
fn tick_opens_the_first_wave_then_waits_then_opens_the_next() {
    let v = view(RolloutStatus::Running, None, vec![]);
    let out = tick(&v, at(0));
    assert_eq!(out.current_wave, Some(0));
    assert!(matches!(
        &out.decisions[..],
        [Decision::OpenWave { wave: 0, .. }]
    ));
    assert!(out.decisions[0].changes_state());
    assert!(out.changes(&v));

    // Applied: wave 0 open with pigs installing.
    let mut installing = good("pig", 2);
    installing[1] = SiteFacts {
        leased_at: Some(at(1)),
        last_report_at: Some(at(2)),
        last_phase: Some(Phase::Installing),
        ..assigned("pig1")
    };
    let v = view(RolloutStatus::Running, Some(0), vec![open(installing)]);
    let out = tick(&v, at(20));
    assert!(!out.changes(&v));
    match &out.decisions[..] {
        [
            Decision::Waiting {
                wave: 0,
                blocker,
                reason,
            },
        ] => {
            assert_eq!(*blocker, WaitBlocker::Successes);
            assert_eq!(
                reason,
                "wave 0 (\"pigs\"): waiting for sites to succeed: succeeded 1 of 2 needed (2 counted); 1 installing; failures 0 of budget 0"
            );
        }
        other => panic!("{other:?}"),
    }

    let v = view(RolloutStatus::Running, Some(0), vec![open(good("pig", 2))]);
    let out = tick(&v, at(20));
    assert_eq!(out.current_wave, Some(1));
    match &out.decisions[..] {
        [Decision::OpenWave { wave: 1, reason }] => assert_eq!(
            reason,
            "wave 0 (\"pigs\") passed its gate (gate passed: succeeded 2 of 2 needed (2 counted); failures 0 of budget 0): opening wave 1 (\"canary\")"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn approval_gates_the_next_wave() {
    let waves = |approved: bool| {
        vec![
            open(good("pig", 2)),
            WaveView {
                approved_at: approved.then(|| at(25)),
                ..open(good("can", 10))
            },
        ]
    };
    let v = view(RolloutStatus::Running, Some(1), waves(false));
    let out = tick(&v, at(30));
    assert_eq!(out.current_wave, Some(1));
    match &out.decisions[..] {
        [Decision::RequestApproval { wave: 1, reason }] => {
            assert!(
                reason.contains("gate passed, waiting for approval"),
                "{reason}"
            );
            assert!(reason.contains("needs approval"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!out.decisions[0].changes_state());
    let v = view(RolloutStatus::Running, Some(1), waves(true));
    let out = tick(&v, at(30));
    assert_eq!(out.current_wave, Some(2));
    assert!(matches!(
        &out.decisions[..],
        [Decision::OpenWave { wave: 2, .. }]
    ));
}

#[test]
fn the_last_wave_passing_completes_the_rollout() {
    let v = view(
        RolloutStatus::Running,
        Some(2),
        vec![
            open(good("pig", 2)),
            WaveView {
                approved_at: Some(at(1)),
                ..open(good("can", 10))
            },
            open(good("rest", 30)),
        ],
    );
    let out = tick(&v, at(30));
    assert_eq!(out.status, RolloutStatus::Completed);
    assert!(matches!(&out.decisions[..], [Decision::Complete { .. }]));
    // Applied: a completed rollout decides nothing more.
    let done = RolloutView {
        status: RolloutStatus::Completed,
        ..v
    };
    assert!(tick(&done, at(31)).decisions.is_empty());
}

#[test]
fn crossing_the_budget_halts_with_the_sites_to_roll_back() {
    let mut canary = good("can", 7);
    canary.push(failed("bad1", 10));
    canary.push(failed("bad2", 12));
    canary.push(assigned("untouched"));
    let v = view(
        RolloutStatus::Running,
        Some(1),
        vec![open(good("pig", 2)), open(canary)],
    );
    let out = tick(&v, at(20));
    assert_eq!(out.status, RolloutStatus::Halted);
    match &out.decisions[..] {
        [
            Decision::Halt {
                wave: 1,
                reason,
                rollback,
            },
        ] => {
            assert!(
                reason.starts_with(
                    "halted at wave 1 (\"canary\"): failure budget crossed: 2 failures of budget 1"
                ),
                "{reason}"
            );
            assert!(
                reason.ends_with("auto_rollback sends 11 site(s) back to the previous release"),
                "{reason}"
            );
            // Pigs and canaries that installed or tried; not the untouched site.
            assert_eq!(rollback.len(), 11);
            assert!(rollback.contains(&"pig0".to_string()));
            assert!(rollback.contains(&"bad2".to_string()));
            assert!(!rollback.contains(&"untouched".to_string()));
            assert_eq!(rollback, &sites_to_roll_back(&v));
        }
        other => panic!("{other:?}"),
    }
    // Without auto_rollback the list is empty.
    let mut v2 = v.clone();
    v2.plan.auto_rollback = false;
    match &tick(&v2, at(20)).decisions[..] {
        [Decision::Halt { rollback, .. }] => assert!(rollback.is_empty()),
        other => panic!("{other:?}"),
    }
    // Halted rollouts decide nothing more.
    let halted = RolloutView {
        status: RolloutStatus::Halted,
        ..v
    };
    assert!(tick(&halted, at(21)).decisions.is_empty());
}

#[test]
fn a_late_failure_in_an_earlier_wave_halts_the_rollout() {
    // The pigs passed long ago; now one of them reports failure while wave 2 bakes.
    let mut pigs = good("pig", 2);
    pigs.push(failed("pig-late", 200));
    let v = view(
        RolloutStatus::Running,
        Some(2),
        vec![
            open(pigs),
            WaveView {
                approved_at: Some(at(1)),
                ..open(good("can", 10))
            },
            open(vec![]),
        ],
    );
    let out = tick(&v, at(201));
    assert!(matches!(
        &out.decisions[..],
        [Decision::Halt { wave: 0, .. }]
    ));
}

#[test]
fn paused_rollouts_open_nothing_but_still_halt() {
    let v = view(RolloutStatus::Paused, Some(0), vec![open(good("pig", 2))]);
    let out = tick(&v, at(30));
    assert!(out.decisions.is_empty());
    assert_eq!(out.status, RolloutStatus::Paused);
    assert_eq!(out.current_wave, Some(0));

    let mut pigs = good("pig", 2);
    pigs.push(failed("pig-bad", 3));
    let v = view(RolloutStatus::Paused, Some(0), vec![open(pigs)]);
    let out = tick(&v, at(30));
    assert_eq!(out.status, RolloutStatus::Halted);

    for status in [
        RolloutStatus::Pending,
        RolloutStatus::Aborted,
        RolloutStatus::RolledBack,
    ] {
        let v = view(status, None, vec![]);
        assert!(tick(&v, at(0)).decisions.is_empty());
    }
}

#[test]
fn an_empty_wave_passes_after_its_bake() {
    let v = view(RolloutStatus::Running, Some(0), vec![open(vec![])]);
    assert!(matches!(
        &tick(&v, at(5)).decisions[..],
        [Decision::Waiting {
            blocker: WaitBlocker::Bake,
            ..
        }]
    ));
    assert!(matches!(
        &tick(&v, at(10)).decisions[..],
        [Decision::OpenWave { wave: 1, .. }]
    ));
}

#[test]
fn decision_keys_ignore_moving_numbers() {
    let v = view(RolloutStatus::Running, Some(0), vec![open(good("pig", 2))]);
    let a = tick(&v, at(3)).decisions;
    let b = tick(&v, at(6)).decisions;
    assert_ne!(a, b, "the bake minutes moved");
    assert_eq!(a[0].key(), b[0].key());
    assert_eq!(a[0].kind(), "waiting");
}

// ---- properties --------------------------------------------------------------------

/// Arbitrary facts for one site, with times within the first 10 hours.
fn arb_site() -> impl Strategy<Value = SiteFacts> {
    let t = || prop::option::of(0i64..600).prop_map(|m| m.map(at));
    (
        (t(), t(), t(), t(), t()),
        (t(), t(), t(), t()),
        (any::<bool>(), prop::bool::weighted(0.05)),
        prop::option::of(prop::sample::select(vec![
            Phase::Accepted,
            Phase::Waiting,
            Phase::Leased,
            Phase::Installing,
            Phase::Committed,
            Phase::Failed,
        ])),
        "[a-z]{6}",
    )
        .prop_map(
            |(
                (assigned_at, leased_at, last_report_at, committed_at, last_healthy_at),
                (unhealthy, failed_at, deferred_until, last_phase_at),
                (rolled_back, skipped),
                last_phase,
                id,
            )| SiteFacts {
                site_id: id,
                assigned_at,
                leased_at,
                last_phase,
                last_phase_at,
                last_report_at,
                committed_at,
                last_healthy_at,
                first_unhealthy_after_commit_at: match (unhealthy, committed_at) {
                    (Some(u), Some(c)) => Some(u.max(c)),
                    _ => None,
                },
                failed_at,
                failure: None,
                rolled_back: rolled_back && failed_at.is_some(),
                deferred_until,
                skipped,
                ..SiteFacts::default()
            },
        )
}

fn arb_gate() -> impl Strategy<Value = Gate> {
    (
        0.0f64..=1.0,
        prop::option::of(0u32..5),
        prop::option::of(0.0f64..30.0),
        0u32..10,
        0i64..120,
        60i64..240,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(ratio, fb, fbp, ms, bake, deadline, exclude, approval)| Gate {
                success_ratio: ratio,
                failure_budget: fb,
                failure_budget_percent: fbp,
                min_sample: ms,
                bake: SignedDuration::from_mins(bake),
                report_deadline: SignedDuration::from_mins(deadline),
                on_silent: if exclude {
                    OnSilent::Exclude
                } else {
                    OnSilent::Fail
                },
                approval,
                retry: Default::default(),
            },
        )
}

proptest! {
    /// A silent site never counts as success; a succeeded site always has the evidence.
    #[test]
    fn success_always_has_evidence(g in arb_gate(), s in arb_site(), now in 0i64..800) {
        let now = at(now);
        let state = site_state(&g, t0(), &s, now);
        if state == SiteState::Succeeded {
            let c = s.committed_at.expect("succeeded without a commit");
            prop_assert!(!s.skipped);
            prop_assert!(s.last_healthy_at.is_some_and(|h| h >= c + g.bake));
            prop_assert!(s.first_unhealthy_after_commit_at.is_none_or(|u| u >= c + g.bake));
        }
        // Silence is never success, and turning a site silent never adds a success.
        let mut quiet = s.clone();
        quiet.last_healthy_at = None;
        let before = tally(&g, t0(), std::slice::from_ref(&s), now).succeeded;
        let after = tally(&g, t0(), std::slice::from_ref(&quiet), now).succeeded;
        prop_assert!(after <= before);
        if state == SiteState::Silent {
            prop_assert_eq!(before, 0);
        }
    }

    /// A pass always meets the formula; a wave over its failure budget never passes.
    #[test]
    fn gate_verdicts_follow_the_formula(
        g in arb_gate(),
        sites in prop::collection::vec(arb_site(), 0..30),
        now in 0i64..800,
        approved in any::<bool>(),
    ) {
        let now = at(now);
        let t = tally(&g, t0(), &sites, now);
        let v = evaluate_gate(&g, &t, WaveGateFacts { opened_at: t0(), approved }, now);
        let counted = t.counted(g.on_silent);
        let over_budget = t.failures(g.on_silent) > failure_budget(&g, counted);
        if over_budget {
            prop_assert!(matches!(v, GateVerdict::Fail { .. }), "{:?}", v);
        }
        if let GateVerdict::Pass { .. } = v {
            prop_assert!(t.succeeded >= needed(&g, counted));
            prop_assert!(!over_budget);
            prop_assert!(t.finished(g.on_silent) >= g.min_sample.min(counted));
            prop_assert!(now >= t0() + g.bake);
            prop_assert!(!g.approval || approved);
            prop_assert!(!(counted == 0 && t.silent > 0));
        }
    }

    /// A wave never opens while an earlier one is over its failure budget; tick is
    /// deterministic.
    #[test]
    fn no_wave_opens_over_a_failed_gate(
        w0 in prop::collection::vec(arb_site(), 0..8),
        w1 in prop::collection::vec(arb_site(), 0..8),
        w2 in prop::collection::vec(arb_site(), 0..8),
        current in 0u32..3,
        approved in any::<bool>(),
        now in 0i64..800,
    ) {
        let now = at(now);
        let waves: Vec<WaveView> = [w0, w1, w2]
            .into_iter()
            .enumerate()
            .map(|(i, sites)| WaveView {
                opened_at: (i as u32 <= current).then(t0),
                approved_at: approved.then(t0),
                sites,
                analysis: vec![],
            })
            .collect();
        let v = view(RolloutStatus::Running, Some(current), waves);
        let out = tick(&v, now);
        prop_assert_eq!(&out, &tick(&v, now));
        prop_assert_eq!(out.decisions.len(), 1);
        let opened_upto = match &out.decisions[0] {
            Decision::OpenWave { wave, .. } => {
                prop_assert_eq!(*wave, current + 1);
                Some(*wave)
            }
            Decision::Complete { .. } => {
                prop_assert_eq!(current, 2);
                Some(3)
            }
            _ => None,
        };
        if let Some(upto) = opened_upto {
            for w in 0..upto {
                let pw = &v.plan.waves[w as usize];
                let t = tally(&pw.gate, t0(), &v.waves[w as usize].sites, now);
                let counted = t.counted(pw.gate.on_silent);
                prop_assert!(t.failures(pw.gate.on_silent) <= failure_budget(&pw.gate, counted));
            }
        }
    }
}

#[test]
fn applying_an_outcome_and_ticking_again_changes_nothing_more() {
    // Start: OpenWave 0. Apply it as the server would and tick again at the same time.
    let v = view(RolloutStatus::Running, None, vec![]);
    let out = tick(&v, at(0));
    let applied = view(
        out.status,
        out.current_wave,
        vec![WaveView {
            opened_at: Some(at(0)),
            approved_at: None,
            sites: vec![assigned("pig0")],
            analysis: vec![],
        }],
    );
    let again = tick(&applied, at(0));
    assert!(!again.changes(&applied), "{again:?}");
    assert!(again.decisions.iter().all(|d| !d.changes_state()));
}

#[test]
fn every_site_status_says_why_in_words_and_agrees_with_its_state() {
    use fleetwave_coordinator::controller::site_status;
    let g = gate("success_ratio = 1.0, bake = \"30m\", report_deadline = \"1h\"");
    let mut deferred = assigned("d");
    deferred.deferred_until = Some(at(90));
    let mut skipped = assigned("s");
    skipped.skipped = true;
    let mut unhealthy = committed("u", 10, 10);
    unhealthy.first_unhealthy_after_commit_at = Some(at(14));
    let cases: Vec<(SiteFacts, Timestamp, SiteState, &str)> = vec![
        (
            assigned("a"),
            at(5),
            SiteState::Pending,
            "assigned, not started",
        ),
        (
            SiteFacts::new("n"),
            at(5),
            SiteState::Pending,
            "not yet assigned",
        ),
        (
            committed("b", 10, 20),
            at(25),
            SiteState::InProgress,
            "committed, baking 15m of 30m",
        ),
        (
            committed("c", 10, 45),
            at(50),
            SiteState::Succeeded,
            "committed and healthy for the 30m bake",
        ),
        (failed("f", 12), at(20), SiteState::Failed, "install failed"),
        (
            unhealthy,
            at(20),
            SiteState::Failed,
            "unhealthy 4m after committing (bake 30m)",
        ),
        (
            assigned("q"),
            at(70),
            SiteState::Silent,
            "silent: nothing heard for 1h 10m",
        ),
        (
            deferred,
            at(60),
            SiteState::Deferred,
            "deferred by the site until",
        ),
        (skipped, at(5), SiteState::Skipped, "skipped by an operator"),
    ];
    for (site, now, state, words) in cases {
        let st = site_status(&g, t0(), &site, now);
        assert_eq!(st.state, state, "{}: {}", site.site_id, st.detail);
        assert_eq!(site_state(&g, t0(), &site, now), state, "{}", site.site_id);
        assert!(
            st.detail.contains(words),
            "{}: {:?} lacks {words:?}",
            site.site_id,
            st.detail
        );
    }
}

/// Times past the end of the calendar: a site deferred to the year 9999, a commit dated
/// there, a gate duration from an older, unbounded plan. Each used to panic the wave
/// controller (`Timestamp + SignedDuration` overflowed); now the site counts as failed
/// and the wave's gate fails, each with the reason in words.
#[test]
fn a_time_past_the_end_of_the_calendar_fails_the_site_instead_of_panicking() {
    use fleetwave_coordinator::controller::site_status;
    let g = gate("bake = \"30m\", report_deadline = \"1h\"");
    // A committed site deferred "until forever": its last sign of life plus the report
    // deadline overflows.
    let forever = SiteFacts {
        deferred_until: Some(Timestamp::MAX),
        ..committed("deferred-forever", 10, 12)
    };
    let st = site_status(&g, t0(), &forever, at(20));
    assert_eq!(st.state, SiteState::Failed, "{}", st.detail);
    assert!(st.detail.contains("cannot be judged"), "{}", st.detail);
    assert!(st.detail.contains("report deadline"), "{}", st.detail);

    // A commit dated at the last representable instant: commit + bake overflows.
    let future_commit = SiteFacts {
        committed_at: Some(Timestamp::MAX),
        ..committed("future-commit", 10, 12)
    };
    let st = site_status(&g, t0(), &future_commit, at(20));
    assert_eq!(st.state, SiteState::Failed, "{}", st.detail);
    assert!(st.detail.contains("bake end"), "{}", st.detail);

    // Such sites are failures, never successes: the budget of 0 is crossed.
    let strict = gate("success_ratio = 1.0, failure_budget = 0, bake = \"30m\"");
    match verdict(&strict, &[forever, committed("ok", 1, 40)], at(50), false) {
        GateVerdict::Fail { reason } => assert!(reason.contains("failure budget"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_wave_bake_past_the_end_of_the_calendar_halts_the_rollout_with_the_reason() {
    // A plan stored by an older coordinator that did not bound durations.
    let mut legacy = plan();
    legacy.waves[0].gate.bake = SignedDuration::from_secs(100_000_000_000 * 86_400);
    let v = RolloutView {
        plan: legacy,
        ..view(
            RolloutStatus::Running,
            Some(0),
            vec![open(vec![assigned("pig0")])],
        )
    };
    let out = tick(&v, at(30));
    assert_eq!(out.status, RolloutStatus::Halted);
    match &out.decisions[..] {
        [
            Decision::Halt {
                wave: 0, reason, ..
            },
        ] => {
            assert!(reason.contains("the gate cannot be judged"), "{reason}");
            assert!(reason.contains("the wave's bake end"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}
