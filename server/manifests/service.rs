//! `agentry.v1.ManifestService`.

use sqlx::PgPool;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::request::{Import, ManifestPatch};
use super::store::{self, Imported, ManifestFields, ManifestFilter, ManifestKey};
use crate::auth::Authenticator;
use crate::pagination;
use crate::pb::manifest_service_server::ManifestService;
use crate::pb::{self, Role};
use crate::request::Id;

const ANY_ROLE: &[Role] = &[Role::Admin, Role::Tenant, Role::Agent];
const ADMIN: &[Role] = &[Role::Admin];

/// Serves manifests: anyone may read them, only admins change them.
#[derive(Debug, Clone)]
pub struct ManifestApi {
    auth: Authenticator,
    pool: PgPool,
}

impl ManifestApi {
    /// The service over manifests in `pool`.
    pub fn new(auth: Authenticator, pool: PgPool) -> Self {
        ManifestApi { auth, pool }
    }
}

#[tonic::async_trait]
impl ManifestService for ManifestApi {
    #[instrument(name = "manifest.create", skip_all, fields(role, tenant, agent_id))]
    async fn create_manifest(
        &self,
        request: Request<pb::CreateManifestRequest>,
    ) -> Result<Response<pb::Manifest>, Status> {
        let (caller, fields) = self
            .auth
            .accept::<_, ManifestFields>(request, ADMIN)
            .await?;
        let row = store::insert(&self.pool, &caller.actor(), &fields).await?;
        tracing::info!(id = %row.id, "manifest created");
        Ok(Response::new(row.into()))
    }

    #[instrument(name = "manifest.get", skip_all, fields(role, tenant))]
    async fn get_manifest(
        &self,
        request: Request<pb::GetManifestRequest>,
    ) -> Result<Response<pb::Manifest>, Status> {
        let (_, key) = self
            .auth
            .accept::<_, ManifestKey>(request, ANY_ROLE)
            .await?;
        Ok(Response::new(
            store::get(&self.pool, &key, false).await?.into(),
        ))
    }

    #[instrument(name = "manifest.list", skip_all, fields(role, tenant))]
    async fn list_manifests(
        &self,
        request: Request<pb::ListManifestsRequest>,
    ) -> Result<Response<pb::ListManifestsResponse>, Status> {
        let (_, filter) = self
            .auth
            .accept::<_, ManifestFilter>(request, ANY_ROLE)
            .await?;
        let rows = store::list(&self.pool, &filter).await?;
        let (rows, next_page_token) = pagination::page(rows, filter.limit, |m| m.agent_id.clone());
        Ok(Response::new(pb::ListManifestsResponse {
            manifests: rows.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    #[instrument(name = "manifest.update", skip_all, fields(role, tenant, id))]
    async fn update_manifest(
        &self,
        request: Request<pb::UpdateManifestRequest>,
    ) -> Result<Response<pb::Manifest>, Status> {
        let (caller, patch) = self.auth.accept::<_, ManifestPatch>(request, ADMIN).await?;
        let (id, paths) = (patch.id, patch.paths.clone());
        let mut tx = self.pool.begin().await.map_err(crate::Error::from)?;
        let current = store::get(&mut *tx, &ManifestKey::Id(id), true).await?;
        let fields = patch.apply(current.into())?;
        let row = store::update(&mut tx, &caller.actor(), id, &fields, &paths).await?;
        tx.commit().await.map_err(crate::Error::from)?;
        tracing::info!(fields = ?paths, "manifest updated");
        Ok(Response::new(row.into()))
    }

    #[instrument(name = "manifest.delete", skip_all, fields(role, tenant, id))]
    async fn delete_manifest(
        &self,
        request: Request<pb::DeleteManifestRequest>,
    ) -> Result<Response<pb::DeleteManifestResponse>, Status> {
        let (caller, Id(id)) = self.auth.accept::<_, Id>(request, ADMIN).await?;
        store::delete(&self.pool, &caller.actor(), id).await?;
        tracing::info!("manifest deleted");
        Ok(Response::new(pb::DeleteManifestResponse {}))
    }

    #[instrument(
        name = "manifest.import_agent_card",
        skip_all,
        fields(role, tenant, agent_id)
    )]
    async fn import_agent_card(
        &self,
        request: Request<pb::ImportAgentCardRequest>,
    ) -> Result<Response<pb::ImportResponse>, Status> {
        let (caller, import) = self.auth.accept::<_, Import>(request, ADMIN).await?;
        Ok(Response::new(self.import(&caller, import).await?))
    }

    #[instrument(
        name = "manifest.import_mcp_server",
        skip_all,
        fields(role, tenant, agent_id)
    )]
    async fn import_mcp_server(
        &self,
        request: Request<pb::ImportMcpServerRequest>,
    ) -> Result<Response<pb::ImportResponse>, Status> {
        let (caller, import) = self.auth.accept::<_, Import>(request, ADMIN).await?;
        Ok(Response::new(self.import(&caller, import).await?))
    }
}

impl ManifestApi {
    async fn import(
        &self,
        caller: &crate::auth::Caller,
        import: Import,
    ) -> crate::Result<pb::ImportResponse> {
        let Import {
            fields,
            mapped,
            ignored,
            validate_only,
        } = import;
        let (manifest, outcome) = if validate_only {
            (store::unsaved(fields), pb::ImportOutcome::Validated)
        } else {
            let actor = caller.actor();
            // Two first imports of one agent_id race to insert; the loser
            // finds the winner's row the second time.
            let (row, imported) = match store::import(&self.pool, &actor, fields.clone()).await {
                Err(crate::Error::AlreadyExists(_)) => {
                    store::import(&self.pool, &actor, fields).await?
                }
                other => other?,
            };
            tracing::info!(id = %row.id, version = %row.version, outcome = ?imported, "manifest imported");
            let outcome = match imported {
                Imported::Created => pb::ImportOutcome::Created,
                Imported::Updated => pb::ImportOutcome::Updated,
                Imported::Unchanged => pb::ImportOutcome::Unchanged,
            };
            (row.into(), outcome)
        };
        Ok(pb::ImportResponse {
            manifest: Some(manifest),
            outcome: outcome.into(),
            mapped,
            ignored,
        })
    }
}
