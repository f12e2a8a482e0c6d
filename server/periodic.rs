//! The rhythm of background work: a tick every interval until the server
//! stops. A tick that comes late (a slow flush, a long sweep) delays the
//! next ones instead of bunching them.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// Ticks every interval until `stopping` turns true.
#[derive(Debug)]
pub struct Ticker {
    interval: Interval,
    stopping: watch::Receiver<bool>,
}

impl Ticker {
    /// Ticks at once, then every `period`.
    pub fn now(period: Duration, stopping: watch::Receiver<bool>) -> Self {
        Ticker::at(Instant::now(), period, stopping)
    }

    /// Ticks after one `period`, then every `period`.
    pub fn after(period: Duration, stopping: watch::Receiver<bool>) -> Self {
        Ticker::at(Instant::now() + period, period, stopping)
    }

    fn at(first: Instant, period: Duration, stopping: watch::Receiver<bool>) -> Self {
        let mut interval = tokio::time::interval_at(first, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ticker { interval, stopping }
    }

    /// Waits for the next tick: `false` once the server is stopping.
    pub async fn tick(&mut self) -> bool {
        let ticked = tokio::select! {
            _ = self.interval.tick() => true,
            _ = self.stopping.wait_for(|s| *s) => false,
        };
        ticked && !self.stopping()
    }

    /// Whether the server is stopping now.
    pub fn stopping(&self) -> bool {
        *self.stopping.borrow()
    }
}
