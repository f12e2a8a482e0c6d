-- Operators drain an instance: it stays registered and connected but takes
-- no new work until it registers again (a new Hello or RegisterInstance).
ALTER TABLE agent_registrations
    ADD COLUMN drain_time TIMESTAMPTZ,
    ADD COLUMN drain_reason TEXT NOT NULL DEFAULT '' CHECK (length(drain_reason) <= 256);

-- As in 0003, with drain_time among the columns that routing observes.
CREATE OR REPLACE FUNCTION agentry_notify_registration() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('agentry_changes', json_build_object('k', 'r', 'id', OLD.id, 't', OLD.tenant_id)::text);
    ELSIF TG_OP = 'INSERT'
          OR (OLD.registration_status, OLD.health_status, OLD.epoch, OLD.failure_count, OLD.name,
              OLD.connection_details, OLD.runtime_config, OLD.capacity, OLD.configuration_id, OLD.drain_time)
             IS DISTINCT FROM
             (NEW.registration_status, NEW.health_status, NEW.epoch, NEW.failure_count, NEW.name,
              NEW.connection_details, NEW.runtime_config, NEW.capacity, NEW.configuration_id, NEW.drain_time) THEN
        PERFORM pg_notify('agentry_changes', json_build_object('k', 'r', 'id', NEW.id, 't', NEW.tenant_id)::text);
    END IF;
    RETURN NULL;
END $$;
