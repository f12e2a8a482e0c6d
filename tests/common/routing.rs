//! Fixtures of the routing tests: manifests, configurations and instances
//! made through the SDK, and waits on what `GetAvailableAgents` answers.

use std::time::Duration;

use agentry_client::{
    AgentFilter, Client, CreateConfiguration, CreateManifest, RegisterInstance, pb,
};

use super::{Tenant, TestServer, eventually};

/// How long a routing test waits for a condition.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub async fn manifest(
    s: &TestServer,
    agent_id: &str,
    agent_type: &str,
    caps: &[&str],
    status: pb::ManifestStatus,
) {
    s.admin
        .create_manifest(
            CreateManifest::new(agent_id, agent_type, agent_id, "1.0.0")
                .capabilities(caps.iter().copied())
                .status(status),
        )
        .await
        .expect("manifest");
}

pub async fn configure(t: &Tenant, agent_id: &str, max_workload: i32) -> pb::Configuration {
    t.client
        .create_configuration(CreateConfiguration::for_agent(agent_id).max_workload(max_workload))
        .await
        .expect("configuration")
}

pub async fn register(t: &Tenant, instance_id: &str, agent_id: &str) -> pb::Registration {
    t.agent
        .register_instance(RegisterInstance::new(instance_id, agent_id))
        .await
        .expect("register")
        .registration
        .expect("registration")
}

/// (agent_id, instance_id, score) of the available agents, as `client` sees them.
pub async fn available(client: &Client, filter: AgentFilter) -> Vec<(String, String, f64)> {
    client
        .get_available_agents(filter, 0)
        .await
        .expect("available")
        .into_iter()
        .map(|a| {
            (
                a.agent_id,
                a.instance.map(|i| i.instance_id).unwrap_or_default(),
                a.score,
            )
        })
        .collect()
}

pub async fn wait_available(
    client: &Client,
    filter: AgentFilter,
    what: &str,
    pred: impl Fn(&[(String, String, f64)]) -> bool,
) {
    eventually(DEADLINE, what, || {
        let (client, filter) = (client.clone(), filter.clone());
        let pred = &pred;
        async move { pred(&available(&client, filter).await) }
    })
    .await;
}

pub async fn next(events: &mut agentry_client::AvailabilityEvents) -> pb::AvailabilityEvent {
    tokio::time::timeout(DEADLINE, events.message())
        .await
        .expect("in time")
        .expect("event")
        .expect("open")
}

pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// The `current_workload` of a configuration, as `client` reads it.
pub async fn workload(client: &Client, configuration_id: &str) -> i32 {
    client
        .get_configuration(configuration_id)
        .await
        .expect("get configuration")
        .current_workload
}

/// A tenant of `s` with one instance of a configuration whose entry is
/// large (a 30 KiB prompt), and a watch of it that has not read yet; the
/// configuration's workload then changes 400 times (12 MB of entries) while
/// the watch does not read.
pub async fn a_large_entry_changing_under_an_unread_watch(
    s: &TestServer,
) -> (Tenant, agentry_client::AvailabilityEvents) {
    manifest(s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    let c = t
        .client
        .create_configuration(
            CreateConfiguration::for_agent("ide-agent")
                .max_workload(1000)
                .system_prompt("p".repeat(30 * 1024)),
        )
        .await
        .expect("configuration");
    register(&t, "i1", "ide-agent").await;
    wait_available(&t.client, AgentFilter::new(), "available", |a| a.len() == 1).await;
    let events = t
        .client
        .watch_available_agents(AgentFilter::new())
        .await
        .expect("watch");
    for _ in 0..400 {
        t.client.update_workload(&c.id, 1).await.expect("+1");
    }
    (t, events)
}
