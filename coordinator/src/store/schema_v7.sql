-- fleetwave coordinator schema, version 7: channels.
--
-- A channel names a target (a release stream and a label selector) and the release that
-- target should run. Sites that match it and run something else converge to that release
-- through the channel's convergence rollout (an ordinary rollout row whose plan has
-- `converge = "<channel>"`). The audit log keeps who moved a channel and why.
CREATE TABLE channels (
    name            TEXT PRIMARY KEY,
    stream          TEXT NOT NULL,
    -- The selector as JSON (the plan's `selector` syntax): {} selects every site.
    selector        TEXT NOT NULL DEFAULT '{}',
    -- NULL: no release yet (nothing converges).
    release_id      TEXT REFERENCES releases(id),
    -- At most this many of the channel's sites install at once.
    max_concurrent  INTEGER NOT NULL,
    -- Failures tolerated before the channel's convergence pauses.
    failure_budget  INTEGER NOT NULL,
    -- The maintenance window (the plan's `window` as JSON), NULL: any time.
    window          TEXT,
    -- Who or what set the release last, and when.
    set_by          TEXT NOT NULL,
    set_at          INTEGER NOT NULL,
    set_reason      TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    created_by      TEXT NOT NULL
);
CREATE INDEX channels_by_stream ON channels(stream);
-- What a convergence pass reads every few seconds without walking every site: the sites
-- of a stream on a version other than the channel's (a range of this index on each side of
-- the version), and the sites that said nothing of what they run (new, re-keyed).
CREATE INDEX site_versions_by_stream ON site_versions(stream, version, site_id);
CREATE INDEX sites_nothing_installed ON sites(state, id) WHERE installed = '{}';
