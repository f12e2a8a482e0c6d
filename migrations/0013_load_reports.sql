-- Agents' own load reports (Heartbeat.load), passed on by the registration
-- writer when they change meaningfully, so that routing on every replica
-- ranks instances by them. `load_reported_at` is when the report landed;
-- routing uses a report only while it is younger than --load-report-ttl.
ALTER TABLE agent_registrations
    ADD COLUMN load_in_flight integer,
    ADD COLUMN load_queue_depth integer,
    ADD COLUMN load_utilization double precision,
    ADD COLUMN load_metrics jsonb,
    ADD COLUMN load_reported_at timestamptz,
    -- When this activation's first report landed (the blackout starts there).
    ADD COLUMN load_first_reported_at timestamptz;

-- A change of the report notifies the feed like any other change of the row.
CREATE OR REPLACE FUNCTION agentry_notify_registration() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('agentry_changes', json_build_object(
            'kind', 'registration', 'id', OLD.id, 'tenant', OLD.tenant_id)::text);
    ELSIF TG_OP = 'INSERT'
          OR (OLD.registration_status, OLD.health_status, OLD.epoch, OLD.failure_count, OLD.name,
              OLD.connection_details, OLD.runtime_config, OLD.capacity, OLD.configuration_id, OLD.drain_time,
              OLD.load_reported_at)
             IS DISTINCT FROM
             (NEW.registration_status, NEW.health_status, NEW.epoch, NEW.failure_count, NEW.name,
              NEW.connection_details, NEW.runtime_config, NEW.capacity, NEW.configuration_id, NEW.drain_time,
              NEW.load_reported_at) THEN
        PERFORM pg_notify('agentry_changes', json_build_object(
            'kind', 'registration', 'id', NEW.id, 'tenant', NEW.tenant_id)::text);
    END IF;
    RETURN NULL;
END $$;
