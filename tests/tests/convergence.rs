//! Scenario: channels and convergence over real processes. A rollout completes and sets
//! its channel; then a store that opens later, a re-imaged box (an empty state directory,
//! re-enrolled with a `site rekey` token) and a site relabelled into the channel each reach
//! the channel's release by themselves, while a held site does not. Then the channel is
//! moved (with the real `fleetwave` CLI) to a release whose app fails its health check:
//! its convergence pauses on the first site and says why, and no other site is touched.

use fleetwave_e2e::plan::Match;
use fleetwave_e2e::release::DemoRelease;
use fleetwave_e2e::{
    Fleet, FleetOptions, FleetSpec, PlanSpec, Spawn, WaveSpec, bins, eventually_default,
};
use fleetwave_shared::protocol::channels::ChannelDetail;
use fleetwave_shared::protocol::operator::RolloutStatus;

/// Runs the `fleetwave` CLI against the fleet's coordinator; returns its stdout.
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

fn channel(fleet: &Fleet, name: &str) -> anyhow::Result<ChannelDetail> {
    Ok(fleet.operator.get(&format!("/v1/channels/{name}"))?)
}

#[test]
fn late_reimaged_and_relabelled_sites_converge_held_ones_do_not_and_a_bad_channel_pauses()
-> anyhow::Result<()> {
    let spec = FleetSpec::cohorts(0, 0, 5, 0)
        .with_site("general-1", |s| s.label("format", "store"))
        .with_site("general-2", |s| s.label("format", "store"))
        .with_site("general-3", |s| s.label("format", "store"))
        .with_site("general-4", |s| s.label("format", "store"))
        .with_site("general-5", |s| s.label("format", "kiosk"));
    let options = FleetOptions {
        enroll_later: ["general-3".to_string()].into(),
        ..FleetOptions::default()
    };
    let mut fleet = Fleet::start_with(spec, options)?;
    cli(
        &fleet,
        "hold-general-4",
        &["site", "hold", "general-4", "--reason", "vendor swap"],
    )?;

    // A rollout to the stores completes and sets the channel of its stream and selector.
    let good = DemoRelease::good("2.0.0", 2);
    fleet.publish(&good)?;
    let mut plan = PlanSpec::new(
        "stores 2.0",
        &good.id,
        vec![WaveSpec::new("stores").gate(|g| g.bake_secs = 1)],
    );
    plan.selector
        .insert("format".into(), Match::Is("store".into()));
    let id = fleet.rollout(&plan)?;
    fleet.wait_rollout_status(&id, RolloutStatus::Completed)?;
    fleet.wait_reported_version("general-1", "2.0.0")?;
    let name = "demo-format-store";
    let ch = eventually_default("the channel the rollout set", || {
        let ch = channel(&fleet, name)?;
        anyhow::ensure!(
            ch.channel.release_id.as_deref() == Some(good.id.as_str()),
            "{ch:?}"
        );
        Ok(ch)
    })?;
    assert_eq!(ch.channel.set_by, format!("rollout {id}"));

    // A store that opens now, a re-imaged box and a relabelled kiosk converge by themselves.
    fleet.enroll_late("general-3")?;
    fleet.reimage("general-1")?;
    fleet.operator.post::<_, serde_json::Value>(
        "/v1/sites/general-5/labels",
        &serde_json::json!({"set": {"format": "store"}}),
    )?;
    for site in ["general-3", "general-1", "general-5"] {
        fleet.wait_version(site, "2.0.0")?;
        fleet.wait_reported_version(site, "2.0.0")?;
    }
    let db = fleetwave_e2e::inspect::CoordinatorDb::new(fleet.coordinator.database());
    let committed = |site: &str| -> anyhow::Result<Vec<String>> {
        Ok(db
            .reports(site)?
            .iter()
            .filter(|r| r.body["phase"] == "committed" && r.body["release_id"] == good.id.as_str())
            .filter_map(|r| r.body["rollout_id"].as_str().map(str::to_string))
            .collect())
    };
    for site in ["general-3", "general-5"] {
        let through = committed(site)?;
        assert!(
            through
                .iter()
                .any(|r| r.starts_with("converge-demo-format-store-")),
            "{site} committed through the channel's convergence: {through:?}"
        );
    }
    // The re-imaged box installed again: through its completed rollout's assignment, which
    // it may still act on, or through the channel's convergence.
    let again = committed("general-1")?;
    assert!(
        again.len() >= 2,
        "general-1 committed again after the re-image: {again:?}"
    );

    // The held store stays where it was, and the channel says why.
    let ch = channel(&fleet, name)?;
    let held: Vec<_> = ch.off.iter().filter(|o| o.site_id == "general-4").collect();
    assert_eq!(held.len(), 1, "{ch:?}");
    assert_eq!(held[0].reason, "held");
    assert!(held[0].detail.contains("vendor swap"), "{:?}", held[0]);
    assert_eq!(ch.off.len(), 1, "only the held site is off: {:?}", ch.off);
    assert_ne!(
        fleet.site("general-4")?.version_on_disk()?.as_deref(),
        Some("2.0.0")
    );
    let shown = cli(&fleet, "channel-show", &["channel", "show", name])?;
    assert!(
        shown.contains("general-4") && shown.contains("held: vendor swap"),
        "{shown}"
    );

    // The channel moves to a release whose app fails its health check, one site at a time:
    // its convergence pauses on the first site and says why; no other site is touched.
    let bad = DemoRelease::bad("3.0.0", 3);
    fleet.publish(&bad)?;
    cli(
        &fleet,
        "channel-set",
        &[
            "channel",
            "set",
            name,
            "--release",
            &bad.id,
            "--max-concurrent",
            "1",
            "--reason",
            "3.0 for the stores",
        ],
    )?;
    let ch = eventually_default("the channel's convergence to pause", || {
        let ch = channel(&fleet, name)?;
        anyhow::ensure!(
            ch.channel.paused,
            "not paused: {:?}",
            ch.channel.convergence
        );
        Ok(ch)
    })?;
    let why = ch
        .channel
        .convergence
        .as_ref()
        .and_then(|c| c.reason.clone());
    let why = why.unwrap_or_default();
    assert!(
        why.contains("convergence of channel demo-format-store paused") && why.contains(&bad.id),
        "{why}"
    );
    let failed: Vec<&str> = ch
        .off
        .iter()
        .filter(|o| o.reason == "failed")
        .map(|o| o.site_id.as_str())
        .collect();
    assert_eq!(failed.len(), 1, "{:?}", ch.off);
    assert!(why.contains(failed[0]), "{why}");
    let touched: Vec<String> = ["general-1", "general-2", "general-3", "general-5"]
        .iter()
        .filter(|s| {
            fleet
                .phases(s, &bad.id)
                .unwrap_or_default()
                .iter()
                .any(|p| p == "leased")
        })
        .map(|s| s.to_string())
        .collect();
    // Every site holds the signed assignment (and may download ahead); only one was leased.
    assert_eq!(
        touched,
        [failed[0].to_string()],
        "only the first site installed 3.0.0"
    );
    let listed = cli(&fleet, "channel-list", &["channel", "list"])?;
    assert!(listed.contains("PAUSED"), "{listed}");
    Ok(())
}
