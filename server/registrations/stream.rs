//! The bidirectional `HealthStream`: `Hello` registers, heartbeats are acked
//! from memory, health changes are written at once, and the server pushes
//! configuration changes, drain and superseded notices.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::time::{Duration, Instant};

use chrono::Utc;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Status, Streaming};
use tracing::Instrument;
use uuid::Uuid;

use super::load::Passing;
use super::load_writer::{LoadWriter, Reporter};
use super::registry::Registry;
use super::request::{Announcement, Beat};
use super::sessions::{Control, Session, Sessions};
use super::writer::{RegistrationWriter, StreamChange};
use crate::auth::{Held, Revocation};
use crate::error::Error;
use crate::outbox::{self, Outbox, Refused};
use crate::pb::health_stream_request::Message as In;
use crate::pb::health_stream_response::Message as Out;
use crate::pb::{self, HealthStatus};
use crate::request::Traced;
use crate::telemetry::metrics as telemetry;

/// The server half of a health stream.
pub type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<pb::HealthStreamResponse, Status>> + Send + 'static>>;

/// What a session's task queues for its stream.
type Outgoing = Result<pb::HealthStreamResponse, Status>;

fn out(message: Out) -> pb::HealthStreamResponse {
    pb::HealthStreamResponse {
        message: Some(message),
    }
}

/// Queues `response` for the agent. An agent that leaves its stream's
/// budget unread (it reads neither acks nor pushed configurations) is cut
/// off: what waits for it is dropped and the stream ends with
/// `RESOURCE_EXHAUSTED`, so that it never holds more than the budget;
/// false then, and when the agent is gone.
fn push(tx: &Outbox<Outgoing>, response: pb::HealthStreamResponse) -> bool {
    let bytes = response.encoded_len();
    match tx.try_send(Ok(response), bytes) {
        Ok(()) => true,
        Err(Refused::Closed(_)) => false,
        Err(Refused::Full(_)) => {
            tracing::warn!(
                budget = tx.budget(),
                "the agent does not read its health stream; ending it"
            );
            tx.cut(Err(Error::ResourceExhausted(format!(
                "the agent left more than --stream-outbox-bytes ({} bytes) of this health stream's responses unread; reconnect and read them",
                tx.budget()
            ))
            .into()));
            false
        }
    }
}

fn duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or_default()
}

/// The timing a health stream runs with (from the registry settings).
#[derive(Debug, Clone, Copy)]
pub struct StreamTiming {
    /// How long a new stream may take to send `Hello`.
    pub hello_timeout: Duration,
    /// Heartbeat interval asked of agents.
    pub heartbeat_interval: Duration,
    /// Silence after which the sweep marks an instance unknown (told to agents).
    pub stale_timeout: Duration,
    /// How old a passed-on load report may get before an unchanged one is
    /// passed on again (a third of routing's report TTL).
    pub load_refresh: Duration,
    /// Bytes of responses an agent may leave unread before it is cut off.
    pub outbox_bytes: usize,
}

/// Opens health streams and runs their tasks.
#[derive(Debug, Clone)]
pub struct HealthStreams {
    registry: Registry,
    sessions: Arc<Sessions>,
    writer: Arc<RegistrationWriter>,
    loads: Arc<LoadWriter>,
    timing: StreamTiming,
}

impl HealthStreams {
    /// Streams registering through `registry`, held in `sessions`, their
    /// state changes written by `writer`, their load reports by `loads`.
    pub fn new(
        registry: Registry,
        sessions: Arc<Sessions>,
        writer: Arc<RegistrationWriter>,
        loads: Arc<LoadWriter>,
        timing: StreamTiming,
    ) -> Self {
        HealthStreams {
            registry,
            sessions,
            writer,
            loads,
            timing,
        }
    }

    /// Waits for `Hello`, registers for `tenant`, answers `Welcome` and hands
    /// the stream to a task.
    /// The stream ends with `UNAUTHENTICATED` when `held`'s revocation fires.
    pub async fn open(
        &self,
        tenant: Uuid,
        held: Held,
        mut inbound: Streaming<pb::HealthStreamRequest>,
    ) -> Result<ResponseStream, Status> {
        let first = tokio::time::timeout(self.timing.hello_timeout, inbound.message())
            .await
            .map_err(|_| {
                Status::from(Error::DeadlineExceeded("no Hello within the hello timeout"))
            })??;
        let hello = match first.and_then(|m| m.message) {
            Some(In::Hello(hello)) => hello,
            Some(_) => {
                return Err(Error::invalid(
                    "message",
                    "the first message of a health stream must be hello",
                )
                .into());
            }
            None => {
                return Err(Error::invalid("hello", "the stream ended before its hello").into());
            }
        };
        let a = Announcement::try_from(hello)?;
        a.trace(&tracing::Span::current());
        let registered = self.registry.register(tenant, a, true).await?;
        let (row, configuration) = (registered.row, registered.configuration);

        let (session, control) = Session::new(tenant, row.id, row.configuration_id, row.epoch);
        self.sessions.attach(session.clone());
        let drain = row.drain_time.map(|_| row.drain_reason.clone());
        let (tx, rx) = outbox::outbox::<Outgoing>(self.timing.outbox_bytes);
        let welcome = pb::Welcome {
            epoch: row.epoch,
            heartbeat_interval: Some(duration(self.timing.heartbeat_interval)),
            stale_timeout: Some(duration(self.timing.stale_timeout)),
            configuration: Some(configuration.into()),
            registration: Some(row.into()),
        };
        // The outbox is new and empty: this cannot fail for lack of room.
        push(&tx, out(Out::Welcome(welcome)));
        // A drained instance that reconnects is still drained: it hears so first.
        if let Some(reason) = drain {
            self.sessions
                .drain(session.registration_id, session.epoch, &reason);
        }
        let span = tracing::Span::current();
        tokio::spawn(run(self.clone(), session, inbound, control, held, tx).instrument(span));
        Ok(Box::pin(rx))
    }
}

/// How a session ended.
enum End {
    /// Goodbye: deactivate.
    Goodbye,
    /// A newer connection took over: leave the row to it.
    Superseded,
    /// The stream broke or the agent sent something invalid: unknown, and
    /// one more failure.
    Broken,
    /// The server closed it (shutdown, or its row moved on): unknown, not
    /// the agent's failure.
    Released,
}

async fn run(
    streams: HealthStreams,
    session: Arc<Session>,
    mut inbound: Streaming<pb::HealthStreamRequest>,
    mut control: mpsc::UnboundedReceiver<Control>,
    mut held: Held,
    tx: Outbox<Outgoing>,
) {
    // What the agent last said; a heartbeat without a health repeats it.
    let mut reported = HealthStatus::Healthy;
    // The load report this stream last passed on to routing.
    let mut passing = Passing::default();
    // The holder of a stream is the judge of its silence: an agent that
    // keeps the stream open but stops heartbeating is cut off here, as the
    // sweep would have marked it, and nothing is written until then. One
    // timer per stream, re-armed only when it fires early: a heartbeat
    // costs no timer work.
    let stale = streams.timing.stale_timeout;
    let mut heard = tokio::time::Instant::now();
    let silence = tokio::time::sleep_until(heard + stale);
    tokio::pin!(silence);
    let end = loop {
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(pb::HealthStreamRequest { message: Some(In::Heartbeat(hb)) })) => {
                    heard = tokio::time::Instant::now();
                    match heartbeat(&streams, &session, &mut reported, &mut passing, hb) {
                        Ok(ack) => {
                            if !push(&tx, out(Out::Ack(ack))) {
                                break End::Broken;
                            }
                        }
                        Err(status) => {
                            tx.finish(Err(status));
                            break End::Broken;
                        }
                    }
                }
                Ok(Some(pb::HealthStreamRequest { message: Some(In::Goodbye(bye)) })) => {
                    tracing::info!(reason = %bye.reason, "agent said goodbye");
                    break End::Goodbye;
                }
                Ok(Some(_)) => {
                    let status = Status::from(Error::invalid("message", "expected heartbeat or goodbye after hello"));
                    tx.finish(Err(status));
                    break End::Broken;
                }
                Ok(None) => break End::Broken,
                // A message our codec could not decode: tell the agent why.
                Err(status) if status.code() == tonic::Code::InvalidArgument => {
                    tx.finish(Err(status));
                    break End::Broken;
                }
                Err(status) => {
                    tracing::debug!(%status, "health stream broke");
                    break End::Broken;
                }
            },
            command = control.recv() => match command {
                Some(Control::Superseded(epoch)) => {
                    push(&tx, out(Out::Superseded(pb::Superseded { new_epoch: epoch })));
                    tx.finish(Err(Error::Aborted(format!("superseded by a newer connection (epoch {epoch})")).into()));
                    break End::Superseded;
                }
                Some(Control::Drain(reason)) => {
                    if !push(&tx, out(Out::Drain(pb::Drain { reason }))) {
                        break End::Broken;
                    }
                }
                Some(Control::ConfigurationChanged(configuration)) => {
                    let message = Out::ConfigurationChanged(pb::ConfigurationChanged { configuration: Some(*configuration) });
                    if !push(&tx, out(message)) {
                        break End::Broken;
                    }
                }
                Some(Control::Close(status)) => {
                    tx.finish(Err(status));
                    break End::Released;
                }
                None => break End::Released,
            },
            () = &mut silence => {
                if heard + stale > tokio::time::Instant::now() {
                    silence.as_mut().reset(heard + stale);
                    continue;
                }
                tracing::info!(stale_timeout = ?stale, "no heartbeat within the stale timeout; ending the stream");
                streams.sessions.stats.silenced.fetch_add(1, Ordering::Relaxed);
                tx.finish(Err(Error::DeadlineExceeded(
                    "no heartbeat within the stale timeout; reconnect",
                )
                .into()));
                break End::Broken;
            }
            () = held.revocation.revoked() => {
                tracing::info!("the stream's API key was revoked; ending it");
                tx.finish(Err(Revocation::status()));
                break End::Released;
            }
            () = tx.closed() => break End::Broken,
        }
    };
    let change = match end {
        End::Goodbye => Some(StreamChange::Goodbye),
        End::Broken => Some(StreamChange::Broken),
        End::Released => Some(StreamChange::Released),
        End::Superseded => None,
    };
    // Queued before the session leaves the map: a shutdown that waits for
    // the map to empty then finds every end queued.
    match change {
        Some(change) => {
            tracing::info!(ended = ?change, "health stream ended");
            streams.writer.record(
                session.tenant,
                session.registration_id,
                session.epoch,
                change,
                session.last_seen(),
            );
        }
        None => tracing::info!("health stream superseded"),
    }
    streams.sessions.detach(&session);
}

/// Takes one heartbeat: acknowledged from memory; a health that differs from
/// what the registration holds is queued for the registration writer.
fn heartbeat(
    streams: &HealthStreams,
    session: &Session,
    reported: &mut HealthStatus,
    passing: &mut Passing,
    hb: pb::Heartbeat,
) -> Result<pb::Ack, Status> {
    if hb.epoch != 0 && hb.epoch != session.epoch {
        return Err(Error::Aborted(format!(
            "heartbeat epoch {} is not this session's epoch {}",
            hb.epoch, session.epoch
        ))
        .into());
    }
    let beat = Beat::try_from(hb)?;
    *reported = beat.health.unwrap_or(*reported);
    let now = Utc::now();
    streams
        .sessions
        .stats
        .heartbeats
        .fetch_add(1, Ordering::Relaxed);
    metrics::counter!(telemetry::HEARTBEATS).increment(1);
    session.load.store(beat.current_load, Ordering::Relaxed);
    if let Some(load) = passing.take(beat.load, Instant::now(), streams.timing.load_refresh) {
        let from = Reporter {
            tenant: session.tenant,
            registration: session.registration_id,
            configuration: session.configuration_id,
            epoch: session.epoch,
        };
        streams.loads.record(from, &load, passing.first());
    }
    session.seen(now);
    if *reported != session.stored_health() {
        // Whatever put another health there (the sweep, an operator, the
        // agent's own earlier report): the agent's current word wins.
        session.set_stored_health(*reported);
        streams.writer.record(
            session.tenant,
            session.registration_id,
            session.epoch,
            StreamChange::Report(*reported),
            now,
        );
    }
    Ok(pb::Ack {
        sequence: beat.sequence,
        server_time: Some(pb::timestamp(now)),
    })
}
