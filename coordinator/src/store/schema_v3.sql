-- fleetwave coordinator schema, version 3: the commit path and report retention.
--
-- A site's unhealthy heartbeats by time. A commit looks for the first one at or after it
-- (it may have arrived before the commit did). Without this index that read every report
-- the site had ever sent, a table lookup each: at 100,000 sites with a few weeks of
-- heartbeats, the largest cost of a wave. Partial: healthy heartbeats, nearly all of them,
-- add nothing to it.
CREATE INDEX reports_unhealthy ON reports(site_id, at)
    WHERE kind = 'health' AND json_extract(body, '$.healthy') = 0;
-- Reports of each kind in the order they arrived: pruning past the retention period reads
-- the oldest rows of one kind and nothing else. Inserts land at the end of it.
CREATE INDEX reports_by_kind_received ON reports(kind, received_at);
