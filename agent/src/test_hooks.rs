//! Test-only pause points: named places where the agent stops so that a test can kill it
//! there (SIGKILL, a power cut) and check the recovery, instead of guessing the moment
//! from the outside.
//!
//! Nothing here happens unless the environment says so explicitly: `FLEETWAVE_TEST_HOOKS=1`
//! enables the hooks, `FLEETWAVE_TEST_PAUSE_AT=<point>` names the point, and
//! `FLEETWAVE_TEST_PAUSE_FILE=<path>` (optional) is written with `<point> <pid>` once the
//! agent stands there. The agent then waits for ever at that point (a SIGTERM still stops
//! it). A `FLEETWAVE_TEST_PAUSE_AT` without `FLEETWAVE_TEST_HOOKS=1` is ignored (and said
//! so at start-up). Points: the journal steps (`prepare`, `install`, `verify`, `commit`,
//! `rollback`: right after the step was recorded as started), [`AFTER_SWITCH`],
//! [`KUBERNETES_CORDONED`] and [`KUBERNETES_REPLACED`]. The
//! same variables reach the commands the agent runs (e.g. `fleetwave-demo-app restart`,
//! which has pause points of its own).
//!
//! This module must never change what the agent does when the hooks are not enabled.

/// Enables the hooks when set to `1`.
pub const ENABLE: &str = "FLEETWAVE_TEST_HOOKS";
/// The point to pause at.
pub const PAUSE_AT: &str = "FLEETWAVE_TEST_PAUSE_AT";
/// Written with `<point> <pid>\n` when paused.
pub const PAUSE_FILE: &str = "FLEETWAVE_TEST_PAUSE_FILE";

/// `app` executor: `current` points at the new version, the restart command has not run.
pub const AFTER_SWITCH: &str = "after_switch";

/// `kubernetes` executor: the node is cordoned (its marker written), the drain has not
/// started (mid-drain: nothing of k3s was changed yet).
pub const KUBERNETES_CORDONED: &str = "kubernetes_cordoned";

/// `kubernetes` executor: the new binary was renamed over the old one (`<binary>.previous`
/// kept), the restart command has not run (mid-upgrade: the node is cordoned and still runs
/// the old version).
pub const KUBERNETES_REPLACED: &str = "kubernetes_replaced";

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn enabled() -> bool {
    var(ENABLE).as_deref() == Some("1")
}

/// Says at start-up whether pause points are armed (loudly) or ignored.
pub fn announce() {
    let Some(point) = var(PAUSE_AT) else {
        return;
    };
    if enabled() {
        tracing::warn!(
            point,
            "{ENABLE}=1: test hooks are enabled; this agent will stop at {point:?} and wait \
             to be killed (never set this outside tests)"
        );
    } else {
        tracing::warn!(
            point,
            "{PAUSE_AT} is set but {ENABLE} is not 1: ignored (test hooks are disabled)"
        );
    }
}

/// Stops here for ever if the hooks are enabled and `point` is the one named.
pub async fn pause(point: &str) {
    if !enabled() || var(PAUSE_AT).as_deref() != Some(point) {
        return;
    }
    tracing::warn!(point, "{PAUSE_AT}: pausing (test hooks enabled)");
    eprintln!("fleetwave-agent: paused at step {point}");
    if let Some(path) = var(PAUSE_FILE) {
        let path = std::path::PathBuf::from(path);
        let tmp = path.with_extension("tmp");
        let text = format!("{point} {}\n", std::process::id());
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)) {
            tracing::error!("cannot write {}: {e}", path.display());
        }
    }
    std::future::pending::<()>().await;
}
