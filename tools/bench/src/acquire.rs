//! `acquire`: acquire + release pairs on one configuration with
//! `--max-workload`, driven by the shared load driver, while a watcher polls
//! the stored workload; fails if it ever exceeds the maximum or is not back
//! to 0 at the end.

use std::sync::Arc;
use std::time::Duration;

use agentry_client::{AgentFilter, Client, CreateConfiguration, RegisterInstance, pb};

use crate::Error;
use crate::cli::{Args, Load};
use crate::pg::current_workload;
use crate::setup::{agent_id, setup, wait_for_view};
use crate::stats::{Done, report_latencies, report_rate};

pub(crate) async fn run(
    args: &Args,
    db: &sqlx::PgPool,
    load: Load,
    max_workload: i32,
) -> Result<(), Error> {
    let s = setup(args, 1).await?;
    let config = s
        .tenant
        .create_configuration(
            CreateConfiguration::for_agent(agent_id(0)).max_workload(max_workload),
        )
        .await?;
    for i in 0..4 {
        s.agent
            .register_instance(RegisterInstance::new(format!("bench-{i}"), agent_id(0)))
            .await?;
    }
    wait_for_view(&s.tenant, 1, 1, Duration::from_millis(50)).await?;
    // Watch the stored workload while callers race.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (db, stop, id) = (db.clone(), stop.clone(), config.id.clone());
        tokio::spawn(async move {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let w = current_workload(&db, &id).await.unwrap_or(0);
                peak = peak.max(w);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            peak
        })
    };
    let clients = load.clients(args, &s.tenant_key).await?;
    let run = load
        .run(&clients, |client: Client| async move {
            match client
                .acquire_agent(AgentFilter::new(), Some(Duration::from_secs(60)))
                .await
            {
                Ok(lease) => {
                    client
                        .release_agent(&lease.id, pb::LeaseOutcome::Succeeded)
                        .await?;
                    Ok(Done::Ok)
                }
                Err(agentry_client::Error::ResourceExhausted { .. }) => Ok(Done::Exhausted),
                Err(e) => Err(e.into()),
            }
        })
        .await?;
    let (pairs, exhausted) = (run.latencies.len(), run.exhausted);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = watcher.await?;
    let final_workload = s
        .tenant
        .get_configuration(&config.id)
        .await?
        .current_workload;
    report_rate("acquire_release_pairs", pairs, run.elapsed);
    println!("resource_exhausted: {exhausted}");
    println!("peak_workload_seen: {peak} (max_workload {max_workload})");
    println!("final_workload: {final_workload}");
    report_latencies("pair_latency", run.latencies);
    if peak > max_workload || final_workload != 0 {
        return Err("workload exceeded max_workload or leaked".into());
    }
    Ok(())
}
