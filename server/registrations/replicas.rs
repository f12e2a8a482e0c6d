//! Liveness by ownership: this replica's lease (migration 0016).
//!
//! The replica that holds an instance's health stream knows from its own
//! memory whether the stream is alive: it acknowledges heartbeats without a
//! write and ends a stream that goes silent (`stream.rs`). What it tells the
//! database is one lease for all its streams, renewed every third of
//! `--replica-lease`; each instance's row names the replica that holds it
//! (`replica_id`, set by the hello batch, cleared when the stream ends).
//! So the database's work follows changes, not the size of the fleet.
//!
//! A replica that dies or is cut off stops renewing. Every replica's view
//! takes its instances out of routing once the feed brings a database
//! clock past the lease's expiry (every replica's own renewals bring it,
//! so within a third of the lease after the expiry; a view whose feed runs
//! late, or is cut off itself, declares nobody dead), and at each renewal every replica looks for
//! expired leases and takes their rows over in one statement: health
//! `unknown`, no holder, last seen at the dead replica's last renewal, an
//! `orphaned` event (not a lost stream: the partition guard does not count
//! it). The agents reconnect elsewhere and register again.
//!
//! A replica that starts under the name of an earlier one (`--replica-name`,
//! host and port by default: the same process restarted) ends that one's
//! lease at once, so a restart after kill -9 never offers streams it lost.
//! A replica that finds its own lease taken over (it was cut off longer than
//! the lease) takes a new one and drains its streams: the agents register
//! again, and their rows name it again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::types::PgInterval;
use tokio::sync::watch;
use uuid::Uuid;

use crate::db::retrying_deadlocks;
use crate::error::Result;
use crate::periodic::Ticker;

/// A replica's lease as the views see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaLease {
    pub id: Uuid,
    /// Until when it vouches for its streams; `None`: the lease is gone.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Every replica's lease (the feed's snapshot), and the database's clock.
pub async fn all(pool: &PgPool) -> Result<(Vec<ReplicaLease>, DateTime<Utc>)> {
    let rows: Vec<(Uuid, DateTime<Utc>, DateTime<Utc>)> =
        sqlx::query_as("SELECT id, expires_at, now() FROM agentry_replicas")
            .fetch_all(pool)
            .await?;
    let now = match rows.first() {
        Some(row) => row.2,
        None => sqlx::query_scalar("SELECT now()").fetch_one(pool).await?,
    };
    let leases = rows
        .into_iter()
        .map(|(id, expires_at, _)| ReplicaLease {
            id,
            expires_at: Some(expires_at),
        })
        .collect();
    Ok((leases, now))
}

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewed {
    /// The lease is ours and runs on.
    Held,
    /// Another replica took our rows over while we could not renew: the
    /// lease is new, our streams must register again.
    Lost,
}

/// This replica's lease.
#[derive(Debug)]
pub struct Replica {
    id: Uuid,
    /// Whether the lease was ever taken.
    started: AtomicBool,
    name: String,
    lease: Duration,
    pool: PgPool,
}

fn interval(d: Duration) -> PgInterval {
    PgInterval {
        months: 0,
        days: 0,
        microseconds: i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
    }
}

impl Replica {
    /// A replica named `name` whose lease lasts `lease`, with a new id.
    pub fn new(pool: PgPool, name: String, lease: Duration) -> Self {
        Replica {
            id: Uuid::new_v4(),
            started: AtomicBool::new(false),
            name,
            lease,
            pool,
        }
    }

    /// This replica's id, which its instances' rows name.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// How long the lease lasts.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Takes the lease: ends the leases of earlier replicas of the same
    /// name and takes their rows over.
    pub async fn start(&self) -> Result<()> {
        sqlx::query(
            "WITH earlier AS (UPDATE agentry_replicas SET expires_at = now() \
                              WHERE name = $2 AND id <> $1 AND expires_at > now()) \
             INSERT INTO agentry_replicas (id, name, expires_at) VALUES ($1, $2, now() + $3) \
             ON CONFLICT (id) DO UPDATE SET renewed_at = now(), expires_at = EXCLUDED.expires_at",
        )
        .bind(self.id)
        .bind(&self.name)
        .bind(interval(self.lease))
        .execute(&self.pool)
        .await?;
        self.started.store(true, Ordering::Release);
        let taken = self.take_over_expired().await?;
        tracing::info!(replica = %self.id, name = %self.name, lease = ?self.lease, taken_over = taken, "replica lease taken");
        Ok(())
    }

    /// Renews the lease, then takes over the rows of expired ones.
    pub async fn renew(&self) -> Result<Renewed> {
        let renewed = sqlx::query(
            "UPDATE agentry_replicas SET renewed_at = now(), expires_at = now() + $2 WHERE id = $1",
        )
        .bind(self.id)
        .bind(interval(self.lease))
        .execute(&self.pool)
        .await?
        .rows_affected();
        let outcome = if renewed > 0 {
            Renewed::Held
        } else if self.started.load(Ordering::Acquire) {
            tracing::warn!(replica = %self.id, "this replica's lease was taken over while it could not renew; taking a new one, its streams register again");
            self.start().await?;
            Renewed::Lost
        } else {
            // The lease was never taken (the database was away at start-up).
            self.start().await?;
            Renewed::Held
        };
        let taken = self.take_over_expired().await?;
        if taken > 0 {
            tracing::warn!(
                instances = taken,
                "took over the instances of replicas whose lease expired"
            );
        }
        Ok(outcome)
    }

    /// Renews every third of the lease until `stopping` turns true; calls
    /// `lost` when the lease had been taken over.
    pub async fn run(&self, stopping: watch::Receiver<bool>, lost: impl Fn()) {
        let mut ticker = Ticker::after(self.lease / 3, stopping);
        while ticker.tick().await {
            match self.renew().await {
                Ok(Renewed::Held) => {}
                Ok(Renewed::Lost) => lost(),
                Err(e) => {
                    tracing::warn!(error = %e, "replica lease renewal failed; retrying (other replicas stop routing to this one's agents when it expires)");
                }
            }
        }
    }

    /// Ends the lease at shutdown, once the streams' ends are written: the
    /// rows still naming this replica are taken over at once.
    pub async fn release(&self) -> Result<u64> {
        sqlx::query("UPDATE agentry_replicas SET expires_at = now() WHERE id = $1")
            .bind(self.id)
            .execute(&self.pool)
            .await?;
        self.take_over_expired().await
    }

    /// Takes over the rows of every expired lease, in one statement: the
    /// rows are locked in id order, as the registration writer locks its
    /// batches. Returns the instances taken over.
    pub async fn take_over_expired(&self) -> Result<u64> {
        retrying_deadlocks("replica take-over", || async {
            let taken: i64 = sqlx::query_scalar(
                "WITH dead AS (DELETE FROM agentry_replicas WHERE expires_at <= now() \
                               RETURNING id, renewed_at), \
                 locked AS (SELECT r.id FROM agent_registrations r JOIN dead ON dead.id = r.replica_id \
                            ORDER BY r.id FOR UPDATE OF r), \
                 orphaned AS ( \
                   UPDATE agent_registrations r SET replica_id = NULL, \
                     health_status = CASE WHEN r.registration_status = 'active' \
                                           AND r.health_status IN ('healthy', 'degraded') \
                                          THEN 'unknown' ELSE r.health_status END, \
                     last_health_check = greatest(r.last_health_check, dead.renewed_at), \
                     updated_at = now() \
                   FROM dead, locked WHERE locked.id = r.id AND r.replica_id = dead.id \
                   RETURNING r.id, r.tenant_id, r.configuration_id, r.epoch, r.registration_status), \
                 events AS ( \
                   INSERT INTO registration_events (tenant_id, registration_id, configuration_id, kind, health_status, epoch) \
                   SELECT tenant_id, id, configuration_id, 'orphaned', 'unknown', epoch FROM orphaned \
                   WHERE registration_status = 'active') \
                 SELECT count(*) FROM orphaned",
            )
            .fetch_one(&self.pool)
            .await?;
            Ok(u64::try_from(taken).unwrap_or(0))
        })
        .await
    }
}
