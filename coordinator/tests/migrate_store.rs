//! `fleetwave-coordinator migrate-store` over real processes: a coordinator's state in a
//! real SQLite file moves into a real PostgreSQL database, every table verified by count
//! and checksum; the PostgreSQL store then reads the same facts and goes on where the
//! SQLite one stopped (sequences, ids); a second run into the filled database is refused.

mod backend;

use std::process::Command;

use backend::{Backend, TestDb};
use fleetwave_coordinator::store::*;
use fleetwave_shared::Envelope;
use fleetwave_shared::protocol::operator::RolloutStatus;
use fleetwave_shared::protocol::signals::SignalMinute;
use fleetwave_shared::protocol::{Event, EventBody, HealthSummary, Phase};
use fleetwave_testkit::postgres::PgServer;
use jiff::{SignedDuration, Timestamp};

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// A coordinator's state with a row in most tables.
fn fill(store: &dyn Store) {
    let at = ts("2026-01-01T00:00:00Z");
    let key = fleetwave_shared::keys::generate();
    store
        .add_root(1, &Envelope::sign("root", b"{}", &[&key]), at)
        .unwrap();
    let token = EnrollmentTokenRecord {
        id: "et-1".into(),
        labels: [("region".to_string(), "eu".to_string())].into(),
        site_id: None,
        expires_at: at + SignedDuration::from_hours(1),
        uses_total: 3,
        uses_left: 3,
        revoked: false,
        created_at: at,
        created_by: "test".into(),
    };
    store.create_enrollment_token("hash", &token).unwrap();
    for site in ["s1", "s2", "s3"] {
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
    // A site of two boxes: its second box is a row of site_boxes.
    let bound = EnrollmentTokenRecord {
        id: "et-2".into(),
        site_id: Some("s4".into()),
        labels: Default::default(),
        uses_total: 2,
        uses_left: 2,
        ..token.clone()
    };
    store.create_enrollment_token("hash-s4", &bound).unwrap();
    for (box_id, role) in [("srv", "server"), ("agt-1", "agent")] {
        store
            .enroll(&Enrollment {
                token_hash: "hash-s4".into(),
                site_id: "s4".into(),
                box_id: box_id.into(),
                role: role.into(),
                device_key: "11".repeat(32),
                agent_version: "1".into(),
                at,
            })
            .unwrap();
    }
    let env = Envelope::sign("release", b"{}", &[&key]);
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
    store
        .create_webhook(
            &WebhookRecord {
                id: "wh-1".into(),
                url: "https://hooks.example/x".into(),
                secret: "whsec_x".into(),
                kinds: vec!["rollout.completed".into(), "site.failed".into()],
                format: "json".into(),
                allow_insecure_http: false,
                description: "ops".into(),
                created_at: at,
                created_by: "test".into(),
            },
            &audit("webhook.create", "wh-1"),
        )
        .unwrap();
    let rollout = RolloutRecord {
        id: "r1".into(),
        release_id: "pos-2".into(),
        plan_source: "waves = []".into(),
        plan_format: "toml".into(),
        status: RolloutStatus::Running,
        waves: vec![WaveRecord::default()],
        created_at: at,
        created_by: "test".into(),
        updated_at: at,
        status_reason: None,
    };
    let members: Vec<RolloutSiteRecord> = ["s1", "s2"]
        .iter()
        .map(|s| RolloutSiteRecord {
            rollout_id: "r1".into(),
            site_id: s.to_string(),
            ..RolloutSiteRecord::default()
        })
        .collect();
    store.create_rollout(&rollout, &members).unwrap();
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
    let sign = |d: &AssignmentDraft, seq: u64| {
        Envelope::sign("a", format!("{}#{seq}", d.site_id).as_bytes(), &[&key])
    };
    store
        .issue_assignments(&[draft.clone(), draft], &sign)
        .unwrap();
    let now = ts("2026-01-01T01:00:00Z");
    let events = vec![
        Event {
            id: "e1".into(),
            at: ts("2026-01-01T00:10:00Z"),
            body: EventBody::Phase {
                rollout_id: Some("r1".into()),
                release_id: "pos-2".into(),
                phase: Phase::Failed,
                detail: Some("disk full".into()),
            },
        },
        Event {
            id: "e2".into(),
            at: ts("2026-01-01T00:11:00Z"),
            body: EventBody::Health {
                healthy: false,
                summary: HealthSummary::default(),
            },
        },
        Event {
            id: "e3".into(),
            at: ts("2026-01-01T00:12:00Z"),
            body: EventBody::Installed {
                name: "pos".into(),
                release_id: Some("pos-1".into()),
                version: Some("1".into()),
                previous_release_id: None,
            },
        },
    ];
    store.apply_reports("s1", &events, now).unwrap();
    store
        .add_decisions(&[DecisionRecord {
            id: 0,
            rollout_id: "r1".into(),
            at: now,
            kind: "wave_opened".into(),
            wave: Some(0),
            reason: "start".into(),
        }])
        .unwrap();
    store
        .put_signals(
            "s1",
            &[SignalMinute {
                stream: "pos".into(),
                release_id: Some("pos-1".into()),
                minute: ts("2026-01-01T00:10:00Z"),
                values: [("error_ratio".to_string(), 0.125)].into(),
                resets: vec![],
                scrapes: 6,
                failed_scrapes: 0,
            }],
            now,
        )
        .unwrap();
    store
        .create_freeze(&FreezeRecord {
            id: "fz-1".into(),
            start: at,
            end: at + SignedDuration::from_hours(48),
            reason: "holidays".into(),
            created_by: "test".into(),
            created_at: at,
            ended_at: None,
            ended_by: None,
        })
        .unwrap();
    store
        .put_channel(
            &ChannelRecord {
                name: "stable".into(),
                stream: "pos".into(),
                selector: Default::default(),
                release_id: Some("pos-2".into()),
                max_concurrent: 5,
                failure_budget: 2,
                window: Some(fleetwave_shared::window::Window {
                    days: vec![],
                    start: "22:00".into(),
                    end: "04:00".into(),
                }),
                set_by: "test".into(),
                set_at: at,
                set_reason: "first".into(),
                created_at: at,
                created_by: "test".into(),
            },
            &audit("channel.set", "stable"),
        )
        .unwrap();
    store
        .grant_leases(&[LeaseRecord {
            id: "l-1".into(),
            site_id: "s2".into(),
            rollout_id: "r1".into(),
            wave: 0,
            granted_at: at,
            expires_at: at + SignedDuration::from_hours(1),
        }])
        .unwrap()[0]
        .as_ref()
        .unwrap();
    store
        .record_session_nonce("s1", "nonce-1", at + SignedDuration::from_hours(1000000))
        .unwrap();
    store
        .add_artifact(&ArtifactRecord {
            sha256: "ab".repeat(32),
            length: 4096,
            uploaded_at: at,
            uploaded_by: "test".into(),
        })
        .unwrap();
    store
        .create_operator_token(
            "op-hash",
            &OperatorTokenRecord {
                id: "ot-1".into(),
                name: "ci".into(),
                role: fleetwave_shared::protocol::operator::OperatorRole::Operator,
                created_at: at,
                created_by: "test".into(),
                revoked: false,
            },
        )
        .unwrap();
    store
        .set_site_hold(
            "s3",
            Some(&SiteHold {
                site_id: "s3".into(),
                reason: "broken till".into(),
                held_by: "test".into(),
                held_at: at,
            }),
        )
        .unwrap();
}

fn audit(action: &str, target: &str) -> AuditRecord {
    AuditRecord {
        id: 0,
        at: ts("2026-01-01T00:00:00Z"),
        actor: "test".into(),
        action: action.into(),
        target: target.into(),
        detail: String::new(),
        remote: "127.0.0.1".into(),
    }
}

fn migrate(from: &std::path::Path, to: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fleetwave-coordinator"))
        .args(["migrate-store", "--from"])
        .arg(from)
        .args(["--to", to])
        .output()
        .unwrap()
}

#[test]
fn a_fleet_moves_from_sqlite_to_postgres_verified_and_goes_on_there() {
    let sqlite = TestDb::new(Backend::Sqlite);
    {
        let store = sqlite.open();
        fill(store.as_ref());
    }
    let server = PgServer::start();
    let url = server.create_database();

    let out = migrate(&sqlite.sqlite_path(), &url);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    let rows = |table: &str| -> u64 {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(table))
            .unwrap_or_else(|| panic!("no line for {table} in\n{stdout}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert_eq!(rows("sites"), 4);
    assert_eq!(rows("site_boxes"), 1, "s4's second box");
    assert_eq!(rows("reports"), 3);
    assert_eq!(rows("assignments"), 2);
    assert_eq!(rows("site_labels"), 3, "derived from sites by PostgreSQL");
    assert_eq!(rows("site_versions"), 1);
    assert_eq!(
        rows("webhook_deliveries"),
        1,
        "the site.failed event's delivery"
    );
    assert!(stdout.contains("28 tables verified"), "{stdout}");

    let before = sqlite.open();
    let after = PgStore::open(&PgOptions::new(url.clone())).unwrap();
    assert_eq!(after.site("s1").unwrap(), before.site("s1").unwrap());
    assert_eq!(
        after.site_boxes("s4").unwrap(),
        before.site_boxes("s4").unwrap()
    );
    assert_eq!(after.site_boxes("s4").unwrap().len(), 2);
    assert_eq!(
        after.rollout_sites("r1").unwrap(),
        before.rollout_sites("r1").unwrap()
    );
    assert_eq!(
        after.decisions("r1").unwrap(),
        before.decisions("r1").unwrap()
    );
    assert_eq!(
        after.list_audit(None, 10).unwrap(),
        before.list_audit(None, 10).unwrap()
    );
    assert_eq!(
        after.current_assignments().unwrap(),
        before.current_assignments().unwrap()
    );
    assert_eq!(
        after.latest_signals("s1").unwrap(),
        before.latest_signals("s1").unwrap()
    );
    assert_eq!(after.site_holds().unwrap(), before.site_holds().unwrap());
    assert_eq!(after.channels().unwrap(), before.channels().unwrap());
    assert_eq!(
        after.list_operator_tokens().unwrap(),
        before.list_operator_tokens().unwrap()
    );
    assert_eq!(
        after.webhook_deliveries("wh-1", 10).unwrap(),
        before.webhook_deliveries("wh-1", 10).unwrap()
    );
    // It goes on where SQLite stopped: the next sequence and the next decision id.
    let at = ts("2026-01-02T00:00:00Z");
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
    let a = after
        .issue_assignments(&[draft], &|_, seq| {
            Envelope::sign("a", seq.to_string().as_bytes(), &[&key])
        })
        .unwrap();
    assert_eq!(a[0].sequence, 3);
    after.audit(&audit("site.label", "s2")).unwrap();
    let ids: Vec<i64> = after
        .list_audit(None, 10)
        .unwrap()
        .iter()
        .map(|a| a.id)
        .collect();
    let max_before = before.list_audit(None, 10).unwrap()[0].id;
    assert_eq!(ids[0], max_before + 1, "audit ids continue: {ids:?}");

    // A second run finds the database filled and changes nothing.
    let again = migrate(&sqlite.sqlite_path(), &url);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success());
    assert!(stderr.contains("is not empty"), "{stderr}");
}

#[test]
fn migrate_store_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let out = migrate(
        &dir.path().join("missing.db"),
        "postgres://fw@127.0.0.1:1/x",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("missing.db") && stderr.contains("no such file"),
        "{stderr}"
    );

    let sqlite = TestDb::new(Backend::Sqlite);
    drop(sqlite.open());
    let out = migrate(
        &sqlite.sqlite_path(),
        "postgres://fw@127.0.0.1:5432/x?sslmode=sometimes",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("not a PostgreSQL URL"), "{stderr}");
}
