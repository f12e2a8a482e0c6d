//! `GetAgentMetrics`: usage and health figures of one configuration over a
//! period, from workload leases and registration events.
//!
//! Workload figures count leased work; units reserved with the bare
//! `UpdateWorkload` counter leave no history and are not included.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::configurations::store as configurations;
use crate::error::Result;
use crate::pb;

#[derive(Debug, Default, sqlx::FromRow)]
struct LeaseCounts {
    acquired: i64,
    succeeded: i64,
    failed: i64,
    cancelled: i64,
    expired: i64,
    /// Lease-seconds within the period.
    busy_seconds: f64,
}

/// Binds what every statement here takes: tenant, configuration, and the
/// period's start and end ($1 to $4).
macro_rules! in_window {
    ($query:expr, ($tenant:expr, $id:expr, $start:expr, $end:expr)) => {
        $query.bind($tenant).bind($id).bind($start).bind($end)
    };
}

/// Figures of configuration `id` (of `tenant`, `None`: any) over the `period` before now.
pub(super) async fn compute(
    pool: &PgPool,
    tenant: Option<Uuid>,
    id: Uuid,
    period: std::time::Duration,
) -> Result<pb::AgentMetrics> {
    let configuration = configurations::get(pool, tenant, id, false).await?;
    let tenant = configuration.tenant_id;
    let end: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(pool).await?;
    let start =
        end - chrono::Duration::from_std(period).unwrap_or_else(|_| chrono::Duration::days(30));
    let seconds = (end - start).num_microseconds().unwrap_or(1).max(1) as f64 / 1e6;

    let counts: LeaseCounts = in_window!(
        sqlx::query_as(
        "SELECT count(*) FILTER (WHERE acquired_at >= $3) AS acquired, \
           count(*) FILTER (WHERE released_at >= $3 AND outcome = 'succeeded') AS succeeded, \
           count(*) FILTER (WHERE released_at >= $3 AND outcome = 'failed') AS failed, \
           count(*) FILTER (WHERE released_at >= $3 AND outcome = 'cancelled') AS cancelled, \
           count(*) FILTER (WHERE released_at >= $3 AND outcome = 'expired') AS expired, \
           coalesce(sum(extract(epoch FROM least(coalesce(released_at, $4), $4) - greatest(acquired_at, $3))), 0)::float8 \
             AS busy_seconds \
         FROM workload_leases WHERE tenant_id = $1 AND configuration_id = $2 \
           AND acquired_at <= $4 AND (released_at IS NULL OR released_at >= $3)",
        ),
        (tenant, id, start, end)
    )
    .fetch_one(pool)
    .await?;

    // Peak concurrency: a running sum over lease starts and ends (ends first at equal times).
    let peak: i64 = in_window!(
        sqlx::query_scalar(
        "WITH l AS ( \
           SELECT greatest(acquired_at, $3) AS a, least(coalesce(released_at, $4), $4) AS r \
           FROM workload_leases WHERE tenant_id = $1 AND configuration_id = $2 \
             AND acquired_at <= $4 AND (released_at IS NULL OR released_at >= $3)), \
         ev AS (SELECT a AS t, 1 AS d FROM l UNION ALL SELECT r AS t, -1 AS d FROM l WHERE r < $4) \
         SELECT coalesce(max(s), 0)::bigint FROM (SELECT sum(d) OVER (ORDER BY t, d ROWS UNBOUNDED PRECEDING) AS s FROM ev) x",
        ),
        (tenant, id, start, end)
    )
    .fetch_one(pool)
    .await?;

    let (transitions, failures): (i64, i64) = in_window!(
        sqlx::query_as(
        "WITH e AS ( \
           SELECT at, kind, health_status, \
             lag(health_status) OVER (PARTITION BY registration_id ORDER BY at, id) AS before \
           FROM registration_events WHERE tenant_id = $1 AND configuration_id = $2 AND at <= $4) \
         SELECT count(*) FILTER (WHERE at >= $3 AND before IS NOT NULL AND before <> health_status), \
                count(*) FILTER (WHERE at >= $3 AND kind IN ('failed', 'swept')) FROM e",
        ),
        (tenant, id, start, end)
    )
    .fetch_one(pool)
    .await?;

    let instances_seen: i64 = in_window!(
        sqlx::query_scalar(
        "SELECT count(*) FROM ( \
           SELECT registration_id FROM registration_events \
             WHERE tenant_id = $1 AND configuration_id = $2 AND at BETWEEN $3 AND $4 \
           UNION \
           SELECT id FROM agent_registrations WHERE tenant_id = $1 AND configuration_id = $2 \
             AND activation_date <= $4 AND (registration_status = 'active' OR deactivation_date >= $3)) x",
        ),
        (tenant, id, start, end)
    )
    .fetch_one(pool)
    .await?;

    // Intervals during which each instance was healthy, from its event history.
    let healthy: Vec<(DateTime<Utc>, DateTime<Utc>)> = in_window!(
        sqlx::query_as(
        "WITH e AS ( \
           SELECT at, health_status, lead(at) OVER (PARTITION BY registration_id ORDER BY at, id) AS next \
           FROM registration_events WHERE tenant_id = $1 AND configuration_id = $2 AND at <= $4) \
         SELECT greatest(at, $3) AS a, least(coalesce(next, $4), $4) AS b FROM e \
         WHERE health_status = 'healthy' AND coalesce(next, $4) > $3 ORDER BY 1",
        ),
        (tenant, id, start, end)
    )
    .fetch_all(pool)
    .await?;

    let average = counts.busy_seconds / seconds;
    let max_workload = configuration.fields.max_workload;
    Ok(pb::AgentMetrics {
        configuration_id: id.to_string(),
        period_start: Some(pb::timestamp(start)),
        period_end: Some(pb::timestamp(end)),
        leases_acquired: counts.acquired,
        leases_succeeded: counts.succeeded,
        leases_failed: counts.failed,
        leases_cancelled: counts.cancelled,
        leases_expired: counts.expired,
        average_workload: average,
        peak_workload: i32::try_from(peak).unwrap_or(i32::MAX),
        utilization: if max_workload > 0 {
            average / f64::from(max_workload)
        } else {
            0.0
        },
        instances_seen,
        healthy_time_ratio: covered_seconds(&healthy) / seconds,
        health_transitions: transitions,
        failures,
    })
}

/// Seconds covered by the union of sorted intervals.
fn covered_seconds(intervals: &[(DateTime<Utc>, DateTime<Utc>)]) -> f64 {
    let mut total = 0i64;
    let mut current: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    for &(a, b) in intervals {
        current = match current {
            Some((s, e)) if a <= e => Some((s, e.max(b))),
            Some((s, e)) => {
                total += (e - s).num_microseconds().unwrap_or(0);
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    if let Some((s, e)) = current {
        total += (e - s).num_microseconds().unwrap_or(0);
    }
    total as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::covered_seconds;
    use chrono::{TimeZone, Utc};

    #[test]
    fn overlapping_intervals_count_once() {
        let t = |s: i64| Utc.timestamp_opt(s, 0).single().expect("time");
        assert_eq!(covered_seconds(&[]), 0.0);
        assert_eq!(
            covered_seconds(&[(t(0), t(10)), (t(5), t(15)), (t(20), t(30))]),
            25.0
        );
        assert_eq!(covered_seconds(&[(t(0), t(10)), (t(2), t(3))]), 10.0);
    }
}
