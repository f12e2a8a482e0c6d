//! `agentry.v1.ManifestService`.

use sqlx::PgPool;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::request::ManifestPatch;
use super::store::{self, ManifestFields, ManifestFilter, ManifestKey};
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
        let (_, fields) = self
            .auth
            .accept::<_, ManifestFields>(request, ADMIN)
            .await?;
        let row = store::insert(&self.pool, &fields).await?;
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
        let (_, patch) = self.auth.accept::<_, ManifestPatch>(request, ADMIN).await?;
        let (id, paths) = (patch.id, patch.paths.clone());
        let mut tx = self.pool.begin().await.map_err(crate::Error::from)?;
        let current = store::get(&mut *tx, &ManifestKey::Id(id), true).await?;
        let fields = patch.apply(current.into())?;
        let row = store::update(&mut *tx, id, &fields).await?;
        tx.commit().await.map_err(crate::Error::from)?;
        tracing::info!(fields = ?paths, "manifest updated");
        Ok(Response::new(row.into()))
    }

    #[instrument(name = "manifest.delete", skip_all, fields(role, tenant, id))]
    async fn delete_manifest(
        &self,
        request: Request<pb::DeleteManifestRequest>,
    ) -> Result<Response<pb::DeleteManifestResponse>, Status> {
        let (_, Id(id)) = self.auth.accept::<_, Id>(request, ADMIN).await?;
        store::delete(&self.pool, id).await?;
        tracing::info!("manifest deleted");
        Ok(Response::new(pb::DeleteManifestResponse {}))
    }
}
