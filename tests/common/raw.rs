//! Calls with bytes on the wire as a test writes them, valid protobuf or
//! not: what a client built by reflection, or a hostile one, may send.

use prost::bytes::{Buf, BufMut};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

/// Sends and receives message bodies as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bytes;

impl Codec for Bytes {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Bytes;
    type Decoder = Bytes;

    fn encoder(&mut self) -> Bytes {
        Bytes
    }

    fn decoder(&mut self) -> Bytes {
        Bytes
    }
}

impl Encoder for Bytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Bytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// A channel to `url`.
pub async fn channel(url: String) -> Channel {
    tonic::transport::Endpoint::from_shared(url)
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

/// `request` with `authorization: Bearer <key>`.
pub fn authed<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("header"),
    );
    request
}

/// Calls unary method `path` (`/package.Service/Method`) with `body`.
pub async fn unary(
    channel: &Channel,
    path: &str,
    request: tonic::Request<Vec<u8>>,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = PathAndQuery::try_from(path.to_owned()).expect("path");
    grpc.unary(request, path, Bytes)
        .await
        .map(tonic::Response::into_inner)
}

/// `message` encoded, with every occurrence of `marker` (a string field's
/// value) replaced by as many bytes of 0xFF, which are not UTF-8: a string
/// field no prost client would send.
pub fn invalid_utf8(message: &impl prost::Message, marker: &str) -> Vec<u8> {
    let mut bytes = message.encode_to_vec();
    let marker = marker.as_bytes();
    let mut at = 0;
    while let Some(found) = bytes[at..].windows(marker.len()).position(|w| w == marker) {
        let start = at + found;
        bytes[start..start + marker.len()].fill(0xFF);
        at = start + marker.len();
    }
    bytes
}

/// Opens streaming method `path`, sending the bodies `request` yields.
pub async fn streaming<S>(
    channel: &Channel,
    path: &str,
    request: tonic::Request<S>,
) -> Result<tonic::Streaming<Vec<u8>>, Status>
where
    S: tokio_stream::Stream<Item = Vec<u8>> + Send + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = PathAndQuery::try_from(path.to_owned()).expect("path");
    grpc.streaming(request, path, Bytes)
        .await
        .map(tonic::Response::into_inner)
}
