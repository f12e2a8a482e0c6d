//! Documents that become manifests: an A2A AgentCard (protocol 1.0 field
//! names, and the 0.3 `url`/`preferredTransport`/`additionalInterfaces`
//! that most published cards still carry) and an MCP registry `server.json`.
//!
//! Each is read from a `serde_json::Value` by [`Reader`], which names every
//! path it maps or ignores, so a bad document answers `INVALID_ARGUMENT`
//! naming the JSON path (`$.skills[2].id`) and a good one says what was left
//! behind. The README maps every field.

use serde_json::{Map, Value};

use super::card::{self, CardFields, Interface, Path, Provider, Skill};
use crate::error::{Error, Result};
use crate::validate;

/// Most bytes of an imported document.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// A document mapped to manifest fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    /// The agent_id the document's name derives, when the caller gives none.
    pub derived_agent_id: String,
    pub name: String,
    pub description: String,
    pub version: String,
    pub skills: Vec<Skill>,
    pub card: CardFields,
    /// JSON paths mapped and ignored.
    pub mapped: Vec<String>,
    pub ignored: Vec<String>,
}

/// Parses `json` (named `field` in the request) as one JSON object.
fn parse(field: &str, json: &str) -> Result<Value> {
    if json.len() > MAX_DOCUMENT_BYTES {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_DOCUMENT_BYTES} bytes"),
        ));
    }
    let value: Value = serde_json::from_str(json).map_err(|e| {
        Error::invalid(
            field,
            format!(
                "is not JSON: {e} (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    if nested_or_nul(&value) {
        return Err(Error::invalid(
            field,
            format!(
                "must not nest deeper than {} levels or hold NUL (U+0000)",
                validate::MAX_JSON_DEPTH
            ),
        ));
    }
    Ok(value)
}

/// Whether a value nests too deep or holds NUL (what `parse` refuses).
fn nested_or_nul(value: &Value) -> bool {
    fn walk(v: &Value, depth: usize) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(_) | Value::Object(_) if depth > validate::MAX_JSON_DEPTH => true,
            Value::Array(items) => items.iter().any(|i| walk(i, depth + 1)),
            Value::Object(m) => m
                .iter()
                .any(|(k, v)| k.contains('\0') || walk(v, depth + 1)),
            _ => false,
        }
    }
    walk(value, 1)
}

/// Reads a document's fields, recording what it mapped and ignored.
#[derive(Debug, Default)]
struct Reader {
    mapped: Vec<String>,
    ignored: Vec<String>,
}

impl Reader {
    /// `value` at `path` as an object; its keys outside `known` are ignored.
    fn object<'v>(
        &mut self,
        path: &str,
        value: &'v Value,
        known: &[&str],
    ) -> Result<&'v Map<String, Value>> {
        let map = value
            .as_object()
            .ok_or_else(|| Error::invalid(path, "must be an object"))?;
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                self.ignored.push(format!("{path}.{key}"));
            }
        }
        Ok(map)
    }

    /// An optional member: `None` when absent or null.
    fn get<'v>(map: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
        map.get(key).filter(|v| !v.is_null())
    }

    /// A required member.
    fn need<'v>(path: &str, map: &'v Map<String, Value>, key: &str) -> Result<&'v Value> {
        Self::get(map, key).ok_or_else(|| Error::invalid(format!("{path}.{key}"), "is required"))
    }

    fn string(
        &mut self,
        path: &str,
        map: &Map<String, Value>,
        key: &str,
        required: bool,
    ) -> Result<String> {
        let at = format!("{path}.{key}");
        let value = match Self::get(map, key) {
            None if required => return Err(Error::invalid(at, "is required")),
            None => return Ok(String::new()),
            Some(v) => v,
        };
        let s = value
            .as_str()
            .ok_or_else(|| Error::invalid(&at, "must be a string"))?;
        self.mapped.push(at);
        Ok(s.to_owned())
    }

    fn strings(
        &mut self,
        path: &str,
        map: &Map<String, Value>,
        key: &str,
        required: bool,
    ) -> Result<Vec<String>> {
        let at = format!("{path}.{key}");
        let Some(items) = self.array(path, map, key, required)? else {
            return Ok(Vec::new());
        };
        let strings = items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| Error::invalid(format!("{at}[{i}]"), "must be a string"))
            })
            .collect::<Result<_>>()?;
        self.mapped.push(at);
        Ok(strings)
    }

    fn flag(&mut self, path: &str, map: &Map<String, Value>, key: &str) -> Result<bool> {
        let at = format!("{path}.{key}");
        match Self::get(map, key) {
            None => Ok(false),
            Some(Value::Bool(b)) => {
                self.mapped.push(at);
                Ok(*b)
            }
            Some(_) => Err(Error::invalid(at, "must be true or false")),
        }
    }

    fn array<'v>(
        &mut self,
        path: &str,
        map: &'v Map<String, Value>,
        key: &str,
        required: bool,
    ) -> Result<Option<&'v Vec<Value>>> {
        let at = format!("{path}.{key}");
        match Self::get(map, key) {
            None if required => Err(Error::invalid(at, "is required")),
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(_) => Err(Error::invalid(at, "must be an array")),
        }
    }

    /// A member kept as the document wrote it.
    fn verbatim(
        &mut self,
        path: &str,
        map: &Map<String, Value>,
        key: &str,
        object: bool,
    ) -> Result<Option<Value>> {
        let at = format!("{path}.{key}");
        match Self::get(map, key) {
            None => Ok(None),
            Some(v) if v.is_object() == object && (object || v.is_array()) => {
                self.mapped.push(at);
                Ok(Some(v.clone()))
            }
            Some(_) => Err(Error::invalid(
                at,
                if object {
                    "must be an object"
                } else {
                    "must be an array"
                },
            )),
        }
    }

    fn finish(mut self, mapped: Mapped) -> Result<Mapped> {
        card::check_skills(Path::CARD, &mapped.skills)?;
        card::check_card(Path::CARD, &mapped.card)?;
        self.mapped.sort();
        self.ignored.sort();
        Ok(Mapped {
            mapped: self.mapped,
            ignored: self.ignored,
            ..mapped
        })
    }
}

/// The top-level fields of an A2A AgentCard that map (others are ignored).
const CARD_FIELDS: &[&str] = &[
    "name",
    "description",
    "version",
    "supportedInterfaces",
    "url",
    "preferredTransport",
    "protocolVersion",
    "additionalInterfaces",
    "provider",
    "documentationUrl",
    "iconUrl",
    "capabilities",
    "defaultInputModes",
    "defaultOutputModes",
    "skills",
    "securitySchemes",
    "securityRequirements",
];

/// Maps an A2A AgentCard, given as JSON in the request field `field`.
pub fn agent_card(field: &str, json: &str) -> Result<Mapped> {
    let value = parse(field, json)?;
    let mut r = Reader::default();
    let root = r.object("$", &value, CARD_FIELDS)?;
    let name = r.string("$", root, "name", true)?;
    validate::name("$.name", &name, validate::MAX_NAME_CHARS)?;
    let description = r.string("$", root, "description", true)?;
    validate::text("$.description", &description, validate::MAX_TEXT_CHARS)?;
    let version = r.string("$", root, "version", true)?;
    validate::semver("$.version", &version)?;
    let mut card = CardFields {
        interfaces: interfaces(&mut r, root)?,
        documentation_url: r.string("$", root, "documentationUrl", false)?,
        icon_url: r.string("$", root, "iconUrl", false)?,
        default_input_modes: r.strings("$", root, "defaultInputModes", true)?,
        default_output_modes: r.strings("$", root, "defaultOutputModes", true)?,
        security_schemes: r.verbatim("$", root, "securitySchemes", true)?,
        security_requirements: r.verbatim("$", root, "securityRequirements", false)?,
        ..CardFields::default()
    };
    if let Some(p) = Reader::get(root, "provider") {
        let p = r.object("$.provider", p, &["organization", "url"])?;
        card.provider = Some(Provider {
            organization: r.string("$.provider", p, "organization", true)?,
            url: r.string("$.provider", p, "url", true)?,
        });
    }
    let caps = Reader::need("$", root, "capabilities")?;
    let caps = r.object(
        "$.capabilities",
        caps,
        &[
            "streaming",
            "pushNotifications",
            "extendedAgentCard",
            "extensions",
        ],
    )?;
    card.streaming = r.flag("$.capabilities", caps, "streaming")?;
    card.push_notifications = r.flag("$.capabilities", caps, "pushNotifications")?;
    card.extended_agent_card = r.flag("$.capabilities", caps, "extendedAgentCard")?;
    card.extensions = r.verbatim("$.capabilities", caps, "extensions", false)?;
    let mut skills = Vec::new();
    for (i, s) in r
        .array("$", root, "skills", true)?
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("$.skills[{i}]");
        let s = r.object(
            &at,
            s,
            &[
                "id",
                "name",
                "description",
                "tags",
                "examples",
                "inputModes",
                "outputModes",
            ],
        )?;
        skills.push(Skill {
            id: r.string(&at, s, "id", true)?,
            name: r.string(&at, s, "name", true)?,
            description: r.string(&at, s, "description", true)?,
            tags: r.strings(&at, s, "tags", true)?,
            examples: r.strings(&at, s, "examples", false)?,
            input_modes: r.strings(&at, s, "inputModes", false)?,
            output_modes: r.strings(&at, s, "outputModes", false)?,
        });
    }
    r.finish(Mapped {
        derived_agent_id: slugify(&name),
        name,
        description,
        version,
        skills,
        card,
        mapped: Vec::new(),
        ignored: Vec::new(),
    })
}

/// `supportedInterfaces` (1.0), or else the 0.3 card's `url` with
/// `preferredTransport` and `protocolVersion`, then its `additionalInterfaces`.
fn interfaces(r: &mut Reader, root: &Map<String, Value>) -> Result<Vec<Interface>> {
    let mut found = Vec::new();
    if let Some(items) = r.array("$", root, "supportedInterfaces", false)? {
        for (i, x) in items.iter().enumerate() {
            let at = format!("$.supportedInterfaces[{i}]");
            let x = r.object(&at, x, &["url", "protocolBinding", "protocolVersion"])?;
            found.push(Interface {
                url: r.string(&at, x, "url", true)?,
                protocol_binding: r.string(&at, x, "protocolBinding", true)?,
                protocol_version: r.string(&at, x, "protocolVersion", true)?,
            });
        }
    } else if Reader::get(root, "url").is_some() {
        let version = r.string("$", root, "protocolVersion", false)?;
        let binding = r.string("$", root, "preferredTransport", false)?;
        found.push(Interface {
            url: r.string("$", root, "url", true)?,
            protocol_binding: if binding.is_empty() {
                "JSONRPC".into()
            } else {
                binding
            },
            protocol_version: version.clone(),
        });
        for (i, x) in r
            .array("$", root, "additionalInterfaces", false)?
            .into_iter()
            .flatten()
            .enumerate()
        {
            let at = format!("$.additionalInterfaces[{i}]");
            let x = r.object(&at, x, &["url", "transport"])?;
            let url = r.string(&at, x, "url", true)?;
            let binding = r.string(&at, x, "transport", true)?;
            // 0.3 cards list the main URL again among the additional ones.
            if !found
                .iter()
                .any(|f| f.url == url && f.protocol_binding == binding)
            {
                found.push(Interface {
                    url,
                    protocol_binding: binding,
                    protocol_version: version.clone(),
                });
            }
        }
    }
    if found.is_empty() {
        return Err(Error::invalid(
            "$.supportedInterfaces",
            "is required: at least one interface (or the 0.3 card's url)",
        ));
    }
    Ok(found)
}

/// The top-level fields of an MCP server.json that map.
const MCP_FIELDS: &[&str] = &[
    "name",
    "title",
    "description",
    "version",
    "websiteUrl",
    "repository",
    "remotes",
];

/// Maps an MCP registry server.json, given as JSON in the request field `field`.
pub fn mcp_server(field: &str, json: &str) -> Result<Mapped> {
    let value = parse(field, json)?;
    let mut r = Reader::default();
    let root = r.object("$", &value, MCP_FIELDS)?;
    let server_name = r.string("$", root, "name", true)?;
    // Reverse-DNS namespace, then the server: "io.github.someone/weather".
    let Some((namespace, _)) = server_name.split_once('/') else {
        return Err(Error::invalid(
            "$.name",
            "must be namespace/name, e.g. io.github.someone/weather",
        ));
    };
    let title = r.string("$", root, "title", false)?;
    let name = if title.is_empty() {
        server_name.clone()
    } else {
        title
    };
    validate::name("$.name", &name, validate::MAX_NAME_CHARS)?;
    let description = r.string("$", root, "description", true)?;
    validate::text("$.description", &description, validate::MAX_TEXT_CHARS)?;
    let version = r.string("$", root, "version", true)?;
    validate::semver("$.version", &version)?;
    let mut card = CardFields {
        documentation_url: r.string("$", root, "websiteUrl", false)?,
        ..CardFields::default()
    };
    if let Some(repo) = Reader::get(root, "repository") {
        let repo = r.object("$.repository", repo, &["url"])?;
        card.provider = Some(Provider {
            organization: namespace.to_owned(),
            url: r.string("$.repository", repo, "url", true)?,
        });
    }
    for (i, x) in r
        .array("$", root, "remotes", false)?
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("$.remotes[{i}]");
        let x = r.object(&at, x, &["type", "url"])?;
        let kind = r.string(&at, x, "type", true)?;
        card.interfaces.push(Interface {
            url: r.string(&at, x, "url", true)?,
            protocol_binding: format!("MCP+{kind}"),
            protocol_version: String::new(),
        });
    }
    r.finish(Mapped {
        derived_agent_id: slugify(&server_name),
        name,
        description,
        version,
        skills: Vec::new(),
        card,
        mapped: Vec::new(),
        ignored: Vec::new(),
    })
}

/// A manifest agent_id from a name: lowercase letters and digits, every run
/// of anything else one `-`, at most 64 characters.
pub fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    slug.truncate(64);
    slug.trim_end_matches('-').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: Error) -> String {
        match e {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn slugs_come_from_names() {
        assert_eq!(slugify("Recipe Agent 2.0!"), "recipe-agent-2-0");
        assert_eq!(
            slugify("io.github.someone/weather"),
            "io-github-someone-weather"
        );
        assert_eq!(slugify("---"), "");
    }

    #[test]
    fn a_bad_document_names_its_path() {
        let e = agent_card("card_json", r#"{"name": "x", "description": "d", "version": "1.0.0",
            "supportedInterfaces": [{"url": "https://a.example/", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}],
            "capabilities": {}, "defaultInputModes": ["text/plain"], "defaultOutputModes": ["text/plain"],
            "skills": [{"id": "a", "name": "A", "description": "d", "tags": []}, {"id": "b", "name": "B", "description": "d", "tags": [3]}]}"#)
            .unwrap_err();
        assert_eq!(field_of(e), "$.skills[1].tags[0]");
        let e = agent_card("card_json", "{\"name\": ").unwrap_err();
        assert_eq!(field_of(e), "card_json");
    }
}
