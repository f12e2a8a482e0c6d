//! Raw health streams (`RegistrationService/HealthStream` through tonic's
//! generated client, not the SDK), as the heartbeat and idle modes open them:
//! welcomed streams, 100 per HTTP/2 connection, opened 200 at a time, and
//! their goodbyes. The SDK would hide the stream's messages the heartbeat
//! mode times.

use agentry_client::pb;
use pb::health_stream_request::Message as Out;
use pb::health_stream_response::Message as In;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::Error;
use crate::cli::Args;
use crate::setup::{agent_id, spawn_bounded};

/// A raw health stream that has been welcomed.
pub(crate) struct Stream {
    pub(crate) tx: mpsc::Sender<pb::HealthStreamRequest>,
    pub(crate) rx: tonic::Streaming<pb::HealthStreamResponse>,
    pub(crate) epoch: i64,
    /// The last heartbeat's sequence number.
    pub(crate) sequence: u64,
    /// How often the server wants heartbeats (its Welcome says).
    pub(crate) interval: std::time::Duration,
}

/// A welcomed stream of instance `instance` of agent `agent`.
pub(crate) async fn open_stream(
    channel: Channel,
    key: &str,
    agent: String,
    instance: String,
) -> Result<Stream, Error> {
    let mut client = pb::registration_service_client::RegistrationServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(64);
    let hello = pb::Hello {
        instance_id: instance,
        agent_id: agent,
        ..Default::default()
    };
    tx.send(pb::HealthStreamRequest {
        message: Some(Out::Hello(hello)),
    })
    .await?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse()?);
    let mut rx = client.health_stream(request).await?.into_inner();
    match rx.message().await?.and_then(|m| m.message) {
        Some(In::Welcome(w)) => Ok(Stream {
            tx,
            rx,
            epoch: w.epoch,
            sequence: 0,
            interval: w
                .heartbeat_interval
                .and_then(|d| std::time::Duration::try_from(d).ok())
                .unwrap_or_default(),
        }),
        other => Err(format!("expected welcome, got {other:?}").into()),
    }
}

/// Says goodbye on every stream (a stream already closed is passed over).
pub(crate) async fn goodbye_all(streams: &[Stream], reason: &str) {
    for stream in streams {
        let bye = pb::HealthStreamRequest {
            message: Some(Out::Goodbye(pb::Goodbye {
                reason: reason.to_owned(),
            })),
        };
        let _ = stream.tx.send(bye).await;
    }
}

/// HTTP/2 connections for `streams` streams, `per_connection` on each.
pub(crate) async fn channels(
    url: &str,
    streams: usize,
    per_connection: usize,
) -> Result<Vec<Channel>, Error> {
    let mut out = Vec::new();
    for _ in 0..streams.div_ceil(per_connection.max(1)) {
        out.push(Endpoint::from_shared(url.to_owned())?.connect().await?);
    }
    Ok(out)
}

/// `count` welcomed streams of agent `bench-agent-000`, instances `bench-<i>`.
pub(crate) async fn open_many(args: &Args, key: &str, count: usize) -> Result<Vec<Stream>, Error> {
    open_spread(args, key, count, 1).await
}

/// `count` welcomed streams, instances `bench-<i>`, of agents
/// `bench-agent-<i % agents>` (one configuration each), in instance order.
pub(crate) async fn open_spread(
    args: &Args,
    key: &str,
    count: usize,
    agents: usize,
) -> Result<Vec<Stream>, Error> {
    let channels = channels(&args.url, count, 100).await?;
    let mut opened = spawn_bounded(count, 200, |i| {
        let (channel, key) = (channels[i / 100].clone(), key.to_owned());
        async move {
            let stream = open_stream(
                channel,
                &key,
                agent_id(i % agents.max(1)),
                format!("bench-{i}"),
            );
            stream.await.map(|s| (i, s))
        }
    })
    .await?;
    opened.sort_by_key(|(i, _)| *i);
    Ok(opened.into_iter().map(|(_, s)| s).collect())
}
