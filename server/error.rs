//! The server's one error type and its one mapping to `tonic::Status`.

use tonic::{Code, Status};

/// Metadata key carrying the offending field of an `INVALID_ARGUMENT`.
pub const FIELD_METADATA_KEY: &str = "agentry-field";

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
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Aborted(String),
    /// The service cannot answer now; the caller may retry.
    #[error("{0}")]
    Unavailable(String),
    #[error("database error")]
    Database(#[from] sqlx::Error),
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

    /// Whether the database could not be reached (as opposed to refusing a statement).
    pub(crate) fn is_unavailable(err: &sqlx::Error) -> bool {
        matches!(
            err,
            sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
        )
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        match err {
            Error::InvalidArgument { ref field, .. } => {
                let mut status = Status::invalid_argument(err.to_string());
                if let Ok(value) = field.parse() {
                    status.metadata_mut().insert(FIELD_METADATA_KEY, value);
                }
                status
            }
            Error::NotFound(_) => Status::not_found(err.to_string()),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::ResourceExhausted(m) => Status::resource_exhausted(m),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::Aborted(m) => Status::aborted(m),
            Error::Unavailable(m) => Status::unavailable(m),
            Error::Database(ref db) if Error::is_unavailable(db) => {
                tracing::warn!(error = %db, "database unavailable");
                Status::new(Code::Unavailable, "database unavailable, retry later")
            }
            // Raw database text never reaches the client: it is logged here.
            Error::Database(db) => {
                tracing::error!(error = %db, "database error");
                Status::internal("internal error")
            }
            Error::Migrate(e) => {
                tracing::error!(error = %e, "migration error");
                Status::internal("internal error")
            }
            Error::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
