-- Registrations in batches (server/registrations/hellos.rs).
--
-- A fleet that reconnects at once sends thousands of Hellos within a second.
-- One transaction each (look up the manifest, create the configuration if
-- missing, upsert the registration, record the event) queued them on the
-- pool at about 650 a second here. This function does the same for a whole
-- batch in one statement: one round trip and one commit.
--
-- A batch names each (tenant, instance) at most once (the caller keeps a
-- second Hello of the same instance for the next batch: ON CONFLICT cannot
-- update one row twice in a statement). Rows are written in key order, so
-- two replicas' batches take their row locks in the same order.

-- What an instance says about itself; `ord` is its place in the batch.
CREATE TYPE agentry_announcement AS (
    ord int, tenant_id uuid, instance_id text, agent_id text, name text,
    connection_details jsonb, runtime_config jsonb, capacity int);

-- Returns one row per announcement whose manifest exists: its place in the
-- batch, the registration's id, the epoch this registration gave it (a later
-- one may follow at once) and whether it was created. An announcement
-- of an unknown agent_id has no row (unless create_manifests, which creates
-- a placeholder manifest for it).
CREATE FUNCTION agentry_register_batch(items agentry_announcement[], create_manifests boolean)
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
               i.runtime_config, i.capacity, m.id AS manifest_id, c.id AS configuration_id
        FROM unnest(items) AS i
        JOIN agent_manifests m ON m.agent_id = i.agent_id
        JOIN agent_configurations c ON c.tenant_id = i.tenant_id AND c.manifest_id = m.id),
    up AS (
        INSERT INTO agent_registrations AS r (id, tenant_id, manifest_id, configuration_id,
            instance_id, name, connection_details, runtime_config, capacity)
        SELECT gen_random_uuid(), v.tenant_id, v.manifest_id, v.configuration_id, v.instance_id,
               v.name, v.connection_details, v.runtime_config, v.capacity
        FROM v ORDER BY v.tenant_id, v.instance_id
        ON CONFLICT (tenant_id, instance_id) DO UPDATE SET
            manifest_id = EXCLUDED.manifest_id, configuration_id = EXCLUDED.configuration_id,
            name = EXCLUDED.name, connection_details = EXCLUDED.connection_details,
            runtime_config = EXCLUDED.runtime_config, capacity = EXCLUDED.capacity,
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
