//! [`RetryPolicy`]: which failed calls the [`Client`](crate::Client) makes
//! again, how often, and how long it waits in between.

use std::time::Duration;

use crate::Code;
use crate::backoff::backoff;
use crate::error::Error;

/// The `ErrorInfo` reason of a call turned away by a rate limit.
const RATE_LIMITED: &str = "RATE_LIMITED";

/// Attempts of a call, the first included, by default.
const DEFAULT_ATTEMPTS: u32 = 3;
const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A server asking for a longer pause than this is not waited for.
const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Which failed calls a [`Client`](crate::Client) makes again; set with
/// [`ClientBuilder::retry_policy`](crate::ClientBuilder::retry_policy) or
/// per call with [`Client::with_retry_policy`](crate::Client::with_retry_policy).
///
/// Only calls that are safe to repeat are ever retried, whatever the policy:
///
/// | Retried | Why a repeat is safe |
/// |---|---|
/// | `get_*`, `list_*`, `get_available_agents`, `get_agent_metrics` | they read |
/// | `acquire_agent` | the client names each reservation with a request id (AIP-155): a repeat answers the lease the first attempt granted |
/// | `release_agent` | a lease is released once; a repeat answers `false` |
/// | `renew_lease` | it sets the expiry to now + ttl; a repeat moves it a moment further |
/// | `register_instance` | keyed by the instance id: a repeat updates the same registration |
/// | `update_health`, `deactivate_registration`, `drain_registration` | they set a state; a repeat sets the same one |
/// | `update_manifest`, `update_configuration` | they set fields to the given values |
/// | `revoke_api_key` | a revoked key stays revoked |
/// | `cleanup` | a sweep; a second one finds what is left |
///
/// Never retried, since a lost answer may hide a change that a repeat would
/// apply again: `create_*` (a repeat may answer `ALREADY_EXISTS`, or make a
/// second API key), `delete_*`, and `update_workload` (a delta).
///
/// A call is made again when it failed with one of the policy's codes
/// (default: `UNAVAILABLE`), or was turned away by a rate limit
/// (`RESOURCE_EXHAUSTED` with reason `RATE_LIMITED`), until the attempts run
/// out. The wait before each attempt is exponential backoff with jitter, but
/// at least what the server asked for in `RetryInfo` (or
/// `grpc-retry-pushback-ms`); a server asking for more than
/// [`RetryPolicy::max_retry_after`] gets its error passed on at once.
/// Each attempt has the call's full deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    max_retry_after: Duration,
    codes: Vec<Code>,
    rate_limited: bool,
}

impl Default for RetryPolicy {
    /// Three attempts, backoff from 100 ms up to 2 s, on `UNAVAILABLE` and
    /// rate limits, waiting for server hints of up to 10 s.
    fn default() -> Self {
        RetryPolicy {
            attempts: DEFAULT_ATTEMPTS,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            codes: vec![Code::Unavailable],
            rate_limited: true,
        }
    }
}

impl RetryPolicy {
    /// The default policy; see [`RetryPolicy::default`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Every call is made once.
    pub fn never() -> Self {
        RetryPolicy {
            attempts: 1,
            ..Self::default()
        }
    }

    /// At most `attempts` attempts of a call, the first included (at least 1).
    #[must_use]
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Waits `initial` before the first retry, doubling per further one up
    /// to `max`, each jittered down to as little as half.
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// The codes after which a call is made again (default: `UNAVAILABLE`).
    /// `DEADLINE_EXCEEDED` is a choice to make knowingly: each attempt has
    /// the full deadline, so a slow server is then waited for several times.
    #[must_use]
    pub fn codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.codes = codes.into_iter().collect();
        self
    }

    /// Whether a call turned away by a rate limit is made again after the
    /// pause the server asks for (default: yes).
    #[must_use]
    pub fn rate_limited(mut self, retry: bool) -> Self {
        self.rate_limited = retry;
        self
    }

    /// The longest pause a server may ask for and still be waited for
    /// (default 10 s).
    #[must_use]
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// The pause before attempt `failed + 1` after `error` ended attempt
    /// `failed` (1-based), or `None` when the call should fail with it.
    pub(crate) fn pause(&self, failed: u32, error: &Error) -> Option<Duration> {
        if failed >= self.attempts {
            return None;
        }
        let code = error.code()?;
        let limited =
            code == Code::ResourceExhausted && error.reason().as_deref() == Some(RATE_LIMITED);
        if !(self.codes.contains(&code) || (limited && self.rate_limited)) {
            return None;
        }
        let asked = error.retry_after().unwrap_or_default();
        if asked > self.max_retry_after {
            return None;
        }
        Some(backoff(self.initial_backoff, self.max_backoff, failed - 1).max(asked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    #[test]
    fn only_the_policys_codes_and_rate_limits_are_retried() {
        let policy = RetryPolicy::new().attempts(3);
        let unavailable = Error::from(Status::unavailable("down"));
        assert!(policy.pause(1, &unavailable).is_some());
        assert!(policy.pause(2, &unavailable).is_some());
        assert_eq!(policy.pause(3, &unavailable), None, "attempts ran out");
        assert_eq!(policy.pause(1, &Error::from(Status::internal("x"))), None);
        assert_eq!(
            policy.pause(1, &Error::from(Status::resource_exhausted("full"))),
            None,
            "a full configuration is not a rate limit"
        );
        assert_eq!(RetryPolicy::never().pause(1, &unavailable), None);
        let slow = RetryPolicy::new().codes([Code::DeadlineExceeded]);
        assert!(
            slow.pause(1, &Error::from(Status::deadline_exceeded("x")))
                .is_some()
        );
        assert_eq!(slow.pause(1, &unavailable), None);
    }

    #[test]
    fn the_servers_pause_is_honoured_up_to_the_cap() {
        let asking = |ms: u64| {
            let mut status = Status::unavailable("busy");
            status.metadata_mut().insert(
                "grpc-retry-pushback-ms",
                ms.to_string().parse().expect("ascii"),
            );
            Error::from(status)
        };
        let policy = RetryPolicy::new().backoff(Duration::from_millis(1), Duration::from_millis(2));
        let pause = policy.pause(1, &asking(700)).expect("retried");
        assert!(pause >= Duration::from_millis(700), "{pause:?}");
        assert_eq!(
            policy.pause(1, &asking(60_000)),
            None,
            "longer than max_retry_after"
        );
    }
}
