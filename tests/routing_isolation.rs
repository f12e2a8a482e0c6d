//! Routing is tenant-scoped, refused to other roles, and validates its input.

mod common;

use std::time::Duration;

use agentry_client::{AgentFilter, Code, pb};
use common::routing::{available, configure, manifest, register, wait_available, workload};
use common::{TestServer, code};

#[tokio::test]
async fn routing_is_tenant_scoped_and_validated() {
    let s = TestServer::start().await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let a = s.tenant("acme").await;
    let b = s.tenant("globex").await;
    let c = configure(&a, "ide-agent", 3).await;
    register(&a, "i1", "ide-agent").await;
    wait_available(&a.client, AgentFilter::new(), "a's agent", |x| x.len() == 1).await;
    let lease = a
        .client
        .acquire_agent(AgentFilter::new(), None)
        .await
        .expect("acquire");

    assert!(available(&b.client, AgentFilter::new()).await.is_empty());
    assert_eq!(
        code(b.client.acquire_agent(AgentFilter::new(), None).await),
        Code::ResourceExhausted
    );
    assert_eq!(
        code(b.client.renew_lease(&lease.id, None).await),
        Code::NotFound
    );
    assert_eq!(
        code(
            b.client
                .release_agent(&lease.id, pb::LeaseOutcome::Succeeded)
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(b.client.get_agent_metrics(&c.id, None).await),
        Code::NotFound
    );
    assert_eq!(workload(&a.client, &c.id).await, 1, "b changed nothing");
    let mut watch = b
        .client
        .watch_available_agents(AgentFilter::new())
        .await
        .expect("watch");
    let first = watch.message().await.expect("event").expect("snapshot");
    assert!(
        matches!(first.event, Some(pb::availability_event::Event::Snapshot(ref s)) if s.agents.is_empty())
    );

    // Agents and admins do not route.
    assert_eq!(
        code(a.agent.get_available_agents(AgentFilter::new(), 0).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(s.admin.acquire_agent(AgentFilter::new(), None).await),
        Code::PermissionDenied
    );

    let field = |e: agentry_client::Error| e.field().map(str::to_owned);
    assert_eq!(
        field(
            a.client
                .get_available_agents(AgentFilter::new(), 5000)
                .await
                .expect_err("limit")
        ),
        Some("limit".into())
    );
    assert_eq!(
        field(
            a.client
                .get_available_agents(AgentFilter::new().agent_id("Bad Id"), 0)
                .await
                .expect_err("id")
        ),
        Some("filter.agent_id".into())
    );
    assert_eq!(
        field(
            a.client
                .get_available_agents(AgentFilter::new().agent_type("Bad Type"), 0)
                .await
                .expect_err("type")
        ),
        Some("filter.agent_type".into())
    );
    assert_eq!(
        field(
            a.client
                .get_available_agents(AgentFilter::new().capability(""), 0)
                .await
                .expect_err("cap")
        ),
        Some("filter.capabilities[0]".into())
    );
    assert_eq!(
        field(
            a.client
                .acquire_agent(AgentFilter::new(), Some(Duration::from_secs(7200)))
                .await
                .expect_err("ttl")
        ),
        Some("ttl".into())
    );
    assert_eq!(
        field(
            a.client
                .acquire_agent(AgentFilter::new(), Some(Duration::ZERO))
                .await
                .expect_err("ttl")
        ),
        Some("ttl".into())
    );
    assert_eq!(
        field(a.client.renew_lease("nope", None).await.expect_err("id")),
        Some("lease_id".into())
    );
    assert_eq!(
        field(
            a.client
                .release_agent(&lease.id, pb::LeaseOutcome::Unspecified)
                .await
                .expect_err("outcome")
        ),
        Some("outcome".into())
    );
    assert_eq!(
        field(
            a.client
                .get_agent_metrics(&c.id, Some(Duration::from_secs(365 * 86400)))
                .await
                .expect_err("period")
        ),
        Some("period".into())
    );
    assert_eq!(
        field(a.client.get_agent_metrics("x", None).await.expect_err("id")),
        Some("configuration_id".into())
    );
    assert_eq!(
        workload(&a.client, &c.id).await,
        1,
        "refused calls changed nothing"
    );
}
