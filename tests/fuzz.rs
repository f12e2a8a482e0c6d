//! A bounded, deterministic fuzz of every unary RPC, of the health stream
//! and of the HTTP card endpoint.
//!
//! The RPCs come from the server's own descriptor set, so a new one is
//! covered without a change here. Each gets hostile messages built from its
//! input's descriptor (empty, huge, NUL, unknown enum numbers, extreme
//! numbers, Durations and Timestamps, deep nesting), then wire-level damage
//! (strings that are not UTF-8, truncation, random bytes), sent with admin,
//! tenant and agent keys. No answer may be `INTERNAL` or `UNKNOWN`, no
//! server task may panic, and the server must still answer afterwards.
//!
//! Health streams get hostile messages in random orders (hellos twice or
//! late, heartbeats of other epochs, unknown health numbers, goodbyes in
//! the middle, damaged and random bytes); each stream must end, with OK or
//! a status that is neither `INTERNAL` nor `UNKNOWN` and carries its
//! `ErrorInfo`. The card endpoint gets random methods, paths, headers,
//! bodies and keys: never a 5xx, and never a card the key may not read.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentry_server::pb::Role;
use common::TestServer;
use common::raw::{self, authed};
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value,
};
use tonic::Code;

/// Messages built per RPC; each sent with its 3 damaged copies, with each
/// of the 3 keys.
const MESSAGES: usize = 12;
/// How deep messages nest, except in the deep cases.
const SHALLOW: usize = 4;
/// Deeper than prost's recursion limit of 100 allows (two levels per Struct).
const DEEP: usize = 70;
/// Marks a string that is made invalid UTF-8 on the wire.
const MARKER: &str = "FUZZ~MARK";

/// Counts panics on every thread of this test binary (the server runs in it).
fn count_panics() -> Arc<AtomicUsize> {
    let panics = Arc::new(AtomicUsize::new(0));
    let seen = panics.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        seen.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    panics
}

/// Ids of rows that exist, so that some calls get past lookups.
struct Known {
    strings: Vec<String>,
    uuids: Vec<String>,
}

struct Fuzzer {
    rng: fastrand::Rng,
    known: Arc<Known>,
}

impl Fuzzer {
    /// A value the field's validation accepts, by its name, so that the
    /// hostile fields beside it reach as far as they can.
    fn plausible_string(&mut self, field: &FieldDescriptor) -> String {
        let name = field.name();
        let n = self.rng.u32(..1000);
        let tenant_name = name == "name" && field.parent_message().name() == "CreateTenantRequest";
        match name {
            "agent_id" | "agent_type" => {
                if self.rng.bool() {
                    "ide-agent".into()
                } else {
                    format!("fz-{n}")
                }
            }
            _ if tenant_name => format!("fz-{n}"),
            "version" => "1.0.0".into(),
            "instance_id" => {
                if self.rng.bool() {
                    "i1".into()
                } else {
                    format!("fz-i{n}")
                }
            }
            "capabilities" | "capability" => "code_editing".into(),
            "page_token" | "tenant_id" | "model_id" => String::new(),
            n if n == "id" || n.ends_with("_id") => self
                .rng
                .choice(self.known.uuids.iter())
                .cloned()
                .unwrap_or_default(),
            _ => format!("plain {n}"),
        }
    }

    fn string(&mut self) -> String {
        match self.rng.usize(0..10) {
            0 => String::new(),
            1 => "x".repeat(70_000),
            2 => "a\0b".into(),
            3 => MARKER.into(),
            4 => "é😀\u{202e}".into(),
            5 => " padded ".into(),
            6 => uuid::Uuid::from_u128(self.rng.u128(..)).to_string(),
            7 => (0..self.rng.usize(1..40))
                .map(|_| self.rng.alphanumeric())
                .collect(),
            _ => self
                .rng
                .choice(self.known.strings.iter())
                .cloned()
                .unwrap_or_default(),
        }
    }

    fn i64(&mut self) -> i64 {
        *self
            .rng
            .choice(&[
                0,
                1,
                -1,
                i64::MAX,
                i64::MIN,
                315_576_000_000,
                -315_576_000_000,
                999_999_999,
                1 << 40,
            ])
            .expect("values")
    }

    fn f64(&mut self) -> f64 {
        *self
            .rng
            .choice(&[
                0.0,
                -0.0,
                1.5,
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                1e308,
                -1e-308,
            ])
            .expect("values")
    }

    fn plausible(&mut self, field: &FieldDescriptor, depth: usize, budget: usize) -> Value {
        match field.kind() {
            Kind::String => Value::String(self.plausible_string(field)),
            Kind::Enum(e) => Value::EnumNumber(
                e.values()
                    .map(|v| v.number())
                    .find(|n| *n != 0)
                    .unwrap_or(0),
            ),
            Kind::Bool => Value::Bool(self.rng.bool()),
            Kind::Message(m) if m.full_name() == "google.protobuf.Duration" => {
                let mut d = DynamicMessage::new(m.clone());
                d.set_field_by_name("seconds", Value::I64(60));
                Value::Message(d)
            }
            Kind::Message(m) if m.full_name() == "google.protobuf.FieldMask" => {
                let paths = [
                    "name",
                    "description",
                    "configuration",
                    "system_prompt",
                    "metadata",
                    "capabilities",
                    "requirements",
                    "max_workload",
                    "status",
                ];
                let path = self.rng.choice(paths).expect("paths");
                let mut mask = DynamicMessage::new(m);
                mask.set_field_by_name("paths", Value::List(vec![Value::String(path.into())]));
                Value::Message(mask)
            }
            Kind::Message(m) => Value::Message(self.message(&m, depth + 1, budget)),
            Kind::Double => Value::F64(1.0),
            Kind::Float => Value::F32(1.0),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(1),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(1),
            Kind::Uint32 | Kind::Fixed32 => Value::U32(1),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(1),
            Kind::Bytes => Value::Bytes(Default::default()),
        }
    }

    fn scalar(&mut self, kind: &Kind, depth: usize, budget: usize) -> Value {
        match kind {
            Kind::Double => Value::F64(self.f64()),
            Kind::Float => Value::F32(self.f64() as f32),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(self.i64() as i32),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(self.i64()),
            Kind::Uint32 | Kind::Fixed32 => Value::U32(self.i64() as u32),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(self.i64() as u64),
            Kind::Bool => Value::Bool(self.rng.bool()),
            Kind::String => Value::String(self.string()),
            Kind::Bytes => {
                let n = self.rng.usize(0..64);
                Value::Bytes(std::iter::repeat_with(|| self.rng.u8(..)).take(n).collect())
            }
            Kind::Enum(e) => Value::EnumNumber(match self.rng.usize(0..4) {
                0 => 999,
                1 => -7,
                _ => self.rng.choice(e.values()).map(|v| v.number()).unwrap_or(0),
            }),
            Kind::Message(m) => Value::Message(self.message(m, depth + 1, budget)),
        }
    }

    fn map_key(&mut self, kind: &Kind) -> MapKey {
        match kind {
            Kind::String => MapKey::String(self.string()),
            Kind::Bool => MapKey::Bool(self.rng.bool()),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => MapKey::I32(self.i64() as i32),
            Kind::Uint32 | Kind::Fixed32 => MapKey::U32(self.i64() as u32),
            Kind::Uint64 | Kind::Fixed64 => MapKey::U64(self.i64() as u64),
            _ => MapKey::I64(self.i64()),
        }
    }

    fn field(&mut self, field: &FieldDescriptor, depth: usize, budget: usize) -> Option<Value> {
        let kind = field.kind();
        if matches!(kind, Kind::Message(_)) && depth >= budget {
            return None;
        }
        if field.is_map() {
            let Kind::Message(entry) = &kind else {
                return None;
            };
            let (key, value) = (entry.map_entry_key_field(), entry.map_entry_value_field());
            let n = if budget == DEEP {
                1
            } else {
                self.rng.usize(0..3)
            };
            let map = (0..n)
                .filter_map(|_| {
                    let k = self.map_key(&key.kind());
                    self.field(&value, depth, budget).map(|v| (k, v))
                })
                .collect();
            return Some(Value::Map(map));
        }
        if field.is_list() {
            let n = if budget == DEEP {
                1
            } else {
                self.rng.usize(0..4)
            };
            return Some(Value::List(
                (0..n).map(|_| self.scalar(&kind, depth, budget)).collect(),
            ));
        }
        Some(self.scalar(&kind, depth, budget))
    }

    /// A message of `desc`: each field set with some chance. In the deep
    /// case every scalar field is set and one message field (so that the
    /// size stays linear in the depth) nests on to `budget`.
    fn message(&mut self, desc: &MessageDescriptor, depth: usize, budget: usize) -> DynamicMessage {
        let mut message = DynamicMessage::new(desc.clone());
        let nested: Vec<_> = desc
            .fields()
            .filter(|f| matches!(f.kind(), Kind::Message(_)))
            .collect();
        let deep_one = self.rng.choice(&nested).map(FieldDescriptor::number);
        let hostile = self.rng.choice(desc.fields()).map(|f| f.number());
        for field in desc.fields() {
            let is_message = matches!(field.kind(), Kind::Message(_));
            if budget == DEEP {
                if (!is_message || Some(field.number()) == deep_one)
                    && let Some(value) = self.field(&field, depth, budget)
                {
                    message.set_field(&field, value);
                }
                continue;
            }
            // One field hostile, the others mostly plausible.
            let value = if Some(field.number()) == hostile {
                self.field(&field, depth, budget)
            } else if self.rng.usize(0..10) == 0
                || field.is_map()
                || (is_message && depth >= budget)
            {
                None
            } else if field.is_list() {
                Some(Value::List(vec![self.plausible(&field, depth, budget)]))
            } else {
                Some(self.plausible(&field, depth, budget))
            };
            if let Some(value) = value {
                message.set_field(&field, value);
            }
        }
        message
    }

    /// The request bodies of one round: a message, the same with its marked
    /// strings made invalid UTF-8, cut short, and random bytes.
    fn bodies(&mut self, desc: &MessageDescriptor, round: usize) -> Vec<Vec<u8>> {
        let budget = if round % 3 == 2 { DEEP } else { SHALLOW };
        let encoded = self.message(desc, 0, budget).encode_to_vec();
        let mut invalid = encoded.clone();
        let marker = MARKER.as_bytes();
        let mut at = 0;
        while let Some(i) = invalid[at..]
            .windows(marker.len())
            .position(|w| w == marker)
        {
            invalid[at + i..at + i + marker.len()].fill(0xFF);
            at += i + marker.len();
        }
        let cut = encoded[..self.rng.usize(0..=encoded.len())].to_vec();
        let n = self.rng.usize(1..256);
        let random = std::iter::repeat_with(|| self.rng.u8(..)).take(n).collect();
        vec![encoded, invalid, cut, random]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_unary_rpc_answers_internal_or_panics_on_hostile_input() {
    let panics = count_panics();
    let s = TestServer::start().await;
    let admin_key = agentry_server::admin::store::create_key(
        &s.pool,
        &agentry_server::audit::Actor::OPERATOR,
        Role::Admin,
        None,
        "fuzz",
    )
    .await
    .expect("admin key")
    .1;
    let manifest = s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let configuration = common::routing::configure(&t, "ide-agent", 5).await;
    let registration = common::routing::register(&t, "i1", "ide-agent").await;
    let uuids = vec![
        manifest.id.clone(),
        t.id.clone(),
        configuration.id.clone(),
        registration.id.clone(),
    ];
    let known = Arc::new(Known {
        uuids,
        strings: vec![
            manifest.id,
            "ide-agent".into(),
            t.id.clone(),
            configuration.id,
            registration.id,
            "i1".into(),
            "code_editing".into(),
            "1.0.0".into(),
        ],
    });

    let mut pool = DescriptorPool::global();
    pool.decode_file_descriptor_set(agentry_server::pb::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let methods: Vec<_> = pool
        .services()
        .filter(|service| service.package_name() == "agentry.v1")
        .flat_map(|service| service.methods().collect::<Vec<_>>())
        .filter(|m| !m.is_client_streaming() && !m.is_server_streaming())
        .collect();
    assert!(methods.len() >= 25, "found {} unary RPCs", methods.len());

    let channel = raw::channel(s.url()).await;
    let keys = [admin_key, t.tenant_key.clone(), t.agent_key.clone()];
    let mut tasks = tokio::task::JoinSet::new();
    for (i, method) in methods.iter().enumerate() {
        let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
        let input = method.input();
        let (channel, keys, known) = (channel.clone(), keys.clone(), known.clone());
        tasks.spawn(async move {
            let mut fuzzer = Fuzzer {
                rng: fastrand::Rng::with_seed(0x5eed + i as u64),
                known,
            };
            let mut bad = Vec::new();
            for round in 0..MESSAGES {
                let bodies = fuzzer.bodies(&input, round);
                for (key, (variant, body)) in keys
                    .iter()
                    .flat_map(|k| bodies.iter().cloned().enumerate().map(move |b| (k, b)))
                {
                    let mut request = authed(body, key);
                    request.set_timeout(Duration::from_secs(10));
                    if let Err(status) = raw::unary(&channel, &path, request).await
                        && matches!(status.code(), Code::Internal | Code::Unknown)
                    {
                        bad.push(format!(
                            "{path} round {round} variant {variant}: {status:?}"
                        ));
                    }
                }
            }
            bad
        });
    }
    let mut bad = Vec::new();
    while let Some(result) = tasks.join_next().await {
        bad.extend(result.expect("fuzz task"));
    }
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a server task panicked");
    assert!(
        bad.is_empty(),
        "{} bad answers:\n{}",
        bad.len(),
        bad.join("\n")
    );
    s.admin
        .list_manifests(agentry_client::ListManifests::new())
        .await
        .expect("the server still answers");
}

/// Up to `len` random bytes.
fn random_bytes(rng: &mut fastrand::Rng, len: std::ops::Range<usize>) -> Vec<u8> {
    let n = rng.usize(len);
    std::iter::repeat_with(|| rng.u8(..)).take(n).collect()
}

/// A string field a stream's message may carry.
fn stream_text(rng: &mut fastrand::Rng) -> String {
    match rng.usize(0..8) {
        0 => String::new(),
        1 => "x".repeat(70_000),
        2 => "a\0b".into(),
        3 => MARKER.into(),
        4 => "é😀\u{202e}".into(),
        _ => format!("i{}", rng.usize(0..3)),
    }
}

/// One health stream's messages, in a random order (hellos twice or late,
/// heartbeats first, goodbyes in the middle), each sent as it is encoded,
/// with a string made invalid UTF-8, cut short, or as random bytes.
fn stream_messages(rng: &mut fastrand::Rng) -> Vec<Vec<u8>> {
    use agentry_client::pb;
    use pb::health_stream_request::Message as Out;
    // Most streams open well, so that what follows reaches a session.
    let opening = (rng.u8(..) < 180).then(|| {
        common::stream::hello(&format!("i{}", rng.usize(0..3)), "ide-agent").encode_to_vec()
    });
    let rest = (0..rng.usize(0..12)).map(|_| {
        let message = match rng.usize(0..10) {
            0 | 1 => Some(Out::Hello(pb::Hello {
                instance_id: if rng.bool() {
                    format!("i{}", rng.usize(0..3))
                } else {
                    stream_text(rng)
                },
                agent_id: if rng.u8(..) < 200 {
                    "ide-agent".into()
                } else {
                    stream_text(rng)
                },
                name: stream_text(rng),
                capacity: rng.bool().then(|| [-1, 0, 1, i32::MAX][rng.usize(0..4)]),
                ..Default::default()
            })),
            2..=5 => Some(Out::Heartbeat(pb::Heartbeat {
                sequence: rng.u64(..),
                health_status: [0, 1, 2, 3, 4, 99, -1][rng.usize(0..7)],
                current_load: [0, 1, -1, i32::MAX, i32::MIN][rng.usize(0..5)],
                message: stream_text(rng),
                // Small epochs are those the streams get, for a while.
                epoch: [0, 1, 2, 3, -1, i64::MAX][rng.usize(0..6)],
                load: rng.bool().then(|| pb::LoadReport {
                    in_flight: rng.u32(..),
                    queue_depth: rng.u32(..),
                    utilization: [0.0, 0.5, 1.0, -1.0, 2.0, f64::NAN, f64::INFINITY]
                        [rng.usize(0..7)],
                    metrics: [(stream_text(rng), f64::NAN)].into(),
                }),
            })),
            6 => Some(Out::Goodbye(pb::Goodbye {
                reason: stream_text(rng),
            })),
            _ => None,
        };
        let request = pb::HealthStreamRequest { message };
        let encoded = request.encode_to_vec();
        match rng.usize(0..6) {
            0 => raw::invalid_utf8(&request, MARKER),
            1 => encoded[..rng.usize(0..=encoded.len())].to_vec(),
            2 => random_bytes(rng, 1..64),
            _ => encoded,
        }
    });
    let messages: Vec<_> = opening.into_iter().chain(rest).collect();
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_streams_end_with_a_clear_status_whatever_they_are_sent() {
    let panics = count_panics();
    let s = TestServer::start_with(|c| c.registry.hello_timeout = Duration::from_millis(500)).await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    common::routing::configure(&t, "ide-agent", 5).await;
    let channel = raw::channel(s.url()).await;
    const PATH: &str = "/agentry.v1.RegistrationService/HealthStream";
    let keys = [
        t.agent_key.clone(),
        t.tenant_key.clone(),
        "agk_00000000000000000000000000000000_nope".to_owned(),
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..120u64 {
        let (channel, keys) = (channel.clone(), keys.clone());
        tasks.spawn(async move {
            let mut rng = fastrand::Rng::with_seed(0x57ea + i);
            // Mostly the agent's key, so that most streams get past it.
            let key = if rng.u8(..) < 220 {
                &keys[0]
            } else {
                rng.choice(&keys).unwrap()
            };
            let messages = stream_messages(&mut rng);
            // Some callers walk away before reading everything.
            let reads = if rng.u8(..) < 30 {
                rng.usize(0..3)
            } else {
                usize::MAX
            };
            let request = authed(tokio_stream::iter(messages), key);
            let outcome = tokio::time::timeout(Duration::from_secs(20), async {
                let mut stream = match raw::streaming(&channel, PATH, request).await {
                    Ok(stream) => stream,
                    Err(status) => return Some(status),
                };
                for _ in 0..reads {
                    match stream.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => return None,
                        Err(status) => return Some(status),
                    }
                }
                None
            })
            .await;
            match outcome {
                Err(_) => Some(format!("stream {i}: did not end within 20 s")),
                Ok(Some(status)) if matches!(status.code(), Code::Internal | Code::Unknown) => {
                    Some(format!("stream {i}: {status:?}"))
                }
                Ok(Some(status)) => {
                    use tonic_types::StatusExt as _;
                    let info = status
                        .check_error_details()
                        .ok()
                        .and_then(|d| d.error_info().cloned());
                    match info {
                        Some(info) if info.domain == "agentry.dev" => None,
                        _ => Some(format!("stream {i}: no ErrorInfo: {status:?}")),
                    }
                }
                Ok(None) => None,
            }
        });
    }
    let mut bad = Vec::new();
    while let Some(result) = tasks.join_next().await {
        bad.extend(result.expect("stream task"));
    }
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a server task panicked");
    assert!(
        bad.is_empty(),
        "{} bad streams:\n{}",
        bad.len(),
        bad.join("\n")
    );
    // A well-behaved agent is still welcomed.
    let (_tx, stream) = common::stream::raw_stream(
        &s,
        &t.agent_key,
        vec![common::stream::hello("after-fuzz", "ide-agent")],
    )
    .await;
    common::stream::welcome(&mut stream.expect("stream")).await;
}

/// An HTTP/1.1 exchange on a connection of its own: the status, if the
/// server answered one, and the body.
async fn http(
    addr: std::net::SocketAddr,
    request: &[u8],
    well_formed: bool,
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.ok()?;
    if !well_formed {
        // The server may wait for the rest of a request cut short: end it.
        let _ = stream.shutdown().await;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    Some((status, body.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_card_endpoint_never_fails_nor_shows_another_tenants_card() {
    let panics = count_panics();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let s = TestServer::start_with(|c| {
        c.metrics_addr = Some(metrics);
        // Bad keys are the point here: the address is never refused.
        c.limits.auth_failures_per_minute = 0;
    })
    .await;
    s.manifest("ide-agent").await;
    // Only globex configures this one: its name marks globex's card.
    s.admin
        .create_manifest(agentry_client::CreateManifest::new(
            "secret-agent",
            "ide",
            "GLOBEX-SECRET",
            "1.0.0",
        ))
        .await
        .expect("manifest");
    let acme = s.tenant("acme").await;
    let globex = s.tenant("globex").await;
    let ours = common::routing::configure(&acme, "ide-agent", 5).await;
    let theirs = common::routing::configure(&globex, "secret-agent", 5).await;
    let admin_key = agentry_server::admin::store::create_key(
        &s.pool,
        &agentry_server::audit::Actor::OPERATOR,
        Role::Admin,
        None,
        "fuzz",
    )
    .await
    .expect("admin key")
    .1;
    // Waits until the endpoint is up (the metrics listener starts with the server).
    let card = |id: &str| format!("/configurations/{id}/.well-known/agent-card.json");
    let get = |path: &str, key: &str| {
        format!("GET {path} HTTP/1.1\r\nhost: agentry\r\nauthorization: Bearer {key}\r\nconnection: close\r\n\r\n")
            .into_bytes()
    };
    common::eventually(
        Duration::from_secs(10),
        "the card endpoint answers",
        || async {
            http(metrics, &get(&card(&ours.id), &acme.tenant_key), true)
                .await
                .is_some_and(|(status, _)| status == 200)
        },
    )
    .await;

    // Who each key reads cards as: its tenant, every tenant, or nobody
    // (an agent key's role may not, an unknown key is no one).
    let keys: Vec<(&str, &str)> = vec![
        (acme.tenant_key.as_str(), "acme"),
        (globex.tenant_key.as_str(), "globex"),
        (admin_key.as_str(), "admin"),
        (acme.agent_key.as_str(), "nobody"),
        ("agk_00000000000000000000000000000000_nope", "nobody"),
    ];
    let leaks_globex = |body: &str| body.contains("GLOBEX-SECRET") || body.contains(&globex.id);
    let mut bad = Vec::new();
    let mut answered = [0usize; 6];
    let mut cards = 0;
    let mut rng = fastrand::Rng::with_seed(0xca4d);
    for round in 0..600 {
        let id = match rng.usize(0..8) {
            0..=2 => ours.id.clone(),
            3..=5 => theirs.id.clone(),
            6 => theirs.id.to_uppercase(),
            _ => format!("{{{}}}", theirs.id),
        };
        let path = match rng.usize(0..12) {
            0..=5 => card(&id),
            6 => format!("{}?tenant_id={}", card(&id), globex.id),
            7 => format!("/configurations/{id}/.well-known/../.well-known/agent-card.json"),
            8 => format!("//configurations/{id}/.well-known/agent-card.json"),
            9 => format!(
                "/configurations/{}/.well-known/agent-card.json",
                "x".repeat(rng.usize(0..3000))
            ),
            10 => format!("/configurations/%2e%2e/{id}/.well-known/agent-card.json"),
            _ => [
                "/",
                "/metrics",
                "/configurations/",
                "/configurations/.well-known/agent-card.json",
                "*",
            ][rng.usize(0..5)]
            .to_owned(),
        };
        // GET most of the time, so that most calls reach the card.
        let method = if rng.u8(..) < 160 {
            "GET"
        } else {
            [
                "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "get", "BREW",
            ][rng.usize(0..8)]
        };
        let (key, reader) = keys[rng.usize(0..keys.len())];
        // Only one well-formed bearer header names a reader.
        let (authorization, reader) = match rng.usize(0..10) {
            0 => (String::new(), "nobody"),
            1 => (format!("authorization: Basic {key}\r\n"), "nobody"),
            2 => (
                format!(
                    "authorization: Bearer {key}\r\nauthorization: Bearer {}\r\n",
                    globex.tenant_key
                ),
                "nobody",
            ),
            3 => ("authorization: Bearer \r\n".into(), "nobody"),
            4 => (format!("authorization: bearer   {key}  \r\n"), reader),
            _ => (format!("authorization: Bearer {key}\r\n"), reader),
        };
        let body: Vec<u8> = match rng.usize(0..4) {
            0 => random_bytes(&mut rng, 1..1024),
            1 => br#"{"tenant_id": "x"}"#.to_vec(),
            _ => Vec::new(),
        };
        let extra = match rng.usize(0..6) {
            0 => "x-forwarded-for: 10.0.0.1\r\n".to_owned(),
            1 => format!("x-long: {}\r\n", "y".repeat(rng.usize(0..2000))),
            2 => "content-type: application/grpc\r\n".to_owned(),
            3 => "accept: */*\r\naccept-encoding: gzip\r\n".to_owned(),
            _ => String::new(),
        };
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nhost: agentry\r\n{authorization}{extra}content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        let mut well_formed = true;
        match rng.usize(0..12) {
            // Damage on the wire: cut short, or bytes that are no HTTP at all.
            0 => {
                request.truncate(rng.usize(0..request.len()));
                well_formed = false;
            }
            1 => {
                request = random_bytes(&mut rng, 1..512);
                well_formed = false;
            }
            _ => {}
        }
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            http(metrics, &request, well_formed),
        )
        .await;
        let Ok(answer) = answer else {
            bad.push(format!(
                "round {round}: no answer within 10 s: {method} {path}"
            ));
            continue;
        };
        let Some((status, body)) = answer else {
            if well_formed {
                bad.push(format!("round {round}: no HTTP answer: {method} {path}"));
            }
            continue;
        };
        answered[usize::from(status / 100).min(5)] += 1;
        if status >= 500 {
            bad.push(format!("round {round}: {status} {body}: {method} {path}"));
        }
        // A card is shown only to a key of its tenant or an admin's, and
        // nothing of globex's to anyone else, error messages included.
        // (Other paths and methods get the scrape, which names no tenant.)
        let card = status == 200
            && serde_json::from_str::<serde_json::Value>(&body)
                .is_ok_and(|v| v.get("supportedInterfaces").is_some());
        if card && reader == "nobody" {
            bad.push(format!(
                "round {round}: a card without a valid key: {method} {path}"
            ));
        }
        if leaks_globex(&body) && !matches!(reader, "globex" | "admin") {
            bad.push(format!(
                "round {round}: globex's card shown to {reader}: {method} {path}"
            ));
        }
        cards += usize::from(card);
    }
    assert!(cards > 0, "some calls got a card");
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a server task panicked");
    assert!(
        bad.is_empty(),
        "{} bad answers:\n{}",
        bad.len(),
        bad.join("\n")
    );
    assert!(
        answered[2] > 0 && answered[4] > 0,
        "answers by class: {answered:?}"
    );
    // Still serving, and the scrape too.
    assert_eq!(
        http(metrics, &get(&card(&ours.id), &acme.tenant_key), true)
            .await
            .map(|a| a.0),
        Some(200)
    );
    assert_eq!(
        http(metrics, &get(&card(&theirs.id), &acme.tenant_key), true)
            .await
            .map(|a| a.0),
        Some(404)
    );
}
