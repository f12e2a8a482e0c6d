//! `heartbeats`: raw health streams heartbeating as [`fleet`](crate::fleet)
//! drives them. Reports acks per second, ack latency, the database's
//! transactions and registration rows updated over the window, the CPU of
//! the server and of PostgreSQL over its second half, and the server's RSS
//! at the end.

use std::time::{Duration, Instant};

use crate::Error;
use crate::cli::Args;
use crate::fleet::{self, Pace};
use crate::pg::{COUNTERS_SETTLE, registration_updates, transactions};
use crate::rss::{postgres_cpu_ms, server_cpu_ms, server_rss_kib};
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
    let (tx0, rows0) = (transactions(db).await?, registration_updates(db).await?);
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let driving = fleet::drive(streams, until, pace, load_reports);
    // CPU over the window's second half: the fleet at its steady pace.
    let halfway = tokio::time::sleep(Duration::from_secs(seconds) / 2);
    let measure = async {
        halfway.await;
        let at = Instant::now();
        let cpu0 = (server_cpu_ms(args.server_pid), postgres_cpu_ms());
        tokio::time::sleep_until((until - Duration::from_millis(200)).into()).await;
        let cpu1 = (server_cpu_ms(args.server_pid), postgres_cpu_ms());
        let span = at.elapsed().as_secs_f64() * 1000.0;
        (
            cpu1.0.zip(cpu0.0).map(|(b, a)| (b - a) as f64 / span),
            (cpu1.1 - cpu0.1) as f64 / span,
        )
    };
    let (driven, (server_cores, postgres_cores)) = tokio::join!(fleet::join(driving), measure);
    let (all, done) = driven?;
    let elapsed = started.elapsed().as_secs_f64();
    let rss = server_rss_kib(args.server_pid).unwrap_or(0);
    // The streams stay open (and quiet) while the window's counters arrive.
    tokio::time::sleep(COUNTERS_SETTLE).await;
    let (tx1, rows1) = (transactions(db).await?, registration_updates(db).await?);
    let counted = started.elapsed().as_secs_f64();
    report_rate("heartbeats_acked", all.len(), elapsed);
    report_latencies("ack_latency", all);
    println!(
        "db_transactions: {} in {counted:.0} s (the window and {} s of quiet streams), {:.1}/s",
        tx1 - tx0,
        COUNTERS_SETTLE.as_secs(),
        (tx1 - tx0) as f64 / counted
    );
    println!(
        "registration_rows_updated: {} in {counted:.0} s, {:.1}/s",
        rows1 - rows0,
        (rows1 - rows0) as f64 / counted
    );
    println!(
        "steady_cpu_cores: server {:.3}, postgresql {postgres_cores:.3} (second half of the window)",
        server_cores.unwrap_or(0.0)
    );
    println!("server_rss_kib: {rss}");

    goodbye_all(&done, "bench done").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}
