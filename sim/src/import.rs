//! Seeding sites through `POST /v1/sites/import` (each simulated site pre-registered with
//! its derived device key, no enrollment round trip), and the import benchmark: N sites
//! with keys, then N without (one-use tokens), timed from the request to the answer.
//!
//! It prints figures; it never asserts a time.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, bail};
use fleetwave_shared::protocol::operator::{MAX_SITE_IMPORT_BYTES, paths};
use serde_json::json;

use crate::coordinator::{Coordinator, Setup, Tuning};
use crate::procstat;
use crate::site::{device_key, site_id};

/// The CSV of simulated sites `from..to`: labels `sim=1` (what the enrollment token of
/// the enrolling path gives) and `region`, with their device keys or without.
fn csv(from: usize, to: usize, with_keys: bool, id: &impl Fn(usize) -> String) -> String {
    let mut text = String::from(if with_keys {
        "site_id,label:sim,label:region,device_key\n"
    } else {
        "site_id,label:sim,label:region\n"
    });
    for i in from..to {
        text.push_str(&id(i));
        text.push_str(&format!(",1,r{}", i % 8));
        if with_keys {
            text.push(',');
            text.push_str(&hex::encode(device_key(i).verifying_key().as_bytes()));
        }
        text.push('\n');
    }
    text
}

/// The import files for sites `from..to`, each under the coordinator's size limit.
fn files(
    from: usize,
    to: usize,
    with_keys: bool,
    id: &impl Fn(usize) -> String,
) -> anyhow::Result<Vec<(usize, String)>> {
    // About 110 bytes a line with a key: 200,000 lines stay far under the limit.
    const PER_FILE: usize = 200_000;
    let mut out = Vec::new();
    let mut start = from;
    while start < to {
        let end = (start + PER_FILE).min(to);
        let text = csv(start, end, with_keys, id);
        if text.len() > MAX_SITE_IMPORT_BYTES {
            bail!("an import file of {} bytes is over the limit", text.len());
        }
        out.push((end - start, text));
        start = end;
    }
    Ok(out)
}

/// Sends the import files, one request each.
async fn send(coordinator: &Coordinator, files: Vec<(usize, String)>) -> anyhow::Result<()> {
    for (n, text) in files {
        let answer = coordinator
            .call(
                reqwest::Method::POST,
                paths::SITE_IMPORT,
                Some(json!({"format": "csv", "text": text})),
            )
            .await?;
        let got = answer["sites"]
            .as_u64()
            .context("import answer without sites")?;
        if got != n as u64 {
            bail!("imported {got} sites of {n}");
        }
    }
    Ok(())
}

/// Pre-registers simulated sites `from..to` with their device keys (what `Fleet::up`
/// does with `--seed-via-import` instead of enrolling them one by one).
pub async fn seed(coordinator: &Coordinator, from: usize, to: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    send(coordinator, files(from, to, true, &site_id)?).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "imported {} sites with their device keys in {secs:.1} s ({:.0} sites/s)",
        to - from,
        (to - from) as f64 / secs
    );
    Ok(())
}

/// `fleetwave-sim import --sites N`: a new coordinator in `dir`, N sites with keys, then
/// N sites without (tokens), each timed from the first request to the last answer (the
/// files are made before).
pub async fn run(dir: &Path, bin: &Path, n: usize) -> anyhow::Result<()> {
    let setup = Setup::open_or_create(dir)?;
    let coordinator = Coordinator::start(
        bin,
        &setup,
        &Tuning {
            poll_interval_secs: 60,
            max_concurrent_requests: None,
            max_keepalive_connections: None,
            tick_millis: 200,
            postgres_url: None,
            replicas: 1,
        },
    )
    .await?;
    let existing = coordinator
        .call(reqwest::Method::GET, "/v1/sites?limit=1", None)
        .await?;
    if existing["sites"].as_array().is_some_and(|s| !s.is_empty()) {
        bail!(
            "{} already has sites: the import benchmark needs a new directory",
            dir.display()
        );
    }
    println!(
        "coordinator: pid {} (data {}); load average {}",
        coordinator.pid,
        setup.database().display(),
        procstat::load_average()
    );
    for (what, with_keys, prefix) in [
        ("with device keys (pre-registered)", true, "key"),
        ("without keys (one-use enrollment tokens)", false, "tok"),
    ] {
        let id = |i: usize| format!("{prefix}-{i:06}");
        let files = files(0, n, with_keys, &id)?;
        let bytes: usize = files.iter().map(|(_, t)| t.len()).sum();
        let before = procstat::sample(coordinator.pid)?;
        let started = Instant::now();
        send(&coordinator, files).await?;
        let secs = started.elapsed().as_secs_f64();
        let after = procstat::sample(coordinator.pid)?;
        println!(
            "import of {n} sites {what}: {secs:.2} s, {:.0} sites/s ({:.1} MiB of CSV; \
             coordinator CPU {:.0}% of one core, RSS {:.0} MiB)",
            n as f64 / secs,
            bytes as f64 / (1024.0 * 1024.0),
            procstat::cpu_percent(&before, &after),
            procstat::mib(after.rss_bytes),
        );
    }
    Ok(())
}
