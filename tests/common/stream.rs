//! Raw health streams, message by message, for tests that need what the
//! SDK's `AgentSession` hides: exact messages, status codes, stale epochs.

use agentry_client::pb;
use pb::health_stream_request::Message as Out;
use pb::health_stream_response::Message as In;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::TestServer;

/// A raw health stream with `key`: the sender for our messages and the call's result.
pub async fn raw_stream(
    s: &TestServer,
    key: &str,
    first: Vec<pb::HealthStreamRequest>,
) -> (
    mpsc::Sender<pb::HealthStreamRequest>,
    Result<tonic::Streaming<pb::HealthStreamResponse>, tonic::Status>,
) {
    let channel = tonic::transport::Endpoint::from_shared(s.url())
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client = pb::registration_service_client::RegistrationServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    for message in first {
        tx.send(message).await.expect("queue");
    }
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("header"),
    );
    let result = client
        .health_stream(request)
        .await
        .map(tonic::Response::into_inner);
    (tx, result)
}

/// A health stream of `instance` on `channel` (connections shared by
/// many streams), its hello sent: the sender and the call's result.
pub async fn raw_stream_on(
    channel: tonic::transport::Channel,
    key: &str,
    instance: &str,
) -> (
    mpsc::Sender<pb::HealthStreamRequest>,
    Result<tonic::Streaming<pb::HealthStreamResponse>, tonic::Status>,
) {
    let mut client = pb::registration_service_client::RegistrationServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    tx.send(hello(instance, "ide-agent")).await.expect("queue");
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("header"),
    );
    let result = client
        .health_stream(request)
        .await
        .map(tonic::Response::into_inner);
    (tx, result)
}

pub fn hello(instance_id: &str, agent_id: &str) -> pb::HealthStreamRequest {
    pb::HealthStreamRequest {
        message: Some(Out::Hello(pb::Hello {
            instance_id: instance_id.into(),
            agent_id: agent_id.into(),
            ..Default::default()
        })),
    }
}

pub fn heartbeat(sequence: u64, health: pb::HealthStatus, epoch: i64) -> pb::HealthStreamRequest {
    pb::HealthStreamRequest {
        message: Some(Out::Heartbeat(pb::Heartbeat {
            sequence,
            health_status: health.into(),
            epoch,
            ..Default::default()
        })),
    }
}

/// Reads the `Welcome` that opens a stream.
pub async fn welcome(stream: &mut tonic::Streaming<pb::HealthStreamResponse>) -> pb::Welcome {
    match stream
        .message()
        .await
        .expect("welcome")
        .and_then(|m| m.message)
    {
        Some(In::Welcome(welcome)) => welcome,
        other => panic!("expected a welcome, got {other:?}"),
    }
}

/// The status that ends `stream`, whatever messages come before it; a
/// stream that ends with OK, or not within `deadline`, fails the test.
pub async fn end_of<T>(
    stream: &mut tonic::Streaming<T>,
    deadline: std::time::Duration,
) -> tonic::Status {
    tokio::time::timeout(deadline, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended with OK, without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the stream ended in time")
}
