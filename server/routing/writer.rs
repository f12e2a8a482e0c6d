//! The lease writer: reservations and releases of workload, batched.
//!
//! Every reservation and release changes the `current_workload` row of its
//! configuration, and every change notifies the other replicas. Done one
//! statement each, callers of one configuration queue on that row's lock
//! through a commit (a WAL flush) apiece, and PostgreSQL serialises the
//! commits of all notifying transactions anyway: about a thousand changes a
//! second, whatever the number of callers. So this server hands them to one
//! task that applies everything queued in one transaction: the configuration
//! rows are locked in id order, the grants are decided against the locked
//! values, and one commit answers the whole batch. `current_workload` still
//! never passes `max_workload`, on any number of replicas: every decision is
//! made under the row lock.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::store::LeaseRow;
use crate::error::{Error, Result};

/// Operations one transaction takes at most.
const MAX_BATCH: usize = 512;
/// Operations that may wait for the writer before callers wait to enqueue.
const QUEUE: usize = 4096;
/// Tries of a batch that PostgreSQL chose as a deadlock victim.
const DEADLOCK_TRIES: usize = 3;

/// One unit of workload wanted by a caller of `tenant`.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub tenant: Uuid,
    /// (configuration, registration) pairs, most wanted first: the first that
    /// fits is taken.
    pub candidates: Vec<(Uuid, Uuid)>,
    pub ttl_ms: i64,
}

/// A granted reservation.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Which of the reservation's candidates was taken.
    pub candidate: usize,
    pub lease: LeaseRow,
    /// The configuration's workload right after the grant.
    pub current_workload: i32,
}

/// Outcome of a release.
pub type Released = bool;

enum Op {
    Reserve(Reservation, oneshot::Sender<Result<Option<Grant>>>),
    Release {
        tenant: Uuid,
        id: Uuid,
        outcome: &'static str,
        reply: oneshot::Sender<Result<Released>>,
    },
}

/// Counters for tests and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    /// Transactions the writer committed.
    pub batches: std::sync::atomic::AtomicU64,
    /// Operations those transactions carried.
    pub operations: std::sync::atomic::AtomicU64,
}

/// The handle services use; [`LeaseWriter::run`] is the task behind it.
#[derive(Debug)]
pub struct LeaseWriter {
    tx: mpsc::Sender<Op>,
    rx: Mutex<Option<mpsc::Receiver<Op>>>,
    pub stats: Stats,
}

impl Default for LeaseWriter {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        LeaseWriter {
            tx,
            rx: Mutex::new(Some(rx)),
            stats: Stats::default(),
        }
    }
}

fn stopped() -> Error {
    Error::Unavailable("the server is shutting down; retry on another replica".into())
}

impl LeaseWriter {
    /// Reserves the first candidate of `reservation` that fits; `None` when none does.
    pub async fn reserve(&self, reservation: Reservation) -> Result<Option<Grant>> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Op::Reserve(reservation, reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Releases lease `id` of `tenant`: `true` if this call released it,
    /// `false` if it was released already (or does not exist: the caller tells).
    pub async fn release(&self, tenant: Uuid, id: Uuid, outcome: &'static str) -> Result<Released> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Op::Release {
                tenant,
                id,
                outcome,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Applies queued operations in batches, for as long as the server runs
    /// (its background tasks are aborted at the end). Runs once; a second
    /// call returns at once.
    pub async fn run(&self, pool: PgPool) {
        let Some(mut rx) = self.rx.lock().await.take() else {
            return;
        };
        let mut ops = Vec::with_capacity(MAX_BATCH);
        while rx.recv_many(&mut ops, MAX_BATCH).await > 0 {
            let count = ops.len();
            let started = std::time::Instant::now();
            let result = apply_with_retry(&pool, &ops).await;
            tracing::debug!(operations = count, elapsed = ?started.elapsed(), ok = result.is_ok(), "lease batch");
            match result {
                Ok(outcomes) => {
                    use std::sync::atomic::Ordering::Relaxed;
                    self.stats.batches.fetch_add(1, Relaxed);
                    self.stats.operations.fetch_add(count as u64, Relaxed);
                    for (op, outcome) in ops.drain(..).zip(outcomes) {
                        answer(op, outcome);
                    }
                }
                Err(e) => {
                    let unavailable = Error::is_unavailable(&e);
                    if unavailable {
                        tracing::warn!(error = %e, operations = count, "lease batch failed: database unavailable");
                    } else {
                        tracing::error!(error = %e, operations = count, "lease batch failed");
                    }
                    let error = || {
                        if unavailable {
                            Error::Unavailable("database unavailable, retry later".into())
                        } else {
                            Error::Internal("lease batch failed".into())
                        }
                    };
                    for op in ops.drain(..) {
                        match op {
                            Op::Reserve(_, reply) => drop(reply.send(Err(error()))),
                            Op::Release { reply, .. } => drop(reply.send(Err(error()))),
                        }
                    }
                }
            }
        }
    }
}

enum Outcome {
    Reserved(Option<Grant>),
    Released(Released),
}

fn answer(op: Op, outcome: Outcome) {
    let mismatch = || Error::Internal("lease batch answered out of order".into());
    match (op, outcome) {
        (Op::Reserve(_, reply), Outcome::Reserved(grant)) => drop(reply.send(Ok(grant))),
        (Op::Release { reply, .. }, Outcome::Released(released)) => {
            drop(reply.send(Ok(released)));
        }
        (Op::Reserve(_, reply), _) => drop(reply.send(Err(mismatch()))),
        (Op::Release { reply, .. }, _) => drop(reply.send(Err(mismatch()))),
    }
}

async fn apply_with_retry(pool: &PgPool, ops: &[Op]) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut tries = 0;
    loop {
        tries += 1;
        let mut tx = pool.begin().await?;
        match apply(&mut tx, ops).await {
            Ok(outcomes) => {
                tx.commit().await?;
                return Ok(outcomes);
            }
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("40P01") && tries < DEADLOCK_TRIES =>
            {
                tracing::info!("lease batch chosen as a deadlock victim; trying again");
                drop(tx);
                tokio::time::sleep(Duration::from_millis(fastrand::u64(1..20))).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A configuration row as locked by the batch.
struct Locked {
    tenant: Uuid,
    enabled: bool,
    workload: i32,
    max: i32,
    changed: bool,
}

/// Decides and writes one batch inside `tx`.
async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    ops: &[Op],
) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut outcomes: Vec<Option<Outcome>> = ops.iter().map(|_| None).collect();
    // Every operation gets an outcome below; `None` left over would answer "no fit".

    // Releases first, so that the units they free are there for this batch's reservations.
    let (mut ids, mut tenants, mut kinds) = (vec![], vec![], vec![]);
    for op in ops {
        if let Op::Release {
            tenant,
            id,
            outcome,
            ..
        } = op
        {
            ids.push(*id);
            tenants.push(*tenant);
            kinds.push(*outcome);
        }
    }
    let released: Vec<(Uuid, Uuid)> = if ids.is_empty() {
        vec![]
    } else {
        sqlx::query_as(
            "UPDATE workload_leases l SET released_at = now(), outcome = u.outcome \
             FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS u(id, tenant_id, outcome) \
             WHERE l.id = u.id AND l.tenant_id = u.tenant_id AND l.released_at IS NULL \
             RETURNING l.id, l.configuration_id",
        )
        .bind(&ids)
        .bind(&tenants)
        .bind(&kinds)
        .fetch_all(&mut **tx)
        .await?
    };

    // Lock every configuration the batch touches, in id order (no deadlock
    // between two batches), and decide against the locked values.
    let mut configurations: BTreeSet<Uuid> = released.iter().map(|(_, c)| *c).collect();
    let mut registrations = vec![];
    for op in ops {
        if let Op::Reserve(r, _) = op {
            for (c, reg) in &r.candidates {
                configurations.insert(*c);
                registrations.push(*reg);
            }
        }
    }
    let configurations: Vec<Uuid> = configurations.into_iter().collect();
    let rows: Vec<(Uuid, Uuid, bool, i32, i32)> = sqlx::query_as(
        "SELECT id, tenant_id, enabled, current_workload, max_workload FROM agent_configurations \
         WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(&configurations)
    .fetch_all(&mut **tx)
    .await?;
    let mut locked: HashMap<Uuid, Locked> = rows
        .into_iter()
        .map(|(id, tenant, enabled, workload, max)| {
            (
                id,
                Locked {
                    tenant,
                    enabled,
                    workload,
                    max,
                    changed: false,
                },
            )
        })
        .collect();

    let mut released_once: HashMap<Uuid, Uuid> = released.into_iter().collect();
    for (op, outcome) in ops.iter().zip(&mut outcomes) {
        if let Op::Release { id, .. } = op {
            // A lease named twice in one batch is released by the first.
            let done = released_once.remove(id);
            if let Some(c) = done.and_then(|c| locked.get_mut(&c)) {
                c.workload = (c.workload - 1).max(0);
                c.changed = true;
            }
            *outcome = Some(Outcome::Released(done.is_some()));
        }
    }

    // Instances still routable, with the epoch their leases carry. Read by
    // primary key alone and filtered here: given the status too, the planner
    // likes to combine the pkey with the partial index of active rows, which
    // every heartbeat flush churns, and that costs milliseconds.
    registrations.sort_unstable();
    registrations.dedup();
    let routable: HashMap<Uuid, (Uuid, Uuid, i64)> = if registrations.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as::<_, (Uuid, Uuid, Uuid, i64, String, String, bool)>(
            "SELECT id, tenant_id, configuration_id, epoch, registration_status, health_status, \
               drain_time IS NOT NULL FROM agent_registrations WHERE id = ANY($1)",
        )
        .bind(&registrations)
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .filter(|(.., status, health, drained)| {
            status == "active" && matches!(health.as_str(), "healthy" | "degraded") && !drained
        })
        .map(|(id, tenant, configuration, epoch, ..)| (id, (tenant, configuration, epoch)))
        .collect()
    };

    struct New {
        op: usize,
        candidate: usize,
        id: Uuid,
        tenant: Uuid,
        configuration: Uuid,
        registration: Uuid,
        epoch: i64,
        ttl_ms: i64,
        workload: i32,
    }
    let mut granted: Vec<New> = vec![];
    for (index, (op, outcome)) in ops.iter().zip(&mut outcomes).enumerate() {
        let Op::Reserve(r, _) = op else { continue };
        let fits = r.candidates.iter().enumerate().find_map(|(i, (c, reg))| {
            let (tenant, configuration, epoch) = routable.get(reg)?;
            let config = locked.get_mut(c)?;
            let ok = config.tenant == r.tenant
                && *tenant == r.tenant
                && configuration == c
                && config.enabled
                && config.workload < config.max;
            ok.then(|| {
                config.workload += 1;
                config.changed = true;
                (i, *c, *reg, *epoch, config.workload)
            })
        });
        match fits {
            Some((candidate, configuration, registration, epoch, workload)) => {
                granted.push(New {
                    op: index,
                    candidate,
                    id: Uuid::new_v4(),
                    tenant: r.tenant,
                    configuration,
                    registration,
                    epoch,
                    ttl_ms: r.ttl_ms,
                    workload,
                });
            }
            None => *outcome = Some(Outcome::Reserved(None)),
        }
    }

    let (changed_ids, changed_workloads): (Vec<Uuid>, Vec<i32>) = locked
        .iter()
        .filter(|(_, c)| c.changed)
        .map(|(id, c)| (*id, c.workload))
        .unzip();
    if !changed_ids.is_empty() {
        sqlx::query(
            "UPDATE agent_configurations c SET current_workload = u.workload, updated_at = now() \
             FROM unnest($1::uuid[], $2::int[]) AS u(id, workload) \
             WHERE c.id = u.id AND c.current_workload <> u.workload",
        )
        .bind(&changed_ids)
        .bind(&changed_workloads)
        .execute(&mut **tx)
        .await?;
    }

    if !granted.is_empty() {
        let column = |f: fn(&New) -> Uuid| granted.iter().map(f).collect::<Vec<_>>();
        let stamps: Vec<(Uuid, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
            "INSERT INTO workload_leases \
               (id, tenant_id, configuration_id, registration_id, epoch, ttl_ms, expires_at) \
             SELECT id, tenant_id, configuration_id, registration_id, epoch, ttl_ms, \
                    now() + ttl_ms * interval '1 millisecond' \
             FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::bigint[], $6::bigint[]) \
               AS u(id, tenant_id, configuration_id, registration_id, epoch, ttl_ms) \
             RETURNING id, acquired_at, expires_at",
        )
        .bind(column(|n| n.id))
        .bind(column(|n| n.tenant))
        .bind(column(|n| n.configuration))
        .bind(column(|n| n.registration))
        .bind(granted.iter().map(|n| n.epoch).collect::<Vec<_>>())
        .bind(granted.iter().map(|n| n.ttl_ms).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;
        let stamps: HashMap<Uuid, (DateTime<Utc>, DateTime<Utc>)> = stamps
            .into_iter()
            .map(|(id, acquired, expires)| (id, (acquired, expires)))
            .collect();
        for n in granted {
            let (acquired_at, expires_at) = stamps
                .get(&n.id)
                .copied()
                .ok_or_else(|| sqlx::Error::Protocol("a granted lease was not inserted".into()))?;
            outcomes[n.op] = Some(Outcome::Reserved(Some(Grant {
                candidate: n.candidate,
                current_workload: n.workload,
                lease: LeaseRow {
                    id: n.id,
                    tenant_id: n.tenant,
                    configuration_id: n.configuration,
                    registration_id: n.registration,
                    epoch: n.epoch,
                    ttl_ms: n.ttl_ms,
                    acquired_at,
                    expires_at,
                    released_at: None,
                    outcome: None,
                },
            })));
        }
    }

    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Reserved(None)))
        .collect())
}
