//! Report delivery against a real coordinator over TLS on 127.0.0.1: a batch the
//! coordinator refuses for its content (413 over its body limit, 400 for a malformed
//! event) is split until the refused events stand alone; those move to the agent's dead
//! letters (kept, shown by `status`) and every other event is delivered.

mod common;

use common::{Coordinator, Site};
use fleetwave_agent::config::Config;
use fleetwave_agent::daemon::{Context, deliver_reports};
use fleetwave_shared::protocol::{EventBody, HealthSummary, Phase};

fn phase(p: Phase, detail: Option<String>) -> EventBody {
    EventBody::Phase {
        rollout_id: Some("r-1".into()),
        release_id: "demo-1.0.0".into(),
        phase: p,
        detail,
    }
}

fn heartbeat(n: u64) -> EventBody {
    EventBody::Health {
        healthy: true,
        summary: HealthSummary {
            passed: 3,
            failed: 0,
            failing: vec![],
            disk_free_bytes: Some(1_000_000_000 + n),
            mem_available_bytes: Some(500_000_000),
            load1: Some(0.25),
            samples: 1,
        },
    }
}

/// Reports of `site` the coordinator stored, per kind.
fn stored_reports(coordinator: &Coordinator, site: &str) -> Vec<(String, i64)> {
    let db =
        rusqlite::Connection::open(coordinator.dir.path().join("data/coordinator.db")).unwrap();
    let mut stmt = db
        .prepare(
            "SELECT kind, COUNT(*) FROM reports WHERE site_id = ?1 GROUP BY kind ORDER BY kind",
        )
        .unwrap();
    stmt.query_map([site], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// One event over the coordinator's body limit (413 on its own), one the coordinator
/// refuses as malformed (400: its id is longer than 64 characters), in the middle of 40
/// heartbeats that together are over the limit too (413 for the whole batch): the two
/// refused events become dead letters, the 42 others are delivered, and the outbox is
/// empty. Before, the first 413 stopped delivery and the batch was resent unchanged for
/// ever, holding back everything queued behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_becomes_a_dead_letter_and_the_rest_is_delivered() {
    let coordinator = Coordinator::start_tuned(|c| c.limits.max_body_bytes = 4096).await;
    let site = Site::new("reports-1", &coordinator);
    site.enroll(&coordinator).await;
    let ctx = Context::open(Config::load(&site.config).unwrap()).unwrap();
    let session = ctx.session().unwrap().expect("a coordinator URL");

    let first = ctx.report(phase(Phase::Accepted, None)).unwrap();
    let too_big = ctx
        .report(phase(Phase::Downloading, Some("x".repeat(6000))))
        .unwrap();
    for n in 0..20 {
        ctx.report(heartbeat(n)).unwrap();
    }
    // A refusal report whose id the coordinator does not accept (more than 64 characters).
    let malformed_id = "m".repeat(65);
    let queued = ctx
        .report(EventBody::Refusal {
            code: "expired".into(),
            message: "the assignment expired".into(),
            rollout_id: Some("r-1".into()),
            sequence: Some(3),
        })
        .unwrap();
    let agent_db = rusqlite::Connection::open(site.dir.path().join("state/agent.db")).unwrap();
    let changed = agent_db
        .execute(
            "UPDATE outbox SET id = ?1, event = json_set(event, '$.id', ?1) WHERE id = ?2",
            [&malformed_id, &queued],
        )
        .unwrap();
    assert_eq!(changed, 1);
    for n in 20..40 {
        ctx.report(heartbeat(n)).unwrap();
    }
    let last = ctx.report(phase(Phase::Leased, None)).unwrap();

    let delivered = deliver_reports(&ctx, &session).await;
    assert_eq!(delivered, 42, "every event but the two refused ones");
    assert_eq!(
        ctx.store.outbox_len().unwrap(),
        0,
        "nothing is left blocked"
    );

    let dead = ctx.store.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    let by_id = |id: &str| dead.iter().find(|d| d.id == id).unwrap().clone();
    let big = by_id(&too_big);
    assert_eq!(
        (
            big.kind.as_str(),
            big.refused.status,
            big.refused.code.as_str()
        ),
        ("phase", 413, "payload_too_large"),
        "{big:?}"
    );
    assert_eq!(
        big.event["detail"].as_str().map(str::len),
        Some(6000),
        "kept unchanged"
    );
    let bad = by_id(&malformed_id);
    assert_eq!(
        (
            bad.kind.as_str(),
            bad.refused.status,
            bad.refused.code.as_str()
        ),
        ("refusal", 400, "bad_request"),
        "{bad:?}"
    );
    assert!(bad.refused.message.contains("id"), "{bad:?}");

    // The coordinator has the 42 others, each once.
    assert_eq!(
        stored_reports(&coordinator, "reports-1"),
        vec![("health".to_string(), 40), ("phase".to_string(), 2)]
    );
    let db =
        rusqlite::Connection::open(coordinator.dir.path().join("data/coordinator.db")).unwrap();
    for id in [&first, &last] {
        let n: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM reports WHERE site_id = 'reports-1' AND event_id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1, "{id}");
    }

    // Nothing is sent again; `status` shows the dead letters.
    assert_eq!(deliver_reports(&ctx, &session).await, 0);
    let status = site.status().await;
    assert_eq!(status["queued_reports"]["total"], 0, "{status}");
    assert_eq!(status["dead_letters"]["total"], 2, "{status}");
    assert_eq!(status["dead_letters"]["by_kind"]["phase"], 1, "{status}");
    assert_eq!(status["dead_letters"]["by_kind"]["refusal"], 1, "{status}");
    let (code, text, err) = site.cli(&["status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("dead letters  2 report(s) the coordinator refused"),
        "{text}"
    );
    assert!(text.contains("413 payload_too_large"), "{text}");
}

/// Failures that say nothing about the events (the coordinator is down) leave every
/// event queued: nothing becomes a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_coordinator_makes_no_dead_letters() {
    let mut coordinator = Coordinator::start().await;
    let site = Site::new("reports-2", &coordinator);
    site.enroll(&coordinator).await;
    let ctx = Context::open(Config::load(&site.config).unwrap()).unwrap();
    let session = ctx.session().unwrap().expect("a coordinator URL");
    for n in 0..3 {
        ctx.report(heartbeat(n)).unwrap();
    }
    coordinator.stop().await;
    assert_eq!(deliver_reports(&ctx, &session).await, 0);
    assert_eq!(ctx.store.outbox_len().unwrap(), 3);
    assert!(ctx.store.dead_letters(10).unwrap().is_empty());
    coordinator.restart().await;
    assert_eq!(deliver_reports(&ctx, &session).await, 3);
    assert_eq!(ctx.store.outbox_len().unwrap(), 0);
}
