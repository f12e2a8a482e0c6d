//! `RoutingService` calls. The self-updating view and lease guard are in [`crate::router`].

use std::time::Duration;

use crate::client::proto_duration;
use crate::{Client, Result, pb};

/// # Routing operations
///
/// Routing is always for the tenant of the key (a `tenant` key).
impl Client {
    /// The tenant's available agents matching `filter`, best availability score
    /// first, at most `limit` (0: the server's default of 100).
    pub async fn get_available_agents(
        &self,
        filter: impl Into<pb::AgentFilter>,
        limit: i32,
    ) -> Result<Vec<pb::AvailableAgent>> {
        let request = pb::GetAvailableAgentsRequest {
            filter: Some(filter.into()),
            limit,
        };
        let response = self
            .read(request, |r| {
                let mut service = self.routing_service();
                async move { service.get_available_agents(r).await }
            })
            .await?;
        Ok(response.agents)
    }

    /// Picks an agent and reserves one unit of its configuration's workload
    /// for `ttl` (`None`: the server's default of 60 s). Returns the raw lease;
    /// [`Router::acquire`](crate::Router::acquire) wraps it in a guard that
    /// renews and releases itself.
    ///
    /// Fails with [`Error::ResourceExhausted`](crate::Error::ResourceExhausted)
    /// when no matching agent has room.
    pub async fn acquire_agent(
        &self,
        filter: impl Into<pb::AgentFilter>,
        ttl: Option<Duration>,
    ) -> Result<pb::Lease> {
        let request = pb::AcquireAgentRequest {
            filter: Some(filter.into()),
            ttl: ttl.map(|d| proto_duration("ttl", d)).transpose()?,
        };
        self.write(request, |r| {
            let mut service = self.routing_service();
            async move { service.acquire_agent(r).await }
        })
        .await
    }

    /// Extends lease `lease_id` by `ttl` from now (`None`: its original ttl).
    ///
    /// Fails with [`Error::FailedPrecondition`](crate::Error::FailedPrecondition)
    /// once the lease was released or expired.
    pub async fn renew_lease(&self, lease_id: &str, ttl: Option<Duration>) -> Result<pb::Lease> {
        let request = pb::RenewLeaseRequest {
            lease_id: lease_id.to_owned(),
            ttl: ttl.map(|d| proto_duration("ttl", d)).transpose()?,
        };
        self.write(request, |r| {
            let mut service = self.routing_service();
            async move { service.renew_lease(r).await }
        })
        .await
    }

    /// Gives the lease's unit back. Returns `false` when it had already been
    /// released or had expired (harmless).
    pub async fn release_agent(&self, lease_id: &str, outcome: pb::LeaseOutcome) -> Result<bool> {
        let request = pb::ReleaseAgentRequest {
            lease_id: lease_id.to_owned(),
            outcome: outcome.into(),
        };
        let response = self
            .write(request, |r| {
                let mut service = self.routing_service();
                async move { service.release_agent(r).await }
            })
            .await?;
        Ok(response.released)
    }

    /// Usage and health figures of configuration `configuration_id` over the
    /// last `period` (`None`: one hour).
    pub async fn get_agent_metrics(
        &self,
        configuration_id: &str,
        period: Option<Duration>,
    ) -> Result<pb::AgentMetrics> {
        let request = pb::GetAgentMetricsRequest {
            configuration_id: configuration_id.to_owned(),
            period: period.map(|d| proto_duration("period", d)).transpose()?,
        };
        self.read(request, |r| {
            let mut service = self.routing_service();
            async move { service.get_agent_metrics(r).await }
        })
        .await
    }

    /// Subscribes to the available agents matching `filter`: a snapshot, then
    /// changes. [`Client::router`] keeps a view from it for you.
    pub async fn watch_available_agents(
        &self,
        filter: impl Into<pb::AgentFilter>,
    ) -> Result<tonic::Streaming<pb::AvailabilityEvent>> {
        let request = pb::WatchAvailableAgentsRequest {
            filter: Some(filter.into()),
        };
        let mut service = self.routing_service();
        // A watch lives as long as the caller wants it: no deadline.
        Ok(service
            .watch_available_agents(tonic::Request::new(request))
            .await?
            .into_inner())
    }
}
