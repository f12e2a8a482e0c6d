//! The change feed: how committed database changes reach every replica.
//!
//! Triggers (migrations 0003-0008) `NOTIFY agentry_changes` on every change
//! of a configuration, registration, manifest, lease or API key, whichever
//! replica made it; heartbeat-only writes notify nobody. Each replica runs
//! one [`Feed`]: it LISTENs, then reads a [`Snapshot`], then turns every
//! burst of notifications into [`Update`]s, reading the rows they name in one
//! statement per kind (a load report travels in its notification and is
//! read from nowhere), and hands them to its [`Follower`]s: the routing view,
//! the authenticator's key cache and the health-stream sessions. When the
//! listening connection drops, notifications may have been lost, so the feed
//! reconnects and every follower starts over from a fresh snapshot.

mod change;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use uuid::Uuid;

pub use change::{Change, LoadNote, Op};

use crate::configurations::store::{self as configurations, ConfigurationRow};
use crate::error::{Error, Result};
use crate::manifests::store::{self as manifests, ManifestRow};
use crate::registrations::replicas::{self, ReplicaLease};
use crate::registrations::store::{self as registrations, RegistrationRow};
use crate::routing::store::{self as leases, OpenLeases};
use crate::telemetry::metrics as telemetry;

/// The channel the triggers notify.
pub const CHANNEL: &str = "agentry_changes";
/// Notifications applied together at most: a whole fleet's reconnect in one
/// pass (one read per kind of row for all of it).
const BURST: usize = 10_000;
/// Bytes of notifications read ahead of the burst being resolved (a
/// payload is at most 8,000 bytes).
const READ_AHEAD_BYTES: u32 = 8 << 20;
/// Pause before reconnecting a lost feed.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// What followers start from when the feed (re)connects.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every manifest.
    pub manifests: Vec<ManifestRow>,
    /// Every configuration of every tenant.
    pub configurations: Vec<ConfigurationRow>,
    /// Every active registration.
    pub registrations: Vec<RegistrationRow>,
    /// Open leases per instance.
    pub open_leases: Vec<OpenLeases>,
    /// Every replica's lease: who holds streams, and until when; and the
    /// database's clock when they were read.
    pub replicas: Vec<ReplicaLease>,
    pub replicas_at: chrono::DateTime<chrono::Utc>,
}

/// One change with the row it names, read after the change committed
/// (`None`: the row is gone, or not the notified tenant's).
#[derive(Debug, Clone)]
// Registration rows are the big variant and the common one: boxing them
// would add an allocation per row to every burst, to shrink the rare ones.
#[allow(clippy::large_enum_variant)]
pub enum Update {
    /// A configuration was created, changed or deleted.
    Configuration {
        tenant: Uuid,
        id: Uuid,
        op: Op,
        row: Option<ConfigurationRow>,
    },
    /// Only a configuration's workload counter changed.
    Workload {
        tenant: Uuid,
        configuration: Uuid,
        current_workload: i32,
    },
    /// A registration changed as routing sees it.
    Registration {
        tenant: Uuid,
        id: Uuid,
        row: Option<RegistrationRow>,
    },
    /// Only a registration's load report changed (nothing read: the
    /// notification carried it).
    Load(LoadNote),
    /// A manifest was created, changed or deleted.
    Manifest { id: Uuid, row: Option<ManifestRow> },
    /// An instance's open leases changed by `delta`.
    Leases {
        tenant: Uuid,
        registration: Uuid,
        delta: i32,
    },
    /// An API key was revoked or deleted.
    ApiKey { id: Uuid },
    /// A replica's lease was taken, renewed or ended, `at` the database's
    /// clock.
    Replica {
        lease: ReplicaLease,
        at: chrono::DateTime<chrono::Utc>,
    },
}

/// A part of the server kept current by the feed. Each takes what concerns it.
pub trait Follower: Send + Sync + std::fmt::Debug {
    /// The feed (re)connected and changes may have been missed: start over.
    fn reset(&self, snapshot: &Snapshot);
    /// A burst of changes, in commit order.
    fn apply(&self, updates: &[Update]);
}

/// The LISTEN loop of one replica.
#[derive(Debug)]
pub struct Feed {
    pool: PgPool,
    followers: Vec<Arc<dyn Follower>>,
    /// Where LISTEN runs: a session connection (a pooler in transaction
    /// mode would drop the subscription with the transaction).
    listen: PgPool,
}

impl Feed {
    /// A feed over `pool` with no followers yet; it listens on `listen`
    /// (a direct pool) when given, else on `pool`.
    pub fn new(pool: PgPool, listen: Option<PgPool>) -> Self {
        Feed {
            listen: listen.unwrap_or_else(|| pool.clone()),
            pool,
            followers: Vec::new(),
        }
    }

    /// Adds a follower; followers hear every burst in the order they were added.
    pub fn with(mut self, follower: Arc<dyn Follower>) -> Self {
        self.followers.push(follower);
        self
    }

    /// Follows the database until `stopping` turns true, reconnecting and
    /// starting over whenever the listening connection is lost.
    pub async fn run(self, mut stopping: watch::Receiver<bool>) {
        loop {
            match self.listen_once(&mut stopping).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "change feed lost; reconnecting and reloading");
                    tokio::select! {
                        () = tokio::time::sleep(RECONNECT_DELAY) => {}
                        _ = stopping.wait_for(|s| *s) => return,
                    }
                }
            }
        }
    }

    async fn listen_once(&self, stopping: &mut watch::Receiver<bool>) -> Result<()> {
        let mut listener = PgListener::connect_with(&self.listen).await?;
        // Listen first, then load: nothing that commits in between is missed.
        listener.listen(CHANNEL).await?;
        let snapshot = snapshot(&self.pool).await?;
        for follower in &self.followers {
            follower.reset(&snapshot);
        }
        metrics::counter!(telemetry::FEED_RESETS).increment(1);
        drop(snapshot);
        // The listener reads one notification per call: read on while a
        // burst is resolved, so that the next burst takes everything that
        // arrived meanwhile. Reading and resolving in turn took a burst of
        // one or two notifications at a time, and a fleet's 100,000
        // registrations cost as many row reads as notifications (the feed
        // fell tens of seconds behind, and PostgreSQL spent 0.5 cores on it).
        let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, String, OwnedSemaphorePermit)>();
        let room = Arc::new(Semaphore::new(READ_AHEAD_BYTES as usize));
        let read = async move {
            loop {
                match listener.try_recv().await? {
                    Some(n) => {
                        let payload = n.payload().to_owned();
                        let size = u32::try_from(payload.len()).unwrap_or(u32::MAX);
                        let Ok(bytes) = room
                            .clone()
                            .acquire_many_owned(size.clamp(1, READ_AHEAD_BYTES))
                            .await
                        else {
                            return Ok(());
                        };
                        if tx.send((Instant::now(), payload, bytes)).is_err() {
                            return Ok(());
                        }
                    }
                    None => return Err(Error::Internal("change feed connection lost".into())),
                }
            }
        };
        let apply = async {
            let mut burst = Vec::with_capacity(BURST);
            loop {
                burst.clear();
                if rx.recv_many(&mut burst, BURST).await == 0 {
                    return Ok(());
                }
                let arrived = burst[0].0;
                let changes: Vec<Change> = burst
                    .iter()
                    .filter_map(|(_, payload, _)| match Change::decode(payload) {
                        Ok(change) => Some(change),
                        Err(e) => {
                            tracing::warn!(error = %e, payload, "malformed change notification");
                            None
                        }
                    })
                    .collect();
                let count = changes.len();
                let updates = resolve(&self.pool, changes).await?;
                for follower in &self.followers {
                    follower.apply(&updates);
                }
                metrics::counter!(telemetry::FEED_BURSTS).increment(1);
                metrics::counter!(telemetry::FEED_CHANGES).increment(count as u64);
                metrics::histogram!(telemetry::FEED_LAG).record(arrived.elapsed().as_secs_f64());
            }
        };
        tokio::select! {
            result = read => result,
            result = apply => result,
            _ = stopping.wait_for(|s| *s) => Ok(()),
        }
    }
}

async fn snapshot(pool: &PgPool) -> Result<Snapshot> {
    let leases_now = replicas::all(pool).await?;
    Ok(Snapshot {
        manifests: manifests::all(pool).await?,
        configurations: configurations::all(pool).await?,
        registrations: registrations::all_active(pool).await?,
        open_leases: leases::open_leases(pool).await?,
        replicas: leases_now.0,
        replicas_at: leases_now.1,
    })
}

/// Reads the rows `changes` name, one statement per kind of row.
async fn resolve(pool: &PgPool, changes: Vec<Change>) -> Result<Vec<Update>> {
    let mut wanted = (Vec::new(), Vec::new(), Vec::new());
    for change in &changes {
        match change {
            Change::Configuration { id, .. } => wanted.0.push(*id),
            Change::Registration { id, .. } => wanted.1.push(*id),
            Change::Manifest { id } => wanted.2.push(*id),
            _ => {}
        }
    }
    let by_id = |ids: &mut Vec<Uuid>| {
        ids.sort_unstable();
        ids.dedup();
        !ids.is_empty()
    };
    let mut configs: HashMap<Uuid, ConfigurationRow> = HashMap::new();
    if by_id(&mut wanted.0) {
        for row in configurations::get_many(pool, &wanted.0).await? {
            configs.insert(row.id, row);
        }
    }
    let mut regs: HashMap<Uuid, RegistrationRow> = HashMap::new();
    if by_id(&mut wanted.1) {
        for row in registrations::get_many(pool, &wanted.1).await? {
            regs.insert(row.id, row);
        }
    }
    let mut mans: HashMap<Uuid, ManifestRow> = HashMap::new();
    if by_id(&mut wanted.2) {
        for row in manifests::get_many(pool, &wanted.2).await? {
            mans.insert(row.id, row);
        }
    }
    let mut updates = Vec::with_capacity(changes.len());
    for change in changes {
        updates.push(match change {
            Change::Configuration { op, id, tenant } => Update::Configuration {
                tenant,
                id,
                op,
                row: configs.get(&id).filter(|r| r.tenant_id == tenant).cloned(),
            },
            Change::Workload {
                configuration,
                tenant,
                current_workload,
            } => Update::Workload {
                tenant,
                configuration,
                current_workload,
            },
            Change::Registration { id, tenant } => Update::Registration {
                tenant,
                id,
                row: regs.get(&id).filter(|r| r.tenant_id == tenant).cloned(),
            },
            Change::Load(note) => Update::Load(note),
            Change::Loads { reports } => {
                updates.extend(reports.into_iter().map(Update::Load));
                continue;
            }
            Change::Manifest { id } => Update::Manifest {
                id,
                row: mans.get(&id).cloned(),
            },
            Change::Leases {
                registration,
                tenant,
                delta,
            } => Update::Leases {
                tenant,
                registration,
                delta,
            },
            Change::ApiKey { id } => Update::ApiKey { id },
            Change::Replica { id, expires_at, at } => Update::Replica {
                lease: ReplicaLease {
                    id,
                    expires_at: (expires_at > 0)
                        .then(|| chrono::DateTime::from_timestamp_millis(expires_at))
                        .flatten(),
                },
                at: chrono::DateTime::from_timestamp_millis(at).unwrap_or_default(),
            },
        });
    }
    Ok(updates)
}
