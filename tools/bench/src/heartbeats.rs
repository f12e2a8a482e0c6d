//! `heartbeats`: raw health streams heartbeating as [`fleet`](crate::fleet)
//! drives them. Reports acks per second, ack latency, the database's
//! transactions over the window and the server's RSS at the end.

use std::time::{Duration, Instant};

use crate::Error;
use crate::cli::Args;
use crate::fleet::{self, Pace};
use crate::pg::{COUNTERS_SETTLE, transactions};
use crate::rss::server_rss_kib;
use crate::setup::setup;
use crate::stats::{report_latencies, report_rate};
use crate::stream::{goodbye_all, open_many};

pub(crate) async fn run(
    args: &Args,
    db: &sqlx::PgPool,
    agents: usize,
    seconds: u64,
    pace: Pace,
    load_reports: bool,
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
    let (all, done) = fleet::join(fleet::drive(streams, until, pace, load_reports)).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let rss = server_rss_kib(args.server_pid).unwrap_or(0);
    // The streams stay open (and quiet) while the window's counters arrive.
    tokio::time::sleep(COUNTERS_SETTLE).await;
    let tx1 = transactions(db).await?;
    let counted = started.elapsed().as_secs_f64();
    report_rate("heartbeats_acked", all.len(), elapsed);
    report_latencies("ack_latency", all);
    println!(
        "db_transactions: {} in {counted:.0} s (the window and {} s of quiet streams), {:.1}/s",
        tx1 - tx0,
        COUNTERS_SETTLE.as_secs(),
        (tx1 - tx0) as f64 / counted
    );
    println!("server_rss_kib: {rss}");

    goodbye_all(&done, "bench done").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}
