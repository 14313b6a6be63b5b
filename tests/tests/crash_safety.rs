//! Scenario 5, crash safety: the agent is killed with SIGKILL (its whole process group, a
//! power cut) during the download, right after the `current` symlink switch, half-way
//! through the app's restart (the restart helper is killed too, the new app it started
//! survives and holds the port), and during the verify period. Each time, restarted, it
//! recovers to a consistent version — the one on disk is the one the app serves and the
//! one the coordinator is told — and the install finishes or is rolled back, never left
//! half done.
//!
//! The kills happen at named pause points (`FLEETWAVE_TEST_HOOKS=1`,
//! `FLEETWAVE_TEST_PAUSE_AT`), where the agent or the demo app's restart waits to be
//! killed, never when a poll happens to see a file; the download is killed once its
//! partial file and the bytes through the proxy show it under way.

use std::sync::atomic::Ordering;
use std::time::Duration;

use fleetwave_e2e::release::DemoRelease;
use fleetwave_e2e::{
    Fleet, FleetOptions, FleetSpec, PlanSpec, WaveSpec, eventually, eventually_default, patience,
};

enum KillPoint {
    Download,
    AfterSwitch,
    DuringRestart,
    Verify,
}

impl KillPoint {
    /// The pause point armed in the agent's environment, if the kill waits for one.
    fn pause_at(&self) -> Option<&'static str> {
        match self {
            KillPoint::Download => None,
            // The agent: `current` points at 2.0.0, the restart has not run.
            KillPoint::AfterSwitch => Some("after_switch"),
            // The demo app's restart helper (run by the agent): the old app is stopped, the
            // new one started, the restart not yet confirmed.
            KillPoint::DuringRestart => Some("app_restart_spawned"),
            // The agent: the verify step is journalled as started, 2.0.0 runs.
            KillPoint::Verify => Some("verify"),
        }
    }
}

fn crash_and_recover(point: KillPoint) -> anyhow::Result<()> {
    let mut fleet = Fleet::start_with(
        FleetSpec::cohorts(1, 0, 0, 0),
        FleetOptions::default().proxied("pig-1"),
    )?;
    fleet.baseline(&DemoRelease::good("1.0.0", 1))?;
    let mut next =
        DemoRelease::good("2.0.0", 2).install_param("verify_period_secs", serde_json::json!(8));
    if matches!(point, KillPoint::Download) {
        next.padding = 2 * 1024 * 1024;
        // ~16 KiB per forwarded chunk: the download takes many seconds.
        fleet
            .site("pig-1")?
            .proxy
            .as_ref()
            .unwrap()
            .set_latency(Duration::from_millis(40));
    }
    if let Some(point) = point.pause_at() {
        let env = fleet.pause_env("pig-1", point)?;
        fleet.start_agent_with("pig-1", &env)?;
    }
    fleet.publish(&next)?;
    fleet.rollout(&PlanSpec::new(
        "one pig",
        &next.id,
        vec![WaveSpec::new("pigs")],
    ))?;

    let site = fleet.site("pig-1")?;
    match point {
        KillPoint::Download => {
            let staging = site.dirs.root.join("staging").join("artifacts");
            let proxy = site.proxy.as_ref().unwrap();
            eventually_default("the download to be under way", || {
                let down = proxy.stats().bytes_down.load(Ordering::SeqCst);
                let partial = std::fs::read_dir(&staging)
                    .map(|d| {
                        d.flatten()
                            .any(|e| e.file_name().to_string_lossy().ends_with(".part"))
                    })
                    .unwrap_or(false);
                anyhow::ensure!(
                    partial && down > 256 * 1024,
                    "part file: {partial}, {down} bytes"
                );
                Ok(())
            })?;
        }
        KillPoint::AfterSwitch | KillPoint::Verify => {
            fleet.wait_paused("pig-1", point.pause_at().unwrap_or_default())?;
        }
        KillPoint::DuringRestart => {
            let helper = fleet.wait_paused("pig-1", "app_restart_spawned")?;
            // The helper runs in its own process group (the agent starts every command
            // so); the power cut takes it too. The new app it started lives on.
            // SAFETY: kill(2) on the process group of the helper that just paused.
            unsafe { libc::kill(-helper, libc::SIGKILL) };
        }
    }
    let site = fleet.site_mut("pig-1")?;
    site.agent.as_mut().unwrap().kill9()?;
    if let Some(proxy) = &site.proxy {
        proxy.set_latency(Duration::ZERO);
    }
    fleet.start_agent("pig-1")?;

    // Recovered and consistent: disk, app and coordinator agree, on 1.0.0 or 2.0.0, and
    // the install reached an end (committed or rolled back).
    let site = fleet.site("pig-1")?;
    let version = eventually(
        "pig-1 to recover to a consistent version",
        patience(Duration::from_secs(120)),
        || {
            let on_disk = site.version_on_disk()?.unwrap_or_default();
            let served = site.version_served()?;
            let reported = fleet
                .operator
                .site("pig-1")?
                .installed
                .get("demo")
                .and_then(|i| i.version.clone())
                .unwrap_or_default();
            anyhow::ensure!(
                on_disk == served && served == reported,
                "disk {on_disk:?}, app {served:?}, coordinator {reported:?}"
            );
            let phases = fleet.phases("pig-1", &next.id)?;
            let ended = match on_disk.as_str() {
                "2.0.0" => phases.iter().any(|p| p == "committed"),
                "1.0.0" => phases.iter().any(|p| p == "rolled_back" || p == "failed"),
                other => anyhow::bail!("unexpected version {other:?}"),
            };
            anyhow::ensure!(ended, "on {on_disk} without an end phase: {phases:?}");
            Ok(on_disk)
        },
    )?;
    eprintln!("recovered to {version}");
    Ok(())
}

#[test]
fn sigkill_during_download_recovers() -> anyhow::Result<()> {
    crash_and_recover(KillPoint::Download)
}

#[test]
fn sigkill_after_the_symlink_switch_recovers() -> anyhow::Result<()> {
    crash_and_recover(KillPoint::AfterSwitch)
}

#[test]
fn sigkill_during_the_app_restart_recovers() -> anyhow::Result<()> {
    crash_and_recover(KillPoint::DuringRestart)
}

#[test]
fn sigkill_during_verify_recovers() -> anyhow::Result<()> {
    crash_and_recover(KillPoint::Verify)
}
