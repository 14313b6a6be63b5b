//! Report events on the wire (`POST /v1/agent/reports`, and the agent's outbox, which keeps
//! them as serialized JSON across upgrades): every kind an earlier agent wrote still parses
//! and serializes to the same bytes, and an unknown field is refused by name, as
//! docs/protocol.md promises for every request body.

use fleetwave_shared::protocol::{Event, EventBody, ReportBatch};

/// One event of every kind and shape, exactly as the agent serialized them before report
/// events refused unknown fields (captured from that version's `serde_json::to_string`).
const WRITTEN_BY_EARLIER_AGENTS: &[&str] = &[
    r#"{"id":"e1","at":"2026-06-01T12:00:00Z","kind":"phase","rollout_id":"r1","release_id":"pos-2","phase":"committed","detail":"ok"}"#,
    r#"{"id":"e2","at":"2026-06-01T12:00:00Z","kind":"phase","rollout_id":null,"release_id":"pos-2","phase":"rolled_back","detail":null}"#,
    r#"{"id":"e3","at":"2026-06-01T12:00:00Z","kind":"health","healthy":false,"summary":{"passed":3,"failed":1,"failing":["http:app: status 500"],"disk_free_bytes":1000,"mem_available_bytes":2000,"load1":0.5,"samples":4}}"#,
    r#"{"id":"e4","at":"2026-06-01T12:00:00Z","kind":"health","healthy":true,"summary":{"passed":1,"failed":0,"failing":[],"samples":1}}"#,
    r#"{"id":"e5","at":"2026-06-01T12:00:00Z","kind":"deferral","until":"2026-06-01T12:00:00Z","reason":"sale"}"#,
    r#"{"id":"e6","at":"2026-06-01T12:00:00Z","kind":"deferral","until":null,"reason":null}"#,
    r#"{"id":"e7","at":"2026-06-01T12:00:00Z","kind":"installed","name":"pos","release_id":"pos-2","version":"2","previous_release_id":"pos-1"}"#,
    r#"{"id":"e8","at":"2026-06-01T12:00:00Z","kind":"installed","name":"pos","release_id":null,"version":null,"previous_release_id":null}"#,
    r#"{"id":"e9","at":"2026-06-01T12:00:00Z","kind":"refusal","code":"expired","message":"m","rollout_id":"r1","sequence":7}"#,
    r#"{"id":"e10","at":"2026-06-01T12:00:00Z","kind":"refusal","code":"expired","message":"m","rollout_id":null,"sequence":null}"#,
];

fn parse(text: &str) -> Result<Event, String> {
    serde_json::from_str::<Event>(text).map_err(|e| e.to_string())
}

/// `text` with `"<field>": "red"` added as the first member of the object that starts at
/// byte `at` (0 for the event itself).
fn with_extra(text: &str, at: usize, field: &str) -> String {
    let mut out = text.to_string();
    out.insert_str(at + 1, &format!(r#""{field}":"red","#));
    out
}

#[test]
fn every_kind_an_earlier_agent_wrote_parses_and_serializes_to_the_same_bytes() {
    for text in WRITTEN_BY_EARLIER_AGENTS {
        let event = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(serde_json::to_string(&event).unwrap(), *text);
    }
}

#[test]
fn optional_fields_may_be_left_out_and_members_come_in_any_order() {
    let cases = [
        r#"{"id":"a","at":"2026-06-01T12:00:00Z","kind":"phase","release_id":"pos-2","phase":"leased"}"#,
        r#"{"kind":"phase","phase":"leased","release_id":"pos-2","at":"2026-06-01T12:00:00Z","id":"a"}"#,
        r#"{"id":"a","at":"2026-06-01T12:00:00Z","kind":"health","healthy":true,"summary":{"passed":1,"failed":0}}"#,
        r#"{"id":"a","at":"2026-06-01T12:00:00Z","kind":"deferral"}"#,
        r#"{"id":"a","at":"2026-06-01T12:00:00Z","kind":"installed","name":"pos"}"#,
        r#"{"at":"2026-06-01T12:00:00Z","kind":"refusal","id":"a","code":"c","message":"m"}"#,
    ];
    for text in cases {
        let event = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(event.id, "a");
    }
    let health = parse(cases[2]).unwrap();
    let EventBody::Health { summary, .. } = health.body else {
        panic!("not a health event: {health:?}");
    };
    assert_eq!((summary.samples, summary.failing.len()), (1, 0));
}

#[test]
fn an_unknown_field_in_any_kind_of_event_is_refused_by_name() {
    for text in WRITTEN_BY_EARLIER_AGENTS {
        let bad = with_extra(text, 0, "colour");
        let err = parse(&bad).expect_err(&bad);
        assert!(err.contains("colour"), "{bad}: {err}");
        // The same event at the end of the object, after the kind's own fields.
        let bad = format!(r#"{},"colour":"red"}}"#, &text[..text.len() - 1]);
        let err = parse(&bad).expect_err(&bad);
        assert!(err.contains("colour"), "{bad}: {err}");
    }
}

#[test]
fn an_unknown_field_inside_a_health_summary_is_refused_by_name() {
    let text = WRITTEN_BY_EARLIER_AGENTS[2];
    let summary = text.find(r#""summary":{"#).unwrap() + r#""summary":"#.len();
    let bad = with_extra(text, summary, "temperature");
    let err = parse(&bad).expect_err(&bad);
    assert!(err.contains("temperature"), "{bad}: {err}");
}

#[test]
fn a_batch_with_one_event_carrying_an_unknown_field_is_refused() {
    let good = format!(r#"{{"events":[{}]}}"#, WRITTEN_BY_EARLIER_AGENTS.join(","));
    let batch: ReportBatch = serde_json::from_str(&good).unwrap();
    assert_eq!(batch.events.len(), WRITTEN_BY_EARLIER_AGENTS.len());
    let bad = format!(
        r#"{{"events":[{},{}]}}"#,
        WRITTEN_BY_EARLIER_AGENTS[0],
        with_extra(WRITTEN_BY_EARLIER_AGENTS[8], 0, "blame")
    );
    let err = serde_json::from_str::<ReportBatch>(&bad).unwrap_err();
    assert!(err.to_string().contains("blame"), "{err}");
}

#[test]
fn an_unknown_kind_or_a_missing_kind_is_refused() {
    let err = parse(r#"{"id":"a","at":"2026-06-01T12:00:00Z","kind":"gossip"}"#).unwrap_err();
    assert!(err.contains("gossip"), "{err}");
    parse(r#"{"id":"a","at":"2026-06-01T12:00:00Z","name":"pos"}"#).unwrap_err();
}
