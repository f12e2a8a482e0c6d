//! Request builders: required fields in `new`, optional ones as chained
//! setters, and `From<Builder>` for the protobuf request the call takes.
//!
//! The `Update*` builders also keep the request's `update_mask` in step:
//! every setter names its field there, so that only the fields you set change.

use crate::json::json_to_struct;
use crate::pb;

/// Adds `path` to a field mask once.
fn mask(paths: &mut Vec<String>, path: &str) {
    if !paths.iter().any(|p| p == path) {
        paths.push(path.to_owned());
    }
}

/// The mask of an update; always sent, even empty (the server then rejects
/// the update as changing nothing).
fn field_mask(paths: Vec<String>) -> prost_types::FieldMask {
    prost_types::FieldMask { paths }
}

// ---------------------------------------------------------------- manifests

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

    /// Free-form description.
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

    /// System requirements, free text.
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

    /// Maximum number of results (1..=1000; the server defaults to 100).
    pub fn page_size(mut self, page_size: i32) -> Self {
        self.request.page_size = page_size;
        self
    }

    /// The `next_page_token` of the previous page (with the same filters).
    pub fn page_token(mut self, page_token: impl Into<String>) -> Self {
        self.request.page_token = page_token.into();
        self
    }
}

impl From<ListManifests> for pb::ListManifestsRequest {
    fn from(b: ListManifests) -> Self {
        b.request
    }
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

    /// New `agent_type`.
    pub fn agent_type(mut self, agent_type: impl Into<String>) -> Self {
        self.manifest.agent_type = agent_type.into();
        mask(&mut self.paths, "agent_type");
        self
    }

    /// New name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.manifest.name = name.into();
        mask(&mut self.paths, "name");
        self
    }

    /// New description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.manifest.description = description.into();
        mask(&mut self.paths, "description");
        self
    }

    /// New semantic version.
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

    /// New requirements.
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

    /// New lifecycle status.
    pub fn status(mut self, status: pb::ManifestStatus) -> Self {
        self.manifest.set_status(status);
        mask(&mut self.paths, "status");
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

// ----------------------------------------------------------- configurations

/// Builds a [`pb::CreateConfigurationRequest`] for
/// [`Client::create_configuration`](crate::Client::create_configuration):
/// the caller's tenant's configuration of one manifest.
///
/// Fields left unset take the server's defaults (enabled, `max_workload` 10,
/// the manifest's name).
///
/// ```
/// use agentry_client::CreateConfiguration;
/// let request = CreateConfiguration::for_agent("ide-agent")
///     .system_prompt("You are a helpful coding assistant")
///     .settings(serde_json::json!({"allowed_directories": ["/workspace"]}))
///     .temperature(0.2)
///     .max_workload(5);
/// # let _: agentry_client::pb::CreateConfigurationRequest = request.into();
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct CreateConfiguration {
    request: pb::CreateConfigurationRequest,
}

impl CreateConfiguration {
    /// Configures the manifest with this `agent_id` (e.g. `"ide-agent"`).
    pub fn for_agent(agent_id: impl Into<String>) -> Self {
        Self::with(pb::create_configuration_request::Manifest::AgentId(
            agent_id.into(),
        ))
    }

    /// Configures the manifest with this UUID.
    pub fn for_manifest(manifest_id: impl Into<String>) -> Self {
        Self::with(pb::create_configuration_request::Manifest::ManifestId(
            manifest_id.into(),
        ))
    }

    fn with(manifest: pb::create_configuration_request::Manifest) -> Self {
        CreateConfiguration {
            request: pb::CreateConfigurationRequest {
                manifest: Some(manifest),
                ..Default::default()
            },
        }
    }

    fn configuration(&mut self) -> &mut pb::Configuration {
        self.request
            .configuration
            .get_or_insert_with(Default::default)
    }

    /// Human-readable name (defaults to the manifest's name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.configuration().name = name.into();
        self
    }

    /// Whether the configuration takes part in routing (default `true`).
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.configuration().enabled = Some(enabled);
        self
    }

    /// Tenant-specific settings: a JSON object (the `configuration` field;
    /// see [`json_to_struct`](crate::json_to_struct)).
    pub fn settings(mut self, settings: serde_json::Value) -> Self {
        self.configuration().configuration = Some(json_to_struct(settings));
        self
    }

    /// Custom LLM instructions.
    pub fn system_prompt(mut self, system_prompt: impl Into<String>) -> Self {
        self.configuration().system_prompt = system_prompt.into();
        self
    }

    /// Sampling temperature, `0.0..=2.0`.
    pub fn temperature(mut self, temperature: f64) -> Self {
        self.configuration().temperature = Some(temperature);
        self
    }

    /// Maximum tokens per response, `> 0`.
    pub fn max_tokens(mut self, max_tokens: i32) -> Self {
        self.configuration().max_tokens = Some(max_tokens);
        self
    }

    /// UUID of the AI model to use.
    pub fn model_id(mut self, model_id: impl Into<String>) -> Self {
        self.configuration().model_id = model_id.into();
        self
    }

    /// Maximum concurrent units of work, `1..=100000` (default 10).
    pub fn max_workload(mut self, max_workload: i32) -> Self {
        self.configuration().max_workload = max_workload;
        self
    }

    /// Admin keys only: the tenant (UUID) to create the configuration for.
    pub fn tenant(mut self, tenant_id: impl Into<String>) -> Self {
        self.request.tenant_id = tenant_id.into();
        self
    }
}

impl From<CreateConfiguration> for pb::CreateConfigurationRequest {
    fn from(b: CreateConfiguration) -> Self {
        b.request
    }
}

/// Builds a [`pb::ListConfigurationsRequest`] for
/// [`Client::list_configurations`](crate::Client::list_configurations).
/// Without filters, every configuration of the caller's tenant is listed.
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct ListConfigurations {
    request: pb::ListConfigurationsRequest,
}

impl ListConfigurations {
    /// All configurations, first page, server's default page size.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only configurations of the manifest with this UUID.
    pub fn manifest_id(mut self, manifest_id: impl Into<String>) -> Self {
        self.request.manifest_id = manifest_id.into();
        self
    }

    /// Only configurations of the manifest with this `agent_id`.
    pub fn agent_id(mut self, agent_id: impl Into<String>) -> Self {
        self.request.agent_id = agent_id.into();
        self
    }

    /// Only enabled (`true`) or disabled (`false`) configurations.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.request.enabled = Some(enabled);
        self
    }

    /// Maximum number of results (1..=1000; the server defaults to 100).
    pub fn page_size(mut self, page_size: i32) -> Self {
        self.request.page_size = page_size;
        self
    }

    /// The `next_page_token` of the previous page (with the same filters).
    pub fn page_token(mut self, page_token: impl Into<String>) -> Self {
        self.request.page_token = page_token.into();
        self
    }

    /// Admin keys only: list this tenant's (UUID) configurations.
    pub fn tenant(mut self, tenant_id: impl Into<String>) -> Self {
        self.request.tenant_id = tenant_id.into();
        self
    }
}

impl From<ListConfigurations> for pb::ListConfigurationsRequest {
    fn from(b: ListConfigurations) -> Self {
        b.request
    }
}

/// Builds a [`pb::UpdateConfigurationRequest`] for
/// [`Client::update_configuration`](crate::Client::update_configuration):
/// only the fields set (or cleared) here change.
///
/// ```
/// use agentry_client::{UpdateConfiguration, pb};
/// let request: pb::UpdateConfigurationRequest =
///     UpdateConfiguration::new("5f0e…").enabled(false).clear_temperature().into();
/// assert_eq!(request.update_mask.unwrap().paths, ["enabled", "temperature"]);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct UpdateConfiguration {
    configuration: pb::Configuration,
    paths: Vec<String>,
}

impl UpdateConfiguration {
    /// An update of the configuration with UUID `id` that changes nothing yet.
    pub fn new(id: impl Into<String>) -> Self {
        UpdateConfiguration {
            configuration: pb::Configuration {
                id: id.into(),
                ..Default::default()
            },
            paths: Vec::new(),
        }
    }

    /// New name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.configuration.name = name.into();
        mask(&mut self.paths, "name");
        self
    }

    /// Enables or disables routing to the configuration.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.configuration.enabled = Some(enabled);
        mask(&mut self.paths, "enabled");
        self
    }

    /// New settings (replacing the old object): a JSON object. Mask path
    /// `configuration`.
    pub fn settings(mut self, settings: serde_json::Value) -> Self {
        self.configuration.configuration = Some(json_to_struct(settings));
        mask(&mut self.paths, "configuration");
        self
    }

    /// New custom LLM instructions.
    pub fn system_prompt(mut self, system_prompt: impl Into<String>) -> Self {
        self.configuration.system_prompt = system_prompt.into();
        mask(&mut self.paths, "system_prompt");
        self
    }

    /// New sampling temperature, `0.0..=2.0`.
    pub fn temperature(mut self, temperature: f64) -> Self {
        self.configuration.temperature = Some(temperature);
        mask(&mut self.paths, "temperature");
        self
    }

    /// Removes the temperature (the model's default applies).
    pub fn clear_temperature(mut self) -> Self {
        self.configuration.temperature = None;
        mask(&mut self.paths, "temperature");
        self
    }

    /// New maximum tokens per response, `> 0`.
    pub fn max_tokens(mut self, max_tokens: i32) -> Self {
        self.configuration.max_tokens = Some(max_tokens);
        mask(&mut self.paths, "max_tokens");
        self
    }

    /// Removes the token limit.
    pub fn clear_max_tokens(mut self) -> Self {
        self.configuration.max_tokens = None;
        mask(&mut self.paths, "max_tokens");
        self
    }

    /// New AI model UUID.
    pub fn model_id(mut self, model_id: impl Into<String>) -> Self {
        self.configuration.model_id = model_id.into();
        mask(&mut self.paths, "model_id");
        self
    }

    /// Removes the AI model choice.
    pub fn clear_model_id(mut self) -> Self {
        self.configuration.model_id = String::new();
        mask(&mut self.paths, "model_id");
        self
    }

    /// New maximum concurrent units of work, `1..=100000`; may not go below
    /// the current workload.
    pub fn max_workload(mut self, max_workload: i32) -> Self {
        self.configuration.max_workload = max_workload;
        mask(&mut self.paths, "max_workload");
        self
    }
}

impl From<UpdateConfiguration> for pb::UpdateConfigurationRequest {
    fn from(b: UpdateConfiguration) -> Self {
        pb::UpdateConfigurationRequest {
            configuration: Some(b.configuration),
            update_mask: Some(field_mask(b.paths)),
        }
    }
}

// -------------------------------------------------------------------- admin

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

impl From<CreateApiKey> for pb::CreateApiKeyRequest {
    fn from(b: CreateApiKey) -> Self {
        b.request
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

    /// Maximum number of results (1..=1000; the server defaults to 100).
    pub fn page_size(mut self, page_size: i32) -> Self {
        self.request.page_size = page_size;
        self
    }

    /// The `next_page_token` of the previous page (with the same filters).
    pub fn page_token(mut self, page_token: impl Into<String>) -> Self {
        self.request.page_token = page_token.into();
        self
    }
}

impl From<ListApiKeys> for pb::ListApiKeysRequest {
    fn from(b: ListApiKeys) -> Self {
        b.request
    }
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

    /// Maximum number of results (1..=1000; the server defaults to 100).
    pub fn page_size(mut self, page_size: i32) -> Self {
        self.request.page_size = page_size;
        self
    }

    /// The `next_page_token` of the previous page.
    pub fn page_token(mut self, page_token: impl Into<String>) -> Self {
        self.request.page_token = page_token.into();
        self
    }
}

impl From<ListTenants> for pb::ListTenantsRequest {
    fn from(b: ListTenants) -> Self {
        b.request
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(mask: Option<prost_types::FieldMask>) -> Vec<String> {
        mask.expect("mask is always sent").paths
    }

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
    fn create_configuration_defaults_and_fields() {
        use pb::create_configuration_request::Manifest;
        let r: pb::CreateConfigurationRequest = CreateConfiguration::for_agent("ide-agent").into();
        assert_eq!(r.manifest, Some(Manifest::AgentId("ide-agent".into())));
        assert_eq!(r.configuration, None, "server defaults apply");

        let r: pb::CreateConfigurationRequest = CreateConfiguration::for_manifest("m-1")
            .name("n")
            .enabled(false)
            .settings(json!({"a": true}))
            .system_prompt("p")
            .temperature(0.5)
            .max_tokens(10)
            .model_id("model")
            .max_workload(3)
            .tenant("t-1")
            .into();
        assert_eq!(r.manifest, Some(Manifest::ManifestId("m-1".into())));
        assert_eq!(r.tenant_id, "t-1");
        let c = r.configuration.expect("configuration");
        assert_eq!(
            (c.name.as_str(), c.enabled, c.system_prompt.as_str()),
            ("n", Some(false), "p")
        );
        assert_eq!(
            (
                c.temperature,
                c.max_tokens,
                c.model_id.as_str(),
                c.max_workload
            ),
            (Some(0.5), Some(10), "model", 3)
        );
        assert_eq!(
            crate::struct_to_json(&c.configuration.expect("settings")),
            json!({"a": true})
        );
    }

    #[test]
    fn update_configuration_masks_sets_and_clears() {
        let r: pb::UpdateConfigurationRequest = UpdateConfiguration::new("c-1")
            .name("n")
            .enabled(true)
            .settings(json!({"x": 1}))
            .system_prompt("p")
            .temperature(1.0)
            .max_tokens(5)
            .model_id("m")
            .max_workload(7)
            .into();
        let c = r.configuration.as_ref().expect("configuration");
        assert_eq!(
            (c.id.as_str(), c.temperature, c.max_tokens, c.max_workload),
            ("c-1", Some(1.0), Some(5), 7)
        );
        assert_eq!(
            paths(r.update_mask),
            [
                "name",
                "enabled",
                "configuration",
                "system_prompt",
                "temperature",
                "max_tokens",
                "model_id",
                "max_workload"
            ]
        );

        let r: pb::UpdateConfigurationRequest = UpdateConfiguration::new("c-1")
            .temperature(1.0)
            .max_tokens(5)
            .model_id("m")
            .clear_temperature()
            .clear_max_tokens()
            .clear_model_id()
            .into();
        let c = r.configuration.as_ref().expect("configuration");
        assert_eq!(
            (c.temperature, c.max_tokens, c.model_id.as_str()),
            (None, None, "")
        );
        assert_eq!(
            paths(r.update_mask),
            ["temperature", "max_tokens", "model_id"]
        );
    }

    #[test]
    fn list_builders_set_their_fields() {
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

        let r: pb::ListConfigurationsRequest = ListConfigurations::new()
            .manifest_id("m")
            .agent_id("a")
            .enabled(false)
            .page_size(2)
            .page_token("t")
            .tenant("x")
            .into();
        assert_eq!(
            (r.manifest_id.as_str(), r.agent_id.as_str(), r.enabled),
            ("m", "a", Some(false))
        );
        assert_eq!(
            (r.page_size, r.page_token.as_str(), r.tenant_id.as_str()),
            (2, "t", "x")
        );

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

        let r: pb::ListTenantsRequest = ListTenants::new().page_size(4).page_token("t").into();
        assert_eq!(
            r,
            pb::ListTenantsRequest {
                page_size: 4,
                page_token: "t".into()
            }
        );
    }

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
}

// ------------------------------------------------------------ registrations

/// Builds a [`pb::RegisterInstanceRequest`] for
/// [`Client::register_instance`](crate::Client::register_instance).
///
/// ```
/// use agentry_client::{RegisterInstance, pb};
/// let request: pb::RegisterInstanceRequest = RegisterInstance::new("ws_conn_abc123", "ide-agent")
///     .name("VS Code")
///     .connection_details(serde_json::json!({"ip_address": "192.168.1.100"}))
///     .into();
/// assert_eq!(request.instance_id, "ws_conn_abc123");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct RegisterInstance {
    request: pb::RegisterInstanceRequest,
}

impl RegisterInstance {
    /// Registers `instance_id` (unique within the tenant, reused on reconnect)
    /// as an instance of the manifest `agent_id`.
    pub fn new(instance_id: impl Into<String>, agent_id: impl Into<String>) -> Self {
        RegisterInstance {
            request: pb::RegisterInstanceRequest {
                instance_id: instance_id.into(),
                agent_id: agent_id.into(),
                ..Default::default()
            },
        }
    }

    /// Human-readable name, e.g. `"VS Code"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.request.name = name.into();
        self
    }

    /// Connection details (a JSON object: websocket id, address, user agent...).
    pub fn connection_details(mut self, details: serde_json::Value) -> Self {
        self.request.connection_details = Some(json_to_struct(details));
        self
    }

    /// Runtime configuration (a JSON object).
    pub fn runtime_config(mut self, config: serde_json::Value) -> Self {
        self.request.runtime_config = Some(json_to_struct(config));
        self
    }

    /// Per-instance capacity.
    pub fn capacity(mut self, capacity: i32) -> Self {
        self.request.capacity = Some(capacity);
        self
    }
}

impl From<RegisterInstance> for pb::RegisterInstanceRequest {
    fn from(b: RegisterInstance) -> Self {
        b.request
    }
}

/// Builds a [`pb::ListRegistrationsRequest`] for
/// [`Client::list_registrations`](crate::Client::list_registrations).
/// `ListRegistrations::new().status(pb::RegistrationStatus::Active)` is the
/// tenant's active registrations.
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct ListRegistrations {
    request: pb::ListRegistrationsRequest,
}

impl ListRegistrations {
    /// All registrations, first page, server's default page size.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only registrations with this status.
    pub fn status(mut self, status: pb::RegistrationStatus) -> Self {
        self.request.registration_status = status.into();
        self
    }

    /// Only registrations with this health.
    pub fn health(mut self, health: pb::HealthStatus) -> Self {
        self.request.health_status = health.into();
        self
    }

    /// Only instances of the manifest with this `agent_id`.
    pub fn agent_id(mut self, agent_id: impl Into<String>) -> Self {
        self.request.agent_id = agent_id.into();
        self
    }

    /// Only instances of this configuration (UUID).
    pub fn configuration_id(mut self, configuration_id: impl Into<String>) -> Self {
        self.request.configuration_id = configuration_id.into();
        self
    }

    /// Maximum number of results (1..=1000; the server defaults to 100).
    pub fn page_size(mut self, page_size: i32) -> Self {
        self.request.page_size = page_size;
        self
    }

    /// The `next_page_token` of the previous page (with the same filters).
    pub fn page_token(mut self, page_token: impl Into<String>) -> Self {
        self.request.page_token = page_token.into();
        self
    }

    /// Admin keys only: list this tenant's (UUID) registrations.
    pub fn tenant(mut self, tenant_id: impl Into<String>) -> Self {
        self.request.tenant_id = tenant_id.into();
        self
    }
}

impl From<ListRegistrations> for pb::ListRegistrationsRequest {
    fn from(b: ListRegistrations) -> Self {
        b.request
    }
}

// ------------------------------------------------------------------ routing

/// Which agents a router wants: builds a [`pb::AgentFilter`].
///
/// ```
/// use agentry_client::{AgentFilter, pb};
/// let filter: pb::AgentFilter = AgentFilter::new().agent_type("ide").capability("code_editing").into();
/// assert_eq!(filter.capabilities, ["code_editing"]);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct AgentFilter {
    pub(crate) filter: pb::AgentFilter,
}

impl AgentFilter {
    /// Any agent of the tenant.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only this manifest (`agent_id`).
    pub fn agent_id(mut self, agent_id: impl Into<String>) -> Self {
        self.filter.agent_id = agent_id.into();
        self
    }

    /// Only this agent type.
    pub fn agent_type(mut self, agent_type: impl Into<String>) -> Self {
        self.filter.agent_type = agent_type.into();
        self
    }

    /// Require this capability (all required capabilities must be present).
    pub fn capability(mut self, capability: impl Into<String>) -> Self {
        self.filter.capabilities.push(capability.into());
        self
    }

    /// Also route to degraded instances when healthy ones exist.
    pub fn include_degraded(mut self, include: bool) -> Self {
        self.filter.include_degraded = include;
        self
    }

    /// Also consider deprecated manifests.
    pub fn include_deprecated(mut self, include: bool) -> Self {
        self.filter.include_deprecated = include;
        self
    }
}
