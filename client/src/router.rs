//! [`Router`]: a local view of the available agents, fed by
//! `WatchAvailableAgents`, and [`Lease`] guards that renew and release themselves.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backoff::backoff;
use crate::pb::availability_event::Event;
use crate::{AvailabilityEvents, Client, Code, Result, WatchPosition, pb};

/// How the work under a lease ended, given to [`Lease::complete`]; the
/// server counts the outcomes in [`Client::get_agent_metrics`].
pub use crate::pb::LeaseOutcome as Outcome;

const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);
/// First wait before retrying a failed lease renewal; it doubles per failure.
const FIRST_RENEW_RETRY: Duration = Duration::from_millis(50);
const RESUBSCRIBE_BACKOFF: Duration = Duration::from_millis(200);
const MAX_RESUBSCRIBE_BACKOFF: Duration = Duration::from_secs(10);

/// The router's local copy of the available agents, as of one moment; read
/// it through [`Router::view`] or [`Router::agents`].
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct RouterView {
    /// The matching available agents, one per configuration with the
    /// instance to route to, best score first.
    pub agents: Vec<pb::AvailableAgent>,
    /// The revision of the last event applied: it counts the tenant's
    /// changes on the serving replica, in the stream `stream_id`. A
    /// resubscription resumes from it; on another replica, which counts on
    /// its own, it starts over from a snapshot in that replica's stream.
    pub revision: u64,
    /// The stream `revision` counts in (see
    /// [`WatchPosition`](crate::WatchPosition)); empty before the first event.
    pub stream_id: String,
    /// False between a resync marker (or a lost subscription) and the next
    /// snapshot: meanwhile `agents` may be out of date.
    pub synced: bool,
}

/// Routes work to a tenant's agents: keeps a view of those matching a filter
/// and hands out [`Lease`]s. Made by [`Client::router`].
#[derive(Debug)]
pub struct Router {
    client: Client,
    filter: pb::AgentFilter,
    ttl: Duration,
    view: watch::Receiver<RouterView>,
    task: JoinHandle<()>,
}

/// # Routers
impl Client {
    /// Starts a router for the agents matching `filter` and waits for the
    /// first snapshot of them. The view then follows changes by itself,
    /// resubscribing with backoff if the watch breaks: from the last revision
    /// it applied, so that a replica that still holds the changes since then
    /// sends just those, without a snapshot.
    ///
    /// ```no_run
    /// # async fn run(client: agentry_client::Client) -> agentry_client::Result<()> {
    /// use agentry_client::{AgentFilter, Outcome};
    /// let router = client.router(AgentFilter::new().capability("code_editing")).await?;
    /// let lease = router.acquire().await?;
    /// // ... send the task to lease.instance() ...
    /// lease.complete(Outcome::Succeeded).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn router(&self, filter: impl Into<pb::AgentFilter>) -> Result<Router> {
        let filter = filter.into();
        let stream = self.watch_available_agents(filter.clone()).await?;
        let (tx, mut view) = watch::channel(RouterView::default());
        let task = tokio::spawn(follow(self.clone(), filter.clone(), stream, tx));
        // The first event of a watch is its snapshot.
        let _ = view.wait_for(|v| v.synced).await;
        Ok(Router {
            client: self.clone(),
            filter,
            ttl: DEFAULT_LEASE_TTL,
            view,
            task,
        })
    }
}

impl Router {
    /// Time to live of the leases this router hands out (default 60 s; held
    /// within the server's bounds of 1 s to 1 h). A held lease is renewed a third of the way through each
    /// ttl and retried within milliseconds when a renewal fails, so a shorter
    /// ttl only means that a crashed caller's units come back sooner (the
    /// server's sweep frees them once the ttl has run out).
    #[must_use]
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(3600));
        self
    }

    /// A copy of the available agents now, best score first. To look, not to
    /// route: [`acquire`](Self::acquire) lets the server pick, against its
    /// own up-to-date view.
    pub fn agents(&self) -> Vec<pb::AvailableAgent> {
        self.view.borrow().agents.clone()
    }

    /// A receiver of the view, to wait for changes (`changed`, `wait_for`)
    /// rather than poll [`agents`](Self::agents).
    pub fn view(&self) -> watch::Receiver<RouterView> {
        self.view.clone()
    }

    /// Reserves one unit of workload on the best available agent (the server
    /// picks among the best few, so routers sharing a view spread out).
    ///
    /// Fails with [`Error::ResourceExhausted`](crate::Error::ResourceExhausted)
    /// when no matching agent has room.
    pub async fn acquire(&self) -> Result<Lease> {
        let sent = Instant::now();
        let lease = self
            .client
            .acquire_agent(self.filter.clone(), Some(self.ttl))
            .await?;
        let renewer = tokio::spawn(renew(self.client.clone(), lease.id.clone(), self.ttl, sent));
        Ok(Lease {
            client: self.client.clone(),
            lease,
            renewer: Some(renewer),
        })
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One unit of workload reserved on an agent. Renews itself while held;
/// dropped without [`complete`](Lease::complete), it is released as cancelled.
#[derive(Debug)]
pub struct Lease {
    client: Client,
    lease: pb::Lease,
    renewer: Option<JoinHandle<()>>,
}

impl Lease {
    /// The lease's UUID, as the server records it: log it with the work the
    /// lease covers.
    pub fn id(&self) -> &str {
        &self.lease.id
    }

    /// The instance to send the work to.
    pub fn instance(&self) -> Option<&pb::Registration> {
        self.lease.instance.as_ref()
    }

    /// The tenant's configuration of the agent (prompt, model, settings).
    pub fn configuration(&self) -> Option<&pb::Configuration> {
        self.lease.configuration.as_ref()
    }

    /// The instance's epoch when the lease was granted; a registration with a
    /// newer epoch means the instance reconnected or was replaced since.
    pub fn epoch(&self) -> i64 {
        self.lease.epoch
    }

    /// The lease as the server sent it when granting it. Renewals do not
    /// update it: its `expire_time` is the first one.
    pub fn as_proto(&self) -> &pb::Lease {
        &self.lease
    }

    /// Releases the lease with `outcome`. Returns `false` if it had already
    /// been released or had expired.
    pub async fn complete(mut self, outcome: Outcome) -> Result<bool> {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        self.client.release_agent(&self.lease.id, outcome).await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(renewer) = self.renewer.take() else {
            return;
        };
        renewer.abort();
        // Outside a runtime nothing can be sent; the lease then expires on the server.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (client, id) = (self.client.clone(), self.lease.id.clone());
            runtime.spawn(async move {
                let _ = client.release_agent(&id, Outcome::Cancelled).await;
            });
        }
    }
}

/// Keeps lease `id` alive until the task is aborted (by [`Lease::complete`]
/// or by dropping the lease) or the server says the lease is gone.
async fn renew(client: Client, id: String, ttl: Duration, granted: Instant) {
    keep_alive(ttl, granted, || client.renew_lease(&id, Some(ttl))).await;
}

/// Calls `renew` a third of the way through each ttl, and again soon after a
/// failure, until it answers that the lease is gone.
///
/// `granted` is when the call that set the current expiry was *sent*. The
/// server counts the ttl from when it handled that call, which is later, so
/// `granted + ttl` is never after the server's expiry (our own clock is used,
/// not the lease's `expire_time`, which is on the server's clock).
async fn keep_alive<T, F, Fut>(ttl: Duration, mut granted: Instant, mut renew: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    // Why a third and not, say, 90 %: a loaded machine may wake this task
    // late, the call may queue behind others, and a renewal may fail. Renewing
    // at a third leaves two thirds of the ttl to absorb the delay and to
    // retry; at 90 % one slow call or one lost reply is an expired lease, and
    // the server hands the unit to someone else while the caller still works.
    let mut due = granted + ttl / 3;
    // Retries back off only up to a tenth of the ttl, so that several fit in
    // the two thirds that are left.
    let max_retry = (ttl / 10).max(FIRST_RENEW_RETRY);
    let mut failures = 0;
    loop {
        tokio::time::sleep_until(due).await;
        let sent = Instant::now();
        let left = (granted + ttl).saturating_duration_since(sent);
        // An attempt may take half of the time left, so that another one
        // still fits if it fails. Dropping a slow attempt cancels it.
        let limit = (left / 2).max(FIRST_RENEW_RETRY);
        match tokio::time::timeout(limit, renew()).await {
            Ok(Ok(_)) => {
                granted = sent;
                failures = 0;
                due = sent + ttl / 3;
            }
            // Released, expired or gone: nothing left to keep alive.
            Ok(Err(e)) if matches!(e.code(), Some(Code::FailedPrecondition | Code::NotFound)) => {
                return;
            }
            // Too slow or a passing failure. A renewal only sets the expiry
            // to now + ttl, so repeating one is harmless: try again soon.
            Ok(Err(_)) | Err(_) => {
                due = Instant::now() + backoff(FIRST_RENEW_RETRY, max_retry, failures);
                failures = failures.saturating_add(1);
            }
        }
    }
}

async fn follow(
    client: Client,
    filter: pb::AgentFilter,
    mut stream: AvailabilityEvents,
    view: watch::Sender<RouterView>,
) {
    // Keyed by configuration id, as the watch's events are.
    let mut agents: HashMap<String, pb::AvailableAgent> = HashMap::new();
    // Where to resume from: the last event applied, unless it was a resync marker.
    let mut position: Option<WatchPosition> = None;
    let mut failures = 0;
    loop {
        while let Ok(Some(event)) = stream.message().await {
            failures = 0;
            position = stream.position().cloned();
            let (synced, changed) = match event.event {
                Some(Event::Snapshot(snapshot)) => {
                    agents = snapshot
                        .agents
                        .into_iter()
                        .filter_map(|a| Some((a.configuration.as_ref()?.id.clone(), a)))
                        .collect();
                    (true, true)
                }
                Some(Event::Upserted(agent)) => {
                    if let Some(id) = agent.configuration.as_ref().map(|c| c.id.clone()) {
                        agents.insert(id, agent);
                    }
                    (view.borrow().synced, true)
                }
                Some(Event::Removed(removed)) => {
                    let gone = agents.remove(&removed.configuration_id).is_some();
                    (view.borrow().synced, gone)
                }
                // Nothing changed; first on a resumed watch, whose set is ours.
                Some(Event::Progress(_)) => (true, false),
                Some(Event::Resync(_)) | None => (false, false),
            };
            let sorted = changed.then(|| {
                let mut sorted: Vec<pb::AvailableAgent> = agents.values().cloned().collect();
                sorted.sort_by(|a, b| b.score.total_cmp(&a.score));
                sorted
            });
            // Receivers wake only when the agents or their synced state change.
            view.send_if_modified(|v| {
                let modified = changed || v.synced != synced;
                if let Some(sorted) = sorted {
                    v.agents = sorted;
                }
                v.revision = event.revision;
                v.stream_id = event.stream_id;
                v.synced = synced;
                modified
            });
        }
        view.send_modify(|v| v.synced = false);
        if view.is_closed() {
            return;
        }
        client.suspect_replicas();
        tokio::time::sleep(backoff(
            RESUBSCRIBE_BACKOFF,
            MAX_RESUBSCRIBE_BACKOFF,
            failures,
        ))
        .await;
        failures += 1;
        let resubscribed = match &position {
            Some(p) => client.watch_available_agents_since(filter.clone(), p).await,
            None => client.watch_available_agents(filter.clone()).await,
        };
        match resubscribed {
            Ok(s) => stream = s,
            Err(_) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::Error;

    /// Runs `keep_alive` for a lease of `ttl` granted now, whose renewals
    /// behave as `answer` says for the call with that number (1 for the
    /// first); returns when each call was made, relative to the grant.
    async fn renewals(
        ttl: Duration,
        answer: impl Fn(usize) -> Option<Result<()>>,
    ) -> Vec<Duration> {
        let granted = Instant::now();
        let calls = Mutex::new(Vec::new());
        let renew = || {
            let n = {
                let mut calls = calls.lock().expect("calls");
                calls.push(granted.elapsed());
                calls.len()
            };
            let answer = answer(n);
            async move {
                match answer {
                    Some(answer) => answer,
                    None => std::future::pending().await,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), keep_alive(ttl, granted, renew))
            .await
            .expect("keep_alive stops once the lease is gone");
        calls.into_inner().expect("calls")
    }

    fn gone() -> Option<Result<()>> {
        Some(Err(Error::from(tonic::Status::failed_precondition(
            "expired",
        ))))
    }

    // Paused time: the schedule is checked exactly, however slow the machine.
    #[tokio::test(start_paused = true)]
    async fn renews_at_a_third_and_retries_failures_before_expiry() {
        let ttl = Duration::from_millis(900);
        let calls = renewals(ttl, |n| match n {
            1 | 2 => Some(Err(Error::from(tonic::Status::unavailable("down")))),
            3 => Some(Ok(())),
            _ => gone(),
        })
        .await;
        assert_eq!(calls.len(), 4, "{calls:?}");
        assert!(calls[0] >= ttl / 3, "not before a third: {calls:?}");
        assert!(calls[2] < ttl, "failures retried before expiry: {calls:?}");
        assert!(
            calls[3] >= calls[2] + ttl / 3,
            "after a renewal, a third of the new ttl: {calls:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_renewal_leaves_time_for_another() {
        let ttl = Duration::from_millis(900);
        let calls = renewals(ttl, |n| match n {
            1 => None,
            2 => Some(Ok(())),
            _ => gone(),
        })
        .await;
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert!(calls[1] < ttl, "retried before expiry: {calls:?}");
    }
}
