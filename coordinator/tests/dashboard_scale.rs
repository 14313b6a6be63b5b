//! How the dashboard does with 100,000 sites: server time and size of each main page.
//! A measurement, not an assertion on time: ignored by default, run with
//!
//!     cargo test --release -p fleetwave-coordinator --test dashboard_scale -- --ignored --nocapture
//!
//! `FLEETWAVE_SCALE_SITES=1000000` measures another fleet size (default 100,000).
//!
//! The sites are written straight into the coordinator's SQLite file (setting up 100,000
//! enrollments through the API would measure enrollment, not the dashboard); the rollout
//! over them is created and started through the rollout engine in-process.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fleetwave_coordinator::config::Config;
use fleetwave_coordinator::dashboard::read::{DashboardRead, SiteQuery};
use fleetwave_coordinator::store::sqlite::dashboard::SqliteReadModel;
use jiff::Timestamp;
use reqwest::StatusCode;
use serde_json::json;

/// The fleet size: `FLEETWAVE_SCALE_SITES`, 100,000 by default.
fn sites() -> usize {
    std::env::var("FLEETWAVE_SCALE_SITES")
        .ok()
        .and_then(|v| v.replace(['_', ','], "").parse().ok())
        .unwrap_or(100_000)
}

fn seed_sites(db: &std::path::Path) {
    let mut conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    let tx = conn.transaction().unwrap();
    let now = Timestamp::now();
    let now_ms = now.as_millisecond();
    {
        let mut st = tx
            .prepare(
                "INSERT INTO sites (id, device_key, labels, state, agent_version, enrolled_at, last_seen, installed, healthy, health_at, deferred_until) \
                 VALUES (?1, ?2, ?3, ?4, '0.1.0', ?5, ?6, ?7, ?8, ?5, ?9)",
            )
            .unwrap();
        for i in 0..sites() {
            let region = ["eu", "us", "apac", "latam"][i % 4];
            let cohort = match i % 100 {
                0 => "pig",
                1..=4 => "canary",
                95..=99 => "dog",
                _ => "general",
            };
            let labels =
                json!({"region": region, "cohort": cohort, "city": format!("city-{}", i % 500)});
            let version = if i % 10 == 0 { "2.5.0" } else { "2.4.0" };
            let installed = json!({"pos": {"release_id": format!("pos-{version}"), "version": version, "previous_release_id": null, "at": now.to_string()}});
            let state = if i % 1000 == 999 {
                "decommissioned"
            } else {
                "active"
            };
            let last_seen = if i % 50 == 7 {
                now_ms - 3 * 3_600_000
            } else {
                now_ms - (i as i64 % 600) * 1000
            };
            let healthy = (i % 37 != 5) as i64;
            let deferred = (i % 211 == 3).then_some(now_ms + 3_600_000);
            st.execute(rusqlite::params![
                format!("site-{i:06}"),
                "00".repeat(32),
                labels.to_string(),
                state,
                now_ms - 86_400_000,
                last_seen,
                installed.to_string(),
                healthy,
                deferred,
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

const PLAN: &str = r#"
name = "pos 2.6 to 100k"
release = "pos-2.6.0"

[[waves]]
name = "pigs"
selector = { cohort = "pig" }
gate = { bake = "10m", approval = true }

[[waves]]
name = "canaries"
selector = { cohort = "canary" }
gate = { bake = "30m" }

[[waves]]
name = "ten percent"
share = 10.0
gate = { bake = "1h" }

[[waves]]
name = "everyone else"
gate = { bake = "1h" }
"#;

async fn measure(web: &mut WebClient, path: &str, gzip: bool) -> (Duration, usize, usize) {
    let start = Instant::now();
    let mut req = web.http.get(format!("{}{path}", web.base)).header(
        "cookie",
        format!(
            "__Host-fleetwave-session={}",
            web.cookies["__Host-fleetwave-session"]
        ),
    );
    if gzip {
        req = req.header("accept-encoding", "gzip");
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{path}");
    let bytes = res.bytes().await.unwrap();
    let took = start.elapsed();
    let plain = if gzip && bytes.starts_with(&[0x1f, 0x8b]) {
        use std::io::Read as _;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .unwrap();
        out.len()
    } else {
        bytes.len()
    };
    (took, bytes.len(), plain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement with 100,000 sites (FLEETWAVE_SCALE_SITES); run with --ignored --nocapture"]
async fn dashboard_pages_with_100k_sites() {
    let h = Harness::new().await;
    let config = Config::load(&h.dir.path().join("coordinator.toml")).unwrap();
    let t = Instant::now();
    seed_sites(&config.database_path());
    println!(
        "seeded {} sites in {:.1?} ({})",
        sites(),
        t.elapsed(),
        uptime()
    );
    h.publish("2.6.0", 26).await;
    // Through the rollout engine in-process: the API's answer to create and start renders
    // the whole rollout view, which is not what this measures.
    let t = Instant::now();
    let app = h.running.as_ref().unwrap().app.clone();
    let record = app
        .engine
        .create_rollout(
            PLAN.to_string(),
            fleetwave_shared::protocol::operator::PlanFormat::Toml,
            "bench",
        )
        .await
        .unwrap();
    let id = record.id;
    app.engine
        .rollout_action(&id, fleetwave_coordinator::engine::Action::Start, "bench")
        .await
        .unwrap();
    println!(
        "rollout over {} sites created and started in {:.1?}",
        sites(),
        t.elapsed()
    );

    // Where the rollout pages' time goes: a copy of the rollout (the engine's
    // `App::load_rollout`, which the pages no longer take) against the page model built
    // on the engine's facts in place, as the pages build it (the first time builds the
    // controller's kept view of the members).
    for _ in 0..3 {
        let t = Instant::now();
        let loaded = app.engine.load_rollout(&id).await.unwrap();
        let load = t.elapsed();
        drop(loaded);
        let t = Instant::now();
        let m = app
            .engine
            .with_rollout(&id, |l| {
                fleetwave_coordinator::dashboard::model::rollout_model(l, Timestamp::now())
            })
            .await
            .unwrap();
        let model = t.elapsed();
        println!(
            "rollout of {} members: a copy (App::load_rollout) {:.0} ms; dashboard model in place {:.0} ms",
            m.totals.total,
            load.as_secs_f64() * 1000.0,
            model.as_secs_f64() * 1000.0
        );
    }

    // The read model's query plans at this size.
    let read = SqliteReadModel::new(config.database_path());
    let label = |k: &str, v: &str| (k.to_string(), v.to_string());
    let queries = [
        ("no filter", SiteQuery::default()),
        (
            "two labels and a version",
            SiteQuery {
                labels: [label("region", "eu"), label("cohort", "general")].into(),
                version: Some("2.5.0".into()),
                ..SiteQuery::default()
            },
        ),
        (
            "search",
            SiteQuery {
                search: Some("site-0999".into()),
                ..SiteQuery::default()
            },
        ),
        (
            "search and a state",
            SiteQuery {
                search: Some("city-49".into()),
                state: Some("active".into()),
                ..SiteQuery::default()
            },
        ),
        (
            "decommissioned",
            SiteQuery {
                state: Some("decommissioned".into()),
                ..SiteQuery::default()
            },
        ),
    ];
    for (name, q) in &queries {
        println!("query plans, {name}:");
        for (sql, plan) in read.query_plans(q).unwrap() {
            println!("  {sql}");
            for line in plan {
                println!("    {line}");
            }
        }
    }
    let t = Instant::now();
    let counts = read
        .fleet_counts(
            Timestamp::now(),
            Timestamp::now() - jiff::SignedDuration::from_hours(1),
        )
        .unwrap();
    println!(
        "fleet counts in {:.0} ms ({}): {counts:?}",
        t.elapsed().as_secs_f64() * 1000.0,
        uptime()
    );
    for stream in [None, Some("pos")] {
        let t = Instant::now();
        let cells = read.grid(&SiteQuery::default(), stream).unwrap();
        println!(
            "grid query, every site, version of {stream:?}: {} cells in {:.0} ms",
            cells.len(),
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
    drop(read);

    let mut web = WebClient::new(&h);
    // Signing in ends on the overview: the first overview since the start, which waits for
    // the first recount of the fleet.
    let t = Instant::now();
    web.login(&h.admin).await;
    println!(
        "sign-in, ending on the first overview (waits for the first recount): {:.0} ms ({})",
        t.elapsed().as_secs_f64() * 1000.0,
        uptime()
    );
    let pages = [
        // The sign-in's recount took longer than the wait: the counts are kept, and
        // recounted in the background once older than ten times the recount.
        ("overview, counts kept", "/ui/".to_string(), false),
        ("overview, counts kept, 2nd", "/ui/".to_string(), false),
        ("rollout detail", format!("/ui/rollouts/{id}"), false),
        ("sites list, page 1", "/ui/sites".to_string(), false),
        (
            "sites list, page 1000",
            "/ui/sites?page=1000".to_string(),
            false,
        ),
        (
            "sites list, label+version filter",
            "/ui/sites?label=region%3Deu%2Ccohort%3Dgeneral&version=2.5.0".to_string(),
            false,
        ),
        (
            "sites list, search",
            "/ui/sites?q=site-0999".to_string(),
            false,
        ),
        ("site detail", "/ui/sites/site-012345".to_string(), false),
        ("grid, all sites", "/ui/sites/grid".to_string(), false),
        ("grid, all sites, gzip", "/ui/sites/grid".to_string(), true),
        (
            "grid, region=eu, gzip",
            "/ui/sites/grid?label=region%3Deu".to_string(),
            true,
        ),
        (
            "grid by version of pos, gzip",
            "/ui/sites/grid?colour=version&stream=pos".to_string(),
            true,
        ),
        (
            "grid by rollout state, gzip",
            "/ui/sites/grid?colour=rollout".to_string(),
            true,
        ),
        (
            "sites list, decommissioned",
            "/ui/sites?state=decommissioned".to_string(),
            false,
        ),
        (
            "sites list, search and state",
            "/ui/sites?q=city-49&state=active".to_string(),
            false,
        ),
        (
            "sites list, search a label value",
            "/ui/sites?q=city-49".to_string(),
            false,
        ),
        // Past ten times the recount: answered with the kept counts while a recount runs.
        ("overview, recount in background", "/ui/".to_string(), false),
    ];
    println!("uptime before the pages: {}", uptime());
    println!(
        "{:<36} {:>10} {:>12} {:>12}",
        "page", "server ms", "bytes sent", "html bytes"
    );
    for (name, path, gzip) in pages {
        // Past the 1 s model cache: every figure is a fresh computation.
        h.clock.advance(Duration::from_millis(1100));
        let (took, sent, plain) = measure(&mut web, &path, gzip).await;
        let up = uptime();
        let load = up.split("load average:").nth(1).unwrap_or(&up).trim();
        println!(
            "{name:<36} {:>10.0} {sent:>12} {plain:>12}   load {load}",
            took.as_secs_f64() * 1000.0
        );
    }
    println!("uptime after the pages: {}", uptime());
    h.stop().await;
}

/// The machine's load as `uptime` prints it (printed with every figure).
fn uptime() -> String {
    std::process::Command::new("uptime")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("uptime failed: {e}"))
}
