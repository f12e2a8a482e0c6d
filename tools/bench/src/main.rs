//! `agentry-bench`: drives a running Agentry server through the SDK and raw
//! streams, and reports throughput, latency, database transactions and server
//! memory. See BENCHMARKS.md for the commands and figures. Streams share
//! HTTP/2 connections, 100 per connection, so 10,000 streams need about 100
//! file descriptors on each side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentry_client::{
    AgentFilter, Client, CreateApiKey, CreateConfiguration, CreateManifest, RegisterInstance, pb,
};
use clap::{Parser, Subcommand};
use pb::health_stream_request::Message as Out;
use pb::health_stream_response::Message as In;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How long PostgreSQL may take to publish an idle backend's counters.
const COUNTERS_SETTLE: Duration = Duration::from_secs(11);

#[derive(Parser)]
#[command(name = "agentry-bench")]
struct Args {
    /// Server URL.
    #[arg(long, env = "AGENTRY_URL", default_value = "http://127.0.0.1:50051")]
    url: String,
    /// An admin API key.
    #[arg(long, env = "AGENTRY_API_KEY")]
    admin_key: String,
    /// The server's database, read for transaction counts.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/agentry"
    )]
    database_url: String,
    /// PID of the server (default: the process named agentry-server).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Threads of the load generator (default: one per CPU). On the
    /// server's machine, fewer leave the server its share of the CPUs.
    #[arg(long)]
    threads: Option<std::num::NonZeroUsize>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
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
    /// Open streams that only say hello; reports server RSS per stream.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        streams: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// GetAvailableAgents over a tenant with many registrations.
    Available {
        #[arg(long, default_value_t = 10_000)]
        registrations: usize,
        #[arg(long, default_value_t = 50)]
        configurations: usize,
        /// Agents asked for per call.
        #[arg(long, default_value_t = 10)]
        limit: i32,
        /// Send the calls without the SDK and count the answers' bytes
        /// instead of decoding them: on a machine shared with the server,
        /// decoding costs the load generator about as much CPU as answering
        /// costs the server, so this measures the server rather than the
        /// load generator.
        #[arg(long)]
        raw: bool,
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

/// Concurrent unary callers.
#[derive(clap::Args, Clone, Copy)]
struct Load {
    /// Callers, each with one call in flight; with --rate, the most calls in
    /// flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the callers are spread over (one client each).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Calls per second to start, whether or not earlier calls have been
    /// answered (open loop, like traffic from many independent callers);
    /// 0: closed loop, each caller starts its next call when the previous
    /// one is answered.
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

/// What one caller's call came to.
enum Done {
    /// Served.
    Ok,
    /// Refused with RESOURCE_EXHAUSTED (counted, not an error).
    Exhausted,
}

/// Latencies (µs) of the served calls, and how many were refused as exhausted.
#[derive(Default)]
struct Run {
    latencies: Vec<u32>,
    exhausted: u64,
    elapsed: f64,
}

impl Run {
    fn add(&mut self, done: Done, latency: Duration) {
        match done {
            Done::Ok => self
                .latencies
                .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX)),
            Done::Exhausted => self.exhausted += 1,
        }
    }

    fn merge(&mut self, other: Run) {
        self.latencies.extend(other.latencies);
        self.exhausted += other.exhausted;
    }
}

impl Load {
    /// Runs `call` over `clients` for `seconds`: from `concurrency` callers,
    /// or at `rate` calls per second.
    async fn run<C, F, Fut>(&self, clients: &[C], call: F) -> Result<Run, Error>
    where
        C: Clone + Send + 'static,
        F: Fn(C) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Result<Done, Error>> + Send + 'static,
    {
        let started = Instant::now();
        let until = started + Duration::from_secs(self.seconds);
        let mut run = if self.rate > 0 {
            self.open_loop(clients, call, started, until).await?
        } else {
            self.closed_loop(clients, call, until).await?
        };
        run.elapsed = started.elapsed().as_secs_f64();
        Ok(run)
    }

    async fn closed_loop<C, F, Fut>(
        &self,
        clients: &[C],
        call: F,
        until: Instant,
    ) -> Result<Run, Error>
    where
        C: Clone + Send + 'static,
        F: Fn(C) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Result<Done, Error>> + Send + 'static,
    {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..self.concurrency.max(1) {
            let (client, call) = (clients[i % clients.len()].clone(), call.clone());
            tasks.spawn(async move {
                let mut run = Run::default();
                loop {
                    let at = Instant::now();
                    if at >= until {
                        break;
                    }
                    let done = call(client.clone()).await?;
                    run.add(done, at.elapsed());
                }
                Ok::<_, Error>(run)
            });
        }
        let mut run = Run::default();
        while let Some(r) = tasks.join_next().await {
            run.merge(r??);
        }
        Ok(run)
    }

    /// A pacing thread starts each call at its due time (within the
    /// ~50 µs a thread's sleep takes; tokio's millisecond timers would start
    /// them in bursts, queueing calls behind each other in the load generator).
    /// A call's latency counts from its start, so a wait for one of the
    /// `concurrency` slots counts.
    async fn open_loop<C, F, Fut>(
        &self,
        clients: &[C],
        call: F,
        started: Instant,
        until: Instant,
    ) -> Result<Run, Error>
    where
        C: Clone + Send + 'static,
        F: Fn(C) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Result<Done, Error>> + Send + 'static,
    {
        let slots = Arc::new(tokio::sync::Semaphore::new(self.concurrency.max(1)));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (clients, rate) = (clients.to_vec(), self.rate as f64);
        let runtime = tokio::runtime::Handle::current();
        let pacer = tokio::task::spawn_blocking(move || {
            let mut started_calls = 0u64;
            loop {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                let due = (now - started).as_secs_f64() * rate;
                while (started_calls as f64) < due {
                    let client = clients[started_calls as usize % clients.len()].clone();
                    let (call, slots, tx) = (call.clone(), slots.clone(), tx.clone());
                    runtime.spawn(async move {
                        let result = match slots.acquire_owned().await {
                            Ok(_slot) => call(client).await.map(|done| (done, now.elapsed())),
                            Err(e) => Err(e.into()),
                        };
                        // The receiver outlives every sender but the ones sent with.
                        let _ = tx.send(result);
                    });
                    started_calls += 1;
                }
                let next = started + Duration::from_secs_f64((started_calls as f64 + 1.0) / rate);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        pacer.await?;
        let mut run = Run::default();
        while let Some(result) = rx.recv().await {
            let (done, latency) = result?;
            run.add(done, latency);
        }
        Ok(run)
    }

    /// One bare HTTP/2 connection per `connections`.
    async fn connections(&self, args: &Args) -> Result<Vec<raw::Connection>, Error> {
        let mut connections = Vec::new();
        for _ in 0..self.connections.max(1) {
            connections.push(raw::connect(&args.url).await?);
        }
        Ok(connections)
    }

    /// One client per connection, all with `key`.
    async fn clients(&self, args: &Args, key: &str) -> Result<Vec<Client>, Error> {
        let mut clients = Vec::new();
        for _ in 0..self.connections.max(1) {
            clients.push(
                Client::builder(args.url.as_str())
                    .api_key(key)
                    .connect()
                    .await?,
            );
        }
        Ok(clients)
    }
}

struct Setup {
    tenant_key: String,
    agent_key: String,
    tenant: Client,
    agent: Client,
}

async fn setup(args: &Args, manifests: usize) -> Result<Setup, Error> {
    let admin = Client::builder(args.url.as_str())
        .api_key(&args.admin_key)
        .connect()
        .await?;
    let suffix = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_micros()
    );
    let tenant = admin.create_tenant(&format!("bench-{suffix}")).await?;
    let key = |role| admin.create_api_key(CreateApiKey::new(role).tenant(&tenant.id));
    let tenant_key = key(pb::Role::Tenant).await?.secret;
    let agent_key = key(pb::Role::Agent).await?.secret;
    for i in 0..manifests {
        match admin
            .create_manifest(CreateManifest::new(agent_id(i), "bench", "Bench", "1.0.0"))
            .await
        {
            Ok(_) | Err(agentry_client::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let connect = |key: &str| Client::builder(args.url.as_str()).api_key(key).connect();
    Ok(Setup {
        tenant: connect(&tenant_key).await?,
        agent: connect(&agent_key).await?,
        tenant_key,
        agent_key,
    })
}

fn agent_id(i: usize) -> String {
    format!("bench-agent-{i:03}")
}

/// A raw health stream that has been welcomed.
struct Stream {
    tx: mpsc::Sender<pb::HealthStreamRequest>,
    rx: tonic::Streaming<pb::HealthStreamResponse>,
    epoch: i64,
}

async fn open_stream(channel: Channel, key: &str, instance: String) -> Result<Stream, Error> {
    let mut client = pb::registration_service_client::RegistrationServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(64);
    let hello = pb::Hello {
        instance_id: instance,
        agent_id: agent_id(0),
        ..Default::default()
    };
    tx.send(pb::HealthStreamRequest {
        message: Some(Out::Hello(hello)),
    })
    .await?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse()?);
    let mut rx = client.health_stream(request).await?.into_inner();
    match rx.message().await?.and_then(|m| m.message) {
        Some(In::Welcome(w)) => Ok(Stream {
            tx,
            rx,
            epoch: w.epoch,
        }),
        other => Err(format!("expected welcome, got {other:?}").into()),
    }
}

async fn channels(url: &str, streams: usize) -> Result<Vec<Channel>, Error> {
    let mut out = Vec::new();
    for _ in 0..streams.div_ceil(100) {
        out.push(Endpoint::from_shared(url.to_owned())?.connect().await?);
    }
    Ok(out)
}

async fn open_many(args: &Args, key: &str, count: usize) -> Result<Vec<Stream>, Error> {
    let channels = channels(&args.url, count).await?;
    let mut tasks = tokio::task::JoinSet::new();
    let mut streams = Vec::new();
    for i in 0..count {
        let (channel, key) = (channels[i / 100].clone(), key.to_owned());
        tasks.spawn(async move { open_stream(channel, &key, format!("bench-{i}")).await });
        if tasks.len() >= 200
            && let Some(r) = tasks.join_next().await
        {
            streams.push(r??);
        }
    }
    while let Some(r) = tasks.join_next().await {
        streams.push(r??);
    }
    Ok(streams)
}

fn server_rss_kib(pid: Option<u32>) -> Option<u64> {
    let pid = pid.or_else(|| {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            (comm.trim() == "agentry-server").then(|| e.file_name().to_str()?.parse().ok())?
        })
    })?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn transactions(db: &sqlx::PgPool) -> Result<i64, Error> {
    Ok(sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(db)
    .await?)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[index]) / 1000.0
}

fn report_latencies(name: &str, mut micros: Vec<u32>) {
    micros.sort_unstable();
    println!("{name}_p50_ms: {:.3}", percentile(&micros, 0.50));
    println!("{name}_p99_ms: {:.3}", percentile(&micros, 0.99));
}

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
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&args.database_url)
        .await?;
    // Without autovacuum, dead rows of the hot tables (workload counters,
    // leases, heartbeat times) pile up run after run and slow every write.
    let autovacuum: String = sqlx::query_scalar("SHOW autovacuum").fetch_one(&db).await?;
    println!("postgres_autovacuum: {autovacuum}");
    if autovacuum != "on" {
        eprintln!(
            "warning: autovacuum is off on this PostgreSQL; run VACUUM ANALYZE between runs (see BENCHMARKS.md)"
        );
    }
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

/// GetAvailableAgents over a bare HTTP/2 connection: a pre-encoded request,
/// answers counted, not decoded. Without tonic's channel (a buffer task each
/// call passes through) the load generator spends about half the CPU per call,
/// which on the server's own machine is CPU left to the server.
mod raw {
    use prost::Message as _;
    use prost::bytes::{BufMut, Bytes, BytesMut};
    use tonic::codegen::http::{self, HeaderValue, Method, Uri};

    use super::{AgentFilter, Error, pb};

    const PATH: &str = "/agentry.v1.RoutingService/GetAvailableAgents";

    /// A connection's handle; clones share the connection.
    pub(super) type Connection = h2::client::SendRequest<Bytes>;

    /// The framed request and its headers.
    #[derive(Clone)]
    pub(super) struct Prepared {
        frame: Bytes,
        uri: Uri,
        authorization: HeaderValue,
    }

    pub(super) fn request(url: &str, key: &str, limit: i32) -> Result<Prepared, Error> {
        let message = pb::GetAvailableAgentsRequest {
            filter: Some(AgentFilter::new().into()),
            limit,
        }
        .encode_to_vec();
        // gRPC's length-prefixed message: uncompressed flag, big-endian length.
        let mut frame = BytesMut::with_capacity(5 + message.len());
        frame.put_u8(0);
        frame.put_u32(u32::try_from(message.len())?);
        frame.put_slice(&message);
        Ok(Prepared {
            frame: frame.freeze(),
            uri: format!("{}{PATH}", url.trim_end_matches('/')).parse()?,
            authorization: format!("Bearer {key}").parse()?,
        })
    }

    pub(super) async fn connect(url: &str) -> Result<Connection, Error> {
        let uri: Uri = url.parse()?;
        let authority = uri.authority().ok_or("the server URL has no host")?;
        let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
        tcp.set_nodelay(true)?;
        // Windows large enough that answers in flight never wait for a window update.
        let (connection, driver) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(16 << 20)
            .handshake(tcp)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                eprintln!("agentry-bench: connection closed: {e}");
            }
        });
        Ok(connection)
    }

    /// One call; the answer's length in bytes.
    pub(super) async fn get_available_agents(
        connection: Connection,
        prepared: Prepared,
    ) -> Result<usize, Error> {
        let mut connection = connection.ready().await?;
        let request = http::Request::builder()
            .method(Method::POST)
            .uri(prepared.uri)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", prepared.authorization)
            .body(())?;
        let (answer, mut body) = connection.send_request(request, false)?;
        body.send_data(prepared.frame, true)?;
        let (head, mut answer) = answer.await?.into_parts();
        if head.status != http::StatusCode::OK {
            return Err(format!("HTTP status {}", head.status).into());
        }
        let mut length = 0;
        while let Some(chunk) = answer.data().await {
            let chunk = chunk?;
            length += chunk.len();
            answer.flow_control().release_capacity(chunk.len())?;
        }
        let trailers = answer.trailers().await?;
        // A trailers-only answer (an error) carries its status in the headers.
        let status = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| head.headers.get("grpc-status"));
        match status.map(HeaderValue::as_bytes) {
            Some(b"0") => Ok(length),
            other => Err(format!(
                "grpc-status {:?}: {:?}",
                other.map(String::from_utf8_lossy),
                trailers
                    .as_ref()
                    .and_then(|t| t.get("grpc-message"))
                    .or_else(|| head.headers.get("grpc-message"))
            )
            .into()),
        }
    }
}
