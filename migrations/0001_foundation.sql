-- Foundation schema: tenants, API keys and the three tiers (manifests,
-- configurations, registrations). Integrity is enforced here too, not only in
-- the service: enums and ranges are CHECKed and references are foreign keys.

CREATE TABLE tenants (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Only a SHA-256 of each secret is kept. Admin keys belong to no tenant;
-- tenant and agent keys belong to exactly one.
CREATE TABLE api_keys (
    id           UUID PRIMARY KEY,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'tenant', 'agent')),
    tenant_id    UUID REFERENCES tenants (id) ON DELETE CASCADE,
    secret_hash  BYTEA NOT NULL CHECK (octet_length(secret_hash) = 32),
    description  TEXT NOT NULL DEFAULT '' CHECK (length(description) <= 256),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at   TIMESTAMPTZ,
    CHECK ((role = 'admin') = (tenant_id IS NULL))
);
CREATE INDEX api_keys_list_idx ON api_keys (created_at DESC, id DESC);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, created_at DESC, id DESC);

-- Tier 1: system-wide blueprints of agent kinds.
CREATE TABLE agent_manifests (
    id            UUID PRIMARY KEY,
    agent_id      TEXT NOT NULL UNIQUE CHECK (agent_id ~ '^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$'),
    agent_type    TEXT NOT NULL CHECK (agent_type ~ '^[a-z0-9]([a-z0-9_-]{0,62}[a-z0-9])?$'),
    name          TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 256),
    description   TEXT NOT NULL DEFAULT '',
    version       TEXT NOT NULL CHECK (length(version) BETWEEN 5 AND 64),
    capabilities  JSONB NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(capabilities) = 'array'),
    requirements  TEXT NOT NULL DEFAULT '',
    metadata      JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    status        TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'beta', 'deprecated')),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX agent_manifests_type_idx ON agent_manifests (agent_type, agent_id);
CREATE INDEX agent_manifests_capabilities_idx ON agent_manifests USING GIN (capabilities);

-- Tier 2: how one tenant uses one manifest.
-- temperature is DOUBLE PRECISION rather than the seed's NUMERIC: it is a
-- sampling knob, exact decimal arithmetic buys nothing.
CREATE TABLE agent_configurations (
    id                UUID PRIMARY KEY,
    tenant_id         UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    manifest_id       UUID NOT NULL REFERENCES agent_manifests (id) ON DELETE RESTRICT,
    name              TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 256),
    enabled           BOOLEAN NOT NULL DEFAULT true,
    configuration     JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(configuration) = 'object'),
    system_prompt     TEXT NOT NULL DEFAULT '',
    temperature       DOUBLE PRECISION CHECK (temperature BETWEEN 0 AND 2),
    max_tokens        INTEGER CHECK (max_tokens > 0),
    model_id          UUID,
    max_workload      INTEGER NOT NULL DEFAULT 10 CHECK (max_workload > 0),
    current_workload  INTEGER NOT NULL DEFAULT 0,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT agent_configurations_workload_range
        CHECK (current_workload >= 0 AND current_workload <= max_workload),
    CONSTRAINT agent_configurations_tenant_manifest_key UNIQUE (tenant_id, manifest_id),
    -- Lets registrations reference (tenant_id, id) so a registration can never
    -- point at another tenant's configuration.
    CONSTRAINT agent_configurations_tenant_id_key UNIQUE (tenant_id, id)
);
CREATE INDEX agent_configurations_list_idx ON agent_configurations (tenant_id, created_at, id);
CREATE INDEX agent_configurations_manifest_idx ON agent_configurations (manifest_id);

-- Tier 3: running instances. Deviation from the seed, on purpose: instance_id
-- is unique per tenant, not globally, so one tenant can neither collide with
-- nor take over another tenant's instance.
CREATE TABLE agent_registrations (
    id                   UUID PRIMARY KEY,
    tenant_id            UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    manifest_id          UUID NOT NULL REFERENCES agent_manifests (id) ON DELETE RESTRICT,
    configuration_id     UUID NOT NULL,
    instance_id          TEXT NOT NULL CHECK (length(instance_id) BETWEEN 1 AND 256),
    name                 TEXT NOT NULL DEFAULT '',
    registration_status  TEXT NOT NULL DEFAULT 'active'
                         CHECK (registration_status IN ('active', 'inactive')),
    health_status        TEXT NOT NULL DEFAULT 'healthy'
                         CHECK (health_status IN ('healthy', 'degraded', 'unknown', 'disconnected')),
    connection_details   JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(connection_details) = 'object'),
    runtime_config       JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(runtime_config) = 'object'),
    capacity             INTEGER CHECK (capacity > 0),
    epoch                BIGINT NOT NULL DEFAULT 1 CHECK (epoch > 0),
    activation_date      TIMESTAMPTZ NOT NULL DEFAULT now(),
    deactivation_date    TIMESTAMPTZ,
    last_health_check    TIMESTAMPTZ NOT NULL DEFAULT now(),
    failure_count        INTEGER NOT NULL DEFAULT 0 CHECK (failure_count >= 0),
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT agent_registrations_tenant_instance_key UNIQUE (tenant_id, instance_id),
    CONSTRAINT agent_registrations_configuration_fkey FOREIGN KEY (tenant_id, configuration_id)
        REFERENCES agent_configurations (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX agent_registrations_list_idx ON agent_registrations (tenant_id, created_at, id);
CREATE INDEX agent_registrations_configuration_idx ON agent_registrations (configuration_id);
CREATE INDEX agent_registrations_manifest_idx ON agent_registrations (manifest_id);
