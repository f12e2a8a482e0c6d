//! `heartbeats`: raw health streams, each keeping `--window` heartbeats in
//! flight, every ack checked against the heartbeat it answers. Reports acks
//! per second, ack latency, the database's transactions over the window and
//! the server's RSS at the end.

use std::time::{Duration, Instant};

use agentry_client::pb;
use pb::health_stream_request::Message as Out;
use pb::health_stream_response::Message as In;

use crate::Error;
use crate::cli::Args;
use crate::pg::{COUNTERS_SETTLE, transactions};
use crate::rss::server_rss_kib;
use crate::setup::setup;
use crate::stats::{micros, report_latencies, report_rate};
use crate::stream::{goodbye_all, open_many};

pub(crate) async fn run(
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
                            latencies.push(micros(at.elapsed()));
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
