//! Issue 12: hostile input, each finding with its reproducer. Bad input is
//! `INVALID_ARGUMENT` naming the field (or `UNAUTHENTICATED`, or
//! `DEADLINE_EXCEEDED`), never `INTERNAL` or a dead worker, and a refused
//! call writes nothing.

mod common;

use std::time::Duration;

use agentry_client::{
    AgentFilter, Client, Code, Compression, CreateApiKey, CreateManifest, ListManifests,
    RegisterInstance, UpdateConfiguration, pb,
};
use agentry_server::pb::Role;
use common::raw::{self, authed};
use common::{TestServer, lock_configuration, wait_for_lock_waits};
use prost::Message as _;
use serde_json::json;
use tonic::Status;
use tonic::codec::CompressionEncoding;

/// The field an `INVALID_ARGUMENT` names; fails on any other answer.
fn invalid_field(status: &Status) -> String {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    status
        .metadata()
        .get("agentry-field")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no field named: {status:?}"))
        .to_owned()
}

/// The field an SDK call refused as `INVALID_ARGUMENT` names.
fn refused<T: std::fmt::Debug>(result: agentry_client::Result<T>) -> String {
    let e = result.expect_err("refused");
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e:?}");
    e.field()
        .unwrap_or_else(|| panic!("no field: {e:?}"))
        .to_owned()
}

async fn admin_key(s: &TestServer) -> String {
    agentry_server::admin::store::create_key(
        &s.pool,
        &agentry_server::audit::Actor::OPERATOR,
        Role::Admin,
        None,
        "hostile",
    )
    .await
    .expect("admin key")
    .1
}

async fn count(s: &TestServer, table: &'static str) -> i64 {
    let sql = match table {
        "agent_manifests" => "SELECT count(*) FROM agent_manifests",
        "agent_registrations" => "SELECT count(*) FROM agent_registrations",
        "workload_leases" => "SELECT count(*) FROM workload_leases",
        "api_keys" => "SELECT count(*) FROM api_keys",
        other => panic!("no count of {other}"),
    };
    sqlx::query_scalar(sql)
        .fetch_one(&s.pool)
        .await
        .expect("count")
}

fn duration(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos })
}

#[tokio::test]
async fn cleanup_thresholds_out_of_range_or_invalid_are_invalid_argument() {
    let s = TestServer::start().await;
    let key = admin_key(&s).await;
    let mut registrations = pb::registration_service_client::RegistrationServiceClient::new(
        raw::channel(s.url()).await,
    );
    // i64::MAX panicked a worker; 2^40 s and the largest valid protobuf
    // Duration answered INTERNAL; nanos of the wrong sign were normalized.
    const BOUNDS: &str = "between 1s and 1day";
    const INVALID: &str = "not a valid duration";
    for (seconds, nanos, why) in [
        (i64::MAX, 0, BOUNDS),
        (1_099_511_627_776, 0, BOUNDS),
        (315_576_000_000, 0, BOUNDS),
        (1, -999_999_999, INVALID),
        (-1, 0, BOUNDS),
        (0, 1, BOUNDS),
    ] {
        let request = pb::CleanupRequest {
            stale_threshold: duration(seconds, nanos),
            ignore_partition_guard: false,
        };
        let status = registrations
            .cleanup(authed(request, &key))
            .await
            .expect_err("refused");
        assert_eq!(
            invalid_field(&status),
            "stale_threshold",
            "{seconds}s {nanos}ns"
        );
        assert!(
            status.message().contains(why),
            "{seconds}s {nanos}ns: {status:?}"
        );
    }
    // The workers are all alive.
    let report = s
        .admin
        .cleanup(Some(Duration::from_secs(24 * 3600)), false)
        .await
        .expect("the largest threshold sweeps");
    assert_eq!(report.deactivated, 0);
}

#[tokio::test]
async fn lease_ttls_are_bounded_and_refused_ttls_lease_nothing() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    common::routing::configure(&t, "ide-agent", 5).await;
    common::routing::register(&t, "i1", "ide-agent").await;
    common::routing::wait_available(&t.client, AgentFilter::new(), "i1 routable", |a| {
        a.len() == 1
    })
    .await;
    let mut routing =
        pb::routing_service_client::RoutingServiceClient::new(raw::channel(s.url()).await);
    // "0.000000001s" was granted already expired.
    for (seconds, nanos) in [
        (0, 1),
        (0, 999_999_999),
        (3601, 0),
        (1, -999_999_999),
        (i64::MAX, 0),
    ] {
        let request = pb::AcquireAgentRequest {
            filter: None,
            ttl: duration(seconds, nanos),
            ..Default::default()
        };
        let status = routing
            .acquire_agent(authed(request, &t.tenant_key))
            .await
            .expect_err("refused");
        assert_eq!(invalid_field(&status), "ttl", "{seconds}s {nanos}ns");
    }
    assert_eq!(count(&s, "workload_leases").await, 0, "nothing leased");

    let lease = t
        .client
        .acquire_agent(AgentFilter::new(), Some(Duration::from_secs(1)))
        .await
        .expect("1 s is the shortest ttl");
    let request = pb::RenewLeaseRequest {
        lease_id: lease.id.clone(),
        ttl: duration(1, -999_999_999),
    };
    let status = routing
        .renew_lease(authed(request, &t.tenant_key))
        .await
        .expect_err("refused");
    assert_eq!(invalid_field(&status), "ttl");
}

#[tokio::test]
async fn nul_in_any_text_or_json_field_is_invalid_argument_and_writes_nothing() {
    let s = TestServer::start().await;
    let t = s.tenant("acme").await;
    let nul = "a\0b";
    let manifest = || CreateManifest::new("nul-agent", "ide", "Nul", "1.0.0");

    let keys = count(&s, "api_keys").await;
    assert_eq!(
        refused(
            s.admin
                .create_api_key(
                    CreateApiKey::new(pb::Role::Tenant)
                        .tenant(&t.id)
                        .description(nul)
                )
                .await
        ),
        "description"
    );
    assert_eq!(count(&s, "api_keys").await, keys, "no key written");
    for (request, field) in [
        (
            CreateManifest::new("nul-agent", "ide", nul, "1.0.0"),
            "manifest.name",
        ),
        (manifest().description(nul), "manifest.description"),
        (manifest().requirements(nul), "manifest.requirements"),
        (
            manifest().capabilities(["ok", nul]),
            "manifest.capabilities[1]",
        ),
        (manifest().metadata(json!({ nul: 1 })), "manifest.metadata"),
        (
            manifest().metadata(json!({"k": [{"deep": nul}]})),
            "manifest.metadata",
        ),
    ] {
        assert_eq!(refused(s.admin.create_manifest(request).await), field);
    }
    assert_eq!(count(&s, "agent_manifests").await, 0, "no manifest written");

    // Any role may list manifests, filters included.
    assert_eq!(
        refused(
            t.agent
                .list_manifests(ListManifests::new().agent_type(nul))
                .await
        ),
        "agent_type"
    );
    assert_eq!(
        refused(
            t.agent
                .list_manifests(ListManifests::new().capability(nul))
                .await
        ),
        "capability"
    );

    s.manifest("ide-agent").await;
    let c = common::routing::configure(&t, "ide-agent", 5).await;
    for (request, field) in [
        (
            UpdateConfiguration::new(&c.id).name(nul),
            "configuration.name",
        ),
        (
            UpdateConfiguration::new(&c.id).system_prompt(nul),
            "configuration.system_prompt",
        ),
        (
            UpdateConfiguration::new(&c.id).settings(json!({"a": {nul: true}})),
            "configuration.configuration",
        ),
        (
            UpdateConfiguration::new(&c.id).settings(json!({"a": {"b": [nul]}})),
            "configuration.configuration",
        ),
    ] {
        assert_eq!(refused(t.client.update_configuration(request).await), field);
    }
    let kept = t.client.get_configuration(&c.id).await.expect("get");
    assert_eq!((kept.name, kept.system_prompt), (c.name, c.system_prompt));
    assert_eq!(kept.configuration, c.configuration);

    for (request, field) in [
        (RegisterInstance::new("i1", "ide-agent").name(nul), "name"),
        (
            RegisterInstance::new("i1", "ide-agent").connection_details(json!({"ip": nul})),
            "connection_details",
        ),
        (
            RegisterInstance::new("i1", "ide-agent").runtime_config(json!({ nul: "x" })),
            "runtime_config",
        ),
    ] {
        assert_eq!(refused(t.agent.register_instance(request).await), field);
    }
    assert_eq!(
        count(&s, "agent_registrations").await,
        0,
        "nothing registered"
    );
    assert_eq!(
        refused(t.client.drain_registration("i1", nul).await),
        "reason"
    );

    for (hello, field) in [
        (
            pb::Hello {
                name: nul.into(),
                ..hello_of("i2")
            },
            "hello.name",
        ),
        (
            pb::Hello {
                connection_details: Some(agentry_client::json_to_struct(json!({"ua": nul}))),
                ..hello_of("i2")
            },
            "hello.connection_details",
        ),
    ] {
        let first = pb::HealthStreamRequest {
            message: Some(pb::health_stream_request::Message::Hello(hello)),
        };
        let (_tx, result) = common::stream::raw_stream(&s, &t.agent_key, vec![first]).await;
        assert_eq!(invalid_field(&result.expect_err("refused")), field);
    }
    assert_eq!(
        count(&s, "agent_registrations").await,
        0,
        "nothing registered"
    );
}

fn hello_of(instance_id: &str) -> pb::Hello {
    pb::Hello {
        instance_id: instance_id.into(),
        agent_id: "ide-agent".into(),
        ..Default::default()
    }
}

/// A `Struct` with `levels` structs nested in one another.
fn nested(levels: usize) -> prost_types::Struct {
    let mut value = json!("leaf");
    for _ in 0..levels {
        value = json!({ "k": value });
    }
    agentry_client::json_to_struct(value)
}

#[tokio::test]
async fn malformed_protobuf_is_invalid_argument() {
    let s = TestServer::start().await;
    let key = admin_key(&s).await;
    let channel = raw::channel(s.url()).await;
    const CREATE: &str = "/agentry.v1.ManifestService/CreateManifest";

    let garbage = raw::unary(&channel, CREATE, authed(vec![0xFF; 16], &key))
        .await
        .expect_err("garbage");
    assert_eq!(invalid_field(&garbage), "request");
    assert!(
        garbage.message().contains("malformed request"),
        "{garbage:?}"
    );

    let request = pb::CreateManifestRequest {
        manifest: Some(pb::Manifest {
            agent_id: "utf-agent".into(),
            agent_type: "ide".into(),
            name: "MARKER".into(),
            version: "1.0.0".into(),
            ..Default::default()
        }),
    };
    let bytes = raw::invalid_utf8(&request, "MARKER");
    let status = raw::unary(&channel, CREATE, authed(bytes, &key))
        .await
        .expect_err("invalid UTF-8");
    assert_eq!(invalid_field(&status), "manifest.name");
    assert_eq!(count(&s, "agent_manifests").await, 0);

    // Nesting: 30 levels are stored, 40 refused by our bound, 60 by prost's.
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let c = common::routing::configure(&t, "ide-agent", 5).await;
    let update = |levels| pb::UpdateConfigurationRequest {
        configuration: Some(pb::Configuration {
            id: c.id.clone(),
            configuration: Some(nested(levels)),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["configuration".into()],
        }),
    };
    const UPDATE: &str = "/agentry.v1.ConfigurationService/UpdateConfiguration";
    raw::unary(
        &channel,
        UPDATE,
        authed(update(30).encode_to_vec(), &t.tenant_key),
    )
    .await
    .expect("30 levels are accepted");
    let stored = t.client.get_configuration(&c.id).await.expect("get");
    assert_eq!(stored.configuration, Some(nested(30)), "and read back");
    for (levels, field) in [(40, "configuration.configuration"), (60, "configuration")] {
        let status = raw::unary(
            &channel,
            UPDATE,
            authed(update(levels).encode_to_vec(), &t.tenant_key),
        )
        .await
        .expect_err("too deep");
        let named = invalid_field(&status);
        assert!(named.starts_with(field), "{levels}: {named} {status:?}");
    }
    let stored = t.client.get_configuration(&c.id).await.expect("get");
    assert_eq!(stored.configuration, Some(nested(30)), "unchanged");
}

#[tokio::test]
async fn a_malformed_health_stream_message_is_invalid_argument() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let first = pb::HealthStreamRequest {
        message: Some(pb::health_stream_request::Message::Hello(pb::Hello {
            name: "MARKER".into(),
            ..hello_of("i1")
        })),
    };
    let bytes = raw::invalid_utf8(&first, "MARKER");
    let mut grpc = tonic::client::Grpc::new(raw::channel(s.url()).await);
    grpc.ready().await.expect("ready");
    let request = authed(tokio_stream::once(bytes), &t.agent_key);
    let result = grpc
        .streaming(
            request,
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/agentry.v1.RegistrationService/HealthStream",
            ),
            raw::Bytes,
        )
        .await;
    let status = match result {
        Err(status) => status,
        Ok(response) => {
            let mut inbound = response.into_inner();
            loop {
                match inbound.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("the stream ended without a status"),
                    Err(status) => break status,
                }
            }
        }
    };
    assert_eq!(invalid_field(&status), "message.name", "{status:?}");
    assert_eq!(count(&s, "agent_registrations").await, 0);
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_two_headers_are_refused() {
    let s = TestServer::start().await;
    let t = s.tenant("acme").await;
    let mut manifests =
        pb::manifest_service_client::ManifestServiceClient::new(raw::channel(s.url()).await);
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let mut request = tonic::Request::new(pb::ListManifestsRequest::default());
        request.metadata_mut().insert(
            "authorization",
            format!("{scheme} {}", t.agent_key).parse().expect("header"),
        );
        manifests
            .list_manifests(request)
            .await
            .unwrap_or_else(|e| panic!("{scheme}: {e:?}"));
    }
    // Whichever came first used to win.
    for second in [t.tenant_key.as_str(), "nonsense"] {
        let mut request = authed(pb::ListManifestsRequest::default(), &t.agent_key);
        request.metadata_mut().append(
            "authorization",
            format!("Bearer {second}").parse().expect("header"),
        );
        let status = manifests.list_manifests(request).await.expect_err("two");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert_eq!(status.message(), "more than one authorization header");
    }
}

#[tokio::test]
async fn an_expired_deadline_is_deadline_exceeded() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let c = common::routing::configure(&t, "ide-agent", 5).await;
    // The update waits on the row lock for longer than the caller allows.
    let lock = lock_configuration(&s.pool, &c.id).await;
    let mut configurations = pb::configuration_service_client::ConfigurationServiceClient::new(
        raw::channel(s.url()).await,
    );
    let mut request = authed(
        pb::UpdateWorkloadRequest {
            id: c.id.clone(),
            delta: 1,
        },
        &t.tenant_key,
    );
    request.set_timeout(Duration::from_millis(300));
    let call = tokio::spawn(async move { configurations.update_workload(request).await });
    wait_for_lock_waits(&s.pool, "agent_configurations", 1).await;
    let status = call.await.expect("join").expect_err("deadline");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    // Built by the one error mapping, so with its details.
    let info = tonic_types::StatusExt::get_details_error_info(&status).expect("an ErrorInfo");
    assert_eq!(info.reason, "DEADLINE_EXCEEDED", "{info:?}");
    drop(lock);
    // The server carries on.
    t.client.get_configuration(&c.id).await.expect("get");
}

#[tokio::test]
async fn gzip_requests_are_accepted_and_answers_compressed_for_callers_that_accept_it() {
    let s = TestServer::start().await;
    let t = s.tenant("acme").await;
    let mut manifests =
        pb::manifest_service_client::ManifestServiceClient::new(raw::channel(s.url()).await)
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip);
    let response = manifests
        .list_manifests(authed(pb::ListManifestsRequest::default(), &t.agent_key))
        .await
        .expect("a gzip request is accepted");
    assert_eq!(
        response
            .metadata()
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("gzip"),
        "the answer is compressed"
    );
    // A caller that does not accept gzip gets it plain.
    let mut plain =
        pb::manifest_service_client::ManifestServiceClient::new(raw::channel(s.url()).await);
    let response = plain
        .list_manifests(authed(pb::ListManifestsRequest::default(), &t.agent_key))
        .await
        .expect("plain");
    assert_eq!(response.metadata().get("grpc-encoding"), None);
}

#[tokio::test]
async fn the_sdk_compresses_when_asked() {
    let s = TestServer::start().await;
    let key = admin_key(&s).await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = recording_server(seen.clone()).await;
    let sdk = |url: String, compression: Option<Compression>| {
        let builder = Client::builder(url).api_key(&key);
        match compression {
            Some(c) => builder.compression(c),
            None => builder,
        }
        .connect_lazy()
        .expect("client")
    };

    // Against the real server: calls with a large body work compressed.
    let gzip = sdk(s.url(), Some(Compression::Gzip));
    let m = gzip
        .create_manifest(
            CreateManifest::new("big-agent", "ide", "Big", "1.0.0").description("x".repeat(4000)),
        )
        .await
        .expect("a compressed create");
    assert_eq!(m.description.len(), 4000);

    // What the SDK sends, with and without the option.
    let _ = sdk(recorder.clone(), Some(Compression::Gzip))
        .get_manifest("x")
        .await;
    let _ = sdk(recorder, None).get_manifest("x").await;
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(
        seen,
        vec![(Some("gzip".to_owned()), true), (None, false)],
        "(grpc-encoding, accepts gzip) of each call"
    );
}

/// Each call's `grpc-encoding`, and whether it accepts gzip.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(Option<String>, bool)>>>;

/// A server that answers nothing but records each call's `grpc-encoding`
/// and whether its `grpc-accept-encoding` names gzip.
async fn recording_server(seen: Seen) -> String {
    use agentry_server::pb::manifest_service_server::{ManifestService, ManifestServiceServer};
    struct Nothing;
    impl ManifestService for Nothing {}
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let service =
        ManifestServiceServer::with_interceptor(Nothing, move |request: tonic::Request<()>| {
            let header = |name| {
                request
                    .metadata()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let accepts = header("grpc-accept-encoding").is_some_and(|v| v.contains("gzip"));
            seen.lock()
                .expect("seen")
                .push((header("grpc-encoding"), accepts));
            Ok(request)
        });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    url
}
