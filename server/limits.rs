//! Limits on what one caller may take: requests per key, concurrent calls
//! and open streams per tenant, failed authentications per peer address.
//! Rates are `governor`'s GCRA limiters; concurrency is a tokio semaphore
//! per tenant. The excess answers `RESOURCE_EXHAUSTED` with the delay after
//! which a retry can succeed (`Error::Limited`). Streams per HTTP/2
//! connection are h2's own `max_concurrent_streams` (set in `server.rs`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::config::LimitsConfig;
use crate::error::{Error, Result};
use crate::telemetry::metrics::limit_hit;

/// How long a concurrency refusal asks the caller to wait.
const BUSY_RETRY: Duration = Duration::from_millis(100);

/// The limits of one server, shared by every service.
#[derive(Debug)]
pub struct Limits {
    per_key: Option<DefaultKeyedRateLimiter<Uuid>>,
    auth_failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Peers over their failure budget, refused until then without a lookup.
    penalized: Mutex<HashMap<IpAddr, Instant>>,
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
            auth_failures: NonZeroU32::new(c.auth_failures_per_minute)
                .map(|n| DefaultKeyedRateLimiter::hashmap(Quota::per_minute(n))),
            penalized: Mutex::default(),
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

    /// Refuses `peer` while it is over its budget of failed authentications.
    pub fn before_authentication(&self, peer: Option<IpAddr>) -> Result<()> {
        let Some(peer) = peer else { return Ok(()) };
        let mut penalized = lock(&self.penalized);
        match penalized.get(&peer) {
            Some(until) if *until > Instant::now() => {
                limit_hit("peer_auth_failures");
                Err(Error::Limited {
                    message: "too many failed authentications from this address".into(),
                    retry_after: until.saturating_duration_since(Instant::now()),
                })
            }
            Some(_) => {
                penalized.remove(&peer);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts a failed authentication of `peer`.
    pub fn authentication_failed(&self, peer: Option<IpAddr>) {
        let (Some(peer), Some(limiter)) = (peer, &self.auth_failures) else {
            return;
        };
        if let Err(not_until) = limiter.check_key(&peer) {
            let wait = not_until.wait_time_from(self.clock.now());
            tracing::warn!(%peer, retry_after = ?wait, "too many failed authentications; refusing the address for a while");
            lock(&self.penalized).insert(peer, Instant::now() + wait);
        }
    }

    /// Forgets idle keys and addresses, so the limiters' maps stay small.
    pub fn shrink(&self) {
        if let Some(l) = &self.per_key {
            l.retain_recent();
        }
        if let Some(l) = &self.auth_failures {
            l.retain_recent();
        }
        lock(&self.penalized).retain(|_, until| *until > Instant::now());
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

    #[test]
    fn an_address_over_its_failure_budget_is_refused_until_it_recovers() {
        let limits = Limits::new(&config());
        let peer = Some(IpAddr::from([10, 0, 0, 1]));
        for _ in 0..2 {
            limits.authentication_failed(peer);
            assert!(limits.before_authentication(peer).is_ok());
        }
        limits.authentication_failed(peer);
        assert!(matches!(
            limits.before_authentication(peer),
            Err(Error::Limited { .. })
        ));
        assert!(
            limits
                .before_authentication(Some(IpAddr::from([10, 0, 0, 2])))
                .is_ok()
        );
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
