//! Telemetry: the Prometheus endpoint's counts and gauges, request ids, and
//! one access line per call.
//!
//! The metrics recorder and the log subscriber are global to this test
//! process, while each test runs its own server: the tests here take
//! [`SERIAL`] so that the moves they count are their own, and compare
//! scrapes before and after, so earlier tests' counts do not matter.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use agentry_client::{AgentFilter, Code, pb};
use common::stream::{heartbeat, hello, raw_stream, welcome};
use common::{TestServer, code, eventually, raw, routing};
use pb::configuration_service_client::ConfigurationServiceClient;
use pb::health_stream_response::Message as In;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use uuid::Uuid;

/// Held by every test here: they count moves of process-wide figures.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const DEADLINE: Duration = Duration::from_secs(10);
const GET_MANIFEST: &str = "/agentry.v1.ManifestService/GetManifest";

/// An address with a free port for the metrics endpoint.
fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// One scrape of the endpoint, in the Prometheus text format.
struct Scrape(String);

impl Scrape {
    async fn of(addr: SocketAddr) -> Scrape {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to the metrics endpoint");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: agentry\r\nconnection: close\r\n\r\n")
            .await
            .expect("send");
        let mut text = String::new();
        stream.read_to_string(&mut text).await.expect("read");
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("text/plain"), "{head}");
        Scrape(body.to_owned())
    }

    /// The value of the series `name` with exactly `labels`; 0 when absent.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut want: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        want.sort();
        for line in self.0.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (series_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                continue;
            }
            let mut got: Vec<(String, String)> = label_text
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').expect("label");
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            got.sort();
            if got == want {
                return value.parse().expect("a number");
            }
        }
        0.0
    }
}

async fn gauge_becomes(addr: SocketAddr, name: &str, value: f64) {
    eventually(DEADLINE, &format!("{name} = {value}"), || async {
        Scrape::of(addr).await.value(name, &[]) == value
    })
    .await;
}

/// Reads until the `n`th `Ack`.
async fn acks(stream: &mut tonic::Streaming<pb::HealthStreamResponse>, n: usize) {
    let mut seen = 0;
    while seen < n {
        let message = tokio::time::timeout(DEADLINE, stream.message())
            .await
            .expect("in time")
            .expect("message")
            .expect("open");
        if let Some(In::Ack(_)) = message.message {
            seen += 1;
        }
    }
}

#[tokio::test]
async fn the_endpoint_counts_calls_by_code_streams_heartbeats_and_leases() {
    let _serial = SERIAL.lock().await;
    let metrics = free_addr();
    let s = TestServer::start_with(|c| c.metrics_addr = Some(metrics)).await;
    let t = s.tenant("acme").await;
    routing::manifest(&s, "coder", "ide", &[], pb::ManifestStatus::Active).await;
    routing::configure(&t, "coder", 4).await;
    let before = Scrape::of(metrics).await;

    let missing = Uuid::new_v4().to_string();
    assert_eq!(code(s.admin.get_manifest(&missing).await), Code::NotFound);
    let unknown_key = format!("agk_{}_not-a-secret", Uuid::new_v4().simple());
    let stranger = common::client(s.addr, &unknown_key).await;
    assert_eq!(
        code(stranger.get_manifest(&missing).await),
        Code::Unauthenticated
    );

    let (tx, stream) = raw_stream(&s, &t.agent_key, vec![hello("i-1", "coder")]).await;
    let mut stream = stream.expect("health stream");
    let epoch = welcome(&mut stream).await.epoch;
    gauge_becomes(metrics, "agentry_health_streams", 1.0).await;
    for sequence in 1..=5 {
        tx.send(heartbeat(sequence, pb::HealthStatus::Healthy, epoch))
            .await
            .expect("send");
    }
    acks(&mut stream, 5).await;

    routing::wait_available(&t.client, AgentFilter::new(), "i-1 routable", |a| {
        a.len() == 1
    })
    .await;
    let lease = t
        .client
        .acquire_agent(AgentFilter::new(), None)
        .await
        .expect("acquire");
    assert!(
        t.client
            .release_agent(&lease.id, pb::LeaseOutcome::Succeeded)
            .await
            .expect("release")
    );
    drop(tx);
    drop(stream);
    gauge_becomes(metrics, "agentry_health_streams", 0.0).await;
    // A stream is counted when it ends, whichever code it ends with.
    let streams = [("method", "/agentry.v1.RegistrationService/HealthStream")];
    let ended = before.value("agentry_rpc_duration_seconds_count", &streams) + 1.0;
    eventually(DEADLINE, "the stream's end counted", || async {
        Scrape::of(metrics)
            .await
            .value("agentry_rpc_duration_seconds_count", &streams)
            == ended
    })
    .await;

    let after = Scrape::of(metrics).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let calls = "agentry_rpc_requests_total";
    assert_eq!(
        moved(calls, &[("method", GET_MANIFEST), ("code", "NotFound")]),
        1.0
    );
    assert_eq!(
        moved(
            calls,
            &[("method", GET_MANIFEST), ("code", "Unauthenticated")]
        ),
        1.0
    );
    assert_eq!(
        moved(calls, &[("method", GET_MANIFEST), ("code", "Ok")]),
        0.0
    );
    assert_eq!(
        moved(
            "agentry_rpc_duration_seconds_count",
            &[("method", GET_MANIFEST)]
        ),
        2.0
    );
    for method in ["AcquireAgent", "ReleaseAgent"] {
        let method = format!("/agentry.v1.RoutingService/{method}");
        assert_eq!(moved(calls, &[("method", &method), ("code", "Ok")]), 1.0);
    }
    assert_eq!(moved("agentry_auth_failures_total", &[]), 1.0);
    assert_eq!(moved("agentry_heartbeats_total", &[]), 5.0);
    assert_eq!(
        moved("agentry_writer_batch_size_count", &[("writer", "lease")]),
        2.0,
        "one batch for the acquire, one for the release"
    );
    assert_eq!(
        moved("agentry_writer_batch_size_sum", &[("writer", "lease")]),
        2.0
    );
    assert_eq!(
        moved("agentry_writer_batch_size_count", &[("writer", "hello")]),
        1.0
    );
    assert!(moved("agentry_feed_changes_total", &[]) >= 1.0);
    assert_eq!(after.value("agentry_view_configurations", &[]), 1.0);
    assert!(after.value("agentry_db_pool_max_connections", &[]) >= 1.0);
}

/// Log lines written while a test runs, from every thread.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lines").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    /// The process's access lines, and the drain handler's, so far;
    /// installs the subscriber once.
    fn capture() -> Lines {
        static LINES: OnceLock<Lines> = OnceLock::new();
        LINES
            .get_or_init(|| {
                let lines = Lines::default();
                let writer = lines.clone();
                tracing_subscriber::fmt()
                    // The `rpc` span is the layer's (`telemetry`): a
                    // filter that drops it drops its fields from the lines.
                    .with_env_filter(
                        "agentry::access=info,agentry_server::telemetry=info,\
                         agentry_server::registrations::service=info",
                    )
                    .with_ansi(false)
                    .with_writer(move || writer.clone())
                    .init();
                lines
            })
            .clone()
    }

    fn with(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().expect("lines"))
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

fn with_id<T>(message: T, key: &str, request_id: Option<&str>) -> tonic::Request<T> {
    let mut request = raw::authed(message, key);
    if let Some(id) = request_id {
        request
            .metadata_mut()
            .insert("x-request-id", id.parse().expect("ascii"));
    }
    request
}

/// The key id of an `agk_<id>_<secret>` key, as logs show it.
fn key_id(key: &str) -> String {
    let simple = key.split('_').nth(1).expect("key id");
    Uuid::try_parse(simple).expect("uuid").to_string()
}

#[tokio::test]
async fn every_call_gets_one_access_line_with_its_caller_and_never_the_secret() {
    let _serial = SERIAL.lock().await;
    let lines = Lines::capture();
    let s = TestServer::start().await;
    let t = s.tenant("acme").await;
    let mut client = ConfigurationServiceClient::new(raw::channel(s.url()).await);
    let run = Uuid::new_v4().simple().to_string();
    let id = |what: &str| format!("{what}-{run}");
    let unknown_key = format!("agk_{}_not-a-secret", Uuid::new_v4().simple());

    let list = || pb::ListConfigurationsRequest::default();
    let get = |id: &str| pb::GetConfigurationRequest { id: id.into() };
    client
        .list_configurations(with_id(list(), &t.tenant_key, Some(&id("ok"))))
        .await
        .expect("list");
    let missing = Uuid::new_v4().to_string();
    let failures = [
        (
            client
                .get_configuration(with_id(get(&missing), &t.tenant_key, Some(&id("missing"))))
                .await,
            tonic::Code::NotFound,
        ),
        (
            client
                .get_configuration(with_id(get("nope"), &t.tenant_key, Some(&id("invalid"))))
                .await,
            tonic::Code::InvalidArgument,
        ),
        (
            client
                .create_configuration(with_id(
                    pb::CreateConfigurationRequest::default(),
                    &t.agent_key,
                    Some(&id("denied")),
                ))
                .await,
            tonic::Code::PermissionDenied,
        ),
    ];
    for (result, expected) in failures {
        assert_eq!(result.expect_err("a failure").code(), expected);
    }
    let status = client
        .list_configurations(with_id(list(), &unknown_key, Some(&id("stranger"))))
        .await
        .expect_err("unknown key");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    let calls = [
        ("ok", "Ok", "ListConfigurations", Some(&t.tenant_key)),
        (
            "missing",
            "NotFound",
            "GetConfiguration",
            Some(&t.tenant_key),
        ),
        (
            "invalid",
            "InvalidArgument",
            "GetConfiguration",
            Some(&t.tenant_key),
        ),
        (
            "denied",
            "PermissionDenied",
            "CreateConfiguration",
            Some(&t.agent_key),
        ),
        ("stranger", "Unauthenticated", "ListConfigurations", None),
    ];
    for (what, code, method, key) in calls {
        let request_id = format!("request_id={}", id(what));
        eventually(DEADLINE, &format!("the access line of {what}"), || async {
            !lines.with(&request_id).is_empty()
        })
        .await;
        let found = lines.with(&request_id);
        assert_eq!(found.len(), 1, "one line per call: {found:#?}");
        let line = &found[0];
        assert!(line.contains(" INFO agentry::access: call "), "{line}");
        assert!(line.contains(&format!("code={code} ")), "{line}");
        assert!(
            line.contains(&format!(
                "method=/agentry.v1.ConfigurationService/{method} "
            )),
            "{line}"
        );
        assert!(line.contains("peer=127.0.0.1:"), "{line}");
        assert!(line.contains("latency_ms="), "{line}");
        match key {
            Some(key) => {
                assert!(line.contains(&format!("key_id={}", key_id(key))), "{line}");
                assert!(line.contains(&format!("tenant={}", t.id)), "{line}");
            }
            None => assert!(
                line.contains("key_id=- ") && line.contains("tenant=- "),
                "{line}"
            ),
        }
    }
    let everything = lines.with(&run).join("\n");
    for secret in [&t.tenant_key, &t.agent_key, &unknown_key] {
        // agk_<key id>_<secret>; the secret may hold '_' itself.
        let secret_part = secret.splitn(3, '_').nth(2).expect("secret");
        assert!(!everything.contains(secret_part), "a secret was logged");
    }
}

async fn echoed(
    client: &mut ConfigurationServiceClient<Channel>,
    key: &str,
    request_id: Option<&str>,
) -> String {
    let response = client
        .list_configurations(with_id(
            pb::ListConfigurationsRequest::default(),
            key,
            request_id,
        ))
        .await
        .expect("list");
    response
        .metadata()
        .get("x-request-id")
        .expect("a request id in the answer")
        .to_str()
        .expect("ascii")
        .to_owned()
}

#[tokio::test]
async fn request_ids_are_echoed_generated_or_replaced() {
    let _serial = SERIAL.lock().await;
    let s = TestServer::start().await;
    let t = s.tenant("acme").await;
    let mut client = ConfigurationServiceClient::new(raw::channel(s.url()).await);
    let key = &t.tenant_key;

    assert_eq!(echoed(&mut client, key, Some("abc-123")).await, "abc-123");
    let longest = "r".repeat(128);
    assert_eq!(echoed(&mut client, key, Some(&longest)).await, longest);

    let generated = [
        echoed(&mut client, key, None).await,
        echoed(&mut client, key, None).await,
    ];
    for id in &generated {
        assert!(Uuid::try_parse(id).is_ok(), "generated: {id}");
    }
    assert_ne!(generated[0], generated[1]);

    for bad in ["x".repeat(500), "tab\there".to_owned(), "r".repeat(129)] {
        let replaced = echoed(&mut client, key, Some(&bad)).await;
        assert!(
            Uuid::try_parse(&replaced).is_ok(),
            "{bad:?} gave {replaced}"
        );
    }

    let status = client
        .get_configuration(with_id(
            pb::GetConfigurationRequest {
                id: Uuid::new_v4().to_string(),
            },
            key,
            Some("abc-456"),
        ))
        .await
        .expect_err("not found");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(
        status
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("abc-456"),
        "failed calls carry their request id too"
    );
}

#[tokio::test]
async fn sweeps_failed_authentications_and_limits_are_counted() {
    let _serial = SERIAL.lock().await;
    let metrics = free_addr();
    let s = TestServer::start_with(|c| {
        c.metrics_addr = Some(metrics);
        c.limits.auth_failures_per_minute = 2;
    })
    .await;
    let t = s.tenant("acme").await;
    routing::manifest(&s, "coder", "ide", &[], pb::ManifestStatus::Active).await;
    routing::register(&t, "i-1", "coder").await;
    sqlx::query("UPDATE agent_registrations SET last_health_check = now() - interval '1 hour'")
        .execute(&s.pool)
        .await
        .expect("silence the instance");
    let before = Scrape::of(metrics).await;

    let report = s.admin.cleanup(None, false).await.expect("cleanup");
    assert!(
        report.marked_unknown + report.deactivated >= 1,
        "{report:?}"
    );

    // A peer's two failures spend its budget of two, the third call is
    // refused before its key is looked at. Raw calls:
    // the SDK would retry the refusal.
    let mut manifests =
        pb::manifest_service_client::ManifestServiceClient::new(raw::channel(s.url()).await);
    let unknown_key = format!("agk_{}_not-a-secret", Uuid::new_v4().simple());
    let mut codes = Vec::new();
    for _ in 0..3 {
        let request = raw::authed(
            pb::GetManifestRequest {
                key: Some(pb::get_manifest_request::Key::Id(
                    Uuid::new_v4().to_string(),
                )),
            },
            &unknown_key,
        );
        codes.push(
            manifests
                .get_manifest(request)
                .await
                .expect_err("refused")
                .code(),
        );
    }
    assert_eq!(
        codes,
        [
            tonic::Code::Unauthenticated,
            tonic::Code::Unauthenticated,
            tonic::Code::ResourceExhausted
        ]
    );

    let after = Scrape::of(metrics).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert_eq!(moved("agentry_sweeps_total", &[("outcome", "ran")]), 1.0);
    assert_eq!(moved("agentry_sweeps_total", &[("outcome", "failed")]), 0.0);
    for (change, n) in [
        ("marked_unknown", report.marked_unknown),
        ("deactivated", report.deactivated),
        ("deleted", report.deleted),
        ("leases_expired", report.leases_expired),
    ] {
        assert_eq!(
            moved("agentry_sweep_changes_total", &[("change", change)]),
            n as f64,
            "{change}"
        );
    }
    assert_eq!(after.value("agentry_partition_guard_tripped", &[]), 0.0);
    assert_eq!(moved("agentry_auth_failures_total", &[]), 2.0);
    assert_eq!(
        moved(
            "agentry_limits_hit_total",
            &[("kind", "peer_auth_failures")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "agentry_rpc_requests_total",
            &[("method", GET_MANIFEST), ("code", "ResourceExhausted")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_handlers_log_lines_carry_the_request_id_of_their_call() {
    let _serial = SERIAL.lock().await;
    let lines = Lines::capture();
    let s = TestServer::start().await;
    let t = s.tenant("acme").await;
    routing::manifest(&s, "coder", "ide", &[], pb::ManifestStatus::Active).await;
    routing::register(&t, "i-1", "coder").await;
    let mut registrations = pb::registration_service_client::RegistrationServiceClient::new(
        raw::channel(s.url()).await,
    );
    let request_id = format!("drain-{}", Uuid::new_v4().simple());
    registrations
        .drain_registration(with_id(
            pb::DrainRegistrationRequest {
                instance_id: "i-1".into(),
                reason: "maintenance".into(),
            },
            &t.tenant_key,
            Some(&request_id),
        ))
        .await
        .expect("drain");
    let drained: Vec<String> = lines
        .with(&request_id)
        .into_iter()
        .filter(|l| l.contains("instance drained"))
        .collect();
    assert_eq!(drained.len(), 1, "{drained:#?}");
    assert!(
        drained[0].contains(&format!(
            "rpc{{method=/agentry.v1.RegistrationService/DrainRegistration request_id={request_id}}}"
        )),
        "{}",
        drained[0]
    );
}

#[tokio::test]
async fn connections_refused_and_timed_out_are_counted_and_open_ones_gauged() {
    let _serial = SERIAL.lock().await;
    let metrics = free_addr();
    let s = TestServer::start_with(|c| {
        c.metrics_addr = Some(metrics);
        c.connections.max_connections_per_peer = 4;
        c.connections.handshake_timeout = Duration::from_millis(300);
    })
    .await;
    let before = Scrape::of(metrics).await;
    // Connections that never speak, from one address, past its cap.
    let mut silent = Vec::new();
    for _ in 0..6 {
        silent.push(
            tokio::net::TcpStream::connect(s.addr)
                .await
                .expect("connect"),
        );
    }
    eventually(DEADLINE, "the silent connections time out", || async {
        s.connections
            .stats
            .handshake_timeouts
            .load(std::sync::atomic::Ordering::Relaxed)
            + s.connections
                .stats
                .refused_peer
                .load(std::sync::atomic::Ordering::Relaxed)
            >= 6
    })
    .await;
    let after = Scrape::of(metrics).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let refused = s
        .connections
        .stats
        .refused_peer
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(refused >= 2, "at least the two past the cap: {refused}");
    assert_eq!(
        moved(
            "agentry_connections_refused_total",
            &[("reason", "max_connections_per_peer")]
        ),
        refused as f64
    );
    assert_eq!(
        moved("agentry_connections_handshake_timeouts_total", &[]),
        (6 - refused) as f64
    );
    // The harness's own client holds at least one connection open.
    assert!(after.value("agentry_connections_open", &[]) >= 1.0);
}
