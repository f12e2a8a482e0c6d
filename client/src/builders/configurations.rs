//! Builders of `ConfigurationService` requests: [`CreateConfiguration`],
//! [`ListConfigurations`] and [`UpdateConfiguration`].

use super::{field_mask, mask};
use crate::json::json_to_struct;
use crate::pb;

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

    /// Custom LLM instructions for the agent (at most 32 KiB).
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

    paging!();

    /// Admin keys only: list this tenant's (UUID) configurations.
    pub fn tenant(mut self, tenant_id: impl Into<String>) -> Self {
        self.request.tenant_id = tenant_id.into();
        self
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

    /// Renames the configuration, for people; routing does not look at it.
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

    /// Replaces the custom LLM instructions (at most 32 KiB). Connected
    /// agents hear of it at once, as a configuration change on their stream.
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

    /// Switches to the AI model with this UUID.
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

into_request!(
    CreateConfiguration => CreateConfigurationRequest,
    ListConfigurations => ListConfigurationsRequest,
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::paths;
    use serde_json::json;

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
    fn list_configurations_sets_its_fields() {
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
    }
}
