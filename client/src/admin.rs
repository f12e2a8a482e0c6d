//! `AdminService` calls.

use crate::{Client, Result, pb};

/// # Admin operations
///
/// Tenants, API keys and the audit log. These calls need an admin key
/// (otherwise [`Error::PermissionDenied`](crate::Error::PermissionDenied)),
/// except [`Client::list_audit_events`], which a tenant key may call too.
impl Client {
    /// Creates a tenant named `name` (a lowercase slug such as `"acme-corp"`).
    ///
    /// Fails with [`Error::AlreadyExists`](crate::Error::AlreadyExists) when
    /// the name is taken.
    pub async fn create_tenant(&self, name: &str) -> Result<pb::Tenant> {
        self.write(
            pb::CreateTenantRequest {
                name: name.to_owned(),
            },
            |r| {
                let mut service = self.admin_service();
                async move { service.create_tenant(r).await }
            },
        )
        .await
    }

    /// Lists tenants ordered by name, one page at a time, usually from a
    /// [`ListTenants`](crate::ListTenants).
    pub async fn list_tenants(
        &self,
        request: impl Into<pb::ListTenantsRequest>,
    ) -> Result<pb::ListTenantsResponse> {
        self.retried(request.into(), |r| {
            let mut service = self.admin_service();
            async move { service.list_tenants(r).await }
        })
        .await
    }

    /// Creates an API key, usually from a [`CreateApiKey`](crate::CreateApiKey).
    ///
    /// The response's `secret` is what [`ClientBuilder::api_key`](crate::ClientBuilder::api_key)
    /// takes. It is returned only here: the server keeps only a hash of it.
    pub async fn create_api_key(
        &self,
        request: impl Into<pb::CreateApiKeyRequest>,
    ) -> Result<pb::CreateApiKeyResponse> {
        self.write(request.into(), |r| {
            let mut service = self.admin_service();
            async move { service.create_api_key(r).await }
        })
        .await
    }

    /// Lists API keys (never their secrets) newest first, one page at a time,
    /// usually from a [`ListApiKeys`](crate::ListApiKeys).
    pub async fn list_api_keys(
        &self,
        request: impl Into<pb::ListApiKeysRequest>,
    ) -> Result<pb::ListApiKeysResponse> {
        self.retried(request.into(), |r| {
            let mut service = self.admin_service();
            async move { service.list_api_keys(r).await }
        })
        .await
    }

    /// Revokes the API key with UUID `id`; it stops working at once. Returns
    /// the key's record, with its `revoke_time`.
    pub async fn revoke_api_key(&self, id: &str) -> Result<pb::ApiKey> {
        self.retried(pb::RevokeApiKeyRequest { id: id.to_owned() }, |r| {
            let mut service = self.admin_service();
            async move { service.revoke_api_key(r).await }
        })
        .await
    }

    /// Lists the audit log newest first, one page at a time, usually from a
    /// [`ListAuditEvents`](crate::ListAuditEvents): who changed what, when.
    /// An admin key sees every event; a tenant key the events of its
    /// tenant's keys and those about its tenant's objects.
    pub async fn list_audit_events(
        &self,
        request: impl Into<pb::ListAuditEventsRequest>,
    ) -> Result<pb::ListAuditEventsResponse> {
        self.retried(request.into(), |r| {
            let mut service = self.admin_service();
            async move { service.list_audit_events(r).await }
        })
        .await
    }
}
