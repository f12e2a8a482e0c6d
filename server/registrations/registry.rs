//! Registering instances and applying fenced changes to them, for the
//! unary RPCs and the health stream alike: the database row first, then this
//! server's own session of the instance (superseded or closed at once; other
//! replicas' sessions are fenced by epoch when they next write).

use std::sync::Arc;

use sqlx::PgPool;
use uuid::Uuid;

use super::hellos::{HelloWriter, Registered};
use super::sessions::{Control, Sessions};
use super::store::{self, Announcement, RegistrationKey, RegistrationRow, Transition};
use crate::error::Result;

/// Registers instances and changes their state.
#[derive(Debug, Clone)]
pub struct Registry {
    pool: PgPool,
    sessions: Arc<Sessions>,
    hellos: Arc<HelloWriter>,
}

impl Registry {
    /// A registry registering through `hellos`, changing rows in `pool`,
    /// and fencing `sessions`.
    pub fn new(pool: PgPool, sessions: Arc<Sessions>, hellos: Arc<HelloWriter>) -> Self {
        Registry {
            pool,
            sessions,
            hellos,
        }
    }

    /// Registers (or re-registers) an instance with a new epoch, and fences
    /// off its older session here. Returns the row and whether it was
    /// created. `held`: for a health stream of this replica.
    pub async fn register(&self, tenant: Uuid, a: Announcement, held: bool) -> Result<Registered> {
        let registered = self.hellos.register(tenant, a, held).await?;
        let (row, created) = (&registered.row, registered.created);
        self.sessions.supersede_older(row.id, row.epoch);
        tracing::info!(registration = %row.id, epoch = row.epoch, created, "instance registered");
        Ok(registered)
    }

    /// Applies a fenced transition to the instance `instance_id` of `tenant`
    /// (`None`: any), and closes this server's stream of it when it was
    /// deactivated.
    pub async fn transition(
        &self,
        tenant: Option<Uuid>,
        instance_id: String,
        epoch: i64,
        t: Transition,
    ) -> Result<RegistrationRow> {
        let key = RegistrationKey::InstanceId(instance_id);
        let row = store::transition(&self.pool, tenant, &key, epoch, t).await??;
        if matches!(t, Transition::Deactivate) {
            self.sessions
                .tell(row.id, Control::Close(super::sessions::deactivated()));
        }
        Ok(row)
    }
}
