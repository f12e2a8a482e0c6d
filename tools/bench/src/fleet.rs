//! A fleet of welcomed raw health streams heartbeating, with or without load
//! reports: the load `heartbeats` measures, and the one `propagation` and
//! `available --fleet` measure routing under. Every ack is checked against
//! the heartbeat it answers.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use agentry_client::pb;
use pb::health_stream_request::Message as Out;
use pb::health_stream_response::Message as In;
use tokio::task::JoinSet;

use crate::stats::micros;
use crate::stream::Stream;

/// How the fleet's streams heartbeat.
#[derive(clap::Args, Clone, Copy, Debug)]
pub(crate) struct Pace {
    /// Heartbeats in flight per stream.
    #[arg(long, default_value_t = 8)]
    pub(crate) window: usize,
    /// Pause of each stream between heartbeats, in ms (0: the next one as
    /// soon as the window allows, as fast as acks come back).
    #[arg(long, default_value_t = 0)]
    pub(crate) heartbeat_ms: u64,
    /// With load reports: heartbeats between moves of an agent's
    /// utilization by 0.1 (in between it moves by less than the server
    /// passes on).
    #[arg(long, default_value_t = 50)]
    pub(crate) move_every: u64,
}

/// Agent `n`'s report at heartbeat `sequence`: a step of 0.1 every
/// `move_every` heartbeats (agents out of phase), plus noise of up to 0.02
/// that the server coalesces away.
pub(crate) fn report(n: usize, sequence: u64, move_every: u64) -> pb::LoadReport {
    let step = (n as u64 * 7 + sequence / move_every.max(1)) % 10;
    let noise = (sequence % 3) as f64 * 0.01;
    pb::LoadReport {
        utilization: step as f64 / 10.0 + noise,
        in_flight: step as u32,
        ..Default::default()
    }
}

/// One stream's heartbeat.
pub(crate) fn heartbeat(
    stream: &Stream,
    sequence: u64,
    load: Option<pb::LoadReport>,
) -> pb::HealthStreamRequest {
    pb::HealthStreamRequest {
        message: Some(Out::Heartbeat(pb::Heartbeat {
            sequence,
            health_status: pb::HealthStatus::Healthy.into(),
            epoch: stream.epoch,
            load,
            ..Default::default()
        })),
    }
}

/// Drives every stream until `until` (reports when `reports`); each task
/// answers its ack latencies in microseconds and gives its stream back.
pub(crate) fn drive(
    streams: Vec<Stream>,
    until: Instant,
    pace: Pace,
    reports: bool,
) -> JoinSet<(Vec<u32>, Stream)> {
    let mut tasks = JoinSet::new();
    let pause = Duration::from_millis(pace.heartbeat_ms);
    for (n, mut stream) in streams.into_iter().enumerate() {
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut sent: VecDeque<(u64, Instant)> = VecDeque::new();
            let mut sequence = stream.sequence;
            // Paced streams start out of phase, as a fleet's do.
            let mut next = Instant::now() + pause.mul_f64((n % 1000) as f64 / 1000.0);
            loop {
                while sent.len() < pace.window.max(1) && Instant::now() < until {
                    if !pause.is_zero() {
                        if sent.is_empty() {
                            tokio::time::sleep_until(next.into()).await;
                            next += pause;
                        } else {
                            break;
                        }
                    }
                    sequence += 1;
                    let load = reports.then(|| report(n, sequence, pace.move_every));
                    if stream
                        .tx
                        .send(heartbeat(&stream, sequence, load))
                        .await
                        .is_err()
                    {
                        stream.sequence = sequence;
                        return (latencies, stream);
                    }
                    sent.push_back((sequence, Instant::now()));
                }
                if sent.is_empty() {
                    stream.sequence = sequence;
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
                        _ => break,
                    },
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            stream.sequence = sequence;
            (latencies, stream)
        });
    }
    tasks
}

/// Waits for every task of [`drive`]: all ack latencies, and the streams.
pub(crate) async fn join(
    mut tasks: JoinSet<(Vec<u32>, Stream)>,
) -> Result<(Vec<u32>, Vec<Stream>), crate::Error> {
    let (mut all, mut streams) = (Vec::new(), Vec::new());
    while let Some(r) = tasks.join_next().await {
        let (latencies, stream) = r?;
        all.extend(latencies);
        streams.push(stream);
    }
    Ok((all, streams))
}
