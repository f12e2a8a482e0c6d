//! [`Code`]: the gRPC status codes, as this crate names them.

use std::fmt;

/// The code of a gRPC status, as [`Error::code`](crate::Error::code) and
/// [`Status::code`](crate::Status::code) give it.
///
/// The variants are the codes of the gRPC specification, under the names
/// tonic and most gRPC libraries give them; [`Code::as_str`] gives the
/// specification's name (`"INVALID_ARGUMENT"`), [`Code::to_i32`] its number.
/// Non-exhaustive: should gRPC define a code after these, it would be added
/// in a minor release.
///
/// ```
/// use agentry_client::Code;
///
/// assert_eq!(Code::from_i32(5), Code::NotFound);
/// assert_eq!(Code::NotFound.to_i32(), 5);
/// assert_eq!(Code::NotFound.to_string(), "NOT_FOUND");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// `OK` (0): not an error.
    Ok,
    /// `CANCELLED` (1): the call was cancelled, typically by the caller.
    Cancelled,
    /// `UNKNOWN` (2): an error the server could not classify, or a code
    /// this crate does not know.
    Unknown,
    /// `INVALID_ARGUMENT` (3): the request was malformed.
    InvalidArgument,
    /// `DEADLINE_EXCEEDED` (4): the deadline ran out before the call finished.
    DeadlineExceeded,
    /// `NOT_FOUND` (5): the resource does not exist.
    NotFound,
    /// `ALREADY_EXISTS` (6): a resource with the same unique key exists.
    AlreadyExists,
    /// `PERMISSION_DENIED` (7): the caller may not make this call.
    PermissionDenied,
    /// `RESOURCE_EXHAUSTED` (8): a limit or quota was reached.
    ResourceExhausted,
    /// `FAILED_PRECONDITION` (9): the system is not in a state that allows the call.
    FailedPrecondition,
    /// `ABORTED` (10): the call lost a race, e.g. a concurrency conflict.
    Aborted,
    /// `OUT_OF_RANGE` (11): a value is past the valid range.
    OutOfRange,
    /// `UNIMPLEMENTED` (12): the server does not implement the call.
    Unimplemented,
    /// `INTERNAL` (13): the server broke an invariant.
    Internal,
    /// `UNAVAILABLE` (14): the service cannot be reached right now; often
    /// worth a retry with backoff.
    Unavailable,
    /// `DATA_LOSS` (15): unrecoverable data loss or corruption.
    DataLoss,
    /// `UNAUTHENTICATED` (16): the caller's credentials are missing or invalid.
    Unauthenticated,
}

impl Code {
    /// Every code, in the order of their numbers.
    const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The code numbered `value` on the wire; [`Code::Unknown`] for a number
    /// gRPC does not define (as the specification asks).
    #[must_use]
    pub fn from_i32(value: i32) -> Code {
        usize::try_from(value)
            .ok()
            .and_then(|i| Code::ALL.get(i).copied())
            .unwrap_or(Code::Unknown)
    }

    /// The code's number on the wire (`grpc-status`).
    #[must_use]
    pub fn to_i32(self) -> i32 {
        match self {
            Code::Ok => 0,
            Code::Cancelled => 1,
            Code::Unknown => 2,
            Code::InvalidArgument => 3,
            Code::DeadlineExceeded => 4,
            Code::NotFound => 5,
            Code::AlreadyExists => 6,
            Code::PermissionDenied => 7,
            Code::ResourceExhausted => 8,
            Code::FailedPrecondition => 9,
            Code::Aborted => 10,
            Code::OutOfRange => 11,
            Code::Unimplemented => 12,
            Code::Internal => 13,
            Code::Unavailable => 14,
            Code::DataLoss => 15,
            Code::Unauthenticated => 16,
        }
    }

    /// The code's name in the gRPC specification, e.g. `"NOT_FOUND"`; also
    /// what `Display` writes.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The code of a tonic status. By number, so that no code is lost
    /// should tonic name one this crate does not know yet.
    pub(crate) fn from_tonic(code: tonic::Code) -> Code {
        Code::from_i32(code as i32)
    }

    /// The same code, as tonic names it.
    pub(crate) fn to_tonic(self) -> tonic::Code {
        tonic::Code::from_i32(self.to_i32())
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<i32> for Code {
    /// As [`Code::from_i32`].
    fn from(value: i32) -> Code {
        Code::from_i32(value)
    }
}

impl From<Code> for i32 {
    /// As [`Code::to_i32`].
    fn from(code: Code) -> i32 {
        code.to_i32()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tonic_code_maps_to_the_code_of_the_same_name_and_number() {
        for n in -1..=17 {
            let tonic = tonic::Code::from_i32(n);
            let ours = Code::from_tonic(tonic);
            assert_eq!(ours.to_i32(), tonic as i32, "{tonic:?}");
            assert_eq!(format!("{ours:?}"), format!("{tonic:?}"));
            assert_eq!(ours.to_tonic(), tonic);
            assert_eq!(Code::from_i32(n), ours, "{n}");
        }
        for (n, code) in Code::ALL.into_iter().enumerate() {
            assert_eq!(usize::try_from(code.to_i32()), Ok(n));
            assert_eq!(Code::from_i32(code.to_i32()), code);
        }
        assert_eq!(Code::from_i32(99), Code::Unknown);
    }

    #[test]
    fn codes_show_their_specification_names() {
        assert_eq!(Code::InvalidArgument.to_string(), "INVALID_ARGUMENT");
        assert_eq!(Code::DeadlineExceeded.as_str(), "DEADLINE_EXCEEDED");
        assert_eq!(Code::Ok.as_str(), "OK");
        for code in Code::ALL {
            // SCREAMING_SNAKE_CASE of the variant's name.
            let snake: String = format!("{code:?}")
                .chars()
                .enumerate()
                .flat_map(|(i, c)| {
                    let sep = (i > 0 && c.is_uppercase()).then_some('_');
                    sep.into_iter().chain(c.to_uppercase())
                })
                .collect();
            assert_eq!(code.as_str(), snake);
        }
    }
}
