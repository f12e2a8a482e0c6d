//! `fleet`: a fleet at its real pace. `--agents` health streams over
//! connections of `--per-connection` streams say hello at once (the
//! turned-away retry after the server's pushback, as the SDK does), then
//! heartbeat at the interval the server's welcome asks for, with or without
//! load reports, and finally all say goodbye at once.
//!
//! Reports what the fleet costs at steady state, after the welcome storm
//! has passed: server and PostgreSQL CPU, transactions and rows written per
//! second, server RSS per agent; and how long the edges took: all welcomed,
//! all routable in the database, all inactive after their goodbyes, and the
//! ends lost. `--bare` runs the same fleet against `bare-server` (tonic
//! alone): the baseline of the welcome time, the CPU and the memory.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::Error;
use crate::cli::Args;
use crate::fleet::{self, Pace};
use crate::pg::{COUNTERS_SETTLE, rows_written, transactions};
use crate::rss::{postgres_cpu_ms, server_cpu_ms, server_rss_kib};
use crate::setup::setup;
use crate::storm::{leave_all, wait_for_count, welcome_all};
use crate::stream::channels;

/// What `fleet` runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fleet {
    pub(crate) agents: usize,
    pub(crate) per_connection: usize,
    /// Length of the measured window at steady state.
    pub(crate) seconds: u64,
    pub(crate) pace: Pace,
    pub(crate) load_reports: bool,
}

/// The heartbeat interval when the server does not say (`bare-server`).
const BARE_INTERVAL: Duration = Duration::from_secs(10);

/// Transactions and rows written so far, when there is a database.
async fn counters(db: Option<&PgPool>) -> Result<Option<(i64, i64)>, Error> {
    match db {
        Some(db) => Ok(Some((transactions(db).await?, rows_written(db).await?))),
        None => Ok(None),
    }
}

/// Against Agentry (`db` is its database), or with `db` `None` against
/// `bare-server`.
pub(crate) async fn run(args: &Args, db: Option<&PgPool>, f: Fleet) -> Result<(), Error> {
    let key = match db {
        Some(_) => setup(args, 1).await?.agent_key,
        None => "bare".to_owned(),
    };
    let prefix = format!(
        "fleet-{:x}-",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_micros()
    );
    let rss_before = server_rss_kib(args.server_pid);
    let connections = channels(&args.url, f.agents, f.per_connection).await?;
    println!(
        "agents: {}{}",
        f.agents,
        if db.is_none() {
            " (bare tonic baseline)"
        } else {
            ""
        }
    );
    println!("connections: {}", connections.len());

    let started = Instant::now();
    let welcomed = welcome_all(&connections, f.per_connection, &key, &prefix, f.agents).await?;
    let all_welcomed = started.elapsed();
    let want = welcomed.streams.len();
    println!("welcomed: {want}");
    println!("hellos_failed: {}", welcomed.failed);
    println!(
        "hellos_turned_away_then_retried: {} ({:.1} % of the agents)",
        welcomed.turned_away,
        welcomed.turned_away as f64 * 100.0 / f.agents.max(1) as f64
    );
    println!("all_welcomed_ms: {}", all_welcomed.as_millis());
    if let Some(db) = db {
        wait_for_count(
            db,
            &prefix,
            "AND registration_status = 'active' AND health_status = 'healthy' AND drain_time IS NULL",
            |n| n >= want as i64,
        )
        .await?;
        println!("all_routable_in_db_ms: {}", started.elapsed().as_millis());
    }
    if let (Some(before), Some(after)) = (rss_before, server_rss_kib(args.server_pid)) {
        println!(
            "server_rss_per_agent_kib: {:.2} (connections and streams, {before} -> {after} KiB)",
            after.saturating_sub(before) as f64 / want.max(1) as f64
        );
    }

    // The server's interval, as its agents heartbeat; streams start out of
    // phase across it.
    let interval = welcomed
        .streams
        .first()
        .map(|s| s.interval)
        .filter(|i| !i.is_zero())
        .unwrap_or(BARE_INTERVAL);
    let pace = Pace {
        window: 1,
        heartbeat_ms: match f.pace.heartbeat_ms {
            0 => interval.as_millis() as u64,
            ms => ms,
        },
        ..f.pace
    };
    println!("heartbeat_interval_ms: {}", pace.heartbeat_ms);
    // Steady state: one settle (the welcome's counters land, the first
    // heartbeats spread over an interval), the measured window, and one
    // more settle for the window's counters, heartbeating throughout.
    let window = Duration::from_secs(f.seconds);
    let driving_from = Instant::now();
    let until = driving_from + COUNTERS_SETTLE + window + COUNTERS_SETTLE;
    let driving = fleet::drive(welcomed.streams, until, pace, f.load_reports);
    let measure = async {
        tokio::time::sleep(COUNTERS_SETTLE).await;
        let before = counters(db).await?;
        let at = Instant::now();
        let cpu0 = (server_cpu_ms(args.server_pid), postgres_cpu_ms());
        tokio::time::sleep(window).await;
        let cpu1 = (server_cpu_ms(args.server_pid), postgres_cpu_ms());
        let span = at.elapsed().as_secs_f64() * 1000.0;
        tokio::time::sleep_until((until - Duration::from_millis(500)).into()).await;
        let after = counters(db).await?;
        let counted = at.elapsed().as_secs_f64();
        Ok::<_, Error>((
            cpu1.0.zip(cpu0.0).map(|(b, a)| (b - a) as f64 / span),
            (cpu1.1 - cpu0.1) as f64 / span,
            before.zip(after).map(|((t0, r0), (t1, r1))| {
                ((t1 - t0) as f64 / counted, (r1 - r0) as f64 / counted)
            }),
        ))
    };
    let (driven, measured) = tokio::join!(fleet::join(driving), measure);
    let (acks, streams) = driven?;
    let (server_cores, postgres_cores, rates) = measured?;
    println!(
        "heartbeats_acked_per_sec: {:.0}",
        acks.len() as f64 / driving_from.elapsed().as_secs_f64()
    );
    println!(
        "steady_cpu_cores: server {:.3}, postgresql {postgres_cores:.3} (over {} s at steady state)",
        server_cores.unwrap_or(0.0),
        f.seconds
    );
    if let Some((tx, rows)) = rates {
        println!("db_transactions_per_sec: {tx:.1}");
        println!("db_rows_written_per_sec: {rows:.1} (inserted, updated and deleted, every table)");
    }
    if let Some(rss) = server_rss_kib(args.server_pid) {
        println!("server_rss_kib: {rss}");
    }

    leave_all(db, &prefix, &streams, "fleet done").await
}
