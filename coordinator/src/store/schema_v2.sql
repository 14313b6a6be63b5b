-- fleetwave coordinator schema, version 2: indexed site facts for fleet-wide reads
-- (dashboard counts, filters and search at 100,000 sites). `sites.labels` and
-- `sites.installed` stay the source of truth; the triggers below keep these tables in
-- step inside the same transaction, so no write path can forget them.
CREATE TABLE site_labels (
    site_id TEXT NOT NULL REFERENCES sites(id),
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (site_id, key)
) WITHOUT ROWID;
CREATE INDEX site_labels_by_pair ON site_labels(key, value, site_id);
CREATE TABLE site_versions (
    site_id TEXT NOT NULL REFERENCES sites(id),
    stream  TEXT NOT NULL,
    version TEXT NOT NULL,
    PRIMARY KEY (site_id, stream)
) WITHOUT ROWID;
CREATE INDEX site_versions_by_version ON site_versions(version, stream, site_id);
CREATE INDEX sites_by_state_health ON sites(state, healthy);
CREATE INDEX sites_by_state_seen ON sites(state, last_seen);
-- Site ids in order within a state (filtered pages, and the state check of other filters).
CREATE INDEX sites_by_state_id ON sites(state, id);
-- Sites deferred now (the overview's count).
CREATE INDEX sites_by_state_deferral ON sites(state, deferred_until);

CREATE TRIGGER site_facts_insert AFTER INSERT ON sites BEGIN
    INSERT INTO site_labels (site_id, key, value)
        SELECT NEW.id, j.key, CAST(j.value AS TEXT) FROM json_each(NEW.labels) AS j;
    INSERT INTO site_versions (site_id, stream, version)
        SELECT NEW.id, j.key, json_extract(j.value, '$.version') FROM json_each(NEW.installed) AS j
        WHERE json_extract(j.value, '$.version') IS NOT NULL;
END;
CREATE TRIGGER site_labels_update AFTER UPDATE OF labels ON sites BEGIN
    DELETE FROM site_labels WHERE site_id = NEW.id;
    INSERT INTO site_labels (site_id, key, value)
        SELECT NEW.id, j.key, CAST(j.value AS TEXT) FROM json_each(NEW.labels) AS j;
END;
CREATE TRIGGER site_versions_update AFTER UPDATE OF installed ON sites BEGIN
    DELETE FROM site_versions WHERE site_id = NEW.id;
    INSERT INTO site_versions (site_id, stream, version)
        SELECT NEW.id, j.key, json_extract(j.value, '$.version') FROM json_each(NEW.installed) AS j
        WHERE json_extract(j.value, '$.version') IS NOT NULL;
END;

-- Sites that existed before this version.
INSERT INTO site_labels (site_id, key, value)
    SELECT s.id, j.key, CAST(j.value AS TEXT) FROM sites AS s, json_each(s.labels) AS j;
INSERT INTO site_versions (site_id, stream, version)
    SELECT s.id, j.key, json_extract(j.value, '$.version') FROM sites AS s, json_each(s.installed) AS j
    WHERE json_extract(j.value, '$.version') IS NOT NULL;
