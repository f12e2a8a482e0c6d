//! Conversions between `serde_json` values and protobuf `Struct`s.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};

/// Converts a JSON object into a protobuf [`Struct`].
///
/// Only a JSON object has fields to carry: **any other value (`null`, a
/// number, an array...) gives an empty `Struct`**. Numbers become `f64`, as
/// protobuf's `Value` has no integers, so integers beyond 2^53 lose precision.
///
/// ```
/// let s = agentry_client::json_to_struct(serde_json::json!({"vendor": "acme", "tier": 2}));
/// assert_eq!(s.fields.len(), 2);
/// assert!(agentry_client::json_to_struct(serde_json::json!([1, 2])).fields.is_empty());
/// ```
#[must_use]
pub fn json_to_struct(value: serde_json::Value) -> Struct {
    match value {
        serde_json::Value::Object(map) => object_to_struct(map),
        _ => Struct::default(),
    }
}

/// Converts a protobuf [`Struct`] into a JSON object.
///
/// Numbers come back as JSON floats (`2` was sent, `2.0` comes back), and
/// non-finite numbers as `null`.
///
/// ```
/// use serde_json::json;
/// let s = agentry_client::json_to_struct(json!({"tier": 2, "tags": ["a"]}));
/// assert_eq!(agentry_client::struct_to_json(&s), json!({"tier": 2.0, "tags": ["a"]}));
/// ```
#[must_use]
pub fn struct_to_json(value: &Struct) -> serde_json::Value {
    serde_json::Value::Object(
        value
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn object_to_struct(map: serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| (k, json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(value: serde_json::Value) -> Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(prost_types::NullValue::NullValue.into()),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        // Every serde_json number has an f64 form (possibly rounded).
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(object_to_struct(map)),
    };
    Value { kind: Some(kind) }
}

fn value_to_json(value: &Value) -> serde_json::Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(list)) => {
            serde_json::Value::Array(list.values.iter().map(value_to_json).collect())
        }
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roundtrip_keeps_every_kind() {
        let value = json!({
            "s": "text",
            "n": 1.5,
            "b": true,
            "null": null,
            "list": [1.0, "two", [false], {"deep": {"er": null}}],
            "obj": {"k": "v"},
        });
        assert_eq!(struct_to_json(&json_to_struct(value.clone())), value);
    }

    #[test]
    fn integers_come_back_as_floats() {
        let s = json_to_struct(json!({"tier": 2}));
        assert_eq!(s.fields["tier"].kind, Some(Kind::NumberValue(2.0)));
        assert_eq!(struct_to_json(&s), json!({"tier": 2.0}));
    }

    #[test]
    fn non_objects_give_an_empty_struct() {
        for value in [json!(null), json!(1), json!("x"), json!([1]), json!(true)] {
            assert_eq!(json_to_struct(value), Struct::default());
        }
        assert_eq!(struct_to_json(&Struct::default()), json!({}));
    }

    #[test]
    fn non_finite_numbers_become_null() {
        let s = Struct {
            fields: [(
                "x".to_owned(),
                Value {
                    kind: Some(Kind::NumberValue(f64::NAN)),
                },
            )]
            .into_iter()
            .collect(),
        };
        assert_eq!(struct_to_json(&s), json!({"x": null}));
    }
}
