//! `failover`: one fleet over several replicas of one database, one of which
//! is killed (SIGKILL, `--kill-pid`) once the fleet heartbeats. The agents of
//! the killed replica reconnect to the others, as the SDK's sessions do.
//!
//! Reports: each replica's share welcomed; after the kill, how many streams
//! broke, how long until all of them were welcomed again elsewhere (each
//! registration is routable in the database when its welcome comes), the
//! reconnect-to-welcome latency, how long until no active registration
//! names the dead replica, and PostgreSQL's CPU at steady state with the
//! whole fleet before the kill.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentry_client::pb;
use pb::health_stream_response::Message as In;
use sqlx::PgPool;
use tokio::sync::Mutex;
use tonic::transport::Channel;

use crate::Error;
use crate::cli::Args;
use crate::fleet::heartbeat;
use crate::rss::postgres_cpu_ms;
use crate::setup::{agent_id, setup, spawn_bounded};
use crate::stats::{micros, report_latencies};
use crate::stream::{Stream, channels, open_stream};

/// What `failover` runs.
pub(crate) struct Failover {
    /// Every replica's URL; `kill` is the index of the one killed.
    pub(crate) urls: Vec<String>,
    pub(crate) kill: usize,
    pub(crate) kill_pid: u32,
    pub(crate) per_replica: usize,
    /// Seconds of steady state before the kill.
    pub(crate) steady: u64,
}

/// How long the bench waits for every broken stream to be welcomed again.
const RECONNECT_DEADLINE: Duration = Duration::from_secs(120);

/// One agent: its stream, and where it may reconnect.
struct Agent {
    instance: String,
    stream: Stream,
}

/// When each broken stream broke and was welcomed again.
#[derive(Default)]
struct Moves {
    broke: Vec<Instant>,
    welcomed: Vec<(Instant, u32)>,
    failed: usize,
}

pub(crate) async fn run(args: &Args, db: &PgPool, f: Failover) -> Result<(), Error> {
    let key = setup(args, 1).await?.agent_key;
    let mut by_replica: Vec<Vec<Channel>> = Vec::new();
    for url in &f.urls {
        by_replica.push(channels(url, f.per_replica, 100).await?);
    }
    let started = Instant::now();
    let mut agents: Vec<(usize, Agent)> = Vec::new();
    for (r, chans) in by_replica.iter().enumerate() {
        let opened = spawn_bounded(f.per_replica, 500, |i| {
            let (channel, key) = (chans[i / 100].clone(), key.clone());
            let instance = format!("failover-{r}-{i}");
            async move {
                let stream = open_stream(channel, &key, agent_id(0), instance.clone()).await?;
                Ok::<_, Error>((r, Agent { instance, stream }))
            }
        })
        .await?;
        println!("replica_{r}_welcomed: {}", opened.len());
        agents.extend(opened);
    }
    println!("all_welcomed_ms: {}", started.elapsed().as_millis());
    let interval = agents
        .first()
        .map(|(_, a)| a.stream.interval)
        .filter(|i| !i.is_zero())
        .unwrap_or(Duration::from_secs(10));

    let survivors: Arc<Vec<Channel>> = Arc::new(
        by_replica
            .iter()
            .enumerate()
            .filter(|(r, _)| *r != f.kill)
            .flat_map(|(_, c)| c.iter().cloned())
            .collect(),
    );
    let moves = Arc::new(Mutex::new(Moves::default()));
    let mut tasks = tokio::task::JoinSet::new();
    for (n, (_, agent)) in agents.into_iter().enumerate() {
        let (survivors, moves, key) = (survivors.clone(), moves.clone(), key.clone());
        tasks.spawn(keep_alive(n, agent, interval, survivors, moves, key));
    }

    // Steady state with the whole fleet: PostgreSQL's CPU.
    tokio::time::sleep(interval).await;
    let (pg0, at) = (postgres_cpu_ms(), Instant::now());
    tokio::time::sleep(Duration::from_secs(f.steady)).await;
    println!(
        "steady_postgresql_cores: {:.3} (over {} s, {} agents on {} replicas)",
        (postgres_cpu_ms() - pg0) as f64 / at.elapsed().as_millis() as f64,
        f.steady,
        f.per_replica * f.urls.len(),
        f.urls.len()
    );

    let dead: Option<String> = sqlx::query_scalar(
        "SELECT replica_id::text FROM agent_registrations WHERE instance_id = $1 AND registration_status = 'active'",
    )
    .bind(format!("failover-{}-0", f.kill))
    .fetch_optional(db)
    .await?
    .flatten();
    let killed = Instant::now();
    std::process::Command::new("kill")
        .args(["-9", &f.kill_pid.to_string()])
        .status()?;
    println!("killed: replica {} (pid {})", f.kill, f.kill_pid);
    // Every stream of the killed replica breaks and is welcomed elsewhere.
    let all_back = async {
        loop {
            let m = moves.lock().await;
            if m.welcomed.len() + m.failed >= f.per_replica {
                return;
            }
            drop(m);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let _ = tokio::time::timeout(RECONNECT_DEADLINE, all_back).await;
    let back = killed.elapsed();
    // No active registration names the dead replica any more.
    let mut named = i64::MAX;
    while killed.elapsed() < RECONNECT_DEADLINE {
        named = sqlx::query_scalar(
            "SELECT count(*) FROM agent_registrations WHERE replica_id::text = $1 AND registration_status = 'active'",
        )
        .bind(&dead)
        .fetch_one(db)
        .await?;
        if named == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let released = killed.elapsed();
    let m = moves.lock().await;
    println!("streams_broken: {}", m.broke.len());
    println!("welcomed_elsewhere: {}", m.welcomed.len());
    println!("reconnects_failed: {}", m.failed);
    println!(
        "all_welcomed_elsewhere_ms: {} (from the kill)",
        back.as_millis()
    );
    report_latencies(
        "reconnect_to_welcome",
        m.welcomed.iter().map(|(_, us)| *us).collect(),
    );
    println!(
        "rows_naming_dead_replica: {named} after {} ms",
        released.as_millis()
    );
    drop(m);
    tasks.abort_all();
    Ok(())
}

/// Heartbeats `agent` every `interval`; when its stream breaks, opens it
/// again on one of `survivors` and records how long that took.
async fn keep_alive(
    n: usize,
    mut agent: Agent,
    interval: Duration,
    survivors: Arc<Vec<Channel>>,
    moves: Arc<Mutex<Moves>>,
    key: String,
) {
    // Out of phase, as a fleet's heartbeats are.
    let mut next = Instant::now() + interval.mul_f64((n % 1000) as f64 / 1000.0);
    loop {
        let beat = tokio::select! {
            () = tokio::time::sleep_until(next.into()) => true,
            m = agent.stream.rx.message() => match m {
                Ok(Some(pb::HealthStreamResponse { message: Some(In::Ack(_)) })) | Ok(Some(_)) => false,
                _ => {
                    // Broken: reconnect elsewhere, as the SDK's session does.
                    let broke = Instant::now();
                    moves.lock().await.broke.push(broke);
                    let channel = survivors[n % survivors.len()].clone();
                    match open_stream(channel, &key, agent_id(0), agent.instance.clone()).await {
                        Ok(stream) => {
                            agent.stream = stream;
                            moves.lock().await.welcomed.push((broke, micros(broke.elapsed())));
                        }
                        Err(_) => {
                            moves.lock().await.failed += 1;
                            return;
                        }
                    }
                    false
                }
            },
        };
        if beat {
            next += interval;
            agent.stream.sequence += 1;
            let hb = heartbeat(&agent.stream, agent.stream.sequence, None);
            if agent.stream.tx.send(hb).await.is_err() {
                // The receiver side reports the break.
            }
        }
    }
}
