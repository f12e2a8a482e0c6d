//! `agentry.v1.AdminService`.

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::store;
use crate::context::Context;
use crate::error::Error;
use crate::pagination::{self, TimeKey};
use crate::pb::admin_service_server::AdminService;
use crate::pb::{self, Role};
use crate::validate;

const ADMIN: &[Role] = &[Role::Admin];

/// Serves tenants and API keys to admins.
#[derive(Debug, Clone)]
pub struct AdminApi {
    ctx: Context,
}

impl AdminApi {
    /// The service over `ctx`.
    pub fn new(ctx: Context) -> Self {
        AdminApi { ctx }
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    #[instrument(name = "admin.create_tenant", skip_all, fields(role, tenant, name))]
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        self.ctx.caller(&request, ADMIN).await?;
        let name = request.into_inner().name;
        tracing::Span::current().record("name", name.as_str());
        let row = store::create_tenant(&self.ctx.pool, &name).await?;
        tracing::info!(id = %row.id, "tenant created");
        Ok(Response::new(row.into()))
    }

    #[instrument(name = "admin.list_tenants", skip_all, fields(role, tenant))]
    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        self.ctx.caller(&request, ADMIN).await?;
        let r = request.into_inner();
        let limit = pagination::page_size(r.page_size)?;
        let rows =
            store::list_tenants(&self.ctx.pool, pagination::decode(&r.page_token)?, limit).await?;
        let (rows, next_page_token) = pagination::page(rows, limit, |t| t.name.clone());
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: rows.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    #[instrument(
        name = "admin.create_api_key",
        skip_all,
        fields(role, tenant, key_role)
    )]
    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        self.ctx.caller(&request, ADMIN).await?;
        let r = request.into_inner();
        let role: Role = validate::enum_value("role", r.role)?
            .ok_or_else(|| Error::invalid("role", "is required"))?;
        tracing::Span::current().record("key_role", role.db_name().unwrap_or_default());
        validate::text("description", &r.description, 256)?;
        let tenant = match (role, validate::opt_uuid("tenant_id", &r.tenant_id)?) {
            (Role::Admin, None) => None,
            (Role::Admin, Some(_)) => {
                return Err(Error::invalid("tenant_id", "must be empty for admin keys").into());
            }
            (_, None) => {
                return Err(
                    Error::invalid("tenant_id", "is required for tenant and agent keys").into(),
                );
            }
            (_, Some(t)) => Some(t),
        };
        let (row, secret) = store::create_key(&self.ctx.pool, role, tenant, &r.description).await?;
        tracing::info!(key = %row.id, "api key created");
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(row.into()),
            secret,
        }))
    }

    #[instrument(name = "admin.list_api_keys", skip_all, fields(role, tenant))]
    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        self.ctx.caller(&request, ADMIN).await?;
        let r = request.into_inner();
        let limit = pagination::page_size(r.page_size)?;
        let tenant = validate::opt_uuid("tenant_id", &r.tenant_id)?;
        let before = pagination::decode::<TimeKey>(&r.page_token)?;
        let rows =
            store::list_keys(&self.ctx.pool, tenant, r.include_revoked, before, limit).await?;
        let (rows, next_page_token) = pagination::page(rows, limit, |k| TimeKey {
            at: k.created_at,
            id: k.id,
        });
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: rows.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    #[instrument(name = "admin.revoke_api_key", skip_all, fields(role, tenant, key))]
    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        self.ctx.caller(&request, ADMIN).await?;
        let id = validate::uuid("id", &request.get_ref().id)?;
        tracing::Span::current().record("key", tracing::field::display(id));
        let row = store::revoke_key(&self.ctx.pool, id).await?;
        // Here at once; other replicas through the change feed.
        self.ctx.auth.forget(id);
        tracing::info!("api key revoked");
        Ok(Response::new(row.into()))
    }
}
