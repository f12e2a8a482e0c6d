//! `propagation`: how long a load report takes to reach routing on another
//! replica. A fleet streams heartbeats with moving load reports to this
//! server (replica A, `--url`); a probe agent, alone in its configuration
//! (agent bench-agent-001), streams there too and changes its utilization
//! in steps of 0.2; after each change a caller on replica B polls
//! GetAvailableAgents with explain (filtered to the probe's agent) until
//! routing there ranks the probe by the new load. The delay counts from the
//! probe sending the heartbeat that carries the change; an agent's change
//! waits up to one heartbeat interval more for its next heartbeat, which is
//! why the bound printed next to it is the interval plus the flush interval.

use std::time::{Duration, Instant};

use agentry_client::{AgentFilter, Client, pb};
use pb::health_stream_response::Message as In;
use tonic::transport::Endpoint;

use crate::Error;
use crate::cli::Args;
use crate::fleet::{self, Pace};
use crate::setup::{agent_id, setup};
use crate::stats::{micros, report_latencies, report_rate};
use crate::stream::{Stream, goodbye_all, open_many, open_stream};

/// What the probe does.
pub(crate) struct Probe {
    /// How long it changes its load, after the blackout.
    pub(crate) seconds: u64,
    /// The server's load flush interval (printed with the bound).
    pub(crate) flush: Duration,
    /// The poller's pause between calls.
    pub(crate) poll: Duration,
    /// How long routing ranks a new reporter by its leases.
    pub(crate) blackout: Duration,
}

/// The probe's utilizations, in turn: each 0.2 from the one before.
const STEPS: [f64; 5] = [0.1, 0.3, 0.5, 0.7, 0.9];
/// How much later than the run's start the probe's blackout may begin
/// without shortening the time it samples.
const SLACK: Duration = Duration::from_secs(10);
/// A change not seen on replica B within this long counts as lost.
const GIVE_UP: Duration = Duration::from_secs(30);

pub(crate) async fn run(
    args: &Args,
    replica_url: &str,
    agents: usize,
    pace: Pace,
    probe: Probe,
) -> Result<(), Error> {
    let s = setup(args, 2).await?;
    let on_replica = Client::builder(replica_url)
        .api_key(&s.tenant_key)
        .connect()
        .await?;
    let streams = open_many(args, &s.agent_key, agents).await?;
    let channel = Endpoint::from_shared(args.url.clone())?.connect().await?;
    let mut prober = open_stream(channel, &s.agent_key, agent_id(1), "bench-probe".into()).await?;
    println!("streams: {} and the probe", streams.len());
    let started = Instant::now();
    // Room for the probe's blackout to start late (below).
    let until = started + probe.blackout + SLACK + Duration::from_secs(probe.seconds);
    let fleet = fleet::drive(streams, until, pace, true);

    // The probe's first report starts its blackout; it keeps reporting the
    // same load (refreshed before it goes stale) until replica B ranks it
    // by its report. (The fleet's first reports, 10,000 at once, queue in
    // the registration writer ahead of the probe's: its blackout may start
    // seconds after `started`.)
    let mut step = 0;
    let mut ready = started.elapsed();
    while started.elapsed() < probe.blackout || ranked_by(&on_replica, None).await?.is_none() {
        beat(&mut prober, STEPS[step]).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        ready = started.elapsed();
    }
    println!(
        "probe_ranked_by_its_report_after_s: {:.1}",
        ready.as_secs_f64()
    );
    let mut delays = Vec::new();
    let (mut lost, mut polls) = (0, 0u64);
    while Instant::now() < until {
        step = (step + 1) % STEPS.len();
        let sent = Instant::now();
        beat(&mut prober, STEPS[step]).await?;
        loop {
            polls += 1;
            if ranked_by(&on_replica, Some(STEPS[step])).await?.is_some() {
                delays.push(micros(sent.elapsed()));
                break;
            }
            if sent.elapsed() > GIVE_UP {
                lost += 1;
                break;
            }
            tokio::time::sleep(probe.poll).await;
        }
        // Out of step with the server's flush and the fleet's heartbeats.
        let jitter = 20 + (delays.len() as u64 * 7919) % 100;
        tokio::time::sleep(Duration::from_millis(jitter)).await;
    }
    let (acks, mut done) = fleet::join(fleet).await?;
    let elapsed = started.elapsed().as_secs_f64();
    report_rate("fleet_heartbeats_acked", acks.len(), elapsed);
    report_latencies("fleet_ack_latency", acks);
    println!(
        "probe_changes: {} seen on the replica, {lost} lost, {polls} polls",
        delays.len()
    );
    let bound = prober.interval + probe.flush;
    println!(
        "bound_ms: {} (heartbeat interval {} ms + load flush interval {} ms)",
        bound.as_millis(),
        prober.interval.as_millis(),
        probe.flush.as_millis()
    );
    let max = delays.iter().max().copied().unwrap_or(0);
    report_latencies("propagation", delays);
    println!("propagation_max_ms: {:.3}", f64::from(max) / 1000.0);
    done.push(prober);
    goodbye_all(&done, "bench done").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

/// The load the replica ranks the probe by, if it ranks it by its report
/// (and, with `want`, by that load).
async fn ranked_by(replica: &Client, want: Option<f64>) -> Result<Option<f64>, Error> {
    let answer = replica
        .explain_available_agents(AgentFilter::new().agent_id(agent_id(1)), 1)
        .await?;
    Ok(answer
        .explanation
        .iter()
        .flat_map(|e| &e.candidates)
        .flat_map(|c| &c.instances)
        .find(|i| {
            i.instance_id == "bench-probe"
                && i.load_source == pb::LoadSource::Report as i32
                && want.is_none_or(|w| (i.load - w).abs() < 1e-9)
        })
        .map(|i| i.load))
}

/// One heartbeat of the probe reporting `utilization`, and its ack.
async fn beat(probe: &mut Stream, utilization: f64) -> Result<(), Error> {
    probe.sequence += 1;
    let load = pb::LoadReport {
        utilization,
        ..Default::default()
    };
    probe
        .tx
        .send(fleet::heartbeat(probe, probe.sequence, Some(load)))
        .await?;
    loop {
        match probe.rx.message().await?.and_then(|m| m.message) {
            Some(In::Ack(ack)) if ack.sequence == probe.sequence => return Ok(()),
            Some(In::Ack(ack)) => {
                return Err(format!("ack {} for {}", ack.sequence, probe.sequence).into());
            }
            Some(_) => {}
            None => return Err("the probe's stream ended".into()),
        }
    }
}
