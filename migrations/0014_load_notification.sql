-- A load-only change of a registration carries the report in its
-- notification, so that no replica reads the row back for it.
--
-- Before, every report the registration writer passed on (about 2,000 a
-- second for 10,000 agents whose load moves) notified
-- {"kind": "registration", "id", "tenant"}, and every replica's feed read the
-- whole row (manifest joined, JSON columns decoded) to learn four numbers.
-- Now an update that changes nothing routing reads of the row except the
-- report (the tuple below is the one of migrations 0008 and 0013 without
-- load_reported_at) sends, on `agentry_changes` (see 0008 for the others):
--
--   {"kind": "load", "id", "tenant", "configuration", "epoch",
--    "in_flight", "queue_depth", "utilization", "metrics",
--    "reported_at", "first_reported_at", "last_health_check", "updated_at"}
--
-- The load values are the row's new load_* columns (all null, with
-- reported_at, when the agent stopped reporting); "metrics" is the jsonb
-- object of named metrics; timestamps are ISO 8601 with an offset. `epoch`
-- and `updated_at` let a replica ignore a report older than the row it
-- already holds (one read by a snapshot taken after the report committed).
-- A write that changes the report and anything else still sends
-- {"kind": "registration", ...} and the row is read as before.
CREATE OR REPLACE FUNCTION agentry_notify_registration() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('agentry_changes', json_build_object(
            'kind', 'registration', 'id', OLD.id, 'tenant', OLD.tenant_id)::text);
    ELSIF TG_OP = 'INSERT'
          OR (OLD.registration_status, OLD.health_status, OLD.epoch, OLD.failure_count, OLD.name,
              OLD.connection_details, OLD.runtime_config, OLD.capacity, OLD.configuration_id, OLD.drain_time)
             IS DISTINCT FROM
             (NEW.registration_status, NEW.health_status, NEW.epoch, NEW.failure_count, NEW.name,
              NEW.connection_details, NEW.runtime_config, NEW.capacity, NEW.configuration_id, NEW.drain_time) THEN
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
