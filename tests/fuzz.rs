//! A bounded, deterministic fuzz of every unary RPC.
//!
//! The RPCs come from the server's own descriptor set, so a new one is
//! covered without a change here. Each gets hostile messages built from its
//! input's descriptor (empty, huge, NUL, unknown enum numbers, extreme
//! numbers, Durations and Timestamps, deep nesting), then wire-level damage
//! (strings that are not UTF-8, truncation, random bytes), sent with admin,
//! tenant and agent keys. No answer may be `INTERNAL` or `UNKNOWN`, no
//! server task may panic, and the server must still answer afterwards.

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
