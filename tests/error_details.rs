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

/// A second admin key for the raw client (the harness keeps its secret to itself).
async fn admin_key(s: &TestServer) -> String {
    let key = s
        .admin
        .create_api_key(agentry_client::CreateApiKey::new(pb::Role::Admin))
        .await
        .expect("admin key");
    key.secret
}
