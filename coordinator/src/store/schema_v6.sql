-- fleetwave coordinator schema, version 6: site holds.
--
-- A held site stays at what it runs: no new rollout places it, it joins none, and an
-- active rollout it had not started in leaves it out of its gate. One row per held site;
-- lifting the hold deletes the row (the audit log keeps the history).
CREATE TABLE site_holds (
    site_id  TEXT PRIMARY KEY REFERENCES sites(id),
    reason   TEXT NOT NULL,
    held_by  TEXT NOT NULL,
    held_at  INTEGER NOT NULL
);
