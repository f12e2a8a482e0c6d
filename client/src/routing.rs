//! `RoutingService` calls, and [`AvailabilityEvents`], the stream of a
//! watch. The self-updating view and lease guard are in [`crate::router`].

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_stream::Stream;

use crate::client::proto_duration;
use crate::{Client, Error, Result, pb};

/// A random (version 4) UUID naming one reservation, as AIP-155 asks.
fn request_id() -> String {
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// # Routing operations
///
/// Routing is always for the tenant of the key (a `tenant` key).
impl Client {
    /// [`Client::get_available_agents`] with the server's reasons: the terms
    /// of each answer's score, its instances' loads, and every configuration
    /// and instance left out with why (`explanation`).
    pub async fn explain_available_agents(
        &self,
        filter: impl Into<pb::AgentFilter>,
        limit: i32,
    ) -> Result<pb::GetAvailableAgentsResponse> {
        let request = pb::GetAvailableAgentsRequest {
            filter: Some(filter.into()),
            limit,
            explain: true,
        };
        self.retried(request, |r| {
            let mut service = self.routing_service();
            async move { service.get_available_agents(r).await }
        })
        .await
    }

    /// Searches the skills of the tenant's configurations, usually from a
    /// [`SearchAgents`](crate::SearchAgents): one page of results, best
    /// score (relevance and availability together) first, each with the
    /// skills that matched and, when available, the instance to send work to.
    pub async fn search_agents(
        &self,
        request: impl Into<pb::SearchAgentsRequest>,
    ) -> Result<pb::SearchAgentsResponse> {
        self.retried(request.into(), |r| {
            let mut service = self.routing_service();
            async move { service.search_agents(r).await }
        })
        .await
    }

    /// The tenant's available agents matching `filter`, best availability score
    /// first, at most `limit` (0: the server's default of 100).
    pub async fn get_available_agents(
        &self,
        filter: impl Into<pb::AgentFilter>,
        limit: i32,
    ) -> Result<Vec<pb::AvailableAgent>> {
        let request = pb::GetAvailableAgentsRequest {
            filter: Some(filter.into()),
            limit,
            explain: false,
        };
        let response = self
            .retried(request, |r| {
                let mut service = self.routing_service();
                async move { service.get_available_agents(r).await }
            })
            .await?;
        Ok(response.agents)
    }

    /// Picks an agent and reserves one unit of its configuration's workload
    /// for `ttl` (`None`: the server's default of 60 s; otherwise 1 s to 1 h).
    /// Returns the raw lease; [`Router::acquire`](crate::Router::acquire) wraps it in a
    /// guard that renews and releases itself.
    ///
    /// Fails with [`Error::ResourceExhausted`](crate::Error::ResourceExhausted)
    /// when no matching agent has room.
    ///
    /// The call names its reservation with a fresh request id, so the
    /// [`RetryPolicy`](crate::RetryPolicy) may repeat it: a repeat after a
    /// lost answer gets the lease the first attempt was granted, not a second
    /// unit.
    pub async fn acquire_agent(
        &self,
        filter: impl Into<pb::AgentFilter>,
        ttl: Option<Duration>,
    ) -> Result<pb::Lease> {
        self.acquire_agent_with(pb::AcquireAgentRequest {
            filter: Some(filter.into()),
            ttl: ttl.map(|d| proto_duration("ttl", d)).transpose()?,
            request_id: String::new(),
            explain: false,
        })
        .await
    }

    /// [`Client::acquire_agent`] with the request as given. Set its
    /// `request_id` (a UUID) to make repeats of your own, across processes
    /// or restarts, answer one lease; left empty, a fresh one is set.
    pub async fn acquire_agent_with(
        &self,
        mut request: pb::AcquireAgentRequest,
    ) -> Result<pb::Lease> {
        if request.request_id.is_empty() {
            request.request_id = request_id();
        }
        self.retried(request, |r| {
            let mut service = self.routing_service();
            async move { service.acquire_agent(r).await }
        })
        .await
    }

    /// Extends lease `lease_id` by `ttl` from now (`None`: its original ttl).
    ///
    /// Fails with [`Error::FailedPrecondition`](crate::Error::FailedPrecondition)
    /// once the lease was released or expired.
    pub async fn renew_lease(&self, lease_id: &str, ttl: Option<Duration>) -> Result<pb::Lease> {
        let request = pb::RenewLeaseRequest {
            lease_id: lease_id.to_owned(),
            ttl: ttl.map(|d| proto_duration("ttl", d)).transpose()?,
        };
        self.retried(request, |r| {
            let mut service = self.routing_service();
            async move { service.renew_lease(r).await }
        })
        .await
    }

    /// Gives the lease's unit back. Returns `false` when it had already been
    /// released or had expired (harmless); after a retry, `false` may also
    /// mean that an earlier attempt of this call released it and its answer
    /// was lost. The unit is given back once either way.
    pub async fn release_agent(&self, lease_id: &str, outcome: pb::LeaseOutcome) -> Result<bool> {
        let request = pb::ReleaseAgentRequest {
            lease_id: lease_id.to_owned(),
            outcome: outcome.into(),
        };
        let response = self
            .retried(request, |r| {
                let mut service = self.routing_service();
                async move { service.release_agent(r).await }
            })
            .await?;
        Ok(response.released)
    }

    /// Usage and health figures of configuration `configuration_id` over the
    /// last `period` (`None`: one hour).
    pub async fn get_agent_metrics(
        &self,
        configuration_id: &str,
        period: Option<Duration>,
    ) -> Result<pb::AgentMetrics> {
        let request = pb::GetAgentMetricsRequest {
            configuration_id: configuration_id.to_owned(),
            period: period.map(|d| proto_duration("period", d)).transpose()?,
        };
        self.retried(request, |r| {
            let mut service = self.routing_service();
            async move { service.get_agent_metrics(r).await }
        })
        .await
    }

    /// Subscribes to the available agents matching `filter`: a snapshot, then
    /// changes. [`Client::router`] keeps a view from it for you.
    pub async fn watch_available_agents(
        &self,
        filter: impl Into<pb::AgentFilter>,
    ) -> Result<AvailabilityEvents> {
        self.watch(pb::WatchAvailableAgentsRequest {
            filter: Some(filter.into()),
            ..Default::default()
        })
        .await
    }

    /// Resumes a watch of `filter` after `position`, the
    /// [`position`](AvailabilityEvents::position) an earlier watch with the
    /// same filter had reached. When the replica still holds the changes
    /// since then, the watch starts with a progress event at that revision and
    /// goes on with them, without a snapshot; otherwise (another replica, a
    /// restarted server, too far behind) it starts with a resync marker and
    /// a snapshot, as a new watch does.
    pub async fn watch_available_agents_since(
        &self,
        filter: impl Into<pb::AgentFilter>,
        position: &WatchPosition,
    ) -> Result<AvailabilityEvents> {
        self.watch(pb::WatchAvailableAgentsRequest {
            filter: Some(filter.into()),
            since_revision: position.revision,
            stream_id: position.stream_id.clone(),
        })
        .await
    }

    async fn watch(&self, request: pb::WatchAvailableAgentsRequest) -> Result<AvailabilityEvents> {
        let mut service = self.routing_service();
        // A watch lives as long as the caller wants it: no deadline.
        let inner = service
            .watch_available_agents(tonic::Request::new(request))
            .await?
            .into_inner();
        Ok(AvailabilityEvents {
            inner,
            position: None,
        })
    }
}

/// Where a watch stands: the stream and revision of the last event read
/// ([`AvailabilityEvents::position`]); a new watch resumes from it with
/// [`Client::watch_available_agents_since`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct WatchPosition {
    /// The sequence the revision counts in: one per tenant on one server
    /// replica, for as long as that replica runs.
    pub stream_id: String,
    /// The revision of the last event applied.
    pub revision: u64,
}

impl WatchPosition {
    /// The position at `revision` of stream `stream_id`, as events carry them.
    pub fn new(stream_id: impl Into<String>, revision: u64) -> Self {
        WatchPosition {
            stream_id: stream_id.into(),
            revision,
        }
    }
}

/// The events of a watch ([`Client::watch_available_agents`]): first a
/// snapshot of the matching available agents, then each change, as the
/// server sends them. Read with [`message`](Self::message), or as a
/// [`Stream`] (`futures_core::Stream`, which `tokio_stream::Stream` is).
///
/// The set is keyed by configuration id: `upserted` replaces the entry of
/// its `configuration.id`, `removed` drops the entry of its
/// `configuration_id`. Every change is one event and revisions have no
/// gaps: a change that leaves the set as it was comes as a progress event,
/// and so, every so often, does a quiet stretch.
///
/// The watch is open while this is held; dropping it ends the watch. A
/// failure (the connection lost, the server shutting down) is yielded as an
/// [`Error`], after which the stream ends: resume with
/// [`Client::watch_available_agents_since`] and [`position`](Self::position).
///
/// ```no_run
/// # async fn run(client: agentry_client::Client) -> agentry_client::Result<()> {
/// use agentry_client::{AgentFilter, pb::availability_event::Event};
///
/// let mut events = client.watch_available_agents(AgentFilter::new()).await?;
/// while let Some(event) = events.message().await? {
///     match event.event {
///         Some(Event::Snapshot(snapshot)) => println!("{} available", snapshot.agents.len()),
///         Some(Event::Upserted(agent)) => println!("changed: {:?}", agent.instance),
///         Some(Event::Removed(removed)) => println!("gone: {}", removed.configuration_id),
///         // A progress event (nothing changed), or a resync marker (a snapshot follows).
///         _ => {}
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[must_use = "a watch does nothing unless read"]
pub struct AvailabilityEvents {
    inner: tonic::Streaming<pb::AvailabilityEvent>,
    position: Option<WatchPosition>,
}

impl AvailabilityEvents {
    /// The next event; `Ok(None)` once the server has ended the watch.
    pub async fn message(&mut self) -> Result<Option<pb::AvailabilityEvent>> {
        let event = self.inner.message().await.map_err(Error::from)?;
        if let Some(event) = &event {
            self.saw(event);
        }
        Ok(event)
    }

    /// Where the watch stands after the events read so far, to resume from:
    /// `None` before the first event, and between a resync marker and the
    /// snapshot after it.
    pub fn position(&self) -> Option<&WatchPosition> {
        self.position.as_ref()
    }

    fn saw(&mut self, event: &pb::AvailabilityEvent) {
        use pb::availability_event::Event;
        self.position = match event.event {
            Some(Event::Resync(_)) | None => None,
            Some(_) if event.stream_id.is_empty() => None,
            Some(_) => Some(WatchPosition::new(&event.stream_id, event.revision)),
        };
    }
}

impl Stream for AvailabilityEvents {
    type Item = Result<pb::AvailabilityEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(event))) = &polled {
            self.saw(event);
        }
        polled.map(|event| event.map(|event| event.map_err(Error::from)))
    }
}

impl fmt::Debug for AvailabilityEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AvailabilityEvents")
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_version_4_uuids() {
        let id = super::request_id();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(&id[14..15], "4", "{id}");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(id, super::request_id());
    }
}
