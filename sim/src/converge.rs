//! The convergence pass at fleet scale: N sites in four channels (one per region) of one
//! stream, `off` of them not on their channel's release, in-process from the coordinator
//! library over a real SQLite file.
//!
//! Measured: the first pass (it finds the `off` sites, makes each channel's convergence
//! rollout, signs and stores their assignments), then steady passes (every site off its
//! release is converging already: the pass reads the fleet and finds nothing new; this is
//! the pass the controller loop runs every 5 seconds), and how long each pass holds the
//! engine lock (leases wait on it; polls never take it). Nothing here asserts a time.

use std::path::Path;
use std::time::{Duration, Instant};

use fleetwave_coordinator::engine::channels::{Actor, NewChannel};
use fleetwave_coordinator::plan::Selector;
use jiff::{SignedDuration, Timestamp};

use crate::coordinator::Setup;

const REGIONS: [&str; 4] = ["emea", "amer", "apac", "latam"];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn run(dir: &Path, n: usize, off: usize, passes: usize) -> anyhow::Result<()> {
    anyhow::ensure!(off <= n, "--off {off} is more than --sites {n}");
    let setup = Setup::open_or_create(dir)?;
    let db = setup.database();
    drop(fleetwave_coordinator::store::SqliteStore::open(&db)?);
    let now = Timestamp::now();
    // Every `n / off`th site runs the old release; the others run the channel's.
    // In runs of four consecutive sites (one per region), so every channel has some.
    let stride = n.checked_div(off).map_or(usize::MAX, |s| s.max(1));
    let is_off =
        |i: usize| off > 0 && (i / 4).is_multiple_of(stride) && (i / 4) / stride < off.div_ceil(4);
    {
        let started = Instant::now();
        let mut conn = rusqlite::Connection::open(&db)?;
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare(
                "INSERT INTO sites (id, device_key, labels, state, agent_version, enrolled_at, last_seen, installed) VALUES (?1, ?2, ?3, 'active', '0.1.0-sim', ?4, ?4, ?5)",
            )?;
            for i in 0..n {
                let key = hex::encode(crate::site::device_key(i).verifying_key().as_bytes());
                let labels = serde_json::json!({"sim": "1", "region": REGIONS[i % REGIONS.len()]});
                let (release, version) = if is_off(i) {
                    ("sim-app-1", "1.0.0")
                } else {
                    ("sim-app-2", "2.0.0")
                };
                let installed = serde_json::json!({"sim-app": {
                    "release_id": release, "version": version, "at": now,
                }});
                st.execute(rusqlite::params![
                    crate::site::site_id(i),
                    key,
                    labels.to_string(),
                    now.as_millisecond(),
                    installed.to_string()
                ])?;
            }
        }
        tx.commit()?;
        println!(
            "  (wrote {n} sites, {off} of them on the old release, in {:.1} s)",
            started.elapsed().as_secs_f64()
        );
    }
    let config = fleetwave_coordinator::config::Config::load(&setup.dir.join("coordinator.toml"))?;
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let app = fleetwave_coordinator::server::build_app(config, stop_rx).await?;
    for (counter, version) in [(1u64, "1.0.0"), (2, "2.0.0")] {
        let rel = fleetwave_shared::docs::Release {
            id: format!("sim-app-{counter}"),
            name: "sim-app".into(),
            version: version.into(),
            kind: fleetwave_shared::docs::ReleaseKind::App,
            counter,
            issued_at: now,
            expires: now + SignedDuration::from_hours(24),
            artifacts: vec![],
            install: Default::default(),
            min_agent_version: None,
        };
        let env = fleetwave_shared::Envelope::sign(
            fleetwave_shared::docs::RELEASE_TYPE,
            &serde_json::to_vec(&rel)?,
            &[&setup.release_key],
        );
        let record = fleetwave_coordinator::store::ReleaseRecord {
            id: rel.id.clone(),
            digest: env.digest(),
            name: rel.name.clone(),
            version: rel.version.clone(),
            kind: "app".into(),
            counter,
            envelope: env,
            published_at: now,
            published_by: "fleetwave-sim".into(),
        };
        app.db.run(move |s| s.publish_release(&record)).await?;
    }
    let who = Actor {
        name: "fleetwave-sim".into(),
        remote: String::new(),
    };
    let started = Instant::now();
    for region in REGIONS {
        app.engine
            .create_channel(
                NewChannel {
                    name: format!("sim-{region}"),
                    stream: "sim-app".into(),
                    selector: Selector::equals([("region", region)]),
                    release: Some("sim-app-2".into()),
                    max_concurrent: Some(100),
                    ..NewChannel::default()
                },
                &who,
            )
            .await
            .map_err(|e| anyhow::anyhow!("channel {region}: {e}"))?;
    }
    println!(
        "  (4 channels created in {:.0} ms, each checked for overlaps over the {n} sites)",
        ms(started.elapsed())
    );

    let started = Instant::now();
    let first = app.engine.converge(false).await?;
    println!(
        "convergence, first pass: {n} sites in 4 channels, {} off their release: {:.0} ms \
         ({} site(s) found, {} convergence rollout(s) made, their assignments signed and stored)",
        off,
        ms(started.elapsed()),
        first.found,
        first.created
    );
    for (full, what) in [
        (false, "indexed pass, every 5 s"),
        (true, "full sweep, every 60 s"),
    ] {
        let mut times = Vec::with_capacity(passes);
        let mut locked = Vec::with_capacity(passes);
        for _ in 0..passes {
            let started = Instant::now();
            let pass = app.engine.converge(full).await?;
            times.push(started.elapsed());
            locked.push(pass.locked);
            anyhow::ensure!(
                pass.found == 0,
                "a steady pass found {} new sites",
                pass.found
            );
        }
        times.sort();
        locked.sort();
        println!(
            "convergence, steady {what} ({off} converging, nothing new): median {:.1} ms, min {:.1} ms, max {:.1} ms over {passes} passes; engine lock held median {:.1} ms",
            ms(times[times.len() / 2]),
            ms(times[0]),
            ms(times[times.len() - 1]),
            ms(locked[locked.len() / 2]),
        );
    }
    Ok(())
}
