//! What callers ask of configurations, converted once from the proto
//! messages and validated; a bad field is `INVALID_ARGUMENT` naming it.

use uuid::Uuid;

use super::store::{ConfigurationFields, ConfigurationFilter};
use crate::error::{Error, Result};
use crate::manifests::store::ManifestKey;
use crate::pagination::{self, TimeKey};
use crate::pb;
use crate::request::{Traced, mask};
use crate::validate;

const DEFAULT_MAX_WORKLOAD: i32 = 10;
/// Largest `max_workload`, and largest workload change at once.
pub const MAX_WORKLOAD_LIMIT: i32 = 100_000;

/// `CreateConfiguration`: for which tenant (admins name it) and manifest,
/// with what values; defaults that depend on the manifest come later.
#[derive(Debug)]
pub struct NewConfiguration {
    pub tenant_id: String,
    pub manifest: ManifestKey,
    pub values: pb::Configuration,
}

impl NewConfiguration {
    /// The validated fields, with the manifest's name when none was given.
    pub fn fields(self, manifest_name: &str) -> Result<ConfigurationFields> {
        let mut c = self.values;
        if c.name.is_empty() {
            c.name = manifest_name.to_owned();
        }
        if c.max_workload == 0 {
            c.max_workload = DEFAULT_MAX_WORKLOAD;
        }
        fields(c)
    }
}

/// `ListConfigurations`: the tenant it names (admins only) and the filter.
#[derive(Debug)]
pub struct ListConfigurations {
    pub tenant_id: String,
    pub filter: ConfigurationFilter,
}

/// `UpdateConfiguration`: which configuration, the new values, and which
/// fields take them.
#[derive(Debug)]
pub struct ConfigurationPatch {
    pub id: Uuid,
    pub values: pb::Configuration,
    pub paths: Vec<String>,
}

impl ConfigurationPatch {
    /// Copies the fields named in the mask onto `current`, then validates the result.
    pub fn apply(self, current: pb::Configuration) -> Result<ConfigurationFields> {
        let (mut dst, mut src) = (current, self.values);
        for path in &self.paths {
            match path.as_str() {
                "name" => dst.name = std::mem::take(&mut src.name),
                "enabled" => {
                    dst.enabled = Some(src.enabled.ok_or_else(|| {
                        Error::invalid("configuration.enabled", "is required when in update_mask")
                    })?);
                }
                "configuration" => dst.configuration = src.configuration.take(),
                "system_prompt" => dst.system_prompt = std::mem::take(&mut src.system_prompt),
                "temperature" => dst.temperature = src.temperature,
                "max_tokens" => dst.max_tokens = src.max_tokens,
                "model_id" => dst.model_id = std::mem::take(&mut src.model_id),
                "max_workload" => dst.max_workload = src.max_workload,
                other => {
                    return Err(Error::invalid(
                        "update_mask",
                        format!("unknown or read-only field {other:?}"),
                    ));
                }
            }
        }
        fields(dst)
    }
}

/// `UpdateWorkload`.
#[derive(Debug)]
pub struct WorkloadChange {
    pub id: Uuid,
    pub delta: i32,
}

/// Validates the writable fields of `c`; `name` is already resolved.
fn fields(c: pb::Configuration) -> Result<ConfigurationFields> {
    validate::name("configuration.name", &c.name, validate::MAX_NAME_CHARS)?;
    validate::text(
        "configuration.system_prompt",
        &c.system_prompt,
        validate::MAX_PROMPT_CHARS,
    )?;
    if c.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(Error::invalid(
            "configuration.temperature",
            "must be between 0.0 and 2.0",
        ));
    }
    if c.max_tokens.is_some_and(|n| n <= 0) {
        return Err(Error::invalid(
            "configuration.max_tokens",
            "must be greater than 0",
        ));
    }
    if !(1..=MAX_WORKLOAD_LIMIT).contains(&c.max_workload) {
        return Err(Error::invalid(
            "configuration.max_workload",
            format!("must be between 1 and {MAX_WORKLOAD_LIMIT}"),
        ));
    }
    Ok(ConfigurationFields {
        model_id: validate::opt_uuid("configuration.model_id", &c.model_id)?,
        configuration: validate::json("configuration.configuration", c.configuration)?,
        name: c.name,
        enabled: c.enabled.unwrap_or(true),
        system_prompt: c.system_prompt,
        temperature: c.temperature,
        max_tokens: c.max_tokens,
        max_workload: c.max_workload,
    })
}

impl TryFrom<pb::CreateConfigurationRequest> for NewConfiguration {
    type Error = Error;
    fn try_from(r: pb::CreateConfigurationRequest) -> Result<Self> {
        use pb::create_configuration_request::Manifest;
        let manifest = match r.manifest {
            Some(Manifest::ManifestId(id)) => ManifestKey::Id(validate::uuid("manifest_id", &id)?),
            Some(Manifest::AgentId(agent_id)) => {
                validate::slug("agent_id", &agent_id, 64)?;
                ManifestKey::AgentId(agent_id)
            }
            None => return Err(Error::invalid("manifest", "set manifest_id or agent_id")),
        };
        Ok(NewConfiguration {
            tenant_id: r.tenant_id,
            manifest,
            values: r.configuration.unwrap_or_default(),
        })
    }
}

impl Traced for NewConfiguration {}

impl TryFrom<pb::ListConfigurationsRequest> for ListConfigurations {
    type Error = Error;
    fn try_from(r: pb::ListConfigurationsRequest) -> Result<Self> {
        if !r.agent_id.is_empty() {
            validate::slug("agent_id", &r.agent_id, 64)?;
        }
        Ok(ListConfigurations {
            tenant_id: r.tenant_id,
            filter: ConfigurationFilter {
                tenant: None,
                manifest_id: validate::opt_uuid("manifest_id", &r.manifest_id)?,
                agent_id: (!r.agent_id.is_empty()).then_some(r.agent_id),
                enabled: r.enabled,
                after: pagination::decode::<TimeKey>(&r.page_token)?,
                limit: pagination::page_size(r.page_size)?,
            },
        })
    }
}

impl Traced for ListConfigurations {}

impl TryFrom<pb::UpdateConfigurationRequest> for ConfigurationPatch {
    type Error = Error;
    fn try_from(r: pb::UpdateConfigurationRequest) -> Result<Self> {
        let values = validate::required("configuration", r.configuration)?;
        Ok(ConfigurationPatch {
            id: validate::uuid("configuration.id", &values.id)?,
            paths: mask(r.update_mask)?,
            values,
        })
    }
}

impl Traced for ConfigurationPatch {
    fn trace(&self, span: &tracing::Span) {
        span.record("id", tracing::field::display(self.id));
    }
}

impl TryFrom<pb::UpdateWorkloadRequest> for WorkloadChange {
    type Error = Error;
    fn try_from(r: pb::UpdateWorkloadRequest) -> Result<Self> {
        let id = validate::uuid("id", &r.id)?;
        if r.delta == 0 || r.delta.unsigned_abs() > MAX_WORKLOAD_LIMIT as u32 {
            return Err(Error::invalid(
                "delta",
                format!("must be non-zero and at most {MAX_WORKLOAD_LIMIT} in size"),
            ));
        }
        Ok(WorkloadChange { id, delta: r.delta })
    }
}

impl Traced for WorkloadChange {
    fn trace(&self, span: &tracing::Span) {
        span.record("id", tracing::field::display(self.id));
        span.record("delta", self.delta);
    }
}
