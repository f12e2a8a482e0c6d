//! Routing's side of the sweep: leases are routing's data, so routing
//! implements the sweeper's [`LeaseExpiry`], and the registration tier never
//! imports routing.

use sqlx::PgConnection;

use super::store::expire;
use crate::error::Result;
use crate::registrations::sweeper::LeaseExpiry;

/// Expired leases give their units back; drift of a counter is logged.
#[derive(Debug, Clone, Copy, Default)]
pub struct Expiry;

#[tonic::async_trait]
impl LeaseExpiry for Expiry {
    async fn expire(&self, conn: &mut PgConnection) -> Result<i64> {
        let (expired, drifted) = expire(conn).await?;
        if drifted > 0 {
            tracing::error!(
                units = drifted,
                "workload counter drift: expired leases gave back units their configuration's counter did not hold as leased; set to its manual part"
            );
        }
        Ok(expired)
    }
}
