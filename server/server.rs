//! Wiring: services, `grpc.health.v1`, reflection, graceful shutdown.

use std::future::Future;
use std::time::Duration;

use sqlx::PgPool;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::Status;
use tonic::codec::CompressionEncoding;
use tonic::server::NamedService;
use tonic::transport::Server as TonicServer;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::admin::AdminApi;
use crate::auth::Authenticator;
use crate::config::ServeConfig;
use crate::configurations::ConfigurationApi;
use crate::connections::{self, ConnectionLimits, Connections};
use crate::deadline::Deadlines;
use crate::error::{Error, Result};
use crate::feed::Feed;
use crate::limits::Limits;
use crate::manifests::ManifestApi;
use crate::pb;
use crate::pb::admin_service_server::AdminServiceServer;
use crate::pb::configuration_service_server::ConfigurationServiceServer;
use crate::pb::manifest_service_server::ManifestServiceServer;
use crate::pb::registration_service_server::RegistrationServiceServer;
use crate::pb::routing_service_server::RoutingServiceServer;
use crate::periodic::Ticker;
use crate::registrations::RegistrationApi;
use crate::registrations::hellos::HelloWriter;
use crate::registrations::load_writer::LoadWriter;
use crate::registrations::registry::Registry;
use crate::registrations::replicas::Replica;
use crate::registrations::sessions::Sessions;
use crate::registrations::stream::{HealthStreams, StreamTiming};
use crate::registrations::sweeper::{SweepSettings, Sweeper};
use crate::registrations::writer::RegistrationWriter;
use crate::routing::expiry::Expiry;
use crate::routing::view::View;
use crate::routing::writer::LeaseWriter;
use crate::routing::{RoutingApi, WatchSettings};
use crate::telemetry::{self, access::Telemetry};

/// How long shutdown tries to write the streams' last state changes.
const FINAL_WRITE: Duration = Duration::from_secs(5);

/// How often the view ranks again what time changed (reports gone stale,
/// blackouts and flap holds over).
const VIEW_TICK: Duration = Duration::from_millis(200);

/// The `grpc.health.v1` name of the process alone: SERVING from start-up
/// until the process exits, whatever the database does, so that a liveness
/// probe restarts only a server that no longer answers.
pub const LIVENESS: &str = "liveness";

/// The readiness name of the whole server, the one a load balancer probes:
/// SERVING from the availability view's first load until shutdown, whatever
/// the database does. A replica whose database is away still routes from
/// its view and holds its health streams, and the database is every
/// replica's: following it here would take every replica out at once and
/// turn a database blip into a routing outage.
pub const READINESS: &str = "";

/// The readiness names of the services whose calls need the database
/// (every one has some: routing's leases, registration's hellos), SERVING
/// exactly while the database answers and the server is not shutting down.
pub const DATABASE_NAMES: &[&str] = &[
    <ManifestServiceServer<ManifestApi> as NamedService>::NAME,
    <ConfigurationServiceServer<ConfigurationApi> as NamedService>::NAME,
    <RegistrationServiceServer<RegistrationApi> as NamedService>::NAME,
    <RoutingServiceServer<RoutingApi> as NamedService>::NAME,
    <AdminServiceServer<AdminApi> as NamedService>::NAME,
];

/// Serves the API on `listener` until `shutdown` resolves. See [`Server::run`].
pub async fn serve(
    listener: TcpListener,
    pool: PgPool,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    Server::new(pool, config).run(listener, shutdown).await
}

/// A configured server, before it runs: its parts, built and wired here.
#[derive(Debug)]
pub struct Server {
    pool: PgPool,
    config: ServeConfig,
    auth: Authenticator,
    sessions: Arc<Sessions>,
    view: Arc<View>,
    leases: Arc<LeaseWriter>,
    replica: Arc<Replica>,
    writer: Arc<RegistrationWriter>,
    loads: Arc<LoadWriter>,
    hellos: Arc<HelloWriter>,
    sweeper: Arc<Sweeper>,
    connections: Arc<Connections>,
    /// A direct pool for the change feed's LISTEN (behind a pooler).
    feed_pool: Option<PgPool>,
}

impl Server {
    /// A server over `pool`.
    pub fn new(pool: PgPool, config: ServeConfig) -> Self {
        let sessions = Arc::new(Sessions::default());
        let view = Arc::new(
            View::new(
                config.registry.watch_buffer,
                config.registry.watch_buffer_bytes,
            )
            .with_routing(config.routing),
        );
        let replica = Arc::new(Replica::new(
            pool.clone(),
            config
                .registry
                .replica_name
                .clone()
                .unwrap_or_else(|| default_replica_name(config.listen_addr)),
            config.registry.replica_lease,
        ));
        let sweeper = Sweeper::new(
            pool.clone(),
            SweepSettings::from(&config.registry),
            Arc::new(Expiry),
        );
        Server {
            auth: Authenticator::new(pool.clone(), Arc::new(Limits::new(&config.limits))),
            writer: Arc::new(RegistrationWriter::new(sessions.clone(), view.clone())),
            loads: Arc::new(LoadWriter::new(config.registry.load_flush_interval)),
            hellos: Arc::new(HelloWriter::new(
                config.registry.create_unknown_manifests,
                replica.id(),
                config.registry.hello_queue,
                config.registry.hello_wait,
            )),
            view,
            leases: Arc::default(),
            replica,
            sweeper: Arc::new(sweeper),
            connections: Connections::new(ConnectionLimits {
                handshake_timeout: config.connections.handshake_timeout,
                max_connections: config.connections.max_connections,
                max_per_peer: config.connections.max_connections_per_peer,
            }),
            sessions,
            pool,
            config,
            feed_pool: None,
        }
    }

    /// Listens for changes on `direct`, a session connection, instead of
    /// the main pool (which may go through a transaction-mode pooler).
    pub fn with_feed_pool(mut self, direct: Option<PgPool>) -> Self {
        self.feed_pool = direct;
        self
    }

    /// The health streams this server holds, and their counters.
    pub fn sessions(&self) -> Arc<Sessions> {
        self.sessions.clone()
    }

    /// The hello writer of this server, and its counters.
    pub fn hellos(&self) -> Arc<HelloWriter> {
        self.hellos.clone()
    }

    /// The registration writer of this server, and its counters.
    pub fn registration_writer(&self) -> Arc<RegistrationWriter> {
        self.writer.clone()
    }

    /// The load writer of this server, and its counters.
    pub fn loads(&self) -> Arc<LoadWriter> {
        self.loads.clone()
    }

    /// The lease writer of this server, and its counters.
    pub fn leases(&self) -> Arc<LeaseWriter> {
        self.leases.clone()
    }

    /// The connections of this server's listener, and their counters.
    pub fn connections(&self) -> Arc<Connections> {
        self.connections.clone()
    }

    /// Serves the API on `listener` until `shutdown` resolves, then drains:
    /// health turns NOT_SERVING, health streams are told to drain and closed,
    /// heartbeat times are flushed, new connections are refused, and in-flight
    /// calls get up to `shutdown_grace` to finish.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let Server {
            pool,
            config,
            auth,
            sessions,
            view,
            leases,
            replica,
            writer,
            loads,
            hellos,
            sweeper,
            connections,
            feed_pool,
        } = self;
        let registry = &config.registry;
        let (reporter, health_service) = tonic_health::server::health_reporter();
        for name in DATABASE_NAMES.iter().chain([&LIVENESS]) {
            reporter
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        // Until the view has loaded, routing would answer from an empty one.
        reporter
            .set_service_status(READINESS, ServingStatus::NotServing)
            .await;
        let (stopping_tx, stopping) = watch::channel(false);
        // Before the parts start, so that the recorder sees their first counts.
        if let Some(addr) = config.metrics_addr {
            let sampled = telemetry::sampler::Sampled {
                pool: pool.clone(),
                sessions: sessions.clone(),
                view: view.clone(),
                writer: writer.clone(),
                hellos: hellos.clone(),
                leases: leases.clone(),
            };
            let cards = crate::configurations::CardEndpoint::new(auth.clone(), pool.clone());
            telemetry::start(addr, sampled, Some(Arc::new(cards)), stopping.clone()).await?;
        }
        // Before the feed loads and before any stream registers: the view's
        // first snapshot already has the rows of an earlier process of this
        // name taken over, and the rows our streams write name a lease every
        // view knows (the feed delivers in commit order). A database away at
        // start-up is retried by the renewals.
        match tokio::time::timeout(replica.lease(), replica.start()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot take this replica's lease yet; retrying")
            }
            Err(_) => tracing::warn!("taking this replica's lease timed out; retrying"),
        }
        let feed = Feed::new(pool.clone(), feed_pool)
            .with(view.clone())
            .with(Arc::new(auth.clone()))
            .with(sessions.clone());
        let background = [
            tokio::spawn(watch_database(
                pool.clone(),
                reporter.clone(),
                config.health_check_interval,
                stopping.clone(),
            )),
            tokio::spawn({
                let (replica, sessions, stopping) =
                    (replica.clone(), sessions.clone(), stopping.clone());
                async move {
                    replica
                        .run(stopping, || {
                            sessions.drain_all(
                                "this replica's lease was taken over",
                                &Status::from(Error::Unavailable(
                                    "this replica lost its lease; reconnect".into(),
                                )),
                            );
                        })
                        .await;
                }
            }),
            tokio::spawn({
                let (sweeper, interval, stopping) =
                    (sweeper.clone(), registry.sweep_interval, stopping.clone());
                async move { sweeper.run(interval, stopping).await }
            }),
            tokio::spawn(feed.run(stopping.clone())),
            tokio::spawn({
                let (auth, stopping) = (auth.clone(), stopping.clone());
                async move {
                    let mut ticker = Ticker::after(Duration::from_secs(60), stopping);
                    while ticker.tick().await {
                        auth.limits().shrink();
                    }
                }
            }),
            tokio::spawn({
                let (leases, pool) = (leases.clone(), pool.clone());
                async move { leases.run(pool).await }
            }),
            // Reports are worth something only for seconds: what is queued at
            // shutdown is not published (the agents report to the next replica).
            tokio::spawn({
                let (loads, pool) = (loads.clone(), pool.clone());
                async move { loads.run(pool).await }
            }),
            tokio::spawn({
                // Load reports going stale, blackouts and flap holds ending.
                let (view, stopping) = (view.clone(), stopping.clone());
                async move {
                    let mut ticker = Ticker::after(VIEW_TICK, stopping);
                    while ticker.tick().await {
                        view.tick(chrono::Utc::now());
                    }
                }
            }),
        ];
        let hellos_task = tokio::spawn({
            let (hellos, pool) = (hellos.clone(), pool.clone());
            async move { hellos.run(pool).await }
        });
        // Not aborted with the others: at the end it writes what the streams left.
        let writer_task = tokio::spawn({
            let (writer, pool) = (writer.clone(), pool.clone());
            async move { writer.run(pool).await }
        });
        // Routing reads need the view: give its first load a moment before
        // serving. Readiness turns SERVING once, when it has loaded (here, or
        // later, from a task of its own), and never before.
        if tokio::time::timeout(Duration::from_secs(10), view.ready())
            .await
            .is_err()
        {
            tracing::warn!(
                "availability view not loaded yet; routing answers from an empty view, and readiness is NOT_SERVING, until it is"
            );
            let (view, reporter, mut stopping) = (view.clone(), reporter.clone(), stopping.clone());
            tokio::spawn(async move {
                let loaded = tokio::select! {
                    () = view.ready() => true,
                    _ = stopping.wait_for(|s| *s) => false,
                };
                if loaded {
                    reporter
                        .set_service_status(READINESS, ServingStatus::Serving)
                        .await;
                }
            });
        } else {
            reporter
                .set_service_status(READINESS, ServingStatus::Serving)
                .await;
        }

        let registrar = Registry::new(pool.clone(), sessions.clone(), hellos.clone());
        let streams = HealthStreams::new(
            registrar.clone(),
            sessions.clone(),
            writer.clone(),
            loads.clone(),
            StreamTiming {
                hello_timeout: registry.hello_timeout,
                heartbeat_interval: registry.heartbeat_interval,
                stale_timeout: registry.stale_timeout,
                load_refresh: config.routing.load_report_ttl / 3,
                outbox_bytes: registry.stream_outbox_bytes,
            },
        );
        let registrations = RegistrationApi::new(
            auth.clone(),
            pool.clone(),
            registrar,
            streams,
            sweeper.clone(),
        );

        // Both reflection versions: grpcurl 1.8 only speaks v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_error = |e| Error::Internal(format!("reflection: {e}"));
        let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
        let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;

        let (max_request, max_response) = (
            config.limits.max_request_bytes,
            config.limits.max_response_bytes,
        );
        // Every service with the configured message sizes. Each takes gzip
        // requests, and compresses answers for the callers that accept gzip
        // (tonic checks `grpc-accept-encoding`).
        macro_rules! compressed {
            ($service:expr) => {
                $service
                    .accept_compressed(CompressionEncoding::Gzip)
                    .send_compressed(CompressionEncoding::Gzip)
            };
        }
        macro_rules! limited {
            ($service:expr) => {
                compressed!($service)
                    .max_decoding_message_size(max_request)
                    .max_encoding_message_size(max_response)
            };
        }
        let tls = connections::tls_acceptor(&config.tls)?;
        let router = TonicServer::builder()
            .max_concurrent_streams(
                (config.limits.connection_streams > 0).then_some(config.limits.connection_streams),
            )
            .layer(Telemetry)
            .layer(Deadlines)
            .add_service(compressed!(health_service))
            .add_service(compressed!(reflection_v1))
            .add_service(compressed!(reflection_v1alpha))
            .add_service(limited!(ManifestServiceServer::new(ManifestApi::new(
                auth.clone(),
                pool.clone(),
            ))))
            .add_service(limited!(ConfigurationServiceServer::new(
                ConfigurationApi::new(auth.clone(), pool.clone(),)
            )))
            .add_service(limited!(RegistrationServiceServer::new(registrations)))
            .add_service(limited!(RoutingServiceServer::new(RoutingApi::new(
                auth.clone(),
                pool.clone(),
                view.clone(),
                leases.clone(),
                stopping.clone(),
                WatchSettings {
                    progress: registry.watch_progress_interval,
                    outbox_bytes: registry.watch_outbox_bytes,
                },
            ))))
            .add_service(limited!(AdminServiceServer::new(AdminApi::new(
                auth,
                pool.clone()
            ))));

        let signal = {
            let reporter = reporter.clone();
            let sessions = sessions.clone();
            async move {
                shutdown.await;
                // Stop the checker first so it cannot flip health back to SERVING.
                let _ = stopping_tx.send(true);
                set_health(&reporter, ServingStatus::NotServing).await;
                let streams = sessions.len();
                sessions.drain_all(
                    "server shutting down",
                    &Status::from(Error::Unavailable("server shutting down; reconnect".into())),
                );
                tracing::info!(
                    streams,
                    "shutting down: health is NOT_SERVING, streams drained, finishing in-flight calls"
                );
            }
        };
        match listener.local_addr() {
            Ok(addr) => tracing::info!(%addr, "serving gRPC"),
            Err(e) => tracing::info!(error = %e, "serving gRPC (address unknown)"),
        }
        let incoming = connections::incoming(listener, tls, connections);
        let server = router.serve_with_incoming_shutdown(incoming, signal);
        let grace = {
            let mut stopping = stopping.clone();
            async move {
                let _ = stopping.wait_for(|s| *s).await;
                tokio::time::sleep(config.shutdown_grace).await;
            }
        };
        let result = tokio::select! {
            result = server => result.map_err(|e| Error::Internal(format!("transport: {e}"))),
            () = grace => {
                tracing::warn!(grace = ?config.shutdown_grace, "calls still running after the shutdown grace period; stopping anyway");
                Ok(())
            }
        };
        for task in background {
            task.abort();
        }
        hellos_task.abort();
        // The ends of the streams that closed, with when each last heard
        // from its agent. Session tasks queue their end before they leave the map; then the
        // writer writes everything queued and returns.
        let until = tokio::time::Instant::now() + FINAL_WRITE;
        while !sessions.is_empty() && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        writer.close();
        let mut writer_task = writer_task;
        if tokio::time::timeout_at(until, &mut writer_task)
            .await
            .is_err()
        {
            writer_task.abort();
            tracing::warn!(
                changes = writer.unwritten(),
                "registration changes not written at shutdown; the sweep will catch up"
            );
        }
        // The streams' ends are written: what still names this replica
        // (ends not written in time) is taken over now, not at the lease's end.
        match replica.release().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                instances = n,
                "instances whose stream end was not written taken over at shutdown"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot end this replica's lease; it expires by itself")
            }
        }
        tracing::info!("server stopped");
        result
    }
}

/// Sets every readiness name (not [`LIVENESS`]) to `status`.
async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    for name in DATABASE_NAMES.iter().chain([&READINESS]) {
        reporter.set_service_status(*name, status).await;
    }
}

/// Keeps the [`DATABASE_NAMES`] SERVING exactly while the database answers,
/// whatever [`READINESS`] says.
async fn watch_database(
    pool: PgPool,
    reporter: HealthReporter,
    interval: Duration,
    stopping: watch::Receiver<bool>,
) {
    let mut healthy = true;
    let mut ticker = Ticker::now(interval, stopping);
    while ticker.tick().await {
        let probe = tokio::time::timeout(
            interval.max(Duration::from_secs(1)),
            sqlx::query("SELECT 1").execute(&pool),
        )
        .await;
        let ok = matches!(probe, Ok(Ok(_)));
        if ticker.stopping() {
            return;
        }
        if ok != healthy {
            healthy = ok;
            if ok {
                tracing::info!("database reachable again: its services SERVING");
            } else {
                tracing::warn!(error = ?probe.map(|r| r.err()), "database unreachable: its services NOT_SERVING; readiness (\"\") stays SERVING");
            }
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for name in DATABASE_NAMES {
                reporter.set_service_status(*name, status).await;
            }
        }
    }
}

/// What a replica calls itself unless `--replica-name` says: the host and
/// the listener's port, the same across a restart of the same process.
fn default_replica_name(listen: std::net::SocketAddr) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", listen.port())
}
