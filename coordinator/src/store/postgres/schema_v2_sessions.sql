-- fleetwave coordinator schema, dashboard sessions.
--
-- A dashboard sign-in, shared by every coordinator on the database (any replica checks
-- it, a sign-out on one ends it on all). The cookie's id and the operator token are kept
-- only as SHA-256; the CSRF token is the session's own random value.
CREATE TABLE dashboard_sessions (
    id_hash TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used BIGINT NOT NULL
);
CREATE INDEX dashboard_sessions_by_last_used ON dashboard_sessions (last_used);
