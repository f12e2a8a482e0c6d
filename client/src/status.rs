//! [`Status`]: the gRPC status a failed call ended with, in this crate's own
//! type, so that it does not change with the version of tonic.

use std::fmt;

use crate::Code;

/// The gRPC status a failed call ended with: its [`Code`], its message, the
/// response metadata, and the encoded error details.
///
/// The [`source`](std::error::Error::source) of every [`Error`](crate::Error)
/// variant made from a status. Build one with [`Status::new`] to make an
/// [`Error`](crate::Error) in tests (`Error::from(status)`).
///
/// [`Status::as_tonic`] and [`Status::into_tonic`] give the underlying
/// `tonic::Status`; they are tied to the version of tonic this crate uses and
/// are not covered by its semver.
#[derive(Clone)]
pub struct Status(Box<tonic::Status>);

impl Status {
    /// A status of `code` with `message`, e.g. to build an
    /// [`Error`](crate::Error) in a test: `Error::from(Status::new(Code::NotFound, "gone"))`.
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status::from_tonic(tonic::Status::new(code.to_tonic(), message))
    }

    pub(crate) fn from_tonic(status: tonic::Status) -> Status {
        Status(Box::new(status))
    }

    /// The status code.
    #[must_use]
    pub fn code(&self) -> Code {
        Code::from_tonic(self.0.code())
    }

    /// The message the server (or the client library, for failures on this
    /// side) gave.
    #[must_use]
    pub fn message(&self) -> &str {
        self.0.message()
    }

    /// The value of the ASCII response metadata (headers and trailers)
    /// `key`, e.g. `"x-request-id"`; `None` when absent or not valid text.
    #[must_use]
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.0.metadata().get(key)?.to_str().ok()
    }

    /// The encoded error details (`grpc-status-details-bin`, a
    /// `google.rpc.Status` message); empty when the status has none.
    /// [`Error::details`](crate::Error::details) decodes them.
    #[must_use]
    pub fn details_bin(&self) -> &[u8] {
        self.0.details()
    }

    /// The underlying `tonic::Status`.
    ///
    /// **Tied to the version of tonic this crate uses; not covered by the
    /// semver of this crate**: a release that upgrades tonic changes this
    /// type without a major version.
    #[must_use]
    pub fn as_tonic(&self) -> &tonic::Status {
        &self.0
    }

    /// The underlying `tonic::Status`, by value. Tied to the version of
    /// tonic, as [`Status::as_tonic`].
    #[must_use]
    pub fn into_tonic(self) -> tonic::Status {
        *self.0
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.message() {
            "" => write!(f, "{}", self.code()),
            message => write!(f, "{}: {message}", self.code()),
        }
    }
}

impl std::error::Error for Status {
    /// What caused the status on the client side, e.g. the I/O error of a
    /// connection that could not be made; `None` for a server's answer.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_reads_through_to_tonic() {
        let mut tonic = tonic::Status::with_details(
            tonic::Code::NotFound,
            "no such manifest",
            vec![1, 2, 3].into(),
        );
        tonic
            .metadata_mut()
            .insert("x-request-id", "r-1".parse().expect("ascii"));
        let status = Status::from_tonic(tonic);
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "no such manifest");
        assert_eq!(status.metadata("x-request-id"), Some("r-1"));
        assert_eq!(status.metadata("absent"), None);
        assert_eq!(status.details_bin(), [1, 2, 3]);
        assert_eq!(status.to_string(), "NOT_FOUND: no such manifest");
        assert_eq!(status.as_tonic().code(), tonic::Code::NotFound);
        assert_eq!(status.clone().into_tonic().message(), "no such manifest");
        assert_eq!(Status::new(Code::Aborted, "").to_string(), "ABORTED");
        assert!(std::error::Error::source(&status).is_none());
    }
}
