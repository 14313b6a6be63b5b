//! An air-gapped site end to end over real processes (issue 18): the site's agent has no
//! coordinator at all (`coordinator.url = ""`, enrolled before it was cut off). An operator
//! exports a bundle for it with the real `fleetwave bundle export`, the box imports it with
//! `fleetwave-agent import-bundle` and installs with no lease (the signed bundle is the
//! permission), its queued reports leave by file (`fleetwave-agent export-reports`) and come
//! back with `fleetwave site import-reports`; the wave's gate counts the site and the
//! rollout completes. Importing either file again changes nothing.

use fleetwave_e2e::inspect::{AgentDb, CoordinatorDb};
use fleetwave_e2e::release::DemoRelease;
use fleetwave_e2e::{
    Fleet, FleetOptions, FleetSpec, PlanSpec, Spawn, WaveSpec, bins, eventually_default,
};
use fleetwave_shared::protocol::operator::RolloutStatus;

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

/// Points the site's agent at no coordinator: `url = ""` in its `[coordinator]` table.
fn cut_off(fleet: &Fleet, site: &str) -> anyhow::Result<()> {
    let config = &fleet.site(site)?.dirs.config;
    let text = std::fs::read_to_string(config)?;
    let url = serde_json::to_string(&fleet.coordinator.url)?;
    let from = format!("url = {url}");
    anyhow::ensure!(text.contains(&from), "{} has no `{from}`", config.display());
    std::fs::write(config, text.replacen(&from, "url = \"\"", 1))?;
    Ok(())
}

#[test]
fn an_air_gapped_site_installs_from_a_bundle_and_its_reports_complete_the_wave()
-> anyhow::Result<()> {
    let mut options = FleetOptions::default();
    options.not_started.insert("pig-1".to_string());
    let mut fleet = Fleet::start_with(FleetSpec::cohorts(1, 0, 0, 0), options)?;
    cut_off(&fleet, "pig-1")?;
    fleet.start_agent("pig-1")?;

    let release = DemoRelease::good("1.0.0", 1);
    fleet.publish(&release)?;
    let id = fleet.rollout(&PlanSpec::new(
        "the pig, by courier",
        &release.id,
        vec![WaveSpec::new("pigs").gate(|g| g.bake_secs = 1)],
    ))?;
    // Bundle out, with the real CLI.
    let bundle = fleet.dirs.work.join("pig-1.fwbundle");
    let bundle_arg = bundle.display().to_string();
    // Refused until the wave has opened and the site has an assignment to carry.
    let out = eventually_default("the bundle export to succeed", || {
        cli(
            &fleet,
            "bundle-export",
            &["bundle", "export", "--site", "pig-1", "--out", &bundle_arg],
        )
    })?;
    let size = std::fs::metadata(&bundle)?.len();
    println!("bundle export: {}", out.trim());
    assert!(
        out.contains(&format!("({size} bytes")) && out.contains("for 1 site(s) in"),
        "{out}"
    );
    let sites = fleet.operator.rollout_sites(&id)?;
    let pig = sites.iter().find(|s| s.site_id == "pig-1").unwrap();
    assert!(pig.bundle_until.is_some(), "{pig:?}");

    // On the box: import, install with no coordinator.
    let imported = fleet.agent_cli("pig-1", &["import-bundle", &bundle_arg, "--json"])?;
    let imported: serde_json::Value = serde_json::from_str(imported.trim())?;
    assert_eq!(imported["new_assignment"], true, "{imported}");
    fleet.wait_version("pig-1", "1.0.0")?;

    // Reports back: wait until the commit and a few health samples after it are queued.
    let agent_db = AgentDb::new(&fleet.site("pig-1")?.dirs.state);
    eventually_default("the commit and health after it to be queued", || {
        let outbox = agent_db.outbox()?;
        let commit = outbox
            .iter()
            .position(|e| e.event["kind"] == "phase" && e.event["phase"] == "committed");
        let health_after = commit.map_or(0, |i| {
            outbox[i..].iter().filter(|e| e.kind == "health").count()
        });
        anyhow::ensure!(
            commit.is_some() && health_after >= 3,
            "outbox: {:?}",
            outbox.iter().map(|e| &e.kind).collect::<Vec<_>>()
        );
        Ok(())
    })?;
    let reports = fleet.dirs.work.join("pig-1.reports");
    let reports_arg = reports.display().to_string();
    let exported = fleet.agent_cli("pig-1", &["export-reports", "--out", &reports_arg])?;
    assert!(
        exported.contains("signed with the device key"),
        "{exported}"
    );
    let coordinator_db = CoordinatorDb::new(fleet.coordinator.database());
    assert!(coordinator_db.reports("pig-1")?.is_empty());
    let first = cli(
        &fleet,
        "import-reports",
        &["site", "import-reports", &reports_arg, "--json"],
    )?;
    let first: serde_json::Value = serde_json::from_str(first.trim())?;
    assert!(first["applied"].as_u64().unwrap() > 0, "{first}");
    assert_eq!(first["duplicates"], 0, "{first}");
    assert_eq!(first["applied"], first["events"], "{first}");

    // The gate counts the site: the rollout completes.
    let done = fleet.wait_rollout_status(&id, RolloutStatus::Completed)?;
    assert_eq!(done.waves[0].tally.succeeded, 1, "{done:?}");

    // Again, either file: nothing changes.
    let stored = coordinator_db.reports("pig-1")?.len();
    let again = cli(
        &fleet,
        "import-reports-again",
        &["site", "import-reports", &reports_arg, "--json"],
    )?;
    let again: serde_json::Value = serde_json::from_str(again.trim())?;
    assert_eq!(again["applied"], 0, "{again}");
    assert_eq!(again["duplicates"], first["events"], "{again}");
    assert_eq!(coordinator_db.reports("pig-1")?.len(), stored);
    let reimported = fleet.agent_cli("pig-1", &["import-bundle", &bundle_arg, "--json"])?;
    let reimported: serde_json::Value = serde_json::from_str(reimported.trim())?;
    assert_eq!(reimported["new_assignment"], false, "{reimported}");
    assert_eq!(
        fleet.site("pig-1")?.version_on_disk()?.as_deref(),
        Some("1.0.0")
    );
    let view = fleet.operator.rollout(&id)?;
    assert_eq!(view.status, RolloutStatus::Completed);
    Ok(())
}
