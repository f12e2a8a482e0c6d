//! `slow-watch`: `--watchers` WatchAvailableAgents subscribers that read
//! their snapshot and then nothing more, while one large entry (a
//! configuration whose system prompt is `--entry-bytes` long, with one
//! healthy instance) changes `--changes` times. Reports the server's RSS
//! before, at its peak (sampled every 100 ms), once the view has the last
//! change, and `--after-close` seconds after the watches are dropped:
//! what a subscriber that stops reading costs the server, and whether the
//! server gives it back. With `--read` the watchers read every event: the
//! same changes with subscribers that keep up, to compare with.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentry_client::{AgentFilter, Client, CreateConfiguration, UpdateConfiguration, pb};
use pb::health_stream_response::Message as In;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};

use crate::Error;
use crate::cli::Args;
use crate::fleet::heartbeat;
use crate::rss::server_rss_kib;
use crate::setup::{agent_id, setup, spawn_bounded, wait_for_view};
use crate::stream::{Stream, goodbye_all, open_stream};

/// How long the view may take to show the last change.
const VIEW_TIMEOUT: Duration = Duration::from_secs(300);

pub(crate) struct SlowWatch {
    pub(crate) entry_bytes: usize,
    pub(crate) changes: usize,
    pub(crate) concurrency: usize,
    pub(crate) watchers: usize,
    pub(crate) read: bool,
    pub(crate) after_close: u64,
}

pub(crate) async fn run(args: &Args, o: SlowWatch) -> Result<(), Error> {
    if o.changes == 0 || o.entry_bytes < 10 {
        return Err("--changes must be at least 1 and --entry-bytes at least 10".into());
    }
    let s = setup(args, 1).await?;
    let configuration = s
        .tenant
        .create_configuration(
            CreateConfiguration::for_agent(agent_id(0)).system_prompt(prompt(o.entry_bytes, 0)),
        )
        .await?;
    let channel = Endpoint::from_shared(args.url.clone())?.connect().await?;
    let agent = open_stream(channel, &s.agent_key, agent_id(0), "bench-0".into()).await?;
    let (stop, stopped) = oneshot::channel();
    let agent = tokio::spawn(keep_healthy(agent, stopped));
    wait_for_view(&s.tenant, 10, 1, Duration::from_millis(50)).await?;
    let rss = || server_rss_kib(args.server_pid);
    let start = rss().ok_or("cannot read the server's RSS: pass --server-pid")?;

    let mut watches = Vec::new();
    for _ in 0..o.watchers {
        watches.push(open_watch(args, &s.tenant_key, o.read).await?);
    }
    let peak = Arc::new(AtomicU64::new(start));
    let sampler = tokio::spawn({
        let (peak, pid) = (peak.clone(), args.server_pid);
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                if let Some(now) = server_rss_kib(pid) {
                    peak.fetch_max(now, Ordering::Relaxed);
                }
            }
        }
    });

    // Every change but the last concurrently, then the last alone: the
    // view must end with its value, which no other change has.
    let began = Instant::now();
    let id = configuration.id.clone();
    spawn_bounded(o.changes - 1, o.concurrency.max(1), |i| {
        let (tenant, id) = (s.tenant.clone(), id.clone());
        async move {
            let update = UpdateConfiguration::new(id).system_prompt(prompt(o.entry_bytes, i + 1));
            tenant.update_configuration(update).await
        }
    })
    .await?;
    let last = prompt(o.entry_bytes, o.changes);
    s.tenant
        .update_configuration(UpdateConfiguration::new(&id).system_prompt(last.clone()))
        .await?;
    let applied = began.elapsed();
    wait_for_prompt(&s.tenant, &last).await?;
    let seen = began.elapsed();
    let revision = watch_revision(args, &s.tenant_key).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_changes = rss().unwrap_or(start);
    let peak_changes = peak.load(Ordering::Relaxed).max(after_changes);

    drop(watches);
    tokio::time::sleep(Duration::from_secs(o.after_close)).await;
    let after_close = rss().unwrap_or(start);
    sampler.abort();
    let _ = stop.send(());
    let (acks, changed, agent) = agent.await??;
    goodbye_all(&[agent], "bench done").await;

    let reading = if o.read { " (reading)" } else { "" };
    println!("watchers: {}{reading}", o.watchers);
    println!("changes: {} of {} bytes", o.changes, o.entry_bytes);
    println!(
        "changes_applied_s: {:.1} ({:.0} changes/s)",
        applied.as_secs_f64(),
        o.changes as f64 / applied.as_secs_f64()
    );
    println!("view_has_last_change_s: {:.1}", seen.as_secs_f64());
    println!("tenant_revision_at_end: {revision}");
    println!("agent_heartbeats_acked: {acks}, configuration_changes_heard: {changed}");
    println!("server_rss_start_kib: {start}");
    println!("server_rss_peak_kib: {peak_changes}");
    println!("server_rss_after_changes_kib: {after_changes}");
    println!(
        "server_rss_{}s_after_close_kib: {after_close}",
        o.after_close
    );
    println!(
        "slow-watch: changes={} entry={} watchers={}{} rss_start={} rss_peak={} rss_after_changes={} ({:+.1} MiB) rss_{}s_after_close={} ({:.0} % of start)",
        o.changes,
        o.entry_bytes,
        o.watchers,
        if o.read { "(reading)" } else { "" },
        mib(start),
        mib(peak_changes),
        mib(after_changes),
        (after_changes as f64 - start as f64) / 1024.0,
        o.after_close,
        mib(after_close),
        after_close as f64 * 100.0 / start.max(1) as f64
    );
    Ok(())
}

/// The system prompt of change `n`: `bytes` bytes ending in `n`.
fn prompt(bytes: usize, n: usize) -> String {
    format!("{}{n:010}", "x".repeat(bytes - 10))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// A watch of the tenant on a connection of its own, its snapshot read;
/// dropping it ends the stream and closes the connection.
struct Watch {
    _events: Option<tonic::Streaming<pb::AvailabilityEvent>>,
    /// With `--read`: the task that reads the stream (and holds it).
    reader: Option<tokio::task::AbortHandle>,
    _channel: Channel,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(reader) = &self.reader {
            reader.abort();
        }
    }
}

async fn open_watch(args: &Args, key: &str, read: bool) -> Result<Watch, Error> {
    let channel = Endpoint::from_shared(args.url.clone())?.connect().await?;
    let (mut events, first) = watch(channel.clone(), key).await?;
    match first.event {
        Some(pb::availability_event::Event::Snapshot(s)) if s.agents.len() == 1 => {}
        other => return Err(format!("expected a snapshot of one agent, got {other:?}").into()),
    }
    if read {
        let reader = tokio::spawn(async move { while let Ok(Some(_)) = events.message().await {} });
        return Ok(Watch {
            _events: None,
            reader: Some(reader.abort_handle()),
            _channel: channel,
        });
    }
    // Held, never polled again.
    Ok(Watch {
        _events: Some(events),
        reader: None,
        _channel: channel,
    })
}

/// A watch of the whole tenant and its first event.
async fn watch(
    channel: Channel,
    key: &str,
) -> Result<
    (
        tonic::Streaming<pb::AvailabilityEvent>,
        pb::AvailabilityEvent,
    ),
    Error,
> {
    let mut client = pb::routing_service_client::RoutingServiceClient::new(channel);
    let mut request = tonic::Request::new(pb::WatchAvailableAgentsRequest {
        filter: Some(AgentFilter::new().into()),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse()?);
    let mut events = client.watch_available_agents(request).await?.into_inner();
    let first = events.message().await?.ok_or("the watch ended at once")?;
    Ok((events, first))
}

/// The tenant's revision now, from a fresh watch's snapshot: how many
/// changes its stream has numbered (one per change of an entry).
async fn watch_revision(args: &Args, key: &str) -> Result<u64, Error> {
    let channel = Endpoint::from_shared(args.url.clone())?.connect().await?;
    Ok(watch(channel, key).await?.1.revision)
}

/// Polls GetAvailableAgents until the entry carries `prompt`.
async fn wait_for_prompt(tenant: &Client, prompt: &str) -> Result<(), Error> {
    let deadline = Instant::now() + VIEW_TIMEOUT;
    loop {
        let agents = tenant.get_available_agents(AgentFilter::new(), 10).await?;
        if agents.iter().any(|a| {
            a.configuration
                .as_ref()
                .is_some_and(|c| c.system_prompt == prompt)
        }) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the view did not show the last change within 300 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Heartbeats as the server asks (twice per interval, from the start) and
/// reads everything the server sends, so that the agent's own stream never
/// backs up, until `stop`; answers the acks and configuration changes it
/// heard, and the stream.
async fn keep_healthy(
    mut stream: Stream,
    mut stop: oneshot::Receiver<()>,
) -> Result<(u64, u64, Stream), Error> {
    let every = (stream.interval / 2).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    let (mut acks, mut changed) = (0, 0);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok((acks, changed, stream)),
            _ = tick.tick() => {
                stream.sequence += 1;
                stream.tx.send(heartbeat(&stream, stream.sequence, None)).await?;
            }
            message = stream.rx.message() => match message?.and_then(|m| m.message) {
                Some(In::Ack(_)) => acks += 1,
                Some(In::ConfigurationChanged(_)) => changed += 1,
                Some(_) => {}
                None => return Err("the server ended the agent's stream".into()),
            },
        }
    }
}
