//! SQL of tenants and API keys. Also used by the `keys` and `tenants` commands.
//! Every change is audited in its transaction.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::{self, Actor, Target};
use crate::auth::mint_key;
use crate::error::{Error, Result};
use crate::pagination::TimeKey;
use crate::pb::{self, Role};

/// A tenant as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantRow {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

impl From<TenantRow> for pb::Tenant {
    fn from(row: TenantRow) -> Self {
        pb::Tenant {
            id: row.id.to_string(),
            name: row.name,
            create_time: Some(pb::timestamp(row.created_at)),
        }
    }
}

/// An API key as stored (never its secret).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: Uuid,
    pub role: String,
    pub tenant_id: Option<Uuid>,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKeyRow> for pb::ApiKey {
    fn from(row: ApiKeyRow) -> Self {
        pb::ApiKey {
            id: row.id.to_string(),
            role: Role::from_db_name(&row.role).into(),
            tenant_id: row.tenant_id.map(|t| t.to_string()).unwrap_or_default(),
            description: row.description,
            create_time: Some(pb::timestamp(row.created_at)),
            revoke_time: pb::opt_timestamp(row.revoked_at),
        }
    }
}

/// Creates tenant `name` for `actor`.
pub async fn create_tenant(pool: &PgPool, actor: &Actor, name: &str) -> Result<TenantRow> {
    crate::validate::slug("name", name, 63)?;
    let mut tx = pool.begin().await?;
    let row: TenantRow = sqlx::query_as(
        "INSERT INTO tenants (id, name) VALUES ($1, $2) RETURNING id, name, created_at",
    )
    .bind(Uuid::new_v4())
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    let target = Target::new("tenant", row.id, Some(row.id));
    audit::record(
        &mut tx,
        actor,
        "tenant.create",
        target,
        json!({ "name": name }),
    )
    .await?;
    tx.commit().await?;
    Ok(row)
}

/// A tenant by UUID or by name.
pub async fn find_tenant(pool: &PgPool, name_or_id: &str) -> Result<TenantRow> {
    let id = Uuid::try_parse(name_or_id).ok();
    sqlx::query_as(
        "SELECT id, name, created_at FROM tenants WHERE id = $1 OR ($1 IS NULL AND name = $2)",
    )
    .bind(id)
    .bind(name_or_id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| Error::NotFound("tenant".into()))
}

/// Tenants ordered by name, `limit + 1` at most.
pub async fn list_tenants(
    pool: &PgPool,
    after: Option<String>,
    limit: i64,
) -> Result<Vec<TenantRow>> {
    Ok(sqlx::query_as(
        "SELECT id, name, created_at FROM tenants WHERE ($1::text IS NULL OR name > $1) ORDER BY name LIMIT $2",
    )
    .bind(after)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?)
}

/// Creates a key for `actor` and returns it with its secret, which is
/// stored nowhere, the audit log included.
pub async fn create_key(
    pool: &PgPool,
    actor: &Actor,
    role: Role,
    tenant: Option<Uuid>,
    description: &str,
) -> Result<(ApiKeyRow, String)> {
    let key = mint_key()?;
    let mut tx = pool.begin().await?;
    let row: ApiKeyRow = sqlx::query_as(
        "INSERT INTO api_keys (id, role, tenant_id, secret_hash, description) VALUES ($1, $2, $3, $4, $5) \
         RETURNING id, role, tenant_id, description, created_at, revoked_at",
    )
    .bind(key.id)
    .bind(role.db_name())
    .bind(tenant)
    .bind(&key.hash)
    .bind(description)
    .fetch_one(&mut *tx)
    .await?;
    let details = json!({ "role": row.role, "description": row.description });
    let target = Target::new("api_key", row.id, row.tenant_id);
    audit::record(&mut tx, actor, "api_key.create", target, details).await?;
    tx.commit().await?;
    Ok((row, key.secret))
}

/// Keys newest first, `limit + 1` at most.
pub async fn list_keys(
    pool: &PgPool,
    tenant: Option<Uuid>,
    include_revoked: bool,
    before: Option<TimeKey>,
    limit: i64,
) -> Result<Vec<ApiKeyRow>> {
    Ok(sqlx::query_as(
        "SELECT id, role, tenant_id, description, created_at, revoked_at FROM api_keys \
         WHERE ($1::uuid IS NULL OR tenant_id = $1) AND ($2 OR revoked_at IS NULL) \
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) \
         ORDER BY created_at DESC, id DESC LIMIT $5",
    )
    .bind(tenant)
    .bind(include_revoked)
    .bind(before.map(|k| k.at))
    .bind(before.map(|k| k.id))
    .bind(limit + 1)
    .fetch_all(pool)
    .await?)
}

/// Revokes a key for `actor`; revoking it again keeps the first revocation
/// time.
pub async fn revoke_key(pool: &PgPool, actor: &Actor, id: Uuid) -> Result<ApiKeyRow> {
    let mut tx = pool.begin().await?;
    let row: ApiKeyRow = sqlx::query_as(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 \
         RETURNING id, role, tenant_id, description, created_at, revoked_at",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| Error::NotFound("api key".into()))?;
    let target = Target::new("api_key", row.id, row.tenant_id);
    audit::record(
        &mut tx,
        actor,
        "api_key.revoke",
        target,
        json!({ "role": row.role }),
    )
    .await?;
    tx.commit().await?;
    Ok(row)
}
