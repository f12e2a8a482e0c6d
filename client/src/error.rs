//! The error type of every call.

use std::time::Duration;

use tonic::{Code, Status};

/// Response metadata in which the server names the offending request field.
const FIELD_METADATA: &str = "agentry-field";

/// What [`Client`](crate::Client) calls return.
pub type Result<T> = std::result::Result<T, Error>;

/// Why a call failed.
///
/// The variants that come from a gRPC status keep that [`Status`] as their
/// [`source`](std::error::Error::source) (also reachable through
/// [`Error::status`]). Match on the variants, or on [`Error::code`] for
/// codes without a variant of their own.
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
    /// The connection to the server could not be established.
    #[error("transport error: {}", chain(.0))]
    Transport(#[source] tonic::transport::Error),
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

    /// The request field the server blamed (response metadata `agentry-field`),
    /// e.g. `manifest.agent_id`. Set on [`Error::InvalidArgument`], and on other
    /// statuses whenever the server names a field.
    #[must_use]
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::InvalidArgument { field, .. } => field.as_deref(),
            other => other.status().and_then(field_of),
        }
    }

    /// How long the server asked the caller to wait before trying again
    /// (gRPC's `grpc-retry-pushback-ms`), when it was too busy to answer.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        let value = self.status()?.metadata().get("grpc-retry-pushback-ms")?;
        value.to_str().ok()?.parse().ok().map(Duration::from_millis)
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

    /// A client-side timeout: tonic reports it as `CANCELLED`, the client as
    /// `DEADLINE_EXCEEDED` (which is what gRPC specifies).
    pub(crate) fn deadline_exceeded(source: Status, timeout: std::time::Duration) -> Error {
        Error::DeadlineExceeded {
            message: format!("no response within {timeout:?}"),
            source,
        }
    }
}

impl From<Status> for Error {
    fn from(source: Status) -> Self {
        let message = source.message().to_owned();
        match source.code() {
            Code::InvalidArgument => {
                let field = field_of(&source).map(str::to_owned);
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

impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Self {
        Error::Transport(e)
    }
}

/// The `agentry-field` metadata of a status.
fn field_of(status: &Status) -> Option<&str> {
    status
        .metadata()
        .get(FIELD_METADATA)
        .and_then(|v| v.to_str().ok())
        .filter(|f| !f.is_empty())
}

/// An error and its sources, `: `-separated (tonic's transport errors say
/// little at the top level).
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

    fn with_field(code: Code, field: &str) -> Status {
        let mut status = Status::new(code, "bad");
        status
            .metadata_mut()
            .insert(FIELD_METADATA, field.parse().expect("ascii"));
        status
    }

    #[test]
    fn invalid_argument_reads_the_field() {
        let e = Error::from(with_field(Code::InvalidArgument, "manifest.agent_id"));
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
        let e = Error::from(Status::invalid_argument("bad"));
        assert_eq!(e.field(), None);
        assert_eq!(e.to_string(), "invalid argument: bad");
        let e = Error::from(with_field(Code::FailedPrecondition, "max_workload"));
        assert!(matches!(e, Error::FailedPrecondition { .. }));
        assert_eq!(e.field(), Some("max_workload"));
    }

    #[test]
    fn codes_map_to_variants() {
        for code in [
            Code::NotFound,
            Code::AlreadyExists,
            Code::FailedPrecondition,
            Code::ResourceExhausted,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::Aborted,
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Internal,
            Code::Unimplemented,
        ] {
            let e = Error::from(Status::new(code, "m"));
            assert_eq!(e.code(), Some(code));
            assert_eq!(e.status().map(Status::code), Some(code));
            assert_eq!(
                matches!(e, Error::Other { .. }),
                matches!(code, Code::Internal | Code::Unimplemented)
            );
        }
        let e = Error::InvalidConfig("x".into());
        assert_eq!(
            (e.code(), e.field(), e.status().is_none()),
            (None, None, true)
        );
    }

    #[test]
    fn client_timeouts_are_deadline_exceeded() {
        let e = Error::deadline_exceeded(
            Status::cancelled("Timeout expired"),
            std::time::Duration::from_secs(2),
        );
        assert_eq!(e.code(), Some(Code::DeadlineExceeded));
        assert_eq!(e.status().map(Status::code), Some(Code::Cancelled));
    }

    #[test]
    fn a_busy_servers_pushback_is_read() {
        let mut status = Status::unavailable("too many registrations at once");
        status
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", "250".parse().expect("value"));
        assert_eq!(
            Error::from(status).retry_after(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(Error::from(Status::unavailable("down")).retry_after(), None);
    }
}
