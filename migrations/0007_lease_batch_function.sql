-- One lease writer batch in one statement.
--
-- The writer used to run a batch as BEGIN, six statements and COMMIT: eight
-- round trips, each a wake-up of a backend on a machine whose cores the
-- server and its callers also want. The writer is one task, so those round
-- trips bounded the whole server's leases per second. The same work as one
-- function call is one round trip, atomic as any single statement.
--
-- Releases come first, so that the units they free serve this batch's
-- reservations. Configurations are then locked in id order (two batches
-- never deadlock on them) and every grant is decided against the locked
-- values: current_workload never passes max_workload, on any number of
-- replicas.
--
-- Arguments, all arrays:
--   rel_*:  the releases (lease id, tenant, outcome);
--   res_*:  the reservations, in order (tenant, ttl, the id a grant gets);
--   cand_*: their candidates, grouped by reservation in preference order
--           (reservation index, 0-based, then configuration and registration).
-- Returns one row per released lease (reservation NULL) and one per grant.
CREATE FUNCTION agentry_lease_batch(
    rel_ids uuid[], rel_tenants uuid[], rel_outcomes text[],
    res_tenants uuid[], res_ttls bigint[], res_leases uuid[],
    cand_res int[], cand_configs uuid[], cand_regs uuid[])
RETURNS TABLE (lease_id uuid, reservation int, candidate int, epoch bigint, workload int,
               acquired_at timestamptz, expires_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    released_ids uuid[];
    released_configs uuid[];
    cfg_ids uuid[]; cfg_tenants uuid[]; cfg_enabled boolean[]; cfg_work int[]; cfg_max int[];
    cfg_start int[];
    reg_ids uuid[]; reg_tenants uuid[]; reg_configs uuid[]; reg_epochs bigint[];
    g_res int[] := '{}'; g_cand int[] := '{}'; g_configs uuid[] := '{}'; g_regs uuid[] := '{}';
    g_epochs bigint[] := '{}'; g_work int[] := '{}';
    k int; r int; p int; q int; n int; grp int; released_config uuid;
    granted boolean;
BEGIN
    WITH done AS (
        UPDATE workload_leases l SET released_at = now(), outcome = u.outcome
        FROM unnest(rel_ids, rel_tenants, rel_outcomes) AS u(id, tenant_id, outcome)
        WHERE l.id = u.id AND l.tenant_id = u.tenant_id AND l.released_at IS NULL
        RETURNING l.id, l.configuration_id)
    SELECT coalesce(array_agg(done.id), '{}'), coalesce(array_agg(done.configuration_id), '{}')
      INTO released_ids, released_configs FROM done;

    SELECT coalesce(array_agg(c.id ORDER BY c.id), '{}'), array_agg(c.tenant_id ORDER BY c.id),
           array_agg(c.enabled ORDER BY c.id), array_agg(c.current_workload ORDER BY c.id),
           array_agg(c.max_workload ORDER BY c.id)
      INTO cfg_ids, cfg_tenants, cfg_enabled, cfg_work, cfg_max
      FROM (SELECT ac.id, ac.tenant_id, ac.enabled, ac.current_workload, ac.max_workload
            FROM agent_configurations ac
            WHERE ac.id = ANY (cand_configs || released_configs)
            ORDER BY ac.id FOR UPDATE) AS c;
    cfg_start := cfg_work;

    FOREACH released_config IN ARRAY released_configs LOOP
        p := array_position(cfg_ids, released_config);
        IF p IS NOT NULL THEN
            cfg_work[p] := greatest(cfg_work[p] - 1, 0);
        END IF;
    END LOOP;

    -- Instances still routable, with the epoch their leases carry. Read by
    -- primary key alone (the OFFSET keeps the status out of the index
    -- choice: combined with the partial index of active rows, which every
    -- heartbeat flush churns, the plan costs milliseconds).
    SELECT coalesce(array_agg(s.id), '{}'), array_agg(s.tenant_id), array_agg(s.configuration_id),
           array_agg(s.epoch)
      INTO reg_ids, reg_tenants, reg_configs, reg_epochs
      FROM (SELECT ar.id, ar.tenant_id, ar.configuration_id, ar.epoch, ar.registration_status,
                   ar.health_status, ar.drain_time
            FROM agent_registrations ar WHERE ar.id = ANY (cand_regs) OFFSET 0) AS s
     WHERE s.registration_status = 'active' AND s.health_status IN ('healthy', 'degraded')
       AND s.drain_time IS NULL;

    -- The first candidate of each reservation that fits is taken.
    n := coalesce(array_length(cand_res, 1), 0);
    k := 1;
    WHILE k <= n LOOP
        r := cand_res[k];
        grp := k;
        granted := false;
        WHILE k <= n AND cand_res[k] = r LOOP
            IF NOT granted THEN
                p := array_position(cfg_ids, cand_configs[k]);
                q := array_position(reg_ids, cand_regs[k]);
                IF p IS NOT NULL AND q IS NOT NULL
                   AND cfg_tenants[p] = res_tenants[r + 1] AND reg_tenants[q] = res_tenants[r + 1]
                   AND reg_configs[q] = cfg_ids[p] AND cfg_enabled[p]
                   AND cfg_work[p] < cfg_max[p] THEN
                    cfg_work[p] := cfg_work[p] + 1;
                    granted := true;
                    g_res := g_res || r;
                    g_cand := g_cand || (k - grp);
                    g_configs := g_configs || cfg_ids[p];
                    g_regs := g_regs || cand_regs[k];
                    g_epochs := g_epochs || reg_epochs[q];
                    g_work := g_work || cfg_work[p];
                END IF;
            END IF;
            k := k + 1;
        END LOOP;
    END LOOP;

    UPDATE agent_configurations c SET current_workload = u.work, updated_at = now()
      FROM unnest(cfg_ids, cfg_work, cfg_start) AS u(id, work, work0)
     WHERE c.id = u.id AND u.work <> u.work0;

    RETURN QUERY SELECT d, NULL::int, NULL::int, NULL::bigint, NULL::int,
                        NULL::timestamptz, NULL::timestamptz
                 FROM unnest(released_ids) AS d;

    RETURN QUERY
    WITH ins AS (
        INSERT INTO workload_leases
            (id, tenant_id, configuration_id, registration_id, epoch, ttl_ms, expires_at)
        SELECT res_leases[g.res + 1], res_tenants[g.res + 1], g.config, g.reg, g.epoch,
               res_ttls[g.res + 1], now() + res_ttls[g.res + 1] * interval '1 millisecond'
        FROM unnest(g_res, g_configs, g_regs, g_epochs) AS g(res, config, reg, epoch)
        RETURNING workload_leases.id, workload_leases.acquired_at, workload_leases.expires_at)
    SELECT ins.id, g.res, g.cand, g.epoch, g.work, ins.acquired_at, ins.expires_at
      FROM unnest(g_res, g_cand, g_epochs, g_work) AS g(res, cand, epoch, work)
      JOIN ins ON ins.id = res_leases[g.res + 1];
END $$;
