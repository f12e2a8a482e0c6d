//! The standard error model: every status carries `google.rpc` details
//! (`ErrorInfo` always, `BadRequest` on INVALID_ARGUMENT, `RetryInfo` where a
//! retry helps), read through the SDK and decoded raw from
//! `grpc-status-details-bin` by a plain tonic client.

mod common;

use std::time::Duration;

use agentry_client::{Code, CreateManifest, ListManifests, pb};
use common::{TestDb, TestServer, eventually};
use tonic::transport::Channel;
use tonic_types::{ErrorDetails, StatusExt};

/// A plain tonic client of the manifest service (keys go on each request).
async fn raw_manifests(
    s: &TestServer,
) -> pb::manifest_service_client::ManifestServiceClient<Channel> {
    let channel = Channel::from_shared(s.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    pb::manifest_service_client::ManifestServiceClient::new(channel)
}

fn with_key<T>(message: T, key: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(key) = key {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {key}").parse().expect("header"),
        );
    }
    request
}

/// The decoded `grpc-status-details-bin` of `status`, with its `ErrorInfo`.
fn decoded(status: &tonic::Status) -> (ErrorDetails, tonic_types::ErrorInfo) {
    // tonic moves grpc-status-details-bin out of the metadata into details().
    assert!(
        !status.details().is_empty(),
        "the details travel in grpc-status-details-bin"
    );
    let details = status.check_error_details().expect("details decode");
    let info = details.error_info().cloned().expect("an ErrorInfo");
    assert_eq!(info.domain, "agentry.dev");
    (details, info)
}

#[tokio::test]
async fn invalid_argument_carries_bad_request_and_error_info() {
    let s = TestServer::start().await;
    let bad = CreateManifest::new("IDE", "ide", "IDE Agent", "1.0.0");

    let err = s
        .admin
        .create_manifest(bad.clone())
        .await
        .expect_err("bad agent_id");
    assert_eq!(err.code(), Some(Code::InvalidArgument));
    assert_eq!(err.field(), Some("manifest.agent_id"));
    assert_eq!(err.reason().as_deref(), Some("INVALID_FIELD"));
    let details = err.details().expect("details");
    let violation = &details.bad_request().expect("BadRequest").field_violations[0];
    assert!(violation.description.contains("slug"), "{violation:?}");

    let admin_key = admin_key(&s).await;
    let status = raw_manifests(&s)
        .await
        .create_manifest(with_key(
            pb::CreateManifestRequest {
                manifest: Some(pb::Manifest {
                    agent_id: "IDE".into(),
                    agent_type: "ide".into(),
                    name: "IDE Agent".into(),
                    version: "1.0.0".into(),
                    ..Default::default()
                }),
            },
            Some(&admin_key),
        ))
        .await
        .expect_err("bad agent_id");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let (details, info) = decoded(&status);
    let violations = &details.bad_request().expect("BadRequest").field_violations;
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].field, "manifest.agent_id");
    assert_eq!(info.reason, "INVALID_FIELD");
    assert_eq!(info.metadata["field"], "manifest.agent_id");
    assert!(details.retry_info().is_none());
}

#[tokio::test]
async fn not_found_carries_error_info_with_the_resource() {
    let s = TestServer::start().await;
    let missing = uuid::Uuid::new_v4().to_string();

    let err = s.admin.get_manifest(&missing).await.expect_err("missing");
    assert_eq!(err.code(), Some(Code::NotFound));
    assert_eq!(err.reason().as_deref(), Some("NOT_FOUND"));
    assert_eq!(err.field(), None);

    let admin_key = admin_key(&s).await;
    let status = raw_manifests(&s)
        .await
        .get_manifest(with_key(
            pb::GetManifestRequest {
                key: Some(pb::get_manifest_request::Key::Id(missing)),
            },
            Some(&admin_key),
        ))
        .await
        .expect_err("missing");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let (details, info) = decoded(&status);
    assert_eq!(info.reason, "NOT_FOUND");
    assert_eq!(info.metadata["resource"], "manifest");
    assert!(details.bad_request().is_none());
}

#[tokio::test]
async fn unauthenticated_carries_its_reason() {
    let s = TestServer::start().await;
    let stranger = common::client(s.addr, "agk_00000000000000000000000000000000_nope").await;
    let err = stranger
        .list_manifests(ListManifests::new())
        .await
        .expect_err("unknown key");
    assert_eq!(err.code(), Some(Code::Unauthenticated));
    assert_eq!(err.reason().as_deref(), Some("UNAUTHENTICATED"));

    let status = raw_manifests(&s)
        .await
        .list_manifests(with_key(pb::ListManifestsRequest::default(), None))
        .await
        .expect_err("no key");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let (_, info) = decoded(&status);
    assert_eq!(info.reason, "UNAUTHENTICATED");
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_with_retry_info() {
    let db = TestDb::new().await;
    let (proxy, pool) = db.through_proxy().await;
    let s = TestServer::with_pool(pool).await;
    let admin_key = admin_key(&s).await;
    s.admin
        .list_manifests(ListManifests::new())
        .await
        .expect("works while up");

    proxy.cut();
    eventually(
        Duration::from_secs(10),
        "calls fail UNAVAILABLE",
        || async {
            s.admin
                .list_manifests(ListManifests::new())
                .await
                .err()
                .and_then(|e| e.code())
                == Some(Code::Unavailable)
        },
    )
    .await;
    let err = s
        .admin
        .list_manifests(ListManifests::new())
        .await
        .expect_err("database is down");
    assert_eq!(err.reason().as_deref(), Some("DATABASE_UNAVAILABLE"));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    assert!(
        !err.to_string().contains("pool") && !err.to_string().contains("127.0.0.1"),
        "no raw database text: {err}"
    );

    let status = raw_manifests(&s)
        .await
        .list_manifests(with_key(
            pb::ListManifestsRequest::default(),
            Some(&admin_key),
        ))
        .await
        .expect_err("database is down");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let (details, info) = decoded(&status);
    assert_eq!(info.reason, "DATABASE_UNAVAILABLE");
    assert_eq!(
        details.retry_info().and_then(|r| r.retry_delay),
        Some(Duration::from_secs(1))
    );
    proxy.restore();
}

/// The status that ends `stream`.
async fn end_of<T>(stream: &mut tonic::Streaming<T>) -> tonic::Status {
    common::stream::end_of(stream, Duration::from_secs(10)).await
}

/// Asserts that `status` has `code` and an `ErrorInfo` of `reason`.
fn ends_with(status: &tonic::Status, code: tonic::Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(decoded(status).1.reason, reason, "{status:?}");
}

/// A raw watch of every available agent of `key`'s tenant, its snapshot read.
async fn raw_watch(s: &TestServer, key: &str) -> tonic::Streaming<pb::AvailabilityEvent> {
    let channel = Channel::from_shared(s.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut watch = pb::routing_service_client::RoutingServiceClient::new(channel)
        .watch_available_agents(with_key(
            pb::WatchAvailableAgentsRequest::default(),
            Some(key),
        ))
        .await
        .expect("watch")
        .into_inner();
    watch.message().await.expect("snapshot").expect("an event");
    watch
}

#[tokio::test]
async fn statuses_that_end_health_streams_carry_error_info() {
    use common::stream::{heartbeat, hello, raw_stream, welcome};
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let key = t.agent_key.as_str();

    let (_silent, no_hello) = raw_stream(&s, key, vec![]).await;
    let status = no_hello.expect_err("no hello");
    ends_with(&status, tonic::Code::DeadlineExceeded, "DEADLINE_EXCEEDED");

    let (_old_tx, old) = raw_stream(&s, key, vec![hello("i1", "ide-agent")]).await;
    let mut old = old.expect("stream");
    welcome(&mut old).await;
    let (new_tx, new) = raw_stream(&s, key, vec![hello("i1", "ide-agent")]).await;
    let mut new = new.expect("stream");
    welcome(&mut new).await;
    ends_with(&end_of(&mut old).await, tonic::Code::Aborted, "ABORTED");

    new_tx
        .send(heartbeat(1, pb::HealthStatus::Healthy, 999))
        .await
        .expect("send");
    ends_with(&end_of(&mut new).await, tonic::Code::Aborted, "ABORTED");

    let (_tx, deactivated) = raw_stream(&s, key, vec![hello("i2", "ide-agent")]).await;
    let mut deactivated = deactivated.expect("stream");
    welcome(&mut deactivated).await;
    t.agent
        .deactivate_registration("i2", 0)
        .await
        .expect("deactivate");
    ends_with(
        &end_of(&mut deactivated).await,
        tonic::Code::Aborted,
        "ABORTED",
    );
}

#[tokio::test]
async fn a_revoked_watch_ends_with_error_info() {
    let s = TestServer::start().await;
    let t = s.tenant("acme").await;
    let key = s
        .admin
        .create_api_key(agentry_client::CreateApiKey::new(pb::Role::Tenant).tenant(&t.id))
        .await
        .expect("key");
    let mut watch = raw_watch(&s, &key.secret).await;
    s.admin
        .revoke_api_key(&key.api_key.as_ref().expect("record").id)
        .await
        .expect("revoke");
    ends_with(
        &end_of(&mut watch).await,
        tonic::Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
}

#[tokio::test]
async fn shutdown_ends_watches_and_drains_streams_with_error_info() {
    use common::stream::{hello, raw_stream, welcome};
    let mut s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let mut watch = raw_watch(&s, &t.tenant_key).await;
    let (_tx, stream) = raw_stream(&s, &t.agent_key, vec![hello("i1", "ide-agent")]).await;
    let mut stream = stream.expect("stream");
    welcome(&mut stream).await;
    s.signal_stop();
    ends_with(
        &end_of(&mut watch).await,
        tonic::Code::Unavailable,
        "UNAVAILABLE",
    );
    ends_with(
        &end_of(&mut stream).await,
        tonic::Code::Unavailable,
        "UNAVAILABLE",
    );
    s.stop().await;
}

/// A second admin key for the raw client (the harness keeps its secret to itself).
async fn admin_key(s: &TestServer) -> String {
    let key = s
        .admin
        .create_api_key(agentry_client::CreateApiKey::new(pb::Role::Admin))
        .await
        .expect("admin key");
    key.secret
}
