//! SQL of workload leases. Each change is one statement, so concurrent
//! callers on any number of replicas can never take `current_workload` past
//! `max_workload` nor give a unit back twice.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::error::{Error, Result};

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

/// A granted reservation: the lease and the configuration's workload after it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Grant {
    #[sqlx(flatten)]
    pub lease: LeaseRow,
    pub current_workload: i32,
}

const LEASE_COLUMNS: &str = "id, tenant_id, configuration_id, registration_id, epoch, ttl_ms, acquired_at, expires_at, released_at, outcome";

/// Reserves one unit of `configuration` for `registration` if the
/// configuration is enabled and has room and the instance is still routable.
/// `None` when it does not fit (the caller tries another candidate).
pub async fn reserve(
    pool: &PgPool,
    tenant: Uuid,
    configuration: Uuid,
    registration: Uuid,
    ttl_ms: i64,
) -> Result<Option<Grant>> {
    Ok(sqlx::query_as(
        "WITH reg AS ( \
           SELECT id, epoch FROM agent_registrations WHERE id = $3 AND tenant_id = $2 \
             AND configuration_id = $1 AND registration_status = 'active' \
             AND health_status IN ('healthy', 'degraded')), \
         upd AS ( \
           UPDATE agent_configurations SET current_workload = current_workload + 1, updated_at = now() \
           WHERE id = $1 AND tenant_id = $2 AND enabled AND current_workload < max_workload \
             AND EXISTS (SELECT 1 FROM reg) \
           RETURNING id, current_workload), \
         ins AS ( \
           INSERT INTO workload_leases (id, tenant_id, configuration_id, registration_id, epoch, ttl_ms, expires_at) \
           SELECT $4, $2, upd.id, reg.id, reg.epoch, $5, now() + $5 * interval '1 millisecond' FROM upd, reg \
           RETURNING *) \
         SELECT ins.id, ins.tenant_id, ins.configuration_id, ins.registration_id, ins.epoch, ins.ttl_ms, \
                ins.acquired_at, ins.expires_at, ins.released_at, ins.outcome, upd.current_workload \
         FROM ins, upd",
    )
    .bind(configuration)
    .bind(tenant)
    .bind(registration)
    .bind(Uuid::new_v4())
    .bind(ttl_ms)
    .fetch_optional(pool)
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
            Err(Error::FailedPrecondition(match lease.outcome {
                Some(outcome) => format!("the lease was already released ({outcome})"),
                None => "the lease has expired".into(),
            }))
        }
    }
}

/// Releases a lease and gives its unit back, exactly once. `false` when it
/// had already been released (or expired and swept).
pub async fn release(pool: &PgPool, tenant: Uuid, id: Uuid, outcome: &str) -> Result<bool> {
    let released: i64 = sqlx::query_scalar(
        "WITH l AS ( \
           UPDATE workload_leases SET released_at = now(), outcome = $3 \
           WHERE id = $1 AND tenant_id = $2 AND released_at IS NULL RETURNING configuration_id), \
         upd AS ( \
           UPDATE agent_configurations c SET current_workload = greatest(c.current_workload - 1, 0), updated_at = now() \
           FROM l WHERE c.id = l.configuration_id RETURNING c.id) \
         SELECT count(*) FROM l",
    )
    .bind(id)
    .bind(tenant)
    .bind(outcome)
    .fetch_one(pool)
    .await?;
    if released == 0 {
        get(pool, tenant, id).await?;
        return Ok(false);
    }
    Ok(true)
}

/// Expires open leases past their expiry and gives their units back; returns how many.
pub async fn expire<'e>(db: impl PgExecutor<'e>) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "WITH l AS ( \
           UPDATE workload_leases SET released_at = now(), outcome = 'expired' \
           WHERE released_at IS NULL AND expires_at < now() RETURNING configuration_id), \
         n AS (SELECT configuration_id, count(*) AS n FROM l GROUP BY 1), \
         upd AS ( \
           UPDATE agent_configurations c SET current_workload = greatest(c.current_workload - n.n, 0), \
             updated_at = now() FROM n WHERE c.id = n.configuration_id RETURNING 1) \
         SELECT count(*) FROM l",
    )
    .fetch_one(db)
    .await?)
}
