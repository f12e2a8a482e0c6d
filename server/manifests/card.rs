//! A manifest's skills and card fields: the parts of an A2A AgentCard a
//! manifest keeps. They are stored as JSON in the card's own field names
//! (camelCase, migration 0015), so one set of types serves the database,
//! the proto and the card that is exported; one set of checks serves
//! `CreateManifest`, `UpdateManifest` and the imports, each naming the field
//! in its own way (`manifest.skills[2].id`, `$.skills[2].id`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::pb;
use crate::validate;

/// Most skills of a manifest.
pub const MAX_SKILLS: usize = 64;
/// Most tags, examples or media types of a skill, and interfaces of a card.
pub const MAX_ITEMS: usize = 32;
const MAX_SKILL_ID_CHARS: usize = 128;
const MAX_TAG_CHARS: usize = 64;
const MAX_EXAMPLE_CHARS: usize = 1000;
const MAX_MODE_CHARS: usize = 128;
const MAX_URL_CHARS: usize = 2048;

/// One skill (A2A AgentSkill).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Skill {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_modes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_modes: Vec<String>,
}

/// The publisher (A2A AgentProvider).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provider {
    pub organization: String,
    pub url: String,
}

/// Where the agent is reached (A2A AgentInterface without `tenant`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub url: String,
    pub protocol_binding: String,
    pub protocol_version: String,
}

/// The rest of a card: what `AgentCardFields` holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CardFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub documentation_url: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub icon_url: String,
    pub interfaces: Vec<Interface>,
    pub streaming: bool,
    pub push_notifications: bool,
    pub extended_agent_card: bool,
    pub default_input_modes: Vec<String>,
    pub default_output_modes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_schemes: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_requirements: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Value>,
}

/// Names fields under one prefix: `manifest.` for the proto, `$.` for a card.
#[derive(Debug, Clone, Copy)]
pub struct Path<'a> {
    prefix: &'a str,
    /// The name the card gives a field, or the proto's (`field` picks).
    card: bool,
}

impl<'a> Path<'a> {
    /// Fields of a `Manifest` message.
    pub const PROTO: Path<'static> = Path {
        prefix: "manifest.",
        card: false,
    };
    /// Fields of a JSON card.
    pub const CARD: Path<'static> = Path {
        prefix: "$.",
        card: true,
    };

    /// `proto` or `card`, whichever this path names, under the prefix.
    pub fn field(&self, proto: &str, card: &str) -> String {
        format!("{}{}", self.prefix, if self.card { card } else { proto })
    }
}

/// Checks a manifest's skills (count, unique ids, each field).
pub fn check_skills(path: Path<'_>, skills: &[Skill]) -> Result<()> {
    let field = path.field("skills", "skills");
    if skills.len() > MAX_SKILLS {
        return Err(Error::invalid(
            field,
            format!("at most {MAX_SKILLS} skills"),
        ));
    }
    for (i, s) in skills.iter().enumerate() {
        let at = |proto: &str, card: &str| {
            format!("{field}[{i}].{}", if path.card { card } else { proto })
        };
        let id = at("id", "id");
        validate::name(&id, &s.id, MAX_SKILL_ID_CHARS)?;
        if s.id.chars().any(char::is_whitespace) {
            return Err(Error::invalid(id, "must not contain whitespace"));
        }
        if skills[..i].iter().any(|o| o.id == s.id) {
            return Err(Error::invalid(id, format!("duplicate skill id {:?}", s.id)));
        }
        validate::name(&at("name", "name"), &s.name, validate::MAX_NAME_CHARS)?;
        validate::text(
            &at("description", "description"),
            &s.description,
            validate::MAX_TEXT_CHARS,
        )?;
        words(&at("tags", "tags"), &s.tags, MAX_TAG_CHARS)?;
        words(&at("examples", "examples"), &s.examples, MAX_EXAMPLE_CHARS)?;
        words(
            &at("input_modes", "inputModes"),
            &s.input_modes,
            MAX_MODE_CHARS,
        )?;
        words(
            &at("output_modes", "outputModes"),
            &s.output_modes,
            MAX_MODE_CHARS,
        )?;
    }
    Ok(())
}

/// Checks the card fields.
pub fn check_card(path: Path<'_>, card: &CardFields) -> Result<()> {
    if let Some(p) = &card.provider {
        validate::name(
            &path.field("card.provider.organization", "provider.organization"),
            &p.organization,
            validate::MAX_NAME_CHARS,
        )?;
        url(&path.field("card.provider.url", "provider.url"), &p.url)?;
    }
    if !card.documentation_url.is_empty() {
        url(
            &path.field("card.documentation_url", "documentationUrl"),
            &card.documentation_url,
        )?;
    }
    if !card.icon_url.is_empty() {
        url(&path.field("card.icon_url", "iconUrl"), &card.icon_url)?;
    }
    let interfaces = path.field("card.interfaces", "supportedInterfaces");
    if card.interfaces.len() > MAX_ITEMS {
        return Err(Error::invalid(
            interfaces,
            format!("at most {MAX_ITEMS} interfaces"),
        ));
    }
    for (i, x) in card.interfaces.iter().enumerate() {
        let at = |proto: &str, json: &str| {
            format!("{interfaces}[{i}].{}", if path.card { json } else { proto })
        };
        url(&at("url", "url"), &x.url)?;
        validate::name(
            &at("protocol_binding", "protocolBinding"),
            &x.protocol_binding,
            64,
        )?;
        validate::text(
            &at("protocol_version", "protocolVersion"),
            &x.protocol_version,
            16,
        )?;
    }
    words(
        &path.field("card.default_input_modes", "defaultInputModes"),
        &card.default_input_modes,
        MAX_MODE_CHARS,
    )?;
    words(
        &path.field("card.default_output_modes", "defaultOutputModes"),
        &card.default_output_modes,
        MAX_MODE_CHARS,
    )?;
    let kept = [
        (
            path.field("card.security_schemes", "securitySchemes"),
            &card.security_schemes,
        ),
        (
            path.field("card.security_requirements", "securityRequirements"),
            &card.security_requirements,
        ),
        (
            path.field("card.extensions", "capabilities.extensions"),
            &card.extensions,
        ),
    ];
    for (field, value) in kept {
        if let Some(value) = value {
            validate::json_value(&field, value)?;
        }
    }
    Ok(())
}

/// A list of at most [`MAX_ITEMS`] non-empty strings of at most `max` characters.
fn words(field: &str, values: &[String], max: usize) -> Result<()> {
    if values.len() > MAX_ITEMS {
        return Err(Error::invalid(
            field,
            format!("at most {MAX_ITEMS} entries"),
        ));
    }
    for (i, v) in values.iter().enumerate() {
        validate::name(&format!("{field}[{i}]"), v, max)?;
    }
    Ok(())
}

/// An absolute http(s) URL.
fn url(field: &str, value: &str) -> Result<()> {
    validate::name(field, value, MAX_URL_CHARS)?;
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"));
    match rest {
        Some(host)
            if !host.is_empty()
                && !host.starts_with('/')
                && !value.contains(char::is_whitespace) =>
        {
            Ok(())
        }
        _ => Err(Error::invalid(
            field,
            "must be an absolute http or https URL",
        )),
    }
}

impl From<pb::Skill> for Skill {
    fn from(s: pb::Skill) -> Self {
        Skill {
            id: s.id,
            name: s.name,
            description: s.description,
            tags: s.tags,
            examples: s.examples,
            input_modes: s.input_modes,
            output_modes: s.output_modes,
        }
    }
}

impl From<Skill> for pb::Skill {
    fn from(s: Skill) -> Self {
        pb::Skill {
            id: s.id,
            name: s.name,
            description: s.description,
            tags: s.tags,
            examples: s.examples,
            input_modes: s.input_modes,
            output_modes: s.output_modes,
        }
    }
}

impl CardFields {
    /// From the proto; the JSON parts must be valid JSON fields.
    pub fn from_proto(c: pb::AgentCardFields) -> Result<Self> {
        let list = |field: &str, v: Option<prost_types::ListValue>| -> Result<Option<Value>> {
            v.map(|l| pb::list_to_json(l).map_err(|reason| Error::invalid(field, reason)))
                .transpose()
        };
        Ok(CardFields {
            provider: c.provider.map(|p| Provider {
                organization: p.organization,
                url: p.url,
            }),
            documentation_url: c.documentation_url,
            icon_url: c.icon_url,
            interfaces: c
                .interfaces
                .into_iter()
                .map(|i| Interface {
                    url: i.url,
                    protocol_binding: i.protocol_binding,
                    protocol_version: i.protocol_version,
                })
                .collect(),
            streaming: c.streaming,
            push_notifications: c.push_notifications,
            extended_agent_card: c.extended_agent_card,
            default_input_modes: c.default_input_modes,
            default_output_modes: c.default_output_modes,
            security_schemes: c
                .security_schemes
                .map(|s| {
                    pb::struct_to_json(s)
                        .map_err(|r| Error::invalid("manifest.card.security_schemes", r))
                })
                .transpose()?,
            security_requirements: list(
                "manifest.card.security_requirements",
                c.security_requirements,
            )?,
            extensions: list("manifest.card.extensions", c.extensions)?,
        })
    }

    /// To the proto.
    pub fn into_proto(self) -> pb::AgentCardFields {
        let list = |v: Option<Value>| match v {
            Some(Value::Array(items)) => Some(pb::json_to_list(items)),
            _ => None,
        };
        pb::AgentCardFields {
            provider: self.provider.map(|p| pb::AgentProvider {
                organization: p.organization,
                url: p.url,
            }),
            documentation_url: self.documentation_url,
            icon_url: self.icon_url,
            interfaces: self
                .interfaces
                .into_iter()
                .map(|i| pb::AgentInterface {
                    url: i.url,
                    protocol_binding: i.protocol_binding,
                    protocol_version: i.protocol_version,
                })
                .collect(),
            streaming: self.streaming,
            push_notifications: self.push_notifications,
            extended_agent_card: self.extended_agent_card,
            default_input_modes: self.default_input_modes,
            default_output_modes: self.default_output_modes,
            security_schemes: self.security_schemes.map(pb::json_to_struct),
            security_requirements: list(self.security_requirements),
            extensions: list(self.extensions),
        }
    }
}
