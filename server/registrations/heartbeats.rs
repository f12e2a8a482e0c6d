//! The heartbeat writer: persists the last-seen times of all this server's
//! health streams in one statement per flush interval, whatever the number
//! of agents. Heartbeats are acknowledged from memory (`sessions`); a write
//! that fails leaves them dirty for the next interval, and a restart loses at
//! most one interval of timestamps.
//!
//! One flush at a time: a flush takes the dirty set before its statement
//! lands, so a second flush in between (the sweep's, which must judge
//! silence only after this replica's heartbeats are written) would find
//! nothing to write and return while the first is still in flight, as it
//! may be for long after an outage while the pool reconnects. It waits for
//! the first instead.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Mutex, watch};
use uuid::Uuid;

use super::sessions::Sessions;
use super::store;
use crate::error::Result;
use crate::periodic::Ticker;
use crate::telemetry::metrics as telemetry;

/// Writes the heartbeat times that `sessions` noted.
#[derive(Debug, Clone)]
pub struct HeartbeatWriter {
    pool: PgPool,
    sessions: Arc<Sessions>,
    /// Held across a flush, by every clone: one flush at a time.
    flushing: Arc<Mutex<()>>,
}

impl HeartbeatWriter {
    /// A writer of `sessions`' heartbeats into `pool`.
    pub fn new(pool: PgPool, sessions: Arc<Sessions>) -> Self {
        HeartbeatWriter {
            pool,
            sessions,
            flushing: Arc::default(),
        }
    }

    /// Persists the times noted since the previous flush, in one statement,
    /// after waiting for a flush in flight: when it returns, every heartbeat
    /// noted before the call has landed (or the flush failed). Sessions
    /// whose row was fenced (a newer epoch elsewhere, or deactivated) are
    /// closed. Returns the rows written.
    pub async fn flush(&self) -> Result<usize> {
        let _flushing = match self.flushing.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                self.sessions
                    .stats
                    .heartbeat_flush_waits
                    .fetch_add(1, Ordering::Relaxed);
                self.flushing.lock().await
            }
        };
        let dirty = self.sessions.take_dirty();
        if dirty.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = dirty.iter().map(|d| d.0).collect();
        let epochs: Vec<i64> = dirty.iter().map(|d| d.1).collect();
        let seen: Vec<_> = dirty.iter().map(|d| d.2).collect();
        let started = std::time::Instant::now();
        let updated = match store::touch_many(&self.pool, &ids, &epochs, &seen).await {
            Ok(updated) => updated,
            Err(e) => {
                self.sessions.mark_dirty(&ids);
                return Err(e);
            }
        };
        metrics::histogram!(telemetry::HEARTBEAT_FLUSH_DURATION)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(telemetry::HEARTBEAT_ROWS).increment(updated.len() as u64);
        let stats = &self.sessions.stats;
        stats.heartbeat_flushes.fetch_add(1, Ordering::Relaxed);
        stats
            .heartbeat_rows
            .fetch_add(updated.len() as u64, Ordering::Relaxed);
        if updated.len() < ids.len() {
            let updated: HashSet<Uuid> = updated.into_iter().collect();
            let fenced: Vec<(Uuid, i64)> = dirty
                .iter()
                .filter(|d| !updated.contains(&d.0))
                .map(|d| (d.0, d.1))
                .collect();
            self.sessions.close_fenced(&fenced);
            return Ok(updated.len());
        }
        Ok(updated.len())
    }

    /// Flushes every `interval` until `stopping` turns true.
    pub async fn run(&self, interval: Duration, stopping: watch::Receiver<bool>) {
        let mut ticker = Ticker::now(interval, stopping);
        while ticker.tick().await {
            if let Err(e) = self.flush().await {
                tracing::warn!(error = %e, "heartbeat flush failed; retrying next interval");
            }
        }
    }
}
