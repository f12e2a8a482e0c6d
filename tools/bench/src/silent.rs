//! `silent`: `--connections` TCP connections to the server's gRPC port that
//! send nothing (or, with `--half-preface`, the first 12 bytes of the
//! HTTP/2 preface and then nothing), held for `--seconds`. Reports the
//! server's RSS per connection, how many connections it refused or closed
//! at once, how many it closed later (at 5, 10, 15 and 30 s), and whether a
//! normal client's health check, once a second over a fresh connection,
//! still succeeds meanwhile.
//!
//! Needs a file descriptor per connection: the bench raises its soft
//! RLIMIT_NOFILE to the hard limit first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::Error;
use crate::cli::Args;
use crate::rss::server_rss_kib;

/// The first 12 bytes of the client's HTTP/2 connection preface.
const HALF_PREFACE: &[u8] = b"PRI * HTTP/2";
/// A connection the server closes this soon after it was opened counts as
/// refused at once (a cap), not as closed later (a timeout).
const AT_ONCE: Duration = Duration::from_secs(1);
/// Connects in flight at once (the listener's backlog is finite).
const CONNECTING: usize = 64;
/// Seconds after the opening at which the closed connections are counted.
const CHECKPOINTS: [u64; 4] = [5, 10, 15, 30];

/// What became of one connection.
enum Fate {
    /// Connected (and sent what it sends).
    Open,
    /// The connect or the write failed.
    Refused,
    /// The server closed it (a read answered 0 or an error), `after` its
    /// connect.
    Closed { at: Instant, after: Duration },
}

/// The fates heard so far.
#[derive(Default)]
struct Tally {
    open: usize,
    refused: usize,
    closed_at_once: usize,
    /// When each connection closed later than [`AT_ONCE`] was closed.
    closed: Vec<Instant>,
}

impl Tally {
    fn take(&mut self, fate: Fate) {
        match fate {
            Fate::Open => self.open += 1,
            Fate::Refused => self.refused += 1,
            Fate::Closed { after, .. } if after < AT_ONCE => self.closed_at_once += 1,
            Fate::Closed { at, .. } => self.closed.push(at),
        }
    }
}

pub(crate) async fn run(
    args: &Args,
    connections: usize,
    half_preface: bool,
    seconds: u64,
) -> Result<(), Error> {
    let files = rlimit::increase_nofile_limit(u64::MAX)?;
    if files < connections as u64 + 100 {
        eprintln!("agentry-bench: RLIMIT_NOFILE is {files}, too few for {connections} connections");
    }
    let address = authority(&args.url)?;
    let rss = || server_rss_kib(args.server_pid);
    let before = rss().ok_or("cannot read the server's RSS: pass --server-pid")?;

    let (fates, mut heard) = mpsc::unbounded_channel();
    let connecting = Arc::new(Semaphore::new(CONNECTING));
    let mut held = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (fates, connecting, address) = (fates.clone(), connecting.clone(), address.clone());
        held.spawn(async move {
            let permit = connecting.acquire_owned().await;
            let opened = async {
                let mut tcp = TcpStream::connect(&address).await?;
                if half_preface {
                    tcp.write_all(HALF_PREFACE).await?;
                }
                Ok::<_, std::io::Error>(tcp)
            };
            let Ok(mut tcp) = opened.await else {
                let _ = fates.send(Fate::Refused);
                return;
            };
            let connected = Instant::now();
            let _ = fates.send(Fate::Open);
            drop(permit);
            // Whatever the server sends (its SETTINGS, a GOAWAY) is read and
            // dropped, until it closes.
            let mut buf = [0; 1024];
            while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            let at = Instant::now();
            let _ = fates.send(Fate::Closed {
                at,
                after: at - connected,
            });
        });
    }
    drop(fates);

    let mut t = Tally::default();
    let opening = Instant::now();
    while t.open + t.refused < connections {
        t.take(heard.recv().await.ok_or("a connection's task ended")?);
    }
    let opened_in = opening.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_open = rss().unwrap_or(before);

    // From here on, the server's closes are counted, and a health check
    // starts every second.
    let start = Instant::now();
    let mut checks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut counts = Vec::new();
    let end = start + Duration::from_secs(seconds);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if Instant::now() >= end {
                    break;
                }
                checks.spawn(health_check(args.url.clone()));
            }
            Some(fate) = heard.recv() => t.take(fate),
        }
    }
    while let Ok(fate) = heard.try_recv() {
        t.take(fate);
    }
    for mark in CHECKPOINTS
        .iter()
        .copied()
        .filter(|&s| s < seconds)
        .chain([seconds])
    {
        let by = start + Duration::from_secs(mark);
        counts.push((mark, t.closed.iter().filter(|&&at| at <= by).count()));
    }
    let (mut checked, mut failed) = (0, 0);
    while let Some(check) = checks.join_next().await {
        checked += 1;
        if let Err(e) | Ok(Err(e)) = check.map_err(Error::from) {
            if failed == 0 {
                eprintln!("agentry-bench: health check failed: {e}");
            }
            failed += 1;
        }
    }
    held.abort_all();

    let Tally {
        open,
        refused,
        closed_at_once,
        ..
    } = t;
    let per_connection = after_open.saturating_sub(before) as f64 / open.max(1) as f64;
    println!(
        "connections: {connections} ({}) opened in {:.2} s",
        if half_preface {
            "half preface"
        } else {
            "nothing sent"
        },
        opened_in.as_secs_f64()
    );
    println!("refused_at_once: {refused} (connect or write failed)");
    println!(
        "closed_at_once: {closed_at_once} (within {} s of connecting)",
        AT_ONCE.as_secs()
    );
    println!("server_rss_before_kib: {before}");
    println!("server_rss_after_open_kib: {after_open}");
    println!("server_rss_per_connection_kib: {per_connection:.2}");
    for (mark, count) in &counts {
        println!(
            "closed_later_by_{mark}s: {count} of {}",
            open - closed_at_once
        );
    }
    println!("health_checks: {checked}, failed {failed}");
    let marks: Vec<String> = counts.iter().map(|(m, c)| format!("{m}s={c}")).collect();
    println!(
        "silent: connections={connections} half_preface={half_preface} refused_at_once={} rss_before={:.1} MiB rss_after_open={:.1} MiB ({per_connection:.1} KiB/conn) closed {} health_failures={failed}/{checked}",
        refused + closed_at_once,
        before as f64 / 1024.0,
        after_open as f64 / 1024.0,
        marks.join(" "),
    );
    Ok(())
}

/// `host:port` of the server URL.
fn authority(url: &str) -> Result<String, Error> {
    let uri: tonic::codegen::http::Uri = url.parse()?;
    let authority = uri.authority().ok_or("the server URL has no host")?;
    Ok(match authority.port() {
        Some(_) => authority.to_string(),
        None => format!("{}:80", authority.host()),
    })
}

/// grpc.health.v1 Check of the server's readiness over a fresh connection,
/// within 2 s.
async fn health_check(url: String) -> Result<(), Error> {
    tokio::time::timeout(Duration::from_secs(2), check(url)).await?
}

async fn check(url: String) -> Result<(), Error> {
    let channel = Endpoint::from_shared(url)?.connect().await?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await?;
    match answer.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("health: {other:?}").into()),
    }
}
