//! `WatchAvailableAgents`: a snapshot, then changes as the view sees them.
//!
//! Each subscriber has a task that turns view changes into events. A slow
//! subscriber never slows the server: the view's change feed is a bounded
//! broadcast that never waits, and a subscriber that falls behind it gets a
//! `Resync` marker followed by a fresh snapshot.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use uuid::Uuid;

use super::view::{Filter, View};
use crate::pb::availability_event::Event;
use crate::pb::{self, AvailabilityEvent};

/// The server half of a watch.
pub(super) type EventStream =
    Pin<Box<dyn Stream<Item = Result<AvailabilityEvent, Status>> + Send + 'static>>;

/// Events queued for one subscriber beyond what HTTP/2 flow control holds.
const OUTBOX: usize = 64;

pub(super) fn start(view: Arc<View>, tenant: Uuid, filter: Filter) -> EventStream {
    let (tx, rx) = mpsc::channel(OUTBOX);
    tokio::spawn(async move {
        let mut changes = view.subscribe();
        let mut revision = 0;
        loop {
            // Snapshot, remembering which instance each configuration was sent with.
            let (agents, snapshot_revision) = view.available(tenant, &filter, usize::MAX);
            let mut sent: HashMap<String, String> = agents
                .iter()
                .filter_map(|a| {
                    Some((
                        a.configuration.as_ref()?.id.clone(),
                        a.instance.as_ref()?.id.clone(),
                    ))
                })
                .collect();
            revision = revision.max(snapshot_revision);
            if tx
                .send(event(revision, Event::Snapshot(pb::Snapshot { agents })))
                .await
                .is_err()
            {
                return;
            }
            loop {
                let change = match changes.recv().await {
                    Ok(change) => change,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "watcher fell behind; resyncing");
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if change.tenant != tenant || change.revision <= snapshot_revision {
                    continue;
                }
                let Some(configuration) = change.configuration else {
                    break;
                };
                revision = change.revision;
                let key = configuration.to_string();
                let message = match view.available_one(tenant, configuration, &filter) {
                    Some(agent) => {
                        if let Some(instance) = &agent.instance {
                            sent.insert(key, instance.id.clone());
                        }
                        Event::Upserted(agent)
                    }
                    None => match sent.remove(&key) {
                        Some(instance) => Event::Removed(instance),
                        None => continue,
                    },
                };
                if tx.send(event(revision, message)).await.is_err() {
                    return;
                }
            }
            // Fell behind, or a change touched the whole tenant: start over.
            if tx
                .send(event(revision, Event::Resync(pb::Resync {})))
                .await
                .is_err()
            {
                return;
            }
            changes = changes.resubscribe();
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

fn event(revision: u64, event: Event) -> Result<AvailabilityEvent, Status> {
    Ok(AvailabilityEvent {
        revision,
        event: Some(event),
    })
}
