//! What a caller wants routed to ([`Filter`]), the grammar of its
//! `expression` ([`Expr`]), and how a manifest is matched against both.
//!
//! Every part of a filter that is set must hold; unset parts hold for every
//! manifest. The proto (`AgentFilter` in `routing.proto`) and the README
//! document the same rules for callers.
//!
//! # Labels
//!
//! A manifest's labels are the string values of the object `labels` in its
//! metadata: `{"labels": {"tier": "experimental", "team": "core"}}` has the
//! labels `tier=experimental` and `team=core`. Other values under `labels`
//! (numbers, booleans, objects) and every other key of the metadata are not
//! labels, so free-form metadata never matches by accident.
//!
//! # Expressions
//!
//! ```text
//! expression = or
//! or         = and { "OR" and }
//! and        = unary { "AND" unary }
//! unary      = "NOT" unary | "(" or ")" | term
//! term       = "capability:" value      the manifest lists this capability
//!            | "type:" value            its agent_type is this
//!            | "id:" value              its agent_id is this
//!            | "label:" value           value is KEY (the label is present)
//!                                       or KEY=VALUE (present with this value)
//!            | "version:" value         its version meets this semver requirement
//! value      = piece { piece }          adjacent pieces are joined
//! piece      = bare | quoted
//! bare       = characters other than whitespace, '(', ')' and '"'
//! quoted     = '"' { character other than '"' and '\' | '\"' | '\\' } '"'
//! ```
//!
//! `NOT` binds tighter than `AND`, and `AND` tighter than `OR`; keywords are
//! read in any case, term names in lowercase only. Whitespace separates
//! tokens and is otherwise ignored. For example:
//!
//! ```text
//! capability:code_editing AND (capability:terminal OR type:ide)
//!     AND NOT label:tier=experimental AND version:^1.2
//! ```
//!
//! A `label:` value is split at its first `=`, so a label key holding `=`
//! can only be asked for through the `labels` field. Version requirements are
//! read as Cargo reads them (the `semver` crate): `^1.2` is `>=1.2.0, <2.0.0`,
//! a bare `1.2` means `^1.2`, comparators are separated by commas
//! (`version:">=1.0, <2"`), and a pre-release version such as `2.0.0-rc.1`
//! meets only a requirement that names a pre-release of `2.0.0`. A manifest
//! whose version is not a semantic version meets no requirement.
//!
//! A malformed expression is refused with the position of the first
//! offending character, counted in characters from 1.

use std::collections::BTreeMap;
use std::fmt;

use semver::{Version, VersionReq};

/// Most characters of an expression.
pub const MAX_EXPRESSION_CHARS: usize = 4096;
/// Deepest nesting of parentheses and `NOT`s in an expression: the parser
/// recurses once per level, and no sensible filter needs more.
pub const MAX_DEPTH: usize = 32;
/// Most characters of a version requirement.
pub const MAX_VERSION_CHARS: usize = 256;
/// Most characters of a capability, as manifests hold them.
const MAX_CAPABILITY_CHARS: usize = 128;
/// Most characters of an agent_id or agent_type, as manifests hold them.
const MAX_SLUG_CHARS: usize = 64;

/// What a caller wants routed to. Every part that is set must hold.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this agent_id.
    pub agent_id: Option<String>,
    /// Only this agent_type.
    pub agent_type: Option<String>,
    /// The agent_type must be one of these; empty: any.
    pub agent_types: Vec<String>,
    /// Capabilities that must all be present.
    pub capabilities: Vec<String>,
    /// At least one of these must be present; empty: no condition.
    pub any_capabilities: Vec<String>,
    /// None of these may be present.
    pub none_capabilities: Vec<String>,
    /// A requirement the manifest's version must meet.
    pub version: Option<VersionReq>,
    /// Labels the manifest must carry, each with exactly this value.
    pub labels: BTreeMap<String, String>,
    /// An expression the manifest must satisfy.
    pub expression: Option<Expr>,
    /// Also return degraded instances even when healthy ones exist.
    pub include_degraded: bool,
    /// Also consider deprecated manifests.
    pub include_deprecated: bool,
}

/// What a filter looks at of a manifest, borrowed from wherever it is kept.
#[derive(Debug, Clone, Copy)]
pub struct ManifestFacts<'a> {
    /// The manifest's agent_id.
    pub agent_id: &'a str,
    /// The manifest's agent_type.
    pub agent_type: &'a str,
    /// The manifest's version, parsed once; `None` when it is not a semantic
    /// version (then no version requirement is met).
    pub version: Option<&'a Version>,
    /// The manifest's capabilities.
    pub capabilities: &'a [String],
    /// The manifest's labels ([`labels`]).
    pub labels: &'a BTreeMap<String, String>,
}

impl ManifestFacts<'_> {
    fn has(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }

    fn meets(&self, requirement: &VersionReq) -> bool {
        self.version.is_some_and(|v| requirement.matches(v))
    }
}

impl Filter {
    /// Whether the manifest `m` passes every part of the filter that is set
    /// (the health and status flags are the view's business, not this).
    pub fn matches(&self, m: &ManifestFacts<'_>) -> bool {
        self.agent_id.as_ref().is_none_or(|a| a == m.agent_id)
            && self.agent_type.as_ref().is_none_or(|t| t == m.agent_type)
            && (self.agent_types.is_empty() || self.agent_types.iter().any(|t| t == m.agent_type))
            && self.capabilities.iter().all(|c| m.has(c))
            && (self.any_capabilities.is_empty() || self.any_capabilities.iter().any(|c| m.has(c)))
            && !self.none_capabilities.iter().any(|c| m.has(c))
            && self.version.as_ref().is_none_or(|r| m.meets(r))
            && self
                .labels
                .iter()
                .all(|(k, v)| m.labels.get(k).is_some_and(|have| have == v))
            && self.expression.as_ref().is_none_or(|e| e.matches(m))
    }
}

/// The labels of a manifest, from its metadata: the string values of its
/// `labels` object (see the module's documentation).
pub fn labels(metadata: &serde_json::Value) -> BTreeMap<String, String> {
    metadata
        .get("labels")
        .and_then(serde_json::Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// A parsed filter expression (see the module's documentation for its grammar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `capability:NAME`: the manifest lists this capability.
    Capability(String),
    /// `type:TYPE`: its agent_type is this.
    Type(String),
    /// `id:AGENT_ID`: its agent_id is this.
    Id(String),
    /// `label:KEY` or `label:KEY=VALUE`: the label is present (with this value).
    Label {
        /// The label's key.
        key: String,
        /// The value it must have; `None`: any.
        value: Option<String>,
    },
    /// `version:REQUIREMENT`: its version meets this.
    Version(VersionReq),
    /// `NOT e`.
    Not(Box<Expr>),
    /// `a AND b AND …`, two or more.
    And(Vec<Expr>),
    /// `a OR b OR …`, two or more.
    Or(Vec<Expr>),
}

impl Expr {
    /// Parses `text`; the error names the first offending character.
    pub fn parse(text: &str) -> Result<Expr, ParseError> {
        let chars: Vec<char> = text.chars().collect();
        if chars.len() > MAX_EXPRESSION_CHARS {
            return Err(ParseError {
                position: MAX_EXPRESSION_CHARS + 1,
                message: format!("the expression is longer than {MAX_EXPRESSION_CHARS} characters"),
            });
        }
        let mut parser = Parser {
            chars,
            at: 0,
            depth: 0,
        };
        let expr = parser.or()?;
        parser.skip_space();
        match parser.peek() {
            None => Ok(expr),
            Some(')') => Err(parser.error("unexpected ')' without a matching '('")),
            Some(_) => Err(parser.error(format!(
                "expected AND, OR or the end, found {}",
                parser.describe_here()
            ))),
        }
    }

    /// Whether the manifest `m` satisfies the expression.
    pub fn matches(&self, m: &ManifestFacts<'_>) -> bool {
        match self {
            Expr::Capability(c) => m.has(c),
            Expr::Type(t) => t == m.agent_type,
            Expr::Id(id) => id == m.agent_id,
            Expr::Label { key, value } => match (m.labels.get(key), value) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(have), Some(want)) => have == want,
            },
            Expr::Version(r) => m.meets(r),
            Expr::Not(e) => !e.matches(m),
            Expr::And(all) => all.iter().all(|e| e.matches(m)),
            Expr::Or(any) => any.iter().any(|e| e.matches(m)),
        }
    }
}

/// Written back in the grammar, every `AND` and `OR` in parentheses.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let joined = |f: &mut fmt::Formatter<'_>, items: &[Expr], op: &str| {
            f.write_str("(")?;
            for (i, e) in items.iter().enumerate() {
                if i > 0 {
                    write!(f, " {op} ")?;
                }
                write!(f, "{e}")?;
            }
            f.write_str(")")
        };
        match self {
            Expr::Capability(c) => write!(f, "capability:{}", Quoted(c)),
            Expr::Type(t) => write!(f, "type:{}", Quoted(t)),
            Expr::Id(id) => write!(f, "id:{}", Quoted(id)),
            Expr::Label { key, value: None } => write!(f, "label:{}", Quoted(key)),
            Expr::Label {
                key,
                value: Some(value),
            } => write!(f, "label:{}", Quoted(&format!("{key}={value}"))),
            Expr::Version(r) => write!(f, "version:{}", Quoted(&r.to_string())),
            Expr::Not(e) => write!(f, "NOT {e}"),
            Expr::And(items) => joined(f, items, "AND"),
            Expr::Or(items) => joined(f, items, "OR"),
        }
    }
}

/// A value as the grammar reads it back: bare when it can be, else quoted.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.0.is_empty() && !self.0.chars().any(ends_bare) {
            return f.write_str(self.0);
        }
        f.write_str("\"")?;
        for c in self.0.chars() {
            if matches!(c, '"' | '\\') {
                f.write_str("\\")?;
            }
            write!(f, "{c}")?;
        }
        f.write_str("\"")
    }
}

/// Why an expression was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The offending character, counted in characters from 1; one past the
    /// last character when the expression ended too early.
    pub position: usize,
    /// What was wrong there.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at character {}: {}", self.position, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Whether `c` ends a bare piece of a value.
fn ends_bare(c: char) -> bool {
    c.is_whitespace() || matches!(c, '(' | ')' | '"')
}

/// A recursive-descent parser over the expression's characters, one
/// function per rule of the grammar.
struct Parser {
    chars: Vec<char>,
    /// The index of the next character.
    at: usize,
    /// Parentheses and `NOT`s open around `at`.
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    fn error(&self, message: impl Into<String>) -> ParseError {
        self.error_at(self.at, message)
    }

    fn error_at(&self, index: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            position: index + 1,
            message: message.into(),
        }
    }

    /// The word at `at` (up to whitespace or a parenthesis), for messages.
    fn describe_here(&self) -> String {
        let word: String = self.chars[self.at..]
            .iter()
            .take_while(|c| !c.is_whitespace() && !matches!(c, '(' | ')'))
            .take(32)
            .collect();
        match self.peek() {
            None => "the end".into(),
            Some(_) if word.is_empty() => format!("{:?}", self.chars[self.at]),
            Some(_) => format!("{word:?}"),
        }
    }

    /// The keyword (`AND`, `OR`, `NOT`, in any case) at `at`, if one is
    /// there: the letters must be followed by whitespace, a parenthesis, a
    /// quote or the end, so `ORDER` or `notes:` are not keywords.
    fn keyword(&self) -> Option<&'static str> {
        let letters = self.chars[self.at..]
            .iter()
            .take_while(|c| c.is_ascii_alphabetic())
            .count();
        let end = self.at + letters;
        if self.chars.get(end).is_some_and(|&c| !ends_bare(c)) {
            return None;
        }
        let word: String = self.chars[self.at..end].iter().collect();
        ["AND", "OR", "NOT"]
            .into_iter()
            .find(|k| word.eq_ignore_ascii_case(k))
    }

    /// Consumes `keyword` if it is next (after whitespace).
    fn eat(&mut self, keyword: &str) -> bool {
        self.skip_space();
        if self.keyword() == Some(keyword) {
            self.at += keyword.len();
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut items = vec![self.and()?];
        while self.eat("OR") {
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::Or(items)
        })
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut items = vec![self.unary()?];
        while self.eat("AND") {
            items.push(self.unary()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::And(items)
        })
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        self.skip_space();
        let start = self.at;
        match self.peek() {
            None => Err(self.error("expected a term such as capability:NAME, found the end")),
            Some('(') => {
                self.deeper()?;
                self.at += 1;
                let inner = self.or()?;
                self.skip_space();
                if self.peek() != Some(')') {
                    let found = self.describe_here();
                    return Err(self.error(format!(
                        "expected AND, OR or ')' closing the '(' at character {}, found {found}",
                        start + 1
                    )));
                }
                self.at += 1;
                self.depth -= 1;
                Ok(inner)
            }
            Some(')') => Err(self.error("expected a term such as capability:NAME, found ')'")),
            Some(_) => match self.keyword() {
                Some("NOT") => {
                    self.deeper()?;
                    self.at += 3;
                    let inner = self.unary()?;
                    self.depth -= 1;
                    Ok(Expr::Not(Box::new(inner)))
                }
                Some(keyword) => Err(self.error(format!(
                    "expected a term such as capability:NAME, found {keyword}"
                ))),
                None => self.term(),
            },
        }
    }

    fn deeper(&mut self) -> Result<(), ParseError> {
        if self.depth == MAX_DEPTH {
            return Err(self.error(format!(
                "parentheses and NOTs nest deeper than {MAX_DEPTH} levels"
            )));
        }
        self.depth += 1;
        Ok(())
    }

    fn term(&mut self) -> Result<Expr, ParseError> {
        let start = self.at;
        let name_len = self.chars[start..]
            .iter()
            .take_while(|&&c| c != ':' && !ends_bare(c))
            .count();
        let name: String = self.chars[start..start + name_len].iter().collect();
        if self.chars.get(start + name_len) != Some(&':') {
            return Err(self.error(format!(
                "expected a term such as capability:NAME, found {}",
                self.describe_here()
            )));
        }
        self.at = start + name_len + 1;
        let value_at = self.at;
        let value = self.value(&name)?;
        let bad = |message: String| Err(self.error_at(value_at, message));
        match name.as_str() {
            "capability" => {
                if value.trim() != value || value.chars().count() > MAX_CAPABILITY_CHARS {
                    return bad(format!(
                        "a capability is 1..={MAX_CAPABILITY_CHARS} characters without surrounding spaces"
                    ));
                }
                Ok(Expr::Capability(value))
            }
            "type" | "id" => {
                if !is_slug(&value) {
                    return bad(format!(
                        "{} is a lowercase slug of 1..={MAX_SLUG_CHARS} characters (a-z, 0-9, '-'), found {value:?}",
                        if name == "type" {
                            "an agent type"
                        } else {
                            "an agent id"
                        }
                    ));
                }
                Ok(if name == "type" {
                    Expr::Type(value)
                } else {
                    Expr::Id(value)
                })
            }
            "label" => match value.split_once('=') {
                Some(("", _)) => bad("a label's key must not be empty".into()),
                Some((key, v)) => Ok(Expr::Label {
                    key: key.into(),
                    value: Some(v.into()),
                }),
                None => Ok(Expr::Label {
                    key: value,
                    value: None,
                }),
            },
            "version" => match requirement(&value) {
                Ok(r) => Ok(Expr::Version(r)),
                Err(e) => bad(e),
            },
            _ => Err(self.error_at(
                start,
                format!(
                    "unknown term {:?}: expected capability:, type:, id:, label: or version:",
                    format!("{name}:")
                ),
            )),
        }
    }

    /// The value after `name:`: adjacent bare and quoted pieces, joined.
    fn value(&mut self, name: &str) -> Result<String, ParseError> {
        let mut value = String::new();
        let mut pieces = 0;
        loop {
            match self.peek() {
                Some('"') => {
                    let open = self.at;
                    self.at += 1;
                    loop {
                        match self.peek() {
                            None => {
                                return Err(self.error_at(
                                    open,
                                    "this quote is never closed (a '\"' inside a quoted value is written \\\")",
                                ));
                            }
                            Some('"') => break,
                            Some('\\') => match self.chars.get(self.at + 1) {
                                Some(&c @ ('"' | '\\')) => {
                                    value.push(c);
                                    self.at += 2;
                                }
                                _ => {
                                    return Err(self.error(
                                        "a backslash in a quoted value escapes only '\"' or '\\'",
                                    ));
                                }
                            },
                            Some(c) => {
                                value.push(c);
                                self.at += 1;
                            }
                        }
                    }
                    self.at += 1;
                }
                Some(c) if !ends_bare(c) => {
                    while let Some(c) = self.peek().filter(|&c| !ends_bare(c)) {
                        value.push(c);
                        self.at += 1;
                    }
                }
                _ => break,
            }
            pieces += 1;
        }
        if pieces == 0 || value.is_empty() {
            return Err(self.error(format!("expected a value after {:?}", format!("{name}:"))));
        }
        Ok(value)
    }
}

/// A lowercase slug as manifests' agent_id and agent_type are.
fn is_slug(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_SLUG_CHARS
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-')
}

/// A semver requirement such as `^1.2` or `>=1.0, <2`; the error says why not.
pub fn requirement(text: &str) -> Result<VersionReq, String> {
    if text.chars().count() > MAX_VERSION_CHARS {
        return Err(format!(
            "a version requirement is at most {MAX_VERSION_CHARS} characters"
        ));
    }
    VersionReq::parse(text)
        .map_err(|e| format!("{e}: expected a semver requirement such as ^1.2 or \">=1.0, <2\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> String {
        Expr::parse(text)
            .unwrap_or_else(|e| panic!("{text:?}: {e}"))
            .to_string()
    }

    fn error(text: &str) -> (usize, String) {
        let e = Expr::parse(text).expect_err(text);
        (e.position, e.message)
    }

    struct Manifest {
        agent_id: &'static str,
        agent_type: &'static str,
        version: Option<Version>,
        capabilities: Vec<String>,
        labels: BTreeMap<String, String>,
    }

    impl Manifest {
        fn new(agent_type: &'static str, version: &str, capabilities: &[&str]) -> Self {
            Manifest {
                agent_id: "ide-agent",
                agent_type,
                version: Version::parse(version).ok(),
                capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
                labels: BTreeMap::new(),
            }
        }

        fn label(mut self, key: &str, value: &str) -> Self {
            self.labels.insert(key.into(), value.into());
            self
        }

        fn facts(&self) -> ManifestFacts<'_> {
            ManifestFacts {
                agent_id: self.agent_id,
                agent_type: self.agent_type,
                version: self.version.as_ref(),
                capabilities: &self.capabilities,
                labels: &self.labels,
            }
        }

        fn satisfies(&self, expression: &str) -> bool {
            Expr::parse(expression)
                .unwrap_or_else(|e| panic!("{expression:?}: {e}"))
                .matches(&self.facts())
        }
    }

    #[test]
    fn not_binds_tighter_than_and_and_and_tighter_than_or() {
        assert_eq!(
            parse("capability:a OR capability:b AND capability:c"),
            "(capability:a OR (capability:b AND capability:c))"
        );
        assert_eq!(
            parse("capability:a AND capability:b OR capability:c"),
            "((capability:a AND capability:b) OR capability:c)"
        );
        assert_eq!(
            parse("NOT capability:a AND capability:b"),
            "(NOT capability:a AND capability:b)"
        );
        assert_eq!(
            parse("NOT capability:a OR NOT type:ide AND label:x"),
            "(NOT capability:a OR (NOT type:ide AND label:x))"
        );
        // Runs of one operator are one node, not nested pairs.
        assert_eq!(
            parse("id:a OR id:b OR id:c AND id:d AND id:e"),
            "(id:a OR id:b OR (id:c AND id:d AND id:e))"
        );
    }

    #[test]
    fn parentheses_group_and_keywords_are_read_in_any_case() {
        assert_eq!(
            parse("(capability:a OR capability:b) AND capability:c"),
            "((capability:a OR capability:b) AND capability:c)"
        );
        assert_eq!(
            parse("not (type:ide or type:cli) and capability:x"),
            "(NOT (type:ide OR type:cli) AND capability:x)"
        );
        assert_eq!(parse("((( capability:a )))"), "capability:a");
        assert_eq!(
            parse("NOT(capability:a)AND(capability:b)"),
            "(NOT capability:a AND capability:b)"
        );
        assert_eq!(parse("NOT NOT capability:a"), "NOT NOT capability:a");
        // A word that only starts like a keyword is not one.
        assert_eq!(
            error("capability:a ORDER capability:b").1,
            "expected AND, OR or the end, found \"ORDER\""
        );
        assert_eq!(
            parse(
                "  capability:code_editing\tAND\n(capability:terminal OR type:ide) AND NOT label:tier=experimental AND version:^1.2 "
            ),
            "(capability:code_editing AND (capability:terminal OR type:ide) AND NOT label:tier=experimental AND version:^1.2)"
        );
    }

    #[test]
    fn values_may_be_quoted_and_pieces_join() {
        assert_eq!(
            Expr::parse(r#"capability:"code editing (beta)""#),
            Ok(Expr::Capability("code editing (beta)".into()))
        );
        assert_eq!(
            Expr::parse(r#"label:team="core platform""#),
            Ok(Expr::Label {
                key: "team".into(),
                value: Some("core platform".into())
            })
        );
        assert_eq!(
            Expr::parse(r#"capability:"say \"hi\" \\ bye""#),
            Ok(Expr::Capability(r#"say "hi" \ bye"#.into()))
        );
        assert_eq!(
            Expr::parse("label:tier"),
            Ok(Expr::Label {
                key: "tier".into(),
                value: None
            })
        );
        assert_eq!(
            Expr::parse("label:tier="),
            Ok(Expr::Label {
                key: "tier".into(),
                value: Some(String::new())
            })
        );
        assert_eq!(
            Expr::parse(r#"version:">=1.0, <2""#),
            Ok(Expr::Version(VersionReq::parse(">=1.0, <2").expect("req")))
        );
        assert_eq!(
            Expr::parse("version:>=1.0,<2"),
            Ok(Expr::Version(VersionReq::parse(">=1.0, <2").expect("req")))
        );
        // Read back, a value is quoted where it must be.
        for text in [
            r#"capability:"code editing (beta)""#,
            r#"capability:"say \"hi\"""#,
            r#"version:">=1.0, <2""#,
            r#"label:"team=core platform""#,
        ] {
            assert_eq!(parse(text), text);
        }
    }

    #[test]
    fn errors_name_the_character_where_the_expression_goes_wrong() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "",
                1,
                "expected a term such as capability:NAME, found the end",
            ),
            (
                "capability:a AND",
                17,
                "expected a term such as capability:NAME, found the end",
            ),
            (
                "capability:a AND OR type:x",
                18,
                "expected a term such as capability:NAME, found OR",
            ),
            (
                "capability:a capability:b",
                14,
                "expected AND, OR or the end, found \"capability:b\"",
            ),
            (
                "(capability:a",
                14,
                "expected AND, OR or ')' closing the '(' at character 1, found the end",
            ),
            ("capability:a)", 13, "unexpected ')' without a matching '('"),
            (
                "()",
                2,
                "expected a term such as capability:NAME, found ')'",
            ),
            (
                "code_editing",
                1,
                "expected a term such as capability:NAME, found \"code_editing\"",
            ),
            (
                "type:ide AND colour:red",
                14,
                "unknown term \"colour:\": expected capability:, type:, id:, label: or version:",
            ),
            (
                "Capability:a",
                1,
                "unknown term \"Capability:\": expected capability:, type:, id:, label: or version:",
            ),
            (
                "capability: AND type:x",
                12,
                "expected a value after \"capability:\"",
            ),
            (
                "capability:\"\"",
                14,
                "expected a value after \"capability:\"",
            ),
            (
                "capability:\"open",
                12,
                "this quote is never closed (a '\"' inside a quoted value is written \\\")",
            ),
            (
                "capability:\"a\\nb\"",
                14,
                "a backslash in a quoted value escapes only '\"' or '\\'",
            ),
            (
                "capability:\" padded\"",
                12,
                "a capability is 1..=128 characters without surrounding spaces",
            ),
            (
                "type:IDE",
                6,
                "an agent type is a lowercase slug of 1..=64 characters (a-z, 0-9, '-'), found \"IDE\"",
            ),
            (
                "id:-x",
                4,
                "an agent id is a lowercase slug of 1..=64 characters (a-z, 0-9, '-'), found \"-x\"",
            ),
            ("label:=x", 7, "a label's key must not be empty"),
            (
                "version:^a",
                9,
                "unexpected character 'a' while parsing major version number: expected a semver requirement such as ^1.2 or \">=1.0, <2\"",
            ),
            (
                "version:\">=1 <2\"",
                9,
                "expected comma after major version number, found '<': expected a semver requirement such as ^1.2 or \">=1.0, <2\"",
            ),
        ];
        for (text, position, message) in cases {
            assert_eq!(error(text), (*position, message.to_string()), "{text:?}");
        }
        // Positions count characters, not bytes.
        assert_eq!(error("capability:é AND é").0, 18);
        let e = Expr::parse("capability:a AND").expect_err("ends early");
        assert_eq!(
            e.to_string(),
            "at character 17: expected a term such as capability:NAME, found the end"
        );
    }

    #[test]
    fn nesting_and_length_are_bounded() {
        let deep = |n: usize| format!("{}capability:a{}", "(".repeat(n), ")".repeat(n));
        assert_eq!(parse(&deep(MAX_DEPTH)), "capability:a");
        assert_eq!(
            error(&deep(MAX_DEPTH + 1)),
            (
                MAX_DEPTH + 1,
                format!("parentheses and NOTs nest deeper than {MAX_DEPTH} levels")
            )
        );
        let nots = format!("{}capability:a", "NOT ".repeat(MAX_DEPTH + 1));
        assert_eq!(error(&nots).0, 4 * MAX_DEPTH + 1);
        // Deep nesting far past the limit fails cleanly, without recursing.
        assert!(Expr::parse(&"(".repeat(MAX_EXPRESSION_CHARS)).is_err());
        let long = format!("capability:{}", "a".repeat(MAX_EXPRESSION_CHARS));
        assert_eq!(error(&long).0, MAX_EXPRESSION_CHARS + 1);
    }

    #[test]
    fn expressions_match_what_a_manifest_holds() {
        let ide = Manifest::new("ide", "1.4.2", &["code_editing", "terminal"])
            .label("tier", "stable")
            .label("team", "core platform");
        assert!(ide.satisfies(
            "capability:code_editing AND (capability:terminal OR type:cli) AND NOT label:tier=experimental AND version:^1.2"
        ));
        assert!(ide.satisfies("type:ide AND id:ide-agent"));
        assert!(!ide.satisfies("type:cli OR id:other"));
        assert!(ide.satisfies("label:tier AND NOT label:region"));
        assert!(ide.satisfies(r#"label:team="core platform""#));
        assert!(!ide.satisfies("label:team=core"));
        assert!(ide.satisfies(r#"version:">=1.0, <2""#));
        assert!(!ide.satisfies("version:^1.5 OR version:<1"));
        assert!(ide.satisfies("NOT capability:flying"));
        // A pre-release meets only a requirement naming a pre-release of it.
        let rc = Manifest::new("ide", "2.0.0-rc.1", &[]);
        assert!(!rc.satisfies("version:>=1.0"));
        assert!(rc.satisfies("version:>=2.0.0-rc.0"));
        // A version that is not semver meets no requirement (but its negation).
        let odd = Manifest::new("ide", "latest", &[]);
        assert!(!odd.satisfies("version:*"));
        assert!(odd.satisfies("NOT version:^1"));
    }

    #[test]
    fn every_part_of_a_filter_must_hold() {
        let ide =
            Manifest::new("ide", "1.4.2", &["code_editing", "terminal"]).label("tier", "stable");
        let m = ide.facts();
        assert!(Filter::default().matches(&m));
        let with = |f: fn(&mut Filter)| {
            let mut filter = Filter::default();
            f(&mut filter);
            filter.matches(&m)
        };
        assert!(with(|f| f.agent_types = vec!["cli".into(), "ide".into()]));
        assert!(!with(|f| f.agent_types = vec!["cli".into()]));
        assert!(with(
            |f| f.any_capabilities = vec!["flying".into(), "terminal".into()]
        ));
        assert!(!with(|f| f.any_capabilities = vec!["flying".into()]));
        assert!(with(|f| f.none_capabilities = vec!["flying".into()]));
        assert!(!with(
            |f| f.none_capabilities = vec!["flying".into(), "terminal".into()]
        ));
        assert!(with(
            |f| f.version = Some(VersionReq::parse("~1.4").expect("req"))
        ));
        assert!(!with(
            |f| f.version = Some(VersionReq::parse("^2").expect("req"))
        ));
        assert!(with(|f| {
            f.labels.insert("tier".into(), "stable".into());
        }));
        assert!(!with(|f| {
            f.labels.insert("tier".into(), "beta".into());
        }));
        assert!(!with(|f| {
            f.labels.insert("region".into(), "eu".into());
        }));
        // The old fields and the new ones AND together.
        assert!(!with(|f| {
            f.agent_type = Some("ide".into());
            f.agent_types = vec!["cli".into()];
        }));
        assert!(!with(|f| {
            f.capabilities = vec!["code_editing".into()];
            f.expression = Expr::parse("NOT capability:terminal").ok();
        }));
        assert!(with(|f| {
            f.agent_id = Some("ide-agent".into());
            f.capabilities = vec!["code_editing".into()];
            f.expression = Expr::parse("capability:terminal OR type:cli").ok();
        }));
    }

    #[test]
    fn labels_are_the_string_values_of_the_metadata_labels_object() {
        let metadata = serde_json::json!({
            "tier": "top-level strings are not labels",
            "labels": {"tier": "experimental", "team": "core", "replicas": 3, "gpu": true, "nested": {"a": "b"}},
        });
        let labels = labels(&metadata);
        assert_eq!(
            labels.into_iter().collect::<Vec<_>>(),
            [
                ("team".to_string(), "core".to_string()),
                ("tier".to_string(), "experimental".to_string())
            ]
        );
        assert!(super::labels(&serde_json::json!({"labels": ["a"]})).is_empty());
        assert!(super::labels(&serde_json::json!({})).is_empty());
    }
}
