//! `ManifestService` calls.

use crate::pb::get_manifest_request::Key;
use crate::{Client, Result, pb};

/// # Manifest operations
///
/// Manifests are system-wide blueprints of agent kinds, shared by all
/// tenants. Any valid key may read them; creating, changing and deleting them
/// needs an admin key (otherwise [`Error::PermissionDenied`](crate::Error::PermissionDenied)).
impl Client {
    /// Creates a manifest, usually from a [`CreateManifest`](crate::CreateManifest).
    ///
    /// Fails with [`Error::AlreadyExists`](crate::Error::AlreadyExists) when
    /// the `agent_id` is taken, and with
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) naming the
    /// bad field (e.g. `manifest.version`).
    pub async fn create_manifest(
        &self,
        request: impl Into<pb::CreateManifestRequest>,
    ) -> Result<pb::Manifest> {
        self.write(request.into(), |r| {
            let mut service = self.manifest_service();
            async move { service.create_manifest(r).await }
        })
        .await
    }

    /// Returns the manifest with UUID `id`.
    pub async fn get_manifest(&self, id: &str) -> Result<pb::Manifest> {
        self.fetch_manifest(Key::Id(id.to_owned())).await
    }

    /// Returns the manifest with this `agent_id` (e.g. `"ide-agent"`).
    pub async fn get_manifest_by_agent_id(&self, agent_id: &str) -> Result<pb::Manifest> {
        self.fetch_manifest(Key::AgentId(agent_id.to_owned())).await
    }

    async fn fetch_manifest(&self, key: Key) -> Result<pb::Manifest> {
        self.retried(pb::GetManifestRequest { key: Some(key) }, |r| {
            let mut service = self.manifest_service();
            async move { service.get_manifest(r).await }
        })
        .await
    }

    /// Lists manifests ordered by `agent_id`, one page at a time, usually
    /// from a [`ListManifests`](crate::ListManifests).
    pub async fn list_manifests(
        &self,
        request: impl Into<pb::ListManifestsRequest>,
    ) -> Result<pb::ListManifestsResponse> {
        self.retried(request.into(), |r| {
            let mut service = self.manifest_service();
            async move { service.list_manifests(r).await }
        })
        .await
    }

    /// Changes the fields named in the update mask, usually from an
    /// [`UpdateManifest`](crate::UpdateManifest), and returns the result.
    pub async fn update_manifest(
        &self,
        request: impl Into<pb::UpdateManifestRequest>,
    ) -> Result<pb::Manifest> {
        self.retried(request.into(), |r| {
            let mut service = self.manifest_service();
            async move { service.update_manifest(r).await }
        })
        .await
    }

    /// Deletes the manifest with UUID `id`.
    ///
    /// Fails with [`Error::FailedPrecondition`](crate::Error::FailedPrecondition)
    /// while configurations reference it.
    pub async fn delete_manifest(&self, id: &str) -> Result<()> {
        self.write(pb::DeleteManifestRequest { id: id.to_owned() }, |r| {
            let mut service = self.manifest_service();
            async move { service.delete_manifest(r).await }
        })
        .await
        .map(drop)
    }

    /// Creates or updates a manifest from an A2A AgentCard, usually from an
    /// [`ImportAgentCard`](crate::ImportAgentCard); admin keys only. The
    /// answer says what happened (`outcome`: created, updated, unchanged,
    /// validated) and which JSON paths were `mapped` and `ignored`.
    ///
    /// A bad card fails with [`Error::InvalidArgument`](crate::Error::InvalidArgument)
    /// whose [`field`](crate::Error::field) is the JSON path (`$.skills[2].id`);
    /// a changed card whose version is not higher than the stored one with
    /// [`Error::FailedPrecondition`](crate::Error::FailedPrecondition). The
    /// same card again answers `unchanged`, so a retry is safe.
    pub async fn import_agent_card(
        &self,
        request: impl Into<pb::ImportAgentCardRequest>,
    ) -> Result<pb::ImportResponse> {
        self.retried(request.into(), |r| {
            let mut service = self.manifest_service();
            async move { service.import_agent_card(r).await }
        })
        .await
    }

    /// [`Client::import_agent_card`] for an MCP registry `server.json`,
    /// usually from an [`ImportMcpServer`](crate::ImportMcpServer).
    pub async fn import_mcp_server(
        &self,
        request: impl Into<pb::ImportMcpServerRequest>,
    ) -> Result<pb::ImportResponse> {
        self.retried(request.into(), |r| {
            let mut service = self.manifest_service();
            async move { service.import_mcp_server(r).await }
        })
        .await
    }
}
