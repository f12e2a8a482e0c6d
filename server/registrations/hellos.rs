//! The hello writer: registrations (`Hello`, `RegisterInstance`) of this
//! server, many in one statement.
//!
//! A fleet reconnects all at once: after a deploy of Agentry, a network blip,
//! a scale-up. One transaction per registration queued thousands of them on
//! the pool (about 650 a second here, and pool time-outs past that). The
//! writer takes everything queued, up to a batch, and registers it with one
//! call of `agentry_register_batch` (migrations 0009 and 0016, which names
//! the replica holding each stream), then reads the rows
//! and their configurations back in one statement each.
//!
//! Admission is bounded: when more registrations wait than the queue holds
//! (`--hello-queue`), a caller waits up to `--hello-wait` for room; only
//! past that is it answered `UNAVAILABLE`, to retry after a pause, instead
//! of waiting out a pool time-out. A fleet that connects at once waits on
//! its open streams rather than coming back: 100,000 agents against a queue
//! of 10,000 that refused at once sent 171,822 retries, and with a wait of
//! 5 s still 50,338.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::request::Announcement;
use super::store::{self, RegistrationRow};
use crate::configurations::store::{self as configurations, ConfigurationRow};
use crate::db::retrying_deadlocks;
use crate::error::{Error, Result};
use crate::telemetry::metrics as telemetry;

/// Registrations one statement carries at most.
const MAX_BATCH: usize = 1000;

/// A registration as written, with the configuration it belongs to.
#[derive(Debug, Clone)]
pub struct Registered {
    pub row: RegistrationRow,
    /// Whether this call created the registration.
    pub created: bool,
    pub configuration: ConfigurationRow,
}

struct Request {
    tenant: Uuid,
    announcement: Announcement,
    /// Registered by this replica's health stream (the row names the
    /// replica), not by a unary call.
    held: bool,
    reply: oneshot::Sender<Result<Registered>>,
}

/// `agentry_announcement`.
#[derive(Debug, sqlx::Type)]
#[sqlx(type_name = "agentry_announcement")]
struct AnnouncementArg {
    ord: i32,
    tenant_id: Uuid,
    instance_id: String,
    agent_id: String,
    name: String,
    connection_details: serde_json::Value,
    runtime_config: serde_json::Value,
    capacity: Option<i32>,
}

/// Counters for tests and benchmarks.
#[derive(Debug, Default)]
pub struct HelloStats {
    /// Statements that registered a batch.
    pub batches: AtomicU64,
    /// Registrations those statements carried.
    pub registered: AtomicU64,
    /// Callers turned away because the queue stayed full.
    pub turned_away: AtomicU64,
    /// Callers that found the queue full and waited for room.
    pub waited: AtomicU64,
    /// Registrations the writer took from its queue.
    pub taken: AtomicU64,
}

/// Batches in flight at once, each in a lane of its own. An instance's
/// registrations always take the same lane (by a hash of its tenant and
/// instance id), so they land in the order they came, and two batches
/// never carry the same instance. One lane kept PostgreSQL busy only half
/// the time: a batch of 1,000 costs it about 80 ms, and the server as long
/// again to send it and answer its callers. Measured with 100,000 agents at
/// once (`agentry-bench storm`): one lane 19.4 s, two 12.7 s, four 13.3 s
/// (the two cores are then busy).
const LANES: usize = 2;

/// One lane's queue.
#[derive(Debug)]
struct Lane {
    tx: mpsc::Sender<Request>,
    rx: Mutex<Option<mpsc::Receiver<Request>>>,
}

/// The handle registries use; [`HelloWriter::run`] is the task behind it.
#[derive(Debug)]
pub struct HelloWriter {
    lanes: [Lane; LANES],
    create_unknown_manifests: bool,
    /// This replica, which the rows of its streams name.
    replica: Uuid,
    /// How long a registration waits for room in a full queue before it
    /// is turned away.
    wait: Duration,
    /// Counters.
    pub stats: HelloStats,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("instance_id", &self.announcement.instance_id)
            .finish()
    }
}

impl HelloWriter {
    /// A writer for `replica` of `queue` registrations, past which callers
    /// wait up to `wait`; with `create_unknown_manifests`, an unknown
    /// agent_id gets a placeholder manifest.
    pub fn new(
        create_unknown_manifests: bool,
        replica: Uuid,
        queue: usize,
        wait: Duration,
    ) -> Self {
        let lanes = std::array::from_fn(|_| {
            let (tx, rx) = mpsc::channel(queue.div_ceil(LANES).max(1));
            Lane {
                tx,
                rx: Mutex::new(Some(rx)),
            }
        });
        HelloWriter {
            lanes,
            create_unknown_manifests,
            replica,
            wait,
            stats: HelloStats::default(),
        }
    }

    /// Registrations waiting for the writer now.
    pub fn queued(&self) -> usize {
        self.lanes
            .iter()
            .map(|l| l.tx.max_capacity() - l.tx.capacity())
            .sum()
    }

    /// The lane of `tenant`'s `instance`.
    fn lane(&self, tenant: Uuid, instance: &str) -> &Lane {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one((tenant, instance));
        &self.lanes[(hash % LANES as u64) as usize]
    }

    /// Registrations that reached the writer so far: taken or still queued.
    pub fn arrived(&self) -> usize {
        self.stats.taken.load(Relaxed) as usize + self.queued()
    }

    /// Registers `announcement` for `tenant` with a new epoch; `held`: for
    /// a health stream of this replica.
    pub async fn register(
        &self,
        tenant: Uuid,
        announcement: Announcement,
        held: bool,
    ) -> Result<Registered> {
        let (reply, answer) = oneshot::channel();
        let lane = self.lane(tenant, &announcement.instance_id);
        let request = Request {
            tenant,
            announcement,
            held,
            reply,
        };
        match lane.tx.try_send(request) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(stopped()),
            Err(mpsc::error::TrySendError::Full(request)) => {
                self.stats.waited.fetch_add(1, Relaxed);
                match tokio::time::timeout(self.wait, lane.tx.send(request)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(stopped()),
                    Err(_) => {
                        self.stats.turned_away.fetch_add(1, Relaxed);
                        telemetry::limit_hit("hello_queue");
                        return Err(Error::Busy {
                            message: "too many registrations at once; retry after the pushback"
                                .into(),
                            retry_after: retry_after(self.lanes.len() * lane.tx.max_capacity()),
                        });
                    }
                }
            }
        }
        answer.await.map_err(|_| stopped())?
    }

    /// Registers queued requests in batches for as long as the server runs
    /// (its background tasks are aborted at the end), a batch per lane at a
    /// time. Runs once.
    pub async fn run(&self, pool: PgPool) {
        let [a, b] = &self.lanes;
        tokio::join!(self.run_lane(a, &pool), self.run_lane(b, &pool));
    }

    async fn run_lane(&self, lane: &Lane, pool: &PgPool) {
        let Some(mut rx) = lane.rx.lock().await.take() else {
            return;
        };
        let mut waiting: Vec<Request> = Vec::new();
        loop {
            let before = waiting.len();
            if waiting.is_empty() && rx.recv_many(&mut waiting, MAX_BATCH).await == 0 {
                return;
            }
            while waiting.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(request) => waiting.push(request),
                    Err(_) => break,
                }
            }
            self.stats
                .taken
                .fetch_add((waiting.len() - before) as u64, Relaxed);
            // One Hello per instance in a statement; a second one waits for
            // the next (it gets the newer epoch, as it came later).
            let mut seen = HashSet::new();
            let (batch, later): (Vec<Request>, Vec<Request>) = waiting
                .drain(..)
                .partition(|r| seen.insert((r.tenant, r.announcement.instance_id.clone())));
            waiting = later;
            let started = std::time::Instant::now();
            let results = retrying_deadlocks("registration", || {
                register(pool, &batch, self.create_unknown_manifests, self.replica)
            })
            .await;
            match results {
                Ok(registered) => {
                    telemetry::batch_landed("hello", batch.len(), started.elapsed());
                    self.answer(batch, registered)
                }
                // One announcement the database refuses must not fail the
                // others that shared its statement: each goes again alone.
                Err(e) if batch.len() > 1 && !is_unavailable(&e) => {
                    telemetry::batch_failed("hello");
                    tracing::warn!(error = %e, registrations = batch.len(), "registration batch refused; registering one by one");
                    for request in batch {
                        let alone = std::slice::from_ref(&request);
                        match register(pool, alone, self.create_unknown_manifests, self.replica)
                            .await
                        {
                            Ok(registered) => self.answer(vec![request], registered),
                            Err(e) => fail(request, &e),
                        }
                    }
                }
                Err(e) => {
                    telemetry::batch_failed("hello");
                    tracing::warn!(error = %e, registrations = batch.len(), "registration batch failed");
                    for request in batch {
                        fail(request, &e);
                    }
                }
            }
        }
    }

    /// Answers each request of a batch that landed, by its place in the batch.
    fn answer(&self, batch: Vec<Request>, mut registered: HashMap<usize, Registered>) {
        self.stats.batches.fetch_add(1, Relaxed);
        self.stats
            .registered
            .fetch_add(registered.len() as u64, Relaxed);
        for (ord, request) in batch.into_iter().enumerate() {
            let answer = registered.remove(&ord).ok_or_else(|| {
                Error::NotFound(format!(
                    "manifest with agent_id {:?}",
                    request.announcement.agent_id
                ))
            });
            let _ = request.reply.send(answer);
        }
    }
}

fn is_unavailable(e: &Error) -> bool {
    matches!(e, Error::Database(db) if Error::is_unavailable(db))
}

/// Answers a request whose registration failed; the database's text stays in the log.
fn fail(request: Request, e: &Error) {
    let _ = request.reply.send(Err(if is_unavailable(e) {
        Error::DatabaseUnavailable
    } else {
        Error::Internal("registration failed".into())
    }));
}

/// How long a turned-away caller should wait: about the time the writer
/// takes to work through `queued` registrations (a few thousand a second),
/// spread so that the callers do not come back together.
fn retry_after(queued: usize) -> Duration {
    let work = Duration::from_millis(queued as u64 / 5);
    Duration::from_millis(100)
        + work
        + Duration::from_millis(fastrand::u64(0..=work.as_millis() as u64))
}

fn stopped() -> Error {
    Error::Unavailable("the server is shutting down; retry on another replica".into())
}

/// One batch: the upsert in one statement, then the rows and their
/// configurations in one read each. Answers by place in the batch.
async fn register(
    pool: &PgPool,
    batch: &[Request],
    create_manifests: bool,
    replica: Uuid,
) -> Result<HashMap<usize, Registered>> {
    let holders: Vec<Option<Uuid>> = batch.iter().map(|r| r.held.then_some(replica)).collect();
    let items: Vec<AnnouncementArg> = batch
        .iter()
        .enumerate()
        .map(|(ord, r)| {
            let a = &r.announcement;
            AnnouncementArg {
                ord: i32::try_from(ord).unwrap_or(i32::MAX),
                tenant_id: r.tenant,
                instance_id: a.instance_id.clone(),
                agent_id: a.agent_id.clone(),
                name: a.name.clone(),
                connection_details: a.connection_details.clone(),
                runtime_config: a.runtime_config.clone(),
                capacity: a.capacity,
            }
        })
        .collect();
    let done: Vec<(i32, Uuid, i64, bool)> =
        sqlx::query_as("SELECT * FROM agentry_register_batch($1, $2, $3)")
            .bind(&items)
            .bind(create_manifests)
            .bind(&holders)
            .fetch_all(pool)
            .await?;
    let ids: Vec<Uuid> = done.iter().map(|d| d.1).collect();
    let rows: HashMap<Uuid, RegistrationRow> = store::get_many(pool, &ids)
        .await?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    let mut config_ids: Vec<Uuid> = rows.values().map(|r| r.configuration_id).collect();
    config_ids.sort_unstable();
    config_ids.dedup();
    let configs: HashMap<Uuid, ConfigurationRow> = configurations::get_many(pool, &config_ids)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    let mut registered = HashMap::new();
    for (ord, id, epoch, created) in done {
        let (Some(row), Ok(ord)) = (rows.get(&id), usize::try_from(ord)) else {
            continue;
        };
        // Read after the commit: a newer registration may have followed; the
        // caller's epoch is the one this batch gave it.
        let mut row = row.clone();
        row.epoch = epoch;
        let Some(configuration) = configs.get(&row.configuration_id) else {
            continue;
        };
        registered.insert(
            ord,
            Registered {
                row,
                created,
                configuration: configuration.clone(),
            },
        );
    }
    Ok(registered)
}
