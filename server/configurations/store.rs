//! SQL of configurations. Every statement carries the tenant scope.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::audit::{self, Actor, Target};
use crate::error::{Error, Result, reason};
use crate::pagination::TimeKey;
use crate::pb;

/// A configuration as stored, with its manifest's agent_id.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConfigurationRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub manifest_id: Uuid,
    pub agent_id: String,
    #[sqlx(flatten)]
    pub fields: ConfigurationFields,
    pub current_workload: i32,
    /// The part of `current_workload` that UpdateWorkload set (migration 0011).
    pub manual_workload: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The writable fields of a configuration, validated.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConfigurationFields {
    pub name: String,
    pub enabled: bool,
    pub configuration: serde_json::Value,
    pub system_prompt: String,
    pub temperature: Option<f64>,
    pub max_tokens: Option<i32>,
    pub model_id: Option<Uuid>,
    pub max_workload: i32,
}

impl From<ConfigurationRow> for pb::Configuration {
    fn from(row: ConfigurationRow) -> Self {
        let f = row.fields;
        pb::Configuration {
            id: row.id.to_string(),
            tenant_id: row.tenant_id.to_string(),
            manifest_id: row.manifest_id.to_string(),
            agent_id: row.agent_id,
            name: f.name,
            enabled: Some(f.enabled),
            configuration: Some(pb::json_to_struct(f.configuration)),
            system_prompt: f.system_prompt,
            temperature: f.temperature,
            max_tokens: f.max_tokens,
            model_id: f.model_id.map(|id| id.to_string()).unwrap_or_default(),
            max_workload: f.max_workload,
            current_workload: row.current_workload,
            manual_workload: row.manual_workload,
            create_time: Some(pb::timestamp(row.created_at)),
            update_time: Some(pb::timestamp(row.updated_at)),
        }
    }
}

/// Filters of a configuration listing.
#[derive(Debug, Clone, Default)]
pub struct ConfigurationFilter {
    pub tenant: Option<Uuid>,
    pub manifest_id: Option<Uuid>,
    pub agent_id: Option<String>,
    pub enabled: Option<bool>,
    pub after: Option<TimeKey>,
    pub limit: i64,
}

/// `SELECT` of configuration rows (joined with their manifest) from `$source c`.
macro_rules! select_from {
    ($source:literal) => {
        concat!(
            "SELECT c.id, c.tenant_id, c.manifest_id, m.agent_id, c.name, c.enabled, c.configuration, \
             c.system_prompt, c.temperature, c.max_tokens, c.model_id, c.max_workload, \
             c.current_workload, c.manual_workload, c.created_at, c.updated_at FROM ",
            $source,
            " c JOIN agent_manifests m ON m.id = c.manifest_id"
        )
    };
}

/// Binds the writable fields, in column order, to `$query`.
macro_rules! bind_fields {
    ($query:expr, $f:expr) => {
        $query
            .bind(&$f.name)
            .bind($f.enabled)
            .bind(&$f.configuration)
            .bind(&$f.system_prompt)
            .bind($f.temperature)
            .bind($f.max_tokens)
            .bind($f.model_id)
            .bind($f.max_workload)
    };
}

/// Creates a configuration of `manifest_id` for `tenant`, by `actor`.
pub async fn insert(
    pool: &PgPool,
    actor: &Actor,
    tenant: Uuid,
    manifest_id: Uuid,
    f: &ConfigurationFields,
) -> Result<ConfigurationRow> {
    let query = sqlx::query_as(concat!(
        "WITH inserted AS (INSERT INTO agent_configurations (id, tenant_id, manifest_id, name, enabled, \
         configuration, system_prompt, temperature, max_tokens, model_id, max_workload) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *) ",
        select_from!("inserted")
    ))
    .bind(Uuid::new_v4())
    .bind(tenant)
    .bind(manifest_id);
    let mut tx = pool.begin().await?;
    let row: ConfigurationRow = bind_fields!(query, f).fetch_one(&mut *tx).await?;
    let details = json!({
        "manifest_id": row.manifest_id,
        "agent_id": row.agent_id,
        "name": row.fields.name,
    });
    let target = Target::new("configuration", row.id, Some(row.tenant_id));
    audit::record(&mut tx, actor, "configuration.create", target, details).await?;
    tx.commit().await?;
    Ok(row)
}

/// One configuration within `tenant` (`None`: any tenant), optionally locked.
pub async fn get<'e>(
    db: impl PgExecutor<'e>,
    tenant: Option<Uuid>,
    id: Uuid,
    for_update: bool,
) -> Result<ConfigurationRow> {
    let sql = if for_update {
        concat!(
            select_from!("agent_configurations"),
            " WHERE c.id = $1 AND ($2::uuid IS NULL OR c.tenant_id = $2) FOR UPDATE OF c"
        )
    } else {
        concat!(
            select_from!("agent_configurations"),
            " WHERE c.id = $1 AND ($2::uuid IS NULL OR c.tenant_id = $2)"
        )
    };
    sqlx::query_as(sql)
        .bind(id)
        .bind(tenant)
        .fetch_optional(db)
        .await?
        .ok_or_else(|| Error::NotFound("configuration".into()))
}

/// Every configuration of every tenant (the routing view's initial load).
pub async fn all(pool: &PgPool) -> Result<Vec<ConfigurationRow>> {
    Ok(sqlx::query_as(select_from!("agent_configurations"))
        .fetch_all(pool)
        .await?)
}

/// The configurations among `ids` that exist, in one read.
pub async fn get_many(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<ConfigurationRow>> {
    Ok(sqlx::query_as(concat!(
        select_from!("agent_configurations"),
        " WHERE c.id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(pool)
    .await?)
}

/// Configurations oldest first, `limit + 1` of them at most.
pub async fn list(pool: &PgPool, f: &ConfigurationFilter) -> Result<Vec<ConfigurationRow>> {
    Ok(sqlx::query_as(concat!(
        select_from!("agent_configurations"),
        " WHERE ($1::uuid IS NULL OR c.tenant_id = $1) \
           AND ($2::uuid IS NULL OR c.manifest_id = $2) \
           AND ($3::text IS NULL OR m.agent_id = $3) \
           AND ($4::bool IS NULL OR c.enabled = $4) \
           AND ($5::timestamptz IS NULL OR (c.created_at, c.id) > ($5, $6)) \
         ORDER BY c.created_at, c.id LIMIT $7"
    ))
    .bind(f.tenant)
    .bind(f.manifest_id)
    .bind(&f.agent_id)
    .bind(f.enabled)
    .bind(f.after.map(|k| k.at))
    .bind(f.after.map(|k| k.id))
    .bind(f.limit + 1)
    .fetch_all(pool)
    .await?)
}

/// Overwrites the writable fields of configuration `id` for `actor`, in the
/// caller's transaction. The audit log gets the names of the fields the
/// update named (`paths`), never their values: a system prompt is the
/// tenant's and may be long.
pub async fn update(
    conn: &mut PgConnection,
    actor: &Actor,
    id: Uuid,
    f: &ConfigurationFields,
    paths: &[String],
) -> Result<ConfigurationRow> {
    let query = sqlx::query_as(concat!(
        "WITH updated AS (UPDATE agent_configurations SET name = $2, enabled = $3, configuration = $4, \
         system_prompt = $5, temperature = $6, max_tokens = $7, model_id = $8, max_workload = $9, \
         updated_at = now() WHERE id = $1 RETURNING *) ",
        select_from!("updated")
    ))
    .bind(id);
    let row: ConfigurationRow = bind_fields!(query, f)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::NotFound("configuration".into()))?;
    let target = Target::new("configuration", id, Some(row.tenant_id));
    let details = json!({ "fields": paths });
    audit::record(conn, actor, "configuration.update", target, details).await?;
    Ok(row)
}

/// Deletes configuration `id` within `tenant` (`None`: any tenant) for `actor`.
pub async fn delete(pool: &PgPool, actor: &Actor, tenant: Option<Uuid>, id: Uuid) -> Result<()> {
    let mut tx = pool.begin().await?;
    let deleted: Option<(Uuid,)> = sqlx::query_as(
        "DELETE FROM agent_configurations WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2) \
         RETURNING tenant_id",
    )
    .bind(id)
    .bind(tenant)
    .fetch_optional(&mut *tx)
    .await?;
    let (owner,) = deleted.ok_or_else(|| Error::NotFound("configuration".into()))?;
    let target = Target::new("configuration", id, Some(owner));
    audit::record(&mut tx, actor, "configuration.delete", target, json!({})).await?;
    tx.commit().await?;
    Ok(())
}

/// Adds `delta` to the manual part of the workload (migration 0011: the
/// counter is that part plus the open leases' units), in one statement that
/// can only succeed while the manual part stays at least zero and the whole
/// within max_workload, whatever runs concurrently; audited for `actor` in
/// the same transaction.
pub async fn add_workload(
    pool: &PgPool,
    actor: &Actor,
    tenant: Option<Uuid>,
    id: Uuid,
    delta: i32,
) -> Result<ConfigurationRow> {
    let query = sqlx::query_as(concat!(
        "WITH updated AS (UPDATE agent_configurations SET current_workload = current_workload + $3, \
         manual_workload = manual_workload + $3, updated_at = now() \
         WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2) \
         AND manual_workload + $3 >= 0 AND current_workload + $3 <= max_workload RETURNING *) ",
        select_from!("updated")
    ))
    .bind(id)
    .bind(tenant)
    .bind(delta);
    let mut tx = pool.begin().await?;
    let updated: Option<ConfigurationRow> = query.fetch_optional(&mut *tx).await?;
    if let Some(row) = updated {
        let target = Target::new("configuration", id, Some(row.tenant_id));
        let details = json!({ "delta": delta, "current_workload": row.current_workload });
        audit::record(
            &mut tx,
            actor,
            "configuration.update_workload",
            target,
            details,
        )
        .await?;
        tx.commit().await?;
        return Ok(row);
    }
    drop(tx);
    // Nothing changed: read the row only to say why.
    let row = get(pool, tenant, id, false).await?;
    let (current, max, manual) = (
        row.current_workload,
        row.fields.max_workload,
        row.manual_workload,
    );
    Err(if delta > 0 {
        Error::ResourceExhausted(format!(
            "workload {current} + {delta} would exceed max_workload {max}"
        ))
    } else {
        Error::precondition(
            reason::WORKLOAD_OUT_OF_RANGE,
            format!(
                "the manual workload {manual} - {} would go below zero; the other {} units are held by leases, which only ReleaseLease or their expiry give back",
                -i64::from(delta),
                current - manual
            ),
        )
    })
}
