//! `WatchAvailableAgents`: a snapshot, then changes as the view records them
//! (`history`); or, resuming, the changes since a revision, without a snapshot.
//!
//! Each subscriber has a task that reads its tenant's changes from the
//! history and turns each into one event of its filter. A slow subscriber
//! never slows the server nor grows its memory: the history is a buffer
//! bounded in changes and bytes that never waits; each subscriber's events
//! wait in an outbox bounded in bytes (`--watch-outbox-bytes`), and its task
//! waits for room there, holding one change at a time; a subscriber whose
//! next change has left the history meanwhile gets a `Resync` marker
//! followed by a fresh snapshot when it reads again.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::Status;

use super::history::{Change, Record, Since};
use super::request::{Resume, WatchQuery};
use super::view::{Filter, View};
use crate::auth::{Held, Revocation};
use crate::outbox::{self, Outbox};
use crate::pb::availability_event::Event;
use crate::pb::{self, AvailabilityEvent};
use crate::telemetry::metrics as telemetry;
use uuid::Uuid;

/// The server half of a watch.
pub(super) type EventStream =
    Pin<Box<dyn Stream<Item = Result<AvailabilityEvent, Status>> + Send + 'static>>;

/// Changes taken from the history at once: their entries stay alive while
/// the task waits for room, even if the history has dropped them.
const BATCH: usize = 16;

type Sent = Result<AvailabilityEvent, Status>;

/// Watches `tenant`'s agents as `query` asks until the caller goes away,
/// `held`'s revocation fires (then `UNAUTHENTICATED`) or the server stops
/// (then `UNAVAILABLE` at once: a watch never holds up a shutdown, and the
/// caller resumes on another replica). A quiet watch gets a progress event
/// every `progress` (zero: never). At most `outbox` bytes of events wait
/// for the caller to read them.
pub(super) fn start(
    view: Arc<View>,
    tenant: Uuid,
    query: WatchQuery,
    progress: Duration,
    outbox: usize,
    mut held: Held,
    mut stopping: watch::Receiver<bool>,
) -> EventStream {
    let (tx, rx) = outbox::outbox::<Sent>(outbox);
    let events = tx.clone();
    let watch = async move {
        let _ = Watcher::new(view, tenant, query.filter, progress, tx)
            .run(query.resume)
            .await;
    };
    tokio::spawn(async move {
        tokio::select! {
            () = watch => {}
            () = held.revocation.revoked() => {
                tracing::info!("the watch's API key was revoked; ending it");
                events.finish(Err(Revocation::status()));
            }
            () = async { let _ = stopping.wait_for(|s| *s).await; } => {
                events.finish(Err(crate::error::Error::Unavailable(
                    "server shutting down; watch again (another replica answers)".into(),
                )
                .into()));
            }
        }
    });
    Box::pin(rx)
}

/// The subscriber went away.
struct Gone;

struct Watcher {
    view: Arc<View>,
    tenant: Uuid,
    filter: Filter,
    progress: Duration,
    tx: Outbox<Sent>,
    /// The revision of the last event sent.
    revision: u64,
    /// When the last event was sent.
    sent: Instant,
}

impl Watcher {
    fn new(
        view: Arc<View>,
        tenant: Uuid,
        filter: Filter,
        progress: Duration,
        tx: Outbox<Sent>,
    ) -> Self {
        Watcher {
            view,
            tenant,
            filter,
            progress,
            tx,
            revision: 0,
            sent: Instant::now(),
        }
    }

    async fn run(mut self, resume: Option<Resume>) -> Result<(), Gone> {
        let mut subscription = self.view.subscribe(self.tenant);
        let stream = subscription.stream.clone();
        match resume {
            Some(r) if self.holds(&stream, &r) => {
                tracing::debug!(revision = r.revision, "watch resumed");
                telemetry::watch_started("resumed");
                self.send(&stream, r.revision, Event::Progress(pb::Progress {}))
                    .await?;
            }
            Some(r) => {
                tracing::debug!(revision = r.revision, "watch cannot resume; resyncing");
                telemetry::watch_started("resync");
                self.resync(&stream).await?;
            }
            None => {
                telemetry::watch_started("snapshot");
                self.snapshot(&stream).await?;
            }
        }
        loop {
            // Marked seen before reading, so that a change recorded after the
            // read wakes the wait below.
            subscription.revisions.borrow_and_update();
            loop {
                let since = self
                    .view
                    .history()
                    .since(self.tenant, &stream, self.revision, BATCH);
                match since {
                    Since::Changes(changes) if changes.is_empty() => break,
                    Since::Changes(changes) => {
                        for change in changes {
                            let event = translate(&change, &self.filter);
                            self.send(&stream, change.revision, event).await?;
                        }
                    }
                    Since::Gone => {
                        tracing::debug!("watcher fell behind; resyncing");
                        telemetry::watch_started("lagged");
                        self.resync(&stream).await?;
                    }
                }
            }
            let (progress, sent) = (self.progress, self.sent);
            let quiet = async move {
                match progress {
                    Duration::ZERO => std::future::pending().await,
                    every => tokio::time::sleep_until(sent + every).await,
                }
            };
            tokio::select! {
                changed = subscription.revisions.changed() => {
                    if changed.is_err() {
                        return Err(Gone);
                    }
                }
                () = quiet => {
                    let revision = self.revision;
                    self.send(&stream, revision, Event::Progress(pb::Progress {})).await?;
                }
            }
        }
    }

    /// Whether the history holds every change after `resume`.
    fn holds(&self, stream: &str, resume: &Resume) -> bool {
        resume.stream == stream
            && matches!(
                self.view
                    .history()
                    .since(self.tenant, stream, resume.revision, 0),
                Since::Changes(_)
            )
    }

    async fn snapshot(&mut self, stream: &str) -> Result<(), Gone> {
        let (agents, revision) = self.view.history().snapshot(self.tenant, &self.filter);
        self.send(stream, revision, Event::Snapshot(pb::Snapshot { agents }))
            .await
    }

    /// A resync marker and a snapshot, both at the snapshot's revision.
    async fn resync(&mut self, stream: &str) -> Result<(), Gone> {
        let (agents, revision) = self.view.history().snapshot(self.tenant, &self.filter);
        self.send(stream, revision, Event::Resync(pb::Resync {}))
            .await?;
        self.send(stream, revision, Event::Snapshot(pb::Snapshot { agents }))
            .await
    }

    async fn send(&mut self, stream: &str, revision: u64, event: Event) -> Result<(), Gone> {
        let event = AvailabilityEvent {
            revision,
            event: Some(event),
            stream_id: stream.to_owned(),
        };
        let bytes = event.encoded_len();
        self.tx.send(Ok(event), bytes).await.map_err(|_| Gone)?;
        self.revision = revision;
        self.sent = Instant::now();
        Ok(())
    }
}

/// What a change is to a watch of `filter`: one event whatever it is, so
/// that the watch's revisions have no gaps, and a function of the change
/// alone, so that a resumed watch sends what an unbroken one would have.
fn translate(change: &Change, filter: &Filter) -> Event {
    fn admitted<'a>(r: &'a Option<Arc<Record>>, filter: &Filter) -> Option<&'a Record> {
        r.as_deref().filter(|r| r.admits(filter))
    }
    match (
        admitted(&change.before, filter),
        admitted(&change.after, filter),
    ) {
        (Some(before), Some(after)) if before.agent == after.agent => {
            Event::Progress(pb::Progress {})
        }
        (_, Some(after)) => Event::Upserted(after.agent.clone()),
        (Some(before), None) => Event::Removed(pb::Removed {
            configuration_id: change.configuration.to_string(),
            instance_id: before
                .agent
                .instance
                .as_ref()
                .map(|i| i.id.clone())
                .unwrap_or_default(),
        }),
        (None, None) => Event::Progress(pb::Progress {}),
    }
}
