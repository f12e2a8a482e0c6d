//! `agentry.v1.RoutingService`.

use std::time::Duration;

use tonic::{Request, Response, Status};
use tracing::instrument;
use uuid::Uuid;

use super::encoded::AvailableAgents;
use super::store::{self, LeaseRow};
use super::view::Filter;
use super::writer::Reservation;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::pb::routing_service_server::RoutingService;
use crate::pb::{self, Role};
use crate::validate;

const ROUTERS: &[Role] = &[Role::Tenant];
const DEFAULT_TTL: Duration = Duration::from_secs(60);
const MAX_TTL: Duration = Duration::from_secs(3600);
const DEFAULT_PERIOD: Duration = Duration::from_secs(3600);
const MAX_PERIOD: Duration = Duration::from_secs(30 * 24 * 3600);
/// Best candidates among which power-of-two-choices picks.
const CHOICES: usize = 4;
/// Candidates one reservation offers the lease writer, in pick order: more
/// only matter when the view is behind on that many full configurations.
const RESERVE_CANDIDATES: usize = 16;

/// Serves routing for the caller's tenant from the availability view.
#[derive(Debug, Clone)]
pub struct RoutingApi {
    pub(super) ctx: Context,
}

impl RoutingApi {
    /// The service over `ctx`.
    pub fn new(ctx: Context) -> Self {
        RoutingApi { ctx }
    }
}

/// Validates a filter; a missing one means "everything".
pub(super) fn filter(f: Option<pb::AgentFilter>) -> Result<Filter> {
    let f = f.unwrap_or_default();
    if !f.agent_id.is_empty() {
        validate::slug("filter.agent_id", &f.agent_id, 64)?;
    }
    if !f.agent_type.is_empty() {
        validate::slug("filter.agent_type", &f.agent_type, 64)?;
    }
    validate::capabilities("filter.capabilities", &f.capabilities)?;
    Ok(Filter {
        agent_id: (!f.agent_id.is_empty()).then_some(f.agent_id),
        agent_type: (!f.agent_type.is_empty()).then_some(f.agent_type),
        capabilities: f.capabilities,
        include_degraded: f.include_degraded,
        include_deprecated: f.include_deprecated,
    })
}

/// A positive duration of at most `max`; `default` when absent.
fn duration(
    field: &str,
    value: Option<prost_types::Duration>,
    default: Duration,
    max: Duration,
) -> Result<Duration> {
    let Some(value) = value else {
        return Ok(default);
    };
    match Duration::try_from(value) {
        Ok(d) if !d.is_zero() && d <= max => Ok(d),
        _ => Err(Error::invalid(
            field,
            format!("must be a positive duration of at most {}s", max.as_secs()),
        )),
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

impl RoutingApi {
    /// The lease message, with the instance and configuration as the view knows them.
    async fn lease(&self, tenant: Uuid, row: LeaseRow) -> Result<pb::Lease> {
        let registration = crate::registrations::store::get(
            &self.ctx.pool,
            Some(tenant),
            &crate::registrations::store::RegistrationKey::Id(row.registration_id),
        )
        .await
        .ok()
        .map(Into::into);
        let configuration = crate::configurations::store::get(
            &self.ctx.pool,
            Some(tenant),
            row.configuration_id,
            false,
        )
        .await
        .ok()
        .map(Into::into);
        Ok(pb::Lease {
            id: row.id.to_string(),
            instance: registration,
            configuration,
            epoch: row.epoch,
            expire_time: Some(pb::timestamp(row.expires_at)),
        })
    }
}

/// The (configuration, registration) ids of an available agent.
fn ids(agent: &pb::AvailableAgent) -> Option<(Uuid, Uuid)> {
    let configuration = Uuid::try_parse(&agent.configuration.as_ref()?.id).ok()?;
    let registration = Uuid::try_parse(&agent.instance.as_ref()?.id).ok()?;
    Some((configuration, registration))
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
        let caller = self.ctx.caller(&request, ROUTERS).await?;
        let tenant = caller.owning_tenant("")?;
        let r = request.into_inner();
        let limit = match r.limit {
            0 => 100,
            n @ 1..=1000 => n as usize,
            _ => return Err(Error::invalid("limit", "must be between 0 and 1000").into()),
        };
        let filter = filter(r.filter)?;
        let agents = self.ctx.view.available_encoded(tenant, &filter, limit);
        Ok(Response::new(AvailableAgents { agents }))
    }

    #[instrument(name = "routing.acquire_agent", skip_all, fields(role, tenant, lease))]
    async fn acquire_agent(
        &self,
        request: Request<pb::AcquireAgentRequest>,
    ) -> Result<Response<pb::Lease>, Status> {
        let caller = self.ctx.caller(&request, ROUTERS).await?;
        let tenant = caller.owning_tenant("")?;
        let r = request.into_inner();
        let ttl = duration("ttl", r.ttl, DEFAULT_TTL, MAX_TTL)?;
        let filter = filter(r.filter)?;
        let (candidates, _) = self.ctx.view.available(tenant, &filter, usize::MAX);
        // The view may be a moment behind: the lease writer decides against
        // the database, taking the first of these that still fits.
        let order: Vec<usize> = pick_order(candidates.len())
            .into_iter()
            .filter(|i| ids(&candidates[*i]).is_some())
            .take(RESERVE_CANDIDATES)
            .collect();
        let reservation = Reservation {
            tenant,
            candidates: order.iter().filter_map(|i| ids(&candidates[*i])).collect(),
            ttl_ms: millis(ttl),
        };
        if let Some(grant) = self.ctx.leases.reserve(reservation).await? {
            tracing::Span::current().record("lease", tracing::field::display(grant.lease.id));
            let chosen = &candidates[order[grant.candidate]];
            let mut configuration = chosen.configuration.clone();
            if let Some(c) = &mut configuration {
                c.current_workload = grant.current_workload;
            }
            let mut instance = chosen.instance.clone();
            if let Some(i) = &mut instance {
                i.epoch = grant.lease.epoch;
            }
            return Ok(Response::new(pb::Lease {
                id: grant.lease.id.to_string(),
                instance,
                configuration,
                epoch: grant.lease.epoch,
                expire_time: Some(pb::timestamp(grant.lease.expires_at)),
            }));
        }
        Err(
            Error::ResourceExhausted("no available agent has free workload for this filter".into())
                .into(),
        )
    }

    #[instrument(name = "routing.renew_lease", skip_all, fields(role, tenant, lease))]
    async fn renew_lease(
        &self,
        request: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::Lease>, Status> {
        let caller = self.ctx.caller(&request, ROUTERS).await?;
        let tenant = caller.owning_tenant("")?;
        let r = request.into_inner();
        let id = validate::uuid("lease_id", &r.lease_id)?;
        tracing::Span::current().record("lease", tracing::field::display(id));
        let ttl = match r.ttl {
            Some(_) => Some(millis(duration("ttl", r.ttl, DEFAULT_TTL, MAX_TTL)?)),
            None => None,
        };
        let row = store::renew(&self.ctx.pool, tenant, id, ttl).await?;
        Ok(Response::new(self.lease(tenant, row).await?))
    }

    #[instrument(name = "routing.release_agent", skip_all, fields(role, tenant, lease))]
    async fn release_agent(
        &self,
        request: Request<pb::ReleaseAgentRequest>,
    ) -> Result<Response<pb::ReleaseAgentResponse>, Status> {
        let caller = self.ctx.caller(&request, ROUTERS).await?;
        let tenant = caller.owning_tenant("")?;
        let r = request.into_inner();
        let id = validate::uuid("lease_id", &r.lease_id)?;
        tracing::Span::current().record("lease", tracing::field::display(id));
        let outcome = match validate::enum_value::<pb::LeaseOutcome>("outcome", r.outcome)? {
            Some(pb::LeaseOutcome::Succeeded) => "succeeded",
            Some(pb::LeaseOutcome::Failed) => "failed",
            Some(pb::LeaseOutcome::Cancelled) => "cancelled",
            _ => {
                return Err(Error::invalid(
                    "outcome",
                    "is required: SUCCEEDED, FAILED or CANCELLED",
                )
                .into());
            }
        };
        let released = self.ctx.leases.release(tenant, id, outcome).await?;
        if !released {
            // Not released by this call: already released, or not this tenant's lease at all.
            store::get(&self.ctx.pool, tenant, id).await?;
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
        let caller = self
            .ctx
            .caller(&request, &[Role::Tenant, Role::Admin])
            .await?;
        let r = request.into_inner();
        let id = validate::uuid("configuration_id", &r.configuration_id)?;
        tracing::Span::current().record("configuration", tracing::field::display(id));
        let period = duration("period", r.period, DEFAULT_PERIOD, MAX_PERIOD)?;
        let metrics =
            super::metrics::compute(&self.ctx.pool, caller.scope("")?.filter(), id, period).await?;
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
        let caller = self.ctx.caller(&request, ROUTERS).await?;
        let tenant = caller.owning_tenant("")?;
        let filter = filter(request.into_inner().filter)?;
        Ok(Response::new(super::watch::start(
            self.ctx.view.clone(),
            tenant,
            filter,
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
