//! What callers ask of manifests, converted once from the proto messages and
//! validated; a bad field is `INVALID_ARGUMENT` naming it.

use uuid::Uuid;

use super::store::{ManifestFields, ManifestFilter, ManifestKey};
use crate::error::{Error, Result};
use crate::pagination;
use crate::pb;
use crate::request::{Traced, mask};
use crate::validate;

/// `UpdateManifest`: which manifest, the new values, and which fields take them.
#[derive(Debug)]
pub struct ManifestPatch {
    pub id: Uuid,
    pub values: pb::Manifest,
    pub paths: Vec<String>,
}

impl ManifestPatch {
    /// Copies the fields named in the mask onto `current`, then validates the result.
    pub fn apply(self, current: pb::Manifest) -> Result<ManifestFields> {
        let (mut dst, mut src) = (current, self.values);
        for path in &self.paths {
            match path.as_str() {
                "agent_type" => dst.agent_type = std::mem::take(&mut src.agent_type),
                "name" => dst.name = std::mem::take(&mut src.name),
                "description" => dst.description = std::mem::take(&mut src.description),
                "version" => dst.version = std::mem::take(&mut src.version),
                "capabilities" => dst.capabilities = std::mem::take(&mut src.capabilities),
                "requirements" => dst.requirements = std::mem::take(&mut src.requirements),
                "metadata" => dst.metadata = src.metadata.take(),
                "status" => dst.status = src.status,
                other => {
                    return Err(Error::invalid(
                        "update_mask",
                        format!("unknown or immutable field {other:?}"),
                    ));
                }
            }
        }
        fields(dst)
    }
}

/// Validates the writable fields of a manifest.
fn fields(m: pb::Manifest) -> Result<ManifestFields> {
    let f = |name: &str| format!("manifest.{name}");
    validate::slug(&f("agent_id"), &m.agent_id, 64)?;
    validate::slug(&f("agent_type"), &m.agent_type, 64)?;
    validate::name(&f("name"), &m.name, validate::MAX_NAME_CHARS)?;
    validate::text(&f("description"), &m.description, validate::MAX_TEXT_CHARS)?;
    validate::semver(&f("version"), &m.version)?;
    validate::capabilities(&f("capabilities"), &m.capabilities)?;
    validate::text(
        &f("requirements"),
        &m.requirements,
        validate::MAX_TEXT_CHARS,
    )?;
    let status =
        validate::enum_value(&f("status"), m.status)?.unwrap_or(pb::ManifestStatus::Active);
    Ok(ManifestFields {
        metadata: validate::json(&f("metadata"), m.metadata)?,
        agent_id: m.agent_id,
        agent_type: m.agent_type,
        name: m.name,
        description: m.description,
        version: m.version,
        capabilities: m.capabilities,
        requirements: m.requirements,
        status,
    })
}

impl TryFrom<pb::CreateManifestRequest> for ManifestFields {
    type Error = Error;
    fn try_from(r: pb::CreateManifestRequest) -> Result<Self> {
        fields(validate::required("manifest", r.manifest)?)
    }
}

impl Traced for ManifestFields {
    fn trace(&self, span: &tracing::Span) {
        span.record("agent_id", self.agent_id.as_str());
    }
}

impl TryFrom<pb::GetManifestRequest> for ManifestKey {
    type Error = Error;
    fn try_from(r: pb::GetManifestRequest) -> Result<Self> {
        use pb::get_manifest_request::Key;
        match r.key {
            Some(Key::Id(id)) => Ok(ManifestKey::Id(validate::uuid("id", &id)?)),
            Some(Key::AgentId(agent_id)) => {
                validate::slug("agent_id", &agent_id, 64)?;
                Ok(ManifestKey::AgentId(agent_id))
            }
            None => Err(Error::invalid("key", "set id or agent_id")),
        }
    }
}

impl Traced for ManifestKey {}

impl TryFrom<pb::ListManifestsRequest> for ManifestFilter {
    type Error = Error;
    fn try_from(r: pb::ListManifestsRequest) -> Result<Self> {
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        Ok(ManifestFilter {
            status: validate::enum_value("status", r.status)?,
            agent_type: non_empty(r.agent_type),
            capability: non_empty(r.capability),
            after: pagination::decode::<String>(&r.page_token)?,
            limit: pagination::page_size(r.page_size)?,
        })
    }
}

impl Traced for ManifestFilter {}

impl TryFrom<pb::UpdateManifestRequest> for ManifestPatch {
    type Error = Error;
    fn try_from(r: pb::UpdateManifestRequest) -> Result<Self> {
        let values = validate::required("manifest", r.manifest)?;
        Ok(ManifestPatch {
            id: validate::uuid("manifest.id", &values.id)?,
            paths: mask(r.update_mask)?,
            values,
        })
    }
}

impl Traced for ManifestPatch {
    fn trace(&self, span: &tracing::Span) {
        span.record("id", tracing::field::display(self.id));
    }
}
