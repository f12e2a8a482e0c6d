//! The A2A AgentCard (protocol 1.0 JSON) of a tenant's configuration: what
//! `ConfigurationService.GetAgentCard` and the HTTP card endpoint answer.

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::card::{CardFields, Skill};
use super::store::ManifestRow;

/// What a card describes: the manifest, and the configuration that a
/// tenant made of it.
#[derive(Debug)]
pub struct CardOf<'a> {
    pub manifest: &'a ManifestRow,
    pub tenant: Uuid,
    /// The configuration's name (it defaults to the manifest's).
    pub name: &'a str,
}

/// The card. A manifest without a card gets the specification's required
/// fields with empty or default values (`text/plain` media types, no
/// interfaces); one without skills lists its capabilities as skills.
pub fn agent_card(of: &CardOf<'_>) -> Value {
    let m = of.manifest;
    let card = m.card.as_ref().map(|c| c.0.clone()).unwrap_or_default();
    let skills: Vec<Skill> = if m.skills.0.is_empty() {
        m.capabilities
            .0
            .iter()
            .map(|c| Skill {
                id: c.clone(),
                name: c.clone(),
                description: String::new(),
                tags: vec![c.clone()],
                ..Skill::default()
            })
            .collect()
    } else {
        m.skills.0.clone()
    };
    let or_text = |modes: &[String]| -> Value {
        if modes.is_empty() {
            json!(["text/plain"])
        } else {
            json!(modes)
        }
    };
    let CardFields {
        provider,
        documentation_url,
        icon_url,
        interfaces,
        streaming,
        push_notifications,
        extended_agent_card,
        default_input_modes,
        default_output_modes,
        security_schemes,
        security_requirements,
        extensions,
    } = card;
    let mut capabilities = Map::new();
    capabilities.insert("streaming".into(), streaming.into());
    capabilities.insert("pushNotifications".into(), push_notifications.into());
    capabilities.insert("extendedAgentCard".into(), extended_agent_card.into());
    if let Some(x) = extensions {
        capabilities.insert("extensions".into(), x);
    }
    let tenant = of.tenant.to_string();
    let mut out = Map::new();
    out.insert("name".into(), of.name.into());
    out.insert("description".into(), m.description.clone().into());
    out.insert("version".into(), m.version.clone().into());
    out.insert(
        "supportedInterfaces".into(),
        interfaces
            .into_iter()
            .map(|i| {
                json!({
                    "url": i.url,
                    "protocolBinding": i.protocol_binding,
                    "protocolVersion": i.protocol_version,
                    "tenant": tenant,
                })
            })
            .collect(),
    );
    if let Some(p) = provider {
        out.insert(
            "provider".into(),
            json!({"organization": p.organization, "url": p.url}),
        );
    }
    if !documentation_url.is_empty() {
        out.insert("documentationUrl".into(), documentation_url.into());
    }
    if !icon_url.is_empty() {
        out.insert("iconUrl".into(), icon_url.into());
    }
    out.insert("capabilities".into(), Value::Object(capabilities));
    out.insert("defaultInputModes".into(), or_text(&default_input_modes));
    out.insert("defaultOutputModes".into(), or_text(&default_output_modes));
    out.insert(
        "skills".into(),
        serde_json::to_value(skills).unwrap_or_else(|_| json!([])),
    );
    if let Some(s) = security_schemes {
        out.insert("securitySchemes".into(), s);
    }
    if let Some(s) = security_requirements {
        out.insert("securityRequirements".into(), s);
    }
    Value::Object(out)
}
