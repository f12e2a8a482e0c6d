//! `ConfigurationService` calls.

use crate::{Client, Result, pb};

/// # Configuration operations
///
/// A configuration says how one tenant uses one manifest (at most one per
/// tenant and manifest). Calls act on the API key's tenant; admin keys may
/// name another tenant where a builder has a `tenant` setter. Agent keys may
/// not manage configurations.
impl Client {
    /// Creates the tenant's configuration of a manifest, usually from a
    /// [`CreateConfiguration`](crate::CreateConfiguration).
    ///
    /// Fails with [`Error::AlreadyExists`](crate::Error::AlreadyExists) when
    /// the tenant already configures that manifest, and with
    /// [`Error::NotFound`](crate::Error::NotFound) when the manifest does not exist.
    pub async fn create_configuration(
        &self,
        request: impl Into<pb::CreateConfigurationRequest>,
    ) -> Result<pb::Configuration> {
        self.write(request.into(), |r| {
            let mut service = self.configuration_service();
            async move { service.create_configuration(r).await }
        })
        .await
    }

    /// Returns the configuration with UUID `id`.
    pub async fn get_configuration(&self, id: &str) -> Result<pb::Configuration> {
        self.retried(pb::GetConfigurationRequest { id: id.to_owned() }, |r| {
            let mut service = self.configuration_service();
            async move { service.get_configuration(r).await }
        })
        .await
    }

    /// The A2A AgentCard (protocol 1.0 JSON) of the configuration with UUID
    /// `id`, as its tenant sees it: the manifest's skills and card fields,
    /// the configuration's name, and each interface's `tenant` set. The same
    /// JSON is served over HTTP at
    /// `/configurations/{id}/.well-known/agent-card.json` on the server's
    /// metrics listener.
    pub async fn get_agent_card(&self, id: &str) -> Result<String> {
        let request = pb::GetAgentCardRequest {
            configuration_id: id.to_owned(),
        };
        self.retried(request, |r| {
            let mut service = self.configuration_service();
            async move { service.get_agent_card(r).await }
        })
        .await
        .map(|card| card.card_json)
    }

    /// Lists configurations oldest first, one page at a time, usually from a
    /// [`ListConfigurations`](crate::ListConfigurations).
    pub async fn list_configurations(
        &self,
        request: impl Into<pb::ListConfigurationsRequest>,
    ) -> Result<pb::ListConfigurationsResponse> {
        self.retried(request.into(), |r| {
            let mut service = self.configuration_service();
            async move { service.list_configurations(r).await }
        })
        .await
    }

    /// Changes the fields named in the update mask, usually from an
    /// [`UpdateConfiguration`](crate::UpdateConfiguration), and returns the result.
    ///
    /// Fails with [`Error::FailedPrecondition`](crate::Error::FailedPrecondition)
    /// when `max_workload` would go below the current workload.
    pub async fn update_configuration(
        &self,
        request: impl Into<pb::UpdateConfigurationRequest>,
    ) -> Result<pb::Configuration> {
        self.retried(request.into(), |r| {
            let mut service = self.configuration_service();
            async move { service.update_configuration(r).await }
        })
        .await
    }

    /// Deletes the configuration with UUID `id`.
    pub async fn delete_configuration(&self, id: &str) -> Result<()> {
        self.write(pb::DeleteConfigurationRequest { id: id.to_owned() }, |r| {
            let mut service = self.configuration_service();
            async move { service.delete_configuration(r).await }
        })
        .await
        .map(drop)
    }

    /// Atomically adds `delta` units to the configuration's
    /// `current_workload` (negative to give units back) and returns the
    /// configuration as changed.
    ///
    /// Fails with [`Error::ResourceExhausted`](crate::Error::ResourceExhausted)
    /// when an increase would pass `max_workload`, and with
    /// [`Error::FailedPrecondition`](crate::Error::FailedPrecondition) when a
    /// decrease would go below zero; in both cases nothing changes. Never
    /// retried, so a failed call was applied at most once.
    pub async fn update_workload(&self, id: &str, delta: i32) -> Result<pb::Configuration> {
        self.write(
            pb::UpdateWorkloadRequest {
                id: id.to_owned(),
                delta,
            },
            |r| {
                let mut service = self.configuration_service();
                async move { service.update_workload(r).await }
            },
        )
        .await
    }
}
