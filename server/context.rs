//! What every service handler needs: the pool, the authenticator, the live
//! health streams and the registry settings.

use std::sync::Arc;

use sqlx::PgPool;
use tonic::Request;

use crate::auth::{Authenticator, Caller};
use crate::config::RegistryConfig;
use crate::error::Result;
use crate::pb::Role;
use crate::registrations::sessions::Sessions;
use crate::routing::view::View;
use crate::routing::writer::LeaseWriter;

/// Shared state of the services. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Context {
    /// The database.
    pub pool: PgPool,
    pub(crate) auth: Authenticator,
    /// Health streams held by this server.
    pub sessions: Arc<Sessions>,
    /// Registry settings.
    pub registry: Arc<RegistryConfig>,
    /// The availability view that routing reads.
    pub view: Arc<View>,
    /// Batches lease reservations and releases.
    pub leases: Arc<LeaseWriter>,
}

impl Context {
    /// State over `pool`.
    pub fn new(pool: PgPool, registry: RegistryConfig) -> Self {
        Context {
            auth: Authenticator::new(pool.clone()),
            pool,
            sessions: Arc::new(Sessions::default()),
            view: Arc::new(View::new(registry.watch_buffer)),
            leases: Arc::default(),
            registry: Arc::new(registry),
        }
    }

    /// Authenticates `request` and checks the caller's role against `roles`.
    /// Records the role and tenant on the current RPC span.
    pub async fn caller<T>(&self, request: &Request<T>, roles: &[Role]) -> Result<Caller> {
        let caller = self.auth.authenticate(request).await?;
        let span = tracing::Span::current();
        span.record("role", caller.role.db_name().unwrap_or_default());
        if let Some(tenant) = caller.tenant_id {
            span.record("tenant", tracing::field::display(tenant));
        }
        caller.require(roles)?;
        Ok(caller)
    }
}
