//! Request checks. Each fails with `INVALID_ARGUMENT` naming the field.

use std::time::Duration;

use uuid::Uuid;

use crate::error::{Error, Result};

/// Most bytes a JSON field (configuration, metadata...) may take, encoded.
pub const MAX_JSON_BYTES: usize = 64 * 1024;
/// Most characters of a system prompt.
pub const MAX_PROMPT_CHARS: usize = 32 * 1024;
/// Most characters of a free-text field (description, requirements).
pub const MAX_TEXT_CHARS: usize = 4096;
/// Most characters of a name.
pub const MAX_NAME_CHARS: usize = 256;
/// Most capabilities of a manifest, and characters of each.
pub const MAX_CAPABILITIES: usize = 64;
const MAX_CAPABILITY_CHARS: usize = 128;
/// Deepest nesting of objects and lists in a JSON field. A client decodes
/// what it stored with prost's recursion limit of 100 (two levels per
/// `Struct`), so deeper values could be written but never read back.
pub const MAX_JSON_DEPTH: usize = 32;

/// PostgreSQL refuses U+0000 in `text` and `jsonb`: a NUL that reached a
/// statement would fail it as an internal error.
fn no_nul(field: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::invalid(field, "must not contain NUL (U+0000)"));
    }
    Ok(())
}

/// A UUID field.
pub fn uuid(field: &str, value: &str) -> Result<Uuid> {
    if value.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    Uuid::try_parse(value).map_err(|_| Error::invalid(field, "must be a UUID"))
}

/// An optional UUID field: empty means absent.
pub fn opt_uuid(field: &str, value: &str) -> Result<Option<Uuid>> {
    if value.is_empty() {
        Ok(None)
    } else {
        uuid(field, value).map(Some)
    }
}

/// A lowercase slug such as `ide-agent`: letters, digits and `-` (and `_` when
/// `underscore`), starting and ending with a letter or digit, 1..=`max` long.
pub fn slug(field: &str, value: &str, max: usize) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!(
                "must be a lowercase slug of 1..={max} characters (a-z, 0-9, '-'), e.g. \"ide-agent\""
            ),
        ))
    }
}

/// A required text field of at most `max` characters.
pub fn name(field: &str, value: &str, max: usize) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    text(field, value, max)
}

/// An optional text field of at most `max` characters.
pub fn text(field: &str, value: &str, max: usize) -> Result<()> {
    no_nul(field, value)?;
    if value.chars().count() > max {
        return Err(Error::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}

/// A semantic version such as `1.4.0` or `2.0.0-rc.1`.
pub fn semver(field: &str, value: &str) -> Result<()> {
    if value.len() > 64 || semver::Version::parse(value).is_err() {
        return Err(Error::invalid(
            field,
            "must be a semantic version such as 1.4.0",
        ));
    }
    Ok(())
}

/// A list of capabilities: non-empty, trimmed, unique strings, bounded in number and size.
pub fn capabilities(field: &str, values: &[String]) -> Result<()> {
    if values.len() > MAX_CAPABILITIES {
        return Err(Error::invalid(
            field,
            format!("at most {MAX_CAPABILITIES} capabilities"),
        ));
    }
    for (i, cap) in values.iter().enumerate() {
        capability(&format!("{field}[{i}]"), cap)?;
        if values[..i].contains(cap) {
            return Err(Error::invalid(
                format!("{field}[{i}]"),
                format!("duplicate capability {cap:?}"),
            ));
        }
    }
    Ok(())
}

/// One capability: a non-empty string without surrounding spaces, bounded.
pub fn capability(field: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() || value.trim() != value {
        return Err(Error::invalid(
            field,
            "must be a non-empty string without surrounding spaces",
        ));
    }
    no_nul(field, value)?;
    if value.chars().count() > MAX_CAPABILITY_CHARS {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_CAPABILITY_CHARS} characters"),
        ));
    }
    Ok(())
}

/// A JSON object field from a protobuf `Struct`, bounded in encoded size and
/// depth, without NUL in keys or strings.
pub fn json(field: &str, value: Option<prost_types::Struct>) -> Result<serde_json::Value> {
    let value = crate::pb::struct_to_json(value.unwrap_or_default())
        .map_err(|reason| Error::invalid(field, reason))?;
    json_value(field, &value)?;
    Ok(value)
}

/// A JSON value, however it came: bounded in encoded size and depth,
/// without NUL in keys or strings.
pub fn json_value(field: &str, value: &serde_json::Value) -> Result<()> {
    json_tree(field, value, 1)?;
    let size = serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_JSON_BYTES {
        return Err(Error::invalid(
            field,
            format!("must encode to at most {MAX_JSON_BYTES} bytes of JSON"),
        ));
    }
    Ok(())
}

/// Walks `value`, `depth` levels deep already. Recursion is bounded by
/// `MAX_JSON_DEPTH`, itself below what prost decoded.
fn json_tree(field: &str, value: &serde_json::Value, depth: usize) -> Result<()> {
    use serde_json::Value;
    match value {
        Value::String(s) => no_nul(field, s),
        Value::Array(_) | Value::Object(_) if depth > MAX_JSON_DEPTH => Err(Error::invalid(
            field,
            format!("must not be nested deeper than {MAX_JSON_DEPTH} levels"),
        )),
        Value::Array(items) => items
            .iter()
            .try_for_each(|v| json_tree(field, v, depth + 1)),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            no_nul(field, k)?;
            json_tree(field, v, depth + 1)
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// An optional `google.protobuf.Duration` field within `min..=max`.
///
/// Refuses what the protobuf spec calls invalid (nanos beyond ±999,999,999,
/// or seconds and nanos of different signs) instead of normalizing it, and
/// bounds every duration so that arithmetic on it cannot overflow.
pub fn duration(
    field: &str,
    value: Option<prost_types::Duration>,
    min: Duration,
    max: Duration,
) -> Result<Option<Duration>> {
    let Some(prost_types::Duration { seconds, nanos }) = value else {
        return Ok(None);
    };
    if !(-999_999_999..=999_999_999).contains(&nanos)
        || (seconds > 0 && nanos < 0)
        || (seconds < 0 && nanos > 0)
    {
        return Err(Error::invalid(
            field,
            "is not a valid duration: nanos must be within ±999,999,999 and have the sign of seconds",
        ));
    }
    let within = u64::try_from(seconds)
        .ok()
        .zip(u32::try_from(nanos).ok())
        .map(|(s, n)| Duration::new(s, n))
        .filter(|d| (min..=max).contains(d));
    within.map(Some).ok_or_else(|| {
        Error::invalid(
            field,
            format!(
                "must be between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        )
    })
}

/// An enum field sent as its wire number; `UNSPECIFIED` (0) or unknown numbers are `None`.
pub fn enum_value<E: TryFrom<i32>>(field: &str, value: i32) -> Result<Option<E>> {
    if value == 0 {
        return Ok(None);
    }
    E::try_from(value)
        .map(Some)
        .map_err(|_| Error::invalid(field, format!("unknown value {value}")))
}

/// A required message field.
pub fn required<T>(field: &str, value: Option<T>) -> Result<T> {
    value.ok_or_else(|| Error::invalid(field, "is required"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for ok in ["ide-agent", "a", "x1", "slack-bot-2"] {
            assert!(slug("f", ok, 64).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "IDE", "ide agent", "ide_agent", "é"] {
            assert!(slug("f", bad, 64).is_err(), "{bad}");
        }
        assert!(slug("f", &"a".repeat(65), 64).is_err());
    }

    #[test]
    fn versions() {
        assert!(semver("v", "1.4.0").is_ok());
        assert!(semver("v", "2.0.0-rc.1+build.5").is_ok());
        for bad in ["", "1", "1.2", "v1.2.3", "1.2.3.4"] {
            assert!(semver("v", bad).is_err(), "{bad}");
        }
    }

    fn d(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
        Some(prost_types::Duration { seconds, nanos })
    }

    #[test]
    fn durations() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(3600));
        assert_eq!(duration("t", None, min, max).unwrap(), None);
        assert_eq!(
            duration("t", d(1, 500_000_000), min, max).unwrap(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(duration("t", d(3600, 0), min, max).unwrap(), Some(max));
        for (s, n) in [
            (1, -999_999_999),
            (-1, 1),
            (0, 1_000_000_000),
            (0, -1),
            (-5, 0),
            (0, 999_999_999),
            (3600, 1),
            (i64::MAX, 0),
            (i64::MIN, 0),
            (315_576_000_000, 0),
        ] {
            let err = duration("t", d(s, n), min, max).unwrap_err();
            assert!(
                matches!(err, Error::InvalidArgument { ref field, .. } if field == "t"),
                "{s}s {n}ns: {err}"
            );
        }
        assert_eq!(
            duration("t", d(0, 1), min, max).unwrap_err().to_string(),
            "invalid t: must be between 1s and 1h"
        );
    }

    #[test]
    fn nul_is_refused_in_text_and_json() {
        assert!(text("t", "a\0b", 10).is_err());
        assert!(name("t", "\0", 10).is_err());
        assert!(capabilities("c", &["a\0".into()]).is_err());
        let nested = |key: &str, s: &str| {
            let value = serde_json::json!({"a": [{"b": {key: s}}]});
            json("j", Some(crate::pb::json_to_struct(value)))
        };
        assert!(nested("k", "v").is_ok());
        assert!(nested("k\0", "v").is_err());
        assert!(nested("k", "v\0").is_err());
    }

    #[test]
    fn json_depth_is_bounded() {
        let deep = |levels: usize| {
            let mut value = serde_json::json!("leaf");
            for _ in 0..levels {
                value = serde_json::json!({ "k": value });
            }
            json("j", Some(crate::pb::json_to_struct(value)))
        };
        assert!(deep(MAX_JSON_DEPTH).is_ok());
        let err = deep(MAX_JSON_DEPTH + 1).unwrap_err();
        assert!(err.to_string().contains("nested deeper than"), "{err}");
    }

    #[test]
    fn capability_lists() {
        assert!(capabilities("c", &["a".into(), "b".into()]).is_ok());
        let err = capabilities("c", &["a".into(), "".into()]).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { ref field, .. } if field == "c[1]"));
        assert!(capabilities("c", &["a".into(), "a".into()]).is_err());
        assert!(capabilities("c", &[" a".into()]).is_err());
    }
}
