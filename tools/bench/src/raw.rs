//! GetAvailableAgents over a bare HTTP/2 connection: a pre-encoded request,
//! answers counted, not decoded. Without tonic's channel (a buffer task each
//! call passes through) the load generator spends about half the CPU per call,
//! which on the server's own machine is CPU left to the server.
//!
//! Used by `available --raw`.

use agentry_client::{AgentFilter, pb};
use prost::Message as _;
use prost::bytes::{BufMut, Bytes, BytesMut};
use tonic::codegen::http::{self, HeaderValue, Method, Uri};

use crate::Error;

const PATH: &str = "/agentry.v1.RoutingService/GetAvailableAgents";

/// A connection's handle; clones share the connection.
pub(crate) type Connection = h2::client::SendRequest<Bytes>;

/// The framed request and its headers.
#[derive(Clone)]
pub(crate) struct Prepared {
    frame: Bytes,
    uri: Uri,
    authorization: HeaderValue,
}

pub(crate) fn request(url: &str, key: &str, limit: i32) -> Result<Prepared, Error> {
    let message = pb::GetAvailableAgentsRequest {
        filter: Some(AgentFilter::new().into()),
        limit,
        explain: false,
    }
    .encode_to_vec();
    // gRPC's length-prefixed message: uncompressed flag, big-endian length.
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len())?);
    frame.put_slice(&message);
    Ok(Prepared {
        frame: frame.freeze(),
        uri: format!("{}{PATH}", url.trim_end_matches('/')).parse()?,
        authorization: format!("Bearer {key}").parse()?,
    })
}

pub(crate) async fn connect(url: &str) -> Result<Connection, Error> {
    let uri: Uri = url.parse()?;
    let authority = uri.authority().ok_or("the server URL has no host")?;
    let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
    tcp.set_nodelay(true)?;
    // Windows large enough that answers in flight never wait for a window update.
    let (connection, driver) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake(tcp)
        .await?;
    tokio::spawn(async move {
        if let Err(e) = driver.await {
            eprintln!("agentry-bench: connection closed: {e}");
        }
    });
    Ok(connection)
}

/// One call; the answer's length in bytes.
pub(crate) async fn get_available_agents(
    connection: Connection,
    prepared: Prepared,
) -> Result<usize, Error> {
    let mut connection = connection.ready().await?;
    let request = http::Request::builder()
        .method(Method::POST)
        .uri(prepared.uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", prepared.authorization)
        .body(())?;
    let (answer, mut body) = connection.send_request(request, false)?;
    body.send_data(prepared.frame, true)?;
    let (head, mut answer) = answer.await?.into_parts();
    if head.status != http::StatusCode::OK {
        return Err(format!("HTTP status {}", head.status).into());
    }
    let mut length = 0;
    while let Some(chunk) = answer.data().await {
        let chunk = chunk?;
        length += chunk.len();
        answer.flow_control().release_capacity(chunk.len())?;
    }
    let trailers = answer.trailers().await?;
    // A trailers-only answer (an error) carries its status in the headers.
    let status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| head.headers.get("grpc-status"));
    match status.map(HeaderValue::as_bytes) {
        Some(b"0") => Ok(length),
        other => Err(format!(
            "grpc-status {:?}: {:?}",
            other.map(String::from_utf8_lossy),
            trailers
                .as_ref()
                .and_then(|t| t.get("grpc-message"))
                .or_else(|| head.headers.get("grpc-message"))
        )
        .into()),
    }
}
