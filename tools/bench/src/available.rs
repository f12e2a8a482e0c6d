//! `available`: GetAvailableAgents over a tenant with `--registrations`
//! instances of `--configurations` configurations, through the SDK (answers
//! decoded and checked) or with `--raw` (pre-encoded requests over bare
//! HTTP/2, answers' bytes counted), driven by the shared load driver.
//!
//! With `--fleet` the instances are health streams that heartbeat
//! throughout (see [`fleet`](crate::fleet)), and the calls are measured
//! twice in one run: while the streams send no load reports, then while
//! they send moving ones, each phase after a VACUUM of the registrations.

use std::time::{Duration, Instant};

use agentry_client::{AgentFilter, Client, CreateConfiguration, RegisterInstance};

use crate::Error;
use crate::cli::{Args, Load, Shape};
use crate::fleet::{self, Pace};
use crate::setup::{Setup, agent_id, setup, spawn_bounded, wait_for_view};
use crate::stats::{Done, Run, report_latencies, report_rate};
use crate::stream::{goodbye_all, open_spread};
use crate::{pg, raw, rss};

/// How long the fleet heartbeats in a phase before the calls are measured.
const WARM_UP: Duration = Duration::from_secs(2);

pub(crate) async fn run(args: &Args, shape: Shape, load: Load) -> Result<(), Error> {
    let s = configured(args, shape).await?;
    spawn_bounded(shape.registrations, 64, |i| {
        let agent = s.agent.clone();
        async move {
            agent
                .register_instance(RegisterInstance::new(
                    format!("bench-{i}"),
                    agent_id(i % shape.configurations),
                ))
                .await
        }
    })
    .await?;
    println!(
        "registrations: {} over {} configurations",
        shape.registrations, shape.configurations
    );
    let calls = Calls::new(args, &s, shape, load).await?;
    calls.report("available", calls.measure(load).await?);
    Ok(())
}

/// `available --fleet`: the same calls next to a fleet of streams, without
/// load reports and then with them.
pub(crate) async fn run_with_fleet(
    args: &Args,
    shape: Shape,
    load: Load,
    pace: Pace,
) -> Result<(), Error> {
    let s = configured(args, shape).await?;
    let mut streams = open_spread(
        args,
        &s.agent_key,
        shape.registrations,
        shape.configurations,
    )
    .await?;
    println!(
        "streams: {} over {} configurations",
        streams.len(),
        shape.configurations
    );
    let calls = Calls::new(args, &s, shape, load).await?;
    let db = pg::connect(&args.database_url).await?;
    for (phase, reports) in [("without_reports", false), ("with_reports", true)] {
        pg::vacuum_registrations(&db).await?;
        let until = Instant::now() + WARM_UP + Duration::from_secs(load.seconds);
        let heartbeating = fleet::drive(streams, until, pace, reports);
        tokio::time::sleep(WARM_UP).await;
        let before = Cpu::now(args);
        let run = calls.measure(load).await?;
        let spent = Cpu::now(args).since(&before);
        let (acks, back) = fleet::join(heartbeating).await?;
        streams = back;
        report_rate(
            &format!("{phase}_heartbeats_acked"),
            acks.len(),
            (WARM_UP + Duration::from_secs(load.seconds)).as_secs_f64(),
        );
        spent.report(phase, run.latencies.len());
        calls.report(&format!("{phase}_available"), run);
    }
    goodbye_all(&streams, "bench done").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

/// CPU time so far of the server, PostgreSQL and this bench, in ms: on a
/// machine that runs all three, a phase's calls/s depend on what the other
/// two take, so the fleet mode says where each phase's CPU went.
struct Cpu {
    server: Option<u64>,
    postgres: u64,
    bench: Option<u64>,
}

impl Cpu {
    fn now(args: &Args) -> Self {
        Cpu {
            server: rss::server_cpu_ms(args.server_pid),
            postgres: rss::postgres_cpu_ms(),
            bench: rss::own_cpu_ms(),
        }
    }

    fn since(&self, before: &Cpu) -> Cpu {
        let minus = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?));
        Cpu {
            server: minus(self.server, before.server),
            postgres: self.postgres.saturating_sub(before.postgres),
            bench: minus(self.bench, before.bench),
        }
    }

    /// Prints the CPU each part took over a phase of `calls` calls, and the
    /// server's per call (the fleet's own share included).
    fn report(&self, phase: &str, calls: usize) {
        let show = |v: Option<u64>| v.map_or("unknown".to_string(), |v| v.to_string());
        println!(
            "{phase}_cpu_ms: server {} postgres {} bench {}",
            show(self.server),
            self.postgres,
            show(self.bench)
        );
        if let Some(server) = self.server.filter(|_| calls > 0) {
            println!(
                "{phase}_server_cpu_us_per_call: {:.1}",
                server as f64 * 1000.0 / calls as f64
            );
        }
    }
}

/// A fresh tenant with one configuration per manifest.
async fn configured(args: &Args, shape: Shape) -> Result<Setup, Error> {
    let s = setup(args, shape.configurations).await?;
    for i in 0..shape.configurations {
        s.tenant
            .create_configuration(CreateConfiguration::for_agent(agent_id(i)).max_workload(1000))
            .await?;
    }
    Ok(s)
}

/// The callers and what they expect, once the view holds the registrations.
struct Calls {
    via: Via,
    limit: i32,
    /// Agents in every answer.
    expected: usize,
}

/// How the calls are sent.
enum Via {
    Raw {
        connections: Vec<raw::Connection>,
        request: raw::Prepared,
    },
    Sdk {
        clients: Vec<Client>,
    },
}

impl Calls {
    async fn new(args: &Args, s: &Setup, shape: Shape, load: Load) -> Result<Calls, Error> {
        // Let the view catch up with the registrations.
        wait_for_view(
            &s.tenant,
            1000,
            shape.configurations,
            Duration::from_millis(100),
        )
        .await?;
        let expected = s
            .tenant
            .get_available_agents(AgentFilter::new(), shape.limit)
            .await?
            .len();
        let via = if shape.raw {
            Via::Raw {
                connections: load.connections(args).await?,
                request: raw::request(&args.url, &s.tenant_key, shape.limit)?,
            }
        } else {
            Via::Sdk {
                clients: load.clients(args, &s.tenant_key).await?,
            }
        };
        Ok(Calls {
            via,
            limit: shape.limit,
            expected,
        })
    }

    async fn measure(&self, load: Load) -> Result<Run, Error> {
        let (limit, expected) = (self.limit, self.expected);
        match &self.via {
            Via::Raw {
                connections,
                request,
            } => {
                let request = request.clone();
                load.run(connections, move |connection| {
                    let request = request.clone();
                    async move {
                        let bytes = raw::get_available_agents(connection, request).await?;
                        if expected > 0 && bytes == 0 {
                            return Err("an empty answer where agents were available".into());
                        }
                        Ok(Done::Ok)
                    }
                })
                .await
            }
            Via::Sdk { clients } => {
                load.run(clients, move |client: Client| async move {
                    let agents = client
                        .get_available_agents(AgentFilter::new(), limit)
                        .await?;
                    if agents.len() != expected {
                        return Err(format!(
                            "{} agents answered, {expected} expected",
                            agents.len()
                        )
                        .into());
                    }
                    Ok(Done::Ok)
                })
                .await
            }
        }
    }

    fn report(&self, name: &str, run: Run) {
        println!(
            "available_agents_per_answer: {} (limit {}, decoded: {})",
            self.expected,
            self.limit,
            matches!(self.via, Via::Sdk { .. })
        );
        report_rate(&format!("{name}_calls"), run.latencies.len(), run.elapsed);
        report_latencies(&format!("{name}_latency"), run.latencies);
    }
}
