//! How routing weighs the instances of one configuration: their load (the
//! agent's own report while it is fresh, else its open leases), an error
//! penalty, the weighted choice among the lowest, and flap damping. Pure
//! functions of the view's state and the clock; the formula is documented
//! on RoutingService in routing.proto.
//!
//! It follows gRPC's weighted round robin (gRFC A58) where it applies: a
//! report counts only after a blackout period from the instance's first
//! one (a new instance reports idle and would draw everything), expires
//! when it is not renewed, and failures add a penalty; weights are inverse
//! load. Unlike WRR it has no request rate to weigh by, so the load is the
//! reported utilization and queue, or the leases as a share of the
//! configuration's max_workload.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};

use crate::config::RoutingConfig;
use crate::pb;

/// Load a full queue adds per waiting task, up to [`QUEUE_CAP`] tasks.
const QUEUE_WEIGHT: f64 = 0.05;
const QUEUE_CAP: u32 = 20;
/// Load each recent failure adds, up to [`FAILURE_CAP`] failures.
const FAILURE_WEIGHT: f64 = 0.1;
const FAILURE_CAP: i32 = 5;
/// Keeps weights finite for idle instances: 1 / (load + this).
const WEIGHT_FLOOR: f64 = 0.05;
/// How many of a configuration's lowest-load instances an acquire picks among.
pub const PICK_AMONG: usize = 4;

/// An instance's last load report, as routing keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reported {
    pub utilization: f64,
    pub queue_depth: u32,
    /// When it landed.
    pub at: DateTime<Utc>,
    /// When this instance's first report landed (the blackout starts there).
    pub first: DateTime<Utc>,
}

/// An instance's load and where it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// What it is ranked by, penalty included.
    pub value: f64,
    pub source: pb::LoadSource,
    /// The error penalty within `value`.
    pub penalty: f64,
    /// When the source changes by itself (a blackout ends, a report goes
    /// stale), so that the view ranks the instance again then.
    pub changes_at: Option<DateTime<Utc>>,
}

fn span(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// The load of an instance with `leases` open leases of a configuration of
/// `max_workload`, `failures` recent failures and its last report, at `now`.
pub fn load(
    reported: Option<&Reported>,
    leases: i32,
    max_workload: i32,
    failures: i32,
    now: DateTime<Utc>,
    config: &RoutingConfig,
) -> Load {
    let penalty = FAILURE_WEIGHT * f64::from(failures.clamp(0, FAILURE_CAP));
    let by_leases = f64::from(leases.max(0)) / f64::from(max_workload.max(1));
    let (value, source, changes_at) = match reported {
        None => (by_leases, pb::LoadSource::LeasesNoReport, None),
        Some(r) => {
            let stale = r.at + span(config.load_report_ttl);
            let blackout_ends = r.first + span(config.load_report_blackout);
            if now >= stale {
                (by_leases, pb::LoadSource::LeasesStaleReport, None)
            } else if now < blackout_ends {
                (
                    by_leases,
                    pb::LoadSource::LeasesBlackout,
                    Some(blackout_ends.min(stale)),
                )
            } else {
                let queue = QUEUE_WEIGHT * f64::from(r.queue_depth.min(QUEUE_CAP));
                (r.utilization + queue, pb::LoadSource::Report, Some(stale))
            }
        }
    };
    Load {
        value: value + penalty,
        source,
        penalty,
        changes_at,
    }
}

/// The load as the rank orders it: thousandths, so that equal loads tie.
pub fn cost(load: f64) -> u32 {
    (load * 1000.0).round().clamp(0.0, f64::from(u32::MAX)) as u32
}

/// An instance's weight in the choice among the lowest-load ones.
pub fn weight(load: f64) -> f64 {
    1.0 / (load.max(0.0) + WEIGHT_FLOOR)
}

/// Picks an index at random, each with probability proportional to its weight.
pub fn pick_weighted(weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut at = fastrand::f64() * total;
    for (i, w) in weights.iter().enumerate() {
        if at < *w {
            return i;
        }
        at -= w;
    }
    weights.len().saturating_sub(1)
}

/// Flap damping of one instance: its recent health changes, and a hold
/// that keeps it out of routing while it flaps.
#[derive(Debug, Clone, Default)]
pub struct Flap {
    changes: VecDeque<DateTime<Utc>>,
    /// Held out until then.
    pub held_until: Option<DateTime<Utc>>,
    /// The last hold, doubled when the instance flaps again soon after it.
    last_hold: Option<(std::time::Duration, DateTime<Utc>)>,
}

impl Flap {
    /// Notes a health change at `now`; true when it starts a hold.
    pub fn changed(&mut self, now: DateTime<Utc>, config: &RoutingConfig) -> bool {
        if config.flap_threshold == 0 {
            return false;
        }
        let window = span(config.flap_window);
        self.changes.push_back(now);
        while self.changes.front().is_some_and(|t| *t + window < now) {
            self.changes.pop_front();
        }
        if self.changes.len() <= config.flap_threshold as usize || self.held(now) {
            return false;
        }
        // Flapping again within a window of the last hold's end: hold longer.
        let hold = match self.last_hold {
            Some((last, ended)) if now < ended + window => (last * 2).min(config.flap_hold_max),
            _ => config.flap_hold,
        };
        let until = now + span(hold);
        self.held_until = Some(until);
        self.last_hold = Some((hold, until));
        self.changes.clear();
        true
    }

    /// Whether the instance is held out at `now`.
    pub fn held(&self, now: DateTime<Utc>) -> bool {
        self.held_until.is_some_and(|until| now < until)
    }

    /// Whether there is nothing left to remember.
    pub fn is_idle(&self, now: DateTime<Utc>, config: &RoutingConfig) -> bool {
        let window = span(config.flap_window);
        self.changes.back().is_none_or(|t| *t + window < now)
            && self.last_hold.is_none_or(|(_, ended)| ended + window < now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config() -> RoutingConfig {
        RoutingConfig {
            load_report_ttl: Duration::from_secs(30),
            load_report_blackout: Duration::from_secs(10),
            flap_threshold: 3,
            flap_window: Duration::from_secs(60),
            flap_hold: Duration::from_secs(30),
            flap_hold_max: Duration::from_secs(100),
        }
    }

    #[test]
    fn a_report_counts_after_its_blackout_and_until_it_is_stale() {
        let c = config();
        let t0 = Utc::now();
        let r = Reported {
            utilization: 0.8,
            queue_depth: 4,
            at: t0,
            first: t0,
        };
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        let new = load(Some(&r), 1, 10, 0, at(5), &c);
        assert_eq!(new.source, pb::LoadSource::LeasesBlackout);
        assert!((new.value - 0.1).abs() < 1e-9, "leases: 1 of 10");
        assert_eq!(new.changes_at, Some(at(10)));
        let fresh = load(Some(&r), 1, 10, 0, at(15), &c);
        assert_eq!(fresh.source, pb::LoadSource::Report);
        assert!((fresh.value - 1.0).abs() < 1e-9, "0.8 + 4 queued x 0.05");
        assert_eq!(fresh.changes_at, Some(at(30)));
        let stale = load(Some(&r), 1, 10, 2, at(31), &c);
        assert_eq!(stale.source, pb::LoadSource::LeasesStaleReport);
        assert!((stale.value - 0.3).abs() < 1e-9, "leases and two failures");
        assert_eq!(
            load(None, 0, 10, 0, t0, &c).source,
            pb::LoadSource::LeasesNoReport
        );
    }

    #[test]
    fn weights_favour_the_idle_in_proportion() {
        let weights = [weight(0.1), weight(0.9)];
        let mut picked = [0u32; 2];
        for _ in 0..10_000 {
            picked[pick_weighted(&weights)] += 1;
        }
        // 1/0.15 : 1/0.95 is about 86 % : 14 %.
        assert!((8_200..9_000).contains(&picked[0]), "{picked:?}");
    }

    #[test]
    fn flapping_is_held_out_for_a_hold_that_grows_while_it_goes_on() {
        let c = config();
        let t0 = Utc::now();
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        let mut f = Flap::default();
        for s in 0..3 {
            assert!(
                !f.changed(at(s), &c),
                "three changes are within the threshold"
            );
        }
        assert!(f.changed(at(3), &c), "the fourth holds it");
        assert!(f.held(at(32)));
        assert!(!f.held(at(34)), "30 s hold");
        for s in 40..43 {
            assert!(!f.changed(at(s), &c));
        }
        assert!(f.changed(at(43), &c), "flapping again soon after");
        assert!(f.held(at(43 + 59)), "a 60 s hold now");
        assert!(!f.held(at(43 + 61)));
        // Calm for a window: the hold starts over.
        let later = 43 + 60 + 61;
        for s in later..later + 4 {
            f.changed(at(s), &c);
        }
        assert!(f.held(at(later + 3 + 29)) && !f.held(at(later + 3 + 31)));
        let mut calm = Flap::default();
        calm.changed(t0, &c);
        assert!(calm.is_idle(at(61), &c));
    }
}
