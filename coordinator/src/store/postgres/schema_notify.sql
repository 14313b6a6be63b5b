-- Change notifications between replicas (PostgreSQL only; SQLite is one process).
--
-- Every replica serves agents, operators and the dashboard from memory it keeps of the
-- database (the poll cache, the live rollouts' facts, the freezes). When a replica
-- commits a change to one of the rows that memory follows, these triggers send a
-- notification on the channel `fleetwave_changes`, delivered by PostgreSQL to every
-- listening replica when (and only if) the transaction commits. Each replica re-reads
-- the named rows (coordinator::engine::warm). The payload is
--
--     <origin> <kind> <key>[ <key>]
--
-- where <origin> is the writing connection's `fleetwave.origin` setting (each
-- coordinator process sets its own at connect; a replica ignores its own changes, which
-- its memory has already) and <kind> is one letter:
--   s <site>             the site's state or device key changed, or it was enrolled
--   b <site>             the site's boxes changed
--   a <site>             the site got an assignment
--   r <rollout>          the rollout's record changed (status, current wave, ...)
--   m <rollout> <site>   the site's row in the rollout changed (report, lease, wave)
--   f -                  the stored freezes changed
-- A replica whose listening connection broke reloads everything once it is back.
CREATE FUNCTION fleetwave_notify(kind TEXT, key TEXT) RETURNS VOID AS $$
BEGIN
    PERFORM pg_notify('fleetwave_changes',
        COALESCE(NULLIF(current_setting('fleetwave.origin', true), ''), '-')
        || ' ' || kind || ' ' || key);
END;
$$ LANGUAGE plpgsql;

CREATE FUNCTION fleetwave_site_changed() RETURNS TRIGGER AS $$
BEGIN
    IF TG_OP = 'INSERT' OR OLD.state IS DISTINCT FROM NEW.state
       OR OLD.device_key IS DISTINCT FROM NEW.device_key THEN
        PERFORM fleetwave_notify('s', NEW.id);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER sites_notify AFTER INSERT OR UPDATE ON sites
    FOR EACH ROW EXECUTE FUNCTION fleetwave_site_changed();

CREATE FUNCTION fleetwave_box_changed() RETURNS TRIGGER AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM fleetwave_notify('b', OLD.site_id);
    ELSE
        PERFORM fleetwave_notify('b', NEW.site_id);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER site_boxes_notify AFTER INSERT OR UPDATE OR DELETE ON site_boxes
    FOR EACH ROW EXECUTE FUNCTION fleetwave_box_changed();

CREATE FUNCTION fleetwave_assignment_changed() RETURNS TRIGGER AS $$
BEGIN
    PERFORM fleetwave_notify('a', NEW.site_id);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER assignments_notify AFTER INSERT OR UPDATE ON assignments
    FOR EACH ROW EXECUTE FUNCTION fleetwave_assignment_changed();

CREATE FUNCTION fleetwave_rollout_changed() RETURNS TRIGGER AS $$
BEGIN
    PERFORM fleetwave_notify('r', NEW.id);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER rollouts_notify AFTER INSERT OR UPDATE ON rollouts
    FOR EACH ROW EXECUTE FUNCTION fleetwave_rollout_changed();

CREATE FUNCTION fleetwave_member_changed() RETURNS TRIGGER AS $$
BEGIN
    PERFORM fleetwave_notify('m', NEW.rollout_id || ' ' || NEW.site_id);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER rollout_sites_notify AFTER INSERT OR UPDATE ON rollout_sites
    FOR EACH ROW EXECUTE FUNCTION fleetwave_member_changed();

CREATE FUNCTION fleetwave_freeze_changed() RETURNS TRIGGER AS $$
BEGIN
    PERFORM fleetwave_notify('f', '-');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER freezes_notify AFTER INSERT OR UPDATE OR DELETE ON freezes
    FOR EACH STATEMENT EXECUTE FUNCTION fleetwave_freeze_changed();
