//! `storm`: `--agents` health streams send their `Hello` at the same moment
//! (on connections opened beforehand, `--per-connection` streams each), as a
//! fleet does after a deploy or a network blip; then all say `Goodbye` at
//! once. Reports the time until all were welcomed (turned-away agents retry
//! after the server's pushback, as the SDK does), until the database holds them all
//! routable, until it holds them all inactive, and how many ends were lost.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::Error;
use crate::cli::Args;
use crate::rss::server_rss_kib;
use crate::setup::{agent_id, setup};
use crate::stream::{Stream, channels, goodbye_all, open_stream};

/// How long the database may take to show every end before they count as lost.
const ENDS_DEADLINE: Duration = Duration::from_secs(60);

pub(crate) async fn run(
    args: &Args,
    db: &PgPool,
    agents: usize,
    per_connection: usize,
) -> Result<(), Error> {
    let s = setup(args, 1).await?;
    let prefix = format!(
        "storm-{:x}-",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_micros()
    );
    let rss_before = server_rss_kib(args.server_pid);
    let connections = channels(&args.url, agents, per_connection).await?;
    println!("agents: {agents}");
    println!("connections: {}", connections.len());

    let started = Instant::now();
    let Welcomed {
        streams,
        turned_away,
        failed,
    } = welcome_all(&connections, per_connection, &s.agent_key, &prefix, agents).await?;
    let welcomed = started.elapsed();
    let want = streams.len() as i64;
    wait_for_count(
        db,
        &prefix,
        "AND registration_status = 'active' AND health_status = 'healthy' AND drain_time IS NULL",
        |n| n >= want,
    )
    .await?;
    let routable = started.elapsed();
    if let (Some(before), Some(after)) = (rss_before, server_rss_kib(args.server_pid)) {
        println!(
            "server_rss_per_agent_kib: {:.2} (connections and streams, {before} -> {after} KiB)",
            after.saturating_sub(before) as f64 / want.max(1) as f64
        );
    }
    println!("welcomed: {}", streams.len());
    println!("hellos_failed: {failed}");
    println!("hellos_turned_away_then_retried: {turned_away}");
    println!("all_welcomed_ms: {}", welcomed.as_millis());
    println!("all_routable_in_db_ms: {}", routable.as_millis());
    println!(
        "registrations_per_sec: {:.0}",
        want as f64 / routable.as_secs_f64()
    );

    leave_all(Some(db), &prefix, &streams, "storm over").await
}

/// Every stream says goodbye at once; with the server's database, waits
/// until none of the registrations named `prefix…` is active (at most
/// [`ENDS_DEADLINE`]) and reports how long that took and the ends lost.
pub(crate) async fn leave_all(
    db: Option<&PgPool>,
    prefix: &str,
    streams: &[Stream],
    reason: &str,
) -> Result<(), Error> {
    let leaving = Instant::now();
    goodbye_all(streams, reason).await;
    println!("goodbyes_sent_ms: {}", leaving.elapsed().as_millis());
    if let Some(db) = db {
        let deadline = leaving + ENDS_DEADLINE;
        let active = wait_for_count(db, prefix, "AND registration_status = 'active'", |n| {
            n == 0 || Instant::now() > deadline
        })
        .await?;
        println!("all_inactive_ms: {}", leaving.elapsed().as_millis());
        println!("ends_lost: {active}");
    }
    Ok(())
}

/// What a storm of hellos came to.
pub(crate) struct Welcomed {
    pub(crate) streams: Vec<Stream>,
    pub(crate) turned_away: usize,
    pub(crate) failed: usize,
}

/// Sends `agents` hellos at once on `connections`, `per_connection` each;
/// the turned-away retry after the server's pushback, as the SDK does.
pub(crate) async fn welcome_all(
    connections: &[tonic::transport::Channel],
    per_connection: usize,
    key: &str,
    prefix: &str,
    agents: usize,
) -> Result<Welcomed, Error> {
    let mut streams: Vec<Stream> = Vec::with_capacity(agents);
    let mut waiting: Vec<usize> = (0..agents).collect();
    let (mut turned_away, mut failed) = (0usize, 0usize);
    let mut pushback = Duration::ZERO;
    while !waiting.is_empty() {
        let mut tasks = tokio::task::JoinSet::new();
        for i in waiting.drain(..) {
            let channel = connections[i / per_connection.max(1)].clone();
            let (key, instance) = (key.to_owned(), format!("{prefix}{i}"));
            tasks
                .spawn(async move { (i, open_stream(channel, &key, agent_id(0), instance).await) });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined? {
                (_, Ok(stream)) => streams.push(stream),
                (i, Err(e)) => {
                    let status = e.downcast_ref::<tonic::Status>();
                    if let Some(ms) = status
                        .and_then(|s| s.metadata().get("grpc-retry-pushback-ms"))
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                    {
                        pushback = pushback.max(Duration::from_millis(ms));
                    }
                    if status.is_some_and(|s| s.code() == tonic::Code::Unavailable) {
                        turned_away += 1;
                        waiting.push(i);
                    } else {
                        failed += 1;
                        if failed <= 3 {
                            eprintln!("hello failed: {e}");
                        }
                    }
                }
            }
        }
        if !waiting.is_empty() {
            // What the server asked for, as the SDK's sessions wait.
            tokio::time::sleep(pushback.max(Duration::from_millis(50))).await;
            pushback = Duration::ZERO;
        }
    }
    Ok(Welcomed {
        streams,
        turned_away,
        failed,
    })
}

/// Polls the count of registrations named `prefix…` that meet `condition`
/// (SQL after the prefix's `WHERE`) until `done` says so; answers the last
/// count. Spelled out rather than the `routable` column, so that the same
/// command measures servers from before migration 0008 side by side.
pub(crate) async fn wait_for_count(
    db: &PgPool,
    prefix: &str,
    condition: &str,
    done: impl Fn(i64) -> bool,
) -> Result<i64, Error> {
    let sql =
        format!("SELECT count(*) FROM agent_registrations WHERE instance_id LIKE $1 {condition}");
    let pattern = format!("{prefix}%");
    loop {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(&pattern)
            .fetch_one(db)
            .await?;
        if done(n) {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The same storm against `bare-server`: the time tonic and HTTP/2 alone
/// take to open and welcome as many streams, and their memory.
pub(crate) async fn run_bare(
    args: &Args,
    agents: usize,
    per_connection: usize,
) -> Result<(), Error> {
    let rss_before = server_rss_kib(args.server_pid);
    let connections = channels(&args.url, agents, per_connection).await?;
    println!("agents: {agents} (bare tonic baseline)");
    println!("connections: {}", connections.len());
    let started = Instant::now();
    let welcomed = welcome_all(&connections, per_connection, "bare", "bare-", agents).await?;
    let elapsed = started.elapsed();
    if let (Some(before), Some(after)) = (rss_before, server_rss_kib(args.server_pid)) {
        println!(
            "server_rss_per_agent_kib: {:.2} (connections and streams, {before} -> {after} KiB)",
            after.saturating_sub(before) as f64 / welcomed.streams.len().max(1) as f64
        );
    }
    println!("welcomed: {}", welcomed.streams.len());
    println!("hellos_failed: {}", welcomed.failed);
    println!("all_welcomed_ms: {}", elapsed.as_millis());
    println!(
        "welcomes_per_sec: {:.0}",
        welcomed.streams.len() as f64 / elapsed.as_secs_f64()
    );
    leave_all(None, "bare-", &welcomed.streams, "storm over").await
}
