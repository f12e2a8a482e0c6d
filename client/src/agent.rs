//! [`AgentSession`]: what an agent process embeds to stay registered over the
//! bidirectional health stream, reconnecting by itself.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;

use crate::backoff::backoff;
use crate::json::json_to_struct;
use crate::pb::health_stream_request::Message as Out;
use crate::pb::health_stream_response::Message as In;
use crate::{Client, Code, Error, Result, pb};

const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Heartbeat interval used if the server's `Welcome` names none.
const FALLBACK_HEARTBEAT: Duration = Duration::from_secs(10);
/// Events kept for a caller that does not read them; older ones are dropped.
const EVENT_BUFFER: usize = 64;

/// What the session currently knows; read it with [`AgentSession::state`].
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct SessionState {
    /// Whether a health stream is open and welcomed right now.
    pub connected: bool,
    /// The registration as of the last `Welcome`.
    pub registration: Option<pb::Registration>,
    /// Epoch of the current (or last) connection; the server turns away
    /// calls and streams that carry an older one.
    pub epoch: i64,
    /// The tenant's configuration of this agent, kept current by the server.
    pub configuration: Option<pb::Configuration>,
    /// Connections made after the first one.
    pub reconnects: u64,
    /// Why the last connection ended, if it did.
    pub last_error: Option<String>,
}

/// What the server said, or what happened to the connection.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// The tenant changed this agent's configuration.
    ConfigurationChanged(Box<pb::Configuration>),
    /// Stop taking new work (the server is shutting down, or an operator asked).
    Drain(String),
    /// A newer connection for the same instance took over; this session stopped.
    Superseded {
        /// The newer connection's epoch.
        new_epoch: i64,
    },
    /// The connection broke; the session is reconnecting.
    Disconnected(String),
    /// The session is connected again, on the same registration.
    Reconnected {
        /// The new connection's epoch.
        epoch: i64,
    },
    /// The session gave up for good (e.g. the key was revoked).
    Stopped(String),
}

/// Health an agent reports about itself.
#[derive(Debug, Clone, PartialEq)]
struct Report {
    health: pb::HealthStatus,
    load: i32,
    message: String,
    /// The load report sent with every heartbeat, once there is one.
    report: Option<pb::LoadReport>,
    /// The session's declared capacity, from which `report_load` derives a
    /// utilization.
    capacity: Option<i32>,
}

/// Configures an [`AgentSession`]; made by [`Client::agent_session`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `connect` is called"]
pub struct AgentSessionBuilder {
    client: Client,
    hello: pb::Hello,
    initial_backoff: Duration,
    max_backoff: Duration,
}

/// # Agent sessions
impl Client {
    /// Starts configuring the health-stream session of instance `instance_id`
    /// of the manifest `agent_id`. The key must be an agent (or tenant) key.
    ///
    /// ```no_run
    /// # async fn run(client: agentry_client::Client) -> agentry_client::Result<()> {
    /// let mut session = client.agent_session("ws_conn_abc123", "ide-agent").name("VS Code").connect().await?;
    /// session.report_load(1);
    /// session.close().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn agent_session(
        &self,
        instance_id: impl Into<String>,
        agent_id: impl Into<String>,
    ) -> AgentSessionBuilder {
        AgentSessionBuilder {
            client: self.clone(),
            hello: pb::Hello {
                instance_id: instance_id.into(),
                agent_id: agent_id.into(),
                ..Default::default()
            },
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }
}

impl AgentSessionBuilder {
    /// Human-readable name, e.g. `"VS Code"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.hello.name = name.into();
        self
    }

    /// Connection details (a JSON object: address, user agent...).
    pub fn connection_details(mut self, details: serde_json::Value) -> Self {
        self.hello.connection_details = Some(json_to_struct(details));
        self
    }

    /// Runtime configuration (a JSON object).
    pub fn runtime_config(mut self, config: serde_json::Value) -> Self {
        self.hello.runtime_config = Some(json_to_struct(config));
        self
    }

    /// Units of work the instance says it can take (`> 0`). Recorded on the
    /// registration for operators; routing is limited by the configuration's
    /// `max_workload`, not by this.
    pub fn capacity(mut self, capacity: i32) -> Self {
        self.hello.capacity = Some(capacity);
        self
    }

    /// Backoff between reconnection attempts: starts at `initial`, doubles up
    /// to `max`, each wait jittered down to as little as half (defaults 100 ms, 10 s).
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial.max(Duration::from_millis(1));
        self.max_backoff = max.max(self.initial_backoff);
        self
    }

    /// Opens the session and waits for the server's `Welcome`.
    ///
    /// Errors of this first connection are returned (an unknown `agent_id` is
    /// [`Error::NotFound`], a bad key [`Error::Unauthenticated`]...). Once
    /// connected, the session sends heartbeats at the interval the server asks
    /// for and reconnects by itself, with the same instance id, whenever the
    /// stream breaks.
    pub async fn connect(self) -> Result<AgentSession> {
        let (state_tx, state) = watch::channel(SessionState::default());
        let (report, report_rx) = watch::channel(Report {
            health: pb::HealthStatus::Healthy,
            load: 0,
            message: String::new(),
            report: None,
            capacity: self.hello.capacity,
        });
        let (events_tx, events) = mpsc::channel(EVENT_BUFFER);
        let (close, close_rx) = oneshot::channel();
        let (first_tx, first) = oneshot::channel();
        let task = tokio::spawn(run(
            self,
            Channels {
                state: state_tx,
                report: report_rx,
                events: events_tx,
                first: Some(first_tx),
            },
            close_rx,
        ));
        match first.await {
            Ok(Ok(())) => Ok(AgentSession {
                state,
                report,
                events: Some(events),
                close: Some(close),
                task: Some(task),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::InvalidConfig(
                "the session task ended before connecting".into(),
            )),
        }
    }
}

/// A registered agent instance, kept alive over the health stream.
///
/// Dropping it without [`close`](AgentSession::close) breaks the stream, which
/// the server records as a failure (health unknown) rather than a departure.
#[derive(Debug)]
pub struct AgentSession {
    state: watch::Receiver<SessionState>,
    report: watch::Sender<Report>,
    events: Option<mpsc::Receiver<SessionEvent>>,
    close: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<()>>>,
}

impl AgentSession {
    /// A receiver of the session's state: connected, registration, epoch.
    pub fn state(&self) -> watch::Receiver<SessionState> {
        self.state.clone()
    }

    /// A copy of the state right now; [`state`](Self::state) gives a receiver
    /// to wait for changes.
    pub fn current(&self) -> SessionState {
        self.state.borrow().clone()
    }

    /// Reports healthy or degraded; sent to the server at once.
    pub fn report_health(&self, health: pb::HealthStatus) {
        self.report.send_if_modified(|r| {
            let changed = r.health != health;
            r.health = health;
            changed
        });
    }

    /// Reports the units of work the instance is doing; sent at once. With
    /// a [`capacity`](AgentSessionBuilder::capacity), it also reports a load
    /// that routing ranks by (`in_flight`, and `utilization` = load /
    /// capacity, at most 1); without one, only the count, which routing does
    /// not rank by: use [`AgentSession::report`] for that.
    pub fn report_load(&self, load: u32) {
        let count = i32::try_from(load).unwrap_or(i32::MAX);
        self.report.send_if_modified(|r| {
            let derived = r.capacity.filter(|c| *c > 0).map(|c| pb::LoadReport {
                in_flight: load,
                utilization: (f64::from(count) / f64::from(c)).min(1.0),
                ..r.report.clone().unwrap_or_default()
            });
            let changed = r.load != count || (derived.is_some() && derived != r.report);
            r.load = count;
            if derived.is_some() {
                r.report = derived;
            }
            changed
        });
    }

    /// Reports the instance's load, which routing ranks its instances by:
    /// `utilization` (0 to 1), `in_flight`, `queue_depth` and up to 8 named
    /// metrics. Sent at once and with every heartbeat after; the server
    /// passes on only meaningful changes, and a report that stops being sent
    /// (see [`AgentSession::clear_report`]) goes stale.
    ///
    /// ```no_run
    /// # fn run(session: &agentry_client::AgentSession) {
    /// use agentry_client::pb::LoadReport;
    /// session.report(LoadReport { utilization: 0.4, in_flight: 3, queue_depth: 1, ..Default::default() });
    /// # }
    /// ```
    pub fn report(&self, load: pb::LoadReport) {
        self.report.send_if_modified(|r| {
            let changed = r.report.as_ref() != Some(&load);
            r.report = Some(load);
            changed
        });
    }

    /// Stops sending a load report: routing goes back to ranking the
    /// instance by its open leases.
    pub fn clear_report(&self) {
        self.report.send_if_modified(|r| r.report.take().is_some());
    }

    /// Sets the short status message sent with heartbeats (at most 256 characters).
    pub fn report_message(&self, message: impl Into<String>) {
        let message = message.into();
        self.report.send_if_modified(|r| {
            let changed = r.message != message;
            r.message = message;
            changed
        });
    }

    /// The next event, or `None` once the session has stopped and all events were read.
    pub async fn next_event(&mut self) -> Option<SessionEvent> {
        self.events.as_mut()?.recv().await
    }

    /// The events as a [`Stream`]; afterwards [`next_event`](Self::next_event) returns `None`.
    pub fn events(&mut self) -> Events {
        Events(self.events.take().map(ReceiverStream::new))
    }

    /// Says `Goodbye` (the server deactivates the registration) and stops.
    pub async fn close(mut self) -> Result<()> {
        if let Some(close) = self.close.take() {
            let _ = close.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for AgentSession {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The events of an [`AgentSession`], as a [`Stream`].
#[derive(Debug)]
pub struct Events(Option<ReceiverStream<SessionEvent>>);

impl Stream for Events {
    type Item = SessionEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SessionEvent>> {
        match self.0.as_mut() {
            Some(stream) => Pin::new(stream).poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}

struct Channels {
    state: watch::Sender<SessionState>,
    report: watch::Receiver<Report>,
    events: mpsc::Sender<SessionEvent>,
    first: Option<oneshot::Sender<Result<()>>>,
}

impl Channels {
    fn event(&self, event: SessionEvent) {
        // A caller that does not read events must not stall the heartbeats.
        let _ = self.events.try_send(event);
    }
}

/// How one connection ended.
enum Ended {
    /// `close()` was called and the server took the goodbye.
    Closed,
    /// Another connection took over the instance.
    Superseded(i64),
}

/// Errors after which reconnecting cannot help. `ABORTED` means this
/// connection was fenced off (a newer one took over, or an operator
/// deactivated the instance): reconnecting would fight the newer owner.
fn fatal(e: &Error) -> bool {
    matches!(
        e.code(),
        Some(
            Code::Aborted
                | Code::Unauthenticated
                | Code::PermissionDenied
                | Code::InvalidArgument
                | Code::NotFound
                | Code::Unimplemented
        )
    ) || matches!(e, Error::InvalidConfig(_))
}

async fn run(
    builder: AgentSessionBuilder,
    mut channels: Channels,
    mut close: oneshot::Receiver<()>,
) -> Result<()> {
    let mut failures: u32 = 0;
    let mut connections: u64 = 0;
    loop {
        // At least what a busy server asked for, on top of the backoff.
        let pushback;
        let result = connect_once(&builder, &mut channels, &mut close, connections).await;
        channels.state.send_modify(|s| s.connected = false);
        match result {
            Ok(Ended::Closed) => return Ok(()),
            Ok(Ended::Superseded(new_epoch)) => {
                channels.event(SessionEvent::Superseded { new_epoch });
                return Ok(());
            }
            Err((e, welcomed)) => {
                pushback = e.retry_after().unwrap_or_default();
                // The replica may be gone or going: look before reconnecting.
                builder.client.suspect_replicas();
                if welcomed {
                    connections += 1;
                    failures = 0;
                }
                if let Some(first) = channels.first.take() {
                    let _ = first.send(Err(e));
                    return Ok(());
                }
                let message = e.to_string();
                channels
                    .state
                    .send_modify(|s| s.last_error = Some(message.clone()));
                if fatal(&e) {
                    channels.event(SessionEvent::Stopped(message));
                    return Err(e);
                }
                if welcomed {
                    channels.event(SessionEvent::Disconnected(message));
                }
            }
        }
        let wait = backoff(builder.initial_backoff, builder.max_backoff, failures).max(pushback);
        failures = failures.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = &mut close => return Ok(()),
        }
    }
}

/// One health stream, from `Hello` to its end. The flag tells whether it got
/// as far as `Welcome`.
async fn connect_once(
    builder: &AgentSessionBuilder,
    channels: &mut Channels,
    close: &mut oneshot::Receiver<()>,
    connections: u64,
) -> std::result::Result<Ended, (Error, bool)> {
    let not_welcomed = |e: Error| (e, false);
    let (outbound, rx) = mpsc::channel(16);
    let hello = pb::HealthStreamRequest {
        message: Some(Out::Hello(builder.hello.clone())),
    };
    // The channel is new: there is room for the hello.
    let _ = outbound.try_send(hello);
    let mut service = builder.client.registration_service();
    let response = tokio::time::timeout(
        builder.client.timeout(),
        service.health_stream(ReceiverStream::new(rx)),
    )
    .await
    .map_err(|_| not_welcomed(tonic::Status::unavailable("no answer to hello in time").into()))?
    .map_err(|s| not_welcomed(s.into()))?;
    let mut inbound = response.into_inner();
    let welcome = match inbound.message().await {
        Ok(Some(pb::HealthStreamResponse {
            message: Some(In::Welcome(w)),
        })) => w,
        Ok(_) => {
            return Err(not_welcomed(Error::from(tonic::Status::internal(
                "the server did not answer hello with welcome",
            ))));
        }
        Err(status) => return Err(not_welcomed(status.into())),
    };
    let epoch = welcome.epoch;
    let interval = welcome
        .heartbeat_interval
        .and_then(|d| Duration::try_from(d).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(FALLBACK_HEARTBEAT);
    channels.state.send_modify(|s| {
        s.connected = true;
        s.epoch = epoch;
        s.registration = welcome.registration.clone();
        s.configuration = welcome.configuration.clone();
        s.reconnects = connections;
        s.last_error = None;
    });
    if let Some(first) = channels.first.take() {
        let _ = first.send(Ok(()));
    } else {
        channels.event(SessionEvent::Reconnected { epoch });
    }
    let welcomed = |e: Error| (e, true);
    let broken = || {
        welcomed(Error::from(tonic::Status::unavailable(
            "the health stream closed",
        )))
    };

    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sequence: u64 = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                sequence += 1;
                let heartbeat = heartbeat(&channels.report.borrow(), sequence, epoch);
                if outbound.send(heartbeat).await.is_err() {
                    return why_closed(&mut inbound).await.map_err(welcomed);
                }
            }
            changed = channels.report.changed() => {
                if changed.is_err() {
                    // The AgentSession is gone without close(): stop quietly.
                    return Ok(Ended::Closed);
                }
                // Health changes go out at once, not at the next tick.
                sequence += 1;
                let heartbeat = heartbeat(&channels.report.borrow_and_update(), sequence, epoch);
                if outbound.send(heartbeat).await.is_err() {
                    return why_closed(&mut inbound).await.map_err(welcomed);
                }
            }
            message = inbound.message() => match message {
                Ok(Some(pb::HealthStreamResponse { message: Some(message) })) => match message {
                    In::Ack(_) | In::Welcome(_) => {}
                    In::ConfigurationChanged(c) => {
                        if let Some(configuration) = c.configuration {
                            channels.state.send_modify(|s| s.configuration = Some(configuration.clone()));
                            channels.event(SessionEvent::ConfigurationChanged(Box::new(configuration)));
                        }
                    }
                    In::Drain(d) => channels.event(SessionEvent::Drain(d.reason)),
                    In::Superseded(s) => return Ok(Ended::Superseded(s.new_epoch)),
                },
                Ok(Some(_)) => {}
                Ok(None) => return Err(broken()),
                Err(status) => return Err(welcomed(status.into())),
            },
            _ = &mut *close => {
                let goodbye = pb::HealthStreamRequest {
                    message: Some(Out::Goodbye(pb::Goodbye { reason: "closed by the agent".into() })),
                };
                outbound.send(goodbye).await.map_err(|_| broken())?;
                drop(outbound);
                // The server ends the stream once the goodbye is recorded.
                let drained = tokio::time::timeout(builder.client.timeout(), async {
                    while let Ok(Some(_)) = inbound.message().await {}
                })
                .await;
                return match drained {
                    Ok(()) => Ok(Ended::Closed),
                    Err(_) => Err(welcomed(Error::from(tonic::Status::deadline_exceeded("no answer to goodbye")))),
                };
            }
        }
    }
}

/// Our side of the stream is gone: the server ended the call. Its last
/// messages say why (a `Superseded` notice, or the closing status).
async fn why_closed(
    inbound: &mut tonic::Streaming<pb::HealthStreamResponse>,
) -> std::result::Result<Ended, Error> {
    let closed = || Error::from(tonic::Status::unavailable("the health stream closed"));
    let reason = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match inbound.message().await {
                Ok(Some(pb::HealthStreamResponse {
                    message: Some(In::Superseded(s)),
                })) => {
                    return Ok(Ended::Superseded(s.new_epoch));
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err(closed()),
                Err(status) => return Err(status.into()),
            }
        }
    })
    .await;
    reason.unwrap_or_else(|_| Err(closed()))
}

fn heartbeat(report: &Report, sequence: u64, epoch: i64) -> pb::HealthStreamRequest {
    pb::HealthStreamRequest {
        message: Some(Out::Heartbeat(pb::Heartbeat {
            sequence,
            health_status: report.health.into(),
            current_load: report.load,
            message: report.message.clone(),
            epoch,
            load: report.report.clone(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_errors_stop_reconnecting() {
        assert!(fatal(&Error::from(tonic::Status::unauthenticated("x"))));
        assert!(fatal(&Error::from(tonic::Status::not_found("x"))));
        assert!(!fatal(&Error::from(tonic::Status::unavailable("x"))));
        assert!(fatal(&Error::from(tonic::Status::aborted("x"))));
        assert!(!fatal(&Error::from(tonic::Status::internal("x"))));
    }
}
