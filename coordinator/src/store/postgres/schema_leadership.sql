-- The wave controller's leadership among replicas (one row, role 'controller'): who
-- holds it, the fencing token (incremented by every takeover; every write of the
-- controller checks it in its own transaction) and until when, by the database's clock.
CREATE TABLE leadership (
    role TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
