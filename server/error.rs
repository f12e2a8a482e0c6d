//! The server's one error type and its one mapping to `tonic::Status`.
//!
//! Every status carries the standard details of `google.rpc.Status` (AIP-193)
//! in `grpc-status-details-bin`, so that a client in any language can read
//! them: an `ErrorInfo` with a stable [`reason`] in the [`ERROR_DOMAIN`]
//! always, a `BadRequest` naming the field on `INVALID_ARGUMENT`, and a
//! `RetryInfo` where waiting and retrying helps.

use std::collections::HashMap;
use std::time::Duration;

use tonic::metadata::MetadataMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every error this server sends.
pub const ERROR_DOMAIN: &str = "agentry.dev";
/// How long a caller should wait when the database is away.
pub const DATABASE_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Metadata key carrying the offending field of an `INVALID_ARGUMENT`.
/// Deprecated in favour of the `BadRequest` detail; sent for one more release.
pub const FIELD_METADATA_KEY: &str = "agentry-field";
/// gRPC's retry pushback: how long the server asks a caller to wait before
/// it tries again (gRFC A6), in milliseconds.
pub const RETRY_PUSHBACK_KEY: &str = "grpc-retry-pushback-ms";

/// Everything a request can fail with. Handlers return this; it becomes a
/// `tonic::Status` only in `From<Error> for Status`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is missing or malformed.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// The resource does not exist, or belongs to another tenant.
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The system is not in a state that allows the call; `reason` (one of
    /// [`reason`]) tells the cases apart for machines.
    #[error("{message}")]
    FailedPrecondition {
        reason: &'static str,
        message: String,
    },
    #[error("{0}")]
    ResourceExhausted(String),
    /// No agent could take the reservation: `RESOURCE_EXHAUSTED`, with the
    /// configurations left out counted per reason in the ErrorInfo metadata.
    #[error("{message}")]
    NoCapacity {
        message: String,
        excluded: Vec<(String, usize)>,
    },
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Aborted(String),
    /// The service cannot answer now; the caller may retry.
    #[error("{0}")]
    Unavailable(String),
    /// The caller's deadline ran out, or a step the server waits for (a
    /// stream's `Hello`) did not come in time.
    #[error("{0}")]
    DeadlineExceeded(&'static str),
    /// Too much at once: the caller should retry after `retry_after` (sent
    /// as `RetryInfo` and as gRPC's `grpc-retry-pushback-ms`).
    #[error("{message}")]
    Busy {
        message: String,
        retry_after: Duration,
    },
    /// Over a limit (`crate::limits`): `RESOURCE_EXHAUSTED`, and the caller
    /// may retry after `retry_after` (RetryInfo, and `grpc-retry-pushback-ms`).
    #[error("{message}")]
    Limited {
        message: String,
        retry_after: Duration,
    },
    /// The database cannot be reached (for callers that no longer hold the
    /// `sqlx::Error`, such as the batch writers' waiters).
    #[error("database unavailable, retry later")]
    DatabaseUnavailable,
    /// A database failure that is not the caller's doing (see `From<sqlx::Error>`).
    #[error("database error")]
    Database(sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Internal(String),
}

/// Result with the server's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An `INVALID_ARGUMENT` naming `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A `FAILED_PRECONDITION` with `reason`, one of [`reason`].
    pub fn precondition(reason: &'static str, message: impl Into<String>) -> Self {
        Error::FailedPrecondition {
            reason,
            message: message.into(),
        }
    }

    /// The gRPC code the error is sent with.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition { .. } => Code::FailedPrecondition,
            Error::ResourceExhausted(_) | Error::NoCapacity { .. } | Error::Limited { .. } => {
                Code::ResourceExhausted
            }
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Aborted(_) => Code::Aborted,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Unavailable(_) | Error::Busy { .. } | Error::DatabaseUnavailable => {
                Code::Unavailable
            }
            Error::Database(db) if Error::is_unavailable(db) => Code::Unavailable,
            Error::Database(_) | Error::Migrate(_) | Error::Internal(_) => Code::Internal,
        }
    }

    /// The machine-readable `ErrorInfo.reason` (one of [`reason`]): stable
    /// across releases, unlike the message.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidArgument { .. } => reason::INVALID_FIELD,
            Error::NotFound(_) => reason::NOT_FOUND,
            Error::AlreadyExists(_) => reason::ALREADY_EXISTS,
            Error::FailedPrecondition { reason, .. } => reason,
            Error::ResourceExhausted(_) | Error::NoCapacity { .. } => reason::RESOURCE_EXHAUSTED,
            Error::Limited { .. } => reason::RATE_LIMITED,
            Error::Unauthenticated(_) => reason::UNAUTHENTICATED,
            Error::PermissionDenied(_) => reason::PERMISSION_DENIED,
            Error::Aborted(_) => reason::ABORTED,
            Error::DeadlineExceeded(_) => reason::DEADLINE_EXCEEDED,
            Error::Unavailable(_) => reason::UNAVAILABLE,
            Error::Busy { .. } => reason::BUSY,
            Error::DatabaseUnavailable => reason::DATABASE_UNAVAILABLE,
            Error::Database(db) if Error::is_unavailable(db) => reason::DATABASE_UNAVAILABLE,
            Error::Database(_) | Error::Migrate(_) | Error::Internal(_) => reason::INTERNAL,
        }
    }

    /// Whether the database could not be reached, handshaken with or kept
    /// (as opposed to refusing a statement): the caller may retry.
    pub(crate) fn is_unavailable(err: &sqlx::Error) -> bool {
        match err {
            // sqlx reports a conversation that broke off or went out of step
            // as a protocol error: most often a fresh connection that a proxy
            // or load balancer accepted and then closed (the missing answer
            // to the SSLRequest reads as the byte 0x00). The connection's
            // fault, not the statement's: this server's statements bind few
            // parameters (arrays for batches) and decode their own answers'
            // faults as `Decode`, so no statement fails this way every time.
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db
                .code()
                .is_some_and(|code| sqlstate::is_connection_lost(&code)),
            _ => false,
        }
    }
}

/// The `ErrorInfo.reason`s this server sends (README, "Errors"). A reason,
/// once sent, keeps its meaning; new cases get new reasons.
pub mod reason {
    /// `INVALID_ARGUMENT`: a request field is missing or malformed; the
    /// `BadRequest` detail and the metadata key `field` name it.
    pub const INVALID_FIELD: &str = "INVALID_FIELD";
    /// `NOT_FOUND`; metadata `resource` says of what kind.
    pub const NOT_FOUND: &str = "NOT_FOUND";
    /// `ALREADY_EXISTS`: a unique name or key is taken.
    pub const ALREADY_EXISTS: &str = "ALREADY_EXISTS";
    /// `FAILED_PRECONDITION` without a finer reason.
    pub const FAILED_PRECONDITION: &str = "FAILED_PRECONDITION";
    /// `FAILED_PRECONDITION`: the lease expired before it was renewed.
    pub const LEASE_EXPIRED: &str = "LEASE_EXPIRED";
    /// `FAILED_PRECONDITION`: the lease was released already.
    pub const LEASE_RELEASED: &str = "LEASE_RELEASED";
    /// `FAILED_PRECONDITION`: the registration is inactive; register again.
    pub const REGISTRATION_INACTIVE: &str = "REGISTRATION_INACTIVE";
    /// `FAILED_PRECONDITION`: configurations still reference the manifest.
    pub const MANIFEST_IN_USE: &str = "MANIFEST_IN_USE";
    /// `FAILED_PRECONDITION`: an import would change a version already
    /// imported, or go back to a lower one.
    pub const VERSION_PUBLISHED: &str = "VERSION_PUBLISHED";
    /// `FAILED_PRECONDITION`: a workload change would go below zero, or a
    /// `max_workload` below the current workload.
    pub const WORKLOAD_OUT_OF_RANGE: &str = "WORKLOAD_OUT_OF_RANGE";
    /// `FAILED_PRECONDITION`: a row the request refers to was deleted
    /// meanwhile.
    pub const REFERENCE_GONE: &str = "REFERENCE_GONE";
    /// `RESOURCE_EXHAUSTED`: a limit was reached, e.g. `max_workload`.
    pub const RESOURCE_EXHAUSTED: &str = "RESOURCE_EXHAUSTED";
    /// `UNAUTHENTICATED`: the API key is missing, malformed, unknown or revoked.
    pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
    /// `RESOURCE_EXHAUSTED`: over a limit of the caller's key, tenant or
    /// address (README, "Limits"); `RetryInfo` says when to try again.
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    /// `PERMISSION_DENIED`: the key's role may not do this.
    pub const PERMISSION_DENIED: &str = "PERMISSION_DENIED";
    /// `ABORTED`: the call lost a race, e.g. against a newer epoch.
    pub const ABORTED: &str = "ABORTED";
    /// `DEADLINE_EXCEEDED`: the caller's deadline ran out, or a health
    /// stream sent no `Hello` within the hello timeout.
    pub const DEADLINE_EXCEEDED: &str = "DEADLINE_EXCEEDED";
    /// `UNAVAILABLE`, e.g. the server is shutting down: retry, on another
    /// replica if there is one.
    pub const UNAVAILABLE: &str = "UNAVAILABLE";
    /// `UNAVAILABLE`: too much at once; `RetryInfo` says how long to wait.
    pub const BUSY: &str = "BUSY";
    /// `UNAVAILABLE`: the database cannot be reached; `RetryInfo` says how
    /// long to wait.
    pub const DATABASE_UNAVAILABLE: &str = "DATABASE_UNAVAILABLE";
    /// `INTERNAL`: the server's fault; the message says nothing more.
    pub const INTERNAL: &str = "INTERNAL";
}

/// SQLSTATE codes the server tells apart (PostgreSQL, Appendix A).
pub mod sqlstate {
    /// `unique_violation`.
    pub const UNIQUE_VIOLATION: &str = "23505";
    /// `foreign_key_violation`.
    pub const FOREIGN_KEY_VIOLATION: &str = "23503";
    /// `check_violation`.
    pub const CHECK_VIOLATION: &str = "23514";
    /// `deadlock_detected`.
    pub const DEADLOCK_DETECTED: &str = "40P01";
    /// `serialization_failure`.
    pub const SERIALIZATION_FAILURE: &str = "40001";

    /// Whether `code` says the session was lost or could not be had:
    /// class 08 (connection exception, also what poolers send when they
    /// lose their server), the server shutting down or starting
    /// (`admin_shutdown`, `crash_shutdown`, `cannot_connect_now`), or no
    /// connection slot left (`too_many_connections`).
    pub(crate) fn is_connection_lost(code: &str) -> bool {
        code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
    }
}

/// Every database error becomes a domain error here, so that no call site
/// can forget: by SQLSTATE first, then by constraint for the precise message.
/// Never by message text, which follows the server's `lc_messages`.
impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Error {
        let Some(db) = err.as_database_error() else {
            return Error::Database(err);
        };
        let code = db.code();
        match (code.as_deref(), db.constraint()) {
            (Some(sqlstate::UNIQUE_VIOLATION), constraint) => Error::AlreadyExists(
                match constraint {
                    Some("agent_manifests_agent_id_key") => {
                        "a manifest with this agent_id already exists"
                    }
                    Some("agent_configurations_tenant_manifest_key") => {
                        "the tenant already has a configuration for this manifest"
                    }
                    Some("tenants_name_key") => "a tenant with this name already exists",
                    _ => "it already exists",
                }
                .into(),
            ),
            (Some(sqlstate::FOREIGN_KEY_VIOLATION), constraint) => match constraint {
                Some("api_keys_tenant_id_fkey" | "agent_configurations_tenant_id_fkey") => {
                    Error::NotFound("tenant".into())
                }
                // A delete of a referenced manifest is refused before it
                // reaches the constraint (manifests::store::delete); here it
                // lost a race in one direction or the other.
                Some("agent_configurations_manifest_id_fkey") => Error::precondition(
                    reason::REFERENCE_GONE,
                    "the manifest was deleted meanwhile, or is referenced by configurations",
                ),
                _ => Error::precondition(reason::REFERENCE_GONE, "a referenced row does not exist"),
            },
            (Some(sqlstate::CHECK_VIOLATION), Some("agent_configurations_workload_range")) => {
                Error::precondition(
                    reason::WORKLOAD_OUT_OF_RANGE,
                    "max_workload cannot go below current_workload",
                )
            }
            _ => Error::Database(err),
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let code = err.code();
        let reason = err.reason();
        let mut details = ErrorDetails::new();
        let mut metadata = MetadataMap::new();
        let mut info = HashMap::new();
        // Server-side failures are logged here with their text and sent
        // generic: raw database text and internal messages never leave.
        let message = match &err {
            Error::InvalidArgument {
                field,
                reason: description,
            } => {
                details.add_bad_request_violation(field.as_str(), description.as_str());
                info.insert("field".to_owned(), field.clone());
                // Deprecated, kept for one release: clients that predate
                // the BadRequest detail read the field from here.
                if let Ok(value) = field.parse() {
                    metadata.insert(FIELD_METADATA_KEY, value);
                }
                err.to_string()
            }
            Error::NotFound(resource) => {
                info.insert("resource".to_owned(), resource.clone());
                err.to_string()
            }
            Error::Busy { retry_after, .. } => {
                details.set_retry_info(Some(*retry_after));
                // AgentSession of SDKs before the RetryInfo detail reads this.
                if let Ok(value) = retry_after.as_millis().to_string().parse() {
                    metadata.insert(RETRY_PUSHBACK_KEY, value);
                }
                err.to_string()
            }
            Error::Limited { retry_after, .. } => {
                details.set_retry_info(Some(*retry_after));
                if let Ok(value) = retry_after.as_millis().max(1).to_string().parse() {
                    metadata.insert(RETRY_PUSHBACK_KEY, value);
                }
                err.to_string()
            }
            Error::NoCapacity { excluded, .. } => {
                for (why, count) in excluded {
                    info.insert(why.clone(), count.to_string());
                }
                err.to_string()
            }
            Error::DatabaseUnavailable => {
                details.set_retry_info(Some(DATABASE_RETRY_DELAY));
                err.to_string()
            }
            Error::Database(db) if Error::is_unavailable(db) => {
                tracing::warn!(error = %db, "database unavailable");
                details.set_retry_info(Some(DATABASE_RETRY_DELAY));
                Error::DatabaseUnavailable.to_string()
            }
            Error::Database(db) => {
                tracing::error!(error = %db, "database error");
                "internal error".to_owned()
            }
            Error::Migrate(e) => {
                tracing::error!(error = %e, "migration error");
                "internal error".to_owned()
            }
            Error::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        details.set_error_info(reason, ERROR_DOMAIN, info);
        Status::with_error_details_and_metadata(code, message, details, metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details(err: Error) -> (Status, ErrorDetails) {
        let status = Status::from(err);
        let details = status.check_error_details().expect("decodable details");
        (status, details)
    }

    fn info(details: &ErrorDetails) -> &tonic_types::ErrorInfo {
        details.error_info().expect("every error has an ErrorInfo")
    }

    #[test]
    fn invalid_argument_names_the_field_in_bad_request_and_error_info() {
        let (status, d) = details(Error::invalid("manifest.agent_id", "must be a slug"));
        assert_eq!(status.code(), Code::InvalidArgument);
        let violations = &d.bad_request().expect("BadRequest").field_violations;
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "manifest.agent_id");
        assert_eq!(violations[0].description, "must be a slug");
        let info = info(&d);
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("INVALID_FIELD", ERROR_DOMAIN)
        );
        assert_eq!(info.metadata["field"], "manifest.agent_id");
        assert_eq!(
            status
                .metadata()
                .get(FIELD_METADATA_KEY)
                .and_then(|v| v.to_str().ok()),
            Some("manifest.agent_id"),
            "the deprecated metadata stays for one release"
        );
        assert!(d.retry_info().is_none());
    }

    #[test]
    fn not_found_names_the_resource() {
        let (status, d) = details(Error::NotFound("configuration".into()));
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(info(&d).reason, "NOT_FOUND");
        assert_eq!(info(&d).metadata["resource"], "configuration");
        assert!(d.bad_request().is_none());
    }

    #[test]
    fn busy_is_unavailable_with_retry_info_and_a_retry_pushback() {
        let (status, d) = details(Error::Busy {
            message: "too many at once".into(),
            retry_after: Duration::from_millis(1500),
        });
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(info(&d).reason, "BUSY");
        assert_eq!(
            d.retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            status
                .metadata()
                .get(RETRY_PUSHBACK_KEY)
                .and_then(|v| v.to_str().ok()),
            Some("1500")
        );
    }

    #[test]
    fn an_unreachable_database_asks_for_a_retry() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        for err in [
            Error::Database(sqlx::Error::PoolTimedOut),
            Error::Database(sqlx::Error::PoolClosed),
            Error::Database(sqlx::Error::WorkerCrashed),
            Error::Database(sqlx::Error::Io(reset)),
            Error::Database(sqlx::Error::Tls("handshake eof".into())),
            // What sqlx says of a fresh connection reset after its SSLRequest.
            Error::Database(sqlx::Error::Protocol(
                "unexpected response from SSLRequest: 0x00".into(),
            )),
            Error::DatabaseUnavailable,
        ] {
            let (status, d) = details(err);
            assert_eq!(status.code(), Code::Unavailable);
            assert_eq!(status.message(), "database unavailable, retry later");
            assert_eq!(info(&d).reason, "DATABASE_UNAVAILABLE");
            assert_eq!(
                d.retry_info().and_then(|r| r.retry_delay),
                Some(DATABASE_RETRY_DELAY)
            );
        }
    }

    #[test]
    fn internal_errors_say_nothing_of_their_cause() {
        let (status, d) = details(Error::Internal("secret table agk_x_y broke".into()));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
        assert_eq!(info(&d).reason, "INTERNAL");
        assert!(info(&d).metadata.is_empty());
        for err in [
            sqlx::Error::RowNotFound,
            sqlx::Error::Decode("lease batch: no kind".into()),
        ] {
            let (status, d) = details(Error::Database(err));
            assert_eq!(
                (status.code(), status.message(), info(&d).reason.as_str()),
                (Code::Internal, "internal error", "INTERNAL")
            );
        }
    }

    #[test]
    fn lost_sessions_are_told_apart_by_sqlstate() {
        // connection_failure, protocol_violation (PgBouncer's "server conn
        // crashed?"), admin_shutdown, cannot_connect_now, too_many_connections.
        for code in ["08006", "08P01", "57P01", "57P03", "53300"] {
            assert!(sqlstate::is_connection_lost(code), "{code}");
        }
        for code in [
            sqlstate::UNIQUE_VIOLATION,
            sqlstate::DEADLOCK_DETECTED,
            "57014", // query_canceled: a statement timeout, not a lost session
            "42P05", // duplicate_prepared_statement
        ] {
            assert!(!sqlstate::is_connection_lost(code), "{code}");
        }
    }

    #[test]
    fn every_code_has_its_reason() {
        let cases = [
            (
                Error::AlreadyExists("x".into()),
                Code::AlreadyExists,
                "ALREADY_EXISTS",
            ),
            (
                Error::precondition(reason::LEASE_EXPIRED, "the lease has expired"),
                Code::FailedPrecondition,
                "LEASE_EXPIRED",
            ),
            (
                Error::ResourceExhausted("x".into()),
                Code::ResourceExhausted,
                "RESOURCE_EXHAUSTED",
            ),
            (
                Error::Unauthenticated("x"),
                Code::Unauthenticated,
                "UNAUTHENTICATED",
            ),
            (
                Error::PermissionDenied("x".into()),
                Code::PermissionDenied,
                "PERMISSION_DENIED",
            ),
            (Error::Aborted("x".into()), Code::Aborted, "ABORTED"),
            (
                Error::DeadlineExceeded("x"),
                Code::DeadlineExceeded,
                "DEADLINE_EXCEEDED",
            ),
            (
                Error::Unavailable("x".into()),
                Code::Unavailable,
                "UNAVAILABLE",
            ),
        ];
        for (err, code, reason) in cases {
            let message = err.to_string();
            let (status, d) = details(err);
            assert_eq!((status.code(), status.message()), (code, message.as_str()));
            assert_eq!(info(&d).reason, reason);
            assert_eq!(info(&d).domain, ERROR_DOMAIN);
            assert!(
                d.bad_request().is_none() && d.retry_info().is_none(),
                "{reason}"
            );
        }
    }
}
