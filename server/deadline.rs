//! Callers' deadlines answered `DEADLINE_EXCEEDED`.
//!
//! tonic's transport enforces `grpc-timeout` itself, but answers an expired
//! deadline `CANCELLED` ("Timeout expired"), which tells the caller it gave
//! up when the server did. Its timer sits outside the services, where no
//! layer of ours can reach; this layer, just inside it, runs the same
//! deadline a little earlier and answers first. tonic polls its inner
//! service before its own timer, so when both have fired ours wins.
//!
//! As tonic's, it bounds the wait for a response's headers: a stream that
//! has answered runs on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::Status;
use tonic::codegen::http;

use crate::error::Error;

/// How much earlier than tonic's timer ours fires: more than the time
/// between the two timers' starts, which follow each other in one call.
const MARGIN: Duration = Duration::from_millis(5);

/// Adds [`Deadline`] to a service.
#[derive(Debug, Clone, Copy, Default)]
pub struct Deadlines;

impl<S> tower::Layer<S> for Deadlines {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

/// Answers `DEADLINE_EXCEEDED` once the caller's `grpc-timeout` runs out.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for Deadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let deadline = timeout(request.headers())
            .map(|t| tokio::time::Instant::now() + t.saturating_sub(MARGIN));
        let response = self.inner.call(request);
        Box::pin(async move {
            let Some(deadline) = deadline else {
                return response.await;
            };
            match tokio::time::timeout_at(deadline, response).await {
                Ok(response) => response,
                Err(_) => {
                    Ok(Status::from(Error::DeadlineExceeded("deadline exceeded")).into_http())
                }
            }
        })
    }
}

/// The `grpc-timeout` header: at most 8 digits and a unit (gRPC over HTTP/2).
/// A header that does not parse is left to tonic, which refuses it.
fn timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Option<Duration> {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().expect("header"));
        timeout(&headers)
    }

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("99999999S"), Some(Duration::from_secs(99_999_999)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("1n"), Some(Duration::from_nanos(1)));
        for bad in ["", "S", "100", "123456789S", "1x", "-1S", "1.5S"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(timeout(&http::HeaderMap::new()), None);
    }
}
