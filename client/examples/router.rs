//! A service routing tasks to a tenant's agents: keeps a live view of the
//! available agents, leases capacity for each task, and releases it with the
//! task's outcome. `AGENTRY_URL` may list several replicas, comma-separated:
//! calls are balanced over those that pass their health check, and the
//! router, its leases and retried acquires carry on when one goes away.
//! With `AGENTRY_RESOLVE=1` each URL's host name is re-resolved every 10 s
//! (a Kubernetes headless service, say).
//!
//! ```sh
//! AGENTRY_URL=http://10.0.0.1:50051,http://10.0.0.2:50051 AGENTRY_API_KEY=<tenant key> \
//!   cargo run -p agentry-client --example router -- code_editing
//! ```

use std::time::Duration;

use agentry_client::{AgentFilter, Client, Error, Outcome};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let urls = std::env::var("AGENTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let key =
        std::env::var("AGENTRY_API_KEY").map_err(|_| "set AGENTRY_API_KEY to a tenant key")?;
    let capability = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "code_editing".into());

    let mut urls = urls.split(',').map(str::trim);
    let mut builder = Client::builder(urls.next().unwrap_or_default()).api_key(key);
    for url in urls {
        builder = builder.endpoint(url);
    }
    if std::env::var("AGENTRY_RESOLVE").is_ok_and(|v| v == "1") {
        builder = builder.resolve(Duration::from_secs(10));
    }
    let client = builder.connect().await?;
    let router = client
        .router(AgentFilter::new().capability(capability))
        .await?
        .lease_ttl(Duration::from_secs(30));
    for agent in router.agents() {
        println!("{} score {:.3}", agent.agent_id, agent.score);
    }

    for task in 0..3 {
        let lease = match router.acquire().await {
            Ok(lease) => lease,
            Err(Error::ResourceExhausted { .. }) => {
                println!("task {task}: every matching agent is busy; try later");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let instance = lease
            .instance()
            .map(|i| i.instance_id.clone())
            .unwrap_or_default();
        println!(
            "task {task}: routed to {instance} (epoch {})",
            lease.epoch()
        );
        // ... hand the task to the instance; the lease renews itself meanwhile ...
        tokio::time::sleep(Duration::from_millis(200)).await;
        lease.complete(Outcome::Succeeded).await?;
    }
    Ok(())
}
