//! The lease writer: reservations and releases of workload, batched.
//!
//! Every reservation and release changes the `current_workload` row of its
//! configuration, and every change notifies the other replicas. Done one
//! statement each, callers of one configuration queue on that row's lock
//! through a commit (a WAL flush) apiece, and PostgreSQL serialises the
//! commits of all notifying transactions anyway: about a thousand changes a
//! second, whatever the number of callers. So this server hands them to one
//! task that applies everything queued as one call of the SQL function
//! `agentry_lease_batch` (migration 0008): one statement, so one round trip
//! and one commit answer the whole batch. Inside it the configuration rows
//! are locked in id order and the grants are decided against the locked
//! values, so `current_workload` never passes `max_workload`, on any number
//! of replicas.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::store::LeaseRow;
use crate::db::retrying_deadlocks;
use crate::error::{Error, Result};
use crate::telemetry::metrics as telemetry;

/// Operations one transaction takes at most.
const MAX_BATCH: usize = 512;
/// Operations that may wait for the writer before callers wait to enqueue.
const QUEUE: usize = 4096;

/// One unit of workload wanted by a caller of `tenant`.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub tenant: Uuid,
    /// (configuration, registration) pairs, most wanted first: the first that
    /// fits is taken.
    pub candidates: Vec<(Uuid, Uuid)>,
    pub ttl_ms: i64,
    /// The id its lease gets, when the caller named the reservation (a
    /// repeat then answers that lease); a fresh one otherwise.
    pub lease_id: Option<Uuid>,
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

/// Outcome of a reservation.
#[derive(Debug, Clone)]
pub enum Reserved {
    Granted(Grant),
    /// The reservation names a lease that exists already (a repeat): this id.
    Replayed(Uuid),
    /// None of the candidates fits.
    Full,
}

/// Outcome of a release.
pub type Released = bool;

enum Op {
    Reserve(Reservation, oneshot::Sender<Result<Reserved>>),
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
    pub batches: AtomicU64,
    /// Operations those transactions carried.
    pub operations: AtomicU64,
    /// Units released that a configuration's counter did not hold (drift:
    /// the counter was changed behind the leases' back).
    pub drifted_units: AtomicU64,
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
    /// Operations waiting for the writer now.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Reserves the first candidate of `reservation` that fits.
    pub async fn reserve(&self, reservation: Reservation) -> Result<Reserved> {
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
            let mut result = retrying_deadlocks("lease", || apply(&pool, &ops)).await;
            if result.as_ref().is_err_and(lease_id_taken) {
                // Another replica granted a repeat of one of these at the
                // same moment; run again, and it is found as a repeat.
                tracing::info!("lease batch raced a repeat on another replica; trying again");
                result = retrying_deadlocks("lease", || apply(&pool, &ops)).await;
            }
            tracing::debug!(operations = count, elapsed = ?started.elapsed(), ok = result.is_ok(), "lease batch");
            match result {
                Ok((outcomes, drift)) => {
                    for (configuration, units) in drift {
                        self.stats
                            .drifted_units
                            .fetch_add(u64::from(units.unsigned_abs()), Relaxed);
                        tracing::error!(
                            %configuration, units,
                            "workload counter drift: releases gave back units the counter did not hold; set to 0"
                        );
                    }
                    self.stats.batches.fetch_add(1, Relaxed);
                    self.stats.operations.fetch_add(count as u64, Relaxed);
                    telemetry::batch_landed("lease", count, started.elapsed());
                    for (op, outcome) in ops.drain(..).zip(outcomes) {
                        answer(op, outcome);
                    }
                }
                Err(e) => {
                    telemetry::batch_failed("lease");
                    let unavailable = Error::is_unavailable(&e);
                    if unavailable {
                        tracing::warn!(error = %e, operations = count, "lease batch failed: database unavailable");
                    } else {
                        tracing::error!(error = %e, operations = count, "lease batch failed");
                    }
                    let error = || {
                        if unavailable {
                            Error::DatabaseUnavailable
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

/// Whether a batch failed because a lease id it would insert exists.
fn lease_id_taken(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|e| e.constraint() == Some("workload_leases_pkey"))
}

#[derive(Clone)]
enum Outcome {
    Reserved(Reserved),
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

/// The outcome of each op, in order, and the configurations whose counter drifted.
type Applied = (Vec<Outcome>, Vec<(Uuid, i32)>);

// The derives also give each type its array type (`_agentry_lease_release`...).

/// `agentry_lease_release`: a lease to give back.
#[derive(Debug, sqlx::Type)]
#[sqlx(type_name = "agentry_lease_release")]
struct ReleaseArg {
    lease_id: Uuid,
    tenant_id: Uuid,
    outcome: String,
}

/// `agentry_lease_reservation`: a unit wanted, and the id its lease gets.
#[derive(Debug, sqlx::Type)]
#[sqlx(type_name = "agentry_lease_reservation")]
struct ReservationArg {
    lease_id: Uuid,
    tenant_id: Uuid,
    ttl_ms: i64,
}

/// `agentry_lease_candidate`: an instance a reservation would take.
#[derive(Debug, sqlx::Type)]
#[sqlx(type_name = "agentry_lease_candidate")]
struct CandidateArg {
    reservation: i32,
    configuration_id: Uuid,
    registration_id: Uuid,
}

/// One row of `agentry_lease_batch`.
#[derive(Debug, sqlx::FromRow)]
struct BatchRow {
    kind: String,
    lease_id: Option<Uuid>,
    reservation: Option<i32>,
    candidate: Option<i32>,
    configuration_id: Option<Uuid>,
    epoch: Option<i64>,
    workload: Option<i32>,
    acquired_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    drift: Option<i32>,
}

/// An answer of the batch function this server cannot read: a fault of
/// ours (`INTERNAL`), not of the connection, so not a protocol error
/// (`Error::is_unavailable`).
fn malformed(what: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("lease batch: {what}").into())
}

/// Decides and writes one batch: one call of `agentry_lease_batch`
/// (migration 0008), a single atomic statement, so one round trip.
async fn apply(pool: &PgPool, ops: &[Op]) -> Result<Applied, sqlx::Error> {
    let (mut releases, mut reservations, mut candidates) = (vec![], vec![], vec![]);
    // Which op each reservation index answers.
    let mut reservation_ops = vec![];
    // A named reservation repeated within the batch is sent once; the
    // repeats get the first one's answer (by op index).
    let mut named = std::collections::HashMap::new();
    let mut repeats = vec![];
    for (index, op) in ops.iter().enumerate() {
        match op {
            Op::Release {
                tenant,
                id,
                outcome,
                ..
            } => releases.push(ReleaseArg {
                lease_id: *id,
                tenant_id: *tenant,
                outcome: (*outcome).to_owned(),
            }),
            Op::Reserve(r, _) => {
                if let Some(id) = r.lease_id {
                    if let Some(&first) = named.get(&id) {
                        repeats.push((index, first));
                        continue;
                    }
                    named.insert(id, index);
                }
                let n = i32::try_from(reservation_ops.len()).unwrap_or(i32::MAX);
                reservation_ops.push(index);
                reservations.push(ReservationArg {
                    lease_id: r.lease_id.unwrap_or_else(Uuid::new_v4),
                    tenant_id: r.tenant,
                    ttl_ms: r.ttl_ms,
                });
                for (configuration, registration) in &r.candidates {
                    candidates.push(CandidateArg {
                        reservation: n,
                        configuration_id: *configuration,
                        registration_id: *registration,
                    });
                }
            }
        }
    }
    let rows: Vec<BatchRow> = sqlx::query_as("SELECT * FROM agentry_lease_batch($1, $2, $3)")
        .bind(&releases)
        .bind(&reservations)
        .bind(&candidates)
        .fetch_all(pool)
        .await?;

    let mut outcomes: Vec<Option<Outcome>> = ops.iter().map(|_| None).collect();
    let mut released = HashSet::new();
    let mut drift = Vec::new();
    for row in rows {
        match row.kind.as_str() {
            "released" => {
                released.insert(
                    row.lease_id
                        .ok_or_else(|| malformed("release without id"))?,
                );
            }
            "drift" => drift.push((
                row.configuration_id
                    .ok_or_else(|| malformed("drift without configuration"))?,
                row.drift.unwrap_or(0),
            )),
            "granted" => {
                let (
                    Some(id),
                    Some(reservation),
                    Some(candidate),
                    Some(configuration_id),
                    Some(epoch),
                    Some(workload),
                    Some(acquired_at),
                    Some(expires_at),
                ) = (
                    row.lease_id,
                    row.reservation,
                    row.candidate,
                    row.configuration_id,
                    row.epoch,
                    row.workload,
                    row.acquired_at,
                    row.expires_at,
                )
                else {
                    return Err(malformed("incomplete grant"));
                };
                let op = usize::try_from(reservation)
                    .ok()
                    .and_then(|r| reservation_ops.get(r).copied())
                    .ok_or_else(|| malformed("a grant names no reservation"))?;
                let Op::Reserve(r, _) = &ops[op] else {
                    return Err(malformed("a grant names a release"));
                };
                let candidate = usize::try_from(candidate).unwrap_or(usize::MAX);
                let (_, registration_id) = *r
                    .candidates
                    .get(candidate)
                    .ok_or_else(|| malformed("a grant names no candidate"))?;
                outcomes[op] = Some(Outcome::Reserved(Reserved::Granted(Grant {
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
            "replayed" => {
                let op = row
                    .reservation
                    .and_then(|r| usize::try_from(r).ok())
                    .and_then(|r| reservation_ops.get(r).copied())
                    .ok_or_else(|| malformed("a repeat names no reservation"))?;
                let id = row.lease_id.ok_or_else(|| malformed("repeat without id"))?;
                outcomes[op] = Some(Outcome::Reserved(Reserved::Replayed(id)));
            }
            other => return Err(malformed(&format!("unknown row kind {other:?}"))),
        }
    }
    for (op, outcome) in ops.iter().zip(&mut outcomes) {
        match op {
            // A lease named twice in one batch is released by the first.
            Op::Release { id, .. } => *outcome = Some(Outcome::Released(released.remove(id))),
            Op::Reserve(..) if outcome.is_none() => {
                *outcome = Some(Outcome::Reserved(Reserved::Full))
            }
            Op::Reserve(..) => {}
        }
    }
    for (repeat, first) in repeats {
        // The first was granted a moment ago: to the repeat, that lease is
        // a repeat's answer too.
        outcomes[repeat] = match &outcomes[first] {
            Some(Outcome::Reserved(Reserved::Granted(g))) => {
                Some(Outcome::Reserved(Reserved::Replayed(g.lease.id)))
            }
            other => other.clone(),
        };
    }
    Ok((outcomes.into_iter().flatten().collect(), drift))
}
