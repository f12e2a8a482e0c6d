-- Idempotent reservations (AIP-155). AcquireAgent takes an optional
-- request_id; the server derives the lease id from it and the caller's
-- tenant (a name-based UUID), so a repeat of the call names the same lease.
-- The batch answers a reservation whose lease exists already with kind
-- 'replayed' (lease_id, reservation) and reserves nothing for it; the
-- server answers that lease as it is now. Two replicas granting the same
-- new id at once collide on the primary key: the loser's batch rolls back
-- and runs again, and then finds the lease.
--
-- Rows as in 0011, plus kind 'replayed'. Same signature, so a server one
-- release older (which never sends a known id) keeps working.
CREATE OR REPLACE FUNCTION agentry_lease_batch(
    releases agentry_lease_release[],
    reservations agentry_lease_reservation[],
    candidates agentry_lease_candidate[])
RETURNS TABLE (kind text, lease_id uuid, reservation int, candidate int, configuration_id uuid,
               epoch bigint, workload int, acquired_at timestamptz, expires_at timestamptz,
               drift int)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    released_ids uuid[];
    released_configs uuid[];
    -- Locked configurations, by position (1-based), in id order.
    cfg_ids uuid[]; cfg_tenants uuid[]; cfg_enabled boolean[]; cfg_work int[]; cfg_max int[];
    cfg_manual int[];
    cfg_start int[]; cfg_released int[];
    -- Routable instances among the candidates, by position.
    reg_ids uuid[]; reg_tenants uuid[]; reg_configs uuid[]; reg_epochs bigint[];
    -- Candidates, by position: their reservation, and where their configuration
    -- and instance are in the arrays above (0: not there). Arrays of
    -- fixed-size elements without NULLs, so a subscript costs O(1).
    cand_res int[]; cand_tenant uuid[]; cand_cfg int[]; cand_reg int[]; cand_regid uuid[];
    -- Grants and drifts, assigned by index.
    g_res int[] := '{}'; g_cand int[] := '{}'; g_configs uuid[] := '{}'; g_regs uuid[] := '{}';
    g_epochs bigint[] := '{}'; g_work int[] := '{}';
    gn int := 0;
    d_configs uuid[] := '{}'; d_units int[] := '{}';
    dn int := 0;
    i int; k int; n int; r int; grp int; p int; q int;
    granted boolean;
    -- Reservations (0-based) whose lease exists already: repeats.
    replayed int[];
BEGIN
    WITH done AS (
        UPDATE workload_leases l SET released_at = now(), outcome = u.outcome
        FROM unnest(releases) AS u
        WHERE l.id = u.lease_id AND l.tenant_id = u.tenant_id AND l.released_at IS NULL
        RETURNING l.id, l.configuration_id)
    SELECT coalesce(array_agg(done.id), '{}'), coalesce(array_agg(done.configuration_id), '{}')
      INTO released_ids, released_configs FROM done;

    -- A reservation whose lease id names a lease of its tenant is a repeat
    -- (the id comes from the caller's request id): it reserves nothing and
    -- answers that lease.
    SELECT coalesce(array_agg(rv.rpos::int - 1), '{}') INTO replayed
      FROM unnest(reservations) WITH ORDINALITY AS rv(lease_id, tenant_id, ttl_ms, rpos)
      JOIN workload_leases l ON l.id = rv.lease_id AND l.tenant_id = rv.tenant_id;

    -- Locked in id order, with the units this batch gives back to each.
    SELECT coalesce(array_agg(c.id ORDER BY c.id), '{}'), array_agg(c.tenant_id ORDER BY c.id),
           array_agg(c.enabled ORDER BY c.id), array_agg(c.current_workload ORDER BY c.id),
           array_agg(c.max_workload ORDER BY c.id), array_agg(c.manual_workload ORDER BY c.id),
           coalesce(array_agg(coalesce(x.n, 0) ORDER BY c.id), '{}')
      INTO cfg_ids, cfg_tenants, cfg_enabled, cfg_work, cfg_max, cfg_manual, cfg_released
      FROM (SELECT ac.id, ac.tenant_id, ac.enabled, ac.current_workload, ac.max_workload,
                   ac.manual_workload
            FROM agent_configurations ac
            WHERE ac.id IN (SELECT u.configuration_id FROM unnest(candidates) AS u
                            UNION SELECT unnest(released_configs))
            ORDER BY ac.id FOR UPDATE) AS c
      LEFT JOIN (SELECT rc AS id, count(*)::int AS n FROM unnest(released_configs) AS rc GROUP BY rc) x
        ON x.id = c.id;
    cfg_start := cfg_work;

    FOR i IN 1 .. coalesce(array_length(cfg_ids, 1), 0) LOOP
        cfg_work[i] := cfg_work[i] - cfg_released[i];
        IF cfg_work[i] < cfg_manual[i] THEN
            dn := dn + 1;
            d_configs[dn] := cfg_ids[i];
            d_units[dn] := cfg_manual[i] - cfg_work[i];
            cfg_work[i] := cfg_manual[i];
        END IF;
    END LOOP;

    -- Routable instances, with the epoch their leases carry. Read by primary
    -- key alone (the OFFSET keeps the status out of the index choice:
    -- combined with the partial index of active rows, which every heartbeat
    -- flush churns, the plan costs milliseconds).
    SELECT coalesce(array_agg(s.id), '{}'), array_agg(s.tenant_id), array_agg(s.configuration_id),
           array_agg(s.epoch)
      INTO reg_ids, reg_tenants, reg_configs, reg_epochs
      FROM (SELECT ar.id, ar.tenant_id, ar.configuration_id, ar.epoch, ar.routable
            FROM agent_registrations ar
            WHERE ar.id IN (SELECT u.registration_id FROM unnest(candidates) AS u) OFFSET 0) AS s
     WHERE s.routable;

    -- Per candidate: its reservation and that reservation's tenant, and
    -- where its configuration and instance are in the arrays above.
    SELECT coalesce(array_agg(c.reservation ORDER BY c.pos), '{}'),
           coalesce(array_agg(rv.tenant_id ORDER BY c.pos), '{}'),
           coalesce(array_agg(coalesce(cp.pos, 0)::int ORDER BY c.pos), '{}'),
           coalesce(array_agg(coalesce(rp.pos, 0)::int ORDER BY c.pos), '{}'),
           coalesce(array_agg(c.registration_id ORDER BY c.pos), '{}')
      INTO cand_res, cand_tenant, cand_cfg, cand_reg, cand_regid
      FROM unnest(candidates) WITH ORDINALITY AS c(reservation, configuration_id, registration_id, pos)
      JOIN unnest(reservations) WITH ORDINALITY AS rv(lease_id, tenant_id, ttl_ms, rpos)
        ON rv.rpos = c.reservation + 1
      LEFT JOIN unnest(cfg_ids) WITH ORDINALITY AS cp(id, pos) ON cp.id = c.configuration_id
      LEFT JOIN unnest(reg_ids) WITH ORDINALITY AS rp(id, pos) ON rp.id = c.registration_id;

    -- The first candidate of each reservation that fits is taken.
    n := coalesce(array_length(cand_res, 1), 0);
    k := 1;
    WHILE k <= n LOOP
        r := cand_res[k];
        grp := k;
        granted := false;
        WHILE k <= n AND cand_res[k] = r LOOP
            IF NOT granted AND NOT (r = ANY(replayed)) THEN
                p := cand_cfg[k];
                q := cand_reg[k];
                IF p > 0 AND q > 0
                   AND cfg_tenants[p] = cand_tenant[k] AND reg_tenants[q] = cand_tenant[k]
                   AND reg_configs[q] = cfg_ids[p] AND cfg_enabled[p]
                   AND cfg_work[p] < cfg_max[p] THEN
                    cfg_work[p] := cfg_work[p] + 1;
                    granted := true;
                    gn := gn + 1;
                    g_res[gn] := r;
                    g_cand[gn] := k - grp;
                    g_configs[gn] := cfg_ids[p];
                    g_regs[gn] := cand_regid[k];
                    g_epochs[gn] := reg_epochs[q];
                    g_work[gn] := cfg_work[p];
                END IF;
            END IF;
            k := k + 1;
        END LOOP;
    END LOOP;

    UPDATE agent_configurations c SET current_workload = u.work, updated_at = now()
      FROM unnest(cfg_ids, cfg_work, cfg_start) AS u(id, work, work0)
     WHERE c.id = u.id AND u.work <> u.work0;

    RETURN QUERY SELECT 'released'::text, d, NULL::int, NULL::int, NULL::uuid, NULL::bigint,
                        NULL::int, NULL::timestamptz, NULL::timestamptz, NULL::int
                 FROM unnest(released_ids) AS d;

    RETURN QUERY SELECT 'drift'::text, NULL::uuid, NULL::int, NULL::int, x.id, NULL::bigint,
                        NULL::int, NULL::timestamptz, NULL::timestamptz, x.units
                 FROM unnest(d_configs, d_units) AS x(id, units);

    RETURN QUERY SELECT 'replayed'::text, rv.lease_id, rv.rpos::int - 1, NULL::int, NULL::uuid,
                        NULL::bigint, NULL::int, NULL::timestamptz, NULL::timestamptz, NULL::int
                 FROM unnest(reservations) WITH ORDINALITY AS rv(lease_id, tenant_id, ttl_ms, rpos)
                 WHERE rv.rpos::int - 1 = ANY(replayed);

    RETURN QUERY
    WITH g AS (
        SELECT x.res, x.cand, x.config, x.reg, x.epoch, x.work, rv.lease_id, rv.tenant_id, rv.ttl_ms
        FROM unnest(g_res, g_cand, g_configs, g_regs, g_epochs, g_work)
             AS x(res, cand, config, reg, epoch, work)
        JOIN unnest(reservations) WITH ORDINALITY AS rv(lease_id, tenant_id, ttl_ms, pos)
          ON rv.pos = x.res + 1),
    ins AS (
        INSERT INTO workload_leases
            (id, tenant_id, configuration_id, registration_id, epoch, ttl_ms, expires_at)
        SELECT g.lease_id, g.tenant_id, g.config, g.reg, g.epoch, g.ttl_ms,
               now() + g.ttl_ms * interval '1 millisecond'
        FROM g
        RETURNING workload_leases.id, workload_leases.acquired_at, workload_leases.expires_at)
    SELECT 'granted'::text, ins.id, g.res, g.cand, g.config, g.epoch, g.work,
           ins.acquired_at, ins.expires_at, NULL::int
      FROM g JOIN ins ON ins.id = g.lease_id;
END $$;
