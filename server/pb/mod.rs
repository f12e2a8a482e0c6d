//! Generated protobuf types and server stubs, plus conversions between them and
//! the database's representations (timestamps, JSON, enums).

#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
#[rustfmt::skip]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/agentry.v1.rs"));
}

pub use generated::*;

pub mod codec;
pub mod encoded;

/// Encoded descriptor set of the API, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/agentry_descriptor.bin"));

use chrono::{DateTime, Utc};
use prost_types::{ListValue, Struct, Timestamp, Value, value::Kind};

/// A database timestamp as a protobuf one.
pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// An optional database timestamp as an optional protobuf one.
pub fn opt_timestamp(t: Option<DateTime<Utc>>) -> Option<Timestamp> {
    t.map(timestamp)
}

/// A JSON object as a protobuf `Struct`; anything but an object becomes an empty struct.
pub fn json_to_struct(value: serde_json::Value) -> Struct {
    match value {
        serde_json::Value::Object(map) => Struct {
            fields: map
                .into_iter()
                .map(|(k, v)| (k, json_to_value(v)))
                .collect(),
        },
        _ => Struct::default(),
    }
}

/// A JSON array as a protobuf `ListValue`.
pub fn json_to_list(items: Vec<serde_json::Value>) -> ListValue {
    ListValue {
        values: items.into_iter().map(json_to_value).collect(),
    }
}

/// A protobuf `ListValue` as a JSON array. Fails as [`struct_to_json`] does.
pub fn list_to_json(l: ListValue) -> Result<serde_json::Value, &'static str> {
    l.values
        .into_iter()
        .map(value_to_json)
        .collect::<Result<_, _>>()
        .map(serde_json::Value::Array)
}

fn json_to_value(value: serde_json::Value) -> Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(json_to_list(items)),
        obj @ serde_json::Value::Object(_) => Kind::StructValue(json_to_struct(obj)),
    };
    Value { kind: Some(kind) }
}

/// A protobuf `Struct` as a JSON object. Fails on a number that JSON cannot hold (NaN, infinity).
pub fn struct_to_json(s: Struct) -> Result<serde_json::Value, &'static str> {
    let mut map = serde_json::Map::with_capacity(s.fields.len());
    for (k, v) in s.fields {
        map.insert(k, value_to_json(v)?);
    }
    Ok(serde_json::Value::Object(map))
}

fn value_to_json(value: Value) -> Result<serde_json::Value, &'static str> {
    Ok(match value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(n)
            .map(serde_json::Value::Number)
            .ok_or("numbers must be finite")?,
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::ListValue(l)) => list_to_json(l)?,
        Some(Kind::StructValue(s)) => struct_to_json(s)?,
    })
}

/// Names under which the database stores enum values.
macro_rules! db_names {
    ($ty:ident { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $ty {
            /// The value's name in the database, `None` for `UNSPECIFIED`.
            pub fn db_name(self) -> Option<&'static str> {
                match self {
                    $($ty::$variant => Some($name),)*
                    _ => None,
                }
            }

            /// The value stored in the database under `name`.
            pub fn from_db_name(name: &str) -> Self {
                match name {
                    $($name => $ty::$variant,)*
                    _ => $ty::default(),
                }
            }
        }
    };
}

db_names!(ManifestStatus { Active => "active", Beta => "beta", Deprecated => "deprecated" });
db_names!(RegistrationStatus { Active => "active", Inactive => "inactive" });
db_names!(HealthStatus {
    Healthy => "healthy",
    Degraded => "degraded",
    Unknown => "unknown",
    Disconnected => "disconnected",
});
db_names!(Role { Admin => "admin", Tenant => "tenant", Agent => "agent" });
