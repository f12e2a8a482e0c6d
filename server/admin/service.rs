//! `agentry.v1.AdminService`.

use sqlx::PgPool;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::request::{KeyListing, NewKey, NewTenant, Page};
use super::store;
use crate::audit::{self, AuditFilter};
use crate::auth::Authenticator;
use crate::pagination::{self, TimeKey};
use crate::pb::admin_service_server::AdminService;
use crate::pb::{self, Role};
use crate::request::Id;

const ADMIN: &[Role] = &[Role::Admin];
/// Who may read the audit log: admins all of it, tenants their own.
const AUDITORS: &[Role] = &[Role::Admin, Role::Tenant];

/// Serves tenants and API keys to admins, and the audit log.
#[derive(Debug, Clone)]
pub struct AdminApi {
    auth: Authenticator,
    pool: PgPool,
}

impl AdminApi {
    /// The service over tenants and keys in `pool`; revocations are
    /// forgotten by `auth` at once.
    pub fn new(auth: Authenticator, pool: PgPool) -> Self {
        AdminApi { auth, pool }
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    #[instrument(name = "admin.create_tenant", skip_all, fields(role, tenant, name))]
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let (caller, new) = self.auth.accept::<_, NewTenant>(request, ADMIN).await?;
        let row = store::create_tenant(&self.pool, &caller.actor(), &new.name).await?;
        tracing::info!(id = %row.id, "tenant created");
        Ok(Response::new(row.into()))
    }

    #[instrument(name = "admin.list_tenants", skip_all, fields(role, tenant))]
    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let (_, page) = self.auth.accept::<_, Page<String>>(request, ADMIN).await?;
        let rows = store::list_tenants(&self.pool, page.after, page.limit).await?;
        let (rows, next_page_token) = pagination::page(rows, page.limit, |t| t.name.clone());
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
        let (caller, new) = self.auth.accept::<_, NewKey>(request, ADMIN).await?;
        let actor = caller.actor();
        let (row, secret) =
            store::create_key(&self.pool, &actor, new.role, new.tenant, &new.description).await?;
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
        let (_, l) = self.auth.accept::<_, KeyListing>(request, ADMIN).await?;
        let limit = l.page.limit;
        let rows =
            store::list_keys(&self.pool, l.tenant, l.include_revoked, l.page.after, limit).await?;
        let (rows, next_page_token) = pagination::page(rows, limit, |k| TimeKey {
            at: k.created_at,
            id: k.id,
        });
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: rows.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    #[instrument(name = "admin.revoke_api_key", skip_all, fields(role, tenant, id))]
    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let (caller, Id(id)) = self.auth.accept::<_, Id>(request, ADMIN).await?;
        let row = store::revoke_key(&self.pool, &caller.actor(), id).await?;
        // Here at once; other replicas through the change feed.
        self.auth.forget(id);
        tracing::info!("api key revoked");
        Ok(Response::new(row.into()))
    }

    #[instrument(name = "admin.list_audit_events", skip_all, fields(role, tenant))]
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let (caller, filter) = self
            .auth
            .accept::<_, AuditFilter>(request, AUDITORS)
            .await?;
        // From the key, never from the request: a tenant sees its own log.
        let tenant = caller.scope("")?.filter();
        Ok(Response::new(
            audit::page(&self.pool, tenant, &filter).await?,
        ))
    }
}
