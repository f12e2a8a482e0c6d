//! The gRPC listener's connections, before HTTP/2 sees them: who may open
//! one, how long it may take to speak, and TLS.
//!
//! tonic accepts every TCP connection and waits for its HTTP/2 preface
//! without end, so connections that never speak pile up until the process
//! runs out of descriptors and legitimate clients are refused. Here each
//! accepted connection is first admitted against caps on open connections,
//! per replica and per peer address (so one address cannot take every
//! descriptor), and then must finish its TLS handshake (when TLS is on) and
//! send the HTTP/2 preface and its first SETTINGS frame within the
//! handshake timeout, or it is closed (`handshake`). Only then does it
//! reach tonic. Admission and closing are counted (`stats`, metrics).

mod handshake;
mod tls;

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;

pub use handshake::Guarded;
pub use tls::{Acceptor, acceptor as tls_acceptor};

use crate::config::ConnectionsConfig;
use crate::telemetry::metrics as telemetry;

/// Descriptors kept for what is not a client connection: the database
/// pools, the metrics listener, the log.
const RESERVED_FILES: usize = 256;

/// Raises the process's soft limit of open files to its hard limit (a
/// default soft limit of 1,024 would refuse clients long before memory
/// runs short), logs it, and lowers `--max-connections` below it, so that a
/// full listener refuses at accept instead of failing accepts for lack of
/// descriptors.
pub fn fit_open_files(config: &mut ConnectionsConfig) {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the limit of open files");
            return;
        }
    };
    let fits = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_sub(RESERVED_FILES)
        .max(1);
    if config.max_connections == 0 || config.max_connections > fits {
        tracing::warn!(
            open_files = limit,
            asked = config.max_connections,
            max_connections = fits,
            "--max-connections lowered below the limit of open files"
        );
        config.max_connections = fits;
    }
    tracing::info!(
        open_files = limit,
        max_connections = config.max_connections,
        max_connections_per_peer = config.max_connections_per_peer,
        "limit of open files"
    );
}

/// Idle time before TCP keepalive probes a silent peer.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// How long accepting pauses after it failed (out of descriptors, say):
/// the error would come back at once and spin the loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

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
    connections: Arc<Connections>,
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
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Admitted> {
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

/// The connections of `listener` that were admitted and spoke in time, as
/// tonic's `serve_with_incoming` takes them, until `stopping` turns true.
pub fn incoming(
    listener: TcpListener,
    tls: Option<tls::Acceptor>,
    connections: Arc<Connections>,
    mut stopping: watch::Receiver<bool>,
) -> impl Stream<Item = Result<Guarded, io::Error>> {
    let (ready, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stopping.wait_for(|s| *s) => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed; pausing");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Some(admitted) = connections.admit(peer.ip()) else {
                tracing::debug!(%peer, "connection refused: over the connection cap");
                continue;
            };
            // Small request/response frames must not wait for Nagle's
            // algorithm (40 ms stalls against delayed ACKs); keepalive finds
            // dead peers.
            let _ = stream.set_nodelay(true);
            let _ = SockRef::from(&stream)
                .set_tcp_keepalive(&TcpKeepalive::new().with_time(TCP_KEEPALIVE));
            let (tls, ready, timeout) = (
                tls.clone(),
                ready.clone(),
                connections.limits.handshake_timeout,
            );
            let stats = connections.clone();
            tokio::spawn(async move {
                match handshake::start(stream, tls, timeout, admitted).await {
                    Ok(guarded) => {
                        let _ = ready.send(Ok(guarded));
                    }
                    Err(e) => {
                        if e.kind() == io::ErrorKind::TimedOut {
                            stats.stats.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
                            metrics::counter!(telemetry::HANDSHAKE_TIMEOUTS).increment(1);
                        }
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    }
                }
            });
        }
    });
    UnboundedReceiverStream::new(rx)
}
