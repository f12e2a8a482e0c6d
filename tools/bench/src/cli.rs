//! The command line: global options ([`Args`]), the modes ([`Mode`]),
//! what `available` sets up ([`Shape`]) and the unary load shared by
//! `available` and `acquire` ([`Load`]). Kept apart from the modes so that
//! every flag BENCHMARKS.md uses is declared in one place.

use clap::{Parser, Subcommand};

use crate::fleet::Pace;

#[derive(Parser)]
#[command(name = "agentry-bench")]
pub(crate) struct Args {
    /// Server URL.
    #[arg(long, env = "AGENTRY_URL", default_value = "http://127.0.0.1:50051")]
    pub(crate) url: String,
    /// An admin API key (any value for `bare-server` and `storm --bare`).
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
        #[command(flatten)]
        pace: Pace,
        /// Heartbeats carry a load report; each agent's utilization moves by
        /// 0.1 every --move-every heartbeats (and by less than the server
        /// passes on in between), as a busy fleet's would.
        #[arg(long)]
        load_reports: bool,
    },
    /// How long a load report takes to reach routing on another replica:
    /// a fleet streams reports to this server (--url) while a probe agent
    /// there changes its load and a caller on --replica-url polls
    /// GetAvailableAgents with explain until routing ranks the probe by
    /// the new load.
    Propagation {
        /// The other replica (same database).
        #[arg(long)]
        replica_url: String,
        /// Streams of the fleet (agent bench-agent-000).
        #[arg(long, default_value_t = 10_000)]
        agents: usize,
        #[command(flatten)]
        pace: Pace,
        /// How long the probe changes its load, after the blackout (and 10 s
        /// for the blackout to start late).
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// The server's --load-flush-interval (100 ms by default), in ms:
        /// only printed, with the bound it sets.
        #[arg(long, default_value_t = 100)]
        flush_ms: u64,
        /// Pause of the poller between calls, in ms.
        #[arg(long, default_value_t = 5)]
        poll_ms: u64,
        /// How long the server ranks by leases after an instance's first
        /// report (the server's --load-report-blackout): the probe reports
        /// this long before the first sample.
        #[arg(long, default_value_t = 11)]
        blackout_seconds: u64,
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
        /// Against `bare-server`: time the welcomes only (no keys, no
        /// database), the baseline of the same storm.
        #[arg(long)]
        bare: bool,
    },
    /// A fleet at its real pace: all say hello at once, heartbeat at the
    /// server's interval, then all say goodbye at once. Server and
    /// PostgreSQL CPU, transactions and rows written per second at steady
    /// state, RSS per agent, time to welcome all and until all are
    /// inactive, ends lost.
    Fleet {
        #[arg(long, default_value_t = 10_000)]
        agents: usize,
        /// Streams per HTTP/2 connection (1: one connection per agent).
        #[arg(long, default_value_t = 100)]
        per_connection: usize,
        /// The window measured at steady state (after 11 s for the
        /// welcome's counters to land).
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// --heartbeat-ms 0 (the default here): the interval the server's
        /// welcome asks for (10 s against `bare-server`).
        #[command(flatten)]
        pace: Pace,
        /// Heartbeats carry load reports (see `heartbeats --load-reports`).
        #[arg(long)]
        load_reports: bool,
        /// Against `bare-server`: the same fleet on tonic alone.
        #[arg(long)]
        bare: bool,
    },
    /// A fleet over several replicas of one database (--url is the
    /// first, where the tenant is set up); the replica at --kill is killed
    /// with SIGKILL once the fleet heartbeats, and its agents reconnect to
    /// the others: time until all are welcomed again, until no row names
    /// the dead replica, reconnect latency.
    Failover {
        /// Every replica's URL, --url among them.
        #[arg(long, value_delimiter = ',', required = true)]
        replica_urls: Vec<String>,
        /// Index in --replica-urls of the replica to kill.
        #[arg(long, default_value_t = 0)]
        kill: usize,
        /// PID of that replica.
        #[arg(long)]
        kill_pid: u32,
        #[arg(long, default_value_t = 1000)]
        agents_per_replica: usize,
        /// Seconds of steady state measured before the kill.
        #[arg(long, default_value_t = 20)]
        steady: u64,
    },
    /// The baseline server for `storm --bare` and `fleet --bare`: tonic alone, no database.
    BareServer {
        #[arg(long, default_value = "127.0.0.1:50099")]
        listen: std::net::SocketAddr,
    },
    /// Open streams that only say hello; reports server RSS per stream.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        streams: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// WatchAvailableAgents subscribers that read their snapshot and then
    /// nothing, while one large entry (a configuration with one healthy
    /// instance) changes many times: the server's RSS before, at its peak,
    /// after the changes and after the watches are dropped.
    SlowWatch {
        /// Bytes of the configuration's system prompt (at most 32 KiB).
        #[arg(long, default_value_t = 10_000)]
        entry_bytes: usize,
        /// UpdateConfiguration calls, each changing the system prompt.
        #[arg(long, default_value_t = 20_000)]
        changes: usize,
        /// Changes in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Subscribers that stop reading, each on its own connection.
        #[arg(long, default_value_t = 1)]
        watchers: usize,
        /// The watchers read every event (subscribers that keep up, to
        /// compare with).
        #[arg(long)]
        read: bool,
        /// Seconds between dropping the watches and the last RSS reading.
        #[arg(long, default_value_t = 20)]
        after_close: u64,
    },
    /// TCP connections to the gRPC port that never send anything: the
    /// server's RSS per connection, how many it refuses or closes at once
    /// and later, and a health check every second meanwhile.
    Silent {
        #[arg(long, default_value_t = 2_000)]
        connections: usize,
        /// Send the first 12 bytes of the HTTP/2 preface, then nothing.
        #[arg(long)]
        half_preface: bool,
        /// How long the connections are held and watched.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// GetAvailableAgents over a tenant with many registrations.
    Available {
        #[command(flatten)]
        shape: Shape,
        #[command(flatten)]
        load: Load,
        /// The registrations are health streams that heartbeat as --pace
        /// says throughout, first without load reports, then with them: the
        /// calls are measured in both phases, one after the other.
        #[arg(long)]
        fleet: bool,
        #[command(flatten)]
        pace: Pace,
    },
    /// SearchAgents over manifests with skills, beside the same query as
    /// SQL ILIKE, in one run.
    Search {
        #[arg(long, default_value_t = 1000)]
        manifests: usize,
        #[arg(long, default_value_t = 10_000)]
        registrations: usize,
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
