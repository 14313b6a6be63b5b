//! The LAN peer cache over real processes: three agents whose `[peers]` point at each
//! other (three sites standing in for three boxes of one store; one agent per site today),
//! each reaching the coordinator through its own counting proxy, install one release with
//! a 16 MiB artifact. The coordinator sends the artifact about once, not three times.
//! Prints the figure (docs/benchmarks.md).

use std::sync::atomic::Ordering;

use fleetwave_e2e::release::{DemoRelease, artifact_bytes};
use fleetwave_e2e::{Fleet, FleetOptions, FleetSpec, PlanSpec, WaveSpec};
use fleetwave_shared::protocol::operator::RolloutStatus;

const SITES: [&str; 3] = ["pig-1", "pig-2", "pig-3"];
const PADDING: usize = 16 * 1024 * 1024;

#[test]
fn three_agents_sharing_a_peer_cache_download_the_artifact_from_the_coordinator_about_once()
-> anyhow::Result<()> {
    let mut options = FleetOptions::default();
    for site in SITES {
        options = options.proxied(site).peer(site);
    }
    let fleet = Fleet::start_with(FleetSpec::cohorts(3, 0, 0, 0), options)?;
    let mut release = DemoRelease::good("2.0.0", 2);
    release.padding = PADDING;
    let artifact = artifact_bytes(&fleet.publish(&release)?)?;
    let down = |site: &str| -> anyhow::Result<u64> {
        let proxy = fleet.site(site)?.proxy.as_ref().expect("proxied");
        Ok(proxy.stats().bytes_down.load(Ordering::SeqCst))
    };
    let before: u64 = SITES.iter().map(|s| down(s)).sum::<anyhow::Result<u64>>()?;

    let id = fleet.rollout(&PlanSpec::new(
        "three boxes of one store",
        &release.id,
        vec![WaveSpec::new("pigs")],
    ))?;
    for site in SITES {
        fleet.wait_version(site, "2.0.0")?;
    }
    fleet.wait_rollout_status(&id, RolloutStatus::Completed)?;

    // What the coordinator sent to the three sites while they installed (polls and
    // acknowledgements included), against the artifact's size.
    let after: u64 = SITES.iter().map(|s| down(s)).sum::<anyhow::Result<u64>>()?;
    let sent = after - before;
    assert!(artifact > PADDING as u64, "artifact {artifact} bytes");
    let ratio = sent as f64 / artifact as f64;
    println!(
        "peer cache, 3 agents: the coordinator sent {sent} bytes for a {artifact}-byte artifact ({ratio:.2} artifacts; without the cache each agent downloads it: 3)"
    );
    assert!(ratio < 1.5, "the coordinator sent {ratio:.2} artifacts");
    Ok(())
}
