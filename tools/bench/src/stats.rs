//! What a run measured and how it is reported: each call's outcome
//! ([`Done`]), the latencies collected by the load driver ([`Run`]), and the
//! count, per-second and p50/p99 lines the modes print. Shared so that all
//! modes report them the same way.

use std::time::Duration;

/// What one caller's call came to.
pub(crate) enum Done {
    /// Served.
    Ok,
    /// Refused with RESOURCE_EXHAUSTED (counted, not an error).
    Exhausted,
}

/// Latencies (µs) of the served calls, and how many were refused as exhausted.
#[derive(Default)]
pub(crate) struct Run {
    pub(crate) latencies: Vec<u32>,
    pub(crate) exhausted: u64,
    pub(crate) elapsed: f64,
}

impl Run {
    pub(crate) fn add(&mut self, done: Done, latency: Duration) {
        match done {
            Done::Ok => self.latencies.push(micros(latency)),
            Done::Exhausted => self.exhausted += 1,
        }
    }

    pub(crate) fn merge(&mut self, other: Run) {
        self.latencies.extend(other.latencies);
        self.exhausted += other.exhausted;
    }
}

/// A latency in whole µs, as the runs keep them (saturating at `u32::MAX`).
pub(crate) fn micros(latency: Duration) -> u32 {
    u32::try_from(latency.as_micros()).unwrap_or(u32::MAX)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[index]) / 1000.0
}

/// `{name}: count` and `{name}_per_sec` over `elapsed` seconds.
pub(crate) fn report_rate(name: &str, count: usize, elapsed: f64) {
    println!("{name}: {count}");
    println!("{name}_per_sec: {:.0}", count as f64 / elapsed);
}

pub(crate) fn report_latencies(name: &str, mut micros: Vec<u32>) {
    micros.sort_unstable();
    println!("{name}_p50_ms: {:.3}", percentile(&micros, 0.50));
    println!("{name}_p99_ms: {:.3}", percentile(&micros, 0.99));
}
