//! `agentry-bench`: drives a running Agentry server through the SDK and raw
//! streams, and reports throughput, latency, database transactions and server
//! memory. See BENCHMARKS.md for the commands and figures. Streams share
//! HTTP/2 connections, 100 per connection, so 10,000 streams need about 100
//! file descriptors on each side.

mod cli;
mod driver;
mod pg;
mod raw;
mod rss;
mod setup;
mod stats;
mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentry_client::{AgentFilter, CreateConfiguration, RegisterInstance, pb};
use clap::Parser;
use pb::health_stream_request::Message as Out;
use pb::health_stream_response::Message as In;

use cli::{Args, Load, Mode};
use pg::{COUNTERS_SETTLE, transactions};
use rss::server_rss_kib;
use setup::{agent_id, setup};
use stats::{Done, report_latencies};
use stream::open_many;

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
        } => heartbeats(&args, &db, agents, seconds, window).await,
        Mode::Idle { streams, seconds } => idle(&args, streams, seconds).await,
        Mode::Available {
            registrations,
            configurations,
            limit,
            raw,
            load,
        } => {
            let shape = Shape {
                registrations,
                configurations,
                limit,
                raw,
            };
            available(&args, shape, load).await
        }
        Mode::Acquire { load, max_workload } => acquire(&args, &db, load, max_workload).await,
    }
}

async fn heartbeats(
    args: &Args,
    db: &sqlx::PgPool,
    agents: usize,
    seconds: u64,
    window: usize,
) -> Result<(), Error> {
    let s = setup(args, 1).await?;
    let streams = open_many(args, &s.agent_key, agents).await?;
    println!("streams: {}", streams.len());
    // A PostgreSQL backend that goes idle publishes its counters up to ten
    // seconds late: let the registrations above land before the window opens.
    tokio::time::sleep(COUNTERS_SETTLE).await;
    let tx0 = transactions(db).await?;
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for mut stream in streams {
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut sent: std::collections::VecDeque<(u64, Instant)> =
                std::collections::VecDeque::new();
            let mut sequence = 0u64;
            loop {
                while sent.len() < window && Instant::now() < until {
                    sequence += 1;
                    let hb = pb::Heartbeat {
                        sequence,
                        health_status: pb::HealthStatus::Healthy.into(),
                        epoch: stream.epoch,
                        ..Default::default()
                    };
                    if stream
                        .tx
                        .send(pb::HealthStreamRequest {
                            message: Some(Out::Heartbeat(hb)),
                        })
                        .await
                        .is_err()
                    {
                        return (latencies, stream);
                    }
                    sent.push_back((sequence, Instant::now()));
                }
                if sent.is_empty() {
                    return (latencies, stream);
                }
                match stream.rx.message().await {
                    Ok(Some(pb::HealthStreamResponse {
                        message: Some(In::Ack(ack)),
                    })) => match sent.pop_front() {
                        // Acks come in order: each answers the oldest heartbeat in flight.
                        Some((seq, at)) if seq == ack.sequence => {
                            latencies
                                .push(u32::try_from(at.elapsed().as_micros()).unwrap_or(u32::MAX));
                        }
                        _ => return (latencies, stream),
                    },
                    Ok(Some(_)) => {}
                    _ => return (latencies, stream),
                }
            }
        });
    }
    let mut all = Vec::new();
    let mut done = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (latencies, stream) = r?;
        all.extend(latencies);
        done.push(stream);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rss = server_rss_kib(args.server_pid).unwrap_or(0);
    // The streams stay open (and quiet) while the window's counters arrive.
    tokio::time::sleep(COUNTERS_SETTLE).await;
    let tx1 = transactions(db).await?;
    let counted = started.elapsed().as_secs_f64();
    println!("heartbeats_acked: {}", all.len());
    println!(
        "heartbeats_acked_per_sec: {:.0}",
        all.len() as f64 / elapsed
    );
    report_latencies("ack_latency", all);
    println!(
        "db_transactions: {} in {counted:.0} s (the window and {} s of quiet streams), {:.1}/s",
        tx1 - tx0,
        COUNTERS_SETTLE.as_secs(),
        (tx1 - tx0) as f64 / counted
    );
    println!("server_rss_kib: {rss}");
    for stream in &done {
        let bye = pb::HealthStreamRequest {
            message: Some(Out::Goodbye(pb::Goodbye {
                reason: "bench done".into(),
            })),
        };
        let _ = stream.tx.send(bye).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

async fn idle(args: &Args, count: usize, seconds: u64) -> Result<(), Error> {
    let s = setup(args, 1).await?;
    let before =
        server_rss_kib(args.server_pid).ok_or("cannot read the server's RSS: pass --server-pid")?;
    let streams = open_many(args, &s.agent_key, count).await?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = server_rss_kib(args.server_pid).unwrap_or(before);
    println!("streams: {}", streams.len());
    println!("server_rss_before_kib: {before}");
    println!("server_rss_after_kib: {after}");
    println!(
        "server_rss_per_stream_kib: {:.2}",
        after.saturating_sub(before) as f64 / streams.len().max(1) as f64
    );
    for stream in &streams {
        let bye = pb::HealthStreamRequest {
            message: Some(Out::Goodbye(pb::Goodbye::default())),
        };
        let _ = stream.tx.send(bye).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

/// What the `available` mode sets up and asks.
struct Shape {
    registrations: usize,
    configurations: usize,
    limit: i32,
    raw: bool,
}

async fn available(args: &Args, shape: Shape, load: Load) -> Result<(), Error> {
    let Shape {
        registrations,
        configurations,
        limit,
        raw,
    } = shape;
    let s = setup(args, configurations).await?;
    for i in 0..configurations {
        s.tenant
            .create_configuration(CreateConfiguration::for_agent(agent_id(i)).max_workload(1000))
            .await?;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..registrations {
        let agent = s.agent.clone();
        tasks.spawn(async move {
            agent
                .register_instance(RegisterInstance::new(
                    format!("bench-{i}"),
                    agent_id(i % configurations),
                ))
                .await
        });
        if tasks.len() >= 64
            && let Some(r) = tasks.join_next().await
        {
            r??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    println!("registrations: {registrations} over {configurations} configurations");
    // Let the view catch up with the registrations.
    loop {
        let seen = s
            .tenant
            .get_available_agents(AgentFilter::new(), 1000)
            .await?
            .len();
        if seen == configurations {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expected = s
        .tenant
        .get_available_agents(AgentFilter::new(), limit)
        .await?
        .len();
    let run = if raw {
        let connections = load.connections(args).await?;
        let request = raw::request(&args.url, &s.tenant_key, limit)?;
        load.run(&connections, move |connection| {
            let request = request.clone();
            async move {
                let bytes = raw::get_available_agents(connection, request).await?;
                if expected > 0 && bytes == 0 {
                    return Err("an empty answer where agents were available".into());
                }
                Ok(Done::Ok)
            }
        })
        .await?
    } else {
        let clients = load.clients(args, &s.tenant_key).await?;
        load.run(&clients, move |client| async move {
            let agents = client
                .get_available_agents(AgentFilter::new(), limit)
                .await?;
            if agents.len() != expected {
                return Err(
                    format!("{} agents answered, {expected} expected", agents.len()).into(),
                );
            }
            Ok(Done::Ok)
        })
        .await?
    };
    println!(
        "available_agents_per_answer: {expected} (limit {limit}, decoded: {})",
        !raw
    );
    println!("available_calls: {}", run.latencies.len());
    println!(
        "available_calls_per_sec: {:.0}",
        run.latencies.len() as f64 / run.elapsed
    );
    report_latencies("available_latency", run.latencies);
    Ok(())
}

async fn acquire(
    args: &Args,
    db: &sqlx::PgPool,
    load: Load,
    max_workload: i32,
) -> Result<(), Error> {
    let s = setup(args, 1).await?;
    let config = s
        .tenant
        .create_configuration(
            CreateConfiguration::for_agent(agent_id(0)).max_workload(max_workload),
        )
        .await?;
    for i in 0..4 {
        s.agent
            .register_instance(RegisterInstance::new(format!("bench-{i}"), agent_id(0)))
            .await?;
    }
    while s
        .tenant
        .get_available_agents(AgentFilter::new(), 1)
        .await?
        .is_empty()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Watch the stored workload while callers race.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (db, stop, id) = (db.clone(), stop.clone(), config.id.clone());
        tokio::spawn(async move {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let w: i32 = sqlx::query_scalar(
                    "SELECT current_workload FROM agent_configurations WHERE id = $1::uuid",
                )
                .bind(&id)
                .fetch_one(&db)
                .await
                .unwrap_or(0);
                peak = peak.max(w);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            peak
        })
    };
    let clients = load.clients(args, &s.tenant_key).await?;
    let run = load
        .run(&clients, |client| async move {
            match client
                .acquire_agent(AgentFilter::new(), Some(Duration::from_secs(60)))
                .await
            {
                Ok(lease) => {
                    client
                        .release_agent(&lease.id, pb::LeaseOutcome::Succeeded)
                        .await?;
                    Ok(Done::Ok)
                }
                Err(agentry_client::Error::ResourceExhausted { .. }) => Ok(Done::Exhausted),
                Err(e) => Err(e.into()),
            }
        })
        .await?;
    let (pairs, exhausted) = (run.latencies.len(), run.exhausted);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = watcher.await?;
    let final_workload = s
        .tenant
        .get_configuration(&config.id)
        .await?
        .current_workload;
    println!("acquire_release_pairs: {pairs}");
    println!(
        "acquire_release_pairs_per_sec: {:.0}",
        pairs as f64 / run.elapsed
    );
    println!("resource_exhausted: {exhausted}");
    println!("peak_workload_seen: {peak} (max_workload {max_workload})");
    println!("final_workload: {final_workload}");
    report_latencies("pair_latency", run.latencies);
    if peak > max_workload || final_workload != 0 {
        return Err("workload exceeded max_workload or leaked".into());
    }
    Ok(())
}
