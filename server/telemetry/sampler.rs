//! Gauges sampled from the parts' own state once a second: cheaper than
//! updating a gauge at every change, and the scrape interval is coarser.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{gauge, histogram};
use sqlx::PgPool;
use tokio::sync::watch;

use super::metrics::{
    DB_ACQUIRE, DB_CONNECTIONS, DB_CONNECTIONS_MAX, HEALTH_STREAMS, VIEW_CONFIGURATIONS,
    VIEW_HELD_OUT, VIEW_INSTANCES, WRITER_QUEUE, upkeep,
};
use crate::periodic::Ticker;
use crate::registrations::hellos::HelloWriter;
use crate::registrations::sessions::Sessions;
use crate::registrations::writer::RegistrationWriter;
use crate::routing::view::View;
use crate::routing::writer::LeaseWriter;

/// How often the gauges are sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// What the sampler reads.
#[derive(Debug, Clone)]
pub struct Sampled {
    /// The database pool.
    pub pool: PgPool,
    /// The health streams.
    pub sessions: Arc<Sessions>,
    /// The availability view.
    pub view: Arc<View>,
    /// The registration writer.
    pub writer: Arc<RegistrationWriter>,
    /// The hello writer.
    pub hellos: Arc<HelloWriter>,
    /// The lease writer.
    pub leases: Arc<LeaseWriter>,
}

impl Sampled {
    /// Samples every [`SAMPLE_INTERVAL`] until `stopping` turns true.
    pub async fn run(self, stopping: watch::Receiver<bool>) {
        let mut ticker = Ticker::now(SAMPLE_INTERVAL, stopping);
        while ticker.tick().await {
            self.sample().await;
        }
    }

    async fn sample(&self) {
        gauge!(HEALTH_STREAMS).set(self.sessions.len() as f64);
        let (configurations, instances) = self.view.size();
        gauge!(VIEW_CONFIGURATIONS).set(configurations as f64);
        gauge!(VIEW_INSTANCES).set(instances as f64);
        gauge!(VIEW_HELD_OUT).set(self.view.held_out() as f64);
        for (writer, queued) in [
            ("registration", self.writer.unwritten()),
            ("hello", self.hellos.queued()),
            ("lease", self.leases.queued()),
        ] {
            gauge!(WRITER_QUEUE, "writer" => writer).set(queued as f64);
        }
        let (size, idle) = (self.pool.size(), self.pool.num_idle());
        gauge!(DB_CONNECTIONS, "state" => "idle").set(idle as f64);
        gauge!(DB_CONNECTIONS, "state" => "in_use").set(size.saturating_sub(idle as u32) as f64);
        gauge!(DB_CONNECTIONS_MAX).set(self.pool.options().get_max_connections() as f64);
        upkeep();
        // One acquire a second shows how long the server's statements wait
        // for a connection, without a timer around every statement. A wait
        // past the interval is recorded as it stands, so that a starved
        // pool shows, and the gauges keep their pace.
        let started = Instant::now();
        match tokio::time::timeout(SAMPLE_INTERVAL, self.pool.acquire()).await {
            // No connection to be had at all: the database probe reports that.
            Ok(Err(_)) => {}
            Ok(Ok(_)) | Err(_) => {
                histogram!(DB_ACQUIRE).record(started.elapsed().as_secs_f64());
            }
        }
    }
}
