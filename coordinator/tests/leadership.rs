//! The wave controller's leadership among replicas on one real PostgreSQL server: one
//! replica leads; when it stops renewing (a test hook standing for a paused process),
//! another takes over after the lease expired, with the next fencing token; the old
//! leader's writes are then refused in the database, not landed. Each replica here is its
//! own store (its own connection pool), as each coordinator process has.
//!
//! SQLite is one process: its leadership is always held (`sqlite_always_leads`). A
//! replica taking over fills its poll cache with what the old leader issued.

mod backend;

use std::sync::Arc;
use std::time::Duration;

use backend::{Backend, TestDb};
use fleetwave_coordinator::clock::Clock;
use fleetwave_coordinator::engine::{Engine, Settings};
use fleetwave_coordinator::leadership::{Leadership, Role};
use fleetwave_coordinator::metrics::Metrics;
use fleetwave_coordinator::store::fence::{Fence, fenced};
use fleetwave_coordinator::store::{
    AssignmentDraft, AuditRecord, Claim, Db, Enrollment, EnrollmentTokenRecord, ReleaseRecord,
    RolloutRecord, RolloutSiteRecord, Store, StoreError, StoreResult, WaveRecord,
};
use fleetwave_shared::Envelope;
use fleetwave_shared::protocol::operator::RolloutStatus;
use fleetwave_testkit::eventually;
use jiff::SignedDuration;
use tokio::sync::{mpsc, watch};

const LEASE: Duration = Duration::from_secs(1);

/// One replica's store: its own pool on the test's database (opened off the async
/// threads: the PostgreSQL client blocks).
fn open(t: &TestDb) -> Db {
    Db::new(tokio::task::block_in_place(|| t.open()))
}

fn entry(action: &str) -> AuditRecord {
    AuditRecord {
        id: 0,
        at: jiff::Timestamp::now(),
        actor: "wave-controller".into(),
        action: action.into(),
        target: "leadership-test".into(),
        detail: String::new(),
        remote: String::new(),
    }
}

/// A write as the controller makes it: through [`Db::run`], in whatever fence the
/// calling task is in.
async fn write(db: &Db, action: &str) -> StoreResult<()> {
    let e = entry(action);
    db.run(move |s| s.audit(&e)).await
}

async fn actions(db: &Db) -> Vec<String> {
    let mut got: Vec<String> = db
        .run(|s| s.audit_of("leadership-test", 100))
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    got.sort();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_after_expiry_bumps_the_token_and_fences_the_old_leaders_writes() {
    let t = TestDb::new(Backend::Postgres);
    let (db_a, db_b) = (open(&t), open(&t));
    let a = Leadership::new(db_a.clone(), "replica-a".into(), LEASE);
    let b = Leadership::new(db_b.clone(), "replica-b".into(), LEASE);

    assert_eq!(a.claim().await.unwrap(), Claim::Leader { token: 1 });
    match b.claim().await.unwrap() {
        Claim::Follower {
            holder,
            token,
            expires_in,
        } => {
            assert_eq!((holder.as_str(), token), ("replica-a", 1));
            assert!(expires_in <= LEASE, "{expires_in:?}");
        }
        other => panic!("replica-b claimed a held leadership: {other:?}"),
    }
    // A renewal keeps the token.
    assert_eq!(a.claim().await.unwrap(), Claim::Leader { token: 1 });
    fenced(Fence { token: 1 }, write(&db_a, "a-while-leading"))
        .await
        .unwrap();

    // replica-a stops renewing; replica-b takes over once the lease expired.
    let taken = eventually("replica-b takes over the expired lease", || async {
        match b.claim().await.unwrap() {
            Claim::Leader { token } => Some(token),
            Claim::Follower { .. } => None,
        }
    })
    .await;
    assert_eq!(taken, 2, "a takeover increments the token");

    // replica-a, waking up, still writes with token 1: refused, and nothing landed.
    let err = fenced(Fence { token: 1 }, write(&db_a, "a-after-takeover"))
        .await
        .unwrap_err();
    let StoreError::Fenced(why) = &err else {
        panic!("expected a fencing refusal, got {err:?}");
    };
    assert!(
        why.contains("token 1") && why.contains("replica-b") && why.contains("token 2"),
        "{why}"
    );
    fenced(Fence { token: 2 }, write(&db_b, "b-while-leading"))
        .await
        .unwrap();
    // Writes outside the controller (operators, agents) are not fenced on any replica.
    write(&db_a, "operator-on-a").await.unwrap();
    assert_eq!(
        actions(&db_b).await,
        ["a-while-leading", "b-while-leading", "operator-on-a"]
    );
    // And replica-a's next claim finds replica-b leading.
    match a.claim().await.unwrap() {
        Claim::Follower { holder, token, .. } => {
            assert_eq!((holder.as_str(), token), ("replica-b", 2))
        }
        other => panic!("replica-a claimed a held leadership: {other:?}"),
    }
}

/// One replica: its leadership running [`Leadership::lead`] with a stand-in controller
/// that writes when poked and says how the write went.
struct Replica {
    leadership: Arc<Leadership>,
    poke: mpsc::UnboundedSender<&'static str>,
    written: mpsc::UnboundedReceiver<StoreResult<()>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Replica {
    fn start(db: Db, name: &str, shutdown: watch::Receiver<bool>) -> Replica {
        let leadership = Arc::new(Leadership::new(db.clone(), name.into(), LEASE));
        let (poke, pokes) = mpsc::unbounded_channel::<&'static str>();
        let (wrote, written) = mpsc::unbounded_channel();
        let pokes = Arc::new(tokio::sync::Mutex::new(pokes));
        let l = leadership.clone();
        let task = tokio::spawn(async move {
            l.lead(
                shutdown,
                |_| {},
                |_fence| {
                    let (db, pokes, wrote) = (db.clone(), pokes.clone(), wrote.clone());
                    async move {
                        while let Some(action) = pokes.lock().await.recv().await {
                            let _ = wrote.send(write(&db, action).await);
                        }
                    }
                },
            )
            .await
        });
        Replica {
            leadership,
            poke,
            written,
            _task: task,
        }
    }

    fn token(&self) -> Option<i64> {
        match self.leadership.role() {
            Role::Leader { token } => Some(token),
            _ => None,
        }
    }

    /// Has its controller write `action` and returns how the write went.
    async fn controller_writes(&mut self, action: &'static str) -> StoreResult<()> {
        self.poke.send(action).unwrap();
        self.written.recv().await.expect("the controller answers")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_another_takes_over_when_it_pauses() {
    let t = TestDb::new(Backend::Postgres);
    let (stop, shutdown) = watch::channel(false);
    let mut replicas = [
        Replica::start(open(&t), "replica-a", shutdown.clone()),
        Replica::start(open(&t), "replica-b", shutdown.clone()),
    ];
    let (first, token) = eventually("one replica leads, the other follows", || {
        let roles: Vec<Role> = replicas.iter().map(|r| r.leadership.role()).collect();
        async move {
            match roles.as_slice() {
                [Role::Leader { token }, Role::Follower { .. }] => Some((0, *token)),
                [Role::Follower { .. }, Role::Leader { token }] => Some((1, *token)),
                _ => None,
            }
        }
    })
    .await;
    let second = 1 - first;
    let leader_name = replicas[first].leadership.holder().to_string();
    assert_eq!(
        replicas[second].leadership.role(),
        Role::Follower {
            holder: leader_name.clone()
        }
    );
    replicas[first]
        .controller_writes("leader-before-pause")
        .await
        .unwrap();

    // The leader pauses: no more renewals, but its controller believes it still leads.
    replicas[first].leadership.pause_renewal(true);
    let new_token = eventually("the other replica takes over", || {
        let token = replicas[second].token();
        async move { token }
    })
    .await;
    assert_eq!(new_token, token + 1);
    assert_eq!(
        replicas[first].token(),
        Some(token),
        "the paused one does not know"
    );
    let err = replicas[first]
        .controller_writes("old-leader-after-takeover")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced(_)), "{err:?}");
    replicas[second]
        .controller_writes("new-leader")
        .await
        .unwrap();

    // Resumed, the old leader finds out at its next renewal and stands by.
    replicas[first].leadership.pause_renewal(false);
    let second_name = replicas[second].leadership.holder().to_string();
    eventually("the old leader stands by", || {
        let role = replicas[first].leadership.role();
        let want = second_name.clone();
        async move { matches!(role, Role::Follower { holder } if holder == want).then_some(()) }
    })
    .await;
    assert_eq!(replicas[second].token(), Some(new_token));
    let db = open(&t);
    assert_eq!(actions(&db).await, ["leader-before-pause", "new-leader"]);
    stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_always_leads() {
    let t = TestDb::new(Backend::Sqlite);
    let db = open(&t);
    let l = Leadership::new(db.clone(), "only".into(), LEASE);
    assert_eq!(l.claim().await.unwrap(), Claim::Leader { token: 0 });
    let other = Leadership::new(db.clone(), "other".into(), LEASE);
    assert_eq!(other.claim().await.unwrap(), Claim::Leader { token: 0 });
    fenced(Fence { token: 0 }, write(&db, "written"))
        .await
        .unwrap();
    assert_eq!(actions(&db).await, ["written"]);
}

/// A fleet of one site (`s1`), a release and a running rollout, written by one replica.
fn seed(store: &dyn Store) {
    let at = jiff::Timestamp::from_second(1_767_225_600).unwrap();
    let token = EnrollmentTokenRecord {
        id: "et-1".into(),
        labels: Default::default(),
        site_id: None,
        expires_at: at + SignedDuration::from_hours(1),
        uses_total: 1,
        uses_left: 1,
        revoked: false,
        created_at: at,
        created_by: "test".into(),
    };
    store.create_enrollment_token("hash", &token).unwrap();
    store
        .enroll(&Enrollment {
            token_hash: "hash".into(),
            site_id: "s1".into(),
            box_id: fleetwave_coordinator::store::DEFAULT_BOX.into(),
            role: String::new(),
            device_key: "00".repeat(32),
            agent_version: "1".into(),
            at,
        })
        .unwrap();
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
    let rollout = RolloutRecord {
        id: "r1".into(),
        release_id: "pos-2".into(),
        plan_source: String::new(),
        plan_format: "toml".into(),
        status: RolloutStatus::Running,
        waves: vec![WaveRecord::default()],
        created_at: at,
        created_by: "test".into(),
        updated_at: at,
        status_reason: None,
    };
    let member = RolloutSiteRecord {
        rollout_id: "r1".into(),
        site_id: "s1".into(),
        ..Default::default()
    };
    store.create_rollout(&rollout, &[member]).unwrap();
}

/// The old leader issues s1's assignment (as opening a wave does); returns its sequence.
fn issue(store: &dyn Store) -> u64 {
    let at = jiff::Timestamp::from_second(1_767_225_600).unwrap();
    let draft = AssignmentDraft {
        site_id: "s1".into(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_taking_over_serves_what_the_old_leader_issued_and_wakes_only_changed_sites() {
    let t = TestDb::new(Backend::Postgres);
    let old = tokio::task::block_in_place(|| t.open());
    tokio::task::block_in_place(|| seed(old.as_ref()));
    let engine = Engine::new(
        open(&t),
        fleetwave_shared::keys::generate(),
        Arc::new(Metrics::new()),
        Clock::system(),
        Settings::default(),
    );
    engine.load_poll_cache().await.unwrap();
    let served = |engine: &Engine| {
        engine
            .sites
            .get("s1")
            .and_then(|s| s.view().assignment)
            .map(|a| a.record.sequence)
    };
    assert_eq!(served(&engine), None);

    // While it stood by, the leader issued s1's assignment; on taking over it serves it.
    let first = tokio::task::block_in_place(|| issue(old.as_ref()));
    engine.load_poll_cache().await.unwrap();
    assert_eq!(served(&engine), Some(first));

    // A reload with nothing new wakes no long poll; a newer assignment wakes s1's.
    let mut woken = engine.sites.get("s1").unwrap().changed.subscribe();
    woken.mark_unchanged();
    engine.load_poll_cache().await.unwrap();
    assert!(!woken.has_changed().unwrap(), "nothing new, nothing woken");
    let second = tokio::task::block_in_place(|| issue(old.as_ref()));
    engine.load_poll_cache().await.unwrap();
    assert!(
        woken.has_changed().unwrap(),
        "the new assignment wakes s1's long polls"
    );
    assert_eq!(served(&engine), Some(second));
    assert!(second > first);
}
