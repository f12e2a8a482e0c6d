//! What every mode starts with: a fresh tenant (`bench-<time>`) with a tenant
//! key and an agent key, the manifests its agents name, and clients for both
//! keys. Each run gets its own tenant so runs on one database do not see each
//! other's registrations. Also the bounded spawning the modes open streams
//! and register instances with, and the wait for the registrations to show.

use std::future::Future;
use std::time::Duration;

use agentry_client::{AgentFilter, Client, CreateApiKey, CreateManifest, pb};

use crate::Error;
use crate::cli::Args;

pub(crate) struct Setup {
    pub(crate) tenant_key: String,
    pub(crate) agent_key: String,
    pub(crate) tenant: Client,
    pub(crate) agent: Client,
}

/// A new tenant, its keys and clients, and `manifests` manifests (kept when
/// an earlier run created them).
pub(crate) async fn setup(args: &Args, manifests: usize) -> Result<Setup, Error> {
    let admin = client(args, &args.admin_key).await?;
    let suffix = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_micros()
    );
    let tenant = admin.create_tenant(&format!("bench-{suffix}")).await?;
    let key = |role| admin.create_api_key(CreateApiKey::new(role).tenant(&tenant.id));
    let tenant_key = key(pb::Role::Tenant).await?.secret;
    let agent_key = key(pb::Role::Agent).await?.secret;
    for i in 0..manifests {
        match admin
            .create_manifest(CreateManifest::new(agent_id(i), "bench", "Bench", "1.0.0"))
            .await
        {
            Ok(_) | Err(agentry_client::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Setup {
        tenant: client(args, &tenant_key).await?,
        agent: client(args, &agent_key).await?,
        tenant_key,
        agent_key,
    })
}

/// An SDK client of the server with `key`.
pub(crate) async fn client(args: &Args, key: &str) -> Result<Client, agentry_client::Error> {
    Client::builder(args.url.as_str())
        .api_key(key)
        .connect()
        .await
}

/// Waits, asking every `poll`, until the tenant's view answers `want` of at
/// most `limit` available agents: until the registrations have reached it.
pub(crate) async fn wait_for_view(
    tenant: &Client,
    limit: i32,
    want: usize,
    poll: Duration,
) -> Result<(), Error> {
    while tenant
        .get_available_agents(AgentFilter::new(), limit)
        .await?
        .len()
        != want
    {
        tokio::time::sleep(poll).await;
    }
    Ok(())
}

/// Runs `task(0)` .. `task(count - 1)` as tasks, at most `most` at once, and
/// collects what they return (in the order they finish); the first error ends
/// it.
pub(crate) async fn spawn_bounded<T, E, Fut>(
    count: usize,
    most: usize,
    mut task: impl FnMut(usize) -> Fut,
) -> Result<Vec<T>, Error>
where
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
    Error: From<E>,
{
    let mut tasks = tokio::task::JoinSet::new();
    let mut out = Vec::new();
    for i in 0..count {
        tasks.spawn(task(i));
        if tasks.len() >= most
            && let Some(r) = tasks.join_next().await
        {
            out.push(r??);
        }
    }
    while let Some(r) = tasks.join_next().await {
        out.push(r??);
    }
    Ok(out)
}

/// The agent id of manifest `i`.
pub(crate) fn agent_id(i: usize) -> String {
    format!("bench-agent-{i:03}")
}
