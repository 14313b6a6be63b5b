//! Golden signals on the coordinator: the agent API's bounds (minutes per batch, signals
//! per minute, whole minutes), storage keyed by (site, stream, signal, minute) on both
//! backends (a real SQLite file, a real PostgreSQL database: idempotent replays, streams
//! per site bounded, retention), and the site's latest minute on its API document and its
//! dashboard page.

mod backend;
mod common;

use std::sync::Arc;

use backend::{Backend, TestDb};

use common::{Agent, Harness, WebClient};
use fleetwave_coordinator::store::postgres as postgres_store;
use fleetwave_coordinator::store::*;
use fleetwave_shared::protocol::signals::{MAX_SIGNAL_MINUTES_PER_REPORT, SignalMinute};
use jiff::{SignedDuration, Timestamp};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn minute(stream: &str, start: Timestamp, m: i64, v: f64) -> SignalMinute {
    SignalMinute {
        stream: stream.into(),
        release_id: Some("pos-2".into()),
        minute: start + SignedDuration::from_mins(m),
        values: [
            ("error_ratio".to_string(), v),
            ("p95".to_string(), v * 10.0),
        ]
        .into_iter()
        .collect(),
        resets: vec![],
        scrapes: 4,
        failed_scrapes: 0,
    }
}

fn store_with_site(backend: Backend, site: &str) -> (TestDb, Arc<dyn Store>) {
    let db = TestDb::new(backend);
    let store = db.open();
    let at = ts("2026-01-01T00:00:00Z");
    store
        .create_enrollment_token(
            "hash",
            &EnrollmentTokenRecord {
                id: "et-1".into(),
                labels: Default::default(),
                site_id: None,
                expires_at: at + SignedDuration::from_hours(1),
                uses_total: 1,
                uses_left: 1,
                revoked: false,
                created_at: at,
                created_by: "test".into(),
            },
        )
        .unwrap();
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
    (db, store)
}

fn minutes_are_stored_once_per_site_stream_signal_and_minute_and_pruned_by_age(backend: Backend) {
    let (_db, store) = store_with_site(backend, "s1");
    let start = ts("2026-12-04T18:00:00Z");
    let now = start + SignedDuration::from_hours(1);
    let minutes: Vec<SignalMinute> = (0..10).map(|m| minute("pos", start, m, 0.01)).collect();
    let s1 = vec!["s1".to_string()];
    let out = store.put_signals("s1", &minutes, now).unwrap();
    assert_eq!(
        out,
        SignalsStored {
            minutes: 10,
            dropped_streams: 0
        }
    );
    // A replay (lost answer) stores nothing twice; a changed value replaces the old one.
    let again: Vec<SignalMinute> = (0..10).map(|m| minute("pos", start, m, 0.02)).collect();
    store.put_signals("s1", &again, now).unwrap();
    let all = store
        .signal_samples(
            &s1,
            "pos",
            "error_ratio",
            start,
            start + SignedDuration::from_hours(1),
        )
        .unwrap();
    assert_eq!(all.len(), 10);
    assert!(all.iter().all(|s| s.value == 0.02 && s.site_id == "s1"));
    // [from, to): the window's end is left out.
    let window = store
        .signal_samples(
            &s1,
            "pos",
            "p95",
            start + SignedDuration::from_mins(2),
            start + SignedDuration::from_mins(5),
        )
        .unwrap();
    let mut got: Vec<Timestamp> = window.iter().map(|s| s.minute).collect();
    got.sort();
    assert_eq!(
        got,
        (2..5)
            .map(|m| start + SignedDuration::from_mins(m))
            .collect::<Vec<_>>()
    );
    // The latest minute of the stream, whole; an older minute sent late does not replace it.
    store
        .put_signals("s1", &[minute("pos", start, 3, 0.9)], now)
        .unwrap();
    let latest = store.latest_signals("s1").unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].0.minute, start + SignedDuration::from_mins(9));

    // Retention: values of minutes before the cut-off go, oldest first, in chunks.
    let cut = start + SignedDuration::from_mins(4);
    assert_eq!(store.prune_signals(cut, 5).unwrap(), 5);
    assert_eq!(store.prune_signals(cut, 5).unwrap(), 3);
    assert_eq!(store.prune_signals(cut, 5).unwrap(), 0);
    let left = store
        .signal_samples(
            &s1,
            "pos",
            "error_ratio",
            start,
            start + SignedDuration::from_hours(1),
        )
        .unwrap();
    assert_eq!(left.len(), 6);
    assert!(left.iter().all(|s| s.minute >= cut));
    assert_eq!(
        store.latest_signals("s1").unwrap().len(),
        1,
        "latest minute kept"
    );
}

fn a_site_keeps_at_most_eight_streams_and_the_rest_is_counted_as_dropped(backend: Backend) {
    let (_db, store) = store_with_site(backend, "s1");
    let start = ts("2026-12-04T18:00:00Z");
    let minutes: Vec<SignalMinute> = (0..10)
        .map(|i| minute(&format!("stream-{i}"), start, 0, 0.01))
        .collect();
    let out = store.put_signals("s1", &minutes, start).unwrap();
    assert_eq!(
        out,
        SignalsStored {
            minutes: 8,
            dropped_streams: 2
        }
    );
    assert_eq!(
        store.latest_signals("s1").unwrap().len(),
        MAX_SIGNAL_STREAMS_PER_SITE
    );
    // A known stream still gets its minutes.
    let out = store
        .put_signals("s1", &[minute("stream-0", start, 1, 0.01)], start)
        .unwrap();
    assert_eq!(
        out,
        SignalsStored {
            minutes: 1,
            dropped_streams: 0
        }
    );
}

fn the_gate_and_retention_queries_use_their_indexes(backend: Backend) {
    let (db, _store) = store_with_site(backend, "s1");
    if backend == Backend::Postgres {
        // With sequential scans made dear, a query whose conditions match an index uses it.
        let mut c = ::postgres::Client::connect(db.url(), ::postgres::NoTls).unwrap();
        c.batch_execute("SET enable_seqscan = off").unwrap();
        let mut plan = |sql: &str| -> String {
            let sql = sql
                .replace("$1", "'s1'")
                .replace("$2", "'pos'")
                .replace("$3", "'p95'")
                .replace("$4", "0")
                .replace("$5", "10");
            let lines: Vec<String> = c
                .query(&format!("EXPLAIN {sql}"), &[])
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            lines.join(" | ")
        };
        let gate = plan(postgres_store::SAMPLES_SQL);
        assert!(gate.contains("signal_values_pkey"), "{gate}");
        let prune =
            plan("SELECT minute FROM signal_values WHERE minute < 1 ORDER BY minute LIMIT 5");
        assert!(prune.contains("signal_values_by_minute"), "{prune}");
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
    let gate = plan(fleetwave_coordinator::store::sqlite::SAMPLES_SQL);
    assert!(gate.contains("PRIMARY KEY"), "{gate}");
    // Several signals at once: one seek per signal through the key, not a scan of the
    // site's every signal.
    let several = plan(&fleetwave_coordinator::store::sqlite::signals_samples_sql(
        3,
    ));
    assert!(
        several.contains("PRIMARY KEY") && several.contains("signal=?"),
        "{several}"
    );
    let prune = plan("SELECT minute FROM signal_values WHERE minute < 1 ORDER BY minute LIMIT 5");
    assert!(prune.contains("signal_values_by_minute"), "{prune}");
}

fn signals_json(minutes: &[SignalMinute]) -> Value {
    serde_json::to_value(minutes).unwrap()
}

#[tokio::test]
async fn the_agent_api_bounds_signal_minutes_and_the_site_shows_the_latest() {
    let h = Harness::new().await;
    let a = Agent::enroll(&h, "store-1", json!({})).await;
    let start = h.clock.now().round(jiff::Unit::Minute).unwrap() - SignedDuration::from_hours(2);

    let too_many: Vec<SignalMinute> = (0..=MAX_SIGNAL_MINUTES_PER_REPORT as i64)
        .map(|m| minute("pos", start, m, 0.01))
        .collect();
    let (s, v) = h
        .post(
            "/v1/agent/reports",
            &a.token,
            json!({"events": [], "signals": signals_json(&too_many)}),
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["error"]["code"], "too_many_signal_minutes");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("at most {MAX_SIGNAL_MINUTES_PER_REPORT}")),
        "{v}"
    );

    let mut half_minute = minute("pos", start, 0, 0.01);
    half_minute.minute += SignedDuration::from_secs(30);
    let mut crowded = minute("pos", start, 1, 0.01);
    for i in 0..33 {
        crowded.values.insert(format!("s{i}"), 1.0);
    }
    for (bad, says) in [
        (vec![half_minute], "not the start of a whole minute"),
        (vec![crowded], "at most 32"),
        (
            vec![minute("pos", start, 2, 0.01), minute("pos", start, 2, 0.02)],
            "appears twice",
        ),
        (
            vec![minute("pos", start, 24 * 60, 0.01)],
            "after the coordinator's clock",
        ),
    ] {
        let (s, v) = h
            .post(
                "/v1/agent/reports",
                &a.token,
                json!({"events": [], "signals": signals_json(&bad)}),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(says) && message.contains("signals["),
            "{message}"
        );
    }
    let (s, v) = h
        .post(
            "/v1/agent/reports",
            &a.token,
            json!({"events": [], "signals": [{"stream": "pos", "minute": start, "values": {"x": 1.0}, "scrapes": 1, "extra": 1}]}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "unknown fields are refused: {v}"
    );

    // A good batch: stored, counted, and the latest minute is on the site's document.
    let mut good: Vec<SignalMinute> = (0..5).map(|m| minute("pos", start, m, 0.01)).collect();
    good[4].failed_scrapes = 3;
    let (s, v) = h
        .post(
            "/v1/agent/reports",
            &a.token,
            json!({"events": [], "signals": signals_json(&good)}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, site) = h.get("/v1/sites/store-1", &h.admin).await;
    assert_eq!(s, StatusCode::OK);
    let latest = &site["signals"][0];
    assert_eq!(latest["stream"], "pos");
    assert_eq!(latest["values"]["error_ratio"], 0.01);
    assert_eq!(
        latest["minute"]
            .as_str()
            .map(|t| t.parse::<Timestamp>().unwrap()),
        Some(good[4].minute)
    );
    assert!(
        latest["problem"]
            .as_str()
            .unwrap()
            .contains("3 of 4 scrape(s) failed"),
        "{latest}"
    );
    let metrics = h
        .http
        .get(h.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("fleetwave_signal_minutes_total{result=\"stored\"} 5"),
        "{metrics}"
    );

    // The dashboard's site page shows the same minute and its problem.
    let mut web = WebClient::new(&h);
    web.login(&h.admin).await;
    let (s, _, page) = web.get("/ui/sites/store-1").await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("id=\"signals\""), "{page}");
    assert!(page.contains("error_ratio 0.0100"), "{page}");
    assert!(page.contains("3 of 4 scrape(s) failed"), "{page}");

    // A site without signals says so, and its document has no signals field.
    let _b = Agent::enroll(&h, "store-2", json!({})).await;
    let (_, site) = h.get("/v1/sites/store-2", &h.admin).await;
    assert!(site.get("signals").is_none(), "{site}");
    let (_, _, page) = web.get("/ui/sites/store-2").await;
    assert!(page.contains("sends no golden signals"), "{page}");
    h.stop().await;
}

both_backends!(
    minutes_are_stored_once_per_site_stream_signal_and_minute_and_pruned_by_age,
    a_site_keeps_at_most_eight_streams_and_the_rest_is_counted_as_dropped,
    the_gate_and_retention_queries_use_their_indexes,
    several_signals_read_at_once_are_the_rows_read_one_by_one,
);

/// Several signals of a stream read at once (what the gate reads every minute) are the
/// same rows as read signal by signal, one list per signal in the order asked, an unknown
/// signal's empty; another stream's minutes are not in them.
fn several_signals_read_at_once_are_the_rows_read_one_by_one(backend: Backend) {
    let (_dir, store) = store_with_site(backend, "s1");
    let start = ts("2026-12-04T18:00:00Z");
    let now = start + SignedDuration::from_hours(1);
    let mut minutes: Vec<SignalMinute> = (0..10).map(|m| minute("pos", start, m, 0.01)).collect();
    minutes.extend((0..10).map(|m| minute("other", start, m, 0.5)));
    store.put_signals("s1", &minutes, now).unwrap();
    let sites = vec!["s1".to_string(), "not-a-site".to_string()];
    let names = ["p95", "nothing", "error_ratio"].map(String::from);
    let (from, to) = (
        start + SignedDuration::from_mins(2),
        start + SignedDuration::from_mins(8),
    );
    let at_once = store
        .signals_samples(&sites, "pos", &names, from, to)
        .unwrap();
    assert_eq!(at_once.len(), 3);
    let key = |v: &[SignalSample]| {
        let mut k: Vec<(String, Timestamp, u64, Option<String>)> = v
            .iter()
            .map(|s| {
                (
                    s.site_id.clone(),
                    s.minute,
                    s.value.to_bits(),
                    s.release_id.clone(),
                )
            })
            .collect();
        k.sort();
        k
    };
    for (name, got) in names.iter().zip(&at_once) {
        let one = store.signal_samples(&sites, "pos", name, from, to).unwrap();
        assert_eq!(key(got), key(&one), "{name}");
    }
    assert_eq!(at_once[0].len(), 6, "minutes 2 to 7");
    assert!(at_once[1].is_empty());
    assert!(at_once[2].iter().all(|s| s.value == 0.01));
}
