//! Boxes within a site, over real agent processes: store-1 is three boxes (one server, two
//! agents), each its own agent with its own device key and demo app (the `app` executor;
//! no Kubernetes here), enrolled into one site. The coordinator leases one box at a time
//! in the plan's `box_order` and counts the site once in its wave: it succeeds when every
//! box did, fails once when a box fails (naming the box), and is silent when a box is.

use std::time::Duration;

use fleetwave_e2e::fleet::PLACES;
use fleetwave_e2e::inspect::CoordinatorDb;
use fleetwave_e2e::release::DemoRelease;
use fleetwave_e2e::{
    Cohort, Fleet, FleetOptions, FleetSpec, PlanSpec, SiteSpec, WaveSpec, eventually, patience,
};
use fleetwave_shared::protocol::operator::RolloutStatus;
use jiff::Timestamp;

/// The fleet entries (one per box) in box order: server first.
const BOXES: [(&str, &str, &str); 3] = [
    ("store-1-srv", "srv", "server"),
    ("store-1-agt-1", "agt-1", "agent"),
    ("store-1-agt-2", "agt-2", "agent"),
];

/// store-1's three boxes (each labelled `node = <box id>`, so a release can fail on one),
/// `proxied` boxes behind a fault proxy.
fn store(proxied: &[&str]) -> anyhow::Result<Fleet> {
    let sites = BOXES
        .iter()
        .map(|(entry, b, _)| SiteSpec::new(*entry, Cohort::Pig, &PLACES[1]).label("node", b))
        .collect();
    let mut options = FleetOptions::default();
    for (entry, b, role) in BOXES {
        options = options.box_of(entry, "store-1", b, role);
    }
    for p in proxied {
        options = options.proxied(p);
    }
    Ok(Fleet::start_with(FleetSpec { sites }, options)?)
}

fn plan(release: &str) -> PlanSpec {
    PlanSpec::new(
        &format!("{release} box by box"),
        release,
        vec![WaveSpec::new("the store").gate(|g| {
            g.failure_budget = Some(0);
            g.report_deadline_secs = 60;
        })],
    )
    .box_order(&["role=server", "role=agent"])
}

fn time(facts: &serde_json::Value, key: &str) -> Option<Timestamp> {
    facts[key].as_str().map(|t| t.parse().expect("a timestamp"))
}

#[test]
fn a_site_of_three_boxes_upgrades_box_by_box_servers_first() -> anyhow::Result<()> {
    let fleet = store(&[])?;
    let release = DemoRelease::good("1.0.0", 1);
    fleet.publish(&release)?;
    let id = fleet.rollout(&plan(&release.id))?;
    let view = fleet.wait_rollout_status(&id, RolloutStatus::Completed)?;
    // The site counts once.
    assert_eq!(view.waves[0].tally.succeeded, 1, "{:?}", view.waves[0]);
    assert_eq!(fleet.operator.rollout_sites(&id)?.len(), 1);
    for (entry, _, _) in BOXES {
        fleet.wait_version(entry, "1.0.0")?;
    }
    // One box at a time, in order: each box got its first lease only after the box before
    // it had committed and reported healthy.
    let facts = CoordinatorDb::new(fleet.coordinator.database()).box_facts(&id, "store-1")?;
    let of = |b: &str| {
        facts
            .iter()
            .find(|(id, _)| id == b)
            .map(|(_, f)| f.clone())
            .unwrap_or_else(|| panic!("no facts of box {b}: {facts:?}"))
    };
    for pair in BOXES.windows(2) {
        let (before, after) = (of(pair[0].1), of(pair[1].1));
        let committed = time(&before, "committed_at").expect("committed");
        let started = time(&after, "first_leased_at").expect("leased");
        assert!(
            started > committed,
            "box {} started at {started}, before box {} committed at {committed}",
            pair[1].1,
            pair[0].1
        );
    }
    Ok(())
}

#[test]
fn a_failure_on_the_second_box_fails_the_site_once_and_stops_the_third() -> anyhow::Result<()> {
    let fleet = store(&[])?;
    fleet.baseline(&DemoRelease::good("1.0.0", 1))?;
    // 2.0.0 fails its health check on agt-1 only.
    let bad = DemoRelease::good("2.0.0", 2).unhealthy_on("node", "agt-1");
    fleet.publish(&bad)?;
    let id = fleet.rollout(&plan(&bad.id).auto_rollback(true))?;
    let (view, halt) = fleet.wait_halted(&id)?;
    // Counted once: as one failure (the failing box rolled itself back, so the site shows
    // `rolled_back`, as a one-box site that rolls back does).
    let tally = &view.waves[0].tally;
    assert_eq!(
        (tally.sites, tally.failed + tally.rolled_back),
        (1, 1),
        "{:?}",
        view.waves[0]
    );
    assert!(
        view.waves[0].gate.contains("1 failures of budget 0"),
        "{}",
        view.waves[0].gate
    );
    let site = view.sites.iter().find(|s| s.site_id == "store-1").unwrap();
    let said = format!("{site:?} / {}", halt.reason);
    assert!(said.contains("box agt-1"), "{said}");
    // The server had installed 2.0.0 first; the auto rollback takes it back to 1.0.0. The
    // failing box rolled itself back; the third box never started.
    let facts = CoordinatorDb::new(fleet.coordinator.database()).box_facts(&id, "store-1")?;
    let srv = &facts.iter().find(|(b, _)| b == "srv").expect("srv").1;
    assert!(time(srv, "committed_at").is_some(), "{srv}");
    for entry in ["store-1-srv", "store-1-agt-1"] {
        fleet.wait_version(entry, "1.0.0")?;
    }
    assert_eq!(
        fleet.site("store-1-agt-2")?.version_on_disk()?.as_deref(),
        Some("1.0.0")
    );
    let phases = fleet.phases("store-1", &bad.id)?;
    let agt2 = facts.iter().find(|(b, _)| b == "agt-2").map(|(_, f)| f);
    assert!(
        agt2.is_none_or(|f| time(f, "first_leased_at").is_none()),
        "agt-2 was leased: {agt2:?} ({phases:?})"
    );
    Ok(())
}

#[test]
fn a_box_offline_past_the_deadline_makes_the_site_silent() -> anyhow::Result<()> {
    let fleet = store(&["store-1-agt-2"])?;
    let release = DemoRelease::good("1.0.0", 1);
    fleet.publish(&release)?;
    fleet.site("store-1-agt-2")?.proxy.as_ref().unwrap().cut()?;
    let id = fleet.rollout(&plan(&release.id))?;
    // The site's detail lists its boxes in install order: the two reachable boxes
    // upgrade, the offline one waits its turn.
    eventually(
        "the server and the first agent to upgrade",
        patience(Duration::from_secs(120)),
        || {
            let info = fleet.operator.site("store-1")?;
            let boxes: Vec<(String, String, String, Option<String>)> = info
                .boxes
                .iter()
                .map(|b| {
                    (
                        b.box_id.clone(),
                        b.role.clone(),
                        b.state.clone(),
                        b.installed.get("demo").cloned(),
                    )
                })
                .collect();
            let want = |id: &str, role: &str, state: &str, v: Option<&str>| {
                (
                    id.to_string(),
                    role.to_string(),
                    state.to_string(),
                    v.map(str::to_string),
                )
            };
            anyhow::ensure!(
                boxes
                    == [
                        want("srv", "server", "succeeded", Some("1.0.0")),
                        want("agt-1", "agent", "succeeded", Some("1.0.0")),
                        want("agt-2", "agent", "waiting", None),
                    ],
                "boxes: {boxes:?}"
            );
            Ok(())
        },
    )?;
    let view = eventually(
        "the site to be counted silent",
        patience(Duration::from_secs(240)),
        || {
            let view = fleet.operator.rollout(&id)?;
            anyhow::ensure!(
                view.status == RolloutStatus::Halted,
                "rollout is {}: {}",
                view.status.as_str(),
                fleetwave_e2e::cluster::describe_waves(&view)
            );
            Ok(view)
        },
    )?;
    assert_eq!(view.waves[0].tally.silent, 1, "{:?}", view.waves[0]);
    let site = view.sites.iter().find(|s| s.site_id == "store-1").unwrap();
    assert_eq!(site.state, "silent", "{site:?}");
    let reason = site.detail.as_deref().unwrap_or_default();
    assert!(
        reason.starts_with("silent:")
            && reason.contains("quietest box agt-2: not heard from in this rollout"),
        "{reason}"
    );
    // The boxes before it upgraded meanwhile.
    for entry in ["store-1-srv", "store-1-agt-1"] {
        fleet.wait_version(entry, "1.0.0")?;
    }
    Ok(())
}

#[test]
fn a_failure_on_the_third_box_rolls_back_the_second_then_the_first() -> anyhow::Result<()> {
    let fleet = store(&["store-1-agt-1"])?;
    let good = DemoRelease::good("1.0.0", 1);
    fleet.baseline(&good)?;
    // 2.0.0 fails its health check on the third box (agt-2) only: srv and agt-1 install
    // it first, then agt-2 fails and rolls itself back.
    let bad = DemoRelease::good("2.0.0", 2).unhealthy_on("node", "agt-2");
    fleet.publish(&bad)?;
    let id = fleet.rollout(&plan(&bad.id).auto_rollback(true))?;
    let db = CoordinatorDb::new(fleet.coordinator.database());
    // Once agt-1 has committed 2.0.0 and reported healthy since, cut it off: it does not
    // hear of the rollback until it is let through again.
    eventually(
        "agt-1 to commit 2.0.0 and report healthy",
        patience(Duration::from_secs(180)),
        || {
            let facts = db.box_facts(&id, "store-1")?;
            let agt1 = facts.iter().find(|(b, _)| b == "agt-1").map(|(_, f)| f);
            let done = agt1.is_some_and(|f| {
                time(f, "committed_at")
                    .zip(time(f, "last_healthy_at"))
                    .is_some_and(|(c, h)| h >= c)
            });
            anyhow::ensure!(done, "agt-1: {agt1:?}");
            Ok(())
        },
    )?;
    let agt1_link = fleet.site("store-1-agt-1")?.proxy.as_ref().unwrap();
    agt1_link.cut()?;
    let (view, halt) = fleet.wait_halted(&id)?;
    let site = view.sites.iter().find(|s| s.site_id == "store-1").unwrap();
    let said = format!("{site:?} / {}", halt.reason);
    assert!(said.contains("box agt-2"), "{said}");
    // srv (first in box order) asks for its rollback lease and is told to wait for agt-1,
    // and stays on 2.0.0 meanwhile.
    let waits = "box srv of site store-1 rolls back after box agt-1 reported its rollback done";
    eventually(
        "srv to be told to wait for agt-1's rollback",
        patience(Duration::from_secs(180)),
        || {
            let told = db.reports("store-1")?.into_iter().any(|r| {
                r.body["phase"] == "waiting"
                    && r.body["rollout_id"] == id.as_str()
                    && r.body["detail"].as_str().is_some_and(|d| d.contains(waits))
            });
            anyhow::ensure!(told, "{:?}", fleet.phases("store-1", &good.id)?);
            Ok(())
        },
    )?;
    assert_eq!(
        fleet.site("store-1-srv")?.version_on_disk()?.as_deref(),
        Some("2.0.0"),
        "srv went back before agt-1 did"
    );
    agt1_link.pass()?;
    for (entry, _, _) in BOXES {
        fleet.wait_version(entry, "1.0.0")?;
    }
    // Both upgraded boxes reported their rollback done (facts are written as the reports
    // arrive: wait for the second).
    let facts = eventually(
        "srv and agt-1 to report their rollbacks done",
        patience(Duration::from_secs(240)),
        || {
            let facts = db.box_facts(&id, "store-1")?;
            for b in ["srv", "agt-1"] {
                let f = &facts.iter().find(|(id, _)| id == b).expect("facts").1;
                anyhow::ensure!(time(f, "rolled_back_at").is_some(), "box {b}: {f}");
            }
            Ok(facts)
        },
    )?;
    let of = |b: &str| facts.iter().find(|(id, _)| id == b).unwrap().1.clone();
    // Reverse box order, one at a time: agt-1's rollback was done before srv's started.
    let (agt1, srv, agt2) = (of("agt-1"), of("srv"), of("agt-2"));
    let agt1_done = time(&agt1, "rolled_back_at").unwrap();
    let srv_started = time(&srv, "rollback_started_at").expect("srv's rollback started");
    assert!(
        time(&agt1, "rollback_started_at").expect("agt-1's rollback started") < agt1_done,
        "{agt1}"
    );
    assert!(
        agt1_done < srv_started,
        "srv's rollback started at {srv_started}, before agt-1's was done at {agt1_done}"
    );
    // The failed box never committed 2.0.0: the rollback left it alone.
    assert!(time(&agt2, "rollback_started_at").is_none(), "{agt2}");
    assert!(time(&agt2, "committed_at").is_none(), "{agt2}");
    // The same from the site's stored reports: the rollout's phases of 1.0.0 are one
    // box's lease and commit, then the other's, never overlapping; no third box's.
    let mut steps: Vec<(i64, String)> = db
        .reports("store-1")?
        .into_iter()
        .filter(|r| {
            r.body["kind"] == "phase"
                && r.body["rollout_id"] == id.as_str()
                && r.body["release_id"] == good.id.as_str()
                && (r.body["phase"] == "leased" || r.body["phase"] == "committed")
        })
        .map(|r| {
            (
                r.at,
                r.body["phase"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    steps.sort();
    let phases: Vec<&str> = steps.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(
        phases,
        ["leased", "committed", "leased", "committed"],
        "{steps:?} ({:?})",
        fleet.phases("store-1", &good.id)?
    );
    assert!(steps[1].0 < steps[2].0, "{steps:?}");
    assert_eq!(
        (steps[1].0, steps[2].0),
        (agt1_done.as_millisecond(), srv_started.as_millisecond()),
        "the first rollback is agt-1's, the second srv's: {steps:?}"
    );
    Ok(())
}
