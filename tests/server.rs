//! The server as operators meet it: grpc.health.v1, reflection, database
//! outages and graceful shutdown.

mod common;

use std::time::Duration;

use agentry_client::{Code, ListManifests, pb};
use common::stream::{heartbeat, hello, raw_stream, raw_stream_on, welcome};
use common::{TestDb, TestServer, eventually};
use pb::health_stream_response::Message as In;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const DEADLINE: Duration = Duration::from_secs(10);

async fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

async fn health(addr: std::net::SocketAddr, service: &str) -> ServingStatus {
    let mut client = HealthClient::new(channel(addr).await);
    let response = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("check");
    response.into_inner().status()
}

#[tokio::test]
async fn health_is_serving() {
    let mut s = TestServer::start().await;
    assert_eq!(health(s.addr, "").await, ServingStatus::Serving);
    assert_eq!(
        health(s.addr, "agentry.v1.ManifestService").await,
        ServingStatus::Serving
    );
    s.stop().await;
}

#[tokio::test]
async fn reflection_lists_every_service() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    let s = TestServer::start().await;
    let mut client = ServerReflectionClient::new(channel(s.addr).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = stream
        .message()
        .await
        .expect("message")
        .expect("a response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected {response:?}")
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    for expected in [
        "agentry.v1.AdminService",
        "agentry.v1.ConfigurationService",
        "agentry.v1.ManifestService",
        "agentry.v1.RegistrationService",
        "agentry.v1.RoutingService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[tokio::test]
async fn descriptor_set_decodes_with_comments() {
    use prost::Message as _;
    let fds = prost_types::FileDescriptorSet::decode(agentry_server::pb::FILE_DESCRIPTOR_SET)
        .expect("decode");
    let manifest = fds
        .file
        .iter()
        .find(|f| f.name() == "agentry/v1/manifest.proto")
        .expect("manifest.proto");
    assert!(
        manifest
            .source_code_info
            .as_ref()
            .is_some_and(|i| !i.location.is_empty()),
        "comments kept for describe"
    );
}

/// A database outage turns the services that need it NOT_SERVING and their
/// calls UNAVAILABLE; readiness ("") and liveness stay SERVING
/// (`tests/outages.rs` shows what the replica still serves).
#[tokio::test]
async fn database_outage_turns_the_services_not_serving_and_calls_unavailable() {
    let db = TestDb::new().await;
    let (proxy, pool) = db.through_proxy().await;
    let s = TestServer::with_pool(pool).await;
    s.admin
        .list_manifests(ListManifests::new())
        .await
        .expect("works while up");

    assert_eq!(
        health(s.addr, agentry_server::server::LIVENESS).await,
        ServingStatus::Serving
    );
    proxy.cut();
    eventually(
        Duration::from_secs(10),
        "ManifestService NOT_SERVING",
        || async {
            health(s.addr, "agentry.v1.ManifestService").await == ServingStatus::NotServing
        },
    )
    .await;
    assert_eq!(
        health(s.addr, "agentry.v1.RoutingService").await,
        ServingStatus::NotServing,
        "every service's readiness follows the database: each has calls that need it"
    );
    assert_eq!(
        health(s.addr, "").await,
        ServingStatus::Serving,
        "the server's readiness does not: it routes from its view"
    );
    assert_eq!(
        health(s.addr, agentry_server::server::LIVENESS).await,
        ServingStatus::Serving,
        "liveness is the process alone: no restart for a database outage"
    );
    let err = s
        .admin
        .list_manifests(ListManifests::new())
        .await
        .expect_err("database is down");
    assert_eq!(err.code(), Some(Code::Unavailable), "{err:?}");

    proxy.restore();
    eventually(Duration::from_secs(10), "health SERVING again", || async {
        health(s.addr, "agentry.v1.ManifestService").await == ServingStatus::Serving
    })
    .await;
    s.admin
        .list_manifests(ListManifests::new())
        .await
        .expect("works again");
    drop(db);
}

#[tokio::test]
async fn shutdown_refuses_new_connections_and_returns() {
    let mut s = TestServer::start().await;
    let addr = s.addr;
    s.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );
}

/// An agent's raw stream on `s`, with one heartbeat acked: the sender, the
/// stream, and the ack's server time in microseconds.
async fn stream_with_an_acked_heartbeat(
    s: &TestServer,
    t: &common::Tenant,
) -> (
    tokio::sync::mpsc::Sender<pb::HealthStreamRequest>,
    tonic::Streaming<pb::HealthStreamResponse>,
    i64,
) {
    let (tx, stream) = raw_stream(s, &t.agent_key, vec![hello("inst", "ide-agent")]).await;
    let mut stream = stream.expect("stream");
    let epoch = welcome(&mut stream).await.epoch;
    tx.send(heartbeat(1, pb::HealthStatus::Healthy, epoch))
        .await
        .expect("send");
    let Some(In::Ack(ack)) = stream.message().await.expect("ack").and_then(|m| m.message) else {
        panic!("expected an ack")
    };
    let acked = ack.server_time.expect("server time");
    let acked = chrono::DateTime::from_timestamp(acked.seconds, acked.nanos as u32)
        .expect("time")
        .timestamp_micros();
    (tx, stream, acked)
}

/// A server whose heartbeat flush runs once an hour: only shutdown's own
/// flush can write a heartbeat.
async fn server_without_flushes() -> TestServer {
    let s = TestServer::start_with(|c| {
        c.registry.heartbeat_flush_interval = Duration::from_secs(3600);
    })
    .await;
    s.manifest("ide-agent").await;
    s
}

/// Graceful shutdown as the README describes it: health turns NOT_SERVING,
/// health streams hear Drain and end UNAVAILABLE, an in-flight call
/// completes, and the server stops (within `STOP_DEADLINE`, or the test fails).
#[tokio::test]
async fn shutdown_turns_not_serving_drains_streams_and_finishes_calls() {
    let mut s = server_without_flushes().await;
    let t = s.tenant("acme").await;
    let mut watch = HealthClient::new(channel(s.addr).await)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let mut next_status = async || {
        tokio::time::timeout(DEADLINE, watch.message())
            .await
            .expect("in time")
            .expect("health")
            .expect("open")
            .status()
    };
    assert_eq!(next_status().await, ServingStatus::Serving);
    let (tx, mut stream, _) = stream_with_an_acked_heartbeat(&s, &t).await;

    // A call in flight: waiting on a row lock held here.
    let configuration = t
        .client
        .list_configurations(agentry_client::ListConfigurations::new())
        .await
        .expect("list")
        .configurations
        .remove(0);
    let lock = common::lock_configuration(&s.pool, &configuration.id).await;
    let call = {
        let (client, id) = (t.client.clone(), configuration.id.clone());
        tokio::spawn(async move { client.update_workload(&id, 1).await })
    };
    common::wait_for_lock_waits(&s.pool, "agent_configurations", 1).await;

    s.signal_stop();
    assert_eq!(next_status().await, ServingStatus::NotServing);
    drop(watch);
    let drain = stream
        .message()
        .await
        .expect("drain")
        .and_then(|m| m.message);
    assert!(matches!(drain, Some(In::Drain(_))), "{drain:?}");
    let end = stream.message().await.expect_err("the stream ends");
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end:?}");
    drop((tx, stream));
    assert!(!call.is_finished(), "the call is still in flight");

    lock.commit().await.expect("unlock");
    let updated = call
        .await
        .expect("join")
        .expect("the in-flight call completes");
    assert_eq!(updated.current_workload, 1);
    s.stop().await;
}

/// "Flush state, exit": heartbeats taken since the last flush are written
/// by shutdown's own flush, whatever happens to the streams first.
#[tokio::test]
async fn heartbeats_taken_just_before_shutdown_are_flushed() {
    let mut s = server_without_flushes().await;
    let t = s.tenant("acme").await;
    let (_tx, _stream, acked) = stream_with_an_acked_heartbeat(&s, &t).await;
    s.stop().await;
    let stored: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT last_health_check FROM agent_registrations")
            .fetch_one(&s.pool)
            .await
            .expect("read");
    assert!(
        stored.timestamp_micros() >= acked,
        "the heartbeat acked before shutdown was flushed: stored {stored}, acked {acked} µs"
    );
}

/// 1,000 health streams and 10 watches open, no call in flight: shutdown
/// does not wait out its grace period (60 s here). The watches end at once
/// with UNAVAILABLE, the streams hear Drain and end, and the server is gone
/// well within the harness's deadline; the time it took is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_streams_and_watches_open_is_prompt() {
    const STREAMS: usize = 1_000;
    let mut s = TestServer::start_with(|c| c.shutdown_grace = Duration::from_secs(60)).await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let mut streams = Vec::with_capacity(STREAMS);
    for connection in 0..STREAMS / 100 {
        let channel = channel(s.addr).await;
        let mut opening = tokio::task::JoinSet::new();
        for i in 0..100 {
            let (channel, key) = (channel.clone(), t.agent_key.clone());
            opening.spawn(async move {
                let (tx, stream) =
                    raw_stream_on(channel, &key, &format!("a{connection}-{i}")).await;
                let mut stream = stream.expect("open");
                welcome(&mut stream).await;
                (tx, stream)
            });
        }
        streams.extend(opening.join_all().await);
    }
    let mut watches = Vec::new();
    for _ in 0..10 {
        let mut watch = t
            .client
            .watch_available_agents(pb::AgentFilter::default())
            .await
            .expect("watch");
        watch.message().await.expect("snapshot").expect("event");
        watches.push(watch);
    }

    let started = std::time::Instant::now();
    s.stop().await;
    let took = started.elapsed();
    eprintln!("shutdown with {STREAMS} streams and 10 watches took {took:?}");
    assert!(
        took < Duration::from_secs(60),
        "did not wait out the grace period"
    );
    for mut watch in watches {
        let end = loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("a watch ended with OK"),
                Err(status) => break status,
            }
        };
        assert_eq!(end.code(), Some(Code::Unavailable), "{end:?}");
        assert!(end.to_string().contains("shutting down"), "{end:?}");
    }
    for (_tx, mut stream) in streams {
        let mut drained = false;
        let end = loop {
            match stream.message().await {
                Ok(Some(m)) => drained |= matches!(m.message, Some(In::Drain(_))),
                Ok(None) => break None,
                Err(status) => break Some(status.code()),
            }
        };
        assert!(drained, "every stream heard Drain");
        assert_eq!(end, Some(tonic::Code::Unavailable));
    }
}
