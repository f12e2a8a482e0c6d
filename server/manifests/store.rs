//! SQL of manifests.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::pb;

/// A manifest as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ManifestRow {
    pub id: Uuid,
    pub agent_id: String,
    pub agent_type: String,
    pub name: String,
    pub description: String,
    pub version: String,
    pub capabilities: Json<Vec<String>>,
    pub requirements: String,
    pub metadata: serde_json::Value,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The writable fields of a manifest, validated.
#[derive(Debug, Clone)]
pub struct ManifestFields {
    pub agent_id: String,
    pub agent_type: String,
    pub name: String,
    pub description: String,
    pub version: String,
    pub capabilities: Vec<String>,
    pub requirements: String,
    pub metadata: serde_json::Value,
    pub status: pb::ManifestStatus,
}

impl From<ManifestRow> for ManifestFields {
    fn from(row: ManifestRow) -> Self {
        ManifestFields {
            agent_id: row.agent_id,
            agent_type: row.agent_type,
            name: row.name,
            description: row.description,
            version: row.version,
            capabilities: row.capabilities.0,
            requirements: row.requirements,
            metadata: row.metadata,
            status: pb::ManifestStatus::from_db_name(&row.status),
        }
    }
}

impl From<ManifestRow> for pb::Manifest {
    fn from(row: ManifestRow) -> Self {
        pb::Manifest {
            id: row.id.to_string(),
            create_time: Some(pb::timestamp(row.created_at)),
            update_time: Some(pb::timestamp(row.updated_at)),
            agent_id: row.agent_id,
            agent_type: row.agent_type,
            name: row.name,
            description: row.description,
            version: row.version,
            capabilities: row.capabilities.0,
            requirements: row.requirements,
            metadata: Some(pb::json_to_struct(row.metadata)),
            status: pb::ManifestStatus::from_db_name(&row.status).into(),
        }
    }
}

/// How to find one manifest.
#[derive(Debug, Clone)]
pub enum ManifestKey {
    Id(Uuid),
    AgentId(String),
}

/// Filters of a manifest listing.
#[derive(Debug, Clone, Default)]
pub struct ManifestFilter {
    pub agent_type: Option<String>,
    pub status: Option<pb::ManifestStatus>,
    pub capability: Option<String>,
    pub after: Option<String>,
    pub limit: i64,
}

macro_rules! columns {
    () => {
        "id, agent_id, agent_type, name, description, version, capabilities, \
         requirements, metadata, status, created_at, updated_at"
    };
}

/// Binds the fields after `agent_id`, in column order, to `$query`.
macro_rules! bind_fields {
    ($query:expr, $m:expr) => {
        $query
            .bind(&$m.agent_type)
            .bind(&$m.name)
            .bind(&$m.description)
            .bind(&$m.version)
            .bind(Json(&$m.capabilities))
            .bind(&$m.requirements)
            .bind(&$m.metadata)
            .bind($m.status.db_name())
    };
}

/// Creates a manifest.
pub async fn insert(pool: &PgPool, m: &ManifestFields) -> Result<ManifestRow> {
    let query = sqlx::query_as(concat!(
        "INSERT INTO agent_manifests (id, agent_id, agent_type, name, description, version, \
         capabilities, requirements, metadata, status) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING ",
        columns!()
    ))
    .bind(Uuid::new_v4())
    .bind(&m.agent_id);
    Ok(bind_fields!(query, m).fetch_one(pool).await?)
}

/// One manifest, optionally locked for update within a transaction.
pub async fn get<'e>(
    db: impl PgExecutor<'e>,
    key: &ManifestKey,
    for_update: bool,
) -> Result<ManifestRow> {
    let query = match (key, for_update) {
        (ManifestKey::Id(id), false) => sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM agent_manifests WHERE id = $1"
        ))
        .bind(*id),
        (ManifestKey::Id(id), true) => sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM agent_manifests WHERE id = $1 FOR UPDATE"
        ))
        .bind(*id),
        (ManifestKey::AgentId(agent_id), _) => sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM agent_manifests WHERE agent_id = $1"
        ))
        .bind(agent_id.as_str()),
    };
    query
        .fetch_optional(db)
        .await?
        .ok_or_else(|| Error::NotFound("manifest".into()))
}

/// Every manifest (the routing view's initial load).
pub async fn all(pool: &PgPool) -> Result<Vec<ManifestRow>> {
    Ok(
        sqlx::query_as(concat!("SELECT ", columns!(), " FROM agent_manifests"))
            .fetch_all(pool)
            .await?,
    )
}

/// The manifests among `ids` that exist, in one read.
pub async fn get_many(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<ManifestRow>> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM agent_manifests WHERE id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(pool)
    .await?)
}

/// Manifests ordered by agent_id, `limit + 1` of them at most.
pub async fn list(pool: &PgPool, f: &ManifestFilter) -> Result<Vec<ManifestRow>> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM agent_manifests \
         WHERE ($1::text IS NULL OR agent_type = $1) \
           AND ($2::text IS NULL OR status = $2) \
           AND ($3::text IS NULL OR capabilities ? $3) \
           AND ($4::text IS NULL OR agent_id > $4) \
         ORDER BY agent_id LIMIT $5"
    ))
    .bind(&f.agent_type)
    .bind(f.status.and_then(pb::ManifestStatus::db_name))
    .bind(&f.capability)
    .bind(&f.after)
    .bind(f.limit + 1)
    .fetch_all(pool)
    .await?)
}

/// Overwrites the writable fields of manifest `id` (agent_id stays).
pub async fn update<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    m: &ManifestFields,
) -> Result<ManifestRow> {
    let query = sqlx::query_as(concat!(
        "UPDATE agent_manifests SET agent_type = $2, name = $3, description = $4, version = $5, \
         capabilities = $6, requirements = $7, metadata = $8, status = $9, updated_at = now() \
         WHERE id = $1 RETURNING ",
        columns!()
    ))
    .bind(id);
    bind_fields!(query, m)
        .fetch_optional(db)
        .await?
        .ok_or_else(|| Error::NotFound("manifest".into()))
}

/// Deletes manifest `id`; refused while configurations reference it.
pub async fn delete(pool: &PgPool, id: Uuid) -> Result<()> {
    // The check is part of the statement, so the usual case needs no
    // constraint error to tell "referenced" from "missing".
    let (deleted, referenced): (i64, bool) = sqlx::query_as(
        "WITH d AS (DELETE FROM agent_manifests WHERE id = $1 \
           AND NOT EXISTS (SELECT 1 FROM agent_configurations WHERE manifest_id = $1) RETURNING 1) \
         SELECT (SELECT count(*) FROM d), EXISTS (SELECT 1 FROM agent_configurations WHERE manifest_id = $1)",
    )
    .bind(id)
    .fetch_one(pool)
    .await?;
    match (deleted, referenced) {
        (0, true) => Err(Error::FailedPrecondition(
            "manifest is referenced by configurations; delete them first".into(),
        )),
        (0, false) => Err(Error::NotFound("manifest".into())),
        _ => Ok(()),
    }
}
