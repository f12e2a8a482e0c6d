//! The A2A AgentCard of a configuration, as its tenant sees it: one read of
//! the configuration (scoped to the caller's tenant, so another tenant's
//! answers `NOT_FOUND`) and one of its manifest. The gRPC call and the HTTP
//! endpoint both answer this.

use sqlx::PgPool;
use uuid::Uuid;

use super::store;
use crate::error::Result;
use crate::manifests::export::{self, CardOf};
use crate::manifests::store::{self as manifests, ManifestKey};

/// The card of configuration `id`, within `tenant` (`None`: any, for admins).
pub async fn agent_card(
    pool: &PgPool,
    tenant: Option<Uuid>,
    id: Uuid,
) -> Result<serde_json::Value> {
    let config = store::get(pool, tenant, id, false).await?;
    let manifest = manifests::get(pool, &ManifestKey::Id(config.manifest_id), false).await?;
    Ok(export::agent_card(&CardOf {
        manifest: &manifest,
        tenant: config.tenant_id,
        name: &config.fields.name,
    }))
}
