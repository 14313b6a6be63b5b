//! How fast each store backend folds report groups (the hot report path): a real SQLite
//! file, and a real PostgreSQL on loopback (the test server: no fsync). A measurement, not
//! an assertion: ignored by default, run with
//!
//!     cargo test -p fleetwave-coordinator --test report_bench -- --ignored --nocapture

mod backend;

use std::time::Instant;

use backend::{Backend, TestDb};

use fleetwave_coordinator::store::*;
use fleetwave_shared::protocol::operator::RolloutStatus;
use fleetwave_shared::protocol::{Event, EventBody, HealthSummary, Phase};
use jiff::{SignedDuration, Timestamp};

#[test]
#[ignore]
fn report_groups() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        report_groups_on(backend);
    }
}

fn report_groups_on(backend: Backend) {
    const SITES: usize = 400;
    const ROUNDS: usize = 10;
    let db = TestDb::new(backend);
    let store = db.open();
    let at: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    store
        .create_enrollment_token(
            "hash",
            &EnrollmentTokenRecord {
                id: "et".into(),
                labels: Default::default(),
                site_id: None,
                expires_at: at + SignedDuration::from_hours(1),
                uses_total: SITES as u32,
                uses_left: SITES as u32,
                revoked: false,
                created_at: at,
                created_by: "bench".into(),
            },
        )
        .unwrap();
    let sites: Vec<String> = (0..SITES).map(|i| format!("site-{i:04}")).collect();
    for s in &sites {
        store
            .enroll(&Enrollment {
                token_hash: "hash".into(),
                site_id: s.clone(),
                box_id: DEFAULT_BOX.into(),
                role: String::new(),
                device_key: "00".repeat(32),
                agent_version: "1".into(),
                at,
            })
            .unwrap();
    }
    let env = fleetwave_shared::Envelope::sign("x", b"{}", &[&fleetwave_shared::keys::generate()]);
    store
        .publish_release(&ReleaseRecord {
            id: "rel-2".into(),
            digest: env.digest(),
            name: "pos".into(),
            version: "2".into(),
            kind: "app".into(),
            counter: 2,
            envelope: env,
            published_at: at,
            published_by: "bench".into(),
        })
        .unwrap();
    let rollout = RolloutRecord {
        id: "r1".into(),
        release_id: "rel-2".into(),
        plan_source: String::new(),
        plan_format: "toml".into(),
        status: RolloutStatus::Running,
        waves: vec![WaveRecord::default()],
        created_at: at,
        created_by: "bench".into(),
        updated_at: at,
        status_reason: None,
    };
    let members: Vec<RolloutSiteRecord> = sites
        .iter()
        .map(|s| RolloutSiteRecord {
            rollout_id: "r1".into(),
            site_id: s.clone(),
            ..Default::default()
        })
        .collect();
    store.create_rollout(&rollout, &members).unwrap();
    let phases = [
        Phase::Accepted,
        Phase::Leased,
        Phase::Downloading,
        Phase::Installing,
        Phase::Verifying,
        Phase::Committed,
    ];
    let started = Instant::now();
    let mut events = 0;
    for round in 0..ROUNDS {
        let t = at + SignedDuration::from_secs(60 * round as i64);
        let batches: Vec<ReportInput> = sites
            .iter()
            .map(|s| ReportInput {
                site_id: s.clone(),
                box_id: None,
                events: vec![
                    Event {
                        id: format!("p{round}"),
                        at: t,
                        body: EventBody::Phase {
                            rollout_id: Some("r1".into()),
                            release_id: "rel-2".into(),
                            phase: phases[round % phases.len()],
                            detail: None,
                        },
                    },
                    Event {
                        id: format!("h{round}"),
                        at: t,
                        body: EventBody::Health {
                            healthy: round % 3 != 0,
                            summary: HealthSummary::default(),
                        },
                    },
                ],
                received_at: t + SignedDuration::from_secs(1),
            })
            .collect();
        events += batches.len() * 2;
        for r in store.apply_report_group(&batches).unwrap() {
            r.unwrap();
        }
    }
    let took = started.elapsed();
    println!(
        "{backend:?}: {events} events in groups of {SITES} batches: {:.0} ms, {:.1} µs per event",
        took.as_secs_f64() * 1000.0,
        took.as_secs_f64() * 1e6 / events as f64
    );
}
