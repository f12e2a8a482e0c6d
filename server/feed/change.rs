//! The change feed's payloads: what the triggers of migration 0008 send on
//! `agentry_changes`, decoded by name. The migration documents each kind
//! (and 0014 the load-only one).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};
use uuid::Uuid;

use crate::registrations::store::LoadColumns;

/// How a configuration row changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Created.
    Insert,
    /// Settings changed (not only the workload counter: that is [`Change::Workload`]).
    Update,
    /// Deleted.
    Delete,
}

/// A registration whose load report changed, with the report: what the
/// view needs, so that nobody reads anything back. Sent by the holding
/// replica's load writer, many in one notification (`"loads"`, migration
/// 0017); by replicas before 0017, one per row write (`"load"`, 0014),
/// with the row's health check and update times.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LoadNote {
    pub id: Uuid,
    pub tenant: Uuid,
    pub configuration: Uuid,
    /// The row's epoch when the report landed.
    pub epoch: i64,
    /// The row's `load_*` columns after the write (all null when the agent
    /// stopped reporting).
    pub in_flight: Option<i32>,
    pub queue_depth: Option<i32>,
    pub utilization: Option<f64>,
    pub metrics: Option<serde_json::Value>,
    #[serde(deserialize_with = "optional_time")]
    pub reported_at: Option<DateTime<Utc>>,
    #[serde(deserialize_with = "optional_time")]
    pub first_reported_at: Option<DateTime<Utc>>,
    /// The row's `last_health_check` after a row write (0014 only).
    #[serde(default, deserialize_with = "optional_time")]
    pub last_health_check: Option<DateTime<Utc>>,
    /// The row's `updated_at` after a row write (0014 only): orders the
    /// note against a row the view read itself.
    #[serde(default, deserialize_with = "optional_time")]
    pub updated_at: Option<DateTime<Utc>>,
}

impl LoadNote {
    /// The load columns of the row as the write left them.
    pub fn columns(&self) -> LoadColumns {
        LoadColumns {
            load_in_flight: self.in_flight,
            load_queue_depth: self.queue_depth,
            load_utilization: self.utilization,
            load_metrics: self.metrics.clone(),
            load_reported_at: self.reported_at,
            load_first_reported_at: self.first_reported_at,
        }
    }
}

/// A timestamp as PostgreSQL writes one into JSON (ISO 8601 with an offset).
fn time<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    DateTime::parse_from_rfc3339(&text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(serde::de::Error::custom)
}

fn optional_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    #[derive(Deserialize)]
    struct Time(#[serde(deserialize_with = "time")] DateTime<Utc>);
    Ok(Option::<Time>::deserialize(d)?.map(|Time(t)| t))
}

/// One committed change, as a trigger announced it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A configuration was created, changed or deleted: read it again.
    Configuration { op: Op, id: Uuid, tenant: Uuid },
    /// Only a configuration's `current_workload` changed; the value travels.
    Workload {
        configuration: Uuid,
        tenant: Uuid,
        current_workload: i32,
    },
    /// A registration changed in a way routing sees (heartbeats alone send nothing).
    Registration { id: Uuid, tenant: Uuid },
    /// Only a registration's load report changed; the report travels.
    Load(LoadNote),
    /// A replica's load reports of one interval (migration 0017).
    Loads { reports: Vec<LoadNote> },
    /// A manifest was created, changed or deleted.
    Manifest { id: Uuid },
    /// One statement opened (`delta` > 0) or closed leases of an instance.
    Leases {
        registration: Uuid,
        tenant: Uuid,
        delta: i32,
    },
    /// An API key was revoked or deleted.
    ApiKey { id: Uuid },
    /// A replica's lease was taken, renewed, ended or taken over
    /// (migration 0016); its expiry travels, in milliseconds since the
    /// epoch (0 when the lease is gone), with the database's clock then.
    Replica { id: Uuid, expires_at: i64, at: i64 },
}

impl Change {
    /// Decodes one notification payload.
    pub fn decode(payload: &str) -> Result<Change, serde_json::Error> {
        serde_json::from_str(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn payloads_decode_by_name() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let cases = [
            (
                format!(r#"{{"kind":"configuration","op":"update","id":"{a}","tenant":"{b}"}}"#),
                Change::Configuration {
                    op: Op::Update,
                    id: a,
                    tenant: b,
                },
            ),
            (
                format!(
                    r#"{{"kind":"workload","configuration":"{a}","tenant":"{b}","current_workload":3}}"#
                ),
                Change::Workload {
                    configuration: a,
                    tenant: b,
                    current_workload: 3,
                },
            ),
            (
                format!(r#"{{"kind":"registration","id":"{a}","tenant":"{b}"}}"#),
                Change::Registration { id: a, tenant: b },
            ),
            (
                format!(
                    r#"{{"kind":"load","id":"{a}","tenant":"{b}","configuration":"{b}","epoch":3,
                        "in_flight":2,"queue_depth":0,"utilization":0.5,"metrics":{{"tokens":7}},
                        "reported_at":"2026-12-02T08:00:00.123456+01:00","first_reported_at":"2026-12-02T07:00:00+00:00",
                        "last_health_check":"2026-12-02T07:00:00.5+00:00","updated_at":"2026-12-02T07:00:00.123456+00:00"}}"#
                ),
                Change::Load(LoadNote {
                    id: a,
                    tenant: b,
                    configuration: b,
                    epoch: 3,
                    in_flight: Some(2),
                    queue_depth: Some(0),
                    utilization: Some(0.5),
                    metrics: Some(serde_json::json!({"tokens": 7})),
                    reported_at: Some(at("2026-12-02T07:00:00.123456Z")),
                    first_reported_at: Some(at("2026-12-02T07:00:00Z")),
                    last_health_check: Some(at("2026-12-02T07:00:00.5Z")),
                    updated_at: Some(at("2026-12-02T07:00:00.123456Z")),
                }),
            ),
            (
                // The agent stopped reporting: the report's columns are null.
                format!(
                    r#"{{"kind":"load","id":"{a}","tenant":"{b}","configuration":"{b}","epoch":3,
                        "in_flight":null,"queue_depth":null,"utilization":null,"metrics":null,
                        "reported_at":null,"first_reported_at":null,
                        "last_health_check":"2026-12-02T07:00:00+00:00","updated_at":"2026-12-02T07:00:00+00:00"}}"#
                ),
                Change::Load(LoadNote {
                    id: a,
                    tenant: b,
                    configuration: b,
                    epoch: 3,
                    in_flight: None,
                    queue_depth: None,
                    utilization: None,
                    metrics: None,
                    reported_at: None,
                    first_reported_at: None,
                    last_health_check: Some(at("2026-12-02T07:00:00Z")),
                    updated_at: Some(at("2026-12-02T07:00:00Z")),
                }),
            ),
            (
                format!(r#"{{"kind":"manifest","id":"{a}"}}"#),
                Change::Manifest { id: a },
            ),
            (
                format!(
                    r#"{{"kind":"leases","registration":"{a}","tenant":"{b}","delta":-2,"seq":17}}"#
                ),
                Change::Leases {
                    registration: a,
                    tenant: b,
                    delta: -2,
                },
            ),
            (
                format!(r#"{{"kind":"api_key","id":"{a}"}}"#),
                Change::ApiKey { id: a },
            ),
        ];
        for (payload, change) in cases {
            assert_eq!(Change::decode(&payload).expect(&payload), change);
        }
        assert!(Change::decode(r#"{"kind":"w","id":"x"}"#).is_err());
    }
}
