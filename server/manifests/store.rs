//! SQL of manifests.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use super::card::{CardFields, Skill};
use crate::audit::{self, Actor, Target};
use crate::error::{Error, Result, reason};
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
    pub skills: Json<Vec<Skill>>,
    pub card: Option<Json<CardFields>>,
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
    pub skills: Vec<Skill>,
    pub card: Option<CardFields>,
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
            skills: row.skills.0,
            card: row.card.map(|c| c.0),
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
            skills: row.skills.0.into_iter().map(Into::into).collect(),
            card: row.card.map(|c| c.0.into_proto()),
        }
    }
}

/// The manifest `m` would be once stored (no id, no times): what a
/// `validate_only` import answers.
pub fn unsaved(m: ManifestFields) -> pb::Manifest {
    pb::Manifest {
        status: m.status.into(),
        agent_id: m.agent_id,
        agent_type: m.agent_type,
        name: m.name,
        description: m.description,
        version: m.version,
        capabilities: m.capabilities,
        requirements: m.requirements,
        metadata: Some(pb::json_to_struct(m.metadata)),
        skills: m.skills.into_iter().map(Into::into).collect(),
        card: m.card.map(CardFields::into_proto),
        ..pb::Manifest::default()
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
         requirements, metadata, status, skills, card, created_at, updated_at"
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
            .bind(Json(&$m.skills))
            .bind($m.card.as_ref().map(Json))
    };
}

/// Creates a manifest for `actor`.
pub async fn insert(pool: &PgPool, actor: &Actor, m: &ManifestFields) -> Result<ManifestRow> {
    let mut tx = pool.begin().await?;
    let row = insert_in(&mut tx, actor, m, "manifest.create").await?;
    tx.commit().await?;
    Ok(row)
}

/// Creates a manifest in the caller's transaction, audited as `action`.
async fn insert_in(
    conn: &mut PgConnection,
    actor: &Actor,
    m: &ManifestFields,
    action: &'static str,
) -> Result<ManifestRow> {
    let query = sqlx::query_as(concat!(
        "INSERT INTO agent_manifests (id, agent_id, agent_type, name, description, version, \
         capabilities, requirements, metadata, status, skills, card) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING ",
        columns!()
    ))
    .bind(Uuid::new_v4())
    .bind(&m.agent_id);
    let row: ManifestRow = bind_fields!(query, m).fetch_one(&mut *conn).await?;
    let details = json!({ "agent_id": row.agent_id, "version": row.version });
    let target = Target::new("manifest", row.id, None);
    audit::record(conn, actor, action, target, details).await?;
    Ok(row)
}

/// What an import did to the manifest of its agent_id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    Created,
    Updated,
    Unchanged,
}

/// Creates the manifest `fields.agent_id` from an imported document, or
/// updates it when the document's version is higher; the same version with
/// the same content is `Unchanged`, anything else `FAILED_PRECONDITION`
/// (versions are immutable: no history is kept). On update the manifest
/// keeps its agent_type, capabilities, requirements, metadata and status.
pub async fn import(
    pool: &PgPool,
    actor: &Actor,
    fields: ManifestFields,
) -> Result<(ManifestRow, Imported)> {
    let mut tx = pool.begin().await?;
    let current: Option<ManifestRow> = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM agent_manifests WHERE agent_id = $1 FOR UPDATE"
    ))
    .bind(&fields.agent_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(current) = current else {
        let row = insert_in(&mut tx, actor, &fields, "manifest.import").await?;
        tx.commit().await?;
        return Ok((row, Imported::Created));
    };
    let same = current.name == fields.name
        && current.description == fields.description
        && current.skills.0 == fields.skills
        && current.card.as_ref().map(|c| &c.0) == fields.card.as_ref();
    let (old, new) = (
        semver::Version::parse(&current.version).ok(),
        semver::Version::parse(&fields.version).ok(),
    );
    if current.version == fields.version && same {
        return Ok((current, Imported::Unchanged));
    }
    if new <= old {
        return Err(Error::precondition(
            reason::VERSION_PUBLISHED,
            format!(
                "manifest {} holds version {} and versions are immutable: a changed document must raise its version",
                current.agent_id, current.version
            ),
        ));
    }
    let id = current.id;
    let kept = ManifestFields {
        name: fields.name,
        description: fields.description,
        version: fields.version,
        skills: fields.skills,
        card: fields.card,
        ..current.into()
    };
    let paths = ["name", "description", "version", "skills", "card"].map(String::from);
    let row = update(&mut tx, actor, id, &kept, &paths).await?;
    tx.commit().await?;
    Ok((row, Imported::Updated))
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

/// Overwrites the writable fields of manifest `id` (agent_id stays) for
/// `actor`, in the caller's transaction; `paths` are the fields the update
/// named, for the audit log.
pub async fn update(
    conn: &mut PgConnection,
    actor: &Actor,
    id: Uuid,
    m: &ManifestFields,
    paths: &[String],
) -> Result<ManifestRow> {
    let query = sqlx::query_as(concat!(
        "UPDATE agent_manifests SET agent_type = $2, name = $3, description = $4, version = $5, \
         capabilities = $6, requirements = $7, metadata = $8, status = $9, skills = $10, \
         card = $11, updated_at = now() \
         WHERE id = $1 RETURNING ",
        columns!()
    ))
    .bind(id);
    let row: ManifestRow = bind_fields!(query, m)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::NotFound("manifest".into()))?;
    let target = Target::new("manifest", id, None);
    audit::record(
        conn,
        actor,
        "manifest.update",
        target,
        json!({ "fields": paths }),
    )
    .await?;
    Ok(row)
}

/// Deletes manifest `id` for `actor`; refused while configurations reference it.
pub async fn delete(pool: &PgPool, actor: &Actor, id: Uuid) -> Result<()> {
    let mut tx = pool.begin().await?;
    // The check is part of the statement, so the usual case needs no
    // constraint error to tell "referenced" from "missing".
    let (deleted, referenced): (Option<String>, bool) = sqlx::query_as(
        "WITH d AS (DELETE FROM agent_manifests WHERE id = $1 \
           AND NOT EXISTS (SELECT 1 FROM agent_configurations WHERE manifest_id = $1) RETURNING agent_id) \
         SELECT (SELECT agent_id FROM d), EXISTS (SELECT 1 FROM agent_configurations WHERE manifest_id = $1)",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    match (deleted, referenced) {
        (Some(agent_id), _) => {
            let target = Target::new("manifest", id, None);
            let details = json!({ "agent_id": agent_id });
            audit::record(&mut tx, actor, "manifest.delete", target, details).await?;
            tx.commit().await?;
            Ok(())
        }
        (None, true) => Err(Error::precondition(
            reason::MANIFEST_IN_USE,
            "manifest is referenced by configurations; delete them first",
        )),
        (None, false) => Err(Error::NotFound("manifest".into())),
    }
}
