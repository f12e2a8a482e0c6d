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

mod admission;
mod handshake;
mod tls;

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;

pub use admission::{Admitted, ConnectionLimits, ConnectionStats, Connections};
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

/// The connections of `listener` that were admitted and spoke in time, as
/// tonic's `serve_with_incoming` takes them. The listener closes when tonic
/// drops the stream (at shutdown): the stream itself never ends first, or
/// tonic would stop in the middle of its shutdown signal.
pub fn incoming(
    listener: TcpListener,
    tls: Option<tls::Acceptor>,
    connections: Arc<Connections>,
) -> impl Stream<Item = Result<Guarded, io::Error>> {
    let (ready, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = ready.closed() => return,
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
                connections.limits().handshake_timeout,
            );
            let stats = connections.clone();
            tokio::spawn(async move {
                match handshake::start(stream, tls, timeout, admitted).await {
                    Ok(guarded) => {
                        let _ = ready.send(Ok(guarded));
                    }
                    Err(e) => {
                        if e.kind() == io::ErrorKind::TimedOut {
                            stats
                                .stats
                                .handshake_timeouts
                                .fetch_add(1, Ordering::Relaxed);
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
