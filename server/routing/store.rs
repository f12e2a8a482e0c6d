//! SQL of workload leases outside the lease writer's batches: reading,
//! renewing and expiring them. Each is one statement, so concurrent callers
//! on any number of replicas can never give a unit back twice.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::error::{Error, Result, reason};

/// A lease as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LeaseRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub configuration_id: Uuid,
    pub registration_id: Uuid,
    pub epoch: i64,
    pub ttl_ms: i64,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub released_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
}

const LEASE_COLUMNS: &str = "id, tenant_id, configuration_id, registration_id, epoch, ttl_ms, acquired_at, expires_at, released_at, outcome";

/// Open leases of one instance.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OpenLeases {
    pub tenant_id: Uuid,
    pub registration_id: Uuid,
    pub count: i64,
}

/// Open leases per instance (the routing view's load).
pub async fn open_leases(pool: &PgPool) -> Result<Vec<OpenLeases>> {
    Ok(sqlx::query_as(
        "SELECT tenant_id, registration_id, count(*) AS count FROM workload_leases \
         WHERE released_at IS NULL GROUP BY 1, 2",
    )
    .fetch_all(pool)
    .await?)
}

/// One lease of `tenant`.
pub async fn get<'e>(db: impl PgExecutor<'e>, tenant: Uuid, id: Uuid) -> Result<LeaseRow> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {LEASE_COLUMNS} FROM workload_leases WHERE id = $1 AND tenant_id = $2"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(db)
    .await?
    .ok_or_else(|| Error::NotFound("lease".into()))
}

/// Extends an open, unexpired lease by `ttl_ms` from now.
pub async fn renew(pool: &PgPool, tenant: Uuid, id: Uuid, ttl_ms: Option<i64>) -> Result<LeaseRow> {
    let renewed: Option<LeaseRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE workload_leases SET ttl_ms = coalesce($3, ttl_ms), \
           expires_at = now() + coalesce($3, ttl_ms) * interval '1 millisecond' \
         WHERE id = $1 AND tenant_id = $2 AND released_at IS NULL AND expires_at > now() \
         RETURNING {LEASE_COLUMNS}"
    )))
    .bind(id)
    .bind(tenant)
    .bind(ttl_ms)
    .fetch_optional(pool)
    .await?;
    match renewed {
        Some(lease) => Ok(lease),
        None => {
            let lease = get(pool, tenant, id).await?;
            Err(match lease.outcome {
                Some(outcome) => Error::precondition(
                    reason::LEASE_RELEASED,
                    format!("the lease was already released ({outcome})"),
                ),
                None => Error::precondition(reason::LEASE_EXPIRED, "the lease has expired"),
            })
        }
    }
}

/// Expires open leases past their expiry and gives their units back; returns
/// how many, and how many units the counters did not hold as leased
/// (drift: the counter stops at its manual part, migration 0011).
pub async fn expire<'e>(db: impl PgExecutor<'e>) -> Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "WITH l AS ( \
           UPDATE workload_leases SET released_at = now(), outcome = 'expired' \
           WHERE released_at IS NULL AND expires_at < now() RETURNING configuration_id), \
         n AS (SELECT l.configuration_id, count(*) AS n, \
                 greatest(count(*) - max(c.current_workload - c.manual_workload), 0) AS drift \
               FROM l JOIN agent_configurations c ON c.id = l.configuration_id GROUP BY 1), \
         upd AS ( \
           UPDATE agent_configurations c SET current_workload = greatest(c.current_workload - n.n, c.manual_workload), \
             updated_at = now() FROM n WHERE c.id = n.configuration_id RETURNING 1) \
         SELECT (SELECT count(*) FROM l), (SELECT coalesce(sum(drift), 0)::bigint FROM n)",
    )
    .fetch_one(db)
    .await?)
}
