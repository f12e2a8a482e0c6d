//! Builders of `RegistrationService` requests: [`RegisterInstance`] and
//! [`ListRegistrations`].

use crate::json::json_to_struct;
use crate::pb;

/// Builds a [`pb::RegisterInstanceRequest`] for
/// [`Client::register_instance`](crate::Client::register_instance).
///
/// ```
/// use agentry_client::{RegisterInstance, pb};
/// let request: pb::RegisterInstanceRequest = RegisterInstance::new("ws_conn_abc123", "ide-agent")
///     .name("VS Code")
///     .connection_details(serde_json::json!({"ip_address": "192.168.1.100"}))
///     .into();
/// assert_eq!(request.instance_id, "ws_conn_abc123");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct RegisterInstance {
    request: pb::RegisterInstanceRequest,
}

impl RegisterInstance {
    /// Registers `instance_id` (unique within the tenant, reused on reconnect)
    /// as an instance of the manifest `agent_id`.
    pub fn new(instance_id: impl Into<String>, agent_id: impl Into<String>) -> Self {
        RegisterInstance {
            request: pb::RegisterInstanceRequest {
                instance_id: instance_id.into(),
                agent_id: agent_id.into(),
                ..Default::default()
            },
        }
    }

    /// Human-readable name, e.g. `"VS Code"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.request.name = name.into();
        self
    }

    /// Connection details (a JSON object: websocket id, address, user agent...).
    pub fn connection_details(mut self, details: serde_json::Value) -> Self {
        self.request.connection_details = Some(json_to_struct(details));
        self
    }

    /// Runtime configuration (a JSON object).
    pub fn runtime_config(mut self, config: serde_json::Value) -> Self {
        self.request.runtime_config = Some(json_to_struct(config));
        self
    }

    /// Units of work the instance says it can take (`> 0`). Recorded on the
    /// registration for operators; routing is limited by the configuration's
    /// `max_workload`, not by this.
    pub fn capacity(mut self, capacity: i32) -> Self {
        self.request.capacity = Some(capacity);
        self
    }
}

/// Builds a [`pb::ListRegistrationsRequest`] for
/// [`Client::list_registrations`](crate::Client::list_registrations).
/// `ListRegistrations::new().status(pb::RegistrationStatus::Active)` is the
/// tenant's active registrations.
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct ListRegistrations {
    request: pb::ListRegistrationsRequest,
}

impl ListRegistrations {
    /// All registrations, first page, server's default page size.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only registrations with this status.
    pub fn status(mut self, status: pb::RegistrationStatus) -> Self {
        self.request.registration_status = status.into();
        self
    }

    /// Only registrations with this health.
    pub fn health(mut self, health: pb::HealthStatus) -> Self {
        self.request.health_status = health.into();
        self
    }

    /// Only instances of the manifest with this `agent_id`.
    pub fn agent_id(mut self, agent_id: impl Into<String>) -> Self {
        self.request.agent_id = agent_id.into();
        self
    }

    /// Only instances of this configuration (UUID).
    pub fn configuration_id(mut self, configuration_id: impl Into<String>) -> Self {
        self.request.configuration_id = configuration_id.into();
        self
    }

    paging!();

    /// Admin keys only: list this tenant's (UUID) registrations.
    pub fn tenant(mut self, tenant_id: impl Into<String>) -> Self {
        self.request.tenant_id = tenant_id.into();
        self
    }
}

into_request!(
    RegisterInstance => RegisterInstanceRequest,
    ListRegistrations => ListRegistrationsRequest,
);
