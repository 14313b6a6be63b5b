//! A slow and broken link: a site behind a 2 Mbit/s uplink that drops every 2 MiB gets a
//! 50 MiB release. The download resumes after every drop and completes, the artifact is
//! verified before anything is installed, the rollout completes, and every report the
//! agent made reached the coordinator exactly once. Prints the time against the ideal
//! (size / bandwidth).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fleetwave_e2e::inspect::{AgentDb, CoordinatorDb};
use fleetwave_e2e::release::{DemoRelease, artifact_bytes};
use fleetwave_e2e::{Fleet, FleetOptions, FleetSpec, PlanSpec, WaveSpec, eventually, patience};
use fleetwave_shared::protocol::operator::RolloutStatus;

/// 2 Mbit/s.
const BANDWIDTH: u64 = 250_000;
/// The link drops after this many bytes towards the agent, on every connection.
const CUT_EVERY: u64 = 2 * 1024 * 1024;
const PADDING: usize = 50 * 1024 * 1024;

/// About six minutes, almost all of it waiting on the 2 Mbit/s link: `./scripts/test` runs
/// it (`--ignored`) in its own process beside the rest of the suite rather than after it.
#[test]
#[ignore = "slow (about 6 minutes of a 2 Mbit/s link): ./scripts/test runs it in parallel with the suite"]
fn a_50_mib_release_over_a_slow_link_that_drops_resumes_and_installs_verified() -> anyhow::Result<()>
{
    let fleet = Fleet::start_with(
        FleetSpec::cohorts(1, 0, 0, 0),
        FleetOptions::default().proxied("pig-1"),
    )?;
    fleet.baseline(&DemoRelease::good("1.0.0", 1))?;
    let mut next = DemoRelease::good("2.0.0", 2);
    next.padding = PADDING;
    let largest = artifact_bytes(&fleet.publish(&next)?)?;

    let site = fleet.site("pig-1")?;
    let proxy = site.proxy.as_ref().expect("pig-1 is proxied");
    proxy.set_bandwidth(BANDWIDTH);
    proxy.cut_every(CUT_EVERY);
    let down_before = proxy.stats().bytes_down.load(Ordering::SeqCst);

    let started = Instant::now();
    let id = fleet.rollout(&PlanSpec::new(
        "one pig, slow link",
        &next.id,
        vec![WaveSpec::new("pigs")],
    ))?;
    eventually(
        "pig-1 to run 2.0.0 after the slow download",
        patience(Duration::from_secs(900)),
        || {
            let on_disk = site.version_on_disk()?;
            anyhow::ensure!(on_disk.as_deref() == Some("2.0.0"), "on disk: {on_disk:?}");
            Ok(())
        },
    )?;
    let took = started.elapsed();

    // What was installed is what was signed: the app's padding is the release's, whole
    // (the agent checks the artifact's length and SHA-256 before it unpacks anything).
    let padding = std::fs::read(site.current_dir().join("padding.bin"))?;
    assert!(
        padding == next.filler(),
        "padding.bin differs from the release's ({} bytes)",
        padding.len()
    );
    let cuts = proxy.stats().byte_cuts.load(Ordering::SeqCst);
    assert!(
        cuts >= largest / CUT_EVERY,
        "the link dropped {cuts} times for a {largest}-byte download"
    );

    fleet.wait_rollout_status(&id, RolloutStatus::Completed)?;
    // Every report arrived, exactly once: the outbox is empty, each install phase of the
    // release is stored once, and no event id twice.
    let agent_db = AgentDb::new(&site.dirs.state);
    eventually(
        "the outbox to drain",
        patience(Duration::from_secs(120)),
        || {
            let left = agent_db.outbox()?;
            anyhow::ensure!(left.is_empty(), "{} events queued", left.len());
            Ok(())
        },
    )?;
    let stored = CoordinatorDb::new(fleet.coordinator.database()).reports("pig-1")?;
    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    for r in stored
        .iter()
        .filter(|r| r.body["release_id"] == next.id.as_str())
    {
        if let Some(p) = r.body["phase"].as_str() {
            *phases.entry(p.to_string()).or_default() += 1;
        }
    }
    for phase in ["accepted", "leased", "installing", "verifying", "committed"] {
        assert_eq!(phases.get(phase), Some(&1), "phase {phase}: {phases:?}");
    }
    assert!(phases.contains_key("downloading"), "{phases:?}");
    assert!(!phases.contains_key("failed"), "{phases:?}");
    let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &stored {
        *ids.entry(r.event_id.as_str()).or_default() += 1;
    }
    assert!(ids.values().all(|n| *n == 1), "{ids:?}");

    let carried = proxy.stats().bytes_down.load(Ordering::SeqCst) - down_before;
    let ideal = largest as f64 / BANDWIDTH as f64;
    println!(
        "slow link: {largest}-byte artifact at {BANDWIDTH} bytes/s, the link dropping every {CUT_EVERY} bytes \
         ({cuts} drops): installed after {:.1} s, ideal {ideal:.1} s ({:.2}x); {carried} bytes crossed the link towards the agent ({:.3}x the artifact)",
        took.as_secs_f64(),
        took.as_secs_f64() / ideal,
        carried as f64 / largest as f64,
    );
    Ok(())
}
