//! `available`: GetAvailableAgents over a tenant with `--registrations`
//! instances of `--configurations` configurations, through the SDK (answers
//! decoded and checked) or with `--raw` (pre-encoded requests over bare
//! HTTP/2, answers' bytes counted), driven by the shared load driver.

use std::time::Duration;

use agentry_client::{AgentFilter, Client, CreateConfiguration, RegisterInstance};

use crate::Error;
use crate::cli::{Args, Load, Shape};
use crate::raw;
use crate::setup::{agent_id, setup, spawn_bounded, wait_for_view};
use crate::stats::{Done, report_latencies, report_rate};

pub(crate) async fn run(args: &Args, shape: Shape, load: Load) -> Result<(), Error> {
    let Shape {
        registrations,
        configurations,
        limit,
        raw,
    } = shape;
    let s = setup(args, configurations).await?;
    for i in 0..configurations {
        s.tenant
            .create_configuration(CreateConfiguration::for_agent(agent_id(i)).max_workload(1000))
            .await?;
    }
    spawn_bounded(registrations, 64, |i| {
        let agent = s.agent.clone();
        async move {
            agent
                .register_instance(RegisterInstance::new(
                    format!("bench-{i}"),
                    agent_id(i % configurations),
                ))
                .await
        }
    })
    .await?;
    println!("registrations: {registrations} over {configurations} configurations");
    // Let the view catch up with the registrations.
    wait_for_view(&s.tenant, 1000, configurations, Duration::from_millis(100)).await?;
    let expected = s
        .tenant
        .get_available_agents(AgentFilter::new(), limit)
        .await?
        .len();
    let run = if raw {
        let connections = load.connections(args).await?;
        let request = raw::request(&args.url, &s.tenant_key, limit)?;
        load.run(&connections, move |connection| {
            let request = request.clone();
            async move {
                let bytes = raw::get_available_agents(connection, request).await?;
                if expected > 0 && bytes == 0 {
                    return Err("an empty answer where agents were available".into());
                }
                Ok(Done::Ok)
            }
        })
        .await?
    } else {
        let clients = load.clients(args, &s.tenant_key).await?;
        load.run(&clients, move |client: Client| async move {
            let agents = client
                .get_available_agents(AgentFilter::new(), limit)
                .await?;
            if agents.len() != expected {
                return Err(
                    format!("{} agents answered, {expected} expected", agents.len()).into(),
                );
            }
            Ok(Done::Ok)
        })
        .await?
    };
    println!(
        "available_agents_per_answer: {expected} (limit {limit}, decoded: {})",
        !raw
    );
    report_rate("available_calls", run.latencies.len(), run.elapsed);
    report_latencies("available_latency", run.latencies);
    Ok(())
}
