//! The store on both backends (a real SQLite file, a real PostgreSQL database): reports
//! are applied at most once, facts follow each event's own time (out-of-order delivery
//! never moves them backwards), and one active rollout per site holds across rollouts.

mod backend;

use std::collections::BTreeMap;
use std::sync::Arc;

use backend::{Backend, TestDb};

use fleetwave_coordinator::store::postgres as postgres_store;
use fleetwave_coordinator::store::*;
use fleetwave_shared::Envelope;
use fleetwave_shared::protocol::operator::{RolloutStatus, SiteState};
use fleetwave_shared::protocol::{Event, EventBody, HealthSummary, Phase};
use jiff::{SignedDuration, Timestamp};

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// An enrollment token `id` with `uses` uses, bound to `site` (or to none), made at `at`
/// and good for an hour.
fn token(id: &str, site: Option<&str>, uses: u32, at: Timestamp) -> EnrollmentTokenRecord {
    EnrollmentTokenRecord {
        id: id.into(),
        labels: Default::default(),
        site_id: site.map(Into::into),
        expires_at: at + SignedDuration::from_hours(1),
        uses_total: uses,
        uses_left: uses,
        revoked: false,
        created_at: at,
        created_by: "test".into(),
    }
}

fn setup(backend: Backend) -> (TestDb, Arc<dyn Store>) {
    let db = TestDb::new(backend);
    let store = db.open();
    let at = ts("2026-01-01T00:00:00Z");
    let token = token("et-1", None, 2, at);
    store.create_enrollment_token("hash", &token).unwrap();
    for site in ["s1", "s2"] {
        store
            .enroll(&Enrollment {
                token_hash: "hash".into(),
                site_id: site.into(),
                box_id: DEFAULT_BOX.into(),
                role: String::new(),
                device_key: "00".repeat(32),
                agent_version: "1".into(),
                at,
            })
            .unwrap();
    }
    let env = Envelope::sign("x", b"{}", &[&fleetwave_shared::keys::generate()]);
    store
        .publish_release(&ReleaseRecord {
            id: "pos-2".into(),
            digest: env.digest(),
            name: "pos".into(),
            version: "2".into(),
            kind: "app".into(),
            counter: 2,
            envelope: env,
            published_at: at,
            published_by: "test".into(),
        })
        .unwrap();
    (db, store)
}

fn rollout(id: &str) -> RolloutRecord {
    let at = ts("2026-01-01T00:00:00Z");
    RolloutRecord {
        id: id.into(),
        release_id: "pos-2".into(),
        plan_source: String::new(),
        plan_format: "toml".into(),
        status: RolloutStatus::Running,
        waves: vec![WaveRecord::default()],
        created_at: at,
        created_by: "test".into(),
        updated_at: at,
        status_reason: None,
    }
}

fn member(rollout: &str, site: &str) -> RolloutSiteRecord {
    RolloutSiteRecord {
        rollout_id: rollout.into(),
        site_id: site.into(),
        ..Default::default()
    }
}

fn phase(id: &str, at: &str, phase: Phase) -> Event {
    Event {
        id: id.into(),
        at: ts(at),
        body: EventBody::Phase {
            rollout_id: Some("r1".into()),
            release_id: "pos-2".into(),
            phase,
            detail: None,
        },
    }
}

fn health(id: &str, at: &str, healthy: bool) -> Event {
    Event {
        id: id.into(),
        at: ts(at),
        body: EventBody::Health {
            healthy,
            summary: HealthSummary::default(),
        },
    }
}

fn out_of_order_reports_never_move_facts_backwards_and_apply_once(backend: Backend) {
    let (_db, store) = setup(backend);
    store
        .create_rollout(&rollout("r1"), &[member("r1", "s1")])
        .unwrap();
    let now = ts("2026-01-01T01:00:00Z");
    // Delivered late: the commit arrives after a later health report.
    let first = vec![
        health("h2", "2026-01-01T00:20:00Z", false),
        phase("p2", "2026-01-01T00:10:00Z", Phase::Committed),
    ];
    let out = store.apply_reports("s1", &first, now).unwrap();
    assert_eq!((out.accepted, out.duplicates), (2, 0));
    assert_eq!(out.rollouts_touched, vec!["r1".to_string()]);
    // An older phase arriving last does not replace the newer one.
    let second = vec![
        phase("p1", "2026-01-01T00:05:00Z", Phase::Installing),
        health("h2", "2026-01-01T00:20:00Z", false),
    ];
    let out = store.apply_reports("s1", &second, now).unwrap();
    assert_eq!((out.accepted, out.duplicates), (1, 1));
    let facts = store.rollout_sites("r1").unwrap().remove(0);
    assert_eq!(facts.phase, Some(Phase::Committed));
    assert_eq!(facts.phase_at, Some(ts("2026-01-01T00:10:00Z")));
    assert_eq!(facts.committed_at, Some(ts("2026-01-01T00:10:00Z")));
    // The unhealthy report after the commit is found although it arrived first.
    assert_eq!(
        facts.first_unhealthy_after_commit_at,
        Some(ts("2026-01-01T00:20:00Z"))
    );
    assert_eq!(facts.last_report_at, Some(ts("2026-01-01T00:20:00Z")));
    // The site's own health follows the newest report, not the last delivered.
    store
        .apply_reports("s1", &[health("h0", "2026-01-01T00:01:00Z", true)], now)
        .unwrap();
    let site = store.site("s1").unwrap().unwrap();
    assert_eq!(
        (site.healthy, site.health_at),
        (Some(false), Some(ts("2026-01-01T00:20:00Z")))
    );
}

fn one_active_rollout_per_site_and_counters_go_up(backend: Backend) {
    let (_db, store) = setup(backend);
    store
        .create_rollout(&rollout("r1"), &[member("r1", "s1")])
        .unwrap();
    let err = store
        .create_rollout(&rollout("r2"), &[member("r2", "s1"), member("r2", "s2")])
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("s1 (in r1)")),
        "{err}"
    );
    // Late joiners already in an active rollout are left out.
    assert!(
        store
            .add_rollout_sites(&[member("r3", "s1")])
            .unwrap()
            .is_empty()
    );
    // Once r1 is done, s1 is free.
    let mut done = rollout("r1");
    done.status = RolloutStatus::Completed;
    store.update_rollout(&done, &[]).unwrap();
    store
        .create_rollout(&rollout("r2"), &[member("r2", "s1"), member("r2", "s2")])
        .unwrap();
    assert_eq!(
        store.active_rollout_of_site("s1").unwrap().as_deref(),
        Some("r2")
    );

    let mut again = store.release("pos-2").unwrap().unwrap();
    again.id = "pos-1".into();
    again.digest = "other".into();
    again.counter = 2;
    let err = store.publish_release(&again).unwrap_err();
    assert!(err.to_string().contains("counters must go up"), "{err}");
    assert_eq!(
        store.count_sites_by_state().unwrap(),
        vec![(SiteState::Active, 2)]
    );
}

/// An assignment draft of rollout r1 (release pos-2, wave 0) for `site`.
fn r1_draft(site: &str) -> AssignmentDraft {
    let at = ts("2026-01-01T00:00:00Z");
    AssignmentDraft {
        site_id: site.into(),
        rollout_id: "r1".into(),
        wave: 0,
        release_id: "pos-2".into(),
        release_digest: "d".into(),
        rollback: false,
        not_before: at,
        issued_at: at,
        expires: at + SignedDuration::from_hours(1),
        window: None,
    }
}

/// Signs a draft as `site#sequence` with `key`.
fn signer(
    key: &ed25519_dalek::SigningKey,
) -> impl Fn(&AssignmentDraft, u64) -> Envelope + Sync + '_ {
    move |d: &AssignmentDraft, seq: u64| {
        Envelope::sign("a", format!("{}#{seq}", d.site_id).as_bytes(), &[key])
    }
}

fn assignment_sequences_increase_per_site_and_survive_reopening(backend: Backend) {
    let db = {
        let (db, store) = setup(backend);
        store
            .create_rollout(&rollout("r1"), &[member("r1", "s1")])
            .unwrap();
        let key = fleetwave_shared::keys::generate();
        let a = store
            .issue_assignments(&[r1_draft("s1"), r1_draft("s1")], &signer(&key))
            .unwrap();
        assert_eq!((a[0].sequence, a[1].sequence), (1, 2));
        db
    };
    let store = db.open();
    let current = store.current_assignments().unwrap();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0].sequence, 2);
    assert!(store.rollout_sites("r1").unwrap()[0].assigned_at.is_some());
}

/// The poll cache fills from lean reads: every site's id, state and key, and the newest
/// assignment of each site a page at a time, in site order, ending with an empty page.
fn the_poll_cache_reads_site_keys_and_pages_of_newest_assignments(backend: Backend) {
    let (_db, store) = setup(backend);
    store
        .set_site_state("s2", SiteState::Decommissioned)
        .unwrap();
    let mut keys = store.site_keys().unwrap();
    keys.sort_by(|a, b| a.id.cmp(&b.id));
    let want = |id: &str, state| SiteKey {
        id: id.into(),
        state,
        device_key: "00".repeat(32),
    };
    assert_eq!(
        keys,
        vec![
            want("s1", SiteState::Active),
            want("s2", SiteState::Decommissioned)
        ]
    );
    store.set_site_state("s2", SiteState::Active).unwrap();
    store
        .create_rollout(&rollout("r1"), &[member("r1", "s1"), member("r1", "s2")])
        .unwrap();
    let key = fleetwave_shared::keys::generate();
    // s1 gets three assignments, s2 one: the newest of each is its current one.
    let drafts = ["s2", "s1", "s1", "s1"].map(r1_draft);
    store.issue_assignments(&drafts, &signer(&key)).unwrap();
    let newest = |a: &[AssignmentRecord]| -> Vec<(String, u64)> {
        a.iter().map(|a| (a.site_id.clone(), a.sequence)).collect()
    };
    let first = store.current_assignments_after(None, 1).unwrap();
    assert_eq!(newest(&first), vec![("s1".to_string(), 3)]);
    let second = store.current_assignments_after(Some("s1"), 1).unwrap();
    assert_eq!(newest(&second), vec![("s2".to_string(), 1)]);
    assert!(
        store
            .current_assignments_after(Some("s2"), 1)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        newest(&store.current_assignments_after(None, 10).unwrap()),
        vec![("s1".to_string(), 3), ("s2".to_string(), 1)]
    );
    let mut all = newest(&store.current_assignments().unwrap());
    all.sort();
    assert_eq!(all, vec![("s1".to_string(), 3), ("s2".to_string(), 1)]);
}

fn a_report_group_commits_good_batches_around_a_failing_one(backend: Backend) {
    let (_db, store) = setup(backend);
    store
        .create_rollout(&rollout("r1"), &[member("r1", "s1")])
        .unwrap();
    let now = ts("2026-01-01T01:00:00Z");
    let batch = |site: &str, events: Vec<Event>| ReportInput {
        site_id: site.into(),
        box_id: None,
        events,
        received_at: now,
    };
    let out = store
        .apply_report_group(&[
            batch(
                "s1",
                vec![phase("p1", "2026-01-01T00:10:00Z", Phase::Committed)],
            ),
            // Not enrolled: the batch fails (after its first event was written) and is
            // undone on its own.
            batch("ghost", vec![health("g1", "2026-01-01T00:10:00Z", true)]),
            batch(
                "s2",
                vec![
                    health("h1", "2026-01-01T00:10:00Z", true),
                    // The same event twice in one group: applied once.
                    health("h1", "2026-01-01T00:10:00Z", true),
                ],
            ),
        ])
        .unwrap();
    assert_eq!(out.len(), 3);
    let first = out[0].as_ref().expect("s1's batch applies");
    assert_eq!(first.accepted, 1);
    assert_eq!(first.facts.len(), 1, "the changed rollout row is read back");
    assert_eq!(
        first.facts[0].committed_at,
        Some(ts("2026-01-01T00:10:00Z"))
    );
    assert!(out[1].is_err(), "the ghost site's batch fails");
    let third = out[2].as_ref().expect("s2's batch applies");
    assert_eq!((third.accepted, third.duplicates), (1, 1));
    assert_eq!(
        store.site("s2").unwrap().unwrap().healthy,
        Some(true),
        "the batch after the failing one committed"
    );
    assert_eq!(
        store.rollout_sites("r1").unwrap()[0].committed_at,
        Some(ts("2026-01-01T00:10:00Z"))
    );
    // Resent as a group: every event is a duplicate now.
    let again = store
        .apply_report_group(&[batch(
            "s1",
            vec![phase("p1", "2026-01-01T00:10:00Z", Phase::Committed)],
        )])
        .unwrap();
    assert_eq!(again[0].as_ref().unwrap().duplicates, 1);
}

/// Rows left in the reports table, by event id.
fn stored_reports(db: &TestDb) -> Vec<String> {
    db.strings("SELECT event_id FROM reports ORDER BY event_id")
}

fn pruning_deletes_only_reports_past_their_period_and_a_resent_one_changes_nothing(
    backend: Backend,
) {
    let (db, store) = setup(backend);
    store
        .create_rollout(&rollout("r1"), &[member("r1", "s1")])
        .unwrap();
    let (old, recent) = (ts("2026-01-01T01:00:00Z"), ts("2026-01-03T01:00:00Z"));
    let early = vec![
        health("h1", "2026-01-01T00:05:00Z", true),
        health("h2", "2026-01-01T00:06:00Z", true),
        phase("p1", "2026-01-01T00:10:00Z", Phase::Committed),
    ];
    store.apply_reports("s1", &early, old).unwrap();
    store
        .apply_reports("s1", &[health("h3", "2026-01-03T00:00:00Z", true)], recent)
        .unwrap();
    let before = store.rollout_sites("r1").unwrap().remove(0);

    // Oldest first and at most the limit.
    let cut = ts("2026-01-02T00:00:00Z");
    assert_eq!(store.prune_reports(ReportKind::Health, cut, 1).unwrap(), 1);
    assert_eq!(stored_reports(&db), ["h2", "h3", "p1"]);
    assert_eq!(
        store.prune_reports(ReportKind::Health, cut, 100).unwrap(),
        1
    );
    // Other kinds and newer rows are left alone.
    assert_eq!(stored_reports(&db), ["h3", "p1"]);
    assert_eq!(store.prune_reports(ReportKind::Phase, old, 100).unwrap(), 0);
    assert_eq!(store.prune_reports(ReportKind::Phase, cut, 100).unwrap(), 1);
    assert_eq!(stored_reports(&db), ["h3"]);

    // A report resent after pruning is stored again and changes nothing.
    let out = store.apply_reports("s1", &early, recent).unwrap();
    assert_eq!((out.accepted, out.duplicates), (3, 0));
    assert_eq!(store.rollout_sites("r1").unwrap().remove(0), before);
    let site = store.site("s1").unwrap().unwrap();
    assert_eq!(site.health_at, Some(ts("2026-01-03T00:00:00Z")));
    // ... and counts once again from then on.
    let out = store.apply_reports("s1", &early, recent).unwrap();
    assert_eq!((out.accepted, out.duplicates), (0, 3));
}

fn the_commit_and_pruning_queries_use_their_indexes(backend: Backend) {
    let (db, _store) = setup(backend);
    if backend == Backend::Postgres {
        // PostgreSQL's planner picks by statistics (an empty table is read whole): with
        // sequential scans made dear, a query whose conditions match an index uses it.
        let mut c = ::postgres::Client::connect(db.url(), ::postgres::NoTls).unwrap();
        c.batch_execute("SET enable_seqscan = off").unwrap();
        let mut plan = |sql: &str| -> String {
            let sql = sql
                .replace("$1", "'health'")
                .replace("$2", "0")
                .replace("$3", "10");
            let lines: Vec<String> = c
                .query(&format!("EXPLAIN {sql}"), &[])
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            lines.join(" | ")
        };
        let commit = plan(&postgres_store::FIRST_UNHEALTHY_SQL.replace("$1", "'s1'"));
        assert!(commit.contains("reports_unhealthy"), "{commit}");
        let prune = plan(postgres_store::PRUNE_REPORTS_SQL);
        assert!(prune.contains("reports_by_kind_received"), "{prune}");
        return;
    }
    let c = rusqlite::Connection::open(db.sqlite_path()).unwrap();
    let plan = |sql: &str| -> String {
        let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let nulls = std::iter::repeat_n(rusqlite::types::Null, st.parameter_count());
        let rows: Vec<String> = st
            .query_map(rusqlite::params_from_iter(nulls), |r| r.get(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.join(" | ")
    };
    let commit = plan(fleetwave_coordinator::store::sqlite::FIRST_UNHEALTHY_SQL);
    assert!(commit.contains("USING INDEX reports_unhealthy"), "{commit}");
    let prune = plan(fleetwave_coordinator::store::sqlite::PRUNE_REPORTS_SQL);
    assert!(
        prune.contains("COVERING INDEX reports_by_kind_received"),
        "{prune}"
    );
}

fn a_rollout_status_and_the_decision_that_set_it_are_stored_together(backend: Backend) {
    let (_db, store) = setup(backend);
    store
        .create_rollout(&rollout("r1"), &[member("r1", "s1")])
        .unwrap();
    let decision = |rollout_id: &str| DecisionRecord {
        id: 0,
        rollout_id: rollout_id.into(),
        at: ts("2026-01-01T00:05:00Z"),
        kind: "complete".into(),
        wave: None,
        reason: "every wave passed".into(),
    };
    let mut done = rollout("r1");
    done.status = RolloutStatus::Completed;
    store.update_rollout(&done, &[decision("r1")]).unwrap();
    assert_eq!(
        store.rollout("r1").unwrap().unwrap().status,
        RolloutStatus::Completed
    );
    let kinds: Vec<String> = store
        .decisions("r1")
        .unwrap()
        .into_iter()
        .map(|d| d.kind)
        .collect();
    assert_eq!(kinds, ["complete"]);

    // One transaction: when the record cannot be saved, its decision is not kept either.
    let mut ghost = rollout("r9");
    ghost.status = RolloutStatus::Completed;
    assert!(store.update_rollout(&ghost, &[decision("r9")]).is_err());
    assert!(store.decisions("r9").unwrap().is_empty());
}

/// Each backend applies `store::fold`'s rules: a terminal phase releases the site's
/// lease (even when it is older than the phase known), a non-terminal one keeps it.
fn a_terminal_phase_releases_the_lease(backend: Backend) {
    let (_db, store) = setup(backend);
    store
        .create_rollout(&rollout("r1"), &[member("r1", "s1")])
        .unwrap();
    let granted = ts("2026-01-01T00:01:00Z");
    let lease = LeaseRecord {
        id: "l1".into(),
        site_id: "s1".into(),
        rollout_id: "r1".into(),
        wave: 0,
        granted_at: granted,
        expires_at: granted + SignedDuration::from_hours(1),
    };
    store.grant_leases(std::slice::from_ref(&lease)).unwrap()[0]
        .as_ref()
        .unwrap();
    let now = ts("2026-01-01T00:30:00Z");
    store
        .apply_reports(
            "s1",
            &[phase("p1", "2026-01-01T00:10:00Z", Phase::Installing)],
            now,
        )
        .unwrap();
    assert_eq!(store.active_leases("r1", granted).unwrap(), vec![lease]);
    let out = store
        .apply_reports(
            "s1",
            &[phase("p0", "2026-01-01T00:05:00Z", Phase::Failed)],
            now,
        )
        .unwrap();
    assert!(store.active_leases("r1", granted).unwrap().is_empty());
    // The older failure counts as a failure, but not as the newest phase.
    let facts = &out.facts[0];
    assert_eq!(facts.phase, Some(Phase::Installing));
    assert_eq!(facts.failed_at, Some(ts("2026-01-01T00:05:00Z")));
    assert_eq!(facts.leased_at, Some(granted));
}

fn installed(id: &str, stream: &str, version: Option<&str>) -> Event {
    Event {
        id: id.into(),
        at: ts("2026-01-01T00:30:00Z"),
        body: EventBody::Installed {
            name: stream.into(),
            release_id: version.map(|v| format!("{stream}-{v}")),
            version: version.map(str::to_string),
            previous_release_id: None,
        },
    }
}

/// Wave membership reads every site's id, state and labels, with only the named stream's
/// entry of what it runs: the same facts as the whole records, by site id.
fn membership_reads_labels_and_one_streams_install_as_the_whole_records_have_them(
    backend: Backend,
) {
    let (_db, store) = setup(backend);
    let now = ts("2026-01-01T01:00:00Z");
    let labels: BTreeMap<String, String> = [
        ("region".to_string(), "eu".to_string()),
        ("tier".to_string(), "1".to_string()),
    ]
    .into();
    store.set_site_labels("s2", &labels).unwrap();
    store
        .set_site_state("s1", SiteState::Decommissioned)
        .unwrap();
    store
        .apply_reports(
            "s2",
            &[
                installed("i1", "pos", Some("1")),
                installed("i2", "k3s", Some("1.31")),
            ],
            now,
        )
        .unwrap();
    let whole = store
        .list_sites(&SiteFilter {
            limit: 10,
            ..SiteFilter::default()
        })
        .unwrap();
    for stream in [None, Some("pos"), Some("k3s"), Some("none")] {
        let lean = store.site_labels(stream).unwrap();
        let ids: Vec<&str> = lean.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, vec!["s1", "s2"], "by site id");
        for (l, w) in lean.iter().zip(&whole) {
            assert_eq!((&l.id, l.state, &l.labels), (&w.id, w.state, &w.labels));
            assert_eq!(
                l.installed.as_ref(),
                stream.and_then(|s| w.installed.get(s)),
                "{} {stream:?}",
                l.id
            );
        }
    }
    let s2 = &store.site_labels(Some("pos")).unwrap()[1];
    assert_eq!(s2.state, SiteState::Active);
    assert_eq!(s2.labels, labels);
    assert_eq!(
        s2.installed.as_ref().and_then(|i| i.release_id.as_deref()),
        Some("pos-1")
    );
}

/// The convergence pass's two reads of the sites off a stream's version agree: the one
/// through indexes (run every few seconds) finds what the walk over every site (the full
/// sweep) finds, except a site that reports only other streams, which only the walk finds;
/// both leave out sites in an active rollout when asked, and decommissioned sites always.
fn the_indexed_read_of_sites_off_a_version_agrees_with_the_full_walk(backend: Backend) {
    let (_db, store) = setup(backend);
    let now = ts("2026-01-01T01:00:00Z");
    let at = ts("2026-01-01T00:00:00Z");
    let token = token("et-2", None, 6, at);
    store.create_enrollment_token("hash2", &token).unwrap();
    for site in ["s3", "s4", "s5", "s6", "s7"] {
        store
            .enroll(&Enrollment {
                token_hash: "hash2".into(),
                site_id: site.into(),
                box_id: DEFAULT_BOX.into(),
                role: String::new(),
                device_key: "00".repeat(32),
                agent_version: "1".into(),
                at,
            })
            .unwrap();
    }
    // s1 on version 2 (on it), s2 on 1 (off), s3 says nothing (off), s4 on 3 (off, above),
    // s5 reports only another stream (off: only the walk sees it), s6 off but
    // decommissioned, s7 off and in an active rollout.
    for (site, stream, version) in [
        ("s1", "pos", "2"),
        ("s2", "pos", "1"),
        ("s4", "pos", "3"),
        ("s5", "k3s", "1.31"),
        ("s6", "pos", "1"),
        ("s7", "pos", "1"),
    ] {
        store
            .apply_reports(
                site,
                &[installed(&format!("i-{site}"), stream, Some(version))],
                now,
            )
            .unwrap();
    }
    store
        .set_site_state("s6", SiteState::Decommissioned)
        .unwrap();
    let members = vec![RolloutSiteRecord {
        rollout_id: "r1".into(),
        site_id: "s7".into(),
        ..RolloutSiteRecord::default()
    }];
    store.create_rollout(&rollout("r1"), &members).unwrap();

    let ids = |v: Vec<OffVersionSite>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
    let walk_all = ids(store.sites_off_version("pos", "2", false, "", 100).unwrap());
    let walk_free = ids(store.sites_off_version("pos", "2", true, "", 100).unwrap());
    let indexed_all = ids(store.sites_off_version_indexed("pos", "2", false).unwrap());
    let indexed_free = ids(store.sites_off_version_indexed("pos", "2", true).unwrap());
    assert_eq!(walk_all, ["s2", "s3", "s4", "s5", "s7"]);
    assert_eq!(walk_free, ["s2", "s3", "s4", "s5"]);
    assert_eq!(indexed_all, ["s2", "s3", "s4", "s7"]);
    assert_eq!(indexed_free, ["s2", "s3", "s4"]);
    // The rollout a busy site is in is named; paging by id works.
    let busy = store
        .sites_off_version("pos", "2", false, "s5", 100)
        .unwrap();
    assert_eq!(busy.len(), 1);
    assert_eq!(busy[0].rollout_id.as_deref(), Some("r1"));
    assert_eq!(busy[0].version.as_deref(), Some("1"));
}

/// Two stores on one database (two coordinator replicas on PostgreSQL; two connections on
/// one SQLite file), called through `Db::run` from tokio's blocking pool by many tasks at
/// once: every report is applied exactly once whoever receives it, each site's assignment
/// sequences are unique and gapless, and a site joins one active rollout only.
fn concurrent_writers_keep_reports_once_sequences_unique_and_one_rollout(backend: Backend) {
    let (db, first) = setup(backend);
    let second = db.open();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let replicas = [Db::new(first), Db::new(second)];
        first_rollout(&replicas[0]).await;
        let now = ts("2026-01-01T01:00:00Z");
        let mut tasks = Vec::new();
        for i in 0..16 {
            let db = replicas[i % 2].clone();
            tasks.push(tokio::spawn(async move {
                // Every task sends the same ten events (an agent retrying on every
                // replica) and asks for an assignment.
                let events: Vec<Event> = (0..10)
                    .map(|n| health(&format!("h{n}"), "2026-01-01T00:10:00Z", n % 2 == 0))
                    .collect();
                let out = db
                    .run(move |s| s.apply_reports("s1", &events, now))
                    .await
                    .unwrap();
                let draft = r1_draft("s1");
                let key = fleetwave_shared::keys::generate();
                let a = db
                    .run(move |s| {
                        s.issue_assignments(&[draft], &|_, seq| {
                            Envelope::sign("a", seq.to_string().as_bytes(), &[&key])
                        })
                    })
                    .await
                    .unwrap();
                let joined = db
                    .run(move |s| {
                        let id = format!("r-{i}");
                        s.create_rollout(&rollout(&id), &[member(&id, "s2")])
                    })
                    .await
                    .is_ok();
                (out.accepted, a[0].sequence, joined)
            }));
        }
        let mut accepted = 0;
        let mut sequences = Vec::new();
        let mut joined = 0;
        for t in tasks {
            let (n, seq, ok) = t.await.unwrap();
            accepted += n;
            sequences.push(seq);
            joined += u32::from(ok);
        }
        sequences.sort();
        assert_eq!(accepted, 10, "each of the ten events applied once");
        assert_eq!(sequences, (1..=16).collect::<Vec<u64>>());
        assert_eq!(joined, 1, "s2 joined exactly one active rollout");
    });
}

/// A dashboard session stored through one handle (one coordinator) is read, used and
/// ended through another (a second coordinator on the same database); opening a session
/// forgets the expired ones.
fn dashboard_sessions_are_shared_by_every_coordinator_on_the_database(backend: Backend) {
    let (db, first) = setup(backend);
    let second = db.open();
    let at = ts("2026-01-01T00:00:00Z");
    let session = DashboardSession {
        token_hash: "t".repeat(64),
        csrf: "c".repeat(64),
        created_at: at,
        last_used: at,
    };
    let old = DashboardSession {
        created_at: ts("2025-12-31T00:00:00Z"),
        last_used: ts("2025-12-31T00:00:00Z"),
        ..session.clone()
    };
    first
        .open_dashboard_session(
            "old",
            &old,
            ts("2025-12-30T00:00:00Z"),
            ts("2025-12-30T00:00:00Z"),
        )
        .unwrap();
    let (created_before, used_before) = (ts("2025-12-31T16:00:00Z"), ts("2025-12-31T23:00:00Z"));
    first
        .open_dashboard_session("a", &session, created_before, used_before)
        .unwrap();
    assert_eq!(
        second.dashboard_session("old").unwrap(),
        None,
        "expired: forgotten"
    );
    assert_eq!(
        second.dashboard_session("a").unwrap(),
        Some(session.clone())
    );
    // Use is recorded forward only.
    let later = ts("2026-01-01T00:05:00Z");
    second.touch_dashboard_session("a", later).unwrap();
    first.touch_dashboard_session("a", at).unwrap();
    assert_eq!(
        first.dashboard_session("a").unwrap().unwrap().last_used,
        later
    );
    // The same id twice is refused (ids are random: this is a bug, not a retry).
    assert!(
        second
            .open_dashboard_session("a", &session, created_before, used_before)
            .is_err()
    );
    second.close_dashboard_session("a").unwrap();
    assert_eq!(first.dashboard_session("a").unwrap(), None);
    first.close_dashboard_session("a").unwrap();
}

fn box_enrollment(
    token_hash: &str,
    box_id: &str,
    role: &str,
    key: &str,
    at: Timestamp,
) -> Enrollment {
    Enrollment {
        token_hash: token_hash.into(),
        site_id: "store-9".into(),
        box_id: box_id.into(),
        role: role.into(),
        device_key: key.repeat(32),
        agent_version: "1".into(),
        at,
    }
}

/// A site takes new boxes with a token bound to it, refuses the same box again (the token
/// keeps its use) and a token not bound to it, and re-keys one box with a newer rekey
/// token without touching the others; one-box sites stay one row each.
fn a_site_takes_new_boxes_refuses_the_same_box_again_and_rekeys_one_box(backend: Backend) {
    let (db, store) = setup(backend);
    let t0 = ts("2026-01-01T00:10:00Z");
    let bound = token("et-9", Some("store-9"), 3, t0);
    store.create_enrollment_token("bound", &bound).unwrap();
    let later = t0 + SignedDuration::from_mins(1);
    store
        .enroll(&box_enrollment("bound", "srv", "server", "aa", later))
        .unwrap();
    let site = store
        .enroll(&box_enrollment("bound", "agt-1", "agent", "bb", later))
        .unwrap();
    assert_eq!(
        site.device_key,
        "aa".repeat(32),
        "the site's key stays its first box's"
    );

    let again = store.enroll(&box_enrollment("bound", "agt-1", "agent", "cc", later));
    assert!(
        matches!(again, Err(StoreError::BoxExists { ref site_id, ref box_id }) if site_id == "store-9" && box_id == "agt-1"),
        "{again:?}"
    );
    let uses_left = |id: &str| {
        store
            .list_enrollment_tokens()
            .unwrap()
            .into_iter()
            .find(|t| t.id == id)
            .unwrap()
            .uses_left
    };
    assert_eq!(
        uses_left("et-9"),
        1,
        "a refused enrollment keeps the token's use"
    );
    // A token bound to no site creates sites only: no box joins with it.
    let open = EnrollmentTokenRecord {
        id: "et-open".into(),
        site_id: None,
        ..bound.clone()
    };
    store.create_enrollment_token("open", &open).unwrap();
    let joined = store.enroll(&box_enrollment("open", "agt-2", "agent", "dd", later));
    assert!(
        matches!(joined, Err(StoreError::SiteExists(ref s)) if s == "store-9"),
        "{joined:?}"
    );

    let boxes = store.site_boxes("store-9").unwrap();
    let summary: Vec<_> = boxes
        .iter()
        .map(|b| {
            (
                b.box_id.as_str(),
                b.role.as_str(),
                b.first,
                b.device_key[..2].to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("srv", "server", true, "aa".to_string()),
            ("agt-1", "agent", false, "bb".to_string())
        ]
    );
    let main = store.site_boxes("s1").unwrap();
    assert_eq!(main.len(), 1);
    assert_eq!(
        (
            main[0].box_id.as_str(),
            main[0].role.as_str(),
            main[0].first
        ),
        (DEFAULT_BOX, "", true)
    );
    assert!(store.site_boxes("nowhere").unwrap().is_empty());
    let multi: Vec<_> = store
        .boxes_of_multi_box_sites()
        .unwrap()
        .into_iter()
        .map(|b| (b.site_id, b.box_id))
        .collect();
    assert_eq!(
        multi,
        [
            ("store-9".to_string(), "srv".to_string()),
            ("store-9".to_string(), "agt-1".to_string())
        ]
    );

    // A rekey token (bound, issued after the box enrolled) replaces that box's key only.
    let rekey = EnrollmentTokenRecord {
        id: "et-10".into(),
        uses_total: 1,
        uses_left: 1,
        created_at: later + SignedDuration::from_mins(1),
        ..bound
    };
    store.create_enrollment_token("rekey", &rekey).unwrap();
    let at = later + SignedDuration::from_mins(2);
    let site = store
        .enroll(&box_enrollment("rekey", "agt-1", "agent", "ee", at))
        .unwrap();
    assert_eq!(site.device_key, "aa".repeat(32));
    drop(store);
    let store = db.open();
    let boxes = store.site_boxes("store-9").unwrap();
    assert_eq!(boxes[1].device_key, "ee".repeat(32));
    assert_eq!(boxes[1].enrolled_at, at);
    assert_eq!(boxes[0].device_key, "aa".repeat(32));
}

async fn first_rollout(db: &Db) {
    db.run(|s| s.create_rollout(&rollout("r1"), &[member("r1", "s1")]))
        .await
        .unwrap();
}

/// A site of two boxes: each box's reports fold into its own facts (kept across
/// reopening), the site's row commits only when both boxes did, a failure names its box,
/// a box's lease is recorded; a box of a one-box site reports into the site as before.
fn each_box_reports_into_its_own_facts_and_the_site_row_is_made_from_them(backend: Backend) {
    let (db, store) = setup(backend);
    let t0 = ts("2026-01-01T00:10:00Z");
    let bound = token("et-9", Some("store-9"), 3, t0);
    store.create_enrollment_token("bound", &bound).unwrap();
    let later = t0 + SignedDuration::from_mins(1);
    for (b, role, key) in [("srv", "server", "aa"), ("agt-1", "agent", "bb")] {
        store
            .enroll(&box_enrollment("bound", b, role, key, later))
            .unwrap();
    }
    store
        .create_rollout(
            &rollout("r1"),
            &[member("r1", "store-9"), member("r1", "s1")],
        )
        .unwrap();
    let now = ts("2026-01-01T01:00:00Z");
    let from = |b: Option<&str>, site: &str, events: Vec<Event>| ReportInput {
        site_id: site.into(),
        box_id: b.map(Into::into),
        events,
        received_at: now,
    };
    let row = |store: &Arc<dyn Store>, site: &str| {
        store
            .rollout_sites("r1")
            .unwrap()
            .into_iter()
            .find(|r| r.site_id == site)
            .unwrap()
    };
    store
        .lease_box(
            "r1",
            "store-9",
            "srv",
            ts("2026-01-01T00:19:00Z"),
            ts("2026-01-01T02:00:00Z"),
            &|_| true,
        )
        .unwrap();
    store
        .apply_report_group(&[from(
            Some("srv"),
            "store-9",
            vec![
                phase("p1", "2026-01-01T00:20:00Z", Phase::Committed),
                health("h1", "2026-01-01T00:21:00Z", true),
            ],
        )])
        .unwrap();
    let facts = store.rollout_boxes("r1", "store-9").unwrap();
    assert_eq!(facts.len(), 1);
    assert_eq!(facts[0].0, "srv");
    assert_eq!(facts[0].1.committed_at, Some(ts("2026-01-01T00:20:00Z")));
    assert_eq!(facts[0].1.leased_at, Some(ts("2026-01-01T00:19:00Z")));
    assert_eq!(
        facts[0].1.lease_until, None,
        "the commit ended the box's lease"
    );
    assert!(facts[0].1.done());
    let site = row(&store, "store-9");
    assert_eq!(site.committed_at, None, "agt-1 has not committed");
    assert_eq!(site.last_report_at, None, "agt-1 was never heard from");

    let store = db.open();
    store
        .apply_report_group(&[from(
            Some("agt-1"),
            "store-9",
            vec![phase("p2", "2026-01-01T00:30:00Z", Phase::Committed)],
        )])
        .unwrap();
    let site = row(&store, "store-9");
    assert_eq!(site.committed_at, Some(ts("2026-01-01T00:30:00Z")));
    assert_eq!(site.last_report_at, Some(ts("2026-01-01T00:21:00Z")));
    // A later failure of one box fails the site, naming the box.
    store
        .apply_report_group(&[from(
            Some("agt-1"),
            "store-9",
            vec![Event {
                id: "p3".into(),
                at: ts("2026-01-01T00:40:00Z"),
                body: EventBody::Phase {
                    rollout_id: Some("r1".into()),
                    release_id: "pos-2".into(),
                    phase: Phase::Failed,
                    detail: Some("health check failed: pos down".into()),
                },
            }],
        )])
        .unwrap();
    let site = row(&store, "store-9");
    assert_eq!(
        site.failure.as_deref(),
        Some("box agt-1: health check failed: pos down")
    );
    assert_eq!(store.rollout_boxes("r1", "store-9").unwrap().len(), 2);
    // A one-box site's box naming itself reports into the site as before.
    store
        .apply_report_group(&[from(
            Some("main"),
            "s1",
            vec![phase("q1", "2026-01-01T00:20:00Z", Phase::Committed)],
        )])
        .unwrap();
    assert_eq!(
        row(&store, "s1").committed_at,
        Some(ts("2026-01-01T00:20:00Z"))
    );
    assert!(store.rollout_boxes("r1", "s1").unwrap().is_empty());
}

/// Many sites' session handshakes at once (a fleet reconnecting after an outage), from 16
/// threads on two store handles: every fresh nonce is taken, a replayed one is refused,
/// and a site's expired nonces are pruned. On PostgreSQL these once ran SERIALIZABLE and
/// conflicted on the index pages neighbouring sites share, failing after every retry.
fn many_sites_handshake_at_once_and_a_replayed_nonce_is_refused(backend: Backend) {
    let (db, first) = setup(backend);
    let second = db.open();
    let at = ts("2026-01-01T00:00:00Z");
    let token = token("et-many", None, 400, at);
    first.create_enrollment_token("many", &token).unwrap();
    let sites: Vec<String> = (0..400).map(|i| format!("m{i:04}")).collect();
    for site in &sites {
        first
            .enroll(&Enrollment {
                token_hash: "many".into(),
                site_id: site.clone(),
                box_id: DEFAULT_BOX.into(),
                role: String::new(),
                device_key: "00".repeat(32),
                agent_version: "1".into(),
                at,
            })
            .unwrap();
    }
    // An expired nonce of the first site, pruned by its next handshake.
    assert!(first.record_session_nonce("m0000", "old", at).unwrap());
    let until = Timestamp::now() + SignedDuration::from_hours(1);
    let stores = [first.clone(), second];
    std::thread::scope(|scope| {
        for t in 0..16 {
            let store = stores[t % 2].clone();
            let sites = &sites;
            scope.spawn(move || {
                for site in sites.iter().skip(t).step_by(16) {
                    let fresh = store
                        .record_session_nonce(site, &format!("n-{site}"), until)
                        .unwrap_or_else(|e| panic!("{site}'s handshake failed: {e}"));
                    assert!(fresh, "{site}'s first nonce was taken as a replay");
                }
            });
        }
    });
    for site in ["m0000", "m0199", "m0399"] {
        assert!(
            !first
                .record_session_nonce(site, &format!("n-{site}"), until)
                .unwrap(),
            "a replayed nonce of {site} was accepted"
        );
    }
    assert_eq!(
        db.strings("SELECT nonce FROM session_nonces WHERE site_id = 'm0000'"),
        vec!["n-m0000".to_string()]
    );
}

/// A retry of a site of several boxes starts its failed box afresh, as it does the site's
/// row: it is no longer failed, its lease and turn are gone, its health and last-report
/// times stay. A box that committed the release keeps its facts (its agent does not
/// install the release again). A late report of the previous attempt does not fail the
/// box again; a report of the new attempt folds into the fresh facts.
fn a_retry_starts_the_failed_box_of_a_site_afresh_and_keeps_the_committed_one(backend: Backend) {
    let (db, store) = setup(backend);
    let t0 = ts("2026-01-01T00:10:00Z");
    store
        .create_enrollment_token("bound", &token("et-9", Some("store-9"), 3, t0))
        .unwrap();
    let later = t0 + SignedDuration::from_mins(1);
    for (b, role, key) in [("srv", "server", "aa"), ("agt-1", "agent", "bb")] {
        store
            .enroll(&box_enrollment("bound", b, role, key, later))
            .unwrap();
    }
    store
        .create_rollout(&rollout("r1"), &[member("r1", "store-9")])
        .unwrap();
    let from = |b: &str, events: Vec<Event>| ReportInput {
        site_id: "store-9".into(),
        box_id: Some(b.into()),
        events,
        received_at: ts("2026-01-01T01:00:00Z"),
    };
    let until = ts("2026-01-01T02:00:00Z");
    store
        .lease_box(
            "r1",
            "store-9",
            "srv",
            ts("2026-01-01T00:19:00Z"),
            until,
            &|_| true,
        )
        .unwrap();
    store
        .apply_report_group(&[from(
            "srv",
            vec![
                phase("p1", "2026-01-01T00:20:00Z", Phase::Committed),
                health("h1", "2026-01-01T00:21:00Z", true),
            ],
        )])
        .unwrap();
    store
        .lease_box(
            "r1",
            "store-9",
            "agt-1",
            ts("2026-01-01T00:22:00Z"),
            until,
            &|_| true,
        )
        .unwrap();
    store
        .apply_report_group(&[from(
            "agt-1",
            vec![phase("p2", "2026-01-01T00:25:00Z", Phase::Failed)],
        )])
        .unwrap();
    let row = |store: &Arc<dyn Store>| {
        store
            .rollout_sites("r1")
            .unwrap()
            .into_iter()
            .find(|r| r.site_id == "store-9")
            .unwrap()
    };
    assert!(row(&store).failure.is_some(), "{:?}", row(&store));
    let now = ts("2026-01-01T00:30:00Z");
    let before = store.rollout_boxes("r1", "store-9").unwrap();
    assert_eq!(before[0].1.state(now), "failed", "agt-1: {:?}", before[0].1);
    assert_eq!(
        before[1].1.state(now),
        "succeeded",
        "srv: {:?}",
        before[1].1
    );

    assert_eq!(
        store
            .reset_rollout_sites_for_retry("r1", &["store-9".to_string()])
            .unwrap(),
        [2]
    );
    // Kept across reopening, as every fact.
    let store = db.open();
    let after = store.rollout_boxes("r1", "store-9").unwrap();
    let ids: Vec<&str> = after.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(ids, ["agt-1", "srv"]);
    let (agt1, srv) = (&after[0].1, &after[1].1);
    assert_eq!(agt1.state(now), "waiting", "{agt1:?}");
    assert!(!agt1.failed() && !agt1.upgraded(), "{agt1:?}");
    assert_eq!(
        (
            agt1.phase,
            agt1.committed_at,
            agt1.failed_at,
            agt1.failure.as_deref()
        ),
        (None, None, None, None)
    );
    assert_eq!(
        (agt1.first_leased_at, agt1.leased_at, agt1.lease_until),
        (None, None, None)
    );
    assert_eq!(agt1.last_report_at, before[0].1.last_report_at);
    assert!(agt1.last_report_at.is_some());
    // srv committed and stayed healthy: it keeps its facts, and is done.
    assert_eq!(srv, &before[1].1);
    assert!(srv.done(), "{srv:?}");
    let site = row(&store);
    assert_eq!(
        (site.failure.as_deref(), site.failed_at, site.committed_at),
        (None, None, None)
    );
    assert_eq!(site.attempts, 2);
    // The previous attempt's late self-rollback report is not counted again (it was
    // then), and the new attempt's first report folds into the fresh facts: agt-1 is
    // not failed.
    store
        .apply_report_group(&[from(
            "agt-1",
            vec![
                phase("p2b", "2026-01-01T00:26:00Z", Phase::RolledBack),
                phase("p3", "2026-01-01T00:40:00Z", Phase::Downloading),
            ],
        )])
        .unwrap();
    let site = row(&store);
    assert_eq!((site.failure.as_deref(), site.failed_at), (None, None));
    let agt1 = &store.rollout_boxes("r1", "store-9").unwrap()[0].1;
    assert!(!agt1.failed(), "{agt1:?}");
    assert_eq!(agt1.phase, Some(Phase::Downloading));
}

both_backends!(
    out_of_order_reports_never_move_facts_backwards_and_apply_once,
    one_active_rollout_per_site_and_counters_go_up,
    assignment_sequences_increase_per_site_and_survive_reopening,
    the_poll_cache_reads_site_keys_and_pages_of_newest_assignments,
    membership_reads_labels_and_one_streams_install_as_the_whole_records_have_them,
    a_report_group_commits_good_batches_around_a_failing_one,
    pruning_deletes_only_reports_past_their_period_and_a_resent_one_changes_nothing,
    the_commit_and_pruning_queries_use_their_indexes,
    a_rollout_status_and_the_decision_that_set_it_are_stored_together,
    a_terminal_phase_releases_the_lease,
    the_indexed_read_of_sites_off_a_version_agrees_with_the_full_walk,
    concurrent_writers_keep_reports_once_sequences_unique_and_one_rollout,
    dashboard_sessions_are_shared_by_every_coordinator_on_the_database,
    a_site_takes_new_boxes_refuses_the_same_box_again_and_rekeys_one_box,
    each_box_reports_into_its_own_facts_and_the_site_row_is_made_from_them,
    a_retry_starts_the_failed_box_of_a_site_afresh_and_keeps_the_committed_one,
    many_sites_handshake_at_once_and_a_replayed_nonce_is_refused,
);

/// The dashboard's read model answers the same on both backends: counts, versions, pages
/// of filtered sites (labels, version, state, a case-insensitive search), the grid, a
/// site's reports and its last assignment.
#[test]
fn the_dashboard_reads_the_same_on_both_backends() {
    use fleetwave_coordinator::store::read::SiteQuery;
    let answers = |backend: Backend| -> Vec<String> {
        let (_db, store) = setup(backend);
        let now = ts("2026-01-01T02:00:00Z");
        for (i, site) in ["s1", "s2"].iter().enumerate() {
            let region = if i == 0 { "EU-west" } else { "us_east" };
            store
                .set_site_labels(site, &[("region".to_string(), region.to_string())].into())
                .unwrap();
        }
        store
            .apply_reports(
                "s1",
                &[
                    installed("i1", "pos", Some("2")),
                    health("h1", "2026-01-01T00:40:00Z", true),
                ],
                now,
            )
            .unwrap();
        store
            .apply_reports(
                "s2",
                &[
                    installed("i2", "pos", Some("1")),
                    installed("i3", "k3s", Some("1.31")),
                    health("h2", "2026-01-01T00:41:00Z", false),
                ],
                now,
            )
            .unwrap();
        store
            .touch_sites(&[("s1".to_string(), ts("2026-01-01T01:50:00Z"))])
            .unwrap();
        store
            .create_rollout(&rollout("r1"), &[member("r1", "s1")])
            .unwrap();
        let draft = r1_draft("s1");
        let key = fleetwave_shared::keys::generate();
        store
            .issue_assignments(&[draft], &|_, seq| {
                Envelope::sign("a", seq.to_string().as_bytes(), &[&key])
            })
            .unwrap();
        let read = store.dashboard_read();
        let mut out = vec![
            format!(
                "{:?}",
                read.fleet_counts(now, ts("2026-01-01T01:00:00Z")).unwrap()
            ),
            format!("{:?}", read.version_pairs().unwrap()),
            format!("{:?}", read.versions().unwrap()),
            format!("{:?}", read.site_events("s2", None, 10).unwrap()),
            format!(
                "{:?}",
                read.site_events("s2", Some(ReportKind::Installed), 1)
                    .unwrap()
            ),
            format!(
                "{:?}",
                read.site_events_around("s2", ts("2026-01-01T00:30:00Z"), 1, 1)
                    .unwrap()
            ),
            format!("{:?}", read.last_assignment("s1").unwrap()),
            format!("{:?}", read.last_assignment("s2").unwrap()),
        ];
        let queries = [
            SiteQuery::default(),
            SiteQuery {
                search: Some("eu".into()),
                ..Default::default()
            },
            SiteQuery {
                search: Some("_".into()),
                ..Default::default()
            },
            SiteQuery {
                search: Some("S2".into()),
                ..Default::default()
            },
            SiteQuery {
                search: Some("2".into()),
                ..Default::default()
            },
            SiteQuery {
                labels: [("region".to_string(), "us_east".to_string())].into(),
                ..Default::default()
            },
            SiteQuery {
                version: Some("1".into()),
                ..Default::default()
            },
            SiteQuery {
                state: Some("active".into()),
                version: Some("2".into()),
                ..Default::default()
            },
            SiteQuery {
                state: Some("decommissioned".into()),
                ..Default::default()
            },
        ];
        for q in &queries {
            // Each backend explains its own three queries (count, page, grid).
            let plans = read.query_plans(q).unwrap();
            assert_eq!(plans.len(), 3, "{plans:?}");
            assert!(
                plans
                    .iter()
                    .all(|(sql, lines)| !sql.is_empty() && !lines.is_empty()),
                "{plans:?}"
            );
            let (rows, total) = read.site_page(q, 0, 10).unwrap();
            let rows: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!(
                        "{} {:?} {} {:?} {:?} {:?} {:?}",
                        r.id,
                        r.labels,
                        r.state,
                        r.last_seen,
                        r.versions,
                        r.healthy,
                        r.deferred_until
                    )
                })
                .collect();
            out.push(format!("{q:?}: {total} {rows:?}"));
            let (page, _) = read.site_page(q, 1, 1).unwrap();
            out.push(format!(
                "page 2: {:?}",
                page.iter().map(|r| &r.id).collect::<Vec<_>>()
            ));
            for stream in [None, Some("pos")] {
                let cells: Vec<String> = read
                    .grid(q, stream)
                    .unwrap()
                    .iter()
                    .map(|c| {
                        format!(
                            "{} {} {:?} {:?} {:?} {:?}",
                            c.id,
                            c.state,
                            c.healthy,
                            c.last_seen_ms,
                            c.deferred_until_ms,
                            c.version
                        )
                    })
                    .collect();
                out.push(format!("grid {stream:?}: {cells:?}"));
            }
        }
        out
    };
    let sqlite = answers(Backend::Sqlite);
    let postgres = answers(Backend::Postgres);
    for (s, p) in sqlite.iter().zip(&postgres) {
        assert_eq!(s, p);
    }
    assert_eq!(sqlite.len(), postgres.len());
    // The answers say something: the search found s1 by its label, ignoring case.
    assert!(
        sqlite
            .iter()
            .any(|a| a.contains("search: Some(\"eu\")") && a.contains(": 1 [\"s1 ")),
        "{sqlite:#?}"
    );
    // Ids are found by their start (through the id index), in any case: "S2" finds s2,
    // "2" (inside an id, in no label value) finds nothing.
    assert!(
        sqlite
            .iter()
            .any(|a| a.contains("search: Some(\"S2\")") && a.contains(": 1 [\"s2 ")),
        "{sqlite:#?}"
    );
    assert!(
        sqlite
            .iter()
            .any(|a| a.contains("search: Some(\"2\")") && a.ends_with(": 0 []")),
        "{sqlite:#?}"
    );
}

/// PostgreSQL stopping under the store is an error the caller can answer (503), never a
/// panic or a hang past the connect timeout; once it is back, the store works again
/// without a restart and nothing committed before is lost.
#[test]
fn the_postgres_store_fails_cleanly_while_the_database_is_down_and_recovers() {
    let db = TestDb::new(Backend::Postgres);
    let mut options = PgOptions::new(db.url());
    options.connect_timeout = std::time::Duration::from_secs(2);
    let store = PgStore::open(&options).unwrap();
    let hold = |reason: &str| SiteHold {
        site_id: "s1".into(),
        reason: reason.into(),
        held_by: "test".into(),
        held_at: ts("2026-01-01T00:00:00Z"),
    };
    store
        .create_enrollment_token("hash", &token("et-1", None, 1, ts("2026-01-01T00:00:00Z")))
        .unwrap();
    store
        .enroll(&Enrollment {
            token_hash: "hash".into(),
            site_id: "s1".into(),
            box_id: DEFAULT_BOX.into(),
            role: String::new(),
            device_key: "00".repeat(32),
            agent_version: "1".into(),
            at: ts("2026-01-01T00:00:00Z"),
        })
        .unwrap();
    db.server().stop();
    let err = store.ping().unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err}");
    assert!(store.set_site_hold("s1", Some(&hold("down"))).is_err());
    db.server().restart();
    // Connections broken by the stop fail once each, then the pool opens new ones.
    fleetwave_testkit::wait_blocking(
        fleetwave_testkit::patience(std::time::Duration::from_secs(60)),
        || store.set_site_hold("s1", Some(&hold("back"))),
    )
    .unwrap();
    assert_eq!(store.site_holds().unwrap()["s1"].reason, "back");
    assert!(
        store.site("s1").unwrap().is_some(),
        "committed before the stop"
    );
}

/// TLS to PostgreSQL is rustls, checked against `storage.ca_file`: a server that accepts
/// only TLS is reached with the right CA, refused without TLS, and refused when its
/// certificate does not chain to the roots in use.
#[test]
fn the_postgres_store_speaks_tls_checked_against_the_configured_ca() {
    use fleetwave_coordinator::init::{InitOptions, init};
    let dir = tempfile::tempdir().unwrap();
    // The development CA and a certificate for 127.0.0.1 that `init` makes.
    init(&InitOptions::dev_loopback(dir.path().join("setup"))).unwrap();
    let tls = dir.path().join("setup").join("tls");
    let read = |name: &str| std::fs::read_to_string(tls.join(name)).unwrap();
    let server =
        fleetwave_testkit::postgres::PgServer::start_tls(&read("server.pem"), &read("server.key"));
    let url = server.create_database();
    let options = |query: &str, ca: Option<std::path::PathBuf>| {
        let mut o = PgOptions::new(format!("{url}?{query}"));
        o.ca_file = ca;
        o.connect_timeout = std::time::Duration::from_secs(3);
        o
    };
    let store = PgStore::open(&options("sslmode=require", Some(tls.join("ca.pem")))).unwrap();
    store.ping().unwrap();
    assert!(store.roots().unwrap().is_empty());

    let err = PgStore::open(&options("sslmode=disable", Some(tls.join("ca.pem"))))
        .err()
        .expect("the server refuses a connection without TLS");
    assert!(err.to_string().contains("no pg_hba.conf entry"), "{err}");
    let err = PgStore::open(&options("sslmode=require", None))
        .err()
        .expect("the development CA is not among the system's roots");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    let bad_ca = dir.path().join("not-a-ca.pem");
    std::fs::write(&bad_ca, "no certificate here").unwrap();
    let err = PgStore::open(&options("sslmode=require", Some(bad_ca)))
        .err()
        .expect("a CA file without a certificate");
    assert!(
        err.to_string().contains("storage.ca_file")
            && err.to_string().contains("no PEM certificate"),
        "{err}"
    );
}

/// A filtered sites list stops counting one past its count limit ("more than"), on both
/// backends; the unfiltered list and a page near the end count exactly; a search finds
/// ids by their start.
#[test]
fn filtered_site_lists_count_up_to_their_limit_on_both_backends() {
    use fleetwave_coordinator::store::read::{SiteQuery, count_limit};
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let (_db, store) = setup(backend);
        let at = ts("2026-01-01T00:00:00Z");
        let sites: Vec<ImportedSite> = (0..1_100)
            .map(|i| ImportedSite {
                id: format!("site-{i:04}"),
                device_key: "ab".repeat(32),
                labels: [("region".to_string(), "eu".to_string())].into(),
                at,
            })
            .collect();
        let read = store.dashboard_read();
        // The sites the setup made, if any.
        let (_, before) = read.site_page(&SiteQuery::default(), 0, 1).unwrap();
        store.import_sites(&sites, &[]).unwrap();
        let eu = SiteQuery {
            labels: [("region".to_string(), "eu".to_string())].into(),
            ..Default::default()
        };
        let (rows, total) = read.site_page(&eu, 0, 10).unwrap();
        assert_eq!(total, count_limit(0, 10) + 1, "{backend:?}");
        assert_eq!(total, 1_011, "{backend:?}");
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids.first(), Some(&"site-0000"), "{backend:?}");
        assert_eq!(ids.len(), 10, "{backend:?}");
        // Near the end the limit is past the matches: exact.
        let (rows, total) = read.site_page(&eu, 1_095, 10).unwrap();
        assert_eq!((rows.len(), total), (5, 1_100), "{backend:?}");
        assert_eq!(rows[4].id, "site-1099", "{backend:?}");
        // No filter: every site, exactly.
        let (_, total) = read.site_page(&SiteQuery::default(), 0, 10).unwrap();
        assert_eq!(total, 1_100 + before, "{backend:?}");
        // A search: ids by their start, in any case.
        let search = SiteQuery {
            search: Some("SITE-00".into()),
            ..Default::default()
        };
        let (rows, total) = read.site_page(&search, 0, 10).unwrap();
        assert_eq!(total, 100, "{backend:?}");
        assert_eq!(rows[9].id, "site-0009", "{backend:?}");
        let inside = SiteQuery {
            search: Some("te-00".into()),
            ..Default::default()
        };
        assert_eq!(read.site_page(&inside, 0, 10).unwrap().1, 0, "{backend:?}");
    }
}

/// The overview's fleet counts equal a recount of every site's own row, on both backends,
/// after enrollment, an import, reports (installs, health), contact, a decommission and a
/// rollout with assignments.
#[test]
fn fleet_counts_equal_a_recount_of_every_site_on_both_backends() {
    use fleetwave_coordinator::store::read::{FleetCounts, SiteQuery};
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let (_db, store) = setup(backend);
        let at = ts("2026-01-01T00:00:00Z");
        let now = ts("2026-01-01T02:00:00Z");
        let stale_before = ts("2026-01-01T01:00:00Z");
        let sites: Vec<ImportedSite> = (0..30)
            .map(|i| ImportedSite {
                id: format!("imp-{i:02}"),
                device_key: "ab".repeat(32),
                labels: [("region".to_string(), ["eu", "us"][i % 2].to_string())].into(),
                at,
            })
            .collect();
        store.import_sites(&sites, &[]).unwrap();
        for i in 0..30 {
            let id = format!("imp-{i:02}");
            let mut events = Vec::new();
            if i % 3 != 0 {
                let v = if i % 2 == 0 { "2" } else { "1" };
                events.push(installed(&format!("i{i}"), "pos", Some(v)));
            }
            if i % 5 == 1 {
                events.push(installed(&format!("k{i}"), "k3s", Some("1.31")));
            }
            if i % 4 != 3 {
                events.push(health(&format!("h{i}"), "2026-01-01T00:40:00Z", i % 7 != 2));
            }
            if !events.is_empty() {
                store.apply_reports(&id, &events, now).unwrap();
            }
            if i % 2 == 0 {
                store
                    .touch_sites(&[(id.clone(), ts("2026-01-01T01:50:00Z"))])
                    .unwrap();
            }
        }
        for id in ["imp-04", "imp-05", "s2"] {
            store.set_site_state(id, SiteState::Decommissioned).unwrap();
        }
        store
            .create_rollout(
                &rollout("r1"),
                &[member("r1", "s1"), member("r1", "imp-01")],
            )
            .unwrap();
        let read = store.dashboard_read();
        let counts = read.fleet_counts(now, stale_before).unwrap();

        // The recount: every site's row, one by one.
        let (rows, total) = read.site_page(&SiteQuery::default(), 0, 1_000).unwrap();
        assert_eq!(rows.len() as u64, total, "{backend:?}");
        let mut want = FleetCounts::default();
        let mut versions: std::collections::BTreeMap<(String, String), u64> = Default::default();
        let mut stalest = Vec::new();
        for r in &rows {
            want.total += 1;
            if r.state != "active" {
                want.decommissioned += 1;
                continue;
            }
            want.active += 1;
            match r.healthy {
                Some(true) => want.healthy += 1,
                Some(false) => want.unhealthy += 1,
                None => want.health_unknown += 1,
            }
            if r.deferred_until.is_some_and(|d| d > now) {
                want.deferred += 1;
            }
            if r.last_seen.is_none_or(|s| s < stale_before) {
                want.stale += 1;
                stalest.push((r.last_seen, r.id.clone()));
            }
            if r.versions.is_empty() {
                want.no_version += 1;
            }
            for sv in &r.versions {
                let (s, v) = sv.split_once(' ').unwrap();
                *versions.entry((s.to_string(), v.to_string())).or_default() += 1;
            }
        }
        let mut versions: Vec<(String, String, u64)> =
            versions.into_iter().map(|((s, v), n)| (s, v, n)).collect();
        versions.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1))));
        want.versions = versions;
        stalest.sort();
        want.stalest = stalest
            .into_iter()
            .take(10)
            .map(|(s, id)| (id, s))
            .collect();
        assert_eq!(counts, want, "{backend:?}");
        // The fleet is varied enough for the comparison to say something.
        assert!(
            want.decommissioned == 3
                && want.unhealthy > 0
                && want.health_unknown > 0
                && want.stale > 0
                && want.stale < want.active
                && want.no_version > 0
                && want.versions.len() == 3,
            "{backend:?}: {want:?}"
        );
    }
}
