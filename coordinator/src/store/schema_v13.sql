-- fleetwave coordinator schema, version 13: each box's facts in a rollout.
--
-- A site of several boxes installs box by box: each box's own reports fold into its row
-- here (phase, commit, failure, health, last report, lease, installed version; JSON, see
-- store::boxes::BoxFacts), and the site's rollout_sites row is made from its boxes'
-- rows. One-box sites have no rows here.
CREATE TABLE rollout_boxes (
    rollout_id  TEXT NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    site_id     TEXT NOT NULL,
    box_id      TEXT NOT NULL,
    facts       TEXT NOT NULL,
    PRIMARY KEY (rollout_id, site_id, box_id)
);
