//! What admins ask, converted once from the proto messages and validated; a
//! bad field is `INVALID_ARGUMENT` naming it.

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::pagination::{self, TimeKey};
use crate::pb::{self, Role};
use crate::request::Traced;
use crate::validate;

/// Longest key description.
const MAX_DESCRIPTION_CHARS: usize = 256;

/// `CreateTenant`.
#[derive(Debug)]
pub struct NewTenant {
    pub name: String,
}

/// A page of a listing ordered by `K`.
#[derive(Debug)]
pub struct Page<K> {
    pub after: Option<K>,
    pub limit: i64,
}

/// `CreateApiKey`.
#[derive(Debug)]
pub struct NewKey {
    pub role: Role,
    /// Set exactly for tenant and agent keys.
    pub tenant: Option<Uuid>,
    pub description: String,
}

/// `ListApiKeys`.
#[derive(Debug)]
pub struct KeyListing {
    pub tenant: Option<Uuid>,
    pub include_revoked: bool,
    pub page: Page<TimeKey>,
}

impl TryFrom<pb::CreateTenantRequest> for NewTenant {
    type Error = Error;
    fn try_from(r: pb::CreateTenantRequest) -> Result<Self> {
        validate::slug("name", &r.name, 63)?;
        Ok(NewTenant { name: r.name })
    }
}

impl Traced for NewTenant {
    fn trace(&self, span: &tracing::Span) {
        span.record("name", self.name.as_str());
    }
}

impl TryFrom<pb::ListTenantsRequest> for Page<String> {
    type Error = Error;
    fn try_from(r: pb::ListTenantsRequest) -> Result<Self> {
        Ok(Page {
            after: pagination::decode(&r.page_token)?,
            limit: pagination::page_size(r.page_size)?,
        })
    }
}

impl<K> Traced for Page<K> {}

impl TryFrom<pb::CreateApiKeyRequest> for NewKey {
    type Error = Error;
    fn try_from(r: pb::CreateApiKeyRequest) -> Result<Self> {
        let role: Role = validate::enum_value("role", r.role)?
            .ok_or_else(|| Error::invalid("role", "is required"))?;
        validate::text("description", &r.description, MAX_DESCRIPTION_CHARS)?;
        let tenant = match (role, validate::opt_uuid("tenant_id", &r.tenant_id)?) {
            (Role::Admin, None) => None,
            (Role::Admin, Some(_)) => {
                return Err(Error::invalid("tenant_id", "must be empty for admin keys"));
            }
            (_, None) => {
                return Err(Error::invalid(
                    "tenant_id",
                    "is required for tenant and agent keys",
                ));
            }
            (_, Some(t)) => Some(t),
        };
        Ok(NewKey {
            role,
            tenant,
            description: r.description,
        })
    }
}

impl Traced for NewKey {
    fn trace(&self, span: &tracing::Span) {
        span.record("key_role", self.role.db_name().unwrap_or_default());
    }
}

impl TryFrom<pb::ListApiKeysRequest> for KeyListing {
    type Error = Error;
    fn try_from(r: pb::ListApiKeysRequest) -> Result<Self> {
        Ok(KeyListing {
            tenant: validate::opt_uuid("tenant_id", &r.tenant_id)?,
            include_revoked: r.include_revoked,
            page: Page {
                after: pagination::decode(&r.page_token)?,
                limit: pagination::page_size(r.page_size)?,
            },
        })
    }
}

impl Traced for KeyListing {}
