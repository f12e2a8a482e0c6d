//! The error type of every call.
//!
//! [`Error`] and what it holds are this crate's own types, so that a new
//! version of tonic (or of the HTTP stack under it) is not a breaking change
//! of this crate: the gRPC code is a [`Code`], the status of a failed call a
//! [`Status`] (each variant's `source`), a connection failure a
//! [`TransportError`]. Each wraps what tonic reported, boxed, so that
//! nothing is lost: `source()` chains down to the I/O error, and the
//! escape hatches below give tonic's own values.
//!
//! What is tied to the versions of tonic and tonic-types, and so not covered
//! by the semver of this crate: [`Error::tonic_status`],
//! [`Status::as_tonic`] and [`Status::into_tonic`], [`Error::details`] (a
//! `tonic_types::ErrorDetails`), and `From<tonic::Status> for Error`, for
//! callers of the raw stubs in [`pb`](crate::pb), which are tonic's
//! generated clients. The stable readers of the standard details are
//! [`Error::field`], [`Error::reason`] and [`Error::retry_after`];
//! [`Status::details_bin`] gives them encoded, for any protobuf library.

use std::fmt;
use std::time::Duration;

use tonic_types::{ErrorDetails, StatusExt};

use crate::{Code, Status};

/// Response metadata in which servers before the `BadRequest` detail named
/// the offending request field (still read as a fallback).
const FIELD_METADATA: &str = "agentry-field";
/// gRPC's retry pushback (gRFC A6), read when a status has no `RetryInfo`.
const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// What [`Client`](crate::Client) calls return.
pub type Result<T> = std::result::Result<T, Error>;

/// Why a call failed.
///
/// The variants that come from a gRPC status keep that [`Status`] as their
/// [`source`](std::error::Error::source) (also reachable through
/// [`Error::status`]). Match on the variants, or on [`Error::code`] for
/// codes without a variant of their own. None of the types it holds belongs
/// to tonic (the [crate docs](crate#what-is-this-crates-own) list the few
/// escape hatches that do).
///
/// ```no_run
/// # async fn run(client: agentry_client::Client) -> agentry_client::Result<()> {
/// use agentry_client::{CreateManifest, Error};
///
/// match client.create_manifest(CreateManifest::new("ide-agent", "ide", "IDE Agent", "1.0.0")).await {
///     Ok(manifest) => println!("created {}", manifest.id),
///     Err(Error::AlreadyExists { .. }) => println!("already there"),
///     Err(Error::InvalidArgument { field, message, .. }) => {
///         eprintln!("bad {}: {message}", field.as_deref().unwrap_or("request"))
///     }
///     Err(e) => return Err(e),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `INVALID_ARGUMENT`: the request was malformed.
    #[error("invalid argument{}: {message}", field.as_deref().map(|f| format!(" `{f}`")).unwrap_or_default())]
    #[non_exhaustive]
    InvalidArgument {
        /// The offending request field, e.g. `manifest.agent_id`, when the server named one.
        field: Option<String>,
        /// The server's explanation.
        message: String,
        /// The original status.
        source: Status,
    },
    /// `NOT_FOUND`: the resource does not exist (or belongs to another tenant).
    #[error("not found: {message}")]
    #[non_exhaustive]
    NotFound {
        /// The server's explanation.
        message: String,
        /// The original status.
        source: Status,
    },
    /// `ALREADY_EXISTS`: a resource with the same unique key exists.
    #[error("already exists: {message}")]
    #[non_exhaustive]
    AlreadyExists {
        /// The server's explanation.
        message: String,
        /// The original status.
        source: Status,
    },
    /// `FAILED_PRECONDITION`: the system is not in a state that allows the call.
    #[error("failed precondition: {message}")]
    #[non_exhaustive]
    FailedPrecondition {
        /// The server's explanation.
        message: String,
        /// The original status.
        source: Status,
    },
    /// `RESOURCE_EXHAUSTED`: a limit was reached, e.g. a configuration's `max_workload`.
    #[error("resource exhausted: {message}")]
    #[non_exhaustive]
    ResourceExhausted {
        /// The server's explanation.
        message: String,
        /// The original status.
        source: Status,
    },
    /// `PERMISSION_DENIED`: the API key's role may not make this call.
    #[error("permission denied: {message}")]
    #[non_exhaustive]
    PermissionDenied {
        /// The server's explanation.
        message: String,
        /// The original status.
        source: Status,
    },
    /// `UNAUTHENTICATED`: the API key is missing, malformed, unknown or revoked.
    #[error("unauthenticated: {message}")]
    #[non_exhaustive]
    Unauthenticated {
        /// The server's explanation.
        message: String,
        /// The original status.
        source: Status,
    },
    /// `ABORTED`: the call lost a race, e.g. against a newer epoch.
    #[error("aborted: {message}")]
    #[non_exhaustive]
    Aborted {
        /// The server's explanation.
        message: String,
        /// The original status.
        source: Status,
    },
    /// `UNAVAILABLE`: the server (or its database) cannot be reached right now.
    #[error("unavailable: {message}")]
    #[non_exhaustive]
    Unavailable {
        /// The server's explanation.
        message: String,
        /// The original status.
        source: Status,
    },
    /// `DEADLINE_EXCEEDED`: the call did not finish within the client's timeout.
    #[error("deadline exceeded: {message}")]
    #[non_exhaustive]
    DeadlineExceeded {
        /// The server's (or the client's) explanation.
        message: String,
        /// The original status.
        source: Status,
    },
    /// Any other gRPC status (`INTERNAL`, `UNIMPLEMENTED`, `CANCELLED`...).
    #[error("{code:?}: {message}")]
    #[non_exhaustive]
    Other {
        /// The status code.
        code: Code,
        /// The server's explanation.
        message: String,
        /// The original status.
        source: Status,
    },
    /// The connection to the server could not be established (by
    /// [`ClientBuilder::connect`](crate::ClientBuilder::connect); a call on a
    /// broken connection is [`Error::Unavailable`]).
    #[error("transport error: {0}")]
    Transport(#[source] TransportError),
    /// The client was configured with an unusable value (URL, API key...).
    #[error("invalid client configuration: {0}")]
    InvalidConfig(String),
}

impl Error {
    /// The gRPC code of a failed call; `None` for [`Error::Transport`] and
    /// [`Error::InvalidConfig`].
    #[must_use]
    pub fn code(&self) -> Option<Code> {
        Some(match self {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::FailedPrecondition { .. } => Code::FailedPrecondition,
            Error::ResourceExhausted { .. } => Code::ResourceExhausted,
            Error::PermissionDenied { .. } => Code::PermissionDenied,
            Error::Unauthenticated { .. } => Code::Unauthenticated,
            Error::Aborted { .. } => Code::Aborted,
            Error::Unavailable { .. } => Code::Unavailable,
            Error::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Error::Other { code, .. } => *code,
            Error::Transport(_) | Error::InvalidConfig(_) => return None,
        })
    }

    /// The request field the server blamed, e.g. `manifest.agent_id`. On
    /// [`Error::InvalidArgument`], the first field violation of the status's
    /// `google.rpc.BadRequest` detail, else the (deprecated) `agentry-field`
    /// metadata that older servers send; on other statuses, that metadata
    /// whenever a server sends it.
    #[must_use]
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::InvalidArgument { field, .. } => field.as_deref(),
            other => other.status().and_then(field_metadata),
        }
    }

    /// The machine-readable reason of the failure, from the status's
    /// `google.rpc.ErrorInfo` detail, e.g. `"INVALID_FIELD"`, `"NOT_FOUND"`,
    /// `"LEASE_EXPIRED"` or `"DATABASE_UNAVAILABLE"` (the server's README
    /// lists them). Stable across releases, unlike the message; `None` when
    /// the status carries no `ErrorInfo`.
    #[must_use]
    pub fn reason(&self) -> Option<String> {
        Some(self.details()?.error_info()?.reason.clone())
    }

    /// How long the server asked the caller to wait before trying again:
    /// the status's `google.rpc.RetryInfo` detail, else gRPC's
    /// `grpc-retry-pushback-ms` metadata. `None` when the server gave no
    /// delay.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        if let Some(delay) = self
            .details()
            .and_then(|d| d.retry_info().and_then(|r| r.retry_delay))
        {
            return Some(delay);
        }
        let value = self.status()?.metadata(RETRY_PUSHBACK)?;
        value.parse().ok().map(Duration::from_millis)
    }

    /// The standard error details (`google.rpc.Status`, AIP-193) the server
    /// sent with the status, for details without an accessor of their own.
    /// `None` without a status, or when its details do not decode.
    ///
    /// **Tied to the version of tonic-types (which follows tonic's) this
    /// crate uses; not covered by its semver.** [`Error::field`],
    /// [`Error::reason`] and [`Error::retry_after`] read the details the
    /// server sends without it, and [`Status::details_bin`] gives them
    /// encoded.
    #[must_use]
    pub fn details(&self) -> Option<ErrorDetails> {
        self.tonic_status()?.check_error_details().ok()
    }

    /// The gRPC status the error came from, if it came from one.
    #[must_use]
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::InvalidArgument { source, .. }
            | Error::NotFound { source, .. }
            | Error::AlreadyExists { source, .. }
            | Error::FailedPrecondition { source, .. }
            | Error::ResourceExhausted { source, .. }
            | Error::PermissionDenied { source, .. }
            | Error::Unauthenticated { source, .. }
            | Error::Aborted { source, .. }
            | Error::Unavailable { source, .. }
            | Error::DeadlineExceeded { source, .. }
            | Error::Other { source, .. } => Some(source),
            Error::Transport(_) | Error::InvalidConfig(_) => None,
        }
    }

    /// The `tonic::Status` the error came from, if it came from one: the
    /// escape hatch for what [`Status`] does not give.
    ///
    /// **Tied to the version of tonic this crate uses; not covered by the
    /// semver of this crate**: a release that upgrades tonic changes this
    /// type without a major version.
    #[must_use]
    pub fn tonic_status(&self) -> Option<&tonic::Status> {
        self.status().map(Status::as_tonic)
    }

    /// A connection that could not be made.
    pub(crate) fn transport(error: tonic::transport::Error) -> Error {
        Error::Transport(TransportError(Box::new(error)))
    }

    /// A client-side timeout: tonic reports it as `CANCELLED`, the client as
    /// `DEADLINE_EXCEEDED` (which is what gRPC specifies).
    pub(crate) fn deadline_exceeded(source: tonic::Status, timeout: std::time::Duration) -> Error {
        Error::DeadlineExceeded {
            message: format!("no response within {timeout:?}"),
            source: Status::from_tonic(source),
        }
    }
}

impl From<Status> for Error {
    /// The variant for the status's code.
    fn from(source: Status) -> Self {
        let message = source.message().to_owned();
        match source.code() {
            Code::InvalidArgument => {
                let field = field_of(&source);
                Error::InvalidArgument {
                    field,
                    message,
                    source,
                }
            }
            Code::NotFound => Error::NotFound { message, source },
            Code::AlreadyExists => Error::AlreadyExists { message, source },
            Code::FailedPrecondition => Error::FailedPrecondition { message, source },
            Code::ResourceExhausted => Error::ResourceExhausted { message, source },
            Code::PermissionDenied => Error::PermissionDenied { message, source },
            Code::Unauthenticated => Error::Unauthenticated { message, source },
            Code::Aborted => Error::Aborted { message, source },
            Code::Unavailable => Error::Unavailable { message, source },
            Code::DeadlineExceeded => Error::DeadlineExceeded { message, source },
            code => Error::Other {
                code,
                message,
                source,
            },
        }
    }
}

impl From<tonic::Status> for Error {
    /// The variant for the status's code, for callers of the raw stubs in
    /// [`pb`](crate::pb). Tied to the version of tonic this crate uses; not
    /// covered by its semver.
    fn from(status: tonic::Status) -> Self {
        Error::from(Status::from_tonic(status))
    }
}

/// Why the connection to the server could not be made: the error of
/// [`Error::Transport`].
///
/// Opaque, so that it does not change with the HTTP stack under this crate.
/// Its `Display` spells out the whole chain of causes (`tcp connect error:
/// Connection refused`...), and [`source`](std::error::Error::source) leads
/// to them, down to the I/O error, for `downcast_ref`.
pub struct TransportError(Box<tonic::transport::Error>);

impl fmt::Debug for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tonic's own level only says "transport error": its causes tell.
        match std::error::Error::source(&*self.0) {
            Some(cause) => f.write_str(&chain(cause)),
            None => fmt::Display::fmt(&self.0, f),
        }
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0)
    }
}

/// The field a status blames: its `BadRequest` detail first, then the
/// `agentry-field` metadata.
fn field_of(status: &Status) -> Option<String> {
    status
        .as_tonic()
        .check_error_details()
        .ok()
        .and_then(|d| {
            d.bad_request()
                .and_then(|b| b.field_violations.first())
                .map(|v| v.field.clone())
        })
        .filter(|f| !f.is_empty())
        .or_else(|| field_metadata(status).map(str::to_owned))
}

/// The deprecated `agentry-field` metadata of a status.
fn field_metadata(status: &Status) -> Option<&str> {
    status.metadata(FIELD_METADATA).filter(|f| !f.is_empty())
}

/// An error and its sources, `: `-separated.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_field(code: tonic::Code, field: &str) -> tonic::Status {
        let mut status = tonic::Status::new(code, "bad");
        status
            .metadata_mut()
            .insert(FIELD_METADATA, field.parse().expect("ascii"));
        status
    }

    #[test]
    fn invalid_argument_reads_the_field() {
        let e = Error::from(with_field(
            tonic::Code::InvalidArgument,
            "manifest.agent_id",
        ));
        assert_eq!(e.code(), Some(Code::InvalidArgument));
        assert_eq!(e.field(), Some("manifest.agent_id"));
        assert!(
            matches!(&e, Error::InvalidArgument { field: Some(f), message, .. } if f == "manifest.agent_id" && message == "bad")
        );
        assert_eq!(e.to_string(), "invalid argument `manifest.agent_id`: bad");
        let source = std::error::Error::source(&e).expect("source");
        assert_eq!(
            source.downcast_ref::<Status>().map(Status::code),
            Some(Code::InvalidArgument)
        );
    }

    #[test]
    fn field_is_optional_and_read_on_other_codes() {
        let e = Error::from(tonic::Status::invalid_argument("bad"));
        assert_eq!(e.field(), None);
        assert_eq!(e.to_string(), "invalid argument: bad");
        let e = Error::from(with_field(tonic::Code::FailedPrecondition, "max_workload"));
        assert!(matches!(e, Error::FailedPrecondition { .. }));
        assert_eq!(e.field(), Some("max_workload"));
    }

    #[test]
    fn every_tonic_code_maps_to_its_code_and_keeps_the_status() {
        for n in 0..=16 {
            let tonic_code = tonic::Code::from_i32(n);
            let mut original = tonic::Status::new(tonic_code, "m");
            original
                .metadata_mut()
                .insert("x-request-id", "r-7".parse().expect("ascii"));
            let e = Error::from(original);
            let code = e.code().expect("a code");
            assert_eq!(code.to_i32(), n);
            assert_eq!(format!("{code:?}"), format!("{tonic_code:?}"));
            // The escape hatch gives the original status, metadata and all.
            let tonic = e.tonic_status().expect("the tonic status");
            assert_eq!(tonic.code(), tonic_code);
            assert_eq!(tonic.message(), "m");
            assert_eq!(
                tonic
                    .metadata()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok()),
                Some("r-7")
            );
            let status = e.status().expect("a status");
            assert_eq!(status.code(), code);
            assert_eq!(status.metadata("x-request-id"), Some("r-7"));
            let variant = match code {
                Code::InvalidArgument => matches!(e, Error::InvalidArgument { .. }),
                Code::NotFound => matches!(e, Error::NotFound { .. }),
                Code::AlreadyExists => matches!(e, Error::AlreadyExists { .. }),
                Code::FailedPrecondition => matches!(e, Error::FailedPrecondition { .. }),
                Code::ResourceExhausted => matches!(e, Error::ResourceExhausted { .. }),
                Code::PermissionDenied => matches!(e, Error::PermissionDenied { .. }),
                Code::Unauthenticated => matches!(e, Error::Unauthenticated { .. }),
                Code::Aborted => matches!(e, Error::Aborted { .. }),
                Code::Unavailable => matches!(e, Error::Unavailable { .. }),
                Code::DeadlineExceeded => matches!(e, Error::DeadlineExceeded { .. }),
                other => matches!(e, Error::Other { code, .. } if code == other),
            };
            assert!(variant, "{code}: {e:?}");
        }
        let e = Error::InvalidConfig("x".into());
        assert_eq!(
            (
                e.code(),
                e.field(),
                e.status().is_none(),
                e.tonic_status().is_none()
            ),
            (None, None, true, true)
        );
    }

    #[test]
    fn errors_are_made_from_the_crates_own_status() {
        let e = Error::from(Status::new(Code::NotFound, "gone"));
        assert!(matches!(&e, Error::NotFound { message, .. } if message == "gone"));
        assert_eq!(e.to_string(), "not found: gone");
        let e = Error::from(Status::new(Code::Internal, "boom"));
        assert!(matches!(
            e,
            Error::Other {
                code: Code::Internal,
                ..
            }
        ));
        assert_eq!(e.to_string(), "Internal: boom");
    }

    #[test]
    fn client_timeouts_are_deadline_exceeded() {
        let e = Error::deadline_exceeded(
            tonic::Status::cancelled("Timeout expired"),
            std::time::Duration::from_secs(2),
        );
        assert_eq!(e.code(), Some(Code::DeadlineExceeded));
        assert_eq!(e.status().map(Status::code), Some(Code::Cancelled));
    }

    #[test]
    fn standard_details_come_first() {
        let mut details = ErrorDetails::with_bad_request_violation("manifest.name", "empty");
        details.set_error_info(
            "INVALID_FIELD",
            "agentry.dev",
            std::collections::HashMap::new(),
        );
        let mut status =
            tonic::Status::with_error_details(tonic::Code::InvalidArgument, "bad", details);
        status
            .metadata_mut()
            .insert(FIELD_METADATA, "old.field".parse().expect("ascii"));
        let e = Error::from(status);
        assert_eq!(e.field(), Some("manifest.name"));
        assert_eq!(e.reason().as_deref(), Some("INVALID_FIELD"));
        assert!(!e.status().expect("status").details_bin().is_empty());

        let mut details = ErrorDetails::with_retry_info(Some(Duration::from_secs(2)));
        details.set_error_info("BUSY", "agentry.dev", std::collections::HashMap::new());
        let mut status =
            tonic::Status::with_error_details(tonic::Code::Unavailable, "busy", details);
        status
            .metadata_mut()
            .insert(RETRY_PUSHBACK, "250".parse().expect("value"));
        let e = Error::from(status);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(e.reason().as_deref(), Some("BUSY"));
        assert_eq!(Error::from(tonic::Status::not_found("x")).reason(), None);
    }

    #[test]
    fn a_busy_servers_pushback_is_read() {
        let mut status = tonic::Status::unavailable("too many registrations at once");
        status
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", "250".parse().expect("value"));
        assert_eq!(
            Error::from(status).retry_after(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            Error::from(tonic::Status::unavailable("down")).retry_after(),
            None
        );
    }

    #[tokio::test]
    async fn transport_errors_tell_their_causes() {
        let refused = tonic::transport::Endpoint::from_static("http://127.0.0.1:1")
            .connect()
            .await
            .expect_err("port 1 refuses");
        let e = Error::transport(refused);
        let text = e.to_string();
        assert!(text.starts_with("transport error: "), "{text}");
        assert!(!text.contains("transport error: transport error"), "{text}");
        assert!(text.contains("refused"), "{text}");
        assert_eq!((e.code(), e.status().is_none()), (None, true));
        // The chain of sources leads down to the I/O error.
        let mut source = std::error::Error::source(&e);
        assert!(source.is_some_and(|s| s.is::<TransportError>()));
        let mut io = None;
        while let Some(s) = source {
            io = io.or(s.downcast_ref::<std::io::Error>());
            source = s.source();
        }
        assert_eq!(
            io.map(std::io::Error::kind),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
    }
}
