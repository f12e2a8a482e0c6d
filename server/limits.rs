//! Limits on what one caller may take: requests per key, concurrent calls
//! and open streams per tenant, failed authentications per peer address.
//! The request rate is `governor`'s GCRA limiter; failed authentications
//! are counted in a window of a minute per address (`AuthFailures`);
//! concurrency is a tokio semaphore per tenant. The excess answers
//! `RESOURCE_EXHAUSTED` with the delay after which a retry can succeed
//! (`Error::Limited`). Streams per HTTP/2 connection are h2's own
//! `max_concurrent_streams` (set in `server.rs`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
// tokio's clock, so that tests can pause and advance it.
use tokio::time::Instant;
use uuid::Uuid;

use crate::config::LimitsConfig;
use crate::error::{Error, Result};
use crate::telemetry::metrics::limit_hit;

/// How long a concurrency refusal asks the caller to wait.
const BUSY_RETRY: Duration = Duration::from_millis(100);
/// The window failed authentications are counted in.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses whose failures are counted at once. An attacker that rotates
/// addresses gets a fresh budget with each anyway; past this many, new
/// addresses go uncounted until `shrink` forgets the windows that ended,
/// rather than the map growing with every address tried.
const TRACKED_ADDRESSES: usize = 100_000;

/// The limits of one server, shared by every service.
#[derive(Debug)]
pub struct Limits {
    per_key: Option<DefaultKeyedRateLimiter<Uuid>>,
    auth_failures: Option<AuthFailures>,
    calls: PerTenant,
    streams: PerTenant,
    clock: DefaultClock,
}

/// A unit of a per-tenant budget, given back when dropped.
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Permit {
    /// A permit of no budget (callers that are not limited).
    pub fn none() -> Self {
        Permit(None)
    }
}

/// One semaphore per tenant, of `size` permits (`None`: unlimited).
#[derive(Debug)]
struct PerTenant {
    size: Option<usize>,
    what: &'static str,
    /// The limit's name in the metrics.
    kind: &'static str,
    tenants: Mutex<HashMap<Uuid, Arc<Semaphore>>>,
}

impl PerTenant {
    fn new(size: u32, what: &'static str, kind: &'static str) -> Self {
        PerTenant {
            size: (size > 0).then_some(size as usize),
            what,
            kind,
            tenants: Mutex::default(),
        }
    }

    fn take(&self, tenant: Uuid) -> Result<Permit> {
        let Some(size) = self.size else {
            return Ok(Permit(None));
        };
        let semaphore = lock(&self.tenants)
            .entry(tenant)
            .or_insert_with(|| Arc::new(Semaphore::new(size)))
            .clone();
        semaphore
            .try_acquire_owned()
            .map(|p| Permit(Some(p)))
            .map_err(|_| {
                limit_hit(self.kind);
                Error::Limited {
                    message: format!("the tenant has {size} {} open already", self.what),
                    retry_after: BUSY_RETRY,
                }
            })
    }
}

/// Failed authentications per address, in windows of a minute that open
/// at an address's first failure. An address with `per_minute` failures in
/// its window is refused until the window ends, without a key lookup: so
/// at most `per_minute` of its keys are looked up in any window, however
/// they are spaced. (GCRA would let one through each time a drop of the
/// budget came back: twice the budget a minute, spaced right.)
#[derive(Debug)]
struct AuthFailures {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, Window>>,
}

/// One address's current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    opened: Instant,
    failures: u32,
}

impl Window {
    fn ends(&self) -> Instant {
        self.opened + FAILURE_WINDOW
    }
}

impl AuthFailures {
    fn new(per_minute: u32) -> Option<Self> {
        (per_minute > 0).then(|| AuthFailures {
            per_minute,
            windows: Mutex::default(),
        })
    }

    /// Until when `peer` is refused, if it is now.
    fn refused_until(&self, peer: IpAddr, now: Instant) -> Option<Instant> {
        let windows = lock(&self.windows);
        let window = windows.get(&peer)?;
        (window.failures >= self.per_minute && now < window.ends()).then(|| window.ends())
    }

    /// Counts a failure of `peer`; true when it reached the budget.
    fn failed(&self, peer: IpAddr, now: Instant) -> bool {
        let mut windows = lock(&self.windows);
        let tracked = windows.len();
        let window = match windows.entry(peer) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(_) if tracked >= TRACKED_ADDRESSES => {
                return false;
            }
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Window {
                opened: now,
                failures: 0,
            }),
        };
        if now >= window.ends() {
            *window = Window {
                opened: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
        window.failures == self.per_minute
    }

    /// Forgets the windows that ended.
    fn shrink(&self, now: Instant) {
        lock(&self.windows).retain(|_, w| now < w.ends());
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        lock(&self.windows).len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn quota(per_second: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_second)?;
    Some(Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate)))
}

impl Limits {
    /// Limits as configured; a zero turns its limit off.
    pub fn new(c: &LimitsConfig) -> Self {
        Limits {
            per_key: quota(c.key_requests_per_second, c.key_request_burst)
                .map(DefaultKeyedRateLimiter::hashmap),
            auth_failures: AuthFailures::new(c.auth_failures_per_minute),
            calls: PerTenant::new(c.tenant_concurrent_calls, "calls", "tenant_calls"),
            streams: PerTenant::new(c.tenant_streams, "streams", "tenant_streams"),
            clock: DefaultClock::default(),
        }
    }

    /// One request of key `key`.
    pub fn request(&self, key: Uuid) -> Result<()> {
        let Some(limiter) = &self.per_key else {
            return Ok(());
        };
        limiter.check_key(&key).map_err(|not_until| {
            limit_hit("key_rate");
            Error::Limited {
                message: "too many requests with this API key".into(),
                retry_after: not_until.wait_time_from(self.clock.now()),
            }
        })
    }

    /// A call of `tenant` in flight, until the permit drops.
    pub fn call(&self, tenant: Uuid) -> Result<Permit> {
        self.calls.take(tenant)
    }

    /// An open stream (health stream or watch) of `tenant`, until the permit drops.
    pub fn stream(&self, tenant: Uuid) -> Result<Permit> {
        self.streams.take(tenant)
    }

    /// Refuses `peer` while it is over its budget of failed authentications:
    /// until the end of the minute in which it used the budget up.
    pub fn before_authentication(&self, peer: Option<IpAddr>) -> Result<()> {
        let (Some(peer), Some(failures)) = (peer, &self.auth_failures) else {
            return Ok(());
        };
        let now = Instant::now();
        match failures.refused_until(peer, now) {
            Some(until) => {
                limit_hit("peer_auth_failures");
                Err(Error::Limited {
                    message: "too many failed authentications from this address".into(),
                    retry_after: until - now,
                })
            }
            None => Ok(()),
        }
    }

    /// Counts a failed authentication of `peer`.
    pub fn authentication_failed(&self, peer: Option<IpAddr>) {
        let (Some(peer), Some(failures)) = (peer, &self.auth_failures) else {
            return;
        };
        if failures.failed(peer, Instant::now()) {
            tracing::warn!(%peer, "too many failed authentications; refusing the address for the rest of the minute");
        }
    }

    /// Forgets idle keys and addresses, so the limiters' maps stay small.
    pub fn shrink(&self) {
        if let Some(l) = &self.per_key {
            l.retain_recent();
        }
        if let Some(f) = &self.auth_failures {
            f.shrink(Instant::now());
        }
        for tenants in [&self.calls.tenants, &self.streams.tenants] {
            // A semaphore nobody holds a permit of (or a clone) is idle.
            lock(tenants).retain(|_, s| Arc::strong_count(s) > 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LimitsConfig {
        LimitsConfig {
            key_requests_per_second: 2,
            key_request_burst: 2,
            tenant_concurrent_calls: 1,
            tenant_streams: 2,
            auth_failures_per_minute: 2,
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn a_key_past_its_burst_is_limited_with_a_retry_delay() {
        let limits = Limits::new(&config());
        let (key, other) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(limits.request(key).is_ok() && limits.request(key).is_ok());
        match limits.request(key) {
            Err(Error::Limited { retry_after, .. }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(500))
            }
            other => panic!("expected Limited, got {other:?}"),
        }
        assert!(limits.request(other).is_ok(), "keys are limited apart");
    }

    #[test]
    fn tenant_budgets_come_back_when_permits_drop() {
        let limits = Limits::new(&config());
        let tenant = Uuid::new_v4();
        let held = limits.call(tenant).expect("first call");
        assert!(matches!(limits.call(tenant), Err(Error::Limited { .. })));
        assert!(
            limits.call(Uuid::new_v4()).is_ok(),
            "other tenants are apart"
        );
        drop(held);
        assert!(limits.call(tenant).is_ok());
        let streams = [
            limits.stream(tenant).expect("1"),
            limits.stream(tenant).expect("2"),
        ];
        assert!(limits.stream(tenant).is_err());
        drop(streams);
        limits.shrink();
        assert!(limits.stream(tenant).is_ok());
    }

    const BUDGET: u32 = 120;

    fn failure_limits() -> Limits {
        Limits::new(&LimitsConfig {
            auth_failures_per_minute: BUDGET,
            ..config()
        })
    }

    /// A caller trying a bad key from `peer` every `every` for `total`:
    /// when, since its first try, it got a key looked up.
    async fn bad_keys(
        limits: &Limits,
        peer: Option<IpAddr>,
        every: Duration,
        total: Duration,
    ) -> Vec<Duration> {
        let start = Instant::now();
        let mut lookups = vec![];
        while start.elapsed() < total {
            if limits.before_authentication(peer).is_ok() {
                lookups.push(start.elapsed());
                limits.authentication_failed(peer);
            }
            // Every try, to show that forgetting leaves live windows alone.
            limits.shrink();
            tokio::time::advance(every).await;
        }
        lookups
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_that_spends_its_budget_is_refused_for_the_rest_of_the_minute() {
        let limits = failure_limits();
        let (peer, other) = (
            Some(IpAddr::from([10, 0, 0, 1])),
            Some(IpAddr::from([10, 0, 0, 2])),
        );
        let lookups = bad_keys(
            &limits,
            peer,
            Duration::from_millis(100),
            Duration::from_secs(12),
        )
        .await;
        assert_eq!(
            lookups.len(),
            BUDGET as usize,
            "every try of the budget is looked up"
        );
        // 12 s after the first failure: refused for the 48 s left of the minute.
        match limits.before_authentication(peer) {
            Err(Error::Limited { retry_after, .. }) => {
                assert_eq!(retry_after, Duration::from_secs(48))
            }
            other => panic!("expected Limited, got {other:?}"),
        }
        assert!(
            limits.before_authentication(other).is_ok(),
            "addresses are apart"
        );
        tokio::time::advance(Duration::from_secs(47)).await;
        limits.shrink();
        assert!(
            limits.before_authentication(peer).is_err(),
            "still refused a second before the minute ends"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            limits.before_authentication(peer).is_ok(),
            "admitted after the minute"
        );
        // With a budget of its own again.
        for _ in 1..BUDGET {
            limits.authentication_failed(peer);
        }
        assert!(limits.before_authentication(peer).is_ok());
        limits.authentication_failed(peer);
        assert!(limits.before_authentication(peer).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn spaced_bad_keys_never_get_more_than_the_budget_a_minute() {
        for every in [50, 250, 400, 499, 500, 700] {
            let limits = failure_limits();
            let peer = Some(IpAddr::from([10, 0, 0, 3]));
            let every = Duration::from_millis(every);
            let minutes = 10;
            let lookups = bad_keys(&limits, peer, every, Duration::from_secs(60 * minutes)).await;
            // In any minute, not just those the windows start at.
            let most = lookups
                .iter()
                .map(|&from| {
                    lookups
                        .iter()
                        .filter(|&&t| t >= from && t < from + FAILURE_WINDOW)
                        .count()
                })
                .max()
                .unwrap_or(0);
            let tries_a_minute = FAILURE_WINDOW.as_millis().div_ceil(every.as_millis()) as usize;
            assert_eq!(
                most,
                tries_a_minute.min(BUDGET as usize),
                "one try every {every:?}"
            );
            // And the budget comes back every minute: an address is not shut out.
            for minute in 0..minutes {
                let range =
                    Duration::from_secs(60 * minute)..Duration::from_secs(60 * (minute + 1));
                let got = lookups.iter().filter(|t| range.contains(t)).count();
                assert!(
                    got >= tries_a_minute.min(BUDGET as usize) / 2,
                    "minute {minute}: {got}, one try every {every:?}"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rotating_addresses_do_not_grow_the_limiter_without_bound() {
        let limits = failure_limits();
        let address = |i: u32| {
            Some(IpAddr::from(
                (0xfd00u128 << 112 | u128::from(i)).to_be_bytes(),
            ))
        };
        for i in 0..(TRACKED_ADDRESSES as u32 + 50_000) {
            limits.authentication_failed(address(i));
        }
        let failures = limits.auth_failures.as_ref().expect("limited");
        assert_eq!(failures.tracked(), TRACKED_ADDRESSES);
        // The addresses counted are still limited.
        for _ in 1..BUDGET {
            limits.authentication_failed(address(7));
        }
        assert!(limits.before_authentication(address(7)).is_err());
        tokio::time::advance(FAILURE_WINDOW).await;
        limits.shrink();
        assert_eq!(failures.tracked(), 0, "the minute's windows are forgotten");
        assert!(limits.before_authentication(address(7)).is_ok());
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let limits = Limits::new(&LimitsConfig {
            key_requests_per_second: 0,
            tenant_concurrent_calls: 0,
            ..config()
        });
        let key = Uuid::new_v4();
        assert!((0..100).all(|_| limits.request(key).is_ok()));
        let held: Vec<_> = (0..100)
            .map(|_| limits.call(key).expect("unlimited"))
            .collect();
        assert_eq!(held.len(), 100);
    }
}
