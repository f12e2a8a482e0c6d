-- Lease changes come in batches now (the lease writer applies many
-- reservations and releases in one transaction), which showed two things.
--
-- 1. PostgreSQL folds identical notifications of one transaction into one:
--    two leases of one instance sent the same +1/-1 payload, and the
--    replicas' open-lease counts drifted (the sweeper's expiry, which ends
--    many leases in one statement, had the same flaw). Notifications are now
--    per statement and instance, carrying the count, and a sequence number
--    keeps each one distinct.
-- 2. Per-row triggers cost more than the rest of a lease's insert. One
--    notification per instance and statement costs far less, and the
--    tenant foreign key was redundant: the (tenant_id, configuration_id)
--    key already ties a lease to its tenant's configuration, and deleting a
--    tenant deletes its configurations, which deletes their leases.

CREATE SEQUENCE agentry_notify_seq;

DROP TRIGGER workload_leases_notify ON workload_leases;
DROP FUNCTION agentry_notify_lease();
ALTER TABLE workload_leases DROP CONSTRAINT workload_leases_tenant_id_fkey;

CREATE FUNCTION agentry_notify_leases_opened() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('agentry_changes', json_build_object(
        'k', 'l', 'id', registration_id, 't', tenant_id, 'd', n, 's', nextval('agentry_notify_seq'))::text)
    FROM (SELECT registration_id, tenant_id, count(*) AS n FROM opened GROUP BY 1, 2) AS per_instance;
    RETURN NULL;
END $$;
CREATE TRIGGER workload_leases_notify_opened AFTER INSERT ON workload_leases
    REFERENCING NEW TABLE AS opened
    FOR EACH STATEMENT EXECUTE FUNCTION agentry_notify_leases_opened();

CREATE FUNCTION agentry_notify_leases_closed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('agentry_changes', json_build_object(
        'k', 'l', 'id', registration_id, 't', tenant_id, 'd', -n, 's', nextval('agentry_notify_seq'))::text)
    FROM (SELECT a.registration_id, a.tenant_id, count(*) AS n
          FROM before AS b JOIN after AS a ON a.id = b.id
          WHERE b.released_at IS NULL AND a.released_at IS NOT NULL
          GROUP BY 1, 2) AS per_instance;
    RETURN NULL;
END $$;
CREATE TRIGGER workload_leases_notify_closed AFTER UPDATE ON workload_leases
    REFERENCING OLD TABLE AS before NEW TABLE AS after
    FOR EACH STATEMENT EXECUTE FUNCTION agentry_notify_leases_closed();
