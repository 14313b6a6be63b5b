-- fleetwave coordinator schema, version 8: attempts and automatic retries.
--
-- attempts: which attempt at the rollout's release a member site is on (1 for the first
-- install, one more for each retry, automatic or by an operator). It replaces reading the
-- attempt from the timeline's words; rows of rollouts retried before this version take
-- their number from those words once, here.
-- retry_at: when the site's next automatic attempt starts, once the wave controller
-- scheduled it under the plan's [retry] policy (NULL: none scheduled); cleared when the
-- attempt starts.
ALTER TABLE rollout_sites ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;
ALTER TABLE rollout_sites ADD COLUMN retry_at INTEGER;
UPDATE rollout_sites SET attempts = 1 + (
    SELECT COUNT(*) FROM decisions d
    WHERE d.rollout_id = rollout_sites.rollout_id
      AND d.kind = 'retried'
      AND instr(d.reason, ' ' || rollout_sites.site_id || ' (attempt ') > 0
)
WHERE EXISTS (
    SELECT 1 FROM decisions d
    WHERE d.rollout_id = rollout_sites.rollout_id AND d.kind = 'retried'
);
