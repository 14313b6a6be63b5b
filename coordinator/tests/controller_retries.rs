//! The plan's `[retry]` policy in the pure controller: a failed site with attempts left
//! counts as in progress, gets its next attempt scheduled once and started when its
//! back-off has passed (on the `now` the controller is given), and counts as failed once,
//! by its last attempt. Synthetic facts, a fixed clock.

use fleetwave_coordinator::controller::{
    Decision, RolloutStatus, RolloutView, SiteFacts, SiteState, WaveView, site_status, tick,
};
use fleetwave_coordinator::plan::{PlanFormat, RolloutPlan, parse_plan};
use fleetwave_shared::protocol::Phase;
use jiff::{SignedDuration, Timestamp};

fn t0() -> Timestamp {
    "2026-03-02T10:00:00Z".parse().unwrap()
}

/// `t0` plus `m` minutes.
fn at(m: i64) -> Timestamp {
    t0() + SignedDuration::from_mins(m)
}

/// One wave, no failure tolerated, every site must succeed; `retry` is the `[retry]` body.
fn plan(retry: &str) -> RolloutPlan {
    let text = format!(
        "name = \"x\"\nrelease = \"r\"\n{retry}\n[[waves]]\nname = \"stores\"\ngate = {{ success_ratio = 1.0, failure_budget = 0, bake = \"1m\" }}\n"
    );
    parse_plan(&text, PlanFormat::Toml).unwrap()
}

fn three_attempts() -> RolloutPlan {
    plan("[retry]\nmax_attempts = 3\nbackoff = \"5m\"\nmax_backoff = \"1h\"\n")
}

fn view(plan: RolloutPlan, status: RolloutStatus, sites: Vec<SiteFacts>) -> RolloutView {
    RolloutView {
        rollout_id: "r1".into(),
        plan,
        status,
        current_wave: Some(0),
        waves: vec![WaveView {
            opened_at: Some(t0()),
            approved_at: None,
            sites,
            analysis: vec![],
        }],
    }
}

/// A site whose attempt `attempt` failed at minute `m` with the agent's words.
fn failed(id: &str, attempt: u32, m: i64) -> SiteFacts {
    SiteFacts {
        assigned_at: Some(t0()),
        leased_at: Some(at(m - 1)),
        last_phase: Some(Phase::Failed),
        last_phase_at: Some(at(m)),
        last_report_at: Some(at(m)),
        failed_at: Some(at(m)),
        failure: Some("prepare: no space left on device".into()),
        attempt,
        ..SiteFacts::new(id)
    }
}

fn installing(id: &str) -> SiteFacts {
    SiteFacts {
        assigned_at: Some(t0()),
        leased_at: Some(at(1)),
        last_phase: Some(Phase::Installing),
        last_phase_at: Some(at(1)),
        last_report_at: Some(at(1)),
        ..SiteFacts::new(id)
    }
}

fn retries(decisions: &[Decision]) -> Vec<&Decision> {
    decisions
        .iter()
        .filter(|d| matches!(d, Decision::ScheduleRetry { .. } | Decision::Retry { .. }))
        .collect()
}

#[test]
fn a_failure_with_attempts_left_is_in_progress_and_its_retry_is_scheduled_once() {
    let v = view(
        three_attempts(),
        RolloutStatus::Running,
        vec![failed("s-1", 1, 1), installing("s-2")],
    );
    let gate = &v.plan.waves[0].gate;
    let st = site_status(gate, t0(), &v.waves[0].sites[0], at(2));
    assert_eq!(st.state, SiteState::InProgress, "{}", st.detail);
    assert_eq!(
        st.detail,
        "install failed: prepare: no space left on device (attempt 1 of 3); retrying at \
         2026-03-02T10:06:00Z"
    );

    // A failure budget of 0 does not halt: the rollout keeps running and schedules it.
    let out = tick(&v, at(2));
    assert_eq!(out.status, RolloutStatus::Running, "{:?}", out.decisions);
    assert!(!out.decisions.iter().any(|d| d.kind() == "halt"));
    assert_eq!(
        retries(&out.decisions),
        vec![&Decision::ScheduleRetry {
            wave: 0,
            site_id: "s-1".into(),
            attempt: 1,
            at: at(6),
            reason: "site s-1 failed (attempt 1 of 3): prepare: no space left on device; \
                     retrying at 2026-03-02T10:06:00Z (back-off 5m)"
                .into(),
        }]
    );
    assert!(out.decisions[0].changes_state());
    assert_eq!(
        tick(&v, at(2)),
        out,
        "the same view and time, the same outcome"
    );

    // Once stored, it is not scheduled again, and nothing starts before its time.
    let mut v = v;
    v.waves[0].sites[0].retry_at = Some(at(6));
    for now in [at(2), at(5)] {
        assert!(retries(&tick(&v, now).decisions).is_empty(), "{now}");
    }

    // At its time the next attempt starts.
    let out = tick(&v, at(6));
    let [
        Decision::Retry {
            wave: 0,
            site_id,
            attempt: 2,
            reason,
        },
    ] = retries(&out.decisions)[..]
    else {
        panic!("{:?}", out.decisions)
    };
    assert_eq!(site_id, "s-1");
    assert_eq!(
        reason,
        "site s-1 retried (attempt 2 of 3) by the plan's retry policy; attempt 1 of 3 had \
         failed: prepare: no space left on device"
    );
    assert_eq!(out.decisions[0].kind(), "retried");
}

#[test]
fn the_back_off_doubles_per_attempt_up_to_its_cap() {
    let p = plan("[retry]\nmax_attempts = 10\nbackoff = \"5m\"\nmax_backoff = \"12m\"\n");
    for (attempt, wait) in [(1, 5), (2, 10), (3, 12), (9, 12)] {
        let v = view(
            p.clone(),
            RolloutStatus::Running,
            vec![failed("s-1", attempt, 1)],
        );
        let out = tick(&v, at(2));
        let [Decision::ScheduleRetry { at: when, .. }] = retries(&out.decisions)[..] else {
            panic!("{:?}", out.decisions)
        };
        assert_eq!(*when, at(1 + wait), "attempt {attempt}");
    }
}

#[test]
fn a_site_out_of_attempts_counts_as_failed_once_by_its_last_attempt() {
    let v = view(
        three_attempts(),
        RolloutStatus::Running,
        vec![failed("s-1", 3, 20), installing("s-2")],
    );
    let st = site_status(&v.plan.waves[0].gate, t0(), &v.waves[0].sites[0], at(21));
    assert_eq!(st.state, SiteState::Failed);
    assert_eq!(
        st.detail,
        "install failed: prepare: no space left on device (attempt 3 of 3)"
    );
    let out = tick(&v, at(21));
    assert_eq!(out.status, RolloutStatus::Halted, "{:?}", out.decisions);
    assert!(retries(&out.decisions).is_empty());
    let Decision::Halt { reason, .. } = &out.decisions[0] else {
        panic!("{:?}", out.decisions)
    };
    assert!(reason.contains("1 failures of budget 0"), "{reason}");
}

#[test]
fn without_a_retry_table_a_failure_halts_at_once_as_before() {
    let v = view(
        plan(""),
        RolloutStatus::Running,
        vec![failed("s-1", 1, 1), installing("s-2")],
    );
    let out = tick(&v, at(2));
    assert_eq!(out.status, RolloutStatus::Halted);
    assert!(retries(&out.decisions).is_empty());
    let st = site_status(&v.plan.waves[0].gate, t0(), &v.waves[0].sites[0], at(2));
    assert_eq!(
        st.detail, "install failed: prepare: no space left on device",
        "a first attempt without a policy names no attempt"
    );
}

#[test]
fn skipped_rolled_back_and_broken_boxes_and_unhealthy_commits_are_never_retried() {
    let skipped = SiteFacts {
        skipped: true,
        ..failed("a-skipped", 1, 1)
    };
    let sent_back = SiteFacts {
        rollback_assigned: true,
        ..failed("b-sent-back", 1, 1)
    };
    let broken = SiteFacts {
        last_phase: Some(Phase::RollbackFailed),
        ..failed("c-rollback-failed", 1, 1)
    };
    let unhealthy = SiteFacts {
        assigned_at: Some(t0()),
        last_phase: Some(Phase::Committed),
        last_phase_at: Some(at(1)),
        committed_at: Some(at(1)),
        first_unhealthy_after_commit_at: Some(at(1) + SignedDuration::from_secs(10)),
        last_report_at: Some(at(2)),
        ..SiteFacts::new("d-unhealthy")
    };
    let mut p = three_attempts();
    p.waves[0].gate.failure_budget = Some(10);
    p.waves[0].gate.success_ratio = 0.0;
    // Waits for approval: the rollout runs on, so retries would be decided.
    p.waves[0].gate.approval = true;
    let v = view(
        p,
        RolloutStatus::Running,
        vec![skipped, sent_back, broken, unhealthy],
    );
    let out = tick(&v, at(30));
    assert!(retries(&out.decisions).is_empty(), "{:?}", out.decisions);
    for s in &v.waves[0].sites[1..] {
        let st = site_status(&v.plan.waves[0].gate, t0(), s, at(30));
        assert_eq!(st.state, SiteState::Failed, "{}: {}", s.site_id, st.detail);
    }
}

#[test]
fn a_paused_rollout_schedules_but_starts_no_attempt_and_a_halted_one_does_neither() {
    let mut v = view(
        three_attempts(),
        RolloutStatus::Paused,
        vec![failed("s-1", 1, 1), failed("s-2", 1, 1)],
    );
    v.waves[0].sites[1].retry_at = Some(at(6));
    let out = tick(&v, at(30));
    let kinds: Vec<&str> = retries(&out.decisions).iter().map(|d| d.kind()).collect();
    assert_eq!(kinds, ["retry_scheduled"], "{:?}", out.decisions);
    assert_eq!(out.status, RolloutStatus::Paused);

    v.status = RolloutStatus::Running;
    let kinds: Vec<(&str, Option<u32>)> = retries(&tick(&v, at(30)).decisions)
        .iter()
        .map(|d| (d.kind(), d.wave()))
        .collect();
    assert_eq!(
        kinds,
        [("retry_scheduled", Some(0)), ("retried", Some(0))],
        "sites in order: s-1 is scheduled, s-2 starts"
    );

    v.status = RolloutStatus::Halted;
    assert!(tick(&v, at(30)).decisions.is_empty());
}

#[test]
fn a_rollout_that_completes_starts_no_retry() {
    let mut p = three_attempts();
    p.waves[0].gate.success_ratio = 0.5;
    p.waves[0].gate.failure_budget = Some(1);
    let ok = SiteFacts {
        assigned_at: Some(t0()),
        last_phase: Some(Phase::Committed),
        last_phase_at: Some(at(1)),
        committed_at: Some(at(1)),
        last_healthy_at: Some(at(3)),
        last_report_at: Some(at(3)),
        ..SiteFacts::new("s-1")
    };
    let mut waiting = failed("s-2", 1, 1);
    waiting.retry_at = Some(at(6));
    let v = view(p, RolloutStatus::Running, vec![ok, waiting]);
    let out = tick(&v, at(10));
    assert_eq!(out.status, RolloutStatus::Completed, "{:?}", out.decisions);
    assert!(retries(&out.decisions).is_empty(), "{:?}", out.decisions);
}
