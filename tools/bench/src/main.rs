//! `agentry-bench`: drives a running Agentry server through the SDK and raw
//! streams, and reports throughput, latency, database transactions and server
//! memory. See BENCHMARKS.md for the commands and figures. Streams share
//! HTTP/2 connections, 100 per connection, so 10,000 streams need about 100
//! file descriptors on each side.
//!
//! This file parses the command line and dispatches to the mode's module
//! (`heartbeats`, `idle`, `storm`, `available`, `acquire`); `available` and `acquire`
//! share the unary load driver in `driver`. The rest are the parts the modes
//! share: `cli` (flags), `setup` (tenant, keys, manifests), `stream` (raw
//! health streams), `raw` (GetAvailableAgents over bare HTTP/2), `stats`
//! (latencies, percentiles), `pg` (database connection and counters) and
//! `rss` (server memory).

mod acquire;
mod available;
mod cli;
mod driver;
mod heartbeats;
mod idle;
mod pg;
mod raw;
mod rss;
mod setup;
mod stats;
mod storm;
mod stream;

use clap::Parser;

use cli::{Args, Mode};

/// Any error, reported by `main` as it comes.
type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.get());
    }
    runtime.build()?.block_on(run(args))
}

async fn run(args: Args) -> Result<(), Error> {
    let db = pg::connect(&args.database_url).await?;
    match args.mode {
        Mode::Heartbeats {
            agents,
            seconds,
            window,
        } => heartbeats::run(&args, &db, agents, seconds, window).await,
        Mode::Idle { streams, seconds } => idle::run(&args, streams, seconds).await,
        Mode::Storm {
            agents,
            per_connection,
        } => storm::run(&args, &db, agents, per_connection).await,
        Mode::Available { shape, load } => available::run(&args, shape, load).await,
        Mode::Acquire { load, max_workload } => acquire::run(&args, &db, load, max_workload).await,
    }
}
