//! What lets every replica serve, at the store: a lease limit counted in the granting
//! transaction holds when many replicas grant at once, and a replica hears, through its
//! change feed, every change another replica commits to the rows it keeps in memory
//! (PostgreSQL notifications), but not its own assignments. Both on a real PostgreSQL
//! server; SQLite (one process) has neither a feed nor other writers.

mod backend;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend::{Backend, TestDb};

use fleetwave_coordinator::store::*;
use fleetwave_shared::Envelope;
use fleetwave_shared::protocol::operator::RolloutStatus;
use fleetwave_shared::protocol::{Event, EventBody, HealthSummary};
use jiff::{SignedDuration, Timestamp};

fn at() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

/// `sites` enrolled sites (`s00`, `s01`, ...), a published release and a running rollout
/// `r1` with every site in wave 0.
fn fleet(store: &dyn Store, sites: usize) -> Vec<String> {
    let at = at();
    let token = EnrollmentTokenRecord {
        id: "et-1".into(),
        labels: Default::default(),
        site_id: None,
        expires_at: at + SignedDuration::from_hours(1),
        uses_total: sites as u32 + 1,
        uses_left: sites as u32 + 1,
        revoked: false,
        created_at: at,
        created_by: "test".into(),
    };
    store.create_enrollment_token("hash", &token).unwrap();
    let ids: Vec<String> = (0..sites).map(|i| format!("s{i:02}")).collect();
    for id in &ids {
        enroll(store, id);
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
    let members: Vec<RolloutSiteRecord> = ids
        .iter()
        .map(|s| RolloutSiteRecord {
            rollout_id: "r1".into(),
            site_id: s.clone(),
            ..Default::default()
        })
        .collect();
    store.create_rollout(&rollout("r1"), &members).unwrap();
    ids
}

fn enroll(store: &dyn Store, site: &str) {
    store
        .enroll(&Enrollment {
            token_hash: "hash".into(),
            site_id: site.into(),
            box_id: DEFAULT_BOX.into(),
            role: String::new(),
            device_key: "00".repeat(32),
            agent_version: "1".into(),
            at: at(),
        })
        .unwrap();
}

fn rollout(id: &str) -> RolloutRecord {
    RolloutRecord {
        id: id.into(),
        release_id: "pos-2".into(),
        plan_source: String::new(),
        plan_format: "toml".into(),
        status: RolloutStatus::Running,
        waves: vec![WaveRecord::default()],
        created_at: at(),
        created_by: "test".into(),
        updated_at: at(),
        status_reason: None,
    }
}

fn lease(site: &str) -> LeaseRecord {
    let granted = at() + SignedDuration::from_mins(1);
    LeaseRecord {
        id: format!("lease-{site}"),
        site_id: site.into(),
        rollout_id: "r1".into(),
        wave: 0,
        granted_at: granted,
        expires_at: granted + SignedDuration::from_hours(1),
    }
}

fn issue(store: &dyn Store, site: &str) -> u64 {
    let at = at();
    let draft = AssignmentDraft {
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
    };
    let key = fleetwave_shared::keys::generate();
    store
        .issue_assignments(&[draft], &|_, seq| {
            Envelope::sign("a", seq.to_string().as_bytes(), &[&key])
        })
        .unwrap()[0]
        .sequence
}

fn healthy(id: &str, minute: i64) -> Event {
    Event {
        id: id.into(),
        at: at() + SignedDuration::from_mins(minute),
        body: EventBody::Health {
            healthy: true,
            summary: HealthSummary::default(),
        },
    }
}

const LIMIT: u32 = 3;

/// Twelve sites ask for the last places of a wave limited to three, through two store
/// handles (two replicas) from twelve threads at once: exactly three are granted, and
/// every refusal saw the wave full. On SQLite (one process, whose engine serializes its
/// grants) the same calls one after the other.
fn a_lease_limit_counted_in_the_grant_holds_across_replicas(backend: Backend) {
    let db = TestDb::new(backend);
    let first = db.open();
    let sites = fleet(first.as_ref(), 12);
    let allow = |c: &LeaseCounts| c.wave_active < LIMIT;
    let outcomes: Vec<Result<(), LeaseCounts>> = match backend {
        Backend::Sqlite => sites
            .iter()
            .map(|s| first.grant_lease_counted(&lease(s), None, &allow).unwrap())
            .collect(),
        Backend::Postgres => {
            let second = db.open();
            let stores: [Arc<dyn Store>; 2] = [first.clone(), second];
            let barrier = Arc::new(std::sync::Barrier::new(sites.len()));
            let threads: Vec<_> = sites
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let (store, barrier, s) = (stores[i % 2].clone(), barrier.clone(), s.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        store
                            .grant_lease_counted(&lease(&s), None, &|c: &LeaseCounts| {
                                c.wave_active < LIMIT
                            })
                            .unwrap()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        }
    };
    let granted = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(granted, LIMIT as usize, "{outcomes:?}");
    for refused in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        assert_eq!(refused.wave_active, LIMIT, "{outcomes:?}");
    }
    let active = first.active_leases("r1", lease("s00").granted_at).unwrap();
    assert_eq!(active.len(), LIMIT as usize, "{active:?}");
    // A site already holding its lease renews it: its own lease is not counted.
    let holder = active[0].site_id.clone();
    assert!(
        first
            .grant_lease_counted(&lease(&holder), None, &allow)
            .unwrap()
            .is_ok()
    );
    // The compartment is counted in the same transaction: no site has the label, so
    // every member is in the "" compartment, with the three active leases.
    let counted = std::sync::Mutex::new(None);
    let outcome = first
        .grant_lease_counted(&lease("s11"), Some(("region", "")), &|c: &LeaseCounts| {
            *counted.lock().unwrap() = Some(*c);
            false
        })
        .unwrap();
    let c = counted.lock().unwrap().expect("allow was asked");
    assert_eq!(outcome, Err(c));
    let s11_holds = active.iter().any(|l| l.site_id == "s11");
    let others = if s11_holds { LIMIT - 1 } else { LIMIT };
    assert_eq!(c.compartment, Some((12, others)), "{c:?}");
}

both_backends!(a_lease_limit_counted_in_the_grant_holds_across_replicas);

/// Waits until `feed` delivered every change of `want`; returns all it delivered.
fn hear(feed: &mut dyn ChangeFeed, want: &BTreeSet<Change>) -> BTreeSet<Change> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = BTreeSet::new();
    while !want.is_subset(&got) {
        assert!(
            Instant::now() < deadline,
            "missing {:?}; heard {got:?}",
            want.difference(&got).collect::<Vec<_>>()
        );
        got.extend(feed.next(Duration::from_millis(500), 1000).unwrap());
    }
    got
}

#[test]
fn sqlite_has_no_other_writers_and_no_change_feed() {
    let db = TestDb::new(Backend::Sqlite);
    let store = db.open();
    assert!(!store.shared_by_replicas());
    assert!(store.change_feed().unwrap().is_none());
}

/// Replica A listens; replica B enrolls a site, issues an assignment, takes a report and
/// changes a rollout; A hears each. A's own assignment is not announced back to A, but
/// its own report is (a row A read for B's change may be older than A's own commit).
#[test]
fn a_replica_hears_what_another_commits_but_not_its_own_assignments() {
    let db = TestDb::new(Backend::Postgres);
    let a = db.open();
    let b = db.open();
    assert!(a.shared_by_replicas());
    fleet(a.as_ref(), 2);
    let mut feed = a
        .change_feed()
        .unwrap()
        .expect("PostgreSQL has a change feed");

    // Nothing committed, nothing heard; a rolled back change is never announced.
    assert_eq!(feed.next(Duration::from_millis(200), 10).unwrap(), vec![]);

    enroll(b.as_ref(), "s-new");
    issue(b.as_ref(), "s00");
    let mut stopped = rollout("r1");
    stopped.status = RolloutStatus::Paused;
    stopped.updated_at = at() + SignedDuration::from_mins(2);
    b.update_rollout(&stopped, &[]).unwrap();
    let health = healthy("h1", 3);
    b.apply_reports("s01", &[health], at() + SignedDuration::from_mins(3))
        .unwrap();
    let want: BTreeSet<Change> = [
        Change::Site("s-new".into()),
        Change::Assignment("s00".into()),
        Change::Rollout("r1".into()),
        Change::Member {
            rollout_id: "r1".into(),
            site_id: "s01".into(),
        },
    ]
    .into();
    hear(feed.as_mut(), &want);

    // A's own assignment is not heard; its own report is.
    issue(a.as_ref(), "s01");
    let health = healthy("h2", 4);
    a.apply_reports("s00", &[health], at() + SignedDuration::from_mins(4))
        .unwrap();
    let want: BTreeSet<Change> = [Change::Member {
        rollout_id: "r1".into(),
        site_id: "s00".into(),
    }]
    .into();
    let got = hear(feed.as_mut(), &want);
    assert!(
        !got.contains(&Change::Assignment("s01".into())),
        "A heard its own assignment: {got:?}"
    );
}

/// 120 sites enroll at once with one shared token of 120 uses, from 120 threads
/// through two store handles (two replicas): every one is enrolled, the token's uses are
/// all taken exactly, and the 121st enrollment is refused as used up. Under
/// SERIALIZABLE, each commit failed the other enrollments in flight on the token's row
/// until some ran out of attempts.
fn every_site_enrolls_at_once_with_one_shared_token(backend: Backend) {
    let db = TestDb::new(backend);
    let stores: [Arc<dyn Store>; 2] = [db.open(), db.open()];
    let n = 120;
    let token = EnrollmentTokenRecord {
        id: "et-shared".into(),
        labels: Default::default(),
        site_id: None,
        expires_at: at() + SignedDuration::from_hours(1),
        uses_total: n,
        uses_left: n,
        revoked: false,
        created_at: at(),
        created_by: "test".into(),
    };
    stores[0].create_enrollment_token("hash", &token).unwrap();
    let barrier = Arc::new(std::sync::Barrier::new(n as usize));
    let threads: Vec<_> = (0..n as usize)
        .map(|i| {
            let (store, barrier) = (stores[i % 2].clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                store.enroll(&Enrollment {
                    token_hash: "hash".into(),
                    site_id: format!("e{i:02}"),
                    box_id: DEFAULT_BOX.into(),
                    role: String::new(),
                    device_key: "00".repeat(32),
                    agent_version: "1".into(),
                    at: at(),
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().expect("every enrollment succeeds");
    }
    let left = stores[1].enrollment_token_by_hash("hash").unwrap().unwrap();
    assert_eq!(left.uses_left, 0);
    let late = stores[1].enroll(&Enrollment {
        token_hash: "hash".into(),
        site_id: "late".into(),
        box_id: DEFAULT_BOX.into(),
        role: String::new(),
        device_key: "00".repeat(32),
        agent_version: "1".into(),
        at: at(),
    });
    assert!(
        matches!(&late, Err(StoreError::Conflict(m)) if m.contains("used up")),
        "{late:?}"
    );
}

mod enrollment {
    use super::*;
    both_backends!(every_site_enrolls_at_once_with_one_shared_token);
}

/// Two boxes of one site ask two replicas for their lease at the same moment, each
/// allowed only while no other box of the site holds one (one box at a time): exactly one
/// is leased, and the other's refusal saw that box's lease. Twenty rounds, from two
/// threads on two store handles.
fn two_boxes_of_one_site_never_both_take_its_one_place(backend: Backend) {
    let db = TestDb::new(backend);
    let stores: [Arc<dyn Store>; 2] = [db.open(), db.open()];
    let s = stores[0].as_ref();
    fleet(s, 1);
    let bound = EnrollmentTokenRecord {
        id: "et-box".into(),
        labels: Default::default(),
        site_id: Some("store-9".into()),
        expires_at: at() + SignedDuration::from_hours(1),
        uses_total: 3,
        uses_left: 3,
        revoked: false,
        created_at: at(),
        created_by: "test".into(),
    };
    s.create_enrollment_token("bound", &bound).unwrap();
    for (b, role) in [("srv", "server"), ("agt-1", "agent"), ("agt-2", "agent")] {
        s.enroll(&Enrollment {
            token_hash: "bound".into(),
            site_id: "store-9".into(),
            box_id: b.into(),
            role: role.into(),
            device_key: "00".repeat(32),
            agent_version: "1".into(),
            at: at(),
        })
        .unwrap();
    }
    for round in 0..20 {
        let rollout_id = format!("rb{round}");
        s.create_rollout(
            &rollout(&rollout_id),
            &[RolloutSiteRecord {
                rollout_id: rollout_id.clone(),
                site_id: "store-9".into(),
                ..Default::default()
            }],
        )
        .unwrap();
        let now = at() + SignedDuration::from_mins(1);
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let threads: Vec<_> = ["agt-1", "agt-2"]
            .into_iter()
            .enumerate()
            .map(|(i, me)| {
                let (store, barrier, rid) =
                    (stores[i].clone(), barrier.clone(), rollout_id.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    store
                        .lease_box(
                            &rid,
                            "store-9",
                            me,
                            now,
                            now + SignedDuration::from_hours(1),
                            &|facts: &[(String, boxes::BoxFacts)]| {
                                !facts
                                    .iter()
                                    .any(|(b, f)| b != me && f.lease_until.is_some_and(|u| u > now))
                            },
                        )
                        .unwrap()
                })
            })
            .collect();
        let granted: Vec<bool> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(
            granted.iter().filter(|g| **g).count(),
            1,
            "round {round}: {granted:?}"
        );
        let leased: Vec<String> = s
            .rollout_boxes(&rollout_id, "store-9")
            .unwrap()
            .into_iter()
            .filter(|(_, f)| f.lease_until.is_some())
            .map(|(b, _)| b)
            .collect();
        assert_eq!(leased.len(), 1, "round {round}: {leased:?}");
        // The rollout ends so that the site can join the next round's.
        let mut done = rollout(&rollout_id);
        done.status = RolloutStatus::Completed;
        s.update_rollout(&done, &[]).unwrap();
    }
}

mod boxes_at_once {
    use super::*;
    both_backends!(two_boxes_of_one_site_never_both_take_its_one_place);
}
