//! What the server tells its operators: Prometheus metrics (`metrics`: the
//! names, the recorder and the scrape endpoint; `sampler`: the gauges read
//! from the parts once a second) and the layer around every call
//! (`access`: request ids, the RPC span, one access line per call, the
//! per-method counts and latencies).

pub mod access;
pub mod metrics;
pub mod sampler;

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// Starts the metrics endpoint on `addr` (after `routes`, the endpoints
/// that share its listener) and the sampler of `sampled`;
/// both stop when `stopping` turns true (or its sender is gone). Returns
/// the endpoint's bound address (`addr` may have port 0).
pub async fn start(
    addr: SocketAddr,
    sampled: sampler::Sampled,
    routes: Option<std::sync::Arc<dyn metrics::HttpRoutes>>,
    stopping: watch::Receiver<bool>,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        Error::Internal(format!(
            "cannot listen on {addr} for metrics: {e}. Choose another --metrics-addr / AGENTRY_METRICS_ADDR"
        ))
    })?;
    let bound = listener.local_addr().unwrap_or(addr);
    metrics::recorder();
    tokio::spawn(metrics::serve(listener, stopping.clone(), routes));
    tokio::spawn(sampled.run(stopping));
    tracing::info!(addr = %bound, "serving metrics");
    Ok(bound)
}
