//! What callers ask of routing, converted once from the proto messages and
//! validated; a bad field is `INVALID_ARGUMENT` naming it.

use std::time::Duration;

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::pb;
use crate::request::Traced;
use crate::validate;

const DEFAULT_TTL: Duration = Duration::from_secs(60);
const MAX_TTL: Duration = Duration::from_secs(3600);
const DEFAULT_PERIOD: Duration = Duration::from_secs(3600);
const MAX_PERIOD: Duration = Duration::from_secs(30 * 24 * 3600);
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: i32 = 1000;

/// What a caller wants routed to.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub agent_id: Option<String>,
    pub agent_type: Option<String>,
    pub capabilities: Vec<String>,
    pub include_degraded: bool,
    pub include_deprecated: bool,
}

/// `GetAvailableAgents`.
#[derive(Debug)]
pub struct AvailableQuery {
    pub filter: Filter,
    pub limit: usize,
}

/// `AcquireAgent`.
#[derive(Debug)]
pub struct AcquireOrder {
    pub filter: Filter,
    pub ttl: Duration,
}

/// `RenewLease`.
#[derive(Debug)]
pub struct RenewOrder {
    pub lease_id: Uuid,
    /// `None`: the lease's own TTL again.
    pub ttl: Option<Duration>,
}

/// `ReleaseAgent`.
#[derive(Debug)]
pub struct ReleaseOrder {
    pub lease_id: Uuid,
    /// The outcome as stored.
    pub outcome: &'static str,
}

/// `GetAgentMetrics`.
#[derive(Debug)]
pub struct MetricsQuery {
    pub configuration_id: Uuid,
    pub period: Duration,
}

/// `WatchAvailableAgents`.
#[derive(Debug)]
pub struct WatchQuery {
    pub filter: Filter,
}

/// Validates a filter; a missing one means "everything".
fn filter(f: Option<pb::AgentFilter>) -> Result<Filter> {
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

/// A positive duration of at most `max`; `None` when absent.
fn duration(
    field: &str,
    value: Option<prost_types::Duration>,
    max: Duration,
) -> Result<Option<Duration>> {
    let Some(value) = value else {
        return Ok(None);
    };
    match Duration::try_from(value) {
        Ok(d) if !d.is_zero() && d <= max => Ok(Some(d)),
        _ => Err(Error::invalid(
            field,
            format!("must be a positive duration of at most {}s", max.as_secs()),
        )),
    }
}

impl TryFrom<pb::GetAvailableAgentsRequest> for AvailableQuery {
    type Error = Error;
    fn try_from(r: pb::GetAvailableAgentsRequest) -> Result<Self> {
        let limit = match r.limit {
            0 => DEFAULT_LIMIT,
            n @ 1..=MAX_LIMIT => n as usize,
            _ => {
                return Err(Error::invalid(
                    "limit",
                    format!("must be between 0 and {MAX_LIMIT}"),
                ));
            }
        };
        Ok(AvailableQuery {
            filter: filter(r.filter)?,
            limit,
        })
    }
}

impl TryFrom<pb::AcquireAgentRequest> for AcquireOrder {
    type Error = Error;
    fn try_from(r: pb::AcquireAgentRequest) -> Result<Self> {
        Ok(AcquireOrder {
            ttl: duration("ttl", r.ttl, MAX_TTL)?.unwrap_or(DEFAULT_TTL),
            filter: filter(r.filter)?,
        })
    }
}

impl TryFrom<pb::RenewLeaseRequest> for RenewOrder {
    type Error = Error;
    fn try_from(r: pb::RenewLeaseRequest) -> Result<Self> {
        Ok(RenewOrder {
            lease_id: validate::uuid("lease_id", &r.lease_id)?,
            ttl: duration("ttl", r.ttl, MAX_TTL)?,
        })
    }
}

impl TryFrom<pb::ReleaseAgentRequest> for ReleaseOrder {
    type Error = Error;
    fn try_from(r: pb::ReleaseAgentRequest) -> Result<Self> {
        let lease_id = validate::uuid("lease_id", &r.lease_id)?;
        let outcome = match validate::enum_value::<pb::LeaseOutcome>("outcome", r.outcome)? {
            Some(pb::LeaseOutcome::Succeeded) => "succeeded",
            Some(pb::LeaseOutcome::Failed) => "failed",
            Some(pb::LeaseOutcome::Cancelled) => "cancelled",
            _ => {
                return Err(Error::invalid(
                    "outcome",
                    "is required: SUCCEEDED, FAILED or CANCELLED",
                ));
            }
        };
        Ok(ReleaseOrder { lease_id, outcome })
    }
}

impl TryFrom<pb::GetAgentMetricsRequest> for MetricsQuery {
    type Error = Error;
    fn try_from(r: pb::GetAgentMetricsRequest) -> Result<Self> {
        Ok(MetricsQuery {
            configuration_id: validate::uuid("configuration_id", &r.configuration_id)?,
            period: duration("period", r.period, MAX_PERIOD)?.unwrap_or(DEFAULT_PERIOD),
        })
    }
}

impl TryFrom<pb::WatchAvailableAgentsRequest> for WatchQuery {
    type Error = Error;
    fn try_from(r: pb::WatchAvailableAgentsRequest) -> Result<Self> {
        Ok(WatchQuery {
            filter: filter(r.filter)?,
        })
    }
}

impl Traced for AvailableQuery {}
impl Traced for AcquireOrder {}
impl Traced for WatchQuery {}

impl Traced for RenewOrder {
    fn trace(&self, span: &tracing::Span) {
        span.record("lease", tracing::field::display(self.lease_id));
    }
}

impl Traced for ReleaseOrder {
    fn trace(&self, span: &tracing::Span) {
        span.record("lease", tracing::field::display(self.lease_id));
    }
}

impl Traced for MetricsQuery {
    fn trace(&self, span: &tracing::Span) {
        span.record(
            "configuration",
            tracing::field::display(self.configuration_id),
        );
    }
}
