//! Controller failover time on a real PostgreSQL server: how long from the moment the
//! leader's lease expires (it stopped renewing, as a dead or paused process does) to the
//! first completed pass of the wave controller on the replica that takes over. It prints
//! figures and makes no assertion about them: ignored by default, run with
//!
//!     cargo test -p fleetwave-coordinator --test failover_bench -- --ignored --nocapture
//!
//! `FLEETWAVE_LEASE_SECS` sets `[storage] leader_lease_secs` (default 10, the default of
//! the configuration); `FLEETWAVE_ROUNDS` the takeovers measured (default 3).

mod backend;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backend::{Backend, TestDb};
use fleetwave_coordinator::clock::Clock;
use fleetwave_coordinator::engine::{Engine, Settings};
use fleetwave_coordinator::leadership::{Leadership, Role};
use fleetwave_coordinator::metrics::Metrics;
use fleetwave_coordinator::store::Db;
use fleetwave_testkit::eventually;
use jiff::Timestamp;
use tokio::sync::watch;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        })
        .unwrap_or(default)
}

struct Replica {
    leadership: Arc<Leadership>,
    /// When its controller completed its first pass of its current tenure.
    first_pass: Arc<Mutex<Option<Timestamp>>>,
}

fn start(t: &TestDb, name: &str, lease: Duration, shutdown: watch::Receiver<bool>) -> Replica {
    let db = Db::new(tokio::task::block_in_place(|| t.open()));
    let engine = Arc::new(Engine::new(
        db.clone(),
        fleetwave_shared::keys::generate(),
        Arc::new(Metrics::new()),
        Clock::system(),
        Settings::default(),
    ));
    let leadership = Arc::new(Leadership::new(db, name.into(), lease));
    let first_pass: Arc<Mutex<Option<Timestamp>>> = Arc::default();
    let (l, f) = (leadership.clone(), first_pass.clone());
    tokio::spawn(async move {
        let stop = shutdown.clone();
        l.lead(
            shutdown,
            |_| {},
            |_fence| {
                let (engine, f, stop) = (engine.clone(), f.clone(), stop.clone());
                async move {
                    *f.lock().unwrap() = None;
                    engine.facts.clear();
                    engine.load_poll_cache().await.unwrap();
                    engine
                        .run_controller(Duration::from_secs(1), stop, |_| {
                            f.lock().unwrap().get_or_insert_with(Timestamp::now);
                        })
                        .await
                }
            },
        )
        .await
    });
    Replica {
        leadership,
        first_pass,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn controller_failover_time() {
    let lease = Duration::from_secs(env("FLEETWAVE_LEASE_SECS", 10));
    let rounds = env("FLEETWAVE_ROUNDS", 3);
    let t = TestDb::new(Backend::Postgres);
    let (_stop, shutdown) = watch::channel(false);
    let replicas = [
        start(&t, "replica-a", lease, shutdown.clone()),
        start(&t, "replica-b", lease, shutdown.clone()),
    ];
    println!(
        "lease {}s, renewed every {:.1}s; {rounds} takeovers",
        lease.as_secs(),
        replicas[0].leadership.renew_every().as_secs_f64()
    );
    println!("round | expiry -> new leader's first pass | stop of renewals -> first pass");
    for round in 1..=rounds {
        let leader = eventually("one replica leads", || {
            let i = replicas
                .iter()
                .position(|r| matches!(r.leadership.role(), Role::Leader { .. }));
            async move { i }
        })
        .await;
        let next = 1 - leader;
        let token = match replicas[leader].leadership.role() {
            Role::Leader { token } => token,
            other => panic!("{other:?}"),
        };
        // Let any renewal in flight land, then stop renewing ("dies").
        tokio::time::sleep(replicas[leader].leadership.renew_every()).await;
        replicas[leader].leadership.pause_renewal(true);
        let stopped = Timestamp::now();
        let expiry_ms: i64 = tokio::task::block_in_place(|| {
            t.strings(
                "SELECT (extract(epoch FROM expires_at) * 1000)::bigint::text FROM leadership",
            )
        })[0]
            .parse()
            .unwrap();
        let expiry = Timestamp::from_millisecond(expiry_ms).unwrap();
        let first = eventually("the other replica takes over and completes a pass", || {
            let role = replicas[next].leadership.role();
            let pass = *replicas[next].first_pass.lock().unwrap();
            async move {
                match role {
                    Role::Leader { token: t } if t > token => pass,
                    _ => None,
                }
            }
        })
        .await;
        println!(
            "{round:>5} | {:>8.0} ms | {:>8.0} ms",
            (first - expiry).total(jiff::Unit::Millisecond).unwrap(),
            (first - stopped).total(jiff::Unit::Millisecond).unwrap(),
        );
        // The old leader resumes and stands by: the next round fails the other way.
        replicas[leader].leadership.pause_renewal(false);
        eventually("the old leader stands by", || {
            let role = replicas[leader].leadership.role();
            async move { matches!(role, Role::Follower { .. }).then_some(()) }
        })
        .await;
    }
}
