//! Several replicas behind one [`Client`](crate::Client): tonic's balanced
//! channel (tower's power-of-two-choices balancer) over the replicas that
//! pass a `grpc.health.v1` check, kept up to date by one task per client.
//!
//! tonic's balancer never drops a replica by itself: a replica that is gone
//! stays in the set, and the calls it is picked for fail. So the task checks
//! every replica (and re-resolves DNS names, when asked to) on an interval,
//! and at once when a call saw `UNAVAILABLE`; it takes the replicas that do
//! not answer `SERVING` out of the balancer and puts them back when they do.
//! When none answers, all stay in (as Envoy's panic threshold does): calls
//! then fail or succeed on their own rather than wait for a replica.
//!
//! Taking a replica out only stops new calls from going there: calls and
//! streams already on it carry on until they end.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::mpsc::Sender;
use tokio::task::{JoinHandle, JoinSet};
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::error::Result;

/// Pending changes of the replica set the balancer takes at most.
const CHANGES: usize = 1024;
/// The shortest time between two rounds of checks, however often calls ask.
const MIN_GAP: Duration = Duration::from_millis(100);

/// Makes the endpoint of one replica's address; the second argument is the
/// name its TLS certificate must carry, when the address was resolved from it.
pub(super) type MakeEndpoint = dyn Fn(Uri, Option<String>) -> Result<Endpoint> + Send + Sync;

/// How the replicas are found and checked.
pub(super) struct Settings {
    /// The replicas as configured.
    pub(super) targets: Vec<Uri>,
    /// Resolve each target's host name this often, balancing over every
    /// address it resolves to; `None`: each target is one replica.
    pub(super) resolve: Option<Duration>,
    /// How often each replica is checked.
    pub(super) interval: Duration,
    /// How long a check may take.
    pub(super) timeout: Duration,
}

/// The replica set of one client and the task that keeps it; the task ends
/// when the last clone of the client is dropped.
pub(crate) struct Replicas {
    targets: Vec<Uri>,
    check: Arc<Notify>,
    task: JoinHandle<()>,
}

impl fmt::Debug for Replicas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replicas")
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Replicas {
    /// Checks the replicas now (well, within [`MIN_GAP`]).
    pub(crate) fn check_now(&self) {
        self.check.notify_one();
    }
}

/// A balanced channel over the replicas of `settings`, and the task that
/// keeps its set. Every target is in the set from the start, so the first
/// calls need not wait for the first checks. Must be called within a Tokio
/// runtime.
pub(super) fn balance(settings: Settings, make: Arc<MakeEndpoint>) -> Result<(Channel, Replicas)> {
    let (channel, changes) = Channel::balance_channel::<Uri>(CHANGES);
    let mut balanced = HashSet::new();
    for target in &settings.targets {
        let endpoint = make(target.clone(), None)?;
        // The channel is new and has room for every target.
        let _ = changes.try_send(Change::Insert(target.clone(), endpoint));
        balanced.insert(target.clone());
    }
    let check = Arc::new(Notify::new());
    let targets = settings.targets.clone();
    let task = tokio::spawn(keep(settings, make, changes, balanced, check.clone()));
    Ok((
        channel,
        Replicas {
            targets,
            check,
            task,
        },
    ))
}

/// One replica's address, and the certificate name it answers for when it
/// was resolved from a host name.
type Address = (Uri, Option<String>);

async fn keep(
    settings: Settings,
    make: Arc<MakeEndpoint>,
    changes: Sender<Change<Uri, Endpoint>>,
    mut balanced: HashSet<Uri>,
    check: Arc<Notify>,
) {
    let mut addresses: Vec<Address> = settings.targets.iter().map(|t| (t.clone(), None)).collect();
    let mut probes: HashMap<Uri, HealthClient<Channel>> = HashMap::new();
    let mut resolved_at: Option<tokio::time::Instant> = None;
    loop {
        if let Some(every) = settings.resolve
            && resolved_at.is_none_or(|at| at.elapsed() >= every)
        {
            if let Some(found) = resolve(&settings.targets).await {
                addresses = found;
            }
            resolved_at = Some(tokio::time::Instant::now());
        }
        probes.retain(|uri, _| addresses.iter().any(|(a, _)| a == uri));
        let mut checks = JoinSet::new();
        for (uri, domain) in &addresses {
            let probe = match probes.get(uri) {
                Some(probe) => probe.clone(),
                None => match make(uri.clone(), domain.clone()) {
                    Ok(endpoint) => {
                        let probe = HealthClient::new(endpoint.connect_lazy());
                        probes.insert(uri.clone(), probe.clone());
                        probe
                    }
                    Err(_) => continue,
                },
            };
            let uri = uri.clone();
            checks.spawn(async move { (serving(probe, settings.timeout).await, uri) });
        }
        let mut healthy = HashSet::new();
        while let Some(Ok((ok, uri))) = checks.join_next().await {
            if ok {
                healthy.insert(uri);
            }
        }
        let wanted: HashSet<Uri> = if healthy.is_empty() {
            addresses.iter().map(|(uri, _)| uri.clone()).collect()
        } else {
            healthy
        };
        for gone in balanced.difference(&wanted) {
            if changes.send(Change::Remove(gone.clone())).await.is_err() {
                return;
            }
        }
        for (uri, domain) in &addresses {
            if wanted.contains(uri) && !balanced.contains(uri) {
                let Ok(endpoint) = make(uri.clone(), domain.clone()) else {
                    continue;
                };
                if changes
                    .send(Change::Insert(uri.clone(), endpoint))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        balanced = wanted;
        tokio::time::sleep(MIN_GAP).await;
        tokio::select! {
            () = tokio::time::sleep(settings.interval.saturating_sub(MIN_GAP)) => {}
            () = check.notified() => {}
        }
    }
}

/// Whether the replica answers its health check with `SERVING` in time.
async fn serving(mut probe: HealthClient<Channel>, timeout: Duration) -> bool {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(timeout);
    let answer = tokio::time::timeout(timeout, probe.check(request)).await;
    matches!(answer, Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32)
}

/// Every address the targets' host names resolve to now, each with the name
/// its certificate must carry; `None` when nothing resolves (the last
/// addresses are kept).
async fn resolve(targets: &[Uri]) -> Option<Vec<Address>> {
    let mut found = Vec::new();
    for target in targets {
        let (Some(host), Some(scheme)) = (target.host(), target.scheme_str()) else {
            continue;
        };
        let port = target
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let Ok(addrs) = tokio::net::lookup_host((host.trim_matches(['[', ']']), port)).await else {
            continue;
        };
        let named = host.parse::<std::net::IpAddr>().is_err() && !host.starts_with('[');
        for addr in addrs {
            let Ok(uri) = format!("{scheme}://{addr}").parse::<Uri>() else {
                continue;
            };
            if !found.iter().any(|(u, _): &Address| u == &uri) {
                found.push((uri, named.then(|| host.to_owned())));
            }
        }
    }
    (!found.is_empty()).then_some(found)
}
