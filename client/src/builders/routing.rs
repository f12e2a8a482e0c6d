//! The builder of `RoutingService` filters: [`AgentFilter`].

use crate::pb;

/// Which agents a router wants: builds a [`pb::AgentFilter`].
///
/// ```
/// use agentry_client::{AgentFilter, pb};
/// let filter: pb::AgentFilter = AgentFilter::new().agent_type("ide").capability("code_editing").into();
/// assert_eq!(filter.capabilities, ["code_editing"]);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct AgentFilter {
    filter: pb::AgentFilter,
}

impl AgentFilter {
    /// Any agent of the tenant.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only this manifest (`agent_id`).
    pub fn agent_id(mut self, agent_id: impl Into<String>) -> Self {
        self.filter.agent_id = agent_id.into();
        self
    }

    /// Only this agent type.
    pub fn agent_type(mut self, agent_type: impl Into<String>) -> Self {
        self.filter.agent_type = agent_type.into();
        self
    }

    /// Require this capability (all required capabilities must be present).
    pub fn capability(mut self, capability: impl Into<String>) -> Self {
        self.filter.capabilities.push(capability.into());
        self
    }

    /// Also route to degraded instances when healthy ones exist.
    pub fn include_degraded(mut self, include: bool) -> Self {
        self.filter.include_degraded = include;
        self
    }

    /// Also consider deprecated manifests.
    pub fn include_deprecated(mut self, include: bool) -> Self {
        self.filter.include_deprecated = include;
        self
    }
}

impl From<AgentFilter> for pb::AgentFilter {
    fn from(f: AgentFilter) -> Self {
        f.filter
    }
}
