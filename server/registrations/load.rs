//! Agents' load reports (`Heartbeat.load`): the checked report, and which
//! of a stream's reports are worth passing on to routing.
//!
//! Every heartbeat may carry a report, but routing on every replica hears of
//! one only through the load writer (`load_writer.rs`) and the change feed.
//! So a stream passes a report on only when it differs meaningfully from the
//! last one it passed on, or when that one is getting old (a third of the
//! TTL routing keeps a report for): 10,000 agents that report every second
//! cost something only when their load moves.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::pb;

/// Named metrics one report carries at most.
pub const MAX_METRICS: usize = 8;
/// Largest `in_flight` or `queue_depth`.
const MAX_COUNT: u32 = 1_000_000;
/// A change of utilization that is passed on.
const UTILIZATION_STEP: f64 = 0.05;
/// A relative change of a count or a metric that is passed on.
const RELATIVE_STEP: f64 = 0.10;

/// A checked load report.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    pub in_flight: u32,
    pub queue_depth: u32,
    /// 0 to 1.
    pub utilization: f64,
    pub metrics: BTreeMap<String, f64>,
}

impl TryFrom<pb::LoadReport> for Load {
    type Error = Error;
    fn try_from(r: pb::LoadReport) -> Result<Self> {
        if !(0.0..=1.0).contains(&r.utilization) {
            return Err(Error::invalid(
                "heartbeat.load.utilization",
                "must be a number from 0 to 1",
            ));
        }
        for (field, value) in [
            ("heartbeat.load.in_flight", r.in_flight),
            ("heartbeat.load.queue_depth", r.queue_depth),
        ] {
            if value > MAX_COUNT {
                return Err(Error::invalid(
                    field,
                    format!("must be at most {MAX_COUNT}"),
                ));
            }
        }
        if r.metrics.len() > MAX_METRICS {
            return Err(Error::invalid(
                "heartbeat.load.metrics",
                format!("at most {MAX_METRICS} metrics"),
            ));
        }
        for (name, value) in &r.metrics {
            let valid_name = (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !valid_name {
                return Err(Error::invalid(
                    "heartbeat.load.metrics",
                    "metric names are 1 to 64 characters of A-Z, a-z, 0-9, _ . -",
                ));
            }
            if !value.is_finite() {
                return Err(Error::invalid(
                    format!("heartbeat.load.metrics[{name}]"),
                    "must be a finite number",
                ));
            }
        }
        Ok(Load {
            in_flight: r.in_flight,
            queue_depth: r.queue_depth,
            utilization: r.utilization,
            metrics: r.metrics.into_iter().collect(),
        })
    }
}

impl From<&Load> for pb::LoadReport {
    fn from(l: &Load) -> Self {
        pb::LoadReport {
            in_flight: l.in_flight,
            queue_depth: l.queue_depth,
            utilization: l.utilization,
            metrics: l.metrics.clone().into_iter().collect(),
        }
    }
}

/// Whether `a` and `b` differ by more than a count's noise.
fn count_moved(a: u32, b: u32) -> bool {
    let (a, b) = (f64::from(a), f64::from(b));
    (a - b).abs() >= 1.0_f64.max(RELATIVE_STEP * a.max(b))
}

impl Load {
    /// Whether routing should hear of `self` after `passed` was passed on.
    fn moved_from(&self, passed: &Load) -> bool {
        (self.utilization - passed.utilization).abs() >= UTILIZATION_STEP
            || count_moved(self.in_flight, passed.in_flight)
            || count_moved(self.queue_depth, passed.queue_depth)
            || self.metrics.len() != passed.metrics.len()
            || self.metrics.iter().any(|(name, value)| {
                passed.metrics.get(name).is_none_or(|old| {
                    (value - old).abs() > RELATIVE_STEP * value.abs().max(old.abs())
                })
            })
    }
}

/// What a stream passes on to the load writer.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadChange {
    Set(Load),
    /// The agent stopped reporting: routing goes back to the leases.
    Clear,
}

/// What one stream last passed on.
#[derive(Debug, Default)]
pub struct Passing {
    last: Option<(Load, Instant)>,
    /// When the stream passed on the first report of its current run of
    /// reports (routing's blackout starts there).
    first: Option<chrono::DateTime<chrono::Utc>>,
}

impl Passing {
    /// The change to pass on for a heartbeat that carried `report`, if any;
    /// `refresh` is how old a passed-on report may get before it is passed
    /// on again unchanged.
    pub fn take(
        &mut self,
        report: Option<Load>,
        now: Instant,
        refresh: Duration,
    ) -> Option<LoadChange> {
        match (report, &self.last) {
            (None, None) => None,
            (None, Some(_)) => {
                self.last = None;
                self.first = None;
                Some(LoadChange::Clear)
            }
            (Some(load), Some((passed, at)))
                if !load.moved_from(passed) && now.duration_since(*at) < refresh =>
            {
                None
            }
            (Some(load), _) => {
                self.last = Some((load.clone(), now));
                self.first.get_or_insert_with(chrono::Utc::now);
                Some(LoadChange::Set(load))
            }
        }
    }

    /// When the first report of the current run was passed on.
    pub fn first(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(utilization: f64, in_flight: u32) -> Load {
        Load {
            in_flight,
            queue_depth: 0,
            utilization,
            metrics: BTreeMap::new(),
        }
    }

    #[test]
    fn only_meaningful_changes_and_refreshes_are_passed_on() {
        let refresh = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut p = Passing::default();
        assert_eq!(
            p.take(None, t0, refresh),
            None,
            "nothing reported, nothing passed"
        );
        assert!(matches!(
            p.take(Some(load(0.5, 10)), t0, refresh),
            Some(LoadChange::Set(_))
        ));
        assert_eq!(p.take(Some(load(0.52, 10)), t0, refresh), None, "noise");
        assert_eq!(p.take(Some(load(0.5, 10)), t0, refresh), None);
        assert!(
            p.take(Some(load(0.56, 10)), t0, refresh).is_some(),
            "utilization moved 0.06"
        );
        assert!(
            p.take(Some(load(0.56, 12)), t0, refresh).is_some(),
            "in_flight moved 20 %"
        );
        assert_eq!(
            p.take(Some(load(0.56, 12)), t0 + Duration::from_secs(9), refresh),
            None
        );
        assert!(
            p.take(Some(load(0.56, 12)), t0 + Duration::from_secs(11), refresh)
                .is_some(),
            "refreshed before it goes stale"
        );
        assert_eq!(p.take(None, t0, refresh), Some(LoadChange::Clear));
        assert_eq!(p.take(None, t0, refresh), None);
    }

    #[test]
    fn bad_reports_name_their_field() {
        let field = |r: pb::LoadReport| match Load::try_from(r) {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let base = pb::LoadReport::default();
        for u in [f64::NAN, -0.1, 1.01, f64::INFINITY] {
            assert_eq!(
                field(pb::LoadReport {
                    utilization: u,
                    ..base.clone()
                }),
                "heartbeat.load.utilization"
            );
        }
        assert_eq!(
            field(pb::LoadReport {
                queue_depth: 2_000_000,
                ..base.clone()
            }),
            "heartbeat.load.queue_depth"
        );
        let nan = pb::LoadReport {
            metrics: [("tokens".to_owned(), f64::NAN)].into(),
            ..base.clone()
        };
        assert_eq!(field(nan), "heartbeat.load.metrics[tokens]");
        let many = pb::LoadReport {
            metrics: (0..9).map(|i| (format!("m{i}"), 1.0)).collect(),
            ..base.clone()
        };
        assert_eq!(field(many), "heartbeat.load.metrics");
        let bad_name = pb::LoadReport {
            metrics: [("a b".to_owned(), 1.0)].into(),
            ..base
        };
        assert_eq!(field(bad_name), "heartbeat.load.metrics");
    }
}
