//! The command line: global options ([`Args`]), the four modes ([`Mode`]),
//! what `available` sets up ([`Shape`]) and the unary load shared by
//! `available` and `acquire` ([`Load`]). Kept apart from the modes so that
//! every flag BENCHMARKS.md uses is declared in one place.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "agentry-bench")]
pub(crate) struct Args {
    /// Server URL.
    #[arg(long, env = "AGENTRY_URL", default_value = "http://127.0.0.1:50051")]
    pub(crate) url: String,
    /// An admin API key.
    #[arg(long, env = "AGENTRY_API_KEY")]
    pub(crate) admin_key: String,
    /// The server's database, read for transaction counts.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/agentry"
    )]
    pub(crate) database_url: String,
    /// PID of the server (default: the process named agentry-server).
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// Threads of the load generator (default: one per CPU). On the
    /// server's machine, fewer leave the server its share of the CPUs.
    #[arg(long)]
    pub(crate) threads: Option<std::num::NonZeroUsize>,
    #[command(subcommand)]
    pub(crate) mode: Mode,
}

#[derive(Subcommand)]
pub(crate) enum Mode {
    /// Streams sending heartbeats as fast as acks come back.
    Heartbeats {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Heartbeats in flight per stream.
        #[arg(long, default_value_t = 8)]
        window: usize,
    },
    /// A fleet that connects at once, then leaves at once: time until all
    /// are welcomed and routable, until all are inactive, and ends lost.
    Storm {
        #[arg(long, default_value_t = 10_000)]
        agents: usize,
        /// Streams per HTTP/2 connection (1: one connection per agent, as
        /// separate agent processes connect).
        #[arg(long, default_value_t = 100)]
        per_connection: usize,
    },
    /// Open streams that only say hello; reports server RSS per stream.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        streams: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// GetAvailableAgents over a tenant with many registrations.
    Available {
        #[command(flatten)]
        shape: Shape,
        #[command(flatten)]
        load: Load,
    },
    /// Acquire + release pairs from concurrent callers.
    Acquire {
        #[command(flatten)]
        load: Load,
        #[arg(long, default_value_t = 50)]
        max_workload: i32,
    },
}

/// What the `available` mode sets up and asks.
#[derive(clap::Args, Clone, Copy)]
pub(crate) struct Shape {
    #[arg(long, default_value_t = 10_000)]
    pub(crate) registrations: usize,
    #[arg(long, default_value_t = 50)]
    pub(crate) configurations: usize,
    /// Agents asked for per call.
    #[arg(long, default_value_t = 10)]
    pub(crate) limit: i32,
    /// Send the calls without the SDK and count the answers' bytes
    /// instead of decoding them: on a machine shared with the server,
    /// decoding costs the load generator about as much CPU as answering
    /// costs the server, so this measures the server rather than the
    /// load generator.
    #[arg(long)]
    pub(crate) raw: bool,
}

/// Concurrent unary callers.
#[derive(clap::Args, Clone, Copy)]
pub(crate) struct Load {
    /// Callers, each with one call in flight; with --rate, the most calls in
    /// flight at once.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// HTTP/2 connections the callers are spread over (one client each).
    #[arg(long, default_value_t = 4)]
    pub(crate) connections: usize,
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u64,
    /// Calls per second to start, whether or not earlier calls have been
    /// answered (open loop, like traffic from many independent callers);
    /// 0: closed loop, each caller starts its next call when the previous
    /// one is answered.
    #[arg(long, default_value_t = 0)]
    pub(crate) rate: u64,
}
