//! The builders of `RoutingService` filters ([`AgentFilter`]) and searches
//! ([`SearchAgents`]).

use crate::pb;

/// Which agents a router wants: builds a [`pb::AgentFilter`].
///
/// Every condition set must hold. Besides the fields, an
/// [`expression`](AgentFilter::expression) combines the same conditions with
/// `AND`, `OR`, `NOT` and parentheses; its grammar is documented on
/// [`pb::AgentFilter`] and in the README. The server checks the filter: a
/// malformed expression is [`Error::InvalidArgument`](crate::Error::InvalidArgument) with
/// [`field`](crate::Error::field) `filter.expression` and a message giving
/// the position of the first offending character; a malformed version
/// requirement names `filter.version`.
///
/// ```
/// use agentry_client::{AgentFilter, pb};
/// let filter: pb::AgentFilter = AgentFilter::new().agent_type("ide").capability("code_editing").into();
/// assert_eq!(filter.capabilities, ["code_editing"]);
///
/// let richer: pb::AgentFilter = AgentFilter::new()
///     .any_capability("terminal")
///     .any_capability("shell")
///     .no_capability("experimental_tools")
///     .agent_types(["ide", "cli"])
///     .version("^1.2")
///     .label("tier", "stable")
///     .expression("capability:code_editing AND NOT label:region=eu")
///     .into();
/// assert_eq!(richer.any_capabilities, ["terminal", "shell"]);
/// assert_eq!(richer.labels["tier"], "stable");
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

    /// Require at least one of the capabilities given this way (each call
    /// adds one to the list).
    pub fn any_capability(mut self, capability: impl Into<String>) -> Self {
        self.filter.any_capabilities.push(capability.into());
        self
    }

    /// Exclude agents with this capability (each call adds one to the list).
    pub fn no_capability(mut self, capability: impl Into<String>) -> Self {
        self.filter.none_capabilities.push(capability.into());
        self
    }

    /// Only agents whose type is one of these (added to those given before).
    /// Combined with [`agent_type`](AgentFilter::agent_type), both must hold.
    pub fn agent_types<I, S>(mut self, agent_types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.filter
            .agent_types
            .extend(agent_types.into_iter().map(Into::into));
        self
    }

    /// Only manifests whose version meets this semver requirement, read as
    /// Cargo reads it: `"^1.2"`, `"~1.4"`, `">=1.0, <2"`, `"*"`.
    pub fn version(mut self, requirement: impl Into<String>) -> Self {
        self.filter.version = requirement.into();
        self
    }

    /// Only manifests carrying this label with exactly this value. A
    /// manifest's labels are the string values of the `labels` object in its
    /// metadata (`{"labels": {"tier": "stable"}}`). Each call adds one.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.filter.labels.insert(key.into(), value.into());
        self
    }

    /// Only manifests satisfying this expression, such as
    /// `capability:code_editing AND (capability:terminal OR type:ide) AND NOT label:tier=experimental AND version:^1.2`
    /// (grammar on [`pb::AgentFilter`]). It holds together with the other
    /// conditions; a second call replaces the first.
    pub fn expression(mut self, expression: impl Into<String>) -> Self {
        self.filter.expression = expression.into();
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

/// Builds a [`pb::SearchAgentsRequest`] for
/// [`Client::search_agents`](crate::Client::search_agents): a skill search
/// over the tenant's configurations, ranked by relevance and availability
/// together (the score is documented on `RoutingService.SearchAgents`).
///
/// ```
/// use agentry_client::{AgentFilter, SearchAgents, pb};
/// let request: pb::SearchAgentsRequest = SearchAgents::new("translate tag:french")
///     .filter(AgentFilter::new().agent_type("a2a"))
///     .explain()
///     .page_size(5)
///     .into();
/// assert_eq!(request.page_size, 5);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct SearchAgents {
    request: pb::SearchAgentsRequest,
}

impl SearchAgents {
    /// A search for the words of `query`; `name:`, `id:`, `tag:`,
    /// `description:` or `example:` before a word restricts it to that field.
    pub fn new(query: impl Into<String>) -> Self {
        SearchAgents {
            request: pb::SearchAgentsRequest {
                query: query.into(),
                ..Default::default()
            },
        }
    }

    /// Only agents that this filter admits, as in `GetAvailableAgents`.
    pub fn filter(mut self, filter: impl Into<pb::AgentFilter>) -> Self {
        self.request.filter = Some(filter.into());
        self
    }

    /// Also answer configurations with nothing routable, with the reason.
    pub fn include_unavailable(mut self) -> Self {
        self.request.include_unavailable = true;
        self
    }

    /// Also answer every matched term and each result's availability terms.
    pub fn explain(mut self) -> Self {
        self.request.explain = true;
        self
    }

    /// Maximum number of results (1..=1000; the server defaults to 20).
    pub fn page_size(mut self, page_size: i32) -> Self {
        self.request.page_size = page_size;
        self
    }

    /// The `next_page_token` of the previous page, to get the next one.
    /// Keep the query and the other settings as they were.
    pub fn page_token(mut self, page_token: impl Into<String>) -> Self {
        self.request.page_token = page_token.into();
        self
    }
}

into_request!(SearchAgents => SearchAgentsRequest);
