//! `bare-server`: the baseline beside `storm`. A tonic server that speaks
//! only `RegistrationService/HealthStream`, answers each `Hello` with a
//! `Welcome` at once, acks heartbeats and ends on `Goodbye`, with no
//! database, no authentication and no registry behind it: what opening
//! and welcoming N streams costs tonic and HTTP/2 alone on this machine.
//! `storm --bare` drives it exactly as it drives the real server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use agentry_client::pb;
use pb::health_stream_request::Message as In;
use pb::health_stream_response::Message as Out;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};

use crate::Error;

/// The bare service, routed by path as tonic's generated servers do.
#[derive(Clone)]
struct Bare;

impl NamedService for Bare {
    const NAME: &'static str = "agentry.v1.RegistrationService";
}

impl Service<http::Request<tonic::body::Body>> for Bare {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            if request.uri().path() != "/agentry.v1.RegistrationService/HealthStream" {
                return Ok(Status::unimplemented("bare server: HealthStream only").into_http());
            }
            let mut grpc = Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.streaming(HealthStream, request).await)
        })
    }
}

struct HealthStream;

type Responses = ReceiverStream<Result<pb::HealthStreamResponse, Status>>;

impl StreamingService<pb::HealthStreamRequest> for HealthStream {
    type Response = pb::HealthStreamResponse;
    type ResponseStream = Responses;
    type Future = BoxFuture<Response<Responses>, Status>;

    fn call(&mut self, request: Request<Streaming<pb::HealthStreamRequest>>) -> Self::Future {
        Box::pin(async move {
            let mut inbound = request.into_inner();
            match inbound.message().await?.and_then(|m| m.message) {
                Some(In::Hello(_)) => {}
                _ => return Err(Status::invalid_argument("expected hello")),
            }
            let (tx, rx) = mpsc::channel(16);
            let out = |m| Ok(pb::HealthStreamResponse { message: Some(m) });
            let _ = tx.try_send(out(Out::Welcome(pb::Welcome {
                epoch: 1,
                ..Default::default()
            })));
            tokio::spawn(async move {
                while let Ok(Some(m)) = inbound.message().await {
                    match m.message {
                        Some(In::Heartbeat(hb)) => {
                            let ack = pb::Ack {
                                sequence: hb.sequence,
                                server_time: None,
                            };
                            if tx.send(out(Out::Ack(ack))).await.is_err() {
                                break;
                            }
                        }
                        Some(In::Goodbye(_)) => break,
                        _ => {}
                    }
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        })
    }
}

/// Serves the bare service on `listen` until killed.
pub(crate) async fn run(listen: SocketAddr) -> Result<(), Error> {
    println!("bare server listening on {listen}");
    tonic::transport::Server::builder()
        .add_service(Bare)
        .serve(listen)
        .await?;
    Ok(())
}
