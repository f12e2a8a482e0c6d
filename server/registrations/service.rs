//! `agentry.v1.RegistrationService`.

use tonic::{Request, Response, Status, Streaming};
use tracing::instrument;

use super::sessions::Control;
use super::store::{self, Announcement, RegistrationFilter, RegistrationKey, Transition};
use super::sweeper::{self, SweepSettings};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::pagination::{self, TimeKey};
use crate::pb::registration_service_server::RegistrationService;
use crate::pb::{self, HealthStatus, Role};
use crate::validate;

/// Roles that register and report health: a tenant's agents and its services.
pub(super) const REGISTRANTS: &[Role] = &[Role::Agent, Role::Tenant];
const READERS: &[Role] = &[Role::Agent, Role::Tenant, Role::Admin];

/// Serves the registrations of the caller's tenant.
#[derive(Debug, Clone)]
pub struct RegistrationApi {
    pub(crate) ctx: Context,
}

impl RegistrationApi {
    /// The service over `ctx`.
    pub fn new(ctx: Context) -> Self {
        RegistrationApi { ctx }
    }

    /// Registers (or re-registers) an instance and fences off its older session here.
    pub(super) async fn register(
        &self,
        tenant: uuid::Uuid,
        a: &Announcement,
    ) -> Result<(store::RegistrationRow, bool)> {
        let (row, created) = store::register(
            &self.ctx.pool,
            tenant,
            a,
            self.ctx.registry.create_unknown_manifests,
        )
        .await?;
        self.ctx.sessions.supersede_older(row.id, row.epoch);
        tracing::info!(registration = %row.id, epoch = row.epoch, created, "instance registered");
        Ok((row, created))
    }

    pub(crate) fn sweep_settings(&self) -> SweepSettings {
        let r = &self.ctx.registry;
        SweepSettings {
            stale_threshold: r.stale_timeout,
            guard_ratio: r.partition_guard_ratio,
            guard_min_instances: r.partition_guard_min_instances,
            ignore_guard: false,
            retention: r.registration_retention,
            event_retention: r.event_retention,
        }
    }
}

/// Validates what an instance says about itself; `prefix` names the message.
pub(super) fn announcement(
    prefix: &str,
    instance_id: String,
    agent_id: String,
    name: String,
    connection_details: Option<prost_types::Struct>,
    runtime_config: Option<prost_types::Struct>,
    capacity: Option<i32>,
) -> Result<Announcement> {
    let f = |n: &str| {
        if prefix.is_empty() {
            n.to_owned()
        } else {
            format!("{prefix}.{n}")
        }
    };
    instance(&f("instance_id"), &instance_id)?;
    validate::slug(&f("agent_id"), &agent_id, 64)?;
    validate::text(&f("name"), &name, validate::MAX_NAME_CHARS)?;
    if capacity.is_some_and(|c| c <= 0) {
        return Err(Error::invalid(
            f("capacity"),
            "must be greater than 0 when set",
        ));
    }
    Ok(Announcement {
        connection_details: validate::json(&f("connection_details"), connection_details)?,
        runtime_config: validate::json(&f("runtime_config"), runtime_config)?,
        instance_id,
        agent_id,
        name,
        capacity,
    })
}

/// An instance id: 1..=256 printable characters.
pub(super) fn instance(field: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.chars().count() > 256 || value.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            "must be 1..=256 printable characters",
        ));
    }
    Ok(())
}

fn key(key: Option<pb::get_registration_request::Key>) -> Result<RegistrationKey> {
    match key {
        Some(pb::get_registration_request::Key::Id(id)) => {
            Ok(RegistrationKey::Id(validate::uuid("id", &id)?))
        }
        Some(pb::get_registration_request::Key::InstanceId(i)) => {
            instance("instance_id", &i)?;
            Ok(RegistrationKey::InstanceId(i))
        }
        None => Err(Error::invalid("key", "set id or instance_id")),
    }
}

/// Applies a fenced transition, and closes this server's stream of a
/// deactivated registration.
async fn transition(
    api: &RegistrationApi,
    tenant: Option<uuid::Uuid>,
    instance_id: String,
    epoch: i64,
    t: Transition,
) -> Result<pb::Registration> {
    let row = store::transition(
        &api.ctx.pool,
        tenant,
        &RegistrationKey::InstanceId(instance_id),
        epoch,
        t,
    )
    .await??;
    if matches!(t, Transition::Deactivate) {
        api.ctx.sessions.tell(
            row.id,
            Control::Close(Status::aborted("the registration was deactivated")),
        );
    }
    Ok(row.into())
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
        let caller = self.ctx.caller(&request, REGISTRANTS).await?;
        let tenant = caller.owning_tenant("")?;
        let r = request.into_inner();
        tracing::Span::current().record("instance", r.instance_id.as_str());
        let a = announcement(
            "",
            r.instance_id,
            r.agent_id,
            r.name,
            r.connection_details,
            r.runtime_config,
            r.capacity,
        )?;
        let (row, created) = self.register(tenant, &a).await?;
        Ok(Response::new(pb::RegisterInstanceResponse {
            registration: Some(row.into()),
            created,
        }))
    }

    #[instrument(name = "registration.get", skip_all, fields(role, tenant))]
    async fn get_registration(
        &self,
        request: Request<pb::GetRegistrationRequest>,
    ) -> Result<Response<pb::Registration>, Status> {
        let caller = self.ctx.caller(&request, READERS).await?;
        let key = key(request.into_inner().key)?;
        let row = store::get(&self.ctx.pool, caller.scope("")?.filter(), &key).await?;
        Ok(Response::new(row.into()))
    }

    #[instrument(name = "registration.list", skip_all, fields(role, tenant))]
    async fn list_registrations(
        &self,
        request: Request<pb::ListRegistrationsRequest>,
    ) -> Result<Response<pb::ListRegistrationsResponse>, Status> {
        let caller = self.ctx.caller(&request, READERS).await?;
        let r = request.into_inner();
        if !r.agent_id.is_empty() {
            validate::slug("agent_id", &r.agent_id, 64)?;
        }
        let filter = RegistrationFilter {
            tenant: caller.scope(&r.tenant_id)?.filter(),
            registration_status: validate::enum_value::<pb::RegistrationStatus>(
                "registration_status",
                r.registration_status,
            )?
            .and_then(pb::RegistrationStatus::db_name),
            health_status: validate::enum_value::<HealthStatus>("health_status", r.health_status)?
                .and_then(HealthStatus::db_name),
            agent_id: (!r.agent_id.is_empty()).then_some(r.agent_id),
            configuration_id: validate::opt_uuid("configuration_id", &r.configuration_id)?,
            after: pagination::decode::<TimeKey>(&r.page_token)?,
            limit: pagination::page_size(r.page_size)?,
        };
        let rows = store::list(&self.ctx.pool, &filter).await?;
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
        let caller = self.ctx.caller(&request, REGISTRANTS).await?;
        let r = request.into_inner();
        instance("instance_id", &r.instance_id)?;
        tracing::Span::current().record("instance", r.instance_id.as_str());
        let health = match validate::enum_value::<HealthStatus>("health_status", r.health_status)? {
            Some(h @ (HealthStatus::Healthy | HealthStatus::Degraded)) => h,
            _ => return Err(Error::invalid("health_status", "must be HEALTHY or DEGRADED").into()),
        };
        if r.epoch < 0 {
            return Err(Error::invalid("epoch", "must not be negative").into());
        }
        let tenant = caller.scope("")?.filter();
        Ok(Response::new(
            transition(
                self,
                tenant,
                r.instance_id,
                r.epoch,
                Transition::Report(health),
            )
            .await?,
        ))
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
        let caller = self.ctx.caller(&request, REGISTRANTS).await?;
        let r = request.into_inner();
        instance("instance_id", &r.instance_id)?;
        tracing::Span::current().record("instance", r.instance_id.as_str());
        if r.epoch < 0 {
            return Err(Error::invalid("epoch", "must not be negative").into());
        }
        let tenant = caller.scope("")?.filter();
        Ok(Response::new(
            transition(self, tenant, r.instance_id, r.epoch, Transition::Deactivate).await?,
        ))
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
        let caller = self.ctx.caller(&request, &[Role::Tenant]).await?;
        let tenant = caller.owning_tenant("")?;
        let r = request.into_inner();
        instance("instance_id", &r.instance_id)?;
        tracing::Span::current().record("instance", r.instance_id.as_str());
        if r.reason.chars().count() > 256 {
            return Err(Error::invalid("reason", "must be at most 256 characters").into());
        }
        // The change feed carries it to the replica holding the agent's stream.
        let row = store::drain(&self.ctx.pool, tenant, &r.instance_id, &r.reason).await?;
        tracing::info!(reason = %r.reason, "instance drained");
        Ok(Response::new(row.into()))
    }

    #[instrument(name = "registration.cleanup", skip_all, fields(role, tenant))]
    async fn cleanup(
        &self,
        request: Request<pb::CleanupRequest>,
    ) -> Result<Response<pb::CleanupResponse>, Status> {
        self.ctx.caller(&request, &[Role::Admin]).await?;
        let r = request.into_inner();
        let mut settings = self.sweep_settings();
        settings.ignore_guard = r.ignore_partition_guard;
        if let Some(d) = r.stale_threshold {
            let d = std::time::Duration::try_from(d)
                .ok()
                .filter(|d| *d >= std::time::Duration::from_millis(1))
                .ok_or_else(|| Error::invalid("stale_threshold", "must be a positive duration"))?;
            settings.stale_threshold = d;
        }
        // Heartbeats noted in memory count: write them before judging staleness.
        self.ctx.sessions.flush(&self.ctx.pool).await?;
        let report = sweeper::sweep(&self.ctx.pool, &settings).await?;
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
    ) -> Result<Response<super::stream::ResponseStream>, Status> {
        super::stream::open(self, request).await
    }
}
