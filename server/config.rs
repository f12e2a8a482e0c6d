//! Command line and environment configuration.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Agentry: a multi-tenant registry and router for AI agents.
#[derive(Debug, Parser)]
#[command(name = "agentry-server", version)]
pub struct Config {
    /// PostgreSQL URL. The database is created if missing and migrated at start-up.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/agentry"
    )]
    pub database_url: String,

    /// Maximum number of pooled database connections.
    #[arg(long, env = "AGENTRY_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,

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

    /// How often the database is probed for the grpc.health.v1 status.
    #[arg(long, env = "AGENTRY_HEALTH_CHECK_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub health_check_interval: Duration,

    /// How long graceful shutdown waits for in-flight calls before giving up.
    #[arg(long, env = "AGENTRY_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    #[command(flatten)]
    pub registry: RegistryConfig,
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

    /// How often heartbeat times are written to the database, in one statement for all streams.
    #[arg(long, env = "AGENTRY_HEARTBEAT_FLUSH_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat_flush_interval: Duration,

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

    /// Changes a `WatchAvailableAgents` subscriber may fall behind before it is resynced.
    #[arg(long, env = "AGENTRY_WATCH_BUFFER", default_value_t = 4096)]
    pub watch_buffer: usize,

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
            sweep_interval: Duration::from_secs(15),
            partition_guard_ratio: 0.5,
            partition_guard_min_instances: 3,
            registration_retention: None,
            event_retention: Duration::from_secs(7 * 24 * 3600),
            watch_buffer: 4096,
            create_unknown_manifests: false,
        }
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen_addr: ([127, 0, 0, 1], 50051).into(),
            health_check_interval: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            registry: RegistryConfig::default(),
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

/// Administrative commands; without one, the server runs.
#[derive(Debug, Subcommand)]
pub enum Command {
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
