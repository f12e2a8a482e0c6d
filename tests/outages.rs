//! Database outages as callers, probes and the sweep meet them: every
//! failure to reach, handshake with or keep a connection to PostgreSQL is
//! UNAVAILABLE with `DATABASE_UNAVAILABLE` and RetryInfo, never INTERNAL;
//! readiness (`""`) follows what a replica can serve from memory while the
//! names of the services that need the database follow it; a sweep's flush
//! waits for the heartbeat flush in flight before the sweep judges silence.

mod common;

use std::time::Duration;

use agentry_client::{
    AgentFilter, Client, Code, ListRegistrations, RegisterInstance, RetryPolicy, pb,
};
use common::proxy::Reset;
use common::stream::{heartbeat, hello, raw_stream, welcome};
use common::{TestDb, TestServer, eventually, routing};
use pb::health_stream_response::Message as In;
use sqlx::postgres::{PgPoolOptions, PgSslMode};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

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

async fn health(s: &TestServer, service: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(s.url())
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("check")
        .into_inner()
        .status()
}

/// The service names whose status follows the database.
const SERVICES: [&str; 5] = [
    "agentry.v1.ManifestService",
    "agentry.v1.ConfigurationService",
    "agentry.v1.RegistrationService",
    "agentry.v1.RoutingService",
    "agentry.v1.AdminService",
];

async fn services_are(s: &TestServer, status: ServingStatus) -> bool {
    for name in SERVICES {
        if health(s, name).await != status {
            return false;
        }
    }
    true
}

/// Waits for the next `Ack` on `stream`.
async fn ack(stream: &mut tonic::Streaming<pb::HealthStreamResponse>) -> pb::Ack {
    loop {
        let message = tokio::time::timeout(DEADLINE, stream.message())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("a message");
        if let Some(In::Ack(ack)) = message.message {
            return ack;
        }
    }
}

/// Through a cut of the database, the replica keeps routing from its view
/// and acknowledging heartbeats from memory: readiness (`""`, what a load
/// balancer probes) stays SERVING, and the services whose calls need the
/// database say NOT_SERVING under their own names until it is back.
#[tokio::test]
async fn readiness_stays_serving_through_a_database_cut_and_the_services_that_need_it_do_not() {
    let db = TestDb::new().await;
    let (proxy, pool) = db.through_proxy().await;
    let s = TestServer::with_pool(pool).await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    routing::configure(&t, "ide-agent", 10).await;
    let (tx, stream) = raw_stream(&s, &t.agent_key, vec![hello("inst-1", "ide-agent")]).await;
    let mut stream = stream.expect("stream");
    let epoch = welcome(&mut stream).await.epoch;
    routing::wait_available(&t.client, AgentFilter::new(), "inst-1 routable", |a| {
        a.len() == 1
    })
    .await;
    assert_eq!(health(&s, "").await, ServingStatus::Serving);
    assert!(services_are(&s, ServingStatus::Serving).await);

    proxy.cut();
    eventually(
        DEADLINE,
        "the services that need the database NOT_SERVING",
        || services_are(&s, ServingStatus::NotServing),
    )
    .await;
    assert_eq!(
        health(&s, "").await,
        ServingStatus::Serving,
        "readiness stays SERVING: the view and the streams work from memory"
    );
    assert_eq!(
        health(&s, agentry_server::server::LIVENESS).await,
        ServingStatus::Serving
    );
    // What it says it serves, it serves: routing from the view, heartbeats
    // acknowledged on the stream.
    let available = routing::available(&t.client, AgentFilter::new()).await;
    assert_eq!(
        available
            .iter()
            .map(|(_, instance, _)| instance.as_str())
            .collect::<Vec<_>>(),
        ["inst-1"]
    );
    tx.send(heartbeat(1, pb::HealthStatus::Healthy, epoch))
        .await
        .expect("send");
    ack(&mut stream).await;

    proxy.restore();
    eventually(DEADLINE, "the services SERVING again", || {
        services_are(&s, ServingStatus::Serving)
    })
    .await;
    assert_eq!(health(&s, "").await, ServingStatus::Serving);
    drop(db);
}
