//! Command line and environment configuration.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Agentry: a multi-tenant registry and router for AI agents.
#[derive(Debug, Parser)]
#[command(name = "agentry-server", version)]
pub struct Config {
    /// PostgreSQL URL. The database is created if missing and migrated at start-up.
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/agentry")]
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
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen_addr: ([127, 0, 0, 1], 50051).into(),
            health_check_interval: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
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
