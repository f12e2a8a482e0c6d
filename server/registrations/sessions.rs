//! Live health streams held by this server, and the heartbeat writer that
//! persists their last-seen times in one statement per flush interval.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::store;
use crate::error::Result;
use crate::pb;

/// What the server tells a session's task from outside the stream.
#[derive(Debug)]
pub enum Control {
    /// A newer connection (epoch) took over the instance.
    Superseded(i64),
    /// Stop taking new work.
    Drain(String),
    /// The tenant's configuration of this agent changed.
    ConfigurationChanged(Box<pb::Configuration>),
    /// End the stream with this status (server shutdown, fenced elsewhere).
    Close(tonic::Status),
}

/// One live health stream.
#[derive(Debug)]
pub struct Session {
    pub registration_id: Uuid,
    pub configuration_id: Uuid,
    pub epoch: i64,
    last_seen_micros: AtomicI64,
    dirty: AtomicBool,
    /// Work the instance reported in its last heartbeat.
    pub load: AtomicI32,
    /// Whether an operator's drain was passed on (once per session).
    drained: AtomicBool,
    control: mpsc::UnboundedSender<Control>,
}

impl Session {
    /// A session and the receiver its task reads control messages from.
    pub fn new(
        registration_id: Uuid,
        configuration_id: Uuid,
        epoch: i64,
    ) -> (Arc<Session>, mpsc::UnboundedReceiver<Control>) {
        let (control, rx) = mpsc::unbounded_channel();
        let session = Session {
            registration_id,
            configuration_id,
            epoch,
            last_seen_micros: AtomicI64::new(Utc::now().timestamp_micros()),
            dirty: AtomicBool::new(false),
            load: AtomicI32::new(0),
            drained: AtomicBool::new(false),
            control,
        };
        (Arc::new(session), rx)
    }

    /// Notes a heartbeat: memory only, persisted by the next flush.
    pub fn seen(&self, at: DateTime<Utc>) {
        self.last_seen_micros
            .store(at.timestamp_micros(), Ordering::Relaxed);
        self.dirty.store(true, Ordering::Release);
    }

    /// Sends a control message; a session whose task already ended ignores it.
    pub fn tell(&self, message: Control) {
        let _ = self.control.send(message);
    }
}

/// Counters that tests and benchmarks read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Heartbeats received on all streams.
    pub heartbeats: AtomicU64,
    /// Batched heartbeat statements run.
    pub heartbeat_flushes: AtomicU64,
    /// Rows those statements updated.
    pub heartbeat_rows: AtomicU64,
}

/// The sessions of this server, by registration id.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<Uuid, Arc<Session>>>,
    pub stats: Stats,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Session>>> {
        // A panic while holding the lock cannot leave the map inconsistent: entries are whole.
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds `session`, superseding an older session of the same registration.
    pub fn attach(&self, session: Arc<Session>) {
        let previous = self.lock().insert(session.registration_id, session.clone());
        if let Some(old) = previous {
            if old.epoch < session.epoch {
                old.tell(Control::Superseded(session.epoch));
            } else {
                // A newer one raced ahead of us: keep it, and this one is the stale one.
                self.lock().insert(old.registration_id, old.clone());
                session.tell(Control::Superseded(old.epoch));
            }
        }
    }

    /// Tells the session of registration `id`, if this server holds one.
    pub fn tell(&self, id: Uuid, message: Control) {
        if let Some(session) = self.lock().get(&id) {
            session.tell(message);
        }
    }

    /// Supersedes this server's session of registration `id` if it is older than `epoch`.
    pub fn supersede_older(&self, id: Uuid, epoch: i64) {
        if let Some(session) = self.lock().get(&id).filter(|s| s.epoch < epoch) {
            session.tell(Control::Superseded(epoch));
        }
    }

    /// Removes `session` unless a newer one replaced it already.
    pub fn detach(&self, session: &Session) {
        let mut map = self.lock();
        if map
            .get(&session.registration_id)
            .is_some_and(|s| s.epoch == session.epoch)
        {
            map.remove(&session.registration_id);
        }
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends `ConfigurationChanged` to every session of the configuration.
    pub fn configuration_changed(&self, configuration: &pb::Configuration) {
        let Ok(id) = Uuid::try_parse(&configuration.id) else {
            return;
        };
        for session in self.lock().values().filter(|s| s.configuration_id == id) {
            session.tell(Control::ConfigurationChanged(Box::new(
                configuration.clone(),
            )));
        }
    }

    /// Passes an operator's drain of registration `id` at `epoch` to its
    /// session, if this server holds it; once per session.
    pub fn drain(&self, id: Uuid, epoch: i64, reason: &str) {
        if let Some(session) = self.lock().get(&id).filter(|s| s.epoch == epoch)
            && !session.drained.swap(true, Ordering::AcqRel)
        {
            session.tell(Control::Drain(reason.to_owned()));
        }
    }

    /// Tells every session to drain, then closes them with `status`.
    pub fn drain_all(&self, reason: &str, status: &tonic::Status) {
        for session in self.lock().values() {
            session.tell(Control::Drain(reason.to_owned()));
            session.tell(Control::Close(status.clone()));
        }
    }

    /// Persists the last-seen times noted since the previous flush, in one
    /// statement. Sessions whose row was fenced (a newer epoch elsewhere, or
    /// deactivated) are closed.
    pub async fn flush(&self, pool: &PgPool) -> Result<usize> {
        let (mut ids, mut epochs, mut seen) = (Vec::new(), Vec::new(), Vec::new());
        for session in self.lock().values() {
            if session.dirty.swap(false, Ordering::AcqRel) {
                let micros = session.last_seen_micros.load(Ordering::Relaxed);
                ids.push(session.registration_id);
                epochs.push(session.epoch);
                seen.push(DateTime::from_timestamp_micros(micros).unwrap_or_else(Utc::now));
            }
        }
        if ids.is_empty() {
            return Ok(0);
        }
        let updated = match store::touch_many(pool, &ids, &epochs, &seen).await {
            Ok(updated) => updated,
            Err(e) => {
                // Keep them dirty so the next flush retries.
                self.mark_dirty(&ids);
                return Err(e);
            }
        };
        self.stats.heartbeat_flushes.fetch_add(1, Ordering::Relaxed);
        self.stats
            .heartbeat_rows
            .fetch_add(updated.len() as u64, Ordering::Relaxed);
        if updated.len() < ids.len() {
            let updated: std::collections::HashSet<Uuid> = updated.iter().copied().collect();
            let map = self.lock();
            for id in ids.iter().filter(|id| !updated.contains(id)) {
                if let Some(session) = map.get(id) {
                    session.tell(Control::Close(tonic::Status::aborted(
                        "the registration was taken over by a newer connection or deactivated",
                    )));
                }
            }
        }
        Ok(updated.len())
    }

    fn mark_dirty(&self, ids: &[Uuid]) {
        let map = self.lock();
        for id in ids {
            if let Some(session) = map.get(id) {
                session.dirty.store(true, Ordering::Release);
            }
        }
    }
}
