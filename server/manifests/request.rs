//! What callers ask of manifests, converted once from the proto messages and
//! validated; a bad field is `INVALID_ARGUMENT` naming it.

use uuid::Uuid;

use super::card::{self, CardFields, Path, Skill};
use super::import;
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
                "skills" => dst.skills = std::mem::take(&mut src.skills),
                "card" => dst.card = src.card.take(),
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
    let skills: Vec<Skill> = m.skills.into_iter().map(Into::into).collect();
    card::check_skills(Path::PROTO, &skills)?;
    let card = m.card.map(CardFields::from_proto).transpose()?;
    if let Some(card) = &card {
        card::check_card(Path::PROTO, card)?;
    }
    Ok(ManifestFields {
        skills,
        card,
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
        if !r.agent_type.is_empty() {
            validate::slug("agent_type", &r.agent_type, 64)?;
        }
        if !r.capability.is_empty() {
            validate::capability("capability", &r.capability)?;
        }
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

/// `ImportAgentCard` or `ImportMcpServer`: the document mapped to the
/// manifest it creates (or, for an existing agent_id, updates).
#[derive(Debug)]
pub struct Import {
    pub fields: ManifestFields,
    pub mapped: Vec<String>,
    pub ignored: Vec<String>,
    pub validate_only: bool,
}

impl Import {
    fn new(
        doc: import::Mapped,
        agent_id: String,
        agent_type: String,
        default_type: &str,
        validate_only: bool,
    ) -> Result<Self> {
        let agent_id = if agent_id.is_empty() {
            validate::slug("agent_id", &doc.derived_agent_id, 64).map_err(|_| {
                Error::invalid(
                    "agent_id",
                    "could not be derived from the document's name: give one",
                )
            })?;
            doc.derived_agent_id
        } else {
            validate::slug("agent_id", &agent_id, 64)?;
            agent_id
        };
        let agent_type = if agent_type.is_empty() {
            default_type.to_owned()
        } else {
            validate::slug("agent_type", &agent_type, 64)?;
            agent_type
        };
        Ok(Import {
            fields: ManifestFields {
                agent_id,
                agent_type,
                name: doc.name,
                description: doc.description,
                version: doc.version,
                capabilities: Vec::new(),
                requirements: String::new(),
                metadata: serde_json::json!({}),
                status: pb::ManifestStatus::Active,
                skills: doc.skills,
                card: Some(doc.card),
            },
            mapped: doc.mapped,
            ignored: doc.ignored,
            validate_only,
        })
    }
}

impl TryFrom<pb::ImportAgentCardRequest> for Import {
    type Error = Error;
    fn try_from(r: pb::ImportAgentCardRequest) -> Result<Self> {
        let doc = import::agent_card("card_json", &r.card_json)?;
        Import::new(doc, r.agent_id, r.agent_type, "a2a", r.validate_only)
    }
}

impl TryFrom<pb::ImportMcpServerRequest> for Import {
    type Error = Error;
    fn try_from(r: pb::ImportMcpServerRequest) -> Result<Self> {
        let doc = import::mcp_server("server_json", &r.server_json)?;
        Import::new(doc, r.agent_id, r.agent_type, "mcp", r.validate_only)
    }
}

impl Traced for Import {
    fn trace(&self, span: &tracing::Span) {
        span.record("agent_id", self.fields.agent_id.as_str());
    }
}
