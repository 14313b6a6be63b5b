//! Retries and schedules (issue 17) over real processes: a `command` release whose install
//! script fails on its first attempt (it leaves a marker file, and succeeds once the marker
//! is there) is tried again by the plan's `[retry]` policy and the site ends succeeded; an
//! operator retries a failed site with the real `fleetwave rollout retry --site`; a rollout
//! with `start_at` a few seconds ahead starts itself.

use std::path::Path;

use fleetwave_e2e::release::{CommandRelease, DemoRelease};
use fleetwave_e2e::{Fleet, FleetSpec, PlanSpec, Spawn, WaveSpec, bins, eventually_default};
use fleetwave_shared::protocol::operator::{RolloutStatus, RolloutView};

/// What the install script says when it fails.
const FAILURE: &str = "the package mirror did not answer";

/// A command release whose install fails the first time it runs (creating `marker`) and
/// succeeds every time after (the marker is there).
fn fails_once(marker: &Path, counter: u64) -> CommandRelease {
    let m = marker.display();
    CommandRelease::new("tool", &format!("1.0.{counter}"), counter).script(
        "install",
        &format!("if [ -e '{m}' ]; then exit 0; fi; touch '{m}'; echo '{FAILURE}' >&2; exit 1"),
    )
}

/// One wave, every site must succeed, no failure tolerated.
fn one_wave(release: &str) -> PlanSpec {
    PlanSpec::new(
        &format!("{release} everywhere"),
        release,
        vec![WaveSpec::new("everyone").gate(|g| g.bake_secs = 1)],
    )
}

fn reasons<'a>(view: &'a RolloutView, kind: &str) -> Vec<&'a str> {
    view.decisions
        .iter()
        .filter(|d| d.kind == kind)
        .map(|d| d.reason.as_str())
        .collect()
}

/// The real `fleetwave` CLI against the fleet's coordinator, as an operator runs it.
fn cli(fleet: &Fleet, label: &str, args: &[&str]) -> anyhow::Result<String> {
    Ok(
        Spawn::new(label, bins::binary(bins::CLI)?, &fleet.dirs.logs)
            .env("FLEETWAVE_URL", &fleet.coordinator.url)
            .env("FLEETWAVE_TOKEN", &fleet.coordinator.admin_token)
            .env("FLEETWAVE_CA", fleet.coordinator.ca.display().to_string())
            .args(args.iter().copied())
            .run()?,
    )
}

#[test]
fn a_failed_install_is_retried_by_the_plans_policy_and_succeeds() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetSpec::cohorts(1, 0, 0, 0))?;
    let marker = fleet.dirs.work.join("pig-1.tried");
    let release = fails_once(&marker, 1);
    fleet.publish_command(&release)?;
    let id = fleet.rollout(&one_wave(&release.id).retry(3, 1))?;

    // A failure budget of 0, yet the rollout completes: the failure was retried.
    let view = fleet.wait_rollout_status(&id, RolloutStatus::Completed)?;
    assert!(marker.exists(), "the first attempt never ran its install");
    let tally = &view.waves[0].tally;
    assert_eq!((tally.succeeded, tally.failed), (1, 0), "{tally:?}");

    let scheduled = reasons(&view, "retry_scheduled");
    assert_eq!(scheduled.len(), 1, "{:#?}", view.decisions);
    for d in view.decisions.iter().filter(|d| d.kind.starts_with("retr")) {
        println!("timeline {} {}: {}", d.at, d.kind, d.reason);
    }
    assert!(
        scheduled[0].starts_with("site pig-1 failed (attempt 1 of 3): ")
            && scheduled[0].contains(FAILURE)
            && scheduled[0].contains("; retrying at "),
        "{}",
        scheduled[0]
    );
    assert_eq!(
        reasons(&view, "retried"),
        [format!(
            "site pig-1 retried (attempt 2 of 3) by the plan's retry policy; attempt 1 of 3 had \
             failed: {}",
            scheduled[0]
                .split_once("): ")
                .and_then(|(_, rest)| rest.split_once("; retrying at "))
                .map(|(words, _)| words)
                .unwrap_or_default()
        )]
    );
    // The agent really failed once and committed on the second attempt.
    let phases = fleet.phases("pig-1", &release.id)?;
    let failed = phases.iter().position(|p| p == "failed");
    let committed = phases.iter().rposition(|p| p == "committed");
    assert!(
        matches!((failed, committed), (Some(f), Some(c)) if f < c),
        "{phases:?}"
    );
    Ok(())
}

#[test]
fn an_operator_retries_a_failed_site_from_the_cli() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetSpec::cohorts(1, 0, 0, 0))?;
    let marker = fleet.dirs.work.join("pig-1.tried");
    let release = fails_once(&marker, 1);
    fleet.publish_command(&release)?;
    // max_attempts = 1: nothing is retried by itself; the failure halts the rollout.
    let id = fleet.rollout(&one_wave(&release.id).retry(1, 1))?;
    let (view, halt) = fleet.wait_halted(&id)?;
    assert_eq!(view.status, RolloutStatus::Halted, "{halt:?}");
    assert!(reasons(&view, "retry_scheduled").is_empty());

    let out = cli(
        &fleet,
        "fleetwave-rollout-retry",
        &["rollout", "retry", &id, "--site", "pig-1"],
    )?;
    assert!(!out.trim().is_empty(), "retry printed nothing");
    cli(
        &fleet,
        "fleetwave-rollout-resume",
        &["rollout", "resume", &id],
    )?;

    let view = fleet.wait_rollout_status(&id, RolloutStatus::Completed)?;
    let tally = &view.waves[0].tally;
    assert_eq!((tally.succeeded, tally.failed), (1, 0), "{tally:?}");
    let retried = reasons(&view, "retried");
    assert_eq!(retried.len(), 1, "{:#?}", view.decisions);
    assert!(
        retried[0].starts_with("site pig-1 (attempt 2) retried by ")
            && retried[0].contains(FAILURE),
        "{}",
        retried[0]
    );
    Ok(())
}

#[test]
fn a_rollout_with_start_at_a_few_seconds_ahead_starts_itself() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetSpec::cohorts(1, 0, 0, 0))?;
    let release = DemoRelease::good("1.0.0", 1);
    fleet.publish(&release)?;
    let start_at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(4);
    let start_text = start_at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let id = fleet.rollout(&one_wave(&release.id).start_at(&start_text))?;
    let start_at: jiff::Timestamp = start_text.parse()?;

    let view = eventually_default("the rollout to start itself", || {
        let view = fleet.operator.rollout(&id)?;
        anyhow::ensure!(
            view.status == RolloutStatus::Running || view.status == RolloutStatus::Completed,
            "{} ({:?})",
            view.status.as_str(),
            view.status_reason
        );
        Ok(view)
    })?;
    let started: Vec<_> = view
        .decisions
        .iter()
        .filter(|d| d.kind == "started")
        .collect();
    assert_eq!(started.len(), 2, "{:#?}", view.decisions);
    assert!(
        started[0]
            .reason
            .contains("scheduled; the wave controller starts it at its start_at"),
        "{}",
        started[0].reason
    );
    assert!(
        started[1].reason.starts_with("started at its start_at 20")
            && started[1].reason.ends_with("by the wave controller"),
        "{}",
        started[1].reason
    );
    assert!(
        started[1].at >= start_at,
        "started before its start_at: {started:?}"
    );
    assert_eq!(view.start_at.as_ref().map(|s| s.at), Some(start_at));
    fleet.wait_rollout_status(&id, RolloutStatus::Completed)?;
    fleet.wait_version("pig-1", "1.0.0")?;
    Ok(())
}
