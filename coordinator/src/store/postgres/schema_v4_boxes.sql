-- fleetwave coordinator schema (PostgreSQL), version 2: boxes within a site; the same
-- tables and columns as the SQLite schema's version 11 (`schema_v11.sql`).
--
-- The box a site was enrolled with stays in its `sites` row (box_id, box_role; every
-- site enrolled before boxes is box 'main' without a role); boxes that joined later are
-- rows of site_boxes.
ALTER TABLE sites ADD COLUMN box_id TEXT COLLATE "C" NOT NULL DEFAULT 'main';
ALTER TABLE sites ADD COLUMN box_role TEXT COLLATE "C" NOT NULL DEFAULT '';
CREATE TABLE site_boxes (
    site_id        TEXT COLLATE "C" NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
    box_id         TEXT COLLATE "C" NOT NULL,
    role           TEXT COLLATE "C" NOT NULL,
    device_key     TEXT COLLATE "C" NOT NULL,
    agent_version  TEXT COLLATE "C" NOT NULL,
    enrolled_at    BIGINT NOT NULL,
    PRIMARY KEY (site_id, box_id)
);
