//! The load writer: the load reports this replica's streams pass on
//! (`load.rs`, `Passing`), published to every replica's routing once per
//! `--load-flush-interval`, as notifications that carry the reports.
//!
//! A report is not a state of the row: it is worth something for a few
//! seconds, to routing. Writing each into its registration row cost a row
//! update, its indexes and a NOTIFY per instance and move (about 40 µs of
//! PostgreSQL CPU each), so the database's work grew with the fleet's
//! churn. Here what the replica's streams passed on within one interval
//! (the last report per instance) goes out as one statement: a few
//! notifications of up to [`PAYLOAD_BYTES`] each, `{"kind": "loads",
//! "reports": [...]}` (migration 0017), one transaction per replica and
//! interval, no row written. Every replica's feed hands the reports on as
//! `Update::Load` and its view keeps each with the instance's epoch.
//!
//! What a replica that (re)loads its view misses comes again within a
//! third of the report TTL: streams pass an unchanged report on again when
//! the one they passed is that old. A failed statement is retried (the
//! batcher), a newer report of the same instance superseding it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::load::LoadChange;
use crate::batching::{BatchStats, Batcher, Pending};
use crate::error::Result;
use crate::telemetry::metrics as telemetry;

/// The largest notification payload sent (PostgreSQL refuses 8,000 bytes).
pub const PAYLOAD_BYTES: usize = 7_900;
/// Reports one statement carries at most.
const MAX_BATCH: usize = 4096;

/// One instance's report as the notification carries it (the names of
/// `feed::LoadNote`).
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Report {
    id: Uuid,
    tenant: Uuid,
    configuration: Uuid,
    epoch: i64,
    in_flight: Option<u32>,
    queue_depth: Option<u32>,
    utilization: Option<f64>,
    metrics: Option<serde_json::Value>,
    /// When the stream passed it on (this replica's clock, RFC 3339);
    /// `None`: the agent stopped reporting.
    reported_at: Option<String>,
    /// When the stream passed on its first report (the blackout starts there).
    first_reported_at: Option<String>,
}

impl Pending for Report {
    type Key = Uuid;
    fn key(&self) -> Uuid {
        self.id
    }

    /// The latest report of the instance's latest epoch.
    fn merge(newer: Report, older: &Report) -> Report {
        if older.epoch > newer.epoch {
            older.clone()
        } else {
            newer
        }
    }
}

/// Where a report comes from: the stream's instance.
#[derive(Debug, Clone, Copy)]
pub struct Reporter {
    pub tenant: Uuid,
    pub registration: Uuid,
    pub configuration: Uuid,
    pub epoch: i64,
}

/// The handle streams use; [`LoadWriter::run`] is the task behind it.
#[derive(Debug)]
pub struct LoadWriter {
    batcher: Batcher<Report>,
    interval: Duration,
}

impl LoadWriter {
    /// A writer that publishes at most once per `interval`.
    pub fn new(interval: Duration) -> Self {
        LoadWriter {
            batcher: Batcher::new("load", MAX_BATCH),
            interval,
        }
    }

    /// Queues `change` of `from`'s instance; `first` is when its stream
    /// passed on its first report of this run of reports.
    pub fn record(&self, from: Reporter, change: &LoadChange, first: Option<DateTime<Utc>>) {
        metrics::counter!(telemetry::LOAD_REPORTS).increment(1);
        let load = match change {
            LoadChange::Set(l) => Some(l),
            LoadChange::Clear => None,
        };
        self.batcher.push(Report {
            id: from.registration,
            tenant: from.tenant,
            configuration: from.configuration,
            epoch: from.epoch,
            in_flight: load.map(|l| l.in_flight),
            queue_depth: load.map(|l| l.queue_depth),
            utilization: load.map(|l| l.utilization),
            metrics: load.map(|l| serde_json::json!(l.metrics)),
            reported_at: load.map(|_| rfc3339(Utc::now())),
            first_reported_at: load.and(first).map(rfc3339),
        });
    }

    /// Publishes queued reports until [`LoadWriter::close`] was called and
    /// nothing is left.
    pub async fn run(&self, pool: PgPool) {
        self.batcher
            .run(self.interval, |batch| publish(&pool, batch))
            .await;
    }

    /// Lets [`LoadWriter::run`] return once it has published what is queued.
    pub fn close(&self) {
        self.batcher.close();
    }

    /// Reports queued or waiting for a retry.
    pub fn unwritten(&self) -> usize {
        self.batcher.unwritten()
    }

    /// Counters: statements that published a batch, the reports they carried.
    pub fn stats(&self) -> &BatchStats {
        &self.batcher.stats
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The payloads of `batch`, each within [`PAYLOAD_BYTES`].
fn payloads(batch: &[Report]) -> Vec<String> {
    const HEAD: &str = r#"{"kind":"loads","reports":["#;
    const TAIL: &str = "]}";
    let mut out = Vec::new();
    let mut current = String::from(HEAD);
    for report in batch {
        // A report is well under a payload: 8 metrics of 64-character names.
        let Ok(json) = serde_json::to_string(report) else {
            continue;
        };
        if current.len() + json.len() + 1 + TAIL.len() > PAYLOAD_BYTES && current.len() > HEAD.len()
        {
            current.push_str(TAIL);
            out.push(std::mem::replace(&mut current, String::from(HEAD)));
        }
        if current.len() > HEAD.len() {
            current.push(',');
        }
        current.push_str(&json);
    }
    if current.len() > HEAD.len() {
        current.push_str(TAIL);
        out.push(current);
    }
    out
}

/// One statement, one transaction: every payload of the batch.
async fn publish(pool: &PgPool, batch: Vec<Report>) -> Result<()> {
    let payloads = payloads(&batch);
    if payloads.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify('agentry_changes', p) FROM unnest($1::text[]) AS p")
        .bind(&payloads)
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::Change;

    fn report(n: usize, metrics: usize) -> Report {
        Report {
            id: Uuid::new_v4(),
            tenant: Uuid::new_v4(),
            configuration: Uuid::new_v4(),
            epoch: n as i64,
            in_flight: Some(3),
            queue_depth: Some(0),
            utilization: Some(0.25),
            metrics: Some(serde_json::json!(
                (0..metrics)
                    .map(|m| (format!("{m:064}"), 1.5))
                    .collect::<std::collections::BTreeMap<_, _>>()
            )),
            reported_at: Some(rfc3339(Utc::now())),
            first_reported_at: Some(rfc3339(Utc::now())),
        }
    }

    #[test]
    fn payloads_stay_under_the_limit_and_decode_as_the_feed_reads_them() {
        let batch: Vec<Report> = (0..500).map(|n| report(n, n % 9)).collect();
        let payloads = payloads(&batch);
        assert!(payloads.len() > 1);
        let mut seen = Vec::new();
        for p in &payloads {
            assert!(p.len() <= PAYLOAD_BYTES, "{} bytes", p.len());
            match Change::decode(p).expect("decodes") {
                Change::Loads { reports } => seen.extend(reports.into_iter().map(|r| r.epoch)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen, (0..500).collect::<Vec<i64>>());
    }

    #[test]
    fn an_ended_report_decodes_as_no_report() {
        let mut r = report(1, 0);
        (r.in_flight, r.queue_depth, r.utilization, r.metrics) = (None, None, None, None);
        (r.reported_at, r.first_reported_at) = (None, None);
        let Change::Loads { reports } = Change::decode(&payloads(&[r])[0]).unwrap() else {
            panic!()
        };
        assert_eq!(reports[0].columns().report(), None);
        assert_eq!(reports[0].last_health_check, None);
    }
}
