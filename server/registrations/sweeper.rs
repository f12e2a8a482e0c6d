//! The stale-instance sweep, run by a background task and by the `Cleanup` RPC.
//! It also expires workload leases that were neither released nor renewed.
//!
//! One sweep is one transaction holding a transaction-level advisory lock, so
//! replicas sharing a database never sweep at the same time; a replica that
//! finds the lock taken skips its turn.
//!
//! Partition guard (after Eureka's self-preservation): when the instances that
//! would be deactivated in one sweep are at least `guard_ratio` of the active
//! instances of a tenant (or of all tenants), and at least
//! `guard_min_instances` of them, the sweep only marks them unknown and logs a
//! warning. Mass silence is more likely the registry's own network trouble
//! than a whole fleet dying at once; deactivation resumes when the share drops,
//! or when an operator calls `Cleanup` with `ignore_partition_guard`.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::error::Result;

/// Arbitrary, fixed key of the sweep's advisory lock.
const SWEEP_LOCK: i64 = 0x0061_6765_6e74_7279;

/// How a sweep behaves.
#[derive(Debug, Clone)]
pub struct SweepSettings {
    /// Silence after which an instance is marked unknown; three times this, inactive.
    pub stale_threshold: Duration,
    /// Share of active instances whose deactivation in one sweep trips the guard.
    pub guard_ratio: f64,
    /// Fewest deactivations that can trip the guard.
    pub guard_min_instances: i64,
    /// Skip the guard (operator's decision).
    pub ignore_guard: bool,
    /// Delete inactive registrations deactivated longer ago than this.
    pub retention: Option<Duration>,
    /// Delete registration events older than this.
    pub event_retention: Duration,
}

/// What a sweep changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub marked_unknown: i64,
    pub deactivated: i64,
    pub deleted: i64,
    pub leases_expired: i64,
    pub guard_tripped: bool,
    /// False when another replica held the sweep lock.
    pub ran: bool,
}

fn interval(d: Duration) -> sqlx::postgres::types::PgInterval {
    sqlx::postgres::types::PgInterval {
        months: 0,
        days: 0,
        microseconds: i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
    }
}

/// Runs one sweep.
pub async fn sweep(pool: &PgPool, s: &SweepSettings) -> Result<SweepReport> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(SWEEP_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(SweepReport::default());
    }
    let stale = interval(s.stale_threshold);
    let gone = interval(s.stale_threshold * 3);

    let marked_unknown = sqlx::query(
        "WITH stale AS (UPDATE agent_registrations SET health_status = 'unknown', \
           failure_count = failure_count + 1, updated_at = now() \
           WHERE registration_status = 'active' AND health_status IN ('healthy', 'degraded') \
             AND last_health_check < now() - $1 \
           RETURNING id, tenant_id, configuration_id, epoch) \
         INSERT INTO registration_events (tenant_id, registration_id, configuration_id, kind, health_status, epoch) \
         SELECT tenant_id, id, configuration_id, 'swept', 'unknown', epoch FROM stale",
    )
    .bind(stale)
    .execute(&mut *tx)
    .await?
    .rows_affected() as i64;

    // Per tenant: active instances, and those silent long enough to deactivate.
    let counts: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "SELECT tenant_id, count(*), count(*) FILTER (WHERE last_health_check < now() - $1) \
         FROM agent_registrations WHERE registration_status = 'active' GROUP BY tenant_id",
    )
    .bind(gone)
    .fetch_all(&mut *tx)
    .await?;
    let trips = |active: i64, candidates: i64| {
        !s.ignore_guard
            && candidates >= s.guard_min_instances
            && candidates as f64 >= s.guard_ratio * active as f64
    };
    let (all_active, all_candidates) = counts
        .iter()
        .fold((0, 0), |(a, c), (_, ta, tc)| (a + ta, c + tc));
    let held: Vec<Uuid> = if trips(all_active, all_candidates) {
        counts.iter().map(|(t, _, _)| *t).collect()
    } else {
        counts
            .iter()
            .filter(|(_, a, c)| trips(*a, *c))
            .map(|(t, _, _)| *t)
            .collect()
    };
    if !held.is_empty() {
        tracing::warn!(
            tenants = held.len(),
            candidates = all_candidates,
            active = all_active,
            "partition guard: too many instances went silent at once; marking them unknown but not deactivating"
        );
    }

    let deactivated = sqlx::query(
        "WITH gone AS (UPDATE agent_registrations SET registration_status = 'inactive', \
           health_status = 'disconnected', deactivation_date = now(), updated_at = now() \
           WHERE registration_status = 'active' AND last_health_check < now() - $1 \
             AND NOT (tenant_id = ANY($2)) \
           RETURNING id, tenant_id, configuration_id, epoch) \
         INSERT INTO registration_events (tenant_id, registration_id, configuration_id, kind, health_status, epoch) \
         SELECT tenant_id, id, configuration_id, 'deactivated', 'disconnected', epoch FROM gone",
    )
    .bind(gone)
    .bind(&held)
    .execute(&mut *tx)
    .await?
    .rows_affected() as i64;

    let deleted = match s.retention {
        Some(retention) => sqlx::query(
            "DELETE FROM agent_registrations WHERE registration_status = 'inactive' AND deactivation_date < now() - $1",
        )
        .bind(interval(retention))
        .execute(&mut *tx)
        .await?
        .rows_affected() as i64,
        None => 0,
    };
    // A crashed caller never leaks workload: its lease expires and the unit comes back.
    let leases_expired = crate::routing::store::expire(&mut *tx).await?;
    for history in [
        "DELETE FROM registration_events WHERE at < now() - $1",
        "DELETE FROM workload_leases WHERE released_at < now() - $1",
    ] {
        sqlx::query(history)
            .bind(interval(s.event_retention))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    let report = SweepReport {
        marked_unknown,
        deactivated,
        deleted,
        leases_expired,
        guard_tripped: !held.is_empty(),
        ran: true,
    };
    if report.marked_unknown + report.deactivated + report.deleted + report.leases_expired > 0 {
        tracing::info!(?report, "swept stale registrations");
    }
    Ok(report)
}
