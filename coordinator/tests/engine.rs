//! The rollout engine in-process over a real SQLite file: report group commit (each event
//! applied once under concurrent duplicate submissions, acknowledged only once committed),
//! the in-memory facts of live rollouts (always equal to the SQLite rows, and rebuilt from
//! them as after a restart), and a wave larger than one issuing chunk.

mod common;

use fleetwave_coordinator::engine::{Action, EngineError, ISSUE_CHUNK};
use fleetwave_coordinator::state::App;
use fleetwave_coordinator::store::ReportInput;
use fleetwave_shared::protocol::operator::{PlanFormat, RolloutStatus};
use fleetwave_shared::protocol::{Event, LeaseRequest};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use common::InProcess as Setup;

fn site_id(i: usize) -> String {
    format!("site-{i:05}")
}

/// Sites labelled `sim=1`.
fn sim(ids: &[String]) -> Vec<(String, serde_json::Value)> {
    ids.iter()
        .map(|id| (id.clone(), json!({"sim": "1"})))
        .collect()
}

/// `sites` active sites `site-00000`... and release `app-2`.
async fn setup(sites: usize) -> Setup {
    Setup::with_sites(&sim(&(0..sites).map(site_id).collect::<Vec<_>>())).await
}

fn event(id: &str, body: serde_json::Value) -> Event {
    let mut e = body;
    e["id"] = json!(id);
    e["at"] = json!(Timestamp::now());
    serde_json::from_value(e).unwrap()
}

fn health(id: &str) -> Event {
    event(
        id,
        json!({"kind": "health", "healthy": true, "summary": {"passed": 1, "failed": 0, "failing": []}}),
    )
}

fn input(site: &str, events: Vec<Event>) -> ReportInput {
    ReportInput {
        site_id: site.into(),
        box_id: None,
        events,
        received_at: Timestamp::now(),
    }
}

fn report_rows(s: &Setup) -> i64 {
    s.conn()
        .query_row("SELECT COUNT(*) FROM reports", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicate_report_batches_apply_each_event_exactly_once() {
    let s = setup(8).await;
    // 8 sites x 5 batches of 10 events, each batch submitted 4 times at once.
    let mut tasks = Vec::new();
    for i in 0..8 {
        for b in 0..5 {
            let events: Vec<Event> = (0..10)
                .map(|e| health(&format!("{}-b{b}-e{e}", site_id(i))))
                .collect();
            for _ in 0..4 {
                let app = s.app.clone();
                let inp = input(&site_id(i), events.clone());
                tasks.push(tokio::spawn(
                    async move { app.engine.apply_reports(inp).await },
                ));
            }
        }
    }
    let (mut accepted, mut duplicates) = (0, 0);
    for t in tasks {
        let out = t.await.unwrap().expect("every batch is acknowledged");
        accepted += out.accepted;
        duplicates += out.duplicates;
    }
    assert_eq!(accepted, 8 * 5 * 10, "each event accepted once");
    assert_eq!(duplicates, 3 * 8 * 5 * 10, "every resend is a duplicate");
    assert_eq!(report_rows(&s), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_batch_fails_alone_and_acks_follow_the_commit() {
    let s = setup(4).await;
    let mut tasks = Vec::new();
    for round in 0..20 {
        for i in 0..4 {
            let app = s.app.clone();
            let inp = input(&site_id(i), vec![health(&format!("r{round}-s{i}"))]);
            tasks.push((
                true,
                tokio::spawn(async move { app.engine.apply_reports(inp).await }),
            ));
        }
        // Not enrolled: its events cannot be stored (the reports refer to the site).
        let app = s.app.clone();
        let inp = input("ghost", vec![health(&format!("r{round}-ghost"))]);
        tasks.push((
            false,
            tokio::spawn(async move { app.engine.apply_reports(inp).await }),
        ));
    }
    let mut acked = 0;
    for (good, t) in tasks {
        let out = t.await.unwrap();
        if good {
            let out = out.expect("a good batch is acknowledged");
            assert_eq!(out.accepted, 1);
            acked += 1;
            // Acknowledged means committed: a fresh connection already sees the rows.
            assert!(report_rows(&s) >= acked);
        } else {
            assert!(out.is_err(), "the ghost site's batch must fail");
        }
    }
    assert_eq!(report_rows(&s), 80);
    let ghost: i64 = s
        .conn()
        .query_row(
            "SELECT COUNT(*) FROM reports WHERE site_id = 'ghost'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(ghost, 0);
}

fn two_wave_plan(release: &str) -> String {
    format!(
        "name = \"engine test\"\nrelease = \"{release}\"\nselector = {{ sim = \"1\" }}\nassignment_ttl = \"1d\"\n\n\
         [[waves]]\nname = \"first\"\nshare = 50\ngate = {{ success_ratio = 1.0, min_sample = 1, bake = \"0s\", report_deadline = \"2h\" }}\n\n\
         [[waves]]\nname = \"rest\"\ngate = {{ success_ratio = 1.0, bake = \"0s\" }}\n"
    )
}

/// The engine's view of the rollout's sites must be exactly what SQLite holds.
async fn assert_memory_matches_sqlite(app: &App, id: &str) {
    let memory = app.engine.load_rollout(id).await.unwrap().sites;
    let rid = id.to_string();
    let stored = app.db.run(move |s| s.rollout_sites(&rid)).await.unwrap();
    assert_eq!(memory.len(), stored.len());
    for (m, s) in memory.iter().zip(&stored) {
        assert_eq!(m, s, "memory and SQLite differ for {}", s.site_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_facts_follow_every_change_and_rebuild_from_sqlite() {
    let s = setup(30).await;
    let app = &s.app;
    let r = app
        .engine
        .create_rollout(two_wave_plan(&s.release), PlanFormat::Toml, "test")
        .await
        .unwrap();
    app.engine
        .rollout_action(&r.id, Action::Start, "test")
        .await
        .unwrap();
    let l = app.engine.load_rollout(&r.id).await.unwrap();
    let wave0: Vec<String> = l
        .sites
        .iter()
        .filter(|m| m.wave == 0)
        .map(|m| m.site_id.clone())
        .collect();
    assert!(wave0.len() >= 2, "the plan puts some sites in wave 0");
    assert!(
        l.sites
            .iter()
            .all(|m| (m.wave == 0) == m.assigned_at.is_some()),
        "wave 0 assigned, wave 1 not yet"
    );
    // A lease, then reports that move the first site to committed and healthy.
    let first = &wave0[0];
    let seq = app
        .engine
        .sites
        .get(first)
        .and_then(|slot| slot.view().assignment)
        .expect("assigned")
        .record
        .sequence;
    app.engine
        .lease(
            first,
            None,
            &LeaseRequest {
                rollout_id: r.id.clone(),
                sequence: seq,
            },
        )
        .await
        .unwrap();
    let phase = |id: &str, p: &str| {
        event(
            id,
            json!({"kind": "phase", "rollout_id": r.id, "release_id": s.release, "phase": p}),
        )
    };
    let out = app.engine
        .apply_reports(input(
            first,
            vec![
                event(
                    "e0",
                    json!({"kind": "installed", "name": "app", "release_id": "app-1", "version": "1"}),
                ),
                phase("e1", "leased"),
                phase("e2", "installing"),
                phase("e3", "committed"),
                health("e4"),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(out.accepted, 5);
    // Another wave-0 site fails; one is skipped by an operator.
    let second = &wave0[1];
    app.engine.apply_reports(input(
        second,
        vec![event(
            "f1",
            json!({"kind": "phase", "rollout_id": r.id, "release_id": s.release, "phase": "failed", "detail": "disk full"}),
        )],
    ))
    .await
    .unwrap();
    let last = l.sites.last().unwrap().site_id.clone();
    app.engine
        .rollout_action(&r.id, Action::Skip(last.clone()), "test")
        .await
        .unwrap();
    // A site enrolled late joins.
    s.add_sites(&sim(&["site-late".to_string()]));
    app.engine.join_rollouts("site-late").await.unwrap();
    app.engine.tick_all().await.unwrap();

    let l = app.engine.load_rollout(&r.id).await.unwrap();
    let f = l.site(first).unwrap();
    assert!(f.leased_at.is_some() && f.committed_at.is_some() && f.last_healthy_at.is_some());
    assert_eq!(f.previous_release_id.as_deref(), Some("app-1"));
    assert_eq!(
        l.site(second).unwrap().failure.as_deref(),
        Some("disk full")
    );
    assert!(l.site(&last).unwrap().skipped);
    assert!(l.site("site-late").is_some());
    assert_memory_matches_sqlite(app, &r.id).await;

    // As after a restart: memory forgotten, rebuilt from SQLite, still equal.
    app.engine.facts.clear();
    assert_memory_matches_sqlite(app, &r.id).await;

    // A finished rollout leaves memory; its view still reads (from SQLite).
    app.engine
        .rollout_action(&r.id, Action::Abort(None), "test")
        .await
        .unwrap();
    assert!(app.engine.facts.with(&r.id, |_| ()).is_none());
    // A lease against it is decided from its record and the site's row, and does not
    // bring the whole rollout back into memory.
    let refused = app
        .engine
        .lease(
            first,
            None,
            &LeaseRequest {
                rollout_id: r.id.clone(),
                sequence: seq,
            },
        )
        .await
        .unwrap_err();
    let EngineError::LeaseDenied(denial) = refused else {
        panic!("a lease denial, not {refused:?}");
    };
    assert!(denial.message.contains("aborted"), "{denial}");
    assert!(app.engine.facts.with(&r.id, |_| ()).is_none());
    let l = app.engine.load_rollout(&r.id).await.unwrap();
    assert_eq!(l.record.status, RolloutStatus::Aborted);
    assert_eq!(l.sites.len(), 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_larger_than_one_chunk_is_issued_completely_and_once() {
    let n = 2 * ISSUE_CHUNK + 37;
    let s = setup(n).await;
    let app = &s.app;
    let plan = format!(
        "name = \"big\"\nrelease = \"{}\"\nselector = {{ sim = \"1\" }}\nassignment_ttl = \"1d\"\n\n\
         [[waves]]\nname = \"all\"\ngate = {{ success_ratio = 1.0, bake = \"0s\" }}\n",
        s.release
    );
    let r = app
        .engine
        .create_rollout(plan, PlanFormat::Toml, "test")
        .await
        .unwrap();
    app.engine
        .rollout_action(&r.id, Action::Start, "test")
        .await
        .unwrap();
    for i in 0..n {
        let a = app
            .engine
            .sites
            .get(&site_id(i))
            .and_then(|slot| slot.view().assignment)
            .unwrap_or_else(|| panic!("{} has no assignment", site_id(i)));
        assert_eq!(a.record.rollout_id, r.id);
        assert_eq!(a.record.sequence, 1);
        assert!(
            a.record.expires > Timestamp::now() + SignedDuration::from_hours(20),
            "the plan's assignment_ttl applies"
        );
    }
    let rows: i64 = s
        .conn()
        .query_row("SELECT COUNT(*) FROM assignments", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows as usize, n, "one assignment per site");
    let l = app.engine.load_rollout(&r.id).await.unwrap();
    assert!(l.record.waves[0].opened_at.is_some());
    assert!(l.sites.iter().all(|m| m.assigned_at.is_some()));
    // A second pass issues nothing more.
    app.engine.tick_all().await.unwrap();
    let rows: i64 = s
        .conn()
        .query_row("SELECT COUNT(*) FROM assignments", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows as usize, n);
}

/// How many of the rollout's sites each wave holds (from the engine's memory).
async fn wave_sizes(app: &App, id: &str, waves: usize) -> Vec<usize> {
    let mut n = vec![0; waves];
    for m in app.engine.load_rollout(id).await.unwrap().sites {
        n[m.wave as usize] += 1;
    }
    n
}

/// A share is a quota of the sites remaining, not a per-site probability: 40 sites with
/// 25% then 50% then the rest are exactly 10, 15 and 15. Sites that enroll after a wave
/// opened are placed with the others when the next wave opens (⌈50% × 34⌉ = 17), and no
/// site of an opened wave ever changes wave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_are_quotas_of_the_sites_known_when_each_wave_opens() {
    let s = setup(40).await;
    let app = &s.app;
    let pass = "gate = { success_ratio = 0.0, min_sample = 0, bake = \"0s\" }";
    let plan = format!(
        "name = \"quotas\"\nrelease = \"{}\"\nselector = {{ sim = \"1\" }}\nassignment_ttl = \"1d\"\n\n\
         [[waves]]\nname = \"quarter\"\nshare = 25\n{pass}\n\n\
         [[waves]]\nname = \"half of the rest\"\nshare = 50\n{pass}\n\n\
         [[waves]]\nname = \"rest\"\n{pass}\n",
        s.release
    );
    let r = app
        .engine
        .create_rollout(plan, PlanFormat::Toml, "test")
        .await
        .unwrap();
    assert_eq!(wave_sizes(app, &r.id, 3).await, [10, 15, 15]);
    app.engine
        .rollout_action(&r.id, Action::Start, "test")
        .await
        .unwrap();
    let first: Vec<(String, u32)> = app
        .engine
        .load_rollout(&r.id)
        .await
        .unwrap()
        .sites
        .iter()
        .filter(|m| m.wave == 0)
        .map(|m| (m.site_id.clone(), m.wave))
        .collect();
    assert_eq!(first.len(), 10);

    // Four sites enroll while wave 0 is open: they wait for wave 1, not wave 0.
    let late: Vec<String> = (0..4).map(|i| format!("site-late-{i}")).collect();
    s.add_sites(&sim(&late));
    for id in &late {
        app.engine.join_rollouts(id).await.unwrap();
    }
    assert_eq!(wave_sizes(app, &r.id, 3).await, [10, 19, 15]);

    // Wave 0 passes and wave 1 opens: the 34 sites not in wave 0 are placed again.
    app.engine.tick_all().await.unwrap();
    let l = app.engine.load_rollout(&r.id).await.unwrap();
    assert!(l.record.waves[1].opened_at.is_some());
    assert_eq!(wave_sizes(app, &r.id, 3).await, [10, 17, 17]);
    for (id, wave) in &first {
        let m = l.site(id).unwrap();
        assert_eq!(m.wave, *wave, "{id} was assigned in wave 0 and stays there");
        assert!(m.assigned_at.is_some());
    }
    assert!(
        l.sites
            .iter()
            .all(|m| (m.wave <= 1) == m.assigned_at.is_some()),
        "waves 0 and 1 assigned, wave 2 not yet"
    );
    let rid = r.id.clone();
    let decisions = app.db.run(move |st| st.decisions(&rid)).await.unwrap();
    assert!(
        decisions
            .iter()
            .any(|d| d.kind == "membership" && d.wave == Some(1)),
        "{decisions:?}"
    );
    assert_memory_matches_sqlite(app, &r.id).await;
    app.engine.facts.clear();
    assert_memory_matches_sqlite(app, &r.id).await;
    assert_eq!(wave_sizes(app, &r.id, 3).await, [10, 17, 17]);
}

/// A one-wave plan over every site, with `extra` TOML lines in the wave.
fn one_wave_plan(release: &str, extra: &str) -> String {
    format!(
        "name = \"lease test\"\nrelease = \"{release}\"\nselector = {{ sim = \"1\" }}\nassignment_ttl = \"1d\"\n\n\
         [[waves]]\nname = \"all\"\n{extra}\ngate = {{ success_ratio = 1.0, bake = \"0s\" }}\n"
    )
}

/// Starts a one-wave rollout and asks for a lease for every site at once; returns the
/// rollout id and, per site, whether the lease was granted (a refusal must be a
/// `lease_denied` conflict).
async fn lease_all_at_once(s: &Setup, extra: &str) -> (String, Vec<(String, bool)>) {
    let app = &s.app;
    let r = app
        .engine
        .create_rollout(one_wave_plan(&s.release, extra), PlanFormat::Toml, "test")
        .await
        .unwrap();
    app.engine
        .rollout_action(&r.id, Action::Start, "test")
        .await
        .unwrap();
    let sites: Vec<String> = app
        .engine
        .load_rollout(&r.id)
        .await
        .unwrap()
        .sites
        .iter()
        .map(|m| m.site_id.clone())
        .collect();
    let mut tasks = Vec::new();
    for site in sites {
        let (app, rollout_id) = (app.clone(), r.id.clone());
        tasks.push(tokio::spawn(async move {
            let sequence = app
                .engine
                .sites
                .get(&site)
                .and_then(|slot| slot.view().assignment)
                .expect("every site of the only wave is assigned")
                .record
                .sequence;
            let got = app
                .engine
                .lease(
                    &site,
                    None,
                    &LeaseRequest {
                        rollout_id,
                        sequence,
                    },
                )
                .await;
            match got {
                Ok(_) => (site, true),
                Err(e) => {
                    assert!(matches!(e, EngineError::LeaseDenied(_)), "{site}: {e:?}");
                    (site, false)
                }
            }
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    (r.id, out)
}

fn lease_rows(s: &Setup, rollout: &str) -> Vec<String> {
    let conn = s.conn();
    let mut st = conn
        .prepare("SELECT site_id FROM leases WHERE rollout_id = ?1 ORDER BY site_id")
        .unwrap();
    st.query_map([rollout], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_leases_is_granted_and_committed_each_exactly_once() {
    let s = setup(1200).await;
    let (id, got) = lease_all_at_once(&s, "").await;
    assert_eq!(got.len(), 1200);
    assert!(
        got.iter().all(|(_, ok)| *ok),
        "no limit: every lease granted"
    );
    let mut want: Vec<String> = got.into_iter().map(|(site, _)| site).collect();
    want.sort();
    assert_eq!(
        lease_rows(&s, &id),
        want,
        "one committed lease row per site"
    );
    // Memory took every grant over, and agrees with SQLite.
    let l = s.app.engine.load_rollout(&id).await.unwrap();
    assert!(l.sites.iter().all(|m| m.leased_at.is_some()));
    assert_memory_matches_sqlite(&s.app, &id).await;
    // A renewal replaces the site's lease instead of adding one.
    let first = &want[0];
    let sequence = s
        .app
        .engine
        .sites
        .get(first)
        .unwrap()
        .view()
        .assignment
        .unwrap()
        .record
        .sequence;
    s.app
        .engine
        .lease(
            first,
            None,
            &LeaseRequest {
                rollout_id: id.clone(),
                sequence,
            },
        )
        .await
        .unwrap();
    assert_eq!(lease_rows(&s, &id).len(), 1200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_leases_never_exceed_a_wave_limit() {
    let s = setup(60).await;
    let (id, got) = lease_all_at_once(&s, "max_concurrent = 5").await;
    let granted = got.iter().filter(|(_, ok)| *ok).count();
    assert_eq!(
        granted, 5,
        "60 sites asked at once under max_concurrent = 5"
    );
    assert_eq!(lease_rows(&s, &id).len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_leases_never_exceed_a_compartment_limit() {
    let s = setup(40).await;
    // Sites 0..20 are in region north; the rest have no region (compartment "").
    let conn = s.conn();
    for i in 0..20 {
        conn.execute(
            "UPDATE sites SET labels = '{\"sim\":\"1\",\"region\":\"north\"}' WHERE id = ?1",
            [site_id(i)],
        )
        .unwrap();
    }
    let (id, got) = lease_all_at_once(&s, "compartment = { label = \"region\", max = 2 }").await;
    let north = |site: &String| site.as_str() < site_id(20).as_str();
    let granted: Vec<&String> = got.iter().filter(|(_, ok)| *ok).map(|(s, _)| s).collect();
    assert_eq!(
        granted.iter().filter(|s| north(s)).count(),
        2,
        "region=north holds at most 2 leases: {granted:?}"
    );
    assert_eq!(
        granted.iter().filter(|s| !north(s)).count(),
        2,
        "sites without a region hold at most 2 leases: {granted:?}"
    );
    assert_eq!(lease_rows(&s, &id).len(), 4);
}

/// Woken passes wait four times the last pass, and never less than the floor.
#[test]
fn controller_passes_are_paced_with_a_floor() {
    use fleetwave_coordinator::engine::{MIN_PASS_GAP, pass_gap};
    use std::time::Duration;
    assert_eq!(pass_gap(Duration::from_micros(300)), MIN_PASS_GAP);
    assert_eq!(pass_gap(Duration::from_millis(40)), MIN_PASS_GAP);
    assert_eq!(
        pass_gap(Duration::from_millis(100)),
        Duration::from_millis(400)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pruning_round_deletes_past_the_retention_in_chunks_and_counts_them() {
    let s = setup(2).await;
    let now = Timestamp::now();
    // More old heartbeats than one chunk holds, a few new ones, and an old phase report
    // (kept 90 days by default).
    let old = now - SignedDuration::from_hours(72);
    let n_old = fleetwave_coordinator::retention::CHUNK + 500;
    let old_health: Vec<Event> = (0..n_old).map(|i| health(&format!("old-{i}"))).collect();
    let phase = event(
        "old-phase",
        json!({"kind": "phase", "release_id": "app-2", "phase": "downloading"}),
    );
    let recent: Vec<Event> = (0..3).map(|i| health(&format!("new-{i}"))).collect();
    for (events, received_at) in [(old_health, old), (vec![phase], old), (recent, now)] {
        s.app
            .engine
            .apply_reports(ReportInput {
                site_id: site_id(0),
                box_id: None,
                events,
                received_at,
            })
            .await
            .unwrap();
    }
    assert_eq!(report_rows(&s), n_old as i64 + 4);

    let deleted = fleetwave_coordinator::retention::prune_once(&s.app, now)
        .await
        .unwrap();
    assert_eq!(deleted, vec![("health", n_old as u64)]);
    let left: Vec<String> = {
        let c = s.conn();
        let mut st = c
            .prepare("SELECT event_id FROM reports ORDER BY event_id")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(left, ["new-0", "new-1", "new-2", "old-phase"]);
    let counted = s
        .app
        .metrics
        .reports_pruned
        .get_or_create(&fleetwave_coordinator::metrics::KindLabel {
            kind: "health".into(),
        })
        .get();
    assert_eq!(counted, n_old as u64);
    // Nothing more is due.
    let again = fleetwave_coordinator::retention::prune_once(&s.app, now)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

/// A site whose agent gave up on its rollback (phase `rollback_failed`) is a failed site:
/// the gate counts it against the failure budget (the rollout halts), the rollout's site
/// list says its rollback failed with the agent's own words, and the store counts it for
/// the `fleetwave_sites_rollback_failed` gauge until the site reports a newer phase.
#[tokio::test]
async fn a_rollback_the_agent_gave_up_on_counts_as_failed_and_is_counted() {
    let s = setup(3).await;
    let app = &s.app;
    let r = app
        .engine
        .create_rollout(one_wave_plan(&s.release, ""), PlanFormat::Toml, "test")
        .await
        .unwrap();
    app.engine
        .rollout_action(&r.id, Action::Start, "test")
        .await
        .unwrap();
    let site = site_id(0);
    let phase = |id: &str, p: &str, detail: &str| {
        event(
            id,
            json!({"kind": "phase", "rollout_id": r.id, "release_id": s.release, "phase": p, "detail": detail}),
        )
    };
    // No `failed` phase first (e.g. a rollback after the assignment expired): the
    // `rollback_failed` phase alone makes the site failed.
    app.engine.apply_reports(input(
        &site,
        vec![
            phase("r1", "installing", ""),
            phase(
                "r2",
                "rollback_failed",
                "command_failed: rollback failed 8 times, giving up: restart exited 1; output: port 8080 in use",
            ),
        ],
    ))
    .await
    .unwrap();
    app.engine.tick_all().await.unwrap();

    let view = fleetwave_coordinator::api::operator::rollout_view(app, &r.id)
        .await
        .unwrap();
    assert_eq!(
        view.status,
        RolloutStatus::Halted,
        "{:?}",
        view.status_reason
    );
    assert_eq!(view.waves[0].tally.failed, 1);
    let listed = view.sites.iter().find(|v| v.site_id == site).unwrap();
    assert_eq!(listed.state, "failed");
    assert_eq!(listed.phase.as_deref(), Some("rollback_failed"));
    let detail = listed.detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains("its rollback failed") && detail.contains("port 8080 in use"),
        "{detail}"
    );
    assert_eq!(
        app.db
            .run(|s| s.count_sites_rollback_failed())
            .await
            .unwrap(),
        1
    );

    // Fixed by hand and installed by a later rollout: no longer counted.
    app.engine
        .rollout_action(&r.id, Action::Abort(None), "test")
        .await
        .unwrap();
    let r2 = app
        .engine
        .create_rollout(one_wave_plan(&s.release, ""), PlanFormat::Toml, "test")
        .await
        .unwrap();
    app.engine
        .rollout_action(&r2.id, Action::Start, "test")
        .await
        .unwrap();
    app.engine.apply_reports(input(
        &site,
        vec![event(
            "r3",
            json!({"kind": "phase", "rollout_id": r2.id, "release_id": s.release, "phase": "committed"}),
        )],
    ))
    .await
    .unwrap();
    assert_eq!(
        app.db
            .run(|s| s.count_sites_rollback_failed())
            .await
            .unwrap(),
        0
    );
}

/// A site of three boxes in-process: a `box_order` selector that matches none of its boxes
/// is refused naming the site; then the boxes are leased one at a time in the plan's
/// order (a box out of turn hears `box_order` and which box it waits for), the next once
/// the one before committed and reported healthy, and the site commits only with its last
/// box.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_of_three_boxes_is_leased_box_by_box_in_the_plans_order() {
    use fleetwave_coordinator::controller::LeaseDenialReason;
    use fleetwave_coordinator::store::{Enrollment, EnrollmentTokenRecord};
    let s = setup(1).await;
    let app = &s.app;
    let site = site_id(0);
    let now = Timestamp::now();
    let token = EnrollmentTokenRecord {
        id: "et-boxes".into(),
        labels: Default::default(),
        site_id: Some(site.clone()),
        expires_at: now + SignedDuration::from_hours(1),
        uses_total: 2,
        uses_left: 2,
        revoked: false,
        created_at: now,
        created_by: "test".into(),
    };
    let sid = site.clone();
    app.db
        .run(move |st| {
            st.create_enrollment_token("boxes", &token)?;
            for (b, role, key) in [("node-a", "server", "aa"), ("node-b", "agent", "bb")] {
                st.enroll(&Enrollment {
                    token_hash: "boxes".into(),
                    site_id: sid.clone(),
                    box_id: b.into(),
                    role: role.into(),
                    device_key: key.repeat(32),
                    agent_version: "1".into(),
                    at: now + SignedDuration::from_secs(1),
                })?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let plan = |order: &str| {
        format!(
            "name = \"boxes\"\nrelease = \"{}\"\nselector = {{ sim = \"1\" }}\nbox_order = {order}\n\n\
             [[waves]]\nname = \"all\"\ngate = {{ success_ratio = 1.0, bake = \"0s\" }}\n",
            s.release
        )
    };
    let refused = app
        .engine
        .create_rollout(
            plan(r#"["role=server", "role=worker"]"#),
            PlanFormat::Toml,
            "test",
        )
        .await
        .unwrap_err();
    let said = refused.to_string();
    assert!(
        said.contains(r#"box_order[1] "role=worker" matches no box of site site-00000"#)
            && said.contains("node-a (role server)"),
        "{said}"
    );

    let r = app
        .engine
        .create_rollout(
            plan(r#"["role=server", "role=agent"]"#),
            PlanFormat::Toml,
            "test",
        )
        .await
        .unwrap();
    app.engine
        .rollout_action(&r.id, Action::Start, "test")
        .await
        .unwrap();
    let seq = app
        .engine
        .sites
        .get(&site)
        .and_then(|slot| slot.view().assignment)
        .expect("assigned")
        .record
        .sequence;
    let req = LeaseRequest {
        rollout_id: r.id.clone(),
        sequence: seq,
    };
    let lease = |b: &'static str| app.engine.lease(&site, Some(b), &req);
    let waits = |e: EngineError| match e {
        EngineError::LeaseDenied(d) => {
            assert_eq!(d.reason, LeaseDenialReason::BoxOrder, "{d}");
            d.message
        }
        other => panic!("not a lease denial: {other}"),
    };
    let said = waits(lease("node-b").await.unwrap_err());
    assert!(
        said.contains("waits for box node-a (role server)"),
        "{said}"
    );
    lease("node-a").await.unwrap();
    // Renewing is fine; the boxes after it still wait (main, with no role, comes last).
    lease("node-a").await.unwrap();
    waits(lease("main").await.unwrap_err());
    let phase = |id: &str, p: &str| {
        event(
            id,
            json!({"kind": "phase", "rollout_id": r.id, "release_id": s.release, "phase": p}),
        )
    };
    let from = |b: &str, events: Vec<Event>| ReportInput {
        box_id: Some(b.into()),
        ..input(&site, events)
    };
    app.engine
        .apply_reports(from("node-a", vec![phase("a1", "committed")]))
        .await
        .unwrap();
    // Committed, not yet healthy since: node-b still waits.
    waits(lease("node-b").await.unwrap_err());
    app.engine
        .apply_reports(from("node-a", vec![health("a2")]))
        .await
        .unwrap();
    lease("node-b").await.unwrap();
    let said = waits(lease("main").await.unwrap_err());
    assert!(said.contains("waits for box node-b (role agent)"), "{said}");
    app.engine
        .apply_reports(from("node-b", vec![phase("b1", "committed"), health("b2")]))
        .await
        .unwrap();
    let row = || {
        let (id, sid) = (r.id.clone(), site.clone());
        app.db.run(move |st| st.rollout_site(&id, &sid))
    };
    assert_eq!(row().await.unwrap().unwrap().committed_at, None);
    lease("main").await.unwrap();
    app.engine
        .apply_reports(from("main", vec![phase("m1", "committed"), health("m2")]))
        .await
        .unwrap();
    assert!(row().await.unwrap().unwrap().committed_at.is_some());
}
