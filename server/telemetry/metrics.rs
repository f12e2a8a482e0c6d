//! The names of every metric the server exposes, their descriptions, the
//! process's recorder and the Prometheus scrape endpoint.
//!
//! The parts that see an event count it where it happens, with the `metrics`
//! macros and a name from here; gauges are sampled from the parts' own
//! state by `telemetry::sampler` once a second. This file imports nothing
//! of the crate, so every part may use it.
//!
//! The `metrics` recorder is global to the process: every server of a
//! process (tests run several) records into the one recorder, installed by
//! the first server that was given a metrics address. A process normally
//! runs one server, whose figures are then exactly its own.

use std::convert::Infallible;
use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Calls, by `method` (the gRPC path) and `code` (the gRPC status code's name).
pub const RPC_REQUESTS: &str = "agentry_rpc_requests_total";
/// Call latency by `method`: until the last byte of the answer (a stream's end).
pub const RPC_DURATION: &str = "agentry_rpc_duration_seconds";
/// Health streams open on this server.
pub const HEALTH_STREAMS: &str = "agentry_health_streams";
/// Heartbeats received on all health streams.
pub const HEARTBEATS: &str = "agentry_heartbeats_total";
/// Items waiting for a batching writer, by `writer`.
pub const WRITER_QUEUE: &str = "agentry_writer_queue_depth";
/// Items per batch that landed, by `writer`.
pub const WRITER_BATCH_SIZE: &str = "agentry_writer_batch_size";
/// Latency of the batches that landed, by `writer`.
pub const WRITER_BATCH_DURATION: &str = "agentry_writer_batch_duration_seconds";
/// Batches that failed and were retried or failed their callers, by `writer`.
pub const WRITER_FAILURES: &str = "agentry_writer_failures_total";
/// Configurations in the availability view.
pub const VIEW_CONFIGURATIONS: &str = "agentry_view_configurations";
/// Active instances in the availability view.
pub const VIEW_INSTANCES: &str = "agentry_view_instances";
/// Bursts of change notifications applied.
pub const FEED_BURSTS: &str = "agentry_feed_bursts_total";
/// Change notifications applied.
pub const FEED_CHANGES: &str = "agentry_feed_changes_total";
/// From a burst's first notification arriving to every follower having it.
pub const FEED_LAG: &str = "agentry_feed_lag_seconds";
/// Full reloads of the followers (start, or a lost feed connection).
pub const FEED_RESETS: &str = "agentry_feed_resets_total";
/// Database connections by `state` (`in_use`, `idle`).
pub const DB_CONNECTIONS: &str = "agentry_db_pool_connections";
/// Configured maximum of database connections.
pub const DB_CONNECTIONS_MAX: &str = "agentry_db_pool_max_connections";
/// How long taking a connection from the pool took (sampled once a second).
pub const DB_ACQUIRE: &str = "agentry_db_pool_acquire_seconds";
/// Sweeps by `outcome` (`ran`, `skipped`: another replica held the lock, `failed`).
pub const SWEEPS: &str = "agentry_sweeps_total";
/// What sweeps changed, by `change`.
pub const SWEEP_CHANGES: &str = "agentry_sweep_changes_total";
/// 1 while the partition guard holds deactivations back, else 0.
pub const PARTITION_GUARD: &str = "agentry_partition_guard_tripped";
/// Failed authentications (missing, malformed, unknown or revoked keys).
pub const AUTH_FAILURES: &str = "agentry_auth_failures_total";
/// Requests refused by a limit, by `kind`.
pub const LIMITS_HIT: &str = "agentry_limits_hit_total";
/// Times an instance was held out of routing for flapping.
pub const FLAP_HOLDS: &str = "agentry_flap_holds_total";
/// Instances held out of routing for flapping now.
pub const VIEW_HELD_OUT: &str = "agentry_view_instances_held_out";
/// Load reports passed on to routing (changed, or refreshed before going stale).
pub const LOAD_REPORTS: &str = "agentry_load_reports_total";
/// `WatchAvailableAgents` snapshots and resumptions, by `start`.
pub const WATCH_STARTS: &str = "agentry_watch_starts_total";
/// Connections of the gRPC listener admitted and not yet closed.
pub const CONNECTIONS_OPEN: &str = "agentry_connections_open";
/// Connections closed at accept, by `reason` (`max_connections`,
/// `max_connections_per_peer`).
pub const CONNECTIONS_REFUSED: &str = "agentry_connections_refused_total";
/// Connections closed for not finishing TLS and the HTTP/2 preface and
/// SETTINGS within the handshake timeout.
pub const HANDSHAKE_TIMEOUTS: &str = "agentry_connections_handshake_timeouts_total";

/// Histogram buckets of latencies: 0.1 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Histogram buckets of batch sizes, up to the writers' largest batches.
const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder, installed on first use. If another
/// recorder was installed first (a program embedding the server), the
/// handle renders only what reaches ours, and a warning says so.
pub fn recorder() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(WRITER_BATCH_SIZE.into()), SIZE_BUCKETS)
            })
            .expect("bucket lists are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            tracing::warn!(error = %e, "another metrics recorder is installed; the endpoint shows only agentry's own");
        }
        describe();
        handle
    })
}

fn describe() {
    describe_gauge!(
        CONNECTIONS_OPEN,
        "connections of the gRPC listener open now"
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "connections closed at accept by a connection cap, by reason"
    );
    describe_counter!(
        HANDSHAKE_TIMEOUTS,
        "connections closed for not finishing TLS and the HTTP/2 preface in time"
    );
    describe_counter!(RPC_REQUESTS, "gRPC calls by method and status code");
    describe_histogram!(
        RPC_DURATION,
        Unit::Seconds,
        "gRPC call latency by method; streams until they end"
    );
    describe_gauge!(HEALTH_STREAMS, "health streams open on this server");
    describe_counter!(HEARTBEATS, "heartbeats received");
    describe_gauge!(
        WRITER_QUEUE,
        "items waiting for a batching writer (registration, hello, lease)"
    );
    describe_histogram!(WRITER_BATCH_SIZE, "items per batch that landed, by writer");
    describe_histogram!(
        WRITER_BATCH_DURATION,
        Unit::Seconds,
        "latency of batches that landed, by writer"
    );
    describe_counter!(WRITER_FAILURES, "batches that failed, by writer");
    describe_gauge!(
        VIEW_CONFIGURATIONS,
        "configurations in the availability view"
    );
    describe_gauge!(VIEW_INSTANCES, "active instances in the availability view");
    describe_counter!(
        FLAP_HOLDS,
        "times an instance was held out of routing for flapping"
    );
    describe_gauge!(
        VIEW_HELD_OUT,
        "instances held out of routing for flapping now"
    );
    describe_counter!(LOAD_REPORTS, "load reports passed on to routing");
    describe_counter!(FEED_BURSTS, "bursts of change notifications applied");
    describe_counter!(FEED_CHANGES, "change notifications applied");
    describe_histogram!(
        FEED_LAG,
        Unit::Seconds,
        "from a burst's first notification to every follower having it"
    );
    describe_counter!(FEED_RESETS, "full reloads after the feed (re)connected");
    describe_gauge!(
        DB_CONNECTIONS,
        "database connections by state (in_use, idle)"
    );
    describe_gauge!(
        DB_CONNECTIONS_MAX,
        "configured maximum of database connections"
    );
    describe_histogram!(
        DB_ACQUIRE,
        Unit::Seconds,
        "time to take a pooled connection, sampled once a second"
    );
    describe_counter!(SWEEPS, "sweeps by outcome (ran, skipped, failed)");
    describe_counter!(
        SWEEP_CHANGES,
        "what sweeps changed (marked_unknown, deactivated, deleted, leases_expired)"
    );
    describe_gauge!(
        PARTITION_GUARD,
        "1 while the partition guard holds deactivations back"
    );
    describe_counter!(AUTH_FAILURES, "failed authentications");
    describe_counter!(LIMITS_HIT, "requests refused by a limit, by kind");
    describe_counter!(
        WATCH_STARTS,
        "watch starts by kind (snapshot, resumed, resync: a resume refused, lagged: fell behind)"
    );
}

/// An answer of the HTTP listener.
pub type HttpAnswer = hyper::Response<http_body_util::Full<hyper::body::Bytes>>;

/// Endpoints that share the metrics listener (the A2A card endpoint): they
/// are asked first, and the scrape answers whatever they leave. The peer's
/// `SocketAddr` is in the request's extensions. The peer's
/// `SocketAddr` is in the request's extensions.
pub trait HttpRoutes: Send + Sync + 'static {
    /// The answer to a request of `parts`, if it is one of these routes.
    fn answer(
        &self,
        parts: &hyper::http::request::Parts,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = HttpAnswer> + Send>>>;
}

/// Serves `routes`, then the scrape endpoint (`GET` of any other path,
/// Prometheus text format), on `listener` until `stopping` turns true.
pub async fn serve(
    listener: TcpListener,
    mut stopping: watch::Receiver<bool>,
    routes: Option<std::sync::Arc<dyn HttpRoutes>>,
) {
    let handle = recorder();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    continue;
                }
            },
            _ = stopping.wait_for(|s| *s) => return,
        };
        let routes = routes.clone();
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let (mut parts, _) = request.into_parts();
                // The peer, for routes that limit by address.
                parts.extensions.insert(peer);
                let routed = routes.as_ref().and_then(|r| r.answer(&parts));
                async move {
                    if let Some(answer) = routed {
                        return Ok::<_, Infallible>(answer.await);
                    }
                    let response = hyper::Response::builder()
                        .header("content-type", "text/plain; version=0.0.4")
                        .body(http_body_util::Full::new(hyper::body::Bytes::from(
                            handle.render(),
                        )))
                        .expect("static headers are valid");
                    Ok::<_, Infallible>(response)
                }
            });
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            // With a timer, hyper drops a connection whose request headers
            // take longer than 30 s: an idle scraper cannot pile them up.
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(error = %e, "metrics endpoint: connection ended with an error");
            }
        });
    }
}

/// A batch of `items` of `writer` landed after `elapsed`.
pub fn batch_landed(writer: &'static str, items: usize, elapsed: std::time::Duration) {
    metrics::histogram!(WRITER_BATCH_SIZE, "writer" => writer).record(items as f64);
    metrics::histogram!(WRITER_BATCH_DURATION, "writer" => writer).record(elapsed.as_secs_f64());
}

/// A batch of `writer` failed.
pub fn batch_failed(writer: &'static str) {
    metrics::counter!(WRITER_FAILURES, "writer" => writer).increment(1);
}

/// A request was refused by the limit `kind`.
pub fn limit_hit(kind: &'static str) {
    metrics::counter!(LIMITS_HIT, "kind" => kind).increment(1);
}

/// A watch started (or started over) as `start` says.
pub fn watch_started(start: &'static str) {
    metrics::counter!(WATCH_STARTS, "start" => start).increment(1);
}

/// Keeps the recorder's histograms from growing without bound; the
/// sampler calls it with every sample.
pub fn upkeep() {
    recorder().run_upkeep();
}

/// The name of a gRPC status code, as a label.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "Ok",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}
