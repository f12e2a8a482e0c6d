//! Admission at accept: caps on open connections per replica and per peer
//! address, and the counters of what the listener did.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::telemetry::metrics as telemetry;

/// The caps and timeout of the listener (`--handshake-timeout`,
/// `--max-connections`, `--max-connections-per-peer`; 0: no cap).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    pub max_per_peer: usize,
}

/// What the listener has done, for tests and the metrics.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections admitted and not yet closed.
    pub open: AtomicUsize,
    /// Refused at accept: the replica's cap was reached.
    pub refused_total: AtomicU64,
    /// Refused at accept: the peer address's cap was reached.
    pub refused_peer: AtomicU64,
    /// Closed for not finishing their handshake in time.
    pub handshake_timeouts: AtomicU64,
}

/// The connections this listener holds.
#[derive(Debug)]
pub struct Connections {
    limits: ConnectionLimits,
    per_peer: Mutex<HashMap<IpAddr, usize>>,
    /// The counters.
    pub stats: ConnectionStats,
}

/// An admitted connection's place under the caps, given back on drop.
#[derive(Debug)]
pub struct Admitted {
    pub(super) connections: Arc<Connections>,
    peer: IpAddr,
}

impl Connections {
    /// No connection yet, under `limits`.
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Connections {
            limits,
            per_peer: Mutex::default(),
            stats: ConnectionStats::default(),
        })
    }

    /// The caps and timeout.
    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// Connections open from `peer`.
    pub fn open_from(&self, peer: IpAddr) -> usize {
        let per_peer = self.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        per_peer.get(&peer).copied().unwrap_or(0)
    }

    /// A place for a connection from `peer`, unless a cap is reached.
    pub(super) fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Admitted> {
        let mut per_peer = self.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        let open = self.stats.open.load(Ordering::Relaxed);
        if self.limits.max_connections > 0 && open >= self.limits.max_connections {
            self.stats.refused_total.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(telemetry::CONNECTIONS_REFUSED, "reason" => "max_connections")
                .increment(1);
            return None;
        }
        let from_peer = per_peer.entry(peer).or_insert(0);
        if self.limits.max_per_peer > 0 && *from_peer >= self.limits.max_per_peer {
            self.stats.refused_peer.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(telemetry::CONNECTIONS_REFUSED, "reason" => "max_connections_per_peer")
                .increment(1);
            return None;
        }
        *from_peer += 1;
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(telemetry::CONNECTIONS_OPEN).increment(1.0);
        Some(Admitted {
            connections: self.clone(),
            peer,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let c = &self.connections;
        let mut per_peer = c.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                per_peer.remove(&self.peer);
            }
        }
        c.stats.open.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(telemetry::CONNECTIONS_OPEN).decrement(1.0);
    }
}
