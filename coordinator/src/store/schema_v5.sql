-- fleetwave coordinator schema, version 5: outgoing webhooks.
--
-- webhook_events is the outbox: each row is written in the same transaction as the
-- decision or audit entry that causes it, with one webhook_deliveries row per endpoint
-- subscribed to its type. The delivery worker sends pending deliveries whose
-- next_attempt_at has come, and records every attempt in webhook_attempts (the
-- endpoint's delivery log, its newest attempts kept).
CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    -- whsec_<base64>: returned once at creation, never again by the API.
    secret TEXT NOT NULL,
    -- JSON array of event types.
    kinds TEXT NOT NULL,
    -- json | slack
    format TEXT NOT NULL,
    allow_insecure_http INTEGER NOT NULL,
    description TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE webhook_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    at INTEGER NOT NULL,
    -- The JSON event as sent (type, timestamp, data).
    body TEXT NOT NULL
);
CREATE TABLE webhook_deliveries (
    -- The webhook-id header: the same on every attempt, across restarts.
    id TEXT PRIMARY KEY,
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    event_id INTEGER NOT NULL REFERENCES webhook_events(id),
    -- pending | delivered | failed
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    finished_at INTEGER
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries(endpoint_id, created_at);
CREATE INDEX webhook_deliveries_by_event ON webhook_deliveries(event_id);
CREATE TABLE webhook_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    delivery_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at INTEGER NOT NULL,
    -- The HTTP status (none: no answer).
    status INTEGER,
    error TEXT,
    duration_ms INTEGER NOT NULL,
    -- delivered | retrying | failed
    outcome TEXT NOT NULL
);
CREATE INDEX webhook_attempts_by_endpoint ON webhook_attempts(endpoint_id, id);
-- Sites found silent in a rollout, once per silence (since: the last sign of life it
-- counts from), so that a site.silent event is stored once per silence, across restarts.
-- Deleted with the rollout's activity (when it is finished).
CREATE TABLE webhook_site_silences (
    rollout_id TEXT NOT NULL,
    site_id TEXT NOT NULL,
    since INTEGER NOT NULL,
    PRIMARY KEY (rollout_id, site_id, since)
);
