-- Registration lifecycle events (registered, reconnected, health changed,
-- superseded, deactivated, swept), kept for metrics and bounded by retention.
CREATE TABLE registration_events (
    id                BIGSERIAL PRIMARY KEY,
    tenant_id         UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    registration_id   UUID NOT NULL,
    configuration_id  UUID NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('registered', 'reconnected', 'health_changed',
                                                    'superseded', 'deactivated', 'swept', 'failed')),
    health_status     TEXT NOT NULL CHECK (health_status IN ('healthy', 'degraded', 'unknown', 'disconnected')),
    epoch             BIGINT NOT NULL,
    at                TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX registration_events_configuration_idx ON registration_events (tenant_id, configuration_id, at);
CREATE INDEX registration_events_at_idx ON registration_events (at);

-- The sweeper's scan: active instances by staleness.
CREATE INDEX agent_registrations_stale_idx ON agent_registrations (last_health_check)
    WHERE registration_status = 'active';
-- Retention of inactive registrations.
CREATE INDEX agent_registrations_inactive_idx ON agent_registrations (deactivation_date)
    WHERE registration_status = 'inactive';
