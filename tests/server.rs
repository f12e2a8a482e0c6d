//! The server as operators meet it: grpc.health.v1, reflection, database
//! outages and graceful shutdown.

mod common;

use std::time::Duration;

use agentry_client::{Code, ListManifests};
use common::{TestDb, TestServer, eventually};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

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

#[tokio::test]
async fn database_outage_turns_health_not_serving_and_calls_unavailable() {
    let db = TestDb::new().await;
    let (proxy, pool) = db.through_proxy().await;
    let s = TestServer::with_pool(pool).await;
    s.admin
        .list_manifests(ListManifests::new())
        .await
        .expect("works while up");

    proxy.cut();
    eventually(Duration::from_secs(10), "health NOT_SERVING", || async {
        health(s.addr, "").await == ServingStatus::NotServing
    })
    .await;
    let err = s
        .admin
        .list_manifests(ListManifests::new())
        .await
        .expect_err("database is down");
    assert_eq!(err.code(), Some(Code::Unavailable), "{err:?}");

    proxy.restore();
    eventually(Duration::from_secs(10), "health SERVING again", || async {
        health(s.addr, "").await == ServingStatus::Serving
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
