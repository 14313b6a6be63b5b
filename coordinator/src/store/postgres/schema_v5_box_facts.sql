-- fleetwave coordinator schema (PostgreSQL), version 5: each box's facts in a rollout;
-- the same table as the SQLite schema's version 13 (`schema_v13.sql`).
--
-- A site of several boxes installs box by box: each box's own reports fold into its row
-- here (JSON, see store::boxes::BoxFacts), and the site's rollout_sites row is made from
-- its boxes' rows. One-box sites have no rows here.
CREATE TABLE rollout_boxes (
    rollout_id  TEXT COLLATE "C" NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    site_id     TEXT COLLATE "C" NOT NULL,
    box_id      TEXT COLLATE "C" NOT NULL,
    facts       TEXT NOT NULL,
    PRIMARY KEY (rollout_id, site_id, box_id)
);
