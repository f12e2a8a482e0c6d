//! Request checks. Each fails with `INVALID_ARGUMENT` naming the field.

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
        if cap.trim().is_empty() || cap.trim() != cap {
            return Err(Error::invalid(
                format!("{field}[{i}]"),
                "must be a non-empty string without surrounding spaces",
            ));
        }
        if cap.chars().count() > MAX_CAPABILITY_CHARS {
            return Err(Error::invalid(
                format!("{field}[{i}]"),
                format!("must be at most {MAX_CAPABILITY_CHARS} characters"),
            ));
        }
        if values[..i].contains(cap) {
            return Err(Error::invalid(
                format!("{field}[{i}]"),
                format!("duplicate capability {cap:?}"),
            ));
        }
    }
    Ok(())
}

/// A JSON object field from a protobuf `Struct`, bounded in encoded size.
pub fn json(field: &str, value: Option<prost_types::Struct>) -> Result<serde_json::Value> {
    let value = crate::pb::struct_to_json(value.unwrap_or_default())
        .map_err(|reason| Error::invalid(field, reason))?;
    let size = serde_json::to_vec(&value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_JSON_BYTES {
        return Err(Error::invalid(
            field,
            format!("must encode to at most {MAX_JSON_BYTES} bytes of JSON"),
        ));
    }
    Ok(value)
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

    #[test]
    fn capability_lists() {
        assert!(capabilities("c", &["a".into(), "b".into()]).is_ok());
        let err = capabilities("c", &["a".into(), "".into()]).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { ref field, .. } if field == "c[1]"));
        assert!(capabilities("c", &["a".into(), "a".into()]).is_err());
        assert!(capabilities("c", &[" a".into()]).is_err());
    }
}
