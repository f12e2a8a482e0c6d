//! `agentry-bench`: drives a running Agentry server through the SDK and raw
//! streams, and reports throughput, latency, database transactions and server
//! memory. See BENCHMARKS.md for the commands and figures. Streams share
//! HTTP/2 connections, 100 per connection, so 10,000 streams need about 100
//! file descriptors on each side.
//!
//! This file parses the command line and dispatches to the mode's module
//! (`heartbeats`, `fleet` in `scale`, `failover`, `propagation`, `idle`, `storm`, `available`, `search`,
//! `acquire`, and the hostile clients `slow_watch` and `silent`);
//! `available`, `search` and `acquire` share the unary load driver in
//! `driver`. The rest are the parts the modes share: `cli`
//! (flags), `setup` (tenant, keys, manifests), `stream` (raw health
//! streams), `fleet` (streams heartbeating with or without load reports),
//! `raw` (GetAvailableAgents over bare HTTP/2), `stats`
//! (latencies, percentiles), `pg` (database connection and counters) and
//! `rss` (server memory and CPU).

mod acquire;
mod available;
mod bare;
mod cli;
mod driver;
mod failover;
mod fleet;
mod heartbeats;
mod idle;
mod pg;
mod propagation;
mod raw;
mod rss;
mod scale;
mod search;
mod setup;
mod silent;
mod slow_watch;
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
    // The baseline modes have no database.
    let db = || pg::connect(&args.database_url);
    match args.mode {
        Mode::Heartbeats {
            agents,
            seconds,
            pace,
            load_reports,
        } => heartbeats::run(&args, &db().await?, agents, seconds, pace, load_reports).await,
        Mode::Propagation {
            ref replica_url,
            agents,
            pace,
            seconds,
            flush_ms,
            poll_ms,
            blackout_seconds,
        } => {
            let probe = propagation::Probe {
                seconds,
                flush: std::time::Duration::from_millis(flush_ms),
                poll: std::time::Duration::from_millis(poll_ms),
                blackout: std::time::Duration::from_secs(blackout_seconds),
            };
            propagation::run(&args, replica_url, agents, pace, probe).await
        }
        Mode::Idle { streams, seconds } => idle::run(&args, streams, seconds).await,
        Mode::Storm {
            agents,
            per_connection,
            bare: false,
        } => storm::run(&args, &db().await?, agents, per_connection).await,
        Mode::Storm {
            agents,
            per_connection,
            bare: true,
        } => storm::run_bare(&args, agents, per_connection).await,
        Mode::Fleet {
            agents,
            per_connection,
            seconds,
            pace,
            load_reports,
            bare,
        } => {
            let f = scale::Fleet {
                agents,
                per_connection,
                seconds,
                pace,
                load_reports,
            };
            match bare {
                false => scale::run(&args, Some(&db().await?), f).await,
                true => scale::run(&args, None, f).await,
            }
        }
        Mode::Failover {
            ref replica_urls,
            kill,
            kill_pid,
            agents_per_replica,
            steady,
        } => {
            let f = failover::Failover {
                urls: replica_urls.clone(),
                kill,
                kill_pid,
                per_replica: agents_per_replica,
                steady,
            };
            failover::run(&args, &db().await?, f).await
        }
        Mode::BareServer { listen } => bare::run(listen).await,
        Mode::Available {
            shape,
            load,
            fleet: false,
            ..
        } => available::run(&args, shape, load).await,
        Mode::Available {
            shape,
            load,
            fleet: true,
            pace,
        } => available::run_with_fleet(&args, shape, load, pace).await,
        Mode::Search {
            manifests,
            registrations,
            load,
        } => search::run(&args, &args.database_url, manifests, registrations, load).await,
        Mode::Acquire { load, max_workload } => {
            acquire::run(&args, &db().await?, load, max_workload).await
        }
        Mode::SlowWatch {
            entry_bytes,
            changes,
            concurrency,
            watchers,
            read,
            after_close,
        } => {
            let o = slow_watch::SlowWatch {
                entry_bytes,
                changes,
                concurrency,
                watchers,
                read,
                after_close,
            };
            slow_watch::run(&args, o).await
        }
        Mode::Silent {
            connections,
            half_preface,
            seconds,
        } => silent::run(&args, connections, half_preface, seconds).await,
    }
}
