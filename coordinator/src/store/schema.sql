-- fleetwave coordinator schema, version 1. Times are INTEGER milliseconds since the epoch.
CREATE TABLE roots (
    version     INTEGER PRIMARY KEY,
    envelope    TEXT NOT NULL,
    added_at    INTEGER NOT NULL
);
CREATE TABLE operator_tokens (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('viewer','operator','release_manager','admin')),
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    revoked     INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE enrollment_tokens (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    labels      TEXT NOT NULL,
    site_id     TEXT,
    expires_at  INTEGER NOT NULL,
    uses_total  INTEGER NOT NULL,
    uses_left   INTEGER NOT NULL CHECK (uses_left >= 0),
    revoked     INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL
);
CREATE TABLE sites (
    id              TEXT PRIMARY KEY,
    device_key      TEXT NOT NULL,
    labels          TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('active','decommissioned')),
    agent_version   TEXT NOT NULL,
    enrolled_at     INTEGER NOT NULL,
    last_seen       INTEGER,
    installed       TEXT NOT NULL DEFAULT '{}',
    healthy         INTEGER,
    health_at       INTEGER,
    deferred_until  INTEGER,
    deferral_at     INTEGER,
    last_sequence   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE session_nonces (
    site_id     TEXT NOT NULL REFERENCES sites(id),
    nonce       TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (site_id, nonce)
);
CREATE TABLE releases (
    id           TEXT PRIMARY KEY,
    digest       TEXT NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    version      TEXT NOT NULL,
    kind         TEXT NOT NULL,
    counter      INTEGER NOT NULL,
    envelope     TEXT NOT NULL,
    published_at INTEGER NOT NULL,
    published_by TEXT NOT NULL,
    UNIQUE (name, counter)
);
CREATE TABLE artifacts (
    sha256      TEXT PRIMARY KEY,
    length      INTEGER NOT NULL,
    uploaded_at INTEGER NOT NULL,
    uploaded_by TEXT NOT NULL
);
CREATE TABLE rollouts (
    id            TEXT PRIMARY KEY,
    release_id    TEXT NOT NULL REFERENCES releases(id),
    plan_source   TEXT NOT NULL,
    plan_format   TEXT NOT NULL,
    status        TEXT NOT NULL,
    status_reason TEXT,
    waves         TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    created_by    TEXT NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX rollouts_by_status ON rollouts(status);
CREATE TABLE rollout_sites (
    rollout_id        TEXT NOT NULL REFERENCES rollouts(id),
    site_id           TEXT NOT NULL REFERENCES sites(id),
    wave              INTEGER NOT NULL,
    active            INTEGER NOT NULL DEFAULT 1,
    skipped           INTEGER NOT NULL DEFAULT 0,
    assigned_at       INTEGER,
    leased_at         INTEGER,
    phase             TEXT,
    phase_at          INTEGER,
    detail            TEXT,
    committed_at      INTEGER,
    failed_at         INTEGER,
    failure           TEXT,
    rolled_back       INTEGER NOT NULL DEFAULT 0,
    last_healthy_at   INTEGER,
    first_unhealthy_after_commit_at INTEGER,
    last_report_at    INTEGER,
    rollback_sequence INTEGER,
    previous_release_id TEXT,
    PRIMARY KEY (rollout_id, site_id)
);
-- One active rollout per site, enforced by the database itself.
CREATE UNIQUE INDEX one_active_rollout_per_site ON rollout_sites(site_id) WHERE active = 1;
CREATE TABLE assignments (
    site_id        TEXT NOT NULL REFERENCES sites(id),
    sequence       INTEGER NOT NULL,
    rollout_id     TEXT NOT NULL REFERENCES rollouts(id),
    wave           INTEGER NOT NULL,
    release_id     TEXT NOT NULL REFERENCES releases(id),
    release_digest TEXT NOT NULL,
    rollback       INTEGER NOT NULL,
    envelope       TEXT NOT NULL,
    issued_at      INTEGER NOT NULL,
    expires        INTEGER NOT NULL,
    PRIMARY KEY (site_id, sequence)
);
CREATE TABLE leases (
    id          TEXT PRIMARY KEY,
    site_id     TEXT NOT NULL REFERENCES sites(id),
    rollout_id  TEXT NOT NULL REFERENCES rollouts(id),
    wave        INTEGER NOT NULL,
    granted_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    UNIQUE (rollout_id, site_id)
);
CREATE TABLE reports (
    site_id     TEXT NOT NULL REFERENCES sites(id),
    event_id    TEXT NOT NULL,
    at          INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    body        TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (site_id, event_id)
);
CREATE TABLE decisions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id  TEXT NOT NULL REFERENCES rollouts(id),
    at          INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    wave        INTEGER,
    reason      TEXT NOT NULL
);
CREATE INDEX decisions_by_rollout ON decisions(rollout_id, id);
CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    detail  TEXT NOT NULL,
    remote  TEXT NOT NULL
);
