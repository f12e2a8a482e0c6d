//! `agentry.v1.ConfigurationService`.

use sqlx::PgPool;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::request::{ConfigurationPatch, ListConfigurations, NewConfiguration, WorkloadChange};
use super::store;
use crate::auth::Authenticator;
use crate::error::{Error, reason};
use crate::manifests::store as manifests;
use crate::pagination::{self, TimeKey};
use crate::pb::configuration_service_server::ConfigurationService;
use crate::pb::{self, Role};
use crate::request::Id;

const OWNERS: &[Role] = &[Role::Admin, Role::Tenant];

/// Serves a tenant's configurations; admins may act for any tenant.
#[derive(Debug, Clone)]
pub struct ConfigurationApi {
    auth: Authenticator,
    pool: PgPool,
}

impl ConfigurationApi {
    /// The service over configurations in `pool`.
    pub fn new(auth: Authenticator, pool: PgPool) -> Self {
        ConfigurationApi { auth, pool }
    }
}

#[tonic::async_trait]
impl ConfigurationService for ConfigurationApi {
    #[instrument(
        name = "configuration.create",
        skip_all,
        fields(role, tenant, manifest)
    )]
    async fn create_configuration(
        &self,
        request: Request<pb::CreateConfigurationRequest>,
    ) -> Result<Response<pb::Configuration>, Status> {
        let (caller, new) = self
            .auth
            .accept::<_, NewConfiguration>(request, OWNERS)
            .await?;
        let tenant = caller.owning_tenant(&new.tenant_id)?;
        let manifest = manifests::get(&self.pool, &new.manifest, false).await?;
        tracing::Span::current().record("manifest", manifest.agent_id.as_str());
        let fields = new.fields(&manifest.name)?;
        let actor = caller.actor();
        let row = store::insert(&self.pool, &actor, tenant, manifest.id, &fields).await?;
        tracing::info!(id = %row.id, "configuration created");
        Ok(Response::new(row.into()))
    }

    #[instrument(name = "configuration.get", skip_all, fields(role, tenant, id))]
    async fn get_configuration(
        &self,
        request: Request<pb::GetConfigurationRequest>,
    ) -> Result<Response<pb::Configuration>, Status> {
        let (caller, Id(id)) = self.auth.accept::<_, Id>(request, OWNERS).await?;
        let row = store::get(&self.pool, caller.scope("")?.filter(), id, false).await?;
        Ok(Response::new(row.into()))
    }

    #[instrument(name = "configuration.list", skip_all, fields(role, tenant))]
    async fn list_configurations(
        &self,
        request: Request<pb::ListConfigurationsRequest>,
    ) -> Result<Response<pb::ListConfigurationsResponse>, Status> {
        let (caller, list) = self
            .auth
            .accept::<_, ListConfigurations>(request, OWNERS)
            .await?;
        let mut filter = list.filter;
        filter.tenant = caller.scope(&list.tenant_id)?.filter();
        let rows = store::list(&self.pool, &filter).await?;
        let (rows, next_page_token) = pagination::page(rows, filter.limit, |c| TimeKey {
            at: c.created_at,
            id: c.id,
        });
        Ok(Response::new(pb::ListConfigurationsResponse {
            configurations: rows.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    #[instrument(name = "configuration.update", skip_all, fields(role, tenant, id))]
    async fn update_configuration(
        &self,
        request: Request<pb::UpdateConfigurationRequest>,
    ) -> Result<Response<pb::Configuration>, Status> {
        let (caller, patch) = self
            .auth
            .accept::<_, ConfigurationPatch>(request, OWNERS)
            .await?;
        let (id, paths) = (patch.id, patch.paths.clone());
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        let current = store::get(&mut *tx, caller.scope("")?.filter(), id, true).await?;
        let workload = current.current_workload;
        let fields = patch.apply(current.into())?;
        if fields.max_workload < workload {
            return Err(Error::precondition(
                reason::WORKLOAD_OUT_OF_RANGE,
                format!(
                    "max_workload {} is below the current workload {workload}",
                    fields.max_workload
                ),
            )
            .into());
        }
        let row = store::update(&mut tx, &caller.actor(), id, &fields, &paths).await?;
        tx.commit().await.map_err(Error::from)?;
        tracing::info!(fields = ?paths, "configuration updated");
        // Agents hear of it through the change feed, on every replica.
        Ok(Response::new(row.into()))
    }

    #[instrument(name = "configuration.delete", skip_all, fields(role, tenant, id))]
    async fn delete_configuration(
        &self,
        request: Request<pb::DeleteConfigurationRequest>,
    ) -> Result<Response<pb::DeleteConfigurationResponse>, Status> {
        let (caller, Id(id)) = self.auth.accept::<_, Id>(request, OWNERS).await?;
        store::delete(&self.pool, &caller.actor(), caller.scope("")?.filter(), id).await?;
        tracing::info!("configuration deleted");
        Ok(Response::new(pb::DeleteConfigurationResponse {}))
    }

    #[instrument(
        name = "configuration.update_workload",
        skip_all,
        fields(role, tenant, id, delta)
    )]
    async fn update_workload(
        &self,
        request: Request<pb::UpdateWorkloadRequest>,
    ) -> Result<Response<pb::Configuration>, Status> {
        let (caller, change) = self
            .auth
            .accept::<_, WorkloadChange>(request, OWNERS)
            .await?;
        let tenant = caller.scope("")?.filter();
        let actor = caller.actor();
        let row = store::add_workload(&self.pool, &actor, tenant, change.id, change.delta).await?;
        Ok(Response::new(row.into()))
    }

    #[instrument(name = "configuration.agent_card", skip_all, fields(role, tenant, id))]
    async fn get_agent_card(
        &self,
        request: Request<pb::GetAgentCardRequest>,
    ) -> Result<Response<pb::AgentCard>, Status> {
        let (caller, Id(id)) = self.auth.accept::<_, Id>(request, OWNERS).await?;
        let card = super::cards::agent_card(&self.pool, caller.scope("")?.filter(), id).await?;
        Ok(Response::new(pb::AgentCard {
            card_json: card.to_string(),
        }))
    }
}
