-- fleetwave coordinator schema, version 10: sites served by bundle.
--
-- bundle_until: when the assignment an operator carried to the site in a bundle
-- (`fleetwave bundle export`) expires (NULL: served by polls only). The gate counts the
-- site's silence from then, not from its assignment: a courier takes days, not a poll.
ALTER TABLE rollout_sites ADD COLUMN bundle_until INTEGER;
