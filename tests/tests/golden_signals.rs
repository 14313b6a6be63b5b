//! Scenario: a release that passes every health check but serves worse. Real agents scrape
//! their real demo apps' `/metrics` (`[signals.demo]`), summarize each minute and send the
//! minutes with their reports; the new release's app fails 20 % of its requests instead of
//! 1 % (its `app.toml`), still answering `/healthz` with 200. While the pigs' wave bakes,
//! the coordinator compares them with the general sites still on the previous release and
//! halts the rollout, naming the signal; with `auto_rollback` the pigs go back. No site of
//! the later wave ever installs it.
//!
//! Signals are per minute of real time, so this scenario takes a few minutes: the pigs'
//! first whole minutes on the new release have to pass and reach the coordinator.

use std::time::Duration;

use fleetwave_e2e::cluster::FleetOptions;
use fleetwave_e2e::release::DemoRelease;
use fleetwave_e2e::{Fleet, FleetSpec, PlanSpec, WaveSpec, eventually, patience};
use fleetwave_shared::protocol::operator::RolloutStatus;

const SIGNALS: &str = r#"
[signals.demo]
scrape_url = "http://{app_addr}/metrics"
interval_secs = 5
timeout_secs = 2

[[signals.demo.signal]]
name = "error_ratio"
kind = "ratio"
numerator = "http_errors_total"
denominator = "http_requests_total"
"#;

const ANALYSIS: &str = r#"
[[analysis]]
signal = "error_ratio"
direction = "increase_is_bad"
tolerance = { absolute = 0.02 }
min_sites = 3
min_samples = 5
"#;

/// About four minutes of real signal minutes: `./scripts/test` runs it (`--ignored`) in its
/// own process beside the rest of the suite rather than after it.
#[test]
#[ignore = "slow (real minutes of golden signals, about 4 minutes): ./scripts/test runs it in parallel with the suite"]
fn a_release_that_serves_worse_halts_in_the_first_wave_named_by_its_signal() -> anyhow::Result<()> {
    let spec = FleetSpec::cohorts(3, 0, 3, 0);
    let fleet = Fleet::start_with(
        spec.clone(),
        FleetOptions {
            agent_extra: SIGNALS.to_string(),
            ..FleetOptions::default()
        },
    )?;
    fleet.baseline(&DemoRelease::good("1.0.0", 1))?;

    let worse = DemoRelease::good("2.0.0", 2).metric("error_ratio", 0.2);
    fleet.publish(&worse)?;
    let plan = PlanSpec::new(
        "demo 2.0.0, judged on its error ratio",
        &worse.id,
        vec![
            WaveSpec::new("pigs").only("cohort", "pig"),
            WaveSpec::new("the rest"),
        ],
    )
    .auto_rollback(true)
    // A bake far longer than the analysis needs: only the analysis can end this wave.
    .every_gate(|g| g.bake_secs = 1800);
    let text = format!("{}{ANALYSIS}", plan.to_toml());
    let created = fleet.operator.create_rollout(&text)?;
    fleet.operator.rollout_action(&created.id, "start")?;
    let id = created.id;

    let view = eventually(
        "the analysis to halt the rollout",
        patience(Duration::from_secs(420)),
        || {
            let view = fleet.operator.rollout(&id)?;
            anyhow::ensure!(
                matches!(
                    view.status,
                    RolloutStatus::Halted | RolloutStatus::RolledBack
                ),
                "rollout is {}: {}",
                view.status.as_str(),
                view.waves
                    .first()
                    .map(|w| w.gate.clone())
                    .unwrap_or_default()
            );
            Ok(view)
        },
    )?;
    let halt = view
        .decisions
        .iter()
        .find(|d| d.kind == "halt")
        .expect("a halt decision");
    assert_eq!(halt.wave, Some(0), "{halt:?}");
    for words in [
        "golden-signal analysis failed",
        "error_ratio: fail",
        "one-sided p = ",
    ] {
        assert!(
            halt.reason.contains(words),
            "{words:?} missing: {}",
            halt.reason
        );
    }
    // Both medians, as the apps served them: 20 % errors upgraded, 1 % control.
    let number_after = |words: &str| -> f64 {
        let rest = &halt.reason[halt.reason.find(words).expect(words) + words.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        rest[..end].parse().unwrap_or(f64::NAN)
    };
    let (upgraded, control) = (
        number_after("upgraded median "),
        number_after("vs control "),
    );
    assert!((upgraded - 0.2).abs() < 0.01, "{upgraded}: {}", halt.reason);
    assert!((control - 0.01).abs() < 0.005, "{control}: {}", halt.reason);
    assert!(
        !view
            .decisions
            .iter()
            .any(|d| d.kind == "open_wave" && d.wave != Some(0)),
        "a later wave opened: {:#?}",
        view.decisions
    );

    // The pigs go back to 1.0.0; the general sites never touched 2.0.0.
    for pig in spec.sites.iter().filter(|s| s.id.starts_with("pig")) {
        fleet.wait_version(&pig.id, "1.0.0")?;
    }
    for site in spec.sites.iter().filter(|s| !s.id.starts_with("pig")) {
        let phases = fleet.phases(&site.id, &worse.id)?;
        assert!(
            !phases.iter().any(|p| matches!(
                p.as_str(),
                "leased" | "downloading" | "installing" | "verifying" | "committed"
            )),
            "{} worked on the degraded release: {phases:?}",
            site.id
        );
        assert_eq!(fleet.site(&site.id)?.version_served()?, "1.0.0");
    }
    Ok(())
}
