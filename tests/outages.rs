//! Database outages as callers meet them: every failure to reach,
//! handshake with or keep a connection to PostgreSQL is UNAVAILABLE with
//! `DATABASE_UNAVAILABLE` and RetryInfo, never INTERNAL.

mod common;

use std::time::Duration;

use agentry_client::{AgentFilter, Client, Code, ListRegistrations, RegisterInstance, RetryPolicy};
use common::proxy::Reset;
use common::{TestDb, TestServer, eventually, routing};
use sqlx::postgres::{PgPoolOptions, PgSslMode};

const DEADLINE: Duration = Duration::from_secs(10);

/// A client of `s` with `key` that tries each call once, so that every
/// answer of the server is seen.
async fn once(s: &TestServer, key: &str) -> Client {
    Client::builder(s.url())
        .api_key(key)
        .retry_policy(RetryPolicy::never())
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("connect client")
}

/// The four calls of the issue, each once, by name: `tenant` and `agent`
/// are the tenant's clients, `configuration` one of its configurations.
async fn calls(
    tenant: &Client,
    agent: &Client,
    configuration: &str,
) -> Vec<(&'static str, agentry_client::Result<()>)> {
    vec![
        (
            "AcquireAgent",
            tenant
                .acquire_agent(AgentFilter::new(), None)
                .await
                .map(drop),
        ),
        (
            "GetConfiguration",
            tenant.get_configuration(configuration).await.map(drop),
        ),
        (
            "ListRegistrations",
            tenant
                .list_registrations(ListRegistrations::new())
                .await
                .map(drop),
        ),
        (
            "RegisterInstance",
            agent
                .register_instance(RegisterInstance::new("inst-2", "ide-agent"))
                .await
                .map(drop),
        ),
    ]
}

/// A proxy or load balancer that accepts connections and then resets them,
/// with `sslmode=prefer` (a URL's default): the fresh connections of the
/// pool fail in their handshake (sqlx reads the SSLRequest's missing answer
/// as the byte 0x00, a protocol error), or with a TCP reset. Both are the
/// database being away, every time, for every call.
#[tokio::test]
async fn a_database_that_accepts_and_resets_connections_is_unavailable_never_internal() {
    let db = TestDb::new().await;
    let (proxy, pool) = db
        .through_proxy_ssl(
            PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_millis(500)),
            PgSslMode::Prefer,
        )
        .await;
    let s = TestServer::with_pool(pool).await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let c = routing::configure(&t, "ide-agent", 1000).await;
    routing::register(&t, "inst-1", "ide-agent").await;
    routing::wait_available(&t.client, AgentFilter::new(), "inst-1 routable", |a| {
        a.len() == 1
    })
    .await;
    let (tenant, agent) = (once(&s, &t.tenant_key).await, once(&s, &t.agent_key).await);
    for (name, result) in calls(&tenant, &agent, &c.id).await {
        result.unwrap_or_else(|e| panic!("{name} works while the database is up: {e:?}"));
    }

    for how in [Reset::AfterFirstPacket, Reset::Abort] {
        proxy.reset_new(how);
        for round in 0..5 {
            for (name, result) in calls(&tenant, &agent, &c.id).await {
                let err = result.expect_err("the database is away");
                assert_eq!(
                    (err.code(), err.reason().as_deref()),
                    (Some(Code::Unavailable), Some("DATABASE_UNAVAILABLE")),
                    "{how:?}, round {round}, {name}: {err:?}"
                );
                assert_eq!(
                    err.retry_after(),
                    Some(Duration::from_secs(1)),
                    "{how:?}, {name}: RetryInfo"
                );
            }
        }
        proxy.restore();
        eventually(DEADLINE, "every call works again", || async {
            calls(&tenant, &agent, &c.id)
                .await
                .iter()
                .all(|(_, r)| r.is_ok())
        })
        .await;
    }
}
