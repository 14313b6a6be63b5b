//! Golden-signal minutes travel with the reports to a real coordinator over TLS on
//! 127.0.0.1: in batches no larger than the coordinator's session answer allows, stored
//! once per (site, stream, signal, minute) however often they are sent, shown on the
//! site's API document with what went wrong in the minute, and a full queue drops its
//! oldest minutes first and says so.

mod common;

use common::{Coordinator, Site};
use fleetwave_agent::config::Config;
use fleetwave_agent::daemon::{Context, deliver_reports, deliver_signals};
use fleetwave_shared::protocol::signals::{MAX_SIGNAL_MINUTES_PER_REPORT, SignalMinute};
use jiff::{SignedDuration, Timestamp};

fn minute(start: Timestamp, m: i64, error_ratio: f64) -> SignalMinute {
    SignalMinute {
        stream: "demo".into(),
        release_id: Some("demo-1.0.0".into()),
        minute: start + SignedDuration::from_mins(m),
        values: [
            ("error_ratio".to_string(), error_ratio),
            ("latency_p95_seconds".to_string(), 0.120),
        ]
        .into_iter()
        .collect(),
        resets: vec![],
        scrapes: 4,
        failed_scrapes: 0,
    }
}

/// The start of `t`'s minute (minutes from the past: the coordinator refuses minutes
/// from the future).
fn whole_minute(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second() - t.as_second().rem_euclid(60)).unwrap()
}

fn stored_values(coordinator: &Coordinator, site: &str) -> i64 {
    let db =
        rusqlite::Connection::open(coordinator.dir.path().join("data/coordinator.db")).unwrap();
    db.query_row(
        "SELECT COUNT(*) FROM signal_values WHERE site_id = ?1",
        [site],
        |r| r.get(0),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_minutes_are_delivered_in_bounded_batches_and_stored_once() {
    let coordinator = Coordinator::start().await;
    let site = Site::new("signals-1", &coordinator);
    site.enroll(&coordinator).await;
    let ctx = Context::open(Config::load(&site.config).unwrap()).unwrap();
    let session = ctx.session().unwrap().expect("a coordinator URL");
    let now = whole_minute(Timestamp::now());
    let start = now - SignedDuration::from_hours(3);

    // 150 minutes: more than two batches' worth.
    let total = 150;
    assert!(total > 2 * MAX_SIGNAL_MINUTES_PER_REPORT as i64);
    for m in 0..total {
        ctx.store
            .signals_push(&minute(start, m, 0.01), 1440, now)
            .unwrap();
    }
    // The last minute had trouble: a failed scrape and a counter reset.
    let mut last = minute(start, total - 1, 0.02);
    last.failed_scrapes = 1;
    last.resets = vec!["error_ratio".into()];
    ctx.store.signals_push(&last, 1440, now).unwrap();

    assert_eq!(deliver_reports(&ctx, &session).await, 0, "no events queued");
    assert_eq!(deliver_signals(&ctx, &session).await, total as usize);
    assert_eq!(ctx.store.signals_len().unwrap(), 0);
    assert_eq!(stored_values(&coordinator, "signals-1"), total * 2);

    // Sent again (an answer lost on the way): stored once, the value replaced.
    for m in 0..10 {
        ctx.store
            .signals_push(&minute(start, m, 0.5), 1440, now)
            .unwrap();
    }
    assert_eq!(deliver_signals(&ctx, &session).await, 10);
    assert_eq!(stored_values(&coordinator, "signals-1"), total * 2);
    let db =
        rusqlite::Connection::open(coordinator.dir.path().join("data/coordinator.db")).unwrap();
    let replaced: f64 = db
        .query_row(
            "SELECT value FROM signal_values WHERE site_id = 'signals-1' AND signal = 'error_ratio' ORDER BY minute LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(replaced, 0.5);

    // The site document has the latest minute of the stream and what went wrong in it.
    let info = coordinator.site("signals-1").await;
    assert_eq!(info.signals.len(), 1, "{info:?}");
    let latest = &info.signals[0];
    assert_eq!(latest.minute, last.minute);
    assert_eq!(latest.values["error_ratio"], 0.02);
    let problem = latest.problem.as_deref().unwrap_or_default();
    assert!(
        problem.contains("1 of 4 scrape(s) failed") && problem.contains("error_ratio"),
        "{problem}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_box_keeps_the_newest_minutes_and_status_says_what_was_dropped() {
    let coordinator = Coordinator::start().await;
    let site = Site::new("signals-2", &coordinator);
    site.enroll(&coordinator).await;
    let ctx = Context::open(Config::load(&site.config).unwrap()).unwrap();
    let now = whole_minute(Timestamp::now());
    let start = now - SignedDuration::from_hours(36);
    // A day and a half offline: 2,160 minutes into a queue of 1,440.
    for m in 0..2160 {
        ctx.store
            .signals_push(&minute(start, m, 0.01), 1440, now)
            .unwrap();
    }
    assert_eq!(ctx.store.signals_len().unwrap(), 1440);
    let status = site.status().await;
    assert_eq!(status["signal_queue"]["queued_minutes"], 1440);
    assert_eq!(status["signal_queue"]["dropped"]["minutes"], 720);
    let (code, text, _) = site.cli(&["status"]).await;
    assert_eq!(code, 0);
    assert!(
        text.contains("DROPPED 720 oldest minute(s)"),
        "status says what was dropped:\n{text}"
    );

    // Back online: the newest 1,440 minutes arrive, the oldest kept first.
    let session = ctx.session().unwrap().expect("a coordinator URL");
    assert_eq!(deliver_signals(&ctx, &session).await, 1440);
    let db =
        rusqlite::Connection::open(coordinator.dir.path().join("data/coordinator.db")).unwrap();
    let first: i64 = db
        .query_row(
            "SELECT MIN(minute) FROM signal_values WHERE site_id = 'signals-2'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        first,
        (start + SignedDuration::from_mins(720)).as_millisecond()
    );
}
