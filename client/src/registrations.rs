//! `RegistrationService` unary calls. The health stream is in [`crate::agent`].

use std::time::Duration;

use crate::client::proto_duration;
use crate::pb::get_registration_request::Key;
use crate::{Client, Result, pb};

/// # Registration operations
///
/// Registrations are the running instances of the caller's tenant. Agents
/// usually keep theirs alive with an [`AgentSession`](crate::AgentSession);
/// these calls serve agents that cannot hold a stream, and callers that
/// inspect instances.
impl Client {
    /// Registers an instance idempotently, usually from a
    /// [`RegisterInstance`](crate::RegisterInstance): a repeat with the same
    /// `instance_id` reuses the registration and increments its epoch.
    ///
    /// Fails with [`Error::NotFound`](crate::Error::NotFound) when no manifest
    /// has the `agent_id`.
    pub async fn register_instance(
        &self,
        request: impl Into<pb::RegisterInstanceRequest>,
    ) -> Result<pb::RegisterInstanceResponse> {
        self.retried(request.into(), |r| {
            let mut service = self.registration_service();
            async move { service.register_instance(r).await }
        })
        .await
    }

    /// Returns the registration with UUID `id`.
    pub async fn get_registration(&self, id: &str) -> Result<pb::Registration> {
        self.fetch_registration(Key::Id(id.to_owned())).await
    }

    /// Returns the registration of `instance_id`.
    pub async fn get_registration_by_instance_id(
        &self,
        instance_id: &str,
    ) -> Result<pb::Registration> {
        self.fetch_registration(Key::InstanceId(instance_id.to_owned()))
            .await
    }

    async fn fetch_registration(&self, key: Key) -> Result<pb::Registration> {
        self.retried(pb::GetRegistrationRequest { key: Some(key) }, |r| {
            let mut service = self.registration_service();
            async move { service.get_registration(r).await }
        })
        .await
    }

    /// Lists registrations oldest first, one page at a time, usually from a
    /// [`ListRegistrations`](crate::ListRegistrations).
    pub async fn list_registrations(
        &self,
        request: impl Into<pb::ListRegistrationsRequest>,
    ) -> Result<pb::ListRegistrationsResponse> {
        self.retried(request.into(), |r| {
            let mut service = self.registration_service();
            async move { service.list_registrations(r).await }
        })
        .await
    }

    /// Reports an instance's health (`Healthy` or `Degraded`). `epoch` is the
    /// one registration returned (0 skips the check).
    ///
    /// Fails with [`Error::Aborted`](crate::Error::Aborted) when a newer
    /// registration took over, and with
    /// [`Error::FailedPrecondition`](crate::Error::FailedPrecondition) when
    /// the registration is inactive.
    pub async fn update_health(
        &self,
        instance_id: &str,
        health: pb::HealthStatus,
        epoch: i64,
    ) -> Result<pb::Registration> {
        let request = pb::UpdateHealthRequest {
            instance_id: instance_id.to_owned(),
            health_status: health.into(),
            epoch,
        };
        self.retried(request, |r| {
            let mut service = self.registration_service();
            async move { service.update_health(r).await }
        })
        .await
    }

    /// Deactivates a registration (inactive, disconnected). `epoch` 0 skips
    /// the fencing check.
    pub async fn deactivate_registration(
        &self,
        instance_id: &str,
        epoch: i64,
    ) -> Result<pb::Registration> {
        let request = pb::DeactivateRegistrationRequest {
            instance_id: instance_id.to_owned(),
            epoch,
        };
        self.retried(request, |r| {
            let mut service = self.registration_service();
            async move { service.deactivate_registration(r).await }
        })
        .await
    }

    /// Operators (tenant keys): drains an active instance. Routing stops
    /// offering it at once and the agent hears
    /// [`pb::health_stream_response::Message::Drain`] on its health stream;
    /// the drain lasts until the registration is deactivated and registers
    /// anew. `reason` (at most 256 characters) is passed on to the agent.
    pub async fn drain_registration(
        &self,
        instance_id: &str,
        reason: &str,
    ) -> Result<pb::Registration> {
        let request = pb::DrainRegistrationRequest {
            instance_id: instance_id.to_owned(),
            reason: reason.to_owned(),
        };
        self.retried(request, |r| {
            let mut service = self.registration_service();
            async move { service.drain_registration(r).await }
        })
        .await
    }

    /// Admin: runs the stale-instance sweep now. `stale_threshold` (1 s to
    /// 24 h) overrides the server's setting; `ignore_partition_guard` deactivates even when
    /// many instances went silent at once.
    pub async fn cleanup(
        &self,
        stale_threshold: Option<Duration>,
        ignore_partition_guard: bool,
    ) -> Result<pb::CleanupResponse> {
        let request = pb::CleanupRequest {
            stale_threshold: stale_threshold
                .map(|d| proto_duration("stale_threshold", d))
                .transpose()?,
            ignore_partition_guard,
        };
        self.retried(request, |r| {
            let mut service = self.registration_service();
            async move { service.cleanup(r).await }
        })
        .await
    }
}
