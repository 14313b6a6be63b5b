-- fleetwave coordinator schema, version 11: boxes within a site.
--
-- A site has one or more boxes (machines), each with its own agent and device key. The
-- box a site was enrolled with stays in its `sites` row (box_id, box_role; every site
-- enrolled before boxes is box 'main' without a role), so a one-box site is one row as
-- before. Boxes that joined the site later are rows of site_boxes.
ALTER TABLE sites ADD COLUMN box_id TEXT NOT NULL DEFAULT 'main';
ALTER TABLE sites ADD COLUMN box_role TEXT NOT NULL DEFAULT '';
CREATE TABLE site_boxes (
    site_id        TEXT NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
    box_id         TEXT NOT NULL,
    role           TEXT NOT NULL,
    device_key     TEXT NOT NULL,
    agent_version  TEXT NOT NULL,
    enrolled_at    INTEGER NOT NULL,
    PRIMARY KEY (site_id, box_id)
);
