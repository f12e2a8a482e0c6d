//! The lease writer: reservations and releases of workload, batched.
//!
//! Every reservation and release changes the `current_workload` row of its
//! configuration, and every change notifies the other replicas. Done one
//! statement each, callers of one configuration queue on that row's lock
//! through a commit (a WAL flush) apiece, and PostgreSQL serialises the
//! commits of all notifying transactions anyway: about a thousand changes a
//! second, whatever the number of callers. So this server hands them to one
//! task that applies everything queued as one call of the SQL function
//! `agentry_lease_batch` (migration 0007): one statement, so one round trip
//! and one commit answer the whole batch. Inside it the configuration rows
//! are locked in id order and the grants are decided against the locked
//! values, so `current_workload` never passes `max_workload`, on any number
//! of replicas.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
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
        match apply(pool, ops).await {
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("40P01") && tries < DEADLOCK_TRIES =>
            {
                tracing::info!("lease batch chosen as a deadlock victim; trying again");
                tokio::time::sleep(Duration::from_millis(fastrand::u64(1..20))).await;
            }
            result => return result,
        }
    }
}

/// One row of `agentry_lease_batch`: a released lease, or a grant.
type BatchRow = (
    Uuid,
    Option<i32>,
    Option<i32>,
    Option<i64>,
    Option<i32>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

/// Decides and writes one batch: one call of `agentry_lease_batch`
/// (migration 0007), a single atomic statement, so one round trip.
async fn apply(pool: &PgPool, ops: &[Op]) -> Result<Vec<Outcome>, sqlx::Error> {
    let (mut rel_ids, mut rel_tenants, mut rel_outcomes) = (vec![], vec![], vec![]);
    let (mut res_tenants, mut res_ttls, mut res_leases) = (vec![], vec![], vec![]);
    let (mut cand_res, mut cand_configs, mut cand_regs) = (vec![], vec![], vec![]);
    // Which op each reservation index answers.
    let mut reservation_ops = vec![];
    for (index, op) in ops.iter().enumerate() {
        match op {
            Op::Release {
                tenant,
                id,
                outcome,
                ..
            } => {
                rel_ids.push(*id);
                rel_tenants.push(*tenant);
                rel_outcomes.push(*outcome);
            }
            Op::Reserve(r, _) => {
                let n = i32::try_from(reservation_ops.len()).unwrap_or(i32::MAX);
                reservation_ops.push(index);
                res_tenants.push(r.tenant);
                res_ttls.push(r.ttl_ms);
                res_leases.push(Uuid::new_v4());
                for (configuration, registration) in &r.candidates {
                    cand_res.push(n);
                    cand_configs.push(*configuration);
                    cand_regs.push(*registration);
                }
            }
        }
    }
    let rows: Vec<BatchRow> =
        sqlx::query_as("SELECT * FROM agentry_lease_batch($1, $2, $3, $4, $5, $6, $7, $8, $9)")
            .bind(&rel_ids)
            .bind(&rel_tenants)
            .bind(&rel_outcomes)
            .bind(&res_tenants)
            .bind(&res_ttls)
            .bind(&res_leases)
            .bind(&cand_res)
            .bind(&cand_configs)
            .bind(&cand_regs)
            .fetch_all(pool)
            .await?;

    let mut outcomes: Vec<Option<Outcome>> = ops.iter().map(|_| None).collect();
    let mut released = HashSet::new();
    for row in rows {
        match row {
            (id, None, ..) => {
                released.insert(id);
            }
            (
                id,
                Some(reservation),
                Some(candidate),
                Some(epoch),
                Some(workload),
                Some(acquired_at),
                Some(expires_at),
            ) => {
                let res = usize::try_from(reservation).unwrap_or(usize::MAX);
                let op = reservation_ops
                    .get(res)
                    .copied()
                    .ok_or_else(|| sqlx::Error::Protocol("a grant names no reservation".into()))?;
                let Op::Reserve(r, _) = &ops[op] else {
                    return Err(sqlx::Error::Protocol("a grant names a release".into()));
                };
                let candidate = usize::try_from(candidate).unwrap_or(usize::MAX);
                let (configuration_id, registration_id) = *r
                    .candidates
                    .get(candidate)
                    .ok_or_else(|| sqlx::Error::Protocol("a grant names no candidate".into()))?;
                outcomes[op] = Some(Outcome::Reserved(Some(Grant {
                    candidate,
                    current_workload: workload,
                    lease: LeaseRow {
                        id,
                        tenant_id: r.tenant,
                        configuration_id,
                        registration_id,
                        epoch,
                        ttl_ms: r.ttl_ms,
                        acquired_at,
                        expires_at,
                        released_at: None,
                        outcome: None,
                    },
                })));
            }
            _ => return Err(sqlx::Error::Protocol("malformed lease batch row".into())),
        }
    }
    for (op, outcome) in ops.iter().zip(&mut outcomes) {
        match op {
            // A lease named twice in one batch is released by the first.
            Op::Release { id, .. } => *outcome = Some(Outcome::Released(released.remove(id))),
            Op::Reserve(..) if outcome.is_none() => *outcome = Some(Outcome::Reserved(None)),
            Op::Reserve(..) => {}
        }
    }
    Ok(outcomes.into_iter().flatten().collect())
}
