-- fleetwave coordinator schema, version 4: fleet freezes created through the API.
--
-- The configuration file's `[[freezes]]` are not stored: they are read at every start.
-- A freeze ended early keeps its row (ended_at, ended_by) and no longer counts.
CREATE TABLE freezes (
    id TEXT PRIMARY KEY,
    start_at INTEGER NOT NULL,
    end_at INTEGER NOT NULL,
    reason TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    ended_at INTEGER,
    ended_by TEXT
);
-- The freezes still in force or to come: what the coordinator loads at start.
CREATE INDEX freezes_open ON freezes(end_at) WHERE ended_at IS NULL;
