//! What every domain request shares. Each service's `request.rs` converts its
//! proto messages in one `TryFrom` each, naming the offending field on
//! failure; `Authenticator::accept` authorizes and converts, so handlers read
//! as authorize → convert → call → map.

use crate::error::{Error, Result};

/// A domain request that identifies what it acts on in the RPC's span
/// (an instance id, a lease id...). Never whole requests: they carry prompts
/// and settings.
pub trait Traced {
    /// Records this request's identifying fields on `span`.
    fn trace(&self, _span: &tracing::Span) {}
}

/// A request that names one row by UUID in its `id` field (get, delete,
/// revoke).
#[derive(Debug, Clone, Copy)]
pub struct Id(pub uuid::Uuid);

impl Traced for Id {
    fn trace(&self, span: &tracing::Span) {
        span.record("id", tracing::field::display(self.0));
    }
}

macro_rules! by_id {
    ($($message:ty),* $(,)?) => {$(
        impl TryFrom<$message> for Id {
            type Error = Error;
            fn try_from(r: $message) -> Result<Self> {
                crate::validate::uuid("id", &r.id).map(Id)
            }
        }
    )*};
}

impl TryFrom<crate::pb::GetAgentCardRequest> for Id {
    type Error = Error;
    fn try_from(r: crate::pb::GetAgentCardRequest) -> Result<Self> {
        crate::validate::uuid("configuration_id", &r.configuration_id).map(Id)
    }
}

by_id!(
    crate::pb::DeleteManifestRequest,
    crate::pb::GetConfigurationRequest,
    crate::pb::DeleteConfigurationRequest,
    crate::pb::RevokeApiKeyRequest,
);

/// A field mask's paths; an empty mask is refused, as every update must say
/// what it changes.
pub fn mask(mask: Option<prost_types::FieldMask>) -> Result<Vec<String>> {
    let paths = mask.map(|m| m.paths).unwrap_or_default();
    if paths.is_empty() {
        return Err(Error::invalid(
            "update_mask",
            "is required: name the fields to change",
        ));
    }
    Ok(paths)
}
