//! `agentry.v1.RoutingService`.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::instrument;
use uuid::Uuid;

use super::request::{
    AcquireOrder, AvailableQuery, MetricsQuery, ReleaseOrder, RenewOrder, SearchOrder, WatchQuery,
};
use super::store::{self, LeaseRow};
use super::view::View;
use super::writer::{LeaseWriter, Reservation, Reserved};
use crate::auth::Authenticator;
use crate::error::{Error, Result};
use crate::pb::encoded::AvailableAgents;
use crate::pb::routing_service_server::RoutingService;
use crate::pb::{self, Role};
use crate::request::Traced as _;

const ROUTERS: &[Role] = &[Role::Tenant];
/// Best candidates among which power-of-two-choices picks.
const CHOICES: usize = 4;
/// Candidates one reservation offers the lease writer, in pick order: more
/// only matter when the view is behind on that many full configurations.
const RESERVE_CANDIDATES: usize = 16;

/// Serves routing for the caller's tenant from the availability view.
#[derive(Debug, Clone)]
pub struct RoutingApi {
    auth: Authenticator,
    pool: PgPool,
    view: Arc<View>,
    leases: Arc<LeaseWriter>,
    /// Turns true when the server shuts down: watches end at once.
    stopping: watch::Receiver<bool>,
    watches: WatchSettings,
}

/// How watches run.
#[derive(Debug, Clone, Copy)]
pub struct WatchSettings {
    /// How long a watch may stay quiet before it is sent a progress event
    /// (zero: never).
    pub progress: Duration,
    /// Bytes of events one watch may leave unread (`--watch-outbox-bytes`).
    pub outbox_bytes: usize,
}

impl RoutingApi {
    /// The service: reads from `view`, leases through `leases`, lease and
    /// metrics reads from `pool`; watches run as `watches` says.
    pub fn new(
        auth: Authenticator,
        pool: PgPool,
        view: Arc<View>,
        leases: Arc<LeaseWriter>,
        stopping: watch::Receiver<bool>,
        watches: WatchSettings,
    ) -> Self {
        RoutingApi {
            auth,
            pool,
            view,
            leases,
            stopping,
            watches,
        }
    }

    /// The lease message, with the instance and configuration as the view
    /// knows them, or else as stored.
    async fn lease(&self, tenant: Uuid, row: LeaseRow) -> Result<pb::Lease> {
        let (configuration, instance) =
            match self
                .view
                .leased(tenant, row.configuration_id, row.registration_id)
            {
                Some((c, i)) => (Some(c), Some(i)),
                None => {
                    let registration = crate::registrations::store::get(
                        &self.pool,
                        Some(tenant),
                        &crate::registrations::store::RegistrationKey::Id(row.registration_id),
                    )
                    .await
                    .ok()
                    .map(Into::into);
                    let configuration = crate::configurations::store::get(
                        &self.pool,
                        Some(tenant),
                        row.configuration_id,
                        false,
                    )
                    .await
                    .ok()
                    .map(Into::into);
                    (configuration, registration)
                }
            };
        Ok(pb::Lease {
            id: row.id.to_string(),
            instance,
            configuration,
            epoch: row.epoch,
            expire_time: Some(pb::timestamp(row.expires_at)),
            explanation: None,
        })
    }
}

/// The id of the lease a reservation named `request_id` by `tenant` gets: a
/// name-based UUID, so that a repeat names the same lease, while no caller
/// can pick an id that another tenant's lease holds.
fn repeatable_lease_id(tenant: Uuid, request_id: Uuid) -> Uuid {
    Uuid::new_v5(&tenant, request_id.as_bytes())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// Orders candidates for a reservation: power-of-two-choices among the best
/// few picks the first, so routers acting on one snapshot spread out; the
/// rest follow in score order as fallbacks.
fn pick_order(count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..count).collect();
    let top = count.min(CHOICES);
    if top >= 2 {
        let a = fastrand::usize(..top);
        let mut b = fastrand::usize(..top - 1);
        if b >= a {
            b += 1;
        }
        // Candidates are sorted best first: the smaller index wins.
        order.swap(0, a.min(b));
    }
    order
}

#[tonic::async_trait]
impl RoutingService for RoutingApi {
    #[instrument(name = "routing.get_available_agents", skip_all, fields(role, tenant))]
    async fn get_available_agents(
        &self,
        request: Request<pb::GetAvailableAgentsRequest>,
    ) -> Result<Response<AvailableAgents>, Status> {
        let (caller, q) = self
            .auth
            .accept::<_, AvailableQuery>(request, ROUTERS)
            .await?;
        let tenant = caller.owning_tenant("")?;
        let agents = self.view.available_encoded(tenant, &q.filter, q.limit);
        let explanation = q
            .explain
            .then(|| self.view.explain(tenant, &q.filter, q.limit));
        Ok(Response::new(AvailableAgents {
            agents,
            explanation,
        }))
    }

    #[instrument(name = "routing.search_agents", skip_all, fields(role, tenant))]
    async fn search_agents(
        &self,
        request: Request<pb::SearchAgentsRequest>,
    ) -> Result<Response<crate::pb::encoded::SearchAnswer>, Status> {
        let (caller, order) = self.auth.accept::<_, SearchOrder>(request, ROUTERS).await?;
        let tenant = caller.owning_tenant("")?;
        Ok(Response::new(self.view.search(tenant, &order)))
    }

    #[instrument(name = "routing.acquire_agent", skip_all, fields(role, tenant, lease))]
    async fn acquire_agent(
        &self,
        request: Request<pb::AcquireAgentRequest>,
    ) -> Result<Response<pb::Lease>, Status> {
        let (caller, order) = self
            .auth
            .accept::<_, AcquireOrder>(request, ROUTERS)
            .await?;
        let tenant = caller.owning_tenant("")?;
        let available = self.view.candidates(tenant, &order.filter, usize::MAX);
        // The view may be a moment behind: the lease writer decides against
        // the database, taking the first of these that still fits.
        let candidates: Vec<_> = pick_order(available.len())
            .into_iter()
            .take(RESERVE_CANDIDATES)
            .map(|i| available[i])
            .collect();
        let reservation = Reservation {
            tenant,
            candidates: candidates.clone(),
            ttl_ms: millis(order.ttl),
            lease_id: order.request_id.map(|id| repeatable_lease_id(tenant, id)),
        };
        let grant = match self.leases.reserve(reservation).await? {
            Reserved::Granted(grant) => grant,
            Reserved::Replayed(id) => {
                // A repeat: the lease as it is now, renewed, released or not.
                tracing::Span::current().record("lease", tracing::field::display(id));
                let row = store::get(&self.pool, tenant, id).await?;
                return Ok(Response::new(self.lease(tenant, row).await?));
            }
            Reserved::Full => {
                return Err(Error::NoCapacity {
                    message: "no available agent has free workload for this filter".into(),
                    excluded: self.view.exclusions(tenant, &order.filter, &candidates),
                }
                .into());
            }
        };
        tracing::Span::current().record("lease", tracing::field::display(grant.lease.id));
        let mut lease = self.lease(tenant, grant.lease).await?;
        // As the grant left them, whatever the view has applied yet.
        if let Some(c) = &mut lease.configuration {
            c.current_workload = grant.current_workload;
        }
        if let Some(i) = &mut lease.instance {
            i.epoch = lease.epoch;
        }
        if order.explain {
            lease.explanation = Some(self.view.explain(tenant, &order.filter, usize::MAX));
        }
        Ok(Response::new(lease))
    }

    #[instrument(name = "routing.renew_lease", skip_all, fields(role, tenant, lease))]
    async fn renew_lease(
        &self,
        request: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::Lease>, Status> {
        let (caller, r) = self.auth.accept::<_, RenewOrder>(request, ROUTERS).await?;
        let tenant = caller.owning_tenant("")?;
        let row = store::renew(&self.pool, tenant, r.lease_id, r.ttl.map(millis)).await?;
        Ok(Response::new(self.lease(tenant, row).await?))
    }

    #[instrument(name = "routing.release_agent", skip_all, fields(role, tenant, lease))]
    async fn release_agent(
        &self,
        request: Request<pb::ReleaseAgentRequest>,
    ) -> Result<Response<pb::ReleaseAgentResponse>, Status> {
        let (caller, r) = self
            .auth
            .accept::<_, ReleaseOrder>(request, ROUTERS)
            .await?;
        let tenant = caller.owning_tenant("")?;
        let released = self.leases.release(tenant, r.lease_id, r.outcome).await?;
        if !released {
            // Not released by this call: already released, or not this tenant's lease at all.
            store::get(&self.pool, tenant, r.lease_id).await?;
        }
        Ok(Response::new(pb::ReleaseAgentResponse { released }))
    }

    #[instrument(
        name = "routing.get_agent_metrics",
        skip_all,
        fields(role, tenant, configuration)
    )]
    async fn get_agent_metrics(
        &self,
        request: Request<pb::GetAgentMetricsRequest>,
    ) -> Result<Response<pb::AgentMetrics>, Status> {
        let (caller, q) = self
            .auth
            .accept::<_, MetricsQuery>(request, &[Role::Tenant, Role::Admin])
            .await?;
        let tenant = caller.scope("")?.filter();
        let metrics =
            super::metrics::compute(&self.pool, tenant, q.configuration_id, q.period).await?;
        Ok(Response::new(metrics))
    }

    #[instrument(
        name = "routing.watch_available_agents",
        skip_all,
        fields(role, tenant)
    )]
    async fn watch_available_agents(
        &self,
        request: Request<pb::WatchAvailableAgentsRequest>,
    ) -> Result<Response<super::watch::EventStream>, Status> {
        let (caller, held) = self.auth.authorize_stream(&request, ROUTERS).await?;
        let q = WatchQuery::try_from(request.into_inner())?;
        q.trace(&tracing::Span::current());
        let tenant = caller.owning_tenant("")?;
        Ok(Response::new(super::watch::start(
            self.view.clone(),
            tenant,
            q,
            self.watches.progress,
            self.watches.outbox_bytes,
            held,
            self.stopping.clone(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::pick_order;

    #[test]
    fn power_of_two_choices_spreads_over_the_top_candidates() {
        let mut firsts = [0usize; 4];
        for _ in 0..2000 {
            let order = pick_order(10);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(
                sorted,
                (0..10).collect::<Vec<_>>(),
                "every candidate stays as a fallback"
            );
            firsts[order[0]] += 1;
        }
        // The best of two random picks among four: never the worst, the best most often.
        assert_eq!(firsts[3], 0);
        assert!(
            firsts[0] > firsts[1] && firsts[1] > firsts[2] && firsts[2] > 0,
            "{firsts:?}"
        );
        assert_eq!(pick_order(1), [0]);
        assert!(pick_order(0).is_empty());
    }
}
