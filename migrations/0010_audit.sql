-- The audit log: every change made with an admin or tenant key, or by the
-- server's command line, written in the transaction of the change, so a
-- change that rolls back leaves no event. No foreign keys: the log outlives
-- the keys, tenants and objects it names. Bounded by the sweeper's
-- --audit-retention.
CREATE TABLE audit_events (
    id                UUID PRIMARY KEY,
    at                TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- NULL: the server's command line (role 'operator').
    key_id            UUID,
    role              TEXT NOT NULL CHECK (role IN ('admin', 'tenant', 'agent', 'operator')),
    -- The key's tenant: NULL for admin keys and the command line.
    tenant_id         UUID,
    action            TEXT NOT NULL CHECK (action ~ '^[a-z_]+\.[a-z_]+$'),
    target_kind       TEXT NOT NULL CHECK (target_kind ~ '^[a-z_]+$'),
    target_id         UUID,
    -- The tenant the target belongs to: NULL for system-wide objects.
    target_tenant_id  UUID,
    details           JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(details) = 'object'),
    CHECK ((role = 'operator') = (key_id IS NULL)),
    CHECK ((role IN ('admin', 'operator')) = (tenant_id IS NULL))
);
-- Listings, newest first: everything (admins), a tenant's (its keys' events
-- and those about its objects), and the retention delete.
CREATE INDEX audit_events_at_idx ON audit_events (at DESC, id DESC);
CREATE INDEX audit_events_tenant_idx ON audit_events (tenant_id, at DESC, id DESC)
    WHERE tenant_id IS NOT NULL;
CREATE INDEX audit_events_target_tenant_idx ON audit_events (target_tenant_id, at DESC, id DESC)
    WHERE target_tenant_id IS NOT NULL;
CREATE INDEX audit_events_target_idx ON audit_events (target_id, at DESC, id DESC)
    WHERE target_id IS NOT NULL;
