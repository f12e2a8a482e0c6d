//! Builders of `ManifestService` requests: [`CreateManifest`],
//! [`ListManifests`], [`UpdateManifest`], [`ImportAgentCard`] and
//! [`ImportMcpServer`], and of a manifest's [`Skill`]s.

use super::{field_mask, mask};
use crate::json::json_to_struct;
use crate::pb;

/// Builds a [`pb::CreateManifestRequest`] for [`Client::create_manifest`](crate::Client::create_manifest).
///
/// ```
/// use agentry_client::{CreateManifest, pb};
/// let request: pb::CreateManifestRequest = CreateManifest::new("ide-agent", "ide", "IDE Agent", "1.0.0")
///     .capabilities(["code_editing", "terminal_access"])
///     .metadata(serde_json::json!({"vendor": "acme"}))
///     .status(pb::ManifestStatus::Beta)
///     .into();
/// assert_eq!(request.manifest.unwrap().capabilities.len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct CreateManifest {
    manifest: pb::Manifest,
}

impl CreateManifest {
    /// A manifest with its required fields: the unique `agent_id` slug (e.g.
    /// `"ide-agent"`), the `agent_type` slug (e.g. `"ide"`), a human-readable
    /// `name` and a semantic `version` (e.g. `"1.0.0"`).
    pub fn new(
        agent_id: impl Into<String>,
        agent_type: impl Into<String>,
        name: impl Into<String>,
        version: impl Into<String>,
    ) -> Self {
        CreateManifest {
            manifest: pb::Manifest {
                agent_id: agent_id.into(),
                agent_type: agent_type.into(),
                name: name.into(),
                version: version.into(),
                ..Default::default()
            },
        }
    }

    /// Free-form description, for people choosing among manifests.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.manifest.description = description.into();
        self
    }

    /// What the agent can do, e.g. `["code_editing", "terminal_access"]`.
    pub fn capabilities<I>(mut self, capabilities: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.manifest.capabilities = capabilities.into_iter().map(Into::into).collect();
        self
    }

    /// System requirements as free text; the server stores them without
    /// interpreting them.
    pub fn requirements(mut self, requirements: impl Into<String>) -> Self {
        self.manifest.requirements = requirements.into();
        self
    }

    /// Free-form metadata: a JSON object (see [`json_to_struct`](crate::json_to_struct)).
    pub fn metadata(mut self, metadata: serde_json::Value) -> Self {
        self.manifest.metadata = Some(json_to_struct(metadata));
        self
    }

    /// Lifecycle status (the server defaults to `Active`).
    pub fn status(mut self, status: pb::ManifestStatus) -> Self {
        self.manifest.set_status(status);
        self
    }

    /// Adds a skill (A2A AgentSkill shape); its id counts as a capability
    /// for routing filters, and `SearchAgents` searches its text.
    pub fn skill(mut self, skill: impl Into<pb::Skill>) -> Self {
        self.manifest.skills.push(skill.into());
        self
    }

    /// The rest of an A2A card: provider, interfaces, media types...
    pub fn card(mut self, card: pb::AgentCardFields) -> Self {
        self.manifest.card = Some(card);
        self
    }
}

/// Builds a [`pb::Skill`] for [`CreateManifest::skill`] and [`UpdateManifest::skills`].
///
/// ```
/// use agentry_client::{Skill, pb};
/// let skill: pb::Skill = Skill::new("translate", "Translate text")
///     .description("Translates between 40 languages")
///     .tags(["language", "translation"])
///     .example("Translate this paragraph into French")
///     .into();
/// assert_eq!(skill.tags.len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct Skill {
    skill: pb::Skill,
}

impl Skill {
    /// A skill with its unique `id` (no whitespace) and human-readable `name`.
    pub fn new(id: impl Into<String>, name: impl Into<String>) -> Self {
        Skill {
            skill: pb::Skill {
                id: id.into(),
                name: name.into(),
                ..Default::default()
            },
        }
    }

    /// What the skill does.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.skill.description = description.into();
        self
    }

    /// Keywords.
    pub fn tags<I>(mut self, tags: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.skill.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Adds an example prompt.
    pub fn example(mut self, example: impl Into<String>) -> Self {
        self.skill.examples.push(example.into());
        self
    }

    /// Media types the skill accepts and produces, when they differ from
    /// the card's defaults.
    pub fn modes<I, O>(mut self, input: I, output: O) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
        O: IntoIterator,
        O::Item: Into<String>,
    {
        self.skill.input_modes = input.into_iter().map(Into::into).collect();
        self.skill.output_modes = output.into_iter().map(Into::into).collect();
        self
    }
}

impl From<Skill> for pb::Skill {
    fn from(b: Skill) -> Self {
        b.skill
    }
}

/// Builds a [`pb::ImportAgentCardRequest`] for
/// [`Client::import_agent_card`](crate::Client::import_agent_card).
///
/// ```
/// use agentry_client::{ImportAgentCard, pb};
/// let request: pb::ImportAgentCardRequest = ImportAgentCard::new(r#"{"name": "Recipes"}"#)
///     .agent_id("recipes")
///     .validate_only()
///     .into();
/// assert!(request.validate_only);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct ImportAgentCard {
    request: pb::ImportAgentCardRequest,
}

impl ImportAgentCard {
    /// An import of the A2A AgentCard `card_json` (protocol 1.0 or 0.3 JSON).
    pub fn new(card_json: impl Into<String>) -> Self {
        ImportAgentCard {
            request: pb::ImportAgentCardRequest {
                card_json: card_json.into(),
                ..Default::default()
            },
        }
    }

    /// The manifest's agent_id (default: derived from the card's name).
    pub fn agent_id(mut self, agent_id: impl Into<String>) -> Self {
        self.request.agent_id = agent_id.into();
        self
    }

    /// The agent_type of a new manifest (default `"a2a"`).
    pub fn agent_type(mut self, agent_type: impl Into<String>) -> Self {
        self.request.agent_type = agent_type.into();
        self
    }

    /// Check and map the card only; nothing is written.
    pub fn validate_only(mut self) -> Self {
        self.request.validate_only = true;
        self
    }
}

/// Builds a [`pb::ImportMcpServerRequest`] for
/// [`Client::import_mcp_server`](crate::Client::import_mcp_server).
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct ImportMcpServer {
    request: pb::ImportMcpServerRequest,
}

impl ImportMcpServer {
    /// An import of the MCP registry's `server.json` document `server_json`.
    pub fn new(server_json: impl Into<String>) -> Self {
        ImportMcpServer {
            request: pb::ImportMcpServerRequest {
                server_json: server_json.into(),
                ..Default::default()
            },
        }
    }

    /// The manifest's agent_id (default: derived from the server's name).
    pub fn agent_id(mut self, agent_id: impl Into<String>) -> Self {
        self.request.agent_id = agent_id.into();
        self
    }

    /// The agent_type of a new manifest (default `"mcp"`).
    pub fn agent_type(mut self, agent_type: impl Into<String>) -> Self {
        self.request.agent_type = agent_type.into();
        self
    }

    /// Check and map the document only; nothing is written.
    pub fn validate_only(mut self) -> Self {
        self.request.validate_only = true;
        self
    }
}

impl From<CreateManifest> for pb::CreateManifestRequest {
    fn from(b: CreateManifest) -> Self {
        pb::CreateManifestRequest {
            manifest: Some(b.manifest),
        }
    }
}

/// Builds a [`pb::ListManifestsRequest`] for [`Client::list_manifests`](crate::Client::list_manifests).
/// Without filters, every manifest is listed.
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct ListManifests {
    request: pb::ListManifestsRequest,
}

impl ListManifests {
    /// All manifests, first page, server's default page size.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only manifests of this `agent_type`.
    pub fn agent_type(mut self, agent_type: impl Into<String>) -> Self {
        self.request.agent_type = agent_type.into();
        self
    }

    /// Only manifests with this status.
    pub fn status(mut self, status: pb::ManifestStatus) -> Self {
        self.request.set_status(status);
        self
    }

    /// Only manifests that list this capability.
    pub fn capability(mut self, capability: impl Into<String>) -> Self {
        self.request.capability = capability.into();
        self
    }

    paging!();
}

/// Builds a [`pb::UpdateManifestRequest`] for [`Client::update_manifest`](crate::Client::update_manifest):
/// only the fields set here change (`agent_id` never does).
///
/// ```
/// use agentry_client::{UpdateManifest, pb};
/// let request: pb::UpdateManifestRequest = UpdateManifest::new("0b5c…").version("1.3.0").name("IDE").into();
/// assert_eq!(request.update_mask.unwrap().paths, ["version", "name"]);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct UpdateManifest {
    manifest: pb::Manifest,
    paths: Vec<String>,
}

impl UpdateManifest {
    /// An update of the manifest with UUID `id` that changes nothing yet.
    pub fn new(id: impl Into<String>) -> Self {
        UpdateManifest {
            manifest: pb::Manifest {
                id: id.into(),
                ..Default::default()
            },
            paths: Vec::new(),
        }
    }

    /// Moves the manifest to another category (a lowercase slug such as
    /// `"chat"`), which [`AgentFilter::agent_type`](crate::AgentFilter::agent_type) matches.
    pub fn agent_type(mut self, agent_type: impl Into<String>) -> Self {
        self.manifest.agent_type = agent_type.into();
        mask(&mut self.paths, "agent_type");
        self
    }

    /// Renames the manifest for people; the `agent_id` that callers use stays.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.manifest.name = name.into();
        mask(&mut self.paths, "name");
        self
    }

    /// Replaces the free-form description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.manifest.description = description.into();
        mask(&mut self.paths, "description");
        self
    }

    /// Replaces the semantic version, e.g. `"1.3.0"`.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.manifest.version = version.into();
        mask(&mut self.paths, "version");
        self
    }

    /// New capabilities (replacing the old list).
    pub fn capabilities<I>(mut self, capabilities: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.manifest.capabilities = capabilities.into_iter().map(Into::into).collect();
        mask(&mut self.paths, "capabilities");
        self
    }

    /// Replaces the free-text system requirements.
    pub fn requirements(mut self, requirements: impl Into<String>) -> Self {
        self.manifest.requirements = requirements.into();
        mask(&mut self.paths, "requirements");
        self
    }

    /// New metadata (replacing the old object): a JSON object.
    pub fn metadata(mut self, metadata: serde_json::Value) -> Self {
        self.manifest.metadata = Some(json_to_struct(metadata));
        mask(&mut self.paths, "metadata");
        self
    }

    /// Moves the manifest through its lifecycle: a `Deprecated` manifest is
    /// routed to only when a filter asks for
    /// [`include_deprecated`](crate::AgentFilter::include_deprecated).
    pub fn status(mut self, status: pb::ManifestStatus) -> Self {
        self.manifest.set_status(status);
        mask(&mut self.paths, "status");
        self
    }

    /// New skills (replacing the old list).
    pub fn skills<I>(mut self, skills: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<pb::Skill>,
    {
        self.manifest.skills = skills.into_iter().map(Into::into).collect();
        mask(&mut self.paths, "skills");
        self
    }

    /// New card fields (replacing the old ones).
    pub fn card(mut self, card: pb::AgentCardFields) -> Self {
        self.manifest.card = Some(card);
        mask(&mut self.paths, "card");
        self
    }
}

impl From<UpdateManifest> for pb::UpdateManifestRequest {
    fn from(b: UpdateManifest) -> Self {
        pb::UpdateManifestRequest {
            manifest: Some(b.manifest),
            update_mask: Some(field_mask(b.paths)),
        }
    }
}

into_request!(
    ListManifests => ListManifestsRequest,
    ImportAgentCard => ImportAgentCardRequest,
    ImportMcpServer => ImportMcpServerRequest,
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::paths;
    use serde_json::json;

    #[test]
    fn create_manifest_sets_every_field() {
        let r: pb::CreateManifestRequest =
            CreateManifest::new("ide-agent", "ide", "IDE Agent", "1.2.3")
                .description("d")
                .capabilities(["a", "b"])
                .requirements("r")
                .metadata(json!({"k": 1}))
                .status(pb::ManifestStatus::Beta)
                .into();
        let m = r.manifest.expect("manifest");
        assert_eq!(
            (m.agent_id.as_str(), m.agent_type.as_str(), m.name.as_str()),
            ("ide-agent", "ide", "IDE Agent")
        );
        assert_eq!(
            (
                m.version.as_str(),
                m.description.as_str(),
                m.requirements.as_str()
            ),
            ("1.2.3", "d", "r")
        );
        assert_eq!(m.capabilities, ["a", "b"]);
        assert_eq!(m.status(), pb::ManifestStatus::Beta);
        assert_eq!(
            crate::struct_to_json(&m.metadata.expect("metadata")),
            json!({"k": 1.0})
        );
    }

    #[test]
    fn update_manifest_masks_what_it_sets_once() {
        let r: pb::UpdateManifestRequest = UpdateManifest::new("id-1")
            .agent_type("chat")
            .name("n")
            .description("d")
            .version("2.0.0")
            .capabilities(vec!["x".to_owned()])
            .requirements("r")
            .metadata(json!({}))
            .status(pb::ManifestStatus::Deprecated)
            .name("n2")
            .into();
        let m = r.manifest.as_ref().expect("manifest");
        assert_eq!((m.id.as_str(), m.name.as_str()), ("id-1", "n2"));
        assert_eq!(m.status(), pb::ManifestStatus::Deprecated);
        assert_eq!(
            paths(r.update_mask),
            [
                "agent_type",
                "name",
                "description",
                "version",
                "capabilities",
                "requirements",
                "metadata",
                "status"
            ]
        );
        let empty: pb::UpdateManifestRequest = UpdateManifest::new("id-1").into();
        assert!(paths(empty.update_mask).is_empty());
    }

    #[test]
    fn list_manifests_sets_its_fields() {
        let r: pb::ListManifestsRequest = ListManifests::new()
            .agent_type("ide")
            .status(pb::ManifestStatus::Active)
            .capability("c")
            .page_size(5)
            .page_token("t")
            .into();
        assert_eq!(
            (r.agent_type.as_str(), r.status(), r.capability.as_str()),
            ("ide", pb::ManifestStatus::Active, "c")
        );
        assert_eq!((r.page_size, r.page_token.as_str()), (5, "t"));
    }
}
