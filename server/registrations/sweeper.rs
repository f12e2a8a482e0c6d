//! The stale-instance sweep, run by a background task and by the `Cleanup` RPC.
//! In the same transaction it has routing expire workload leases that were
//! neither released nor renewed, through [`LeaseExpiry`]: the leases are
//! routing's, so routing implements it, and this tier does not import routing.
//!
//! One sweep is one transaction holding a transaction-level advisory lock, so
//! replicas sharing a database never sweep at the same time; a replica that
//! finds the lock taken skips its turn.
//!
//! Partition guard (after Eureka's self-preservation): when the instances that
//! would be deactivated in one sweep are at least `guard_ratio` of the active
//! instances of a tenant (or of all tenants), and at least
//! `guard_min_instances` of them, and the registry itself is the likely cause
//! of their silence, the sweep only marks them unknown and logs a warning.
//! The registry is the likely cause when this replica saw its database go
//! away lately (a sweep failed), or when most of that silence began with
//! streams lost at once (`failed` events, written by every replica, so the
//! replica that sweeps sees the losses of the others). A fleet that went
//! quiet without either is deactivated as usual: nothing points at us.
//!
//! Unlike Eureka's, whose self-preservation can hold a departed majority for
//! ever, the guard has an end: it holds for at most `guard_window` (three
//! stale timeouts by default) from the first sweep it held, then deactivates
//! them with a warning that says so. A real partition heals well within that,
//! and the agents behind it are back on their streams; a fleet that really
//! left is gone for good. An operator can end it sooner with `Cleanup` and
//! `ignore_partition_guard`.
//!
//! Held instances are not the sweep's: while a replica holds an instance's
//! stream (its row names the replica, whose lease is in
//! `agentry_replicas`), that replica judges its silence and its lease
//! vouches for it (`replicas.rs`). The sweep judges the others: unary
//! registrations, ended streams and the instances of replicas whose lease
//! expired, which a live replica took over (`orphaned` events: a replica's
//! failure, not streams lost at once, so they do not trip the guard).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use uuid::Uuid;

use crate::audit::{self, Actor, Target};
use crate::config::RegistryConfig;
use crate::error::Result;
use crate::periodic::Ticker;
use crate::telemetry::metrics as telemetry;

/// Gives back the units of expired leases, inside the sweep's transaction.
#[tonic::async_trait]
pub trait LeaseExpiry: Send + Sync + std::fmt::Debug {
    /// Expires open leases past their expiry; returns how many.
    async fn expire(&self, conn: &mut PgConnection) -> Result<i64>;
}

/// Arbitrary, fixed key of the sweep's advisory lock.
const SWEEP_LOCK: i64 = 0x0061_6765_6e74_7279;

/// How a sweep behaves.
#[derive(Debug, Clone)]
pub struct SweepSettings {
    /// Silence after which an instance is marked unknown; three times this, inactive.
    pub stale_threshold: Duration,
    /// Share of active instances whose deactivation in one sweep trips the guard.
    pub guard_ratio: f64,
    /// Fewest deactivations that can trip the guard.
    pub guard_min_instances: i64,
    /// Skip the guard (operator's decision).
    pub ignore_guard: bool,
    /// Longest the guard holds back one mass silence.
    pub guard_window: Duration,
    /// Delete inactive registrations deactivated longer ago than this.
    pub retention: Option<Duration>,
    /// Delete registration events older than this.
    pub event_retention: Duration,
    /// Delete audit events older than this.
    pub audit_retention: Duration,
    /// Who asked for this sweep (`Cleanup`), recorded in the audit log in
    /// the sweep's transaction; `None` for the background sweeps.
    pub requested_by: Option<Actor>,
}

impl From<&RegistryConfig> for SweepSettings {
    fn from(r: &RegistryConfig) -> Self {
        SweepSettings {
            stale_threshold: r.stale_timeout,
            guard_ratio: r.partition_guard_ratio,
            guard_min_instances: r.partition_guard_min_instances,
            ignore_guard: false,
            guard_window: r.stale_timeout.saturating_mul(3),
            retention: r.registration_retention,
            event_retention: r.event_retention,
            audit_retention: r.audit_retention,
            requested_by: None,
        }
    }
}

/// Runs sweeps with the server's settings.
#[derive(Debug)]
pub struct Sweeper {
    pool: PgPool,
    settings: SweepSettings,
    leases: Arc<dyn LeaseExpiry>,
    /// When the partition guard first held back the silence it holds now.
    guard_since: Mutex<Option<Instant>>,
    /// When a sweep of this replica last failed (its database was away).
    outage_seen: Mutex<Option<Instant>>,
}

impl Sweeper {
    /// A sweeper of `pool` with `settings`, expiring leases through `leases`.
    pub fn new(pool: PgPool, settings: SweepSettings, leases: Arc<dyn LeaseExpiry>) -> Self {
        Sweeper {
            pool,
            settings,
            leases,
            guard_since: Mutex::new(None),
            outage_seen: Mutex::new(None),
        }
    }

    /// The settings sweeps run with unless an operator overrides them.
    pub fn settings(&self) -> &SweepSettings {
        &self.settings
    }

    /// Runs one sweep with `settings`.
    pub async fn sweep_with(&self, settings: &SweepSettings) -> Result<SweepReport> {
        let outage = *lock(&self.outage_seen);
        let result = sweep(
            &self.pool,
            settings,
            &*self.leases,
            &self.guard_since,
            outage,
        )
        .await;
        match &result {
            Ok(report) => report.count(),
            Err(_) => {
                *lock(&self.outage_seen) = Some(Instant::now());
                metrics::counter!(telemetry::SWEEPS, "outcome" => "failed").increment(1);
            }
        }
        result
    }

    /// Sweeps every `interval` until `stopping` turns true.
    pub async fn run(&self, interval: Duration, stopping: watch::Receiver<bool>) {
        let mut ticker = Ticker::after(interval, stopping);
        while ticker.tick().await {
            if let Err(e) = self.sweep_with(&self.settings).await {
                tracing::warn!(error = %e, "sweep failed; retrying next interval");
            }
        }
    }
}

/// What a sweep changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub marked_unknown: i64,
    pub deactivated: i64,
    pub deleted: i64,
    pub leases_expired: i64,
    pub guard_tripped: bool,
    /// False when another replica held the sweep lock.
    pub ran: bool,
}

impl SweepReport {
    /// Adds this sweep to the metrics.
    fn count(&self) {
        if !self.ran {
            metrics::counter!(telemetry::SWEEPS, "outcome" => "skipped").increment(1);
            return;
        }
        metrics::counter!(telemetry::SWEEPS, "outcome" => "ran").increment(1);
        for (change, n) in [
            ("marked_unknown", self.marked_unknown),
            ("deactivated", self.deactivated),
            ("deleted", self.deleted),
            ("leases_expired", self.leases_expired),
        ] {
            metrics::counter!(telemetry::SWEEP_CHANGES, "change" => change)
                .increment(n.max(0) as u64);
        }
        metrics::gauge!(telemetry::PARTITION_GUARD).set(f64::from(u8::from(self.guard_tripped)));
    }
}

fn interval(d: Duration) -> sqlx::postgres::types::PgInterval {
    sqlx::postgres::types::PgInterval {
        months: 0,
        days: 0,
        microseconds: i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs one sweep. `outage` is when this replica last failed to sweep.
async fn sweep(
    pool: &PgPool,
    s: &SweepSettings,
    leases: &dyn LeaseExpiry,
    guard_since: &Mutex<Option<Instant>>,
    outage: Option<Instant>,
) -> Result<SweepReport> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(SWEEP_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(SweepReport::default());
    }
    let stale = interval(s.stale_threshold);
    let gone = interval(s.stale_threshold.saturating_mul(3));

    let marked_unknown = sqlx::query(
        "WITH stale AS (UPDATE agent_registrations SET health_status = 'unknown', \
           failure_count = failure_count + 1, updated_at = now() \
           WHERE registration_status = 'active' AND health_status IN ('healthy', 'degraded') \
             AND last_health_check < now() - $1 AND replica_id IS NULL \
           RETURNING id, tenant_id, configuration_id, epoch) \
         INSERT INTO registration_events (tenant_id, registration_id, configuration_id, kind, health_status, epoch) \
         SELECT tenant_id, id, configuration_id, 'swept', 'unknown', epoch FROM stale",
    )
    .bind(stale)
    .execute(&mut *tx)
    .await?
    .rows_affected() as i64;

    // How far back a cause can explain a silence that is a candidate now: it
    // began at least 3T ago, and the guard may have held it for its window.
    let memory = s.stale_threshold * 3 + s.guard_window;
    // Per tenant: active instances, those silent long enough to deactivate,
    // and those of them whose silence began with a lost stream.
    let counts: Vec<(Uuid, i64, i64, i64)> = sqlx::query_as(
        "WITH lost AS (SELECT DISTINCT registration_id FROM registration_events \
                       WHERE kind = 'failed' AND at > now() - $2) \
         SELECT r.tenant_id, count(*), \
                count(*) FILTER (WHERE r.last_health_check < now() - $1 AND r.replica_id IS NULL), \
                count(*) FILTER (WHERE r.last_health_check < now() - $1 AND r.replica_id IS NULL \
                                   AND lost.registration_id IS NOT NULL) \
         FROM agent_registrations r LEFT JOIN lost ON lost.registration_id = r.id \
         WHERE r.registration_status = 'active' GROUP BY r.tenant_id",
    )
    .bind(gone)
    .bind(interval(memory))
    .fetch_all(&mut *tx)
    .await?;
    let outage_lately = outage.is_some_and(|at| at.elapsed() < memory);
    let many = |active: i64, n: i64| {
        n >= s.guard_min_instances && n as f64 >= s.guard_ratio * active as f64
    };
    let trips = |active: i64, candidates: i64, lost: i64| {
        !s.ignore_guard && many(active, candidates) && (outage_lately || many(active, lost))
    };
    let (all_active, all_candidates, all_lost) =
        counts.iter().fold((0, 0, 0), |(a, c, l), (_, ta, tc, tl)| {
            (a + ta, c + tc, l + tl)
        });
    let held: Vec<Uuid> = if trips(all_active, all_candidates, all_lost) {
        counts.iter().map(|(t, ..)| *t).collect()
    } else {
        counts
            .iter()
            .filter(|(_, a, c, l)| trips(*a, *c, *l))
            .map(|(t, ..)| *t)
            .collect()
    };
    let cause = if outage_lately {
        "this replica saw its database go away"
    } else {
        "most of the silent instances lost their streams at once"
    };
    let held = if held.is_empty() {
        if many(all_active, all_candidates) && !s.ignore_guard {
            tracing::info!(
                candidates = all_candidates,
                active = all_active,
                "many instances went silent at once, but neither a database outage nor lost streams point at the registry; deactivating them"
            );
        }
        *lock(guard_since) = None;
        held
    } else {
        let since = *lock(guard_since).get_or_insert_with(Instant::now);
        if since.elapsed() < s.guard_window {
            tracing::warn!(
                tenants = held.len(),
                candidates = all_candidates,
                lost_streams = all_lost,
                active = all_active,
                cause,
                holding_for = ?since.elapsed(),
                gives_up_after = ?s.guard_window,
                "partition guard: too many instances went silent at once, likely the registry's own trouble; marking them unknown but not deactivating"
            );
            held
        } else {
            tracing::warn!(
                tenants = held.len(),
                candidates = all_candidates,
                active = all_active,
                cause,
                held_for = ?since.elapsed(),
                "partition guard: the silence outlasted the guard's window; deactivating the silent instances"
            );
            Vec::new()
        }
    };

    let deactivated = sqlx::query(
        "WITH gone AS (UPDATE agent_registrations SET registration_status = 'inactive', \
           health_status = 'disconnected', deactivation_date = now(), updated_at = now() \
           WHERE registration_status = 'active' AND last_health_check < now() - $1 \
             AND replica_id IS NULL AND NOT (tenant_id = ANY($2)) \
           RETURNING id, tenant_id, configuration_id, epoch) \
         INSERT INTO registration_events (tenant_id, registration_id, configuration_id, kind, health_status, epoch) \
         SELECT tenant_id, id, configuration_id, 'deactivated', 'disconnected', epoch FROM gone",
    )
    .bind(gone)
    .bind(&held)
    .execute(&mut *tx)
    .await?
    .rows_affected() as i64;

    let deleted = match s.retention {
        Some(retention) => sqlx::query(
            "DELETE FROM agent_registrations WHERE registration_status = 'inactive' AND deactivation_date < now() - $1",
        )
        .bind(interval(retention))
        .execute(&mut *tx)
        .await?
        .rows_affected() as i64,
        None => 0,
    };
    // A crashed caller never leaks workload: its lease expires and the unit comes back.
    let leases_expired = leases.expire(&mut tx).await?;
    for history in [
        "DELETE FROM registration_events WHERE at < now() - $1",
        "DELETE FROM workload_leases WHERE released_at < now() - $1",
    ] {
        sqlx::query(history)
            .bind(interval(s.event_retention))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("DELETE FROM audit_events WHERE at < now() - $1")
        .bind(interval(s.audit_retention))
        .execute(&mut *tx)
        .await?;
    let report = SweepReport {
        marked_unknown,
        deactivated,
        deleted,
        leases_expired,
        guard_tripped: !held.is_empty(),
        ran: true,
    };
    if let Some(actor) = &s.requested_by {
        let target = Target {
            kind: "registrations",
            id: None,
            tenant: None,
        };
        let details = serde_json::json!({
            "ignore_partition_guard": s.ignore_guard,
            "stale_threshold_ms": s.stale_threshold.as_millis() as u64,
            "marked_unknown": report.marked_unknown,
            "deactivated": report.deactivated,
            "deleted": report.deleted,
            "leases_expired": report.leases_expired,
        });
        audit::record(&mut tx, actor, "registration.cleanup", target, details).await?;
    }
    tx.commit().await?;
    if report.marked_unknown + report.deactivated + report.deleted + report.leases_expired > 0 {
        tracing::info!(?report, "swept stale registrations");
    }
    Ok(report)
}
