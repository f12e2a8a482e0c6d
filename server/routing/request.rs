//! What callers ask of routing, converted once from the proto messages and
//! validated; a bad field is `INVALID_ARGUMENT` naming it.

use std::collections::BTreeMap;
use std::time::Duration;

use uuid::Uuid;

pub use super::filter::Filter;
use super::filter::{Expr, requirement};
use super::search::{self, Term};
use crate::error::{Error, Result};
use crate::pagination::{self, Offset};
use crate::pb;
use crate::request::Traced;
use crate::validate;

const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// A shorter lease would expire before its holder could renew it once.
const MIN_TTL: Duration = Duration::from_secs(1);
const MAX_TTL: Duration = Duration::from_secs(3600);
const DEFAULT_PERIOD: Duration = Duration::from_secs(3600);
const MIN_PERIOD: Duration = Duration::from_secs(1);
const MAX_PERIOD: Duration = Duration::from_secs(30 * 24 * 3600);
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: i32 = 1000;
/// Most entries of `filter.agent_types`.
const MAX_AGENT_TYPES: usize = 64;
/// Most entries of `filter.labels`, and characters of each key and value.
const MAX_LABELS: usize = 64;
const MAX_LABEL_CHARS: usize = 256;

/// `GetAvailableAgents`.
#[derive(Debug)]
pub struct AvailableQuery {
    pub filter: Filter,
    pub limit: usize,
    pub explain: bool,
}

/// `AcquireAgent`.
#[derive(Debug)]
pub struct AcquireOrder {
    pub filter: Filter,
    pub ttl: Duration,
    /// The caller's name for this reservation (AIP-155), when given.
    pub request_id: Option<Uuid>,
    pub explain: bool,
}

/// `SearchAgents`.
#[derive(Debug)]
pub struct SearchOrder {
    pub terms: Vec<Term>,
    pub filter: Filter,
    pub include_unavailable: bool,
    /// Where the page starts in the ranking.
    pub offset: usize,
    pub page_size: usize,
    pub explain: bool,
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
    /// Where an earlier watch stopped, when the caller resumes.
    pub resume: Option<Resume>,
}

/// A position in a tenant's stream of watch events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub stream: String,
    pub revision: u64,
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
    validate::capabilities("filter.any_capabilities", &f.any_capabilities)?;
    validate::capabilities("filter.none_capabilities", &f.none_capabilities)?;
    if f.agent_types.len() > MAX_AGENT_TYPES {
        return Err(Error::invalid(
            "filter.agent_types",
            format!("at most {MAX_AGENT_TYPES} agent types"),
        ));
    }
    for (i, t) in f.agent_types.iter().enumerate() {
        validate::slug(&format!("filter.agent_types[{i}]"), t, 64)?;
    }
    let version = match f.version.as_str() {
        "" => None,
        v => Some(requirement(v).map_err(|e| Error::invalid("filter.version", e))?),
    };
    Ok(Filter {
        agent_id: (!f.agent_id.is_empty()).then_some(f.agent_id),
        agent_type: (!f.agent_type.is_empty()).then_some(f.agent_type),
        agent_types: f.agent_types,
        capabilities: f.capabilities,
        any_capabilities: f.any_capabilities,
        none_capabilities: f.none_capabilities,
        version,
        labels: labels(f.labels)?,
        expression: match f.expression.trim() {
            "" => None,
            _ => Some(
                Expr::parse(&f.expression)
                    .map_err(|e| Error::invalid("filter.expression", e.to_string()))?,
            ),
        },
        include_degraded: f.include_degraded,
        include_deprecated: f.include_deprecated,
    })
}

/// The labels a filter asks for: non-empty keys, bounded in number and size.
fn labels(labels: std::collections::HashMap<String, String>) -> Result<BTreeMap<String, String>> {
    if labels.len() > MAX_LABELS {
        return Err(Error::invalid(
            "filter.labels",
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    for (key, value) in &labels {
        if key.is_empty() {
            return Err(Error::invalid(
                "filter.labels",
                "a label's key must not be empty",
            ));
        }
        validate::text("filter.labels", key, MAX_LABEL_CHARS)?;
        validate::text(&format!("filter.labels[{key:?}]"), value, MAX_LABEL_CHARS)?;
    }
    Ok(labels.into_iter().collect())
}

/// Search pages are smaller than listings: a caller reads the first few.
const DEFAULT_SEARCH_PAGE: usize = 20;

impl TryFrom<pb::SearchAgentsRequest> for SearchOrder {
    type Error = Error;
    fn try_from(r: pb::SearchAgentsRequest) -> Result<Self> {
        let page_size = match r.page_size {
            0 => DEFAULT_SEARCH_PAGE,
            _ => pagination::page_size(r.page_size)? as usize,
        };
        Ok(SearchOrder {
            terms: search::parse(&r.query)?,
            filter: filter(r.filter)?,
            include_unavailable: r.include_unavailable,
            offset: pagination::decode::<Offset>(&r.page_token)?.map_or(0, |o| o.0),
            page_size,
            explain: r.explain,
        })
    }
}

impl Traced for SearchOrder {}

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
            explain: r.explain,
        })
    }
}

impl TryFrom<pb::AcquireAgentRequest> for AcquireOrder {
    type Error = Error;
    fn try_from(r: pb::AcquireAgentRequest) -> Result<Self> {
        Ok(AcquireOrder {
            ttl: validate::duration("ttl", r.ttl, MIN_TTL, MAX_TTL)?.unwrap_or(DEFAULT_TTL),
            filter: filter(r.filter)?,
            request_id: match r.request_id.as_str() {
                "" => None,
                id => Some(validate::uuid("request_id", id)?),
            },
            explain: r.explain,
        })
    }
}

impl TryFrom<pb::RenewLeaseRequest> for RenewOrder {
    type Error = Error;
    fn try_from(r: pb::RenewLeaseRequest) -> Result<Self> {
        Ok(RenewOrder {
            lease_id: validate::uuid("lease_id", &r.lease_id)?,
            ttl: validate::duration("ttl", r.ttl, MIN_TTL, MAX_TTL)?,
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
            period: validate::duration("period", r.period, MIN_PERIOD, MAX_PERIOD)?
                .unwrap_or(DEFAULT_PERIOD),
        })
    }
}

impl TryFrom<pb::WatchAvailableAgentsRequest> for WatchQuery {
    type Error = Error;
    fn try_from(r: pb::WatchAvailableAgentsRequest) -> Result<Self> {
        let resume = match (r.since_revision, r.stream_id.as_str()) {
            (0, _) => None,
            (_, "") => {
                return Err(Error::invalid(
                    "stream_id",
                    "is required with since_revision: the stream_id of the event of that revision",
                ));
            }
            (_, id) if id.len() > 64 => {
                return Err(Error::invalid("stream_id", "is at most 64 characters"));
            }
            (revision, stream) => Some(Resume {
                stream: stream.to_owned(),
                revision,
            }),
        };
        Ok(WatchQuery {
            filter: filter(r.filter)?,
            resume,
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
