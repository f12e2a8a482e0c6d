//! Live health streams held by this server: who is connected at which
//! epoch, their last heartbeat (noted in memory, written by `heartbeats`),
//! and the channel through which the server talks to each stream's task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::error::Error;
use crate::feed::{Follower, Op, Snapshot, Update};
use crate::pb::{self, HealthStatus};

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

/// The status that ends the stream of a deactivated registration.
pub fn deactivated() -> tonic::Status {
    Error::Aborted("the registration was deactivated".into()).into()
}

/// One live health stream.
#[derive(Debug)]
pub struct Session {
    pub tenant: Uuid,
    pub registration_id: Uuid,
    pub configuration_id: Uuid,
    pub epoch: i64,
    last_seen_micros: AtomicI64,
    /// `Heartbeat.current_load` of the last heartbeat, kept for
    /// compatibility (routing ranks by `Heartbeat.load`, see `load.rs`).
    pub load: AtomicI32,
    /// Whether an operator's drain was passed on (once per session).
    drained: AtomicBool,
    /// The health the registration holds as far as this session knows (an
    /// `HealthStatus` number): what it last reported, or what the feed says
    /// the row holds now (the sweep, an operator). A heartbeat reporting
    /// anything else writes its health again.
    stored: AtomicI32,
    control: mpsc::UnboundedSender<Control>,
}

impl Session {
    /// A session and the receiver its task reads control messages from.
    pub fn new(
        tenant: Uuid,
        registration_id: Uuid,
        configuration_id: Uuid,
        epoch: i64,
    ) -> (Arc<Session>, mpsc::UnboundedReceiver<Control>) {
        let (control, rx) = mpsc::unbounded_channel();
        let session = Session {
            tenant,
            registration_id,
            configuration_id,
            epoch,
            last_seen_micros: AtomicI64::new(Utc::now().timestamp_micros()),
            load: AtomicI32::new(0),
            drained: AtomicBool::new(false),
            stored: AtomicI32::new(HealthStatus::Healthy as i32),
            control,
        };
        (Arc::new(session), rx)
    }

    /// Notes a heartbeat: memory only. While this replica holds the
    /// stream its lease vouches for the instance (`replicas.rs`); the time
    /// reaches the row when the stream ends.
    pub fn seen(&self, at: DateTime<Utc>) {
        self.last_seen_micros
            .store(at.timestamp_micros(), Ordering::Relaxed);
    }

    /// When the agent was last heard from.
    pub fn last_seen(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.last_seen_micros.load(Ordering::Relaxed))
            .unwrap_or_else(Utc::now)
    }

    /// The health the registration holds, as far as this session knows.
    pub fn stored_health(&self) -> HealthStatus {
        HealthStatus::try_from(self.stored.load(Ordering::Acquire)).unwrap_or_default()
    }

    /// Notes the health the registration holds (or will, once written).
    pub fn set_stored_health(&self, health: HealthStatus) {
        self.stored.store(health as i32, Ordering::Release);
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
    /// Streams ended by this replica for going silent past the stale timeout.
    pub silenced: AtomicU64,
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
    /// One lock: a `detach` in between cannot leave a dead session in the map.
    pub fn attach(&self, session: Arc<Session>) {
        let mut map = self.lock();
        match map.get(&session.registration_id) {
            // A newer one raced ahead of us: keep it, and this one is the stale one.
            Some(newer) if newer.epoch >= session.epoch => {
                session.tell(Control::Superseded(newer.epoch));
            }
            _ => {
                if let Some(old) = map.insert(session.registration_id, session.clone()) {
                    old.tell(Control::Superseded(session.epoch));
                }
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

    /// Closes this server's sessions of `fenced` (registration, epoch),
    /// whose rows turned out fenced (a newer epoch elsewhere) or deactivated.
    /// Only the session of that epoch: a newer one may have taken its place
    /// while the write was under way.
    pub fn close_fenced(&self, fenced: &[(Uuid, i64)]) {
        let map = self.lock();
        for (id, epoch) in fenced {
            if let Some(session) = map.get(id).filter(|s| s.epoch == *epoch) {
                session.tell(Control::Close(
                    Error::Aborted(
                        "the registration was taken over by a newer connection or deactivated"
                            .into(),
                    )
                    .into(),
                ));
            }
        }
    }
}

/// Sessions hear from the feed what another replica may have done: their
/// configuration changed, an operator drained them, a newer connection took
/// over their instance (`Superseded`), or it was deactivated.
impl Follower for Sessions {
    /// After a reconnect of the feed (a database outage, say), each session
    /// learns what its row holds now: a sweep may have marked it unknown.
    fn reset(&self, snapshot: &Snapshot) {
        let map = self.lock();
        for row in &snapshot.registrations {
            if let Some(session) = map.get(&row.id).filter(|s| s.epoch == row.epoch) {
                session.set_stored_health(HealthStatus::from_db_name(&row.health_status));
            }
        }
    }

    fn apply(&self, updates: &[Update]) {
        for update in updates {
            match update {
                Update::Configuration {
                    op: Op::Update,
                    row: Some(row),
                    ..
                } => self.configuration_changed(&row.clone().into()),
                Update::Registration { row: Some(row), .. }
                    if row.registration_status == "active" =>
                {
                    self.supersede_older(row.id, row.epoch);
                    // What the row holds now (the sweep's unknown, an
                    // operator's word): the next heartbeat that says
                    // otherwise writes the agent's own health again.
                    if let Some(session) = self.lock().get(&row.id).filter(|s| s.epoch == row.epoch)
                    {
                        session.set_stored_health(HealthStatus::from_db_name(&row.health_status));
                    }
                    if row.drain_time.is_some() {
                        self.drain(row.id, row.epoch, &row.drain_reason);
                    }
                }
                Update::Registration { id, .. } => {
                    // Deactivated (or deleted) while this replica held its stream.
                    self.tell(*id, Control::Close(deactivated()));
                }
                _ => {}
            }
        }
    }
}
