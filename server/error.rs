//! The server's one error type and its one mapping to `tonic::Status`.

use tonic::{Code, Status};

/// Metadata key carrying the offending field of an `INVALID_ARGUMENT`.
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
    /// Too much at once: the caller should retry after `retry_after` (sent
    /// as gRPC's `grpc-retry-pushback-ms`).
    #[error("{message}")]
    Busy {
        message: String,
        retry_after: std::time::Duration,
    },
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
                Some("agent_configurations_manifest_id_fkey") => Error::FailedPrecondition(
                    "the manifest was deleted meanwhile, or is referenced by configurations".into(),
                ),
                _ => Error::FailedPrecondition("a referenced row does not exist".into()),
            },
            (Some(sqlstate::CHECK_VIOLATION), Some("agent_configurations_workload_range")) => {
                Error::FailedPrecondition("max_workload cannot go below current_workload".into())
            }
            _ => Error::Database(err),
        }
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
            Error::Busy {
                message,
                retry_after,
            } => {
                let mut status = Status::unavailable(message);
                if let Ok(value) = retry_after.as_millis().to_string().parse() {
                    status.metadata_mut().insert(RETRY_PUSHBACK_KEY, value);
                }
                status
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_is_unavailable_with_a_retry_pushback() {
        let status = Status::from(Error::Busy {
            message: "too many at once".into(),
            retry_after: std::time::Duration::from_millis(1500),
        });
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status
                .metadata()
                .get(RETRY_PUSHBACK_KEY)
                .and_then(|v| v.to_str().ok()),
            Some("1500")
        );
    }
}
