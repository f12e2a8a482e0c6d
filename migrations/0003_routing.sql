-- Routing: workload leases, and change notifications that keep every
-- replica's in-memory availability view current (LISTEN agentry_changes).

CREATE TABLE workload_leases (
    id                UUID PRIMARY KEY,
    tenant_id         UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    configuration_id  UUID NOT NULL,
    registration_id   UUID NOT NULL,
    epoch             BIGINT NOT NULL,
    ttl_ms            BIGINT NOT NULL CHECK (ttl_ms > 0),
    acquired_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at        TIMESTAMPTZ NOT NULL,
    released_at       TIMESTAMPTZ,
    outcome           TEXT CHECK (outcome IN ('succeeded', 'failed', 'cancelled', 'expired')),
    CHECK ((released_at IS NULL) = (outcome IS NULL)),
    CONSTRAINT workload_leases_configuration_fkey FOREIGN KEY (tenant_id, configuration_id)
        REFERENCES agent_configurations (tenant_id, id) ON DELETE CASCADE
);
-- The sweeper's scan of expired leases, and open leases per instance.
CREATE INDEX workload_leases_open_idx ON workload_leases (expires_at) WHERE released_at IS NULL;
CREATE INDEX workload_leases_open_registration_idx ON workload_leases (registration_id) WHERE released_at IS NULL;
-- Metrics of a configuration over a period.
CREATE INDEX workload_leases_configuration_idx ON workload_leases (tenant_id, configuration_id, acquired_at);
CREATE INDEX workload_leases_released_idx ON workload_leases (released_at) WHERE released_at IS NOT NULL;

-- Payloads stay small (NOTIFY allows 8000 bytes): ids, and the workload value
-- when only the workload changed, so that the hot path needs no reload.
CREATE FUNCTION agentry_notify_configuration() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('agentry_changes', json_build_object('k', 'c', 'id', OLD.id, 't', OLD.tenant_id)::text);
    ELSIF TG_OP = 'UPDATE'
          AND (OLD.name, OLD.enabled, OLD.configuration, OLD.system_prompt, OLD.temperature,
               OLD.max_tokens, OLD.model_id, OLD.max_workload, OLD.manifest_id)
              IS NOT DISTINCT FROM
              (NEW.name, NEW.enabled, NEW.configuration, NEW.system_prompt, NEW.temperature,
               NEW.max_tokens, NEW.model_id, NEW.max_workload, NEW.manifest_id) THEN
        IF OLD.current_workload IS DISTINCT FROM NEW.current_workload THEN
            PERFORM pg_notify('agentry_changes', json_build_object(
                'k', 'w', 'id', NEW.id, 't', NEW.tenant_id, 'w', NEW.current_workload)::text);
        END IF;
    ELSE
        PERFORM pg_notify('agentry_changes', json_build_object('k', 'c', 'id', NEW.id, 't', NEW.tenant_id, 'op', TG_OP)::text);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER agent_configurations_notify AFTER INSERT OR UPDATE OR DELETE ON agent_configurations
    FOR EACH ROW EXECUTE FUNCTION agentry_notify_configuration();

-- Heartbeat writes (last_health_check, updated_at only) notify nobody.
CREATE FUNCTION agentry_notify_registration() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('agentry_changes', json_build_object('k', 'r', 'id', OLD.id, 't', OLD.tenant_id)::text);
    ELSIF TG_OP = 'INSERT'
          OR (OLD.registration_status, OLD.health_status, OLD.epoch, OLD.failure_count, OLD.name,
              OLD.connection_details, OLD.runtime_config, OLD.capacity, OLD.configuration_id)
             IS DISTINCT FROM
             (NEW.registration_status, NEW.health_status, NEW.epoch, NEW.failure_count, NEW.name,
              NEW.connection_details, NEW.runtime_config, NEW.capacity, NEW.configuration_id) THEN
        PERFORM pg_notify('agentry_changes', json_build_object('k', 'r', 'id', NEW.id, 't', NEW.tenant_id)::text);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER agent_registrations_notify AFTER INSERT OR UPDATE OR DELETE ON agent_registrations
    FOR EACH ROW EXECUTE FUNCTION agentry_notify_registration();

CREATE FUNCTION agentry_notify_manifest() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('agentry_changes', json_build_object(
        'k', 'm', 'id', CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER agent_manifests_notify AFTER INSERT OR UPDATE OR DELETE ON agent_manifests
    FOR EACH ROW EXECUTE FUNCTION agentry_notify_manifest();

-- Open leases per instance rank instances inside a configuration: +1 / -1.
CREATE FUNCTION agentry_notify_lease() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('agentry_changes', json_build_object(
            'k', 'l', 'id', NEW.registration_id, 't', NEW.tenant_id, 'd', 1)::text);
    ELSIF OLD.released_at IS NULL AND NEW.released_at IS NOT NULL THEN
        PERFORM pg_notify('agentry_changes', json_build_object(
            'k', 'l', 'id', NEW.registration_id, 't', NEW.tenant_id, 'd', -1)::text);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER workload_leases_notify AFTER INSERT OR UPDATE ON workload_leases
    FOR EACH ROW EXECUTE FUNCTION agentry_notify_lease();
