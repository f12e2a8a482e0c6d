//! Builders of `AdminService` requests: [`CreateApiKey`], [`ListApiKeys`]
//! and [`ListTenants`].

use crate::pb;

/// Builds a [`pb::CreateApiKeyRequest`] for [`Client::create_api_key`](crate::Client::create_api_key).
///
/// ```
/// use agentry_client::{CreateApiKey, pb};
/// let request = CreateApiKey::new(pb::Role::Tenant).tenant("7d1c…").description("ci");
/// # let _: pb::CreateApiKeyRequest = request.into();
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct CreateApiKey {
    request: pb::CreateApiKeyRequest,
}

impl CreateApiKey {
    /// A key with this role. Tenant and agent keys also need [`tenant`](Self::tenant).
    pub fn new(role: pb::Role) -> Self {
        let mut request = pb::CreateApiKeyRequest::default();
        request.set_role(role);
        CreateApiKey { request }
    }

    /// The tenant (UUID) the key acts for; required for tenant and agent
    /// keys, not allowed for admin keys.
    pub fn tenant(mut self, tenant_id: impl Into<String>) -> Self {
        self.request.tenant_id = tenant_id.into();
        self
    }

    /// Free-form label, e.g. `"ci"` (at most 256 characters).
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.request.description = description.into();
        self
    }
}

/// Builds a [`pb::ListApiKeysRequest`] for [`Client::list_api_keys`](crate::Client::list_api_keys).
/// Without filters, every unrevoked key is listed.
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct ListApiKeys {
    request: pb::ListApiKeysRequest,
}

impl ListApiKeys {
    /// All unrevoked keys, first page, server's default page size.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only keys of this tenant (UUID).
    pub fn tenant(mut self, tenant_id: impl Into<String>) -> Self {
        self.request.tenant_id = tenant_id.into();
        self
    }

    /// Also list revoked keys.
    pub fn include_revoked(mut self, include_revoked: bool) -> Self {
        self.request.include_revoked = include_revoked;
        self
    }

    paging!();
}

/// Builds a [`pb::ListTenantsRequest`] for [`Client::list_tenants`](crate::Client::list_tenants).
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct ListTenants {
    request: pb::ListTenantsRequest,
}

impl ListTenants {
    /// All tenants, first page, server's default page size.
    pub fn new() -> Self {
        Self::default()
    }

    paging!();
}

/// Builds a [`pb::ListAuditEventsRequest`] for
/// [`Client::list_audit_events`](crate::Client::list_audit_events). Every
/// filter set must match.
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct ListAuditEvents {
    request: pb::ListAuditEventsRequest,
}

impl ListAuditEvents {
    /// Every event the key may see, newest first, server's default page size.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only events of `action`, e.g. `"manifest.update"`.
    pub fn action(mut self, action: impl Into<String>) -> Self {
        self.request.action = action.into();
        self
    }

    /// Only events about the object with UUID `id` (a manifest, a key...).
    pub fn target(mut self, id: impl Into<String>) -> Self {
        self.request.target_id = id.into();
        self
    }

    /// Only events made with the API key of UUID `id`.
    pub fn key(mut self, id: impl Into<String>) -> Self {
        self.request.key_id = id.into();
        self
    }

    /// Only events at or after `time` (a [`std::time::SystemTime`] or a
    /// [`Timestamp`](crate::Timestamp)).
    pub fn since(mut self, time: impl Into<prost_types::Timestamp>) -> Self {
        self.request.start_time = Some(time.into());
        self
    }

    /// Only events before `time`.
    pub fn until(mut self, time: impl Into<prost_types::Timestamp>) -> Self {
        self.request.end_time = Some(time.into());
        self
    }

    paging!();
}

into_request!(
    ListAuditEvents => ListAuditEventsRequest,
    CreateApiKey => CreateApiKeyRequest,
    ListApiKeys => ListApiKeysRequest,
    ListTenants => ListTenantsRequest,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_api_key_sets_role_tenant_description() {
        let r: pb::CreateApiKeyRequest = CreateApiKey::new(pb::Role::Agent)
            .tenant("t")
            .description("ci")
            .into();
        assert_eq!(
            (r.role(), r.tenant_id.as_str(), r.description.as_str()),
            (pb::Role::Agent, "t", "ci")
        );
    }

    #[test]
    fn list_api_keys_sets_its_fields() {
        let r: pb::ListApiKeysRequest = ListApiKeys::new()
            .tenant("x")
            .include_revoked(true)
            .page_size(3)
            .page_token("t")
            .into();
        assert_eq!(
            r,
            pb::ListApiKeysRequest {
                tenant_id: "x".into(),
                include_revoked: true,
                page_size: 3,
                page_token: "t".into()
            }
        );
    }

    #[test]
    fn list_audit_events_sets_its_fields() {
        let at = prost_types::Timestamp {
            seconds: 10,
            nanos: 0,
        };
        let r: pb::ListAuditEventsRequest = ListAuditEvents::new()
            .action("manifest.create")
            .target("m")
            .key("k")
            .since(at)
            .until(std::time::UNIX_EPOCH + std::time::Duration::from_secs(20))
            .page_size(5)
            .page_token("t")
            .into();
        assert_eq!(
            r,
            pb::ListAuditEventsRequest {
                action: "manifest.create".into(),
                target_id: "m".into(),
                key_id: "k".into(),
                start_time: Some(at),
                end_time: Some(prost_types::Timestamp {
                    seconds: 20,
                    nanos: 0
                }),
                page_size: 5,
                page_token: "t".into()
            }
        );
    }

    #[test]
    fn list_tenants_sets_its_fields() {
        let r: pb::ListTenantsRequest = ListTenants::new().page_size(4).page_token("t").into();
        assert_eq!(
            r,
            pb::ListTenantsRequest {
                page_size: 4,
                page_token: "t".into()
            }
        );
    }
}
