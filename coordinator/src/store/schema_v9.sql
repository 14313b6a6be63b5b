-- fleetwave coordinator schema, version 9: golden signals from the agents.
--
-- One row per (site, stream, signal, minute): a minute sent again (a resent report batch)
-- replaces its row, so replays are idempotent. Bounded: a batch carries at most
-- MAX_SIGNAL_MINUTES_PER_REPORT minutes of at most MAX_SIGNALS_PER_MINUTE signals each, a
-- site at most MAX_SIGNAL_STREAMS_PER_SITE streams, and rows older than
-- `retention.signals_days` (by minute) are pruned.
CREATE TABLE signal_values (
    site_id     TEXT NOT NULL REFERENCES sites(id),
    stream      TEXT NOT NULL,
    signal      TEXT NOT NULL,
    minute      INTEGER NOT NULL,
    value       REAL NOT NULL,
    release_id  TEXT,
    PRIMARY KEY (site_id, stream, signal, minute)
) WITHOUT ROWID;
-- The gate reads one site's signal over the bake's minutes: a range of the key.
-- What retention deletes: the oldest minutes first.
CREATE INDEX signal_values_by_minute ON signal_values (minute);

-- The latest minute of each stream of each site, whole (values, resets, failed scrapes):
-- the site page and the API site document.
CREATE TABLE signal_latest (
    site_id     TEXT NOT NULL REFERENCES sites(id),
    stream      TEXT NOT NULL,
    minute      INTEGER NOT NULL,
    body        TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (site_id, stream)
) WITHOUT ROWID;
