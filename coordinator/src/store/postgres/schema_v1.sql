-- fleetwave coordinator schema on PostgreSQL, version 1: SQLite's versions 1 to 10 in one.
--
-- The same tables, columns and constraints as the SQLite file, so that both backends keep
-- the same facts and `migrate-store` copies a file row by row: times are BIGINT
-- milliseconds since the epoch, flags are BIGINT 0/1 (as SQLite's), JSON documents are
-- TEXT (parsed with ::jsonb where a query or a trigger looks inside). Text compares and
-- sorts bytewise (COLLATE "C"), as SQLite's: pages by id and version ranges are the same
-- whatever the database's locale.
CREATE TABLE roots (
    version     BIGINT PRIMARY KEY,
    envelope    TEXT COLLATE "C" NOT NULL,
    added_at    BIGINT NOT NULL
);
CREATE TABLE operator_tokens (
    id          TEXT COLLATE "C" PRIMARY KEY,
    token_hash  TEXT COLLATE "C" NOT NULL UNIQUE,
    name        TEXT COLLATE "C" NOT NULL,
    role        TEXT COLLATE "C" NOT NULL CHECK (role IN ('viewer','operator','release_manager','admin')),
    created_at  BIGINT NOT NULL,
    created_by  TEXT COLLATE "C" NOT NULL,
    revoked     BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE enrollment_tokens (
    id          TEXT COLLATE "C" PRIMARY KEY,
    token_hash  TEXT COLLATE "C" NOT NULL UNIQUE,
    labels      TEXT COLLATE "C" NOT NULL,
    site_id     TEXT COLLATE "C",
    expires_at  BIGINT NOT NULL,
    uses_total  BIGINT NOT NULL,
    uses_left   BIGINT NOT NULL CHECK (uses_left >= 0),
    revoked     BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL,
    created_by  TEXT COLLATE "C" NOT NULL
);
CREATE TABLE sites (
    id              TEXT COLLATE "C" PRIMARY KEY,
    device_key      TEXT COLLATE "C" NOT NULL,
    labels          TEXT COLLATE "C" NOT NULL,
    state           TEXT COLLATE "C" NOT NULL CHECK (state IN ('active','decommissioned')),
    agent_version   TEXT COLLATE "C" NOT NULL,
    enrolled_at     BIGINT NOT NULL,
    last_seen       BIGINT,
    installed       TEXT COLLATE "C" NOT NULL DEFAULT '{}',
    healthy         BIGINT,
    health_at       BIGINT,
    deferred_until  BIGINT,
    deferral_at     BIGINT,
    last_sequence   BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE session_nonces (
    site_id     TEXT COLLATE "C" NOT NULL REFERENCES sites(id),
    nonce       TEXT COLLATE "C" NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (site_id, nonce)
);
CREATE TABLE releases (
    id           TEXT COLLATE "C" PRIMARY KEY,
    digest       TEXT COLLATE "C" NOT NULL UNIQUE,
    name         TEXT COLLATE "C" NOT NULL,
    version      TEXT COLLATE "C" NOT NULL,
    kind         TEXT COLLATE "C" NOT NULL,
    counter      BIGINT NOT NULL,
    envelope     TEXT COLLATE "C" NOT NULL,
    published_at BIGINT NOT NULL,
    published_by TEXT COLLATE "C" NOT NULL,
    UNIQUE (name, counter)
);
CREATE TABLE artifacts (
    sha256      TEXT COLLATE "C" PRIMARY KEY,
    length      BIGINT NOT NULL,
    uploaded_at BIGINT NOT NULL,
    uploaded_by TEXT COLLATE "C" NOT NULL
);
CREATE TABLE rollouts (
    id            TEXT COLLATE "C" PRIMARY KEY,
    release_id    TEXT COLLATE "C" NOT NULL REFERENCES releases(id),
    plan_source   TEXT COLLATE "C" NOT NULL,
    plan_format   TEXT COLLATE "C" NOT NULL,
    status        TEXT COLLATE "C" NOT NULL,
    status_reason TEXT COLLATE "C",
    waves         TEXT COLLATE "C" NOT NULL,
    created_at    BIGINT NOT NULL,
    created_by    TEXT COLLATE "C" NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX rollouts_by_status ON rollouts(status);
CREATE TABLE rollout_sites (
    rollout_id        TEXT COLLATE "C" NOT NULL REFERENCES rollouts(id),
    site_id           TEXT COLLATE "C" NOT NULL REFERENCES sites(id),
    wave              BIGINT NOT NULL,
    active            BIGINT NOT NULL DEFAULT 1,
    skipped           BIGINT NOT NULL DEFAULT 0,
    assigned_at       BIGINT,
    leased_at         BIGINT,
    phase             TEXT COLLATE "C",
    phase_at          BIGINT,
    detail            TEXT COLLATE "C",
    committed_at      BIGINT,
    failed_at         BIGINT,
    failure           TEXT COLLATE "C",
    rolled_back       BIGINT NOT NULL DEFAULT 0,
    last_healthy_at   BIGINT,
    first_unhealthy_after_commit_at BIGINT,
    last_report_at    BIGINT,
    rollback_sequence BIGINT,
    previous_release_id TEXT COLLATE "C",
    attempts          BIGINT NOT NULL DEFAULT 1,
    retry_at          BIGINT,
    bundle_until      BIGINT,
    PRIMARY KEY (rollout_id, site_id)
);
-- One active rollout per site, enforced by the database itself.
CREATE UNIQUE INDEX one_active_rollout_per_site ON rollout_sites(site_id) WHERE active = 1;
CREATE TABLE assignments (
    site_id        TEXT COLLATE "C" NOT NULL REFERENCES sites(id),
    sequence       BIGINT NOT NULL,
    rollout_id     TEXT COLLATE "C" NOT NULL REFERENCES rollouts(id),
    wave           BIGINT NOT NULL,
    release_id     TEXT COLLATE "C" NOT NULL REFERENCES releases(id),
    release_digest TEXT COLLATE "C" NOT NULL,
    rollback       BIGINT NOT NULL,
    envelope       TEXT COLLATE "C" NOT NULL,
    issued_at      BIGINT NOT NULL,
    expires        BIGINT NOT NULL,
    PRIMARY KEY (site_id, sequence)
);
CREATE TABLE leases (
    id          TEXT COLLATE "C" PRIMARY KEY,
    site_id     TEXT COLLATE "C" NOT NULL REFERENCES sites(id),
    rollout_id  TEXT COLLATE "C" NOT NULL REFERENCES rollouts(id),
    wave        BIGINT NOT NULL,
    granted_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    UNIQUE (rollout_id, site_id)
);
CREATE TABLE reports (
    site_id     TEXT COLLATE "C" NOT NULL REFERENCES sites(id),
    event_id    TEXT COLLATE "C" NOT NULL,
    at          BIGINT NOT NULL,
    kind        TEXT COLLATE "C" NOT NULL,
    body        TEXT COLLATE "C" NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (site_id, event_id)
);
-- A site's unhealthy heartbeats by time (what a commit looks for), and reports of each
-- kind in the order they arrived (what retention prunes).
CREATE INDEX reports_unhealthy ON reports(site_id, at)
    WHERE kind = 'health' AND (body::jsonb ->> 'healthy') = 'false';
CREATE INDEX reports_by_kind_received ON reports(kind, received_at);
CREATE TABLE decisions (
    id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    rollout_id  TEXT COLLATE "C" NOT NULL REFERENCES rollouts(id),
    at          BIGINT NOT NULL,
    kind        TEXT COLLATE "C" NOT NULL,
    wave        BIGINT,
    reason      TEXT COLLATE "C" NOT NULL
);
CREATE INDEX decisions_by_rollout ON decisions(rollout_id, id);
CREATE TABLE audit_log (
    id      BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    at      BIGINT NOT NULL,
    actor   TEXT COLLATE "C" NOT NULL,
    action  TEXT COLLATE "C" NOT NULL,
    target  TEXT COLLATE "C" NOT NULL,
    detail  TEXT COLLATE "C" NOT NULL,
    remote  TEXT COLLATE "C" NOT NULL
);
CREATE INDEX audit_log_by_target ON audit_log(target, id);

-- Indexed site facts (SQLite v2), kept in step with sites.labels and sites.installed by
-- the triggers below, inside the same transaction.
CREATE TABLE site_labels (
    site_id TEXT COLLATE "C" NOT NULL REFERENCES sites(id),
    key     TEXT COLLATE "C" NOT NULL,
    value   TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (site_id, key)
);
CREATE INDEX site_labels_by_pair ON site_labels(key, value, site_id);
CREATE TABLE site_versions (
    site_id TEXT COLLATE "C" NOT NULL REFERENCES sites(id),
    stream  TEXT COLLATE "C" NOT NULL,
    version TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (site_id, stream)
);
CREATE INDEX site_versions_by_version ON site_versions(version, stream, site_id);
CREATE INDEX site_versions_by_stream ON site_versions(stream, version, site_id);
CREATE INDEX sites_by_state_health ON sites(state, healthy);
CREATE INDEX sites_by_state_seen ON sites(state, last_seen);
CREATE INDEX sites_by_state_id ON sites(state, id);
CREATE INDEX sites_by_state_deferral ON sites(state, deferred_until);
CREATE INDEX sites_nothing_installed ON sites(state, id) WHERE installed = '{}';

CREATE FUNCTION fleetwave_site_labels() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM site_labels WHERE site_id = NEW.id;
    INSERT INTO site_labels (site_id, key, value)
        SELECT NEW.id, j.key, j.value FROM jsonb_each_text(NEW.labels::jsonb) AS j;
    RETURN NULL;
END $$;
CREATE FUNCTION fleetwave_site_versions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM site_versions WHERE site_id = NEW.id;
    INSERT INTO site_versions (site_id, stream, version)
        SELECT NEW.id, j.key, j.value ->> 'version' FROM jsonb_each(NEW.installed::jsonb) AS j
        WHERE j.value ->> 'version' IS NOT NULL;
    RETURN NULL;
END $$;
CREATE TRIGGER site_labels_insert AFTER INSERT ON sites
    FOR EACH ROW EXECUTE FUNCTION fleetwave_site_labels();
CREATE TRIGGER site_labels_update AFTER UPDATE OF labels ON sites
    FOR EACH ROW EXECUTE FUNCTION fleetwave_site_labels();
CREATE TRIGGER site_versions_insert AFTER INSERT ON sites
    FOR EACH ROW EXECUTE FUNCTION fleetwave_site_versions();
CREATE TRIGGER site_versions_update AFTER UPDATE OF installed ON sites
    FOR EACH ROW EXECUTE FUNCTION fleetwave_site_versions();

-- Fleet freezes created through the API (SQLite v4).
CREATE TABLE freezes (
    id TEXT COLLATE "C" PRIMARY KEY,
    start_at BIGINT NOT NULL,
    end_at BIGINT NOT NULL,
    reason TEXT COLLATE "C" NOT NULL,
    created_by TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    ended_at BIGINT,
    ended_by TEXT COLLATE "C"
);
CREATE INDEX freezes_open ON freezes(end_at) WHERE ended_at IS NULL;

-- Outgoing webhooks (SQLite v5): the outbox, deliveries, attempts and silences.
CREATE TABLE webhook_endpoints (
    id TEXT COLLATE "C" PRIMARY KEY,
    url TEXT COLLATE "C" NOT NULL,
    secret TEXT COLLATE "C" NOT NULL,
    kinds TEXT COLLATE "C" NOT NULL,
    format TEXT COLLATE "C" NOT NULL,
    allow_insecure_http BIGINT NOT NULL,
    description TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT COLLATE "C" NOT NULL
);
CREATE TABLE webhook_events (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    type TEXT COLLATE "C" NOT NULL,
    at BIGINT NOT NULL,
    body TEXT COLLATE "C" NOT NULL
);
CREATE TABLE webhook_deliveries (
    id TEXT COLLATE "C" PRIMARY KEY,
    endpoint_id TEXT COLLATE "C" NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    event_id BIGINT NOT NULL REFERENCES webhook_events(id),
    state TEXT COLLATE "C" NOT NULL,
    attempts BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_status BIGINT,
    last_error TEXT COLLATE "C",
    finished_at BIGINT,
    -- Insertion order (SQLite's rowid): ties of created_at and finished_at.
    seq BIGINT GENERATED BY DEFAULT AS IDENTITY UNIQUE
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries(endpoint_id, created_at);
CREATE INDEX webhook_deliveries_by_event ON webhook_deliveries(event_id);
CREATE TABLE webhook_attempts (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    endpoint_id TEXT COLLATE "C" NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    delivery_id TEXT COLLATE "C" NOT NULL,
    event_type TEXT COLLATE "C" NOT NULL,
    attempt BIGINT NOT NULL,
    at BIGINT NOT NULL,
    status BIGINT,
    error TEXT COLLATE "C",
    duration_ms BIGINT NOT NULL,
    outcome TEXT COLLATE "C" NOT NULL
);
CREATE INDEX webhook_attempts_by_endpoint ON webhook_attempts(endpoint_id, id);
CREATE TABLE webhook_site_silences (
    rollout_id TEXT COLLATE "C" NOT NULL,
    site_id TEXT COLLATE "C" NOT NULL,
    since BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, site_id, since)
);

-- Site holds (SQLite v6).
CREATE TABLE site_holds (
    site_id  TEXT COLLATE "C" PRIMARY KEY REFERENCES sites(id),
    reason   TEXT COLLATE "C" NOT NULL,
    held_by  TEXT COLLATE "C" NOT NULL,
    held_at  BIGINT NOT NULL
);

-- Channels (SQLite v7).
CREATE TABLE channels (
    name            TEXT COLLATE "C" PRIMARY KEY,
    stream          TEXT COLLATE "C" NOT NULL,
    selector        TEXT COLLATE "C" NOT NULL DEFAULT '{}',
    release_id      TEXT COLLATE "C" REFERENCES releases(id),
    max_concurrent  BIGINT NOT NULL,
    failure_budget  BIGINT NOT NULL,
    "window"        TEXT COLLATE "C",
    set_by          TEXT COLLATE "C" NOT NULL,
    set_at          BIGINT NOT NULL,
    set_reason      TEXT COLLATE "C" NOT NULL,
    created_at      BIGINT NOT NULL,
    created_by      TEXT COLLATE "C" NOT NULL
);
CREATE INDEX channels_by_stream ON channels(stream);

-- Golden signals (SQLite v9).
CREATE TABLE signal_values (
    site_id     TEXT COLLATE "C" NOT NULL REFERENCES sites(id),
    stream      TEXT COLLATE "C" NOT NULL,
    signal      TEXT COLLATE "C" NOT NULL,
    minute      BIGINT NOT NULL,
    value       DOUBLE PRECISION NOT NULL,
    release_id  TEXT COLLATE "C",
    PRIMARY KEY (site_id, stream, signal, minute)
);
CREATE INDEX signal_values_by_minute ON signal_values (minute);
CREATE TABLE signal_latest (
    site_id     TEXT COLLATE "C" NOT NULL REFERENCES sites(id),
    stream      TEXT COLLATE "C" NOT NULL,
    minute      BIGINT NOT NULL,
    body        TEXT COLLATE "C" NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (site_id, stream)
);
