//! Command line and environment configuration.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Agentry: a multi-tenant registry and router for AI agents.
#[derive(Debug, Parser)]
#[command(name = "agentry-server", version)]
pub struct Config {
    /// PostgreSQL URL. With `--migrate auto` the database is created if
    /// missing and migrated at start-up.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/agentry"
    )]
    pub database_url: String,

    /// Maximum number of pooled database connections.
    #[arg(long, env = "AGENTRY_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,

    /// A direct (session) URL of the same database, for what needs a session
    /// of its own: migrations and the change feed's LISTEN. Set it when
    /// `--database-url` points at a transaction-mode pooler (PgBouncer 1.21+
    /// with `max_prepared_statements`; see the README); default:
    /// `--database-url`.
    #[arg(long, env = "AGENTRY_DIRECT_DATABASE_URL")]
    pub direct_database_url: Option<String>,

    /// Log format.
    #[arg(long, env = "AGENTRY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, in `tracing_subscriber::EnvFilter` syntax.
    #[arg(long, env = "AGENTRY_LOG", default_value = "info,sqlx=warn")]
    pub log_filter: String,

    /// Threads that run the server's tasks; default: one per CPU the process
    /// may use. Set fewer when the server shares the machine's CPUs with
    /// busy neighbours: threads beyond the CPUs it gets only add switching.
    #[arg(long, env = "AGENTRY_WORKER_THREADS")]
    pub worker_threads: Option<std::num::NonZeroUsize>,

    /// What start-up does to the schema: `auto` creates the database if
    /// missing and applies migrations; `check` only verifies that every
    /// migration this binary knows is applied, unchanged; `off` touches
    /// nothing, so the server can run as a role without DDL rights.
    #[arg(long, env = "AGENTRY_MIGRATE", value_enum, default_value_t = MigrateMode::Auto)]
    pub migrate: MigrateMode,

    #[command(flatten)]
    pub serve: ServeConfig,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What the server does once it runs.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Address the gRPC server listens on.
    #[arg(long, env = "AGENTRY_LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen_addr: SocketAddr,

    /// Address of the Prometheus metrics endpoint (`GET /metrics`, plain
    /// HTTP); unset: no endpoint. The Docker image, compose file and
    /// Kubernetes manifests set 0.0.0.0:9090.
    #[arg(long, env = "AGENTRY_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// How often the database is probed for the grpc.health.v1 status.
    #[arg(long, env = "AGENTRY_HEALTH_CHECK_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub health_check_interval: Duration,

    /// How long graceful shutdown waits for in-flight calls before giving up;
    /// below Kubernetes' default 30 s termination grace, so the server exits
    /// by itself.
    #[arg(long, env = "AGENTRY_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    #[command(flatten)]
    pub registry: RegistryConfig,

    #[command(flatten)]
    pub limits: LimitsConfig,

    #[command(flatten)]
    pub tls: TlsConfig,

    #[command(flatten)]
    pub routing: RoutingConfig,

    #[command(flatten)]
    pub connections: ConnectionsConfig,
}

/// What a TCP connection to the gRPC listener may take before and after it
/// speaks. Zero turns a cap off.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ConnectionsConfig {
    /// How long a new connection may take to finish its TLS handshake (with
    /// TLS on) and send the HTTP/2 preface and SETTINGS; past it, it is closed.
    #[arg(long, env = "AGENTRY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// Connections open at once on this server; the next is closed at
    /// accept. Kept below the process's limit of open files (raised to its
    /// hard limit at start-up), which the database pool and the metrics
    /// listener share.
    #[arg(long, env = "AGENTRY_MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,

    /// Connections open at once from one peer address (agents behind one
    /// NAT share theirs: 100 streams per connection make 10,000 connections
    /// a million agents).
    #[arg(
        long,
        env = "AGENTRY_MAX_CONNECTIONS_PER_PEER",
        default_value_t = 10_000
    )]
    pub max_connections_per_peer: usize,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            handshake_timeout: Duration::from_secs(10),
            max_connections: 50_000,
            max_connections_per_peer: 10_000,
        }
    }
}

/// How routing ranks instances: load reports and flap damping (the formula
/// is documented on RoutingService in routing.proto).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct RoutingConfig {
    /// A load report older than this is stale: the instance is ranked by
    /// its open leases until it reports again.
    #[arg(long, env = "AGENTRY_LOAD_REPORT_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub load_report_ttl: Duration,

    /// For this long after an instance's first load report, it is ranked by
    /// its leases: a new instance's idle reports would draw every request.
    #[arg(long, env = "AGENTRY_LOAD_REPORT_BLACKOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub load_report_blackout: Duration,

    /// Health changes within --flap-window past which an instance is held
    /// out of routing as flapping; 0 turns flap damping off.
    #[arg(long, env = "AGENTRY_FLAP_THRESHOLD", default_value_t = 4)]
    pub flap_threshold: u32,

    /// The window in which health changes are counted.
    #[arg(long, env = "AGENTRY_FLAP_WINDOW", default_value = "60s", value_parser = humantime::parse_duration)]
    pub flap_window: Duration,

    /// How long a flapping instance is first held out; doubled each time it
    /// flaps again right after, up to --flap-hold-max.
    #[arg(long, env = "AGENTRY_FLAP_HOLD", default_value = "30s", value_parser = humantime::parse_duration)]
    pub flap_hold: Duration,

    /// The longest hold.
    #[arg(long, env = "AGENTRY_FLAP_HOLD_MAX", default_value = "10m", value_parser = humantime::parse_duration)]
    pub flap_hold_max: Duration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            load_report_ttl: Duration::from_secs(30),
            load_report_blackout: Duration::from_secs(10),
            flap_threshold: 4,
            flap_window: Duration::from_secs(60),
            flap_hold: Duration::from_secs(30),
            flap_hold_max: Duration::from_secs(600),
        }
    }
}

/// TLS of the gRPC listener. With a certificate and key the server speaks
/// only TLS; with a client CA too, only to clients with a certificate that
/// chains to it (mutual TLS).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsConfig {
    /// PEM certificate chain the server presents (with --tls-key).
    #[arg(long, env = "AGENTRY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "AGENTRY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// PEM CA certificates that client certificates must chain to; set, a
    /// client without such a certificate is refused (mutual TLS).
    #[arg(long, env = "AGENTRY_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<std::path::PathBuf>,
}

/// What one caller may take. Zero turns a limit off. The defaults are far
/// above what one well-behaved service or fleet does, and stop a runaway.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitsConfig {
    /// Requests per second of one API key (sustained); stream messages are not requests.
    #[arg(
        long,
        env = "AGENTRY_KEY_REQUESTS_PER_SECOND",
        default_value_t = 20_000
    )]
    pub key_requests_per_second: u32,

    /// Requests one API key may send at once above its rate.
    #[arg(long, env = "AGENTRY_KEY_REQUEST_BURST", default_value_t = 40_000)]
    pub key_request_burst: u32,

    /// Unary calls of one tenant in flight at once on this server.
    #[arg(long, env = "AGENTRY_TENANT_CONCURRENT_CALLS", default_value_t = 2_000)]
    pub tenant_concurrent_calls: u32,

    /// Health streams and watches of one tenant open at once on this server.
    #[arg(long, env = "AGENTRY_TENANT_STREAMS", default_value_t = 50_000)]
    pub tenant_streams: u32,

    /// Streams one HTTP/2 connection may open at once (h2's
    /// `max_concurrent_streams`; the excess is refused by HTTP/2 itself).
    #[arg(long, env = "AGENTRY_CONNECTION_STREAMS", default_value_t = 1_000)]
    pub connection_streams: u32,

    /// Failed authentications per minute from one peer address; past it,
    /// the address is refused for the rest of the minute without a lookup.
    #[arg(long, env = "AGENTRY_AUTH_FAILURES_PER_MINUTE", default_value_t = 120)]
    pub auth_failures_per_minute: u32,

    /// Largest request message the server decodes, in bytes.
    #[arg(long, env = "AGENTRY_MAX_REQUEST_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_request_bytes: usize,

    /// Largest response message the server encodes, in bytes.
    #[arg(long, env = "AGENTRY_MAX_RESPONSE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_response_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            key_requests_per_second: 20_000,
            key_request_burst: 40_000,
            tenant_concurrent_calls: 2_000,
            tenant_streams: 50_000,
            connection_streams: 1_000,
            auth_failures_per_minute: 120,
            max_request_bytes: 4 * 1024 * 1024,
            max_response_bytes: 16 * 1024 * 1024,
        }
    }
}

/// How registrations, health streams and the sweeper behave.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryConfig {
    /// Heartbeat interval the server asks agents for (sent in `Welcome`).
    #[arg(long, env = "AGENTRY_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// Silence after which an instance is marked unknown; after three times this it is deactivated.
    #[arg(long, env = "AGENTRY_STALE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub stale_timeout: Duration,

    /// How long a new health stream may take to send its `Hello`.
    #[arg(long, env = "AGENTRY_HELLO_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub hello_timeout: Duration,

    /// No longer used: heartbeats are not written (the replica's lease
    /// vouches for its streams, see --replica-lease); accepted so that
    /// existing configurations still start.
    #[arg(long, env = "AGENTRY_HEARTBEAT_FLUSH_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat_flush_interval: Duration,

    /// How often this replica publishes the load reports its streams passed
    /// on (one statement for all of them, no row written): the most a
    /// report waits before routing on every replica can hear of it.
    #[arg(long, env = "AGENTRY_LOAD_FLUSH_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub load_flush_interval: Duration,

    /// How long a replica's lease vouches for the streams it holds: a
    /// replica that dies or is cut off has its instances taken out of
    /// routing this long after its last renewal (every third of it).
    #[arg(long, env = "AGENTRY_REPLICA_LEASE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub replica_lease: Duration,

    /// What this replica calls itself; a replica starting under the name of
    /// an earlier one ends that one's lease at once (a restart). Default:
    /// the host name and the listener's port.
    #[arg(long, env = "AGENTRY_REPLICA_NAME")]
    pub replica_name: Option<String>,

    /// Registrations (`Hello`, `RegisterInstance`) that may wait for this
    /// server's hello writer; past it, a registration waits up to
    /// --hello-wait for room, then is answered UNAVAILABLE with a retry
    /// pushback.
    #[arg(long, env = "AGENTRY_HELLO_QUEUE", default_value_t = 10_000)]
    pub hello_queue: usize,

    /// How long a registration past the full --hello-queue waits for room
    /// on its open stream before it is turned away: a fleet that connects
    /// at once waits rather than comes back (below the SDK's 30 s call
    /// timeout, so that its sessions hear the answer).
    #[arg(long, env = "AGENTRY_HELLO_WAIT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub hello_wait: Duration,

    /// How often the background sweeper looks for stale instances.
    #[arg(long, env = "AGENTRY_SWEEP_INTERVAL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub sweep_interval: Duration,

    /// Partition guard: share of a tenant's (or all) active instances whose
    /// deactivation in one sweep is held back as a likely network partition.
    #[arg(long, env = "AGENTRY_PARTITION_GUARD_RATIO", default_value_t = 0.5)]
    pub partition_guard_ratio: f64,

    /// Partition guard: fewest deactivations in one sweep that can trip it.
    #[arg(
        long,
        env = "AGENTRY_PARTITION_GUARD_MIN_INSTANCES",
        default_value_t = 3
    )]
    pub partition_guard_min_instances: i64,

    /// Delete inactive registrations this long after deactivation (kept forever when unset).
    #[arg(long, env = "AGENTRY_REGISTRATION_RETENTION", value_parser = humantime::parse_duration)]
    pub registration_retention: Option<Duration>,

    /// Delete registration events older than this.
    #[arg(long, env = "AGENTRY_EVENT_RETENTION", default_value = "7days", value_parser = humantime::parse_duration)]
    pub event_retention: Duration,

    /// Delete audit events older than this.
    #[arg(long, env = "AGENTRY_AUDIT_RETENTION", default_value = "90days", value_parser = humantime::parse_duration)]
    pub audit_retention: Duration,

    /// Latest changes of watched tenants (all tenants together) that the
    /// server holds for `WatchAvailableAgents`: a watch that falls further
    /// behind, or resumes from further back, is resynced with a snapshot.
    /// Each held change keeps its agent entry (configuration and instance).
    #[arg(long, env = "AGENTRY_WATCH_BUFFER", default_value_t = 16_384)]
    pub watch_buffer: usize,

    /// Bytes of those held changes, all tenants together: the oldest leave
    /// first when their entries together pass it.
    #[arg(long, env = "AGENTRY_WATCH_BUFFER_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub watch_buffer_bytes: usize,

    /// Bytes of events one watch may leave unread; past it, the watch waits
    /// without holding more, and is resynced if the changes it missed have
    /// left the buffer when it reads again.
    #[arg(long, env = "AGENTRY_WATCH_OUTBOX_BYTES", default_value_t = 1024 * 1024)]
    pub watch_outbox_bytes: usize,

    /// Bytes of responses (acks, pushed configurations) an agent may leave
    /// unread on its health stream; past it, the stream ends with
    /// `RESOURCE_EXHAUSTED`.
    #[arg(long, env = "AGENTRY_STREAM_OUTBOX_BYTES", default_value_t = 256 * 1024)]
    pub stream_outbox_bytes: usize,

    /// How long a watch may go without an event before the server sends it
    /// a progress event with the current revision (zero: never).
    #[arg(long, env = "AGENTRY_WATCH_PROGRESS_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub watch_progress_interval: Duration,

    /// Let a registration for an unknown agent_id create a placeholder manifest.
    /// Off by default: otherwise any agent key could add system-wide manifests.
    #[arg(
        long,
        env = "AGENTRY_CREATE_UNKNOWN_MANIFESTS",
        default_value_t = false
    )]
    pub create_unknown_manifests: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            heartbeat_interval: Duration::from_secs(10),
            stale_timeout: Duration::from_secs(60),
            hello_timeout: Duration::from_secs(10),
            heartbeat_flush_interval: Duration::from_secs(1),
            load_flush_interval: Duration::from_millis(100),
            hello_queue: 10_000,
            hello_wait: Duration::from_secs(20),
            replica_lease: Duration::from_secs(10),
            replica_name: None,
            sweep_interval: Duration::from_secs(15),
            partition_guard_ratio: 0.5,
            partition_guard_min_instances: 3,
            registration_retention: None,
            event_retention: Duration::from_secs(7 * 24 * 3600),
            audit_retention: Duration::from_secs(90 * 24 * 3600),
            watch_buffer: 16_384,
            watch_buffer_bytes: 4 * 1024 * 1024,
            watch_outbox_bytes: 1024 * 1024,
            stream_outbox_bytes: 256 * 1024,
            watch_progress_interval: Duration::from_secs(10),
            create_unknown_manifests: false,
        }
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen_addr: ([127, 0, 0, 1], 50051).into(),
            metrics_addr: None,
            health_check_interval: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(20),
            registry: RegistryConfig::default(),
            routing: RoutingConfig::default(),
            limits: LimitsConfig::default(),
            tls: TlsConfig::default(),
            connections: ConnectionsConfig::default(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// What start-up does to the database schema (`--migrate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MigrateMode {
    /// Create the database if missing and apply pending migrations.
    Auto,
    /// Refuse to start unless every known migration is applied unchanged.
    Check,
    /// Neither create the database nor run DDL.
    Off,
}

/// Administrative commands; without one, the server runs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Creates the database if missing, applies the embedded migrations,
    /// prints what it applied and exits (whatever `--migrate` says).
    Migrate,
    /// Asks a running server's `grpc.health.v1` for its status; exits 0 when
    /// SERVING, 1 otherwise (a Docker HEALTHCHECK, a Kubernetes exec probe).
    Health {
        /// Server to ask, `host:port`; default: the port of `--listen-addr`
        /// on loopback (on its own host when that is a specific address).
        #[arg(long)]
        addr: Option<String>,
        /// Health name to check; the empty default is the whole server.
        #[arg(long, default_value = "")]
        service: String,
        /// How long connecting and the call may take together.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Ask over TLS, trusting the CA certificate(s) in this PEM file
        /// (for a server started with --tls-cert).
        #[arg(long)]
        tls_ca: Option<std::path::PathBuf>,
        /// With --tls-ca: the name the server's certificate must carry.
        #[arg(long, default_value = "localhost")]
        tls_domain: String,
    },
    /// Manage API keys directly in the database (bootstrap of the first admin key).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage tenants directly in the database.
    Tenants {
        #[command(subcommand)]
        command: TenantsCommand,
    },
}

/// `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Creates an API key and prints its secret once.
    Create {
        /// Role of the key.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Tenant name or UUID (tenant and agent keys).
        #[arg(long)]
        tenant: Option<String>,
        /// Free-form label.
        #[arg(long, default_value = "")]
        description: String,
    },
}

/// `tenants` subcommands.
#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Creates a tenant and prints its UUID.
    Create {
        /// Unique name (lowercase slug).
        name: String,
    },
}

/// Role of an API key, on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// System-wide operator.
    Admin,
    /// A tenant's own services.
    Tenant,
    /// A running agent.
    Agent,
}
