//! The layer around every call: its request id, its span, its access line
//! and its metrics.
//!
//! A call ends when the last frame of its answer has gone (unary calls
//! too: their status travels in the trailers), or when the caller went away
//! before (`Cancelled`). A trailers-only answer (most errors) carries its
//! status in the headers. Each call then gives one access line at INFO on
//! the target [`ACCESS_TARGET`], failures included, and one count and one
//! latency sample.
//!
//! Who called is known only once a handler authorized the call: the layer
//! puts an empty [`CallerSlot`] into the request's extensions, which
//! `Authenticator::authorize` fills.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use tonic::Code;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::transport::server::TcpConnectInfo;
use tracing::Instrument;
use uuid::Uuid;

use super::metrics::{RPC_DURATION, RPC_REQUESTS, code_name};

/// The header that carries a call's request id, both ways.
pub const REQUEST_ID: &str = "x-request-id";
/// The tracing target of the access lines.
pub const ACCESS_TARGET: &str = "agentry::access";
/// Longest request id taken from a caller.
const MAX_REQUEST_ID: usize = 128;

/// Who made a call, as its authorization established. Never the secret.
#[derive(Debug, Clone)]
pub struct CallerInfo {
    /// The API key's id.
    pub key_id: Uuid,
    /// The key's role.
    pub role: &'static str,
    /// The key's tenant; `None` for admin keys.
    pub tenant: Option<Uuid>,
}

/// Where the handler leaves [`CallerInfo`] for the access line.
#[derive(Debug, Clone, Default)]
pub struct CallerSlot(Arc<OnceLock<CallerInfo>>);

impl CallerSlot {
    /// Fills the slot of the call whose request `extensions` are given
    /// (nothing happens outside the layer, e.g. in unit tests).
    pub fn fill(extensions: &tonic::Extensions, caller: impl FnOnce() -> CallerInfo) {
        if let Some(slot) = extensions.get::<CallerSlot>() {
            let _ = slot.0.set(caller());
        }
    }
}

/// Adds [`Observed`] to a service.
#[derive(Debug, Clone, Copy, Default)]
pub struct Telemetry;

impl<S> tower::Layer<S> for Telemetry {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Observed<S> {
        Observed { inner }
    }
}

/// Gives each call a request id and a span, and counts and logs it when it ends.
#[derive(Debug, Clone)]
pub struct Observed<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for Observed<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Counted<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let id = request_id(request.headers());
        let slot = CallerSlot::default();
        request.extensions_mut().insert(slot.clone());
        let mut call = Call {
            method: request.uri().path().to_owned(),
            peer: request
                .extensions()
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr),
            header: HeaderValue::from_str(&id).ok(),
            id,
            slot,
            started: Instant::now(),
            code: None,
        };
        // `role`, `tenant` and `key_id` are recorded by the handler's authorization.
        let span = tracing::info_span!(
            "rpc",
            method = %call.method,
            request_id = %call.id,
            role = tracing::field::Empty,
            tenant = tracing::field::Empty,
            key_id = tracing::field::Empty,
        );
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let mut response = response
                    .await
                    .inspect_err(|_| call.code = Some(Code::Unknown))?;
                if let Some(header) = call.header.clone() {
                    response.headers_mut().insert(REQUEST_ID, header);
                }
                call.code = status(response.headers());
                Ok(response.map(|inner| Counted {
                    inner,
                    call: Some(call),
                }))
            }
            .instrument(span),
        )
    }
}

/// The caller's request id if it is one (1 to 128 printable ASCII
/// characters), else a new one: a log line must not be forged through it.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .map(HeaderValue::as_bytes)
        .filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID)
        .filter(|id| id.iter().all(|b| (b' '..=b'~').contains(b)))
        .and_then(|id| std::str::from_utf8(id).ok())
        .map_or_else(|| Uuid::new_v4().to_string(), str::to_owned)
}

/// The `grpc-status` of headers or trailers.
fn status(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.parse().ok()?))
}

/// One call, recorded when dropped.
#[derive(Debug)]
struct Call {
    method: String,
    id: String,
    header: Option<HeaderValue>,
    peer: Option<SocketAddr>,
    slot: CallerSlot,
    started: Instant,
    code: Option<Code>,
}

impl Drop for Call {
    fn drop(&mut self) {
        // Without a status the answer was not finished: the caller left.
        let code = self.code.unwrap_or(Code::Cancelled);
        let elapsed = self.started.elapsed();
        // Unknown paths are the caller's choice: one series for all of them.
        let method = if code == Code::Unimplemented {
            "unknown".to_owned()
        } else {
            std::mem::take(&mut self.method)
        };
        let caller = self.slot.0.get();
        tracing::info!(
            target: ACCESS_TARGET,
            request_id = %self.id,
            method = %method,
            code = %code_name(code),
            latency_ms = elapsed.as_micros() as f64 / 1000.0,
            peer = %OrDash(self.peer),
            tenant = %OrDash(caller.and_then(|c| c.tenant)),
            key_id = %OrDash(caller.map(|c| c.key_id)),
            role = %caller.map_or("-", |c| c.role),
            "call"
        );
        metrics::counter!(RPC_REQUESTS, "method" => method.clone(), "code" => code_name(code))
            .increment(1);
        metrics::histogram!(RPC_DURATION, "method" => method).record(elapsed.as_secs_f64());
    }
}

/// Shows `-` for a value that is missing.
struct OrDash<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

pin_project_lite::pin_project! {
    /// An answer's body that records its call when it ends.
    pub struct Counted<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        let ended = match &frame {
            Some(Ok(frame)) => match frame.trailers_ref() {
                Some(trailers) => {
                    if let Some(call) = this.call.as_mut() {
                        call.code = status(trailers).or(call.code).or(Some(Code::Unknown));
                    }
                    true
                }
                None => false,
            },
            Some(Err(_)) | None => true,
        };
        if ended && let Some(mut call) = this.call.take() {
            call.code.get_or_insert(Code::Unknown);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_of(value: &[u8]) -> String {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_bytes(value).expect("header"));
        request_id(&headers)
    }

    #[test]
    fn request_ids_are_taken_when_printable_and_short() {
        assert_eq!(id_of(b"abc-123"), "abc-123");
        assert_eq!(id_of(&[b'x'; 128]), "x".repeat(128));
        for bad in [&[b'x'; 129][..], b"tab\there", "é".as_bytes(), b""] {
            let replaced = id_of(bad);
            assert!(
                Uuid::try_parse(&replaced).is_ok(),
                "{bad:?} gave {replaced}"
            );
        }
        assert!(Uuid::try_parse(&request_id(&HeaderMap::new())).is_ok());
    }
}
