//! `agentry.v1.ConfigurationService`.

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::store::{self, ConfigurationFields, ConfigurationFilter};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::manifests::store::{self as manifests, ManifestKey};
use crate::pagination::{self, TimeKey};
use crate::pb::configuration_service_server::ConfigurationService;
use crate::pb::{self, Role};
use crate::validate;

const OWNERS: &[Role] = &[Role::Admin, Role::Tenant];
const DEFAULT_MAX_WORKLOAD: i32 = 10;
const MAX_WORKLOAD_LIMIT: i32 = 100_000;

/// Serves a tenant's configurations; admins may act for any tenant.
#[derive(Debug, Clone)]
pub struct ConfigurationApi {
    ctx: Context,
}

impl ConfigurationApi {
    /// The service over `ctx`.
    pub fn new(ctx: Context) -> Self {
        ConfigurationApi { ctx }
    }
}

/// Validates the writable fields of `c`; `name` is already resolved.
fn fields(c: pb::Configuration) -> Result<ConfigurationFields> {
    validate::name("configuration.name", &c.name, validate::MAX_NAME_CHARS)?;
    validate::text(
        "configuration.system_prompt",
        &c.system_prompt,
        validate::MAX_PROMPT_CHARS,
    )?;
    if c.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(Error::invalid(
            "configuration.temperature",
            "must be between 0.0 and 2.0",
        ));
    }
    if c.max_tokens.is_some_and(|n| n <= 0) {
        return Err(Error::invalid(
            "configuration.max_tokens",
            "must be greater than 0",
        ));
    }
    if !(1..=MAX_WORKLOAD_LIMIT).contains(&c.max_workload) {
        return Err(Error::invalid(
            "configuration.max_workload",
            format!("must be between 1 and {MAX_WORKLOAD_LIMIT}"),
        ));
    }
    Ok(ConfigurationFields {
        model_id: validate::opt_uuid("configuration.model_id", &c.model_id)?,
        configuration: validate::json("configuration.configuration", c.configuration)?,
        name: c.name,
        enabled: c.enabled.unwrap_or(true),
        system_prompt: c.system_prompt,
        temperature: c.temperature,
        max_tokens: c.max_tokens,
        max_workload: c.max_workload,
    })
}

/// Copies the fields named in `paths` from `src` onto `dst`.
fn apply_mask(
    dst: &mut pb::Configuration,
    mut src: pb::Configuration,
    paths: &[String],
) -> Result<()> {
    if paths.is_empty() {
        return Err(Error::invalid(
            "update_mask",
            "is required: name the fields to change",
        ));
    }
    for path in paths {
        match path.as_str() {
            "name" => dst.name = std::mem::take(&mut src.name),
            "enabled" => {
                dst.enabled = Some(src.enabled.ok_or_else(|| {
                    Error::invalid("configuration.enabled", "is required when in update_mask")
                })?);
            }
            "configuration" => dst.configuration = src.configuration.take(),
            "system_prompt" => dst.system_prompt = std::mem::take(&mut src.system_prompt),
            "temperature" => dst.temperature = src.temperature,
            "max_tokens" => dst.max_tokens = src.max_tokens,
            "model_id" => dst.model_id = std::mem::take(&mut src.model_id),
            "max_workload" => dst.max_workload = src.max_workload,
            other => {
                return Err(Error::invalid(
                    "update_mask",
                    format!("unknown or read-only field {other:?}"),
                ));
            }
        }
    }
    Ok(())
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
        let caller = self.ctx.caller(&request, OWNERS).await?;
        let r = request.into_inner();
        let tenant = caller.owning_tenant(&r.tenant_id)?;
        let key = match r.manifest {
            Some(pb::create_configuration_request::Manifest::ManifestId(id)) => {
                ManifestKey::Id(validate::uuid("manifest_id", &id)?)
            }
            Some(pb::create_configuration_request::Manifest::AgentId(agent_id)) => {
                validate::slug("agent_id", &agent_id, 64)?;
                ManifestKey::AgentId(agent_id)
            }
            None => return Err(Error::invalid("manifest", "set manifest_id or agent_id").into()),
        };
        let manifest = manifests::get(&self.ctx.pool, &key, false).await?;
        tracing::Span::current().record("manifest", manifest.agent_id.as_str());
        let mut config = r.configuration.unwrap_or_default();
        if config.name.is_empty() {
            config.name = manifest.name.clone();
        }
        if config.max_workload == 0 {
            config.max_workload = DEFAULT_MAX_WORKLOAD;
        }
        let fields = fields(config)?;
        let row = store::insert(&self.ctx.pool, tenant, manifest.id, &fields).await?;
        tracing::info!(id = %row.id, "configuration created");
        Ok(Response::new(row.into()))
    }

    #[instrument(name = "configuration.get", skip_all, fields(role, tenant, id))]
    async fn get_configuration(
        &self,
        request: Request<pb::GetConfigurationRequest>,
    ) -> Result<Response<pb::Configuration>, Status> {
        let caller = self.ctx.caller(&request, OWNERS).await?;
        let id = validate::uuid("id", &request.get_ref().id)?;
        tracing::Span::current().record("id", tracing::field::display(id));
        let row = store::get(&self.ctx.pool, caller.scope("")?.filter(), id, false).await?;
        Ok(Response::new(row.into()))
    }

    #[instrument(name = "configuration.list", skip_all, fields(role, tenant))]
    async fn list_configurations(
        &self,
        request: Request<pb::ListConfigurationsRequest>,
    ) -> Result<Response<pb::ListConfigurationsResponse>, Status> {
        let caller = self.ctx.caller(&request, OWNERS).await?;
        let r = request.into_inner();
        if !r.agent_id.is_empty() {
            validate::slug("agent_id", &r.agent_id, 64)?;
        }
        let filter = ConfigurationFilter {
            tenant: caller.scope(&r.tenant_id)?.filter(),
            manifest_id: validate::opt_uuid("manifest_id", &r.manifest_id)?,
            agent_id: (!r.agent_id.is_empty()).then_some(r.agent_id),
            enabled: r.enabled,
            after: pagination::decode::<TimeKey>(&r.page_token)?,
            limit: pagination::page_size(r.page_size)?,
        };
        let rows = store::list(&self.ctx.pool, &filter).await?;
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
        let caller = self.ctx.caller(&request, OWNERS).await?;
        let r = request.into_inner();
        let patch = validate::required("configuration", r.configuration)?;
        let id = validate::uuid("configuration.id", &patch.id)?;
        tracing::Span::current().record("id", tracing::field::display(id));
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut tx = self.ctx.pool.begin().await.map_err(Error::from)?;
        let current = store::get(&mut *tx, caller.scope("")?.filter(), id, true).await?;
        let workload = current.current_workload;
        let mut merged: pb::Configuration = current.into();
        apply_mask(&mut merged, patch, &paths)?;
        let fields = fields(merged)?;
        if fields.max_workload < workload {
            return Err(Error::FailedPrecondition(format!(
                "max_workload {} is below the current workload {workload}",
                fields.max_workload
            ))
            .into());
        }
        let row = store::update(&mut *tx, id, &fields).await?;
        tx.commit().await.map_err(Error::from)?;
        tracing::info!(fields = ?paths, "configuration updated");
        // Agents hear of it through the change feed (routing::view), on every replica.
        Ok(Response::new(row.into()))
    }

    #[instrument(name = "configuration.delete", skip_all, fields(role, tenant, id))]
    async fn delete_configuration(
        &self,
        request: Request<pb::DeleteConfigurationRequest>,
    ) -> Result<Response<pb::DeleteConfigurationResponse>, Status> {
        let caller = self.ctx.caller(&request, OWNERS).await?;
        let id = validate::uuid("id", &request.get_ref().id)?;
        tracing::Span::current().record("id", tracing::field::display(id));
        store::delete(&self.ctx.pool, caller.scope("")?.filter(), id).await?;
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
        let caller = self.ctx.caller(&request, OWNERS).await?;
        let r = request.into_inner();
        let id = validate::uuid("id", &r.id)?;
        if r.delta == 0 || r.delta.unsigned_abs() > MAX_WORKLOAD_LIMIT as u32 {
            return Err(Error::invalid(
                "delta",
                format!("must be non-zero and at most {MAX_WORKLOAD_LIMIT} in size"),
            )
            .into());
        }
        let span = tracing::Span::current();
        span.record("id", tracing::field::display(id));
        span.record("delta", r.delta);
        let row =
            store::add_workload(&self.ctx.pool, caller.scope("")?.filter(), id, r.delta).await?;
        Ok(Response::new(row.into()))
    }
}
