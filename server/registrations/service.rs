//! `agentry.v1.RegistrationService`.

use std::sync::Arc;

use sqlx::PgPool;
use tonic::{Request, Response, Status, Streaming};
use tracing::instrument;

use super::registry::Registry;
use super::request::{
    Announcement, CleanupOrder, DrainOrder, InstanceChange, ListRegistrations, RegistrationKey,
};
use super::store;
use super::stream::{HealthStreams, ResponseStream};
use super::sweeper::Sweeper;
use crate::auth::Authenticator;
use crate::pagination::{self, TimeKey};
use crate::pb::registration_service_server::RegistrationService;
use crate::pb::{self, Role};

/// Roles that register and report health: a tenant's agents and its services.
const REGISTRANTS: &[Role] = &[Role::Agent, Role::Tenant];
const READERS: &[Role] = &[Role::Agent, Role::Tenant, Role::Admin];

/// Serves the registrations of the caller's tenant.
#[derive(Debug, Clone)]
pub struct RegistrationApi {
    auth: Authenticator,
    pool: PgPool,
    registry: Registry,
    streams: HealthStreams,
    sweeper: Arc<Sweeper>,
}

impl RegistrationApi {
    /// The service: registrations in `pool`, changed through `registry`,
    /// health streams opened by `streams`, `Cleanup` run by `sweeper`.
    pub fn new(
        auth: Authenticator,
        pool: PgPool,
        registry: Registry,
        streams: HealthStreams,
        sweeper: Arc<Sweeper>,
    ) -> Self {
        RegistrationApi {
            auth,
            pool,
            registry,
            streams,
            sweeper,
        }
    }
}

impl RegistrationApi {
    /// `UpdateHealth` and `DeactivateRegistration`: a fenced change by instance id.
    async fn change<P>(&self, request: Request<P>) -> Result<Response<pb::Registration>, Status>
    where
        InstanceChange: TryFrom<P, Error = crate::Error>,
    {
        let (caller, r) = self
            .auth
            .accept::<_, InstanceChange>(request, REGISTRANTS)
            .await?;
        let tenant = caller.scope("")?.filter();
        let row = self
            .registry
            .transition(tenant, r.instance_id, r.epoch, r.change)
            .await?;
        Ok(Response::new(row.into()))
    }
}

#[tonic::async_trait]
impl RegistrationService for RegistrationApi {
    #[instrument(
        name = "registration.register",
        skip_all,
        fields(role, tenant, instance)
    )]
    async fn register_instance(
        &self,
        request: Request<pb::RegisterInstanceRequest>,
    ) -> Result<Response<pb::RegisterInstanceResponse>, Status> {
        let (caller, a) = self
            .auth
            .accept::<_, Announcement>(request, REGISTRANTS)
            .await?;
        let registered = self
            .registry
            .register(caller.owning_tenant("")?, a, false)
            .await?;
        Ok(Response::new(pb::RegisterInstanceResponse {
            registration: Some(registered.row.into()),
            created: registered.created,
        }))
    }

    #[instrument(name = "registration.get", skip_all, fields(role, tenant))]
    async fn get_registration(
        &self,
        request: Request<pb::GetRegistrationRequest>,
    ) -> Result<Response<pb::Registration>, Status> {
        let (caller, key) = self
            .auth
            .accept::<_, RegistrationKey>(request, READERS)
            .await?;
        let row = store::get(&self.pool, caller.scope("")?.filter(), &key).await?;
        Ok(Response::new(row.into()))
    }

    #[instrument(name = "registration.list", skip_all, fields(role, tenant))]
    async fn list_registrations(
        &self,
        request: Request<pb::ListRegistrationsRequest>,
    ) -> Result<Response<pb::ListRegistrationsResponse>, Status> {
        let (caller, list) = self
            .auth
            .accept::<_, ListRegistrations>(request, READERS)
            .await?;
        let mut filter = list.filter;
        filter.tenant = caller.scope(&list.tenant_id)?.filter();
        let rows = store::list(&self.pool, &filter).await?;
        let (rows, next_page_token) = pagination::page(rows, filter.limit, |r| TimeKey {
            at: r.created_at,
            id: r.id,
        });
        Ok(Response::new(pb::ListRegistrationsResponse {
            registrations: rows.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    #[instrument(
        name = "registration.update_health",
        skip_all,
        fields(role, tenant, instance)
    )]
    async fn update_health(
        &self,
        request: Request<pb::UpdateHealthRequest>,
    ) -> Result<Response<pb::Registration>, Status> {
        self.change(request).await
    }

    #[instrument(
        name = "registration.deactivate",
        skip_all,
        fields(role, tenant, instance)
    )]
    async fn deactivate_registration(
        &self,
        request: Request<pb::DeactivateRegistrationRequest>,
    ) -> Result<Response<pb::Registration>, Status> {
        self.change(request).await
    }

    #[instrument(
        name = "registration.drain_registration",
        skip_all,
        fields(role, tenant, instance)
    )]
    async fn drain_registration(
        &self,
        request: Request<pb::DrainRegistrationRequest>,
    ) -> Result<Response<pb::Registration>, Status> {
        let (caller, r) = self
            .auth
            .accept::<_, DrainOrder>(request, &[Role::Tenant])
            .await?;
        let tenant = caller.owning_tenant("")?;
        // The change feed carries it to the replica holding the agent's stream.
        let actor = caller.actor();
        let row = store::drain(&self.pool, &actor, tenant, &r.instance_id, &r.reason).await?;
        tracing::info!(reason = %r.reason, "instance drained");
        Ok(Response::new(row.into()))
    }

    #[instrument(name = "registration.cleanup", skip_all, fields(role, tenant))]
    async fn cleanup(
        &self,
        request: Request<pb::CleanupRequest>,
    ) -> Result<Response<pb::CleanupResponse>, Status> {
        let (caller, order) = self
            .auth
            .accept::<_, CleanupOrder>(request, &[Role::Admin])
            .await?;
        let mut settings = self.sweeper.settings().clone();
        settings.requested_by = Some(caller.actor());
        settings.ignore_guard = order.ignore_partition_guard;
        if let Some(threshold) = order.stale_threshold {
            settings.stale_threshold = threshold;
        }
        let report = self.sweeper.sweep_with(&settings).await?;
        Ok(Response::new(pb::CleanupResponse {
            marked_unknown: report.marked_unknown,
            deactivated: report.deactivated,
            deleted: report.deleted,
            leases_expired: report.leases_expired,
            partition_guard_tripped: report.guard_tripped,
        }))
    }

    #[instrument(
        name = "registration.health_stream",
        skip_all,
        fields(role, tenant, instance)
    )]
    async fn health_stream(
        &self,
        request: Request<Streaming<pb::HealthStreamRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let (caller, held) = self.auth.authorize_stream(&request, REGISTRANTS).await?;
        let tenant = caller.owning_tenant("")?;
        Ok(Response::new(
            self.streams
                .open(tenant, held, request.into_inner())
                .await?,
        ))
    }
}
