//! The change feed's payloads: what the triggers of migration 0008 send on
//! `agentry_changes`, decoded by name. The migration documents each kind.

use serde::Deserialize;
use uuid::Uuid;

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

/// One committed change, as a trigger announced it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
