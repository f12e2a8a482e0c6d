-- Liveness by ownership (server/registrations/replicas.rs).
--
-- Until now every heartbeat of every agent ended as a row update (once per
-- flush interval), so the database's work grew with the fleet even when
-- nothing changed: about 100 µs of PostgreSQL CPU per heartbeat, nine cores
-- for a million agents. Now the replica that holds an instance's stream
-- knows from its own memory whether the stream is alive, and says so for
-- all of them at once with one lease of its own, renewed every few seconds.
-- An instance's row names the replica that holds its stream; the row is
-- written only when something changes (connected, health changed, gone).
--
-- A replica that dies or is cut off stops renewing: every replica's view
-- takes its instances out of routing when its lease expires, and the first
-- replica to see it expired takes its rows over (unknown, no holder, last
-- seen at the dead replica's last renewal: kind 'orphaned' in the events,
-- which the partition guard does not count as lost streams).

CREATE TABLE agentry_replicas (
    id          UUID PRIMARY KEY,
    -- What the replica calls itself (--replica-name: host and port by
    -- default). A replica that starts under the name of an earlier one
    -- ends that one's lease at once: a restart after kill -9 never offers
    -- the streams it lost.
    name        TEXT NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    renewed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX agentry_replicas_name_idx ON agentry_replicas (name);

-- The replica whose stream holds the instance; NULL: none does (a unary
-- registration, or the stream ended).
ALTER TABLE agent_registrations ADD COLUMN replica_id UUID;
CREATE INDEX agent_registrations_replica_idx ON agent_registrations (replica_id)
    WHERE replica_id IS NOT NULL;

ALTER TABLE registration_events DROP CONSTRAINT registration_events_kind_check;
ALTER TABLE registration_events ADD CONSTRAINT registration_events_kind_check
    CHECK (kind IN ('registered', 'reconnected', 'health_changed', 'superseded',
                    'deactivated', 'swept', 'failed', 'orphaned'));

-- {"kind": "replica", "id", "expires_at", "at"} (milliseconds since the
-- epoch; expires_at 0 when the row is gone; at: the database's clock when
-- it was written): the lease travels, nothing is read for it. A view judges
-- expiry by the database's clock as the feed brings it, never by its own:
-- a feed running late must not take a live replica's instances out.
CREATE FUNCTION agentry_notify_replica() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('agentry_changes', json_build_object(
            'kind', 'replica', 'id', OLD.id, 'expires_at', 0,
            'at', (extract(epoch FROM now()) * 1000)::bigint)::text);
    ELSE
        PERFORM pg_notify('agentry_changes', json_build_object(
            'kind', 'replica', 'id', NEW.id,
            'expires_at', (extract(epoch FROM NEW.expires_at) * 1000)::bigint,
            'at', (extract(epoch FROM now()) * 1000)::bigint)::text);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER agentry_replicas_notify AFTER INSERT OR UPDATE OR DELETE ON agentry_replicas
    FOR EACH ROW EXECUTE FUNCTION agentry_notify_replica();

-- A change of holder is a change routing reads.
CREATE OR REPLACE FUNCTION agentry_notify_registration() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('agentry_changes', json_build_object(
            'kind', 'registration', 'id', OLD.id, 'tenant', OLD.tenant_id)::text);
    ELSIF TG_OP = 'INSERT'
          OR (OLD.registration_status, OLD.health_status, OLD.epoch, OLD.failure_count, OLD.name,
              OLD.connection_details, OLD.runtime_config, OLD.capacity, OLD.configuration_id,
              OLD.drain_time, OLD.replica_id)
             IS DISTINCT FROM
             (NEW.registration_status, NEW.health_status, NEW.epoch, NEW.failure_count, NEW.name,
              NEW.connection_details, NEW.runtime_config, NEW.capacity, NEW.configuration_id,
              NEW.drain_time, NEW.replica_id) THEN
        PERFORM pg_notify('agentry_changes', json_build_object(
            'kind', 'registration', 'id', NEW.id, 'tenant', NEW.tenant_id)::text);
    ELSIF OLD.load_reported_at IS DISTINCT FROM NEW.load_reported_at THEN
        PERFORM pg_notify('agentry_changes', json_build_object(
            'kind', 'load', 'id', NEW.id, 'tenant', NEW.tenant_id,
            'configuration', NEW.configuration_id, 'epoch', NEW.epoch,
            'in_flight', NEW.load_in_flight, 'queue_depth', NEW.load_queue_depth,
            'utilization', NEW.load_utilization, 'metrics', NEW.load_metrics,
            'reported_at', NEW.load_reported_at, 'first_reported_at', NEW.load_first_reported_at,
            'last_health_check', NEW.last_health_check, 'updated_at', NEW.updated_at)::text);
    END IF;
    RETURN NULL;
END $$;

-- Registrations in batches, as 0009's, and each with the replica that holds
-- its stream (`holders[ord + 1]`; NULL for a unary RegisterInstance). The
-- two-argument function stays for binaries that predate this one.
CREATE FUNCTION agentry_register_batch(items agentry_announcement[], create_manifests boolean,
                                       holders uuid[])
RETURNS TABLE (ord int, registration_id uuid, epoch bigint, created boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    IF create_manifests THEN
        INSERT INTO agent_manifests (id, agent_id, agent_type, name, version)
        SELECT gen_random_uuid(), a.agent_id, 'unknown', a.agent_id, '0.0.0'
        FROM (SELECT DISTINCT i.agent_id FROM unnest(items) AS i ORDER BY 1) AS a
        ON CONFLICT (agent_id) DO NOTHING;
    END IF;

    -- The tenant's configuration of the manifest, with defaults, when missing.
    INSERT INTO agent_configurations (id, tenant_id, manifest_id, name)
    SELECT gen_random_uuid(), x.tenant_id, m.id, m.name
    FROM (SELECT DISTINCT i.tenant_id, i.agent_id FROM unnest(items) AS i) AS x
    JOIN agent_manifests m ON m.agent_id = x.agent_id
    ORDER BY x.tenant_id, m.id
    ON CONFLICT (tenant_id, manifest_id) DO NOTHING;

    RETURN QUERY
    WITH v AS (
        SELECT i.ord, i.tenant_id, i.instance_id, i.name, i.connection_details,
               i.runtime_config, i.capacity, m.id AS manifest_id, c.id AS configuration_id,
               holders[i.ord + 1] AS replica_id
        FROM unnest(items) AS i
        JOIN agent_manifests m ON m.agent_id = i.agent_id
        JOIN agent_configurations c ON c.tenant_id = i.tenant_id AND c.manifest_id = m.id),
    up AS (
        INSERT INTO agent_registrations AS r (id, tenant_id, manifest_id, configuration_id,
            instance_id, name, connection_details, runtime_config, capacity, replica_id)
        SELECT gen_random_uuid(), v.tenant_id, v.manifest_id, v.configuration_id, v.instance_id,
               v.name, v.connection_details, v.runtime_config, v.capacity, v.replica_id
        FROM v ORDER BY v.tenant_id, v.instance_id
        ON CONFLICT (tenant_id, instance_id) DO UPDATE SET
            manifest_id = EXCLUDED.manifest_id, configuration_id = EXCLUDED.configuration_id,
            name = EXCLUDED.name, connection_details = EXCLUDED.connection_details,
            runtime_config = EXCLUDED.runtime_config, capacity = EXCLUDED.capacity,
            replica_id = EXCLUDED.replica_id,
            registration_status = 'active', health_status = 'healthy', last_health_check = now(),
            -- A healthy (re)registration starts the consecutive-failure count over.
            failure_count = 0,
            activation_date = CASE WHEN r.registration_status = 'inactive'
                                   THEN now() ELSE r.activation_date END,
            deactivation_date = NULL,
            -- A drain lasts until the instance was deactivated and registers anew.
            drain_time = CASE WHEN r.registration_status = 'inactive' THEN NULL ELSE r.drain_time END,
            drain_reason = CASE WHEN r.registration_status = 'inactive' THEN '' ELSE r.drain_reason END,
            epoch = r.epoch + 1, updated_at = now()
        RETURNING r.id, r.tenant_id, r.instance_id, r.configuration_id, r.epoch, r.health_status,
                  (r.xmax = 0) AS created),
    ev AS (
        INSERT INTO registration_events (tenant_id, registration_id, configuration_id, kind,
                                         health_status, epoch)
        SELECT up.tenant_id, up.id, up.configuration_id,
               CASE WHEN up.created THEN 'registered' ELSE 'reconnected' END,
               up.health_status, up.epoch
        FROM up)
    SELECT v.ord, up.id, up.epoch, up.created
    FROM v JOIN up ON up.tenant_id = v.tenant_id AND up.instance_id = v.instance_id;
END $$;
