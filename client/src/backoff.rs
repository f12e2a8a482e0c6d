//! Exponential backoff with jitter, the one the whole crate uses when it
//! tries again: the [`RetryPolicy`](crate::RetryPolicy) of calls, the agent
//! session's reconnects, the router's resubscriptions and the lease renewer.

use std::time::Duration;

/// The wait after `failures` failed attempts in a row (0 for the first
/// retry): `initial` doubled per earlier failure, capped at `max`, then
/// jittered down to as little as half, so that clients that failed together
/// do not all come back at the same instant.
pub(crate) fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let full = initial.saturating_mul(1u32 << failures.min(16)).min(max);
    let half = full / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..100 {
            let first = backoff(initial, max, 0);
            assert!(first >= initial / 2 && first <= initial);
            let third = backoff(initial, max, 2);
            assert!(third >= initial * 2 && third <= initial * 4);
            let capped = backoff(initial, max, 30);
            assert!(capped >= max / 2 && capped <= max);
        }
    }
}
