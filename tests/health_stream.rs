//! The bidirectional health stream, through the SDK's `AgentSession` and raw
//! streams: welcome, heartbeats and their coalesced writes, goodbye, broken
//! streams, epoch fencing, reconnection across a server restart, pushes from
//! the server, and garbage.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use agentry_client::{
    AgentFilter, Code, CreateApiKey, RegisterInstance, SessionEvent, UpdateConfiguration, pb,
};
use common::stream::{heartbeat, hello, raw_stream, welcome};
use common::{TestServer, code, eventually};
use pb::health_stream_response::Message as In;
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(10);

/// (registration_status, health_status, failure_count, epoch) as stored.
async fn stored(s: &TestServer, instance_id: &str) -> (String, String, i32, i64) {
    sqlx::query_as(
        "SELECT registration_status, health_status, failure_count, epoch FROM agent_registrations WHERE instance_id = $1",
    )
    .bind(instance_id)
    .fetch_one(&s.pool)
    .await
    .expect("registration row")
}

async fn rows(s: &TestServer, instance_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM agent_registrations WHERE instance_id = $1")
        .bind(instance_id)
        .fetch_one(&s.pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn session_registers_heartbeats_and_says_goodbye() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let session = t
        .agent
        .agent_session("ws_conn_abc123", "ide-agent")
        .name("VS Code")
        .connection_details(
            serde_json::json!({"ip_address": "192.168.1.100", "user_agent": "vscode/1.84.0"}),
        )
        .connect()
        .await
        .expect("connect");
    let state = session.current();
    assert!(state.connected);
    assert_eq!(state.epoch, 1);
    let registration = state.registration.expect("registration in welcome");
    assert_eq!(registration.name, "VS Code");
    assert_eq!(registration.health_status(), pb::HealthStatus::Healthy);
    assert_eq!(
        state
            .configuration
            .expect("configuration in welcome")
            .agent_id,
        "ide-agent"
    );

    // The last health check moves forward while the stream lives, though
    // no heartbeat is written: it reads as the holder's lease renewal.
    let checked = || async {
        let registration = t
            .client
            .get_registration_by_instance_id("ws_conn_abc123")
            .await
            .expect("get");
        registration
            .last_health_check
            .expect("last health check")
            .seconds
    };
    let first = checked().await;
    eventually(
        Duration::from_secs(30),
        "last_health_check advances",
        || async { checked().await > first },
    )
    .await;

    // Degraded is written at once, and healthy again.
    session.report_health(pb::HealthStatus::Degraded);
    eventually(DEADLINE, "degraded stored", || async {
        stored(&s, "ws_conn_abc123").await.1 == "degraded"
    })
    .await;
    session.report_health(pb::HealthStatus::Healthy);
    eventually(DEADLINE, "healthy stored", || async {
        stored(&s, "ws_conn_abc123").await.1 == "healthy"
    })
    .await;

    session.close().await.expect("close");
    // The stream ends at once; the registration writer records it a moment later.
    eventually(DEADLINE, "inactive and disconnected", || async {
        let (status, health, _, _) = stored(&s, "ws_conn_abc123").await;
        (status.as_str(), health.as_str()) == ("inactive", "disconnected")
    })
    .await;
    let deactivated: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT deactivation_date FROM agent_registrations")
            .fetch_one(&s.pool)
            .await
            .expect("read");
    assert!(deactivated.is_some());
    let kinds: Vec<String> = sqlx::query_scalar("SELECT kind FROM registration_events ORDER BY id")
        .fetch_all(&s.pool)
        .await
        .expect("events");
    assert_eq!(
        kinds,
        [
            "registered",
            "health_changed",
            "health_changed",
            "deactivated"
        ]
    );
}

#[tokio::test]
async fn broken_stream_marks_unknown_at_once_and_reconnect_heals_it() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let session = t
        .agent
        .agent_session("inst-1", "ide-agent")
        .connect()
        .await
        .expect("connect");
    let id = session.current().registration.expect("registration").id;
    drop(session); // no goodbye
    eventually(DEADLINE, "unknown after a broken stream", || async {
        stored(&s, "inst-1").await.1 == "unknown"
    })
    .await;
    let (status, _, failures, _) = stored(&s, "inst-1").await;
    assert_eq!((status.as_str(), failures), ("active", 1));

    let again = t
        .agent
        .agent_session("inst-1", "ide-agent")
        .connect()
        .await
        .expect("reconnect");
    let state = again.current();
    assert_eq!(
        state.registration.expect("registration").id,
        id,
        "same registration"
    );
    assert_eq!(state.epoch, 2);
    assert_eq!(stored(&s, "inst-1").await.1, "healthy");
    assert_eq!(rows(&s, "inst-1").await, 1);
}

#[tokio::test]
async fn session_reconnects_by_itself_across_a_server_restart() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let mut session = t
        .agent
        .agent_session("ws_conn_1", "ide-agent")
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect()
        .await
        .expect("connect");
    let id = session.current().registration.expect("registration").id;
    let mut state = session.state();

    let s = s.restart().await;
    // The old server drained the stream and recorded it as released (unknown).
    let drained = tokio::time::timeout(DEADLINE, async {
        loop {
            match session.next_event().await {
                Some(SessionEvent::Drain(_)) => return true,
                Some(_) => {}
                None => return false,
            }
        }
    })
    .await;
    assert_eq!(drained, Ok(true), "the agent was told to drain");

    tokio::time::timeout(DEADLINE, state.wait_for(|s| s.connected && s.epoch == 2))
        .await
        .expect("reconnected in time")
        .expect("state");
    assert_eq!(session.current().reconnects, 1);
    assert_eq!(
        session.current().registration.expect("registration").id,
        id,
        "same registration"
    );
    let (status, health, failures, epoch) = stored(&s, "ws_conn_1").await;
    assert_eq!(
        (status.as_str(), health.as_str(), epoch),
        ("active", "healthy", 2)
    );
    assert_eq!(
        failures, 0,
        "a stream the server closed is not the agent's failure, and a healthy reconnect starts over"
    );
    assert_eq!(rows(&s, "ws_conn_1").await, 1, "exactly one row");
    let kinds: Vec<(String, String)> =
        sqlx::query_as("SELECT kind, health_status FROM registration_events ORDER BY id")
            .fetch_all(&s.pool)
            .await
            .expect("events");
    let kinds: Vec<(&str, &str)> = kinds
        .iter()
        .map(|(k, h)| (k.as_str(), h.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("registered", "healthy"),
            ("health_changed", "unknown"),
            ("reconnected", "healthy")
        ],
        "the shutdown's end was written before the old server exited"
    );
    session.close().await.expect("close");
}

#[tokio::test]
async fn a_newer_connection_supersedes_the_older_one() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let mut older = t
        .agent
        .agent_session("inst", "ide-agent")
        .connect()
        .await
        .expect("older");
    let older_epoch = older.current().epoch;
    let newer = t
        .agent
        .agent_session("inst", "ide-agent")
        .connect()
        .await
        .expect("newer");
    assert_eq!(newer.current().epoch, older_epoch + 1);

    let event = tokio::time::timeout(DEADLINE, older.next_event())
        .await
        .expect("in time");
    assert_eq!(
        event,
        Some(SessionEvent::Superseded {
            new_epoch: older_epoch + 1
        })
    );
    assert!(!older.current().connected);
    // The older epoch is fenced off everywhere.
    assert_eq!(
        code(
            t.agent
                .update_health("inst", pb::HealthStatus::Degraded, older_epoch)
                .await
        ),
        Code::Aborted
    );
    assert_eq!(
        code(t.agent.deactivate_registration("inst", older_epoch).await),
        Code::Aborted
    );
    let (status, health, _, epoch) = stored(&s, "inst").await;
    assert_eq!(
        (status.as_str(), health.as_str(), epoch),
        ("active", "healthy", older_epoch + 1),
        "the newer one is untouched"
    );
    assert_eq!(rows(&s, "inst").await, 1);
    drop(newer);
}

#[tokio::test]
async fn a_raw_stream_taken_over_by_register_instance_is_told_superseded_and_closed_aborted() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let (_old_tx, old) = raw_stream(&s, &t.agent_key, vec![hello("inst", "ide-agent")]).await;
    let mut old = old.expect("old stream");
    welcome(&mut old).await;
    // RegisterInstance (unary) also takes over the instance.
    let newer = t
        .agent
        .register_instance(agentry_client::RegisterInstance::new("inst", "ide-agent"))
        .await
        .expect("register");
    let new_epoch = newer.registration.expect("registration").epoch;
    let superseded = old
        .message()
        .await
        .expect("message")
        .and_then(|m| m.message);
    assert_eq!(
        superseded,
        Some(In::Superseded(pb::Superseded { new_epoch }))
    );
    let end = old.message().await.expect_err("stream ends with a status");
    assert_eq!(end.code(), tonic::Code::Aborted);
    assert_eq!(
        stored(&s, "inst").await.1,
        "healthy",
        "the newer registration is left as it registered"
    );
}

/// An old raw stream on replica `a`, its instance taken over through replica
/// `b` by `RegisterInstance`, while `a`'s change feed is held back at the
/// proxy in front of `a`'s database: `a` hears nothing of the takeover, so
/// only the epoch fences of `a`'s own writes keep the old stream's messages
/// out of the new registration's row.
struct TakenOver {
    proxy: common::proxy::Proxy,
    a: TestServer,
    /// On the database directly.
    b: TestServer,
    tx: mpsc::Sender<pb::HealthStreamRequest>,
    old: tonic::Streaming<pb::HealthStreamResponse>,
    old_epoch: i64,
    new_epoch: i64,
    /// Beats of the old stream that reached the row before the takeover.
    beats: u64,
    /// `last_health_check` as the new epoch wrote it.
    taken_at: chrono::DateTime<chrono::Utc>,
    _db: common::TestDb,
}

async fn taken_over_elsewhere(
    configure: impl FnOnce(&mut agentry_server::ServeConfig),
) -> TakenOver {
    let db = common::TestDb::new().await;
    let (proxy, pool) = db.through_proxy().await;
    let a = TestServer::with_pool_and(pool, configure).await;
    let b = TestServer::with_pool(db.pool.clone()).await;
    a.manifest("ide-agent").await;
    let t = a.tenant("acme").await;
    let (tx, old) = raw_stream(&a, &t.agent_key, vec![hello("inst", "ide-agent")]).await;
    let mut old = old.expect("old stream");
    let old_epoch = welcome(&mut old).await.epoch;
    eventually(DEADLINE, "a's change feed is listening", || async {
        proxy.listening() >= 1
    })
    .await;
    // The feed reads the rows a notification names after it arrives, so a
    // read of the Hello's row still under way would see the takeover: wait
    // until a's view has applied it.
    eventually(DEADLINE, "a's view has the instance", || async {
        t.client
            .get_available_agents(agentry_client::AgentFilter::new(), 0)
            .await
            .expect("available")
            .iter()
            .any(|a| a.instance.as_ref().is_some_and(|i| i.epoch == old_epoch))
    })
    .await;
    proxy.hold_listeners();
    let beats = a.sessions.stats.heartbeats.load(Ordering::SeqCst);
    let newer = b
        .clients_of(&t)
        .await
        .agent
        .register_instance(RegisterInstance::new("inst", "ide-agent"))
        .await
        .expect("register through b");
    let new_epoch = newer.registration.expect("registration").epoch;
    assert_eq!(new_epoch, old_epoch + 1);
    TakenOver {
        taken_at: last_check(&b, "inst").await,
        proxy,
        a,
        b,
        tx,
        old,
        old_epoch,
        new_epoch,
        beats,
        _db: db,
    }
}

async fn last_check(s: &TestServer, instance_id: &str) -> chrono::DateTime<chrono::Utc> {
    sqlx::query_scalar("SELECT last_health_check FROM agent_registrations WHERE instance_id = $1")
        .bind(instance_id)
        .fetch_one(&s.pool)
        .await
        .expect("last_health_check")
}

/// Heartbeats are not written, so those of a stream taken over elsewhere
/// never reach the row: the old stream goes on heartbeating while its
/// replica is deaf to the takeover (its feed held), its replica acks them
/// from memory, and the row keeps what the new epoch wrote. Once the feed
/// brings the takeover, the old stream is closed ABORTED.
#[tokio::test]
async fn heartbeats_of_a_stream_taken_over_through_another_replica_do_not_reach_the_row() {
    let mut x = taken_over_elsewhere(|_| {}).await;
    for sequence in 1..=50 {
        x.tx.send(heartbeat(sequence, pb::HealthStatus::Healthy, x.old_epoch))
            .await
            .expect("send");
    }
    eventually(DEADLINE, "the old stream's heartbeats taken", || async {
        x.a.sessions.stats.heartbeats.load(Ordering::SeqCst) >= x.beats + 50
    })
    .await;
    assert_eq!(
        last_check(&x.b, "inst").await,
        x.taken_at,
        "the old stream's heartbeats did not move last_health_check past what the new epoch wrote"
    );
    x.proxy.release_listeners();
    // Closed once its replica heard of the takeover.
    let end = common::stream::end_of(&mut x.old, DEADLINE).await;
    assert_eq!(end.code(), tonic::Code::Aborted, "{end:?}");
    let (status, health, _, epoch) = stored(&x.b, "inst").await;
    assert_eq!(
        (status.as_str(), health.as_str(), epoch),
        ("active", "healthy", x.new_epoch)
    );
}

/// A health report is written at once, fenced by epoch: the old stream's
/// replica still acks its plain heartbeats (it has not heard of the
/// takeover, and writes none), but the degraded report it must write is
/// refused, and the stream ends ABORTED.
#[tokio::test]
async fn a_superseded_raw_stream_refuses_later_heartbeats() {
    let mut x = taken_over_elsewhere(|c| {
        c.registry.heartbeat_flush_interval = Duration::from_secs(3600);
    })
    .await;
    x.tx.send(heartbeat(1, pb::HealthStatus::Healthy, x.old_epoch))
        .await
        .expect("send");
    let ack = x.old.message().await.expect("ack").and_then(|m| m.message);
    assert!(
        matches!(ack, Some(In::Ack(pb::Ack { sequence: 1, .. }))),
        "{ack:?}"
    );
    x.tx.send(heartbeat(2, pb::HealthStatus::Degraded, x.old_epoch))
        .await
        .expect("send");
    // Acknowledged from memory; the registration writer's fenced statement
    // then refuses it and closes the stream.
    let end = loop {
        match x.old.message().await {
            Ok(Some(pb::HealthStreamResponse {
                message: Some(In::Ack(_)),
            })) => continue,
            other => break other,
        }
    };
    let end = end.expect_err("stream ends with a status");
    assert_eq!(end.code(), tonic::Code::Aborted, "{end:?}");
    assert_eq!(
        stored(&x.b, "inst").await,
        ("active".into(), "healthy".into(), 0, x.new_epoch),
        "the old stream's degraded report was not applied"
    );
    assert_eq!(last_check(&x.b, "inst").await, x.taken_at);
    x.proxy.release_listeners();
}

#[tokio::test]
async fn configuration_changes_are_pushed_to_the_agent() {
    let s = TestServer::start().await;
    hears_configuration_change(&s, &s).await;
}

/// The change feed carries the update from the replica that wrote it to the
/// one holding the agent's stream.
#[tokio::test]
async fn configuration_changes_reach_an_agent_whose_stream_another_replica_holds() {
    let s = TestServer::start().await;
    let replica = s.replica().await;
    hears_configuration_change(&s, &replica).await;
}

/// An agent's session on `agent_on` hears a configuration update that the
/// tenant makes through `tenant_on`.
async fn hears_configuration_change(agent_on: &TestServer, tenant_on: &TestServer) {
    agent_on.manifest("ide-agent").await;
    let t = agent_on.tenant("acme").await;
    let mut session = t
        .agent
        .agent_session("inst", "ide-agent")
        .connect()
        .await
        .expect("connect");
    let configuration_id = session.current().configuration.expect("configuration").id;
    tenant_on
        .clients_of(&t)
        .await
        .client
        .update_configuration(
            UpdateConfiguration::new(&configuration_id).system_prompt("Be brief."),
        )
        .await
        .expect("update");
    let event = tokio::time::timeout(DEADLINE, session.next_event())
        .await
        .expect("in time");
    let Some(SessionEvent::ConfigurationChanged(c)) = event else {
        panic!("unexpected {event:?}")
    };
    assert_eq!(c.system_prompt, "Be brief.");
    assert_eq!(
        session
            .current()
            .configuration
            .expect("configuration")
            .system_prompt,
        "Be brief."
    );
}

#[tokio::test]
async fn garbage_and_silence_are_refused() {
    let s = TestServer::start_with(|c| c.registry.hello_timeout = Duration::from_millis(300)).await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let key = s
        .admin
        .create_api_key(agentry_client::CreateApiKey::new(pb::Role::Agent).tenant(&t.id))
        .await
        .expect("key")
        .secret;

    let (_tx, first_not_hello) =
        raw_stream(&s, &key, vec![heartbeat(1, pb::HealthStatus::Healthy, 0)]).await;
    assert_eq!(
        first_not_hello.expect_err("refused").code(),
        tonic::Code::InvalidArgument
    );
    let (_tx, empty) = raw_stream(&s, &key, vec![pb::HealthStreamRequest { message: None }]).await;
    assert_eq!(
        empty.expect_err("refused").code(),
        tonic::Code::InvalidArgument
    );
    let (_tx, silent) = raw_stream(&s, &key, vec![]).await;
    assert_eq!(
        silent.expect_err("refused").code(),
        tonic::Code::DeadlineExceeded
    );
    let (_tx, bad_hello) = raw_stream(&s, &key, vec![hello("", "ide-agent")]).await;
    let status = bad_hello.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status
            .metadata()
            .get("agentry-field")
            .and_then(|v| v.to_str().ok()),
        Some("hello.instance_id")
    );
    let (_tx, unknown_agent) = raw_stream(&s, &key, vec![hello("x", "no-such-agent")]).await;
    assert_eq!(
        unknown_agent.expect_err("refused").code(),
        tonic::Code::NotFound
    );

    // A bad heartbeat ends the stream with INVALID_ARGUMENT and counts as a failure.
    let (tx, stream) = raw_stream(&s, &key, vec![hello("inst", "ide-agent")]).await;
    let mut stream = stream.expect("stream");
    stream.message().await.expect("welcome");
    tx.send(heartbeat(1, pb::HealthStatus::Disconnected, 0))
        .await
        .expect("send");
    let status = stream.message().await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status
            .metadata()
            .get("agentry-field")
            .and_then(|v| v.to_str().ok()),
        Some("heartbeat.health_status")
    );
    eventually(DEADLINE, "unknown after a bad heartbeat", || async {
        stored(&s, "inst").await.1 == "unknown"
    })
    .await;
    assert_eq!(rows(&s, "inst").await, 1);
    assert_eq!(
        rows(&s, "").await + rows(&s, "x").await,
        0,
        "refused hellos wrote nothing"
    );

    // Admin keys belong to no tenant: they cannot hold an agent's stream.
    let admin_key = s
        .admin
        .create_api_key(agentry_client::CreateApiKey::new(pb::Role::Admin))
        .await
        .expect("key")
        .secret;
    let (_tx, admin) = raw_stream(&s, &admin_key, vec![hello("y", "ide-agent")]).await;
    assert_eq!(
        admin.expect_err("refused").code(),
        tonic::Code::PermissionDenied
    );
}

#[tokio::test]
async fn streams_of_two_tenants_never_collide() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let a = s.tenant("acme").await;
    let b = s.tenant("globex").await;
    let sa = a
        .agent
        .agent_session("same-id", "ide-agent")
        .connect()
        .await
        .expect("a");
    let sb = b
        .agent
        .agent_session("same-id", "ide-agent")
        .connect()
        .await
        .expect("b");
    let (ra, rb) = (
        sa.current().registration.expect("a"),
        sb.current().registration.expect("b"),
    );
    assert_ne!(ra.id, rb.id);
    assert_eq!((ra.epoch, rb.epoch), (1, 1), "b did not supersede a");
    assert_eq!(rows(&s, "same-id").await, 2);
    assert_eq!(
        code(b.client.get_registration(&ra.id).await),
        Code::NotFound
    );
    drop((sa, sb));
}

#[tokio::test]
async fn an_operator_drain_reaches_the_agent_through_another_replica_and_stops_routing() {
    let s = TestServer::start().await;
    let replica = s.replica().await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let mut session = t
        .agent
        .agent_session("inst", "ide-agent")
        .connect()
        .await
        .expect("connect");
    let available = || async {
        t.client
            .get_available_agents(AgentFilter::new(), 0)
            .await
            .expect("available")
            .len()
    };
    eventually(DEADLINE, "instance available", || async {
        available().await == 1
    })
    .await;

    // The operator's call lands on the replica; the stream is held by `s`.
    let operator_key = s
        .admin
        .create_api_key(CreateApiKey::new(pb::Role::Tenant).tenant(&t.id))
        .await
        .expect("key")
        .secret;
    let operator = common::client(replica.addr, &operator_key).await;
    let drained = operator
        .drain_registration("inst", "node maintenance")
        .await
        .expect("drain");
    assert!(drained.drain_time.is_some());
    assert_eq!(drained.drain_reason, "node maintenance");
    let event = tokio::time::timeout(DEADLINE, session.next_event())
        .await
        .expect("in time");
    assert!(
        matches!(&event, Some(SessionEvent::Drain(r)) if r == "node maintenance"),
        "{event:?}"
    );
    eventually(DEADLINE, "drained instance not offered", || async {
        available().await == 0
    })
    .await;
    assert_eq!(
        code(t.client.acquire_agent(AgentFilter::new(), None).await),
        Code::ResourceExhausted
    );

    // A reconnect of the same instance is still drained, and is told so.
    let mut again = t
        .agent
        .agent_session("inst", "ide-agent")
        .connect()
        .await
        .expect("reconnect");
    let event = tokio::time::timeout(DEADLINE, again.next_event())
        .await
        .expect("in time");
    assert!(
        matches!(&event, Some(SessionEvent::Drain(r)) if r == "node maintenance"),
        "{event:?}"
    );
    assert_eq!(available().await, 0);

    // Leaving and registering anew ends the drain (once the goodbye is written).
    again.close().await.expect("goodbye");
    eventually(DEADLINE, "the goodbye is written", || async {
        stored(&s, "inst").await.0 == "inactive"
    })
    .await;
    let fresh = t
        .agent
        .register_instance(RegisterInstance::new("inst", "ide-agent"))
        .await
        .expect("register")
        .registration
        .expect("registration");
    assert!(fresh.drain_time.is_none());
    eventually(DEADLINE, "available again", || async {
        available().await == 1
    })
    .await;
}

#[tokio::test]
async fn drain_is_validated_and_tenant_scoped() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let (acme, other) = (s.tenant("acme").await, s.tenant("other").await);
    acme.agent
        .register_instance(RegisterInstance::new("inst", "ide-agent"))
        .await
        .expect("register");
    let invalid = acme
        .client
        .drain_registration("", "why")
        .await
        .expect_err("no instance");
    assert_eq!(invalid.code(), Some(Code::InvalidArgument));
    assert_eq!(invalid.field(), Some("instance_id"));
    let long = "x".repeat(257);
    let invalid = acme
        .client
        .drain_registration("inst", &long)
        .await
        .expect_err("long reason");
    assert_eq!(invalid.field(), Some("reason"));
    assert_eq!(
        code(other.client.drain_registration("inst", "").await),
        Code::NotFound,
        "another tenant's instance does not exist for it"
    );
    assert_eq!(
        code(acme.agent.drain_registration("inst", "").await),
        Code::PermissionDenied,
        "agents do not drain"
    );
    acme.agent
        .deactivate_registration("inst", 0)
        .await
        .expect("deactivate");
    assert_eq!(
        code(acme.client.drain_registration("inst", "").await),
        Code::FailedPrecondition
    );
}

/// A fleet that connects at once is registered in batches: with the first
/// batch held up by a lock, the registrations that arrive meanwhile wait in
/// the hello writer's queue and then go to PostgreSQL as one statement per
/// lane of the writer.
#[tokio::test]
async fn hellos_that_arrive_together_are_registered_in_one_statement_per_lane() {
    let (_db, proxy, s) = common::counted_server(|_| {}).await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let mut lock = s.pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE agent_registrations IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock");
    let mark = proxy.statements();
    let connects: Vec<_> = (0..200)
        .map(|i| {
            let agent = t.agent.clone();
            tokio::spawn(async move {
                agent
                    .agent_session(format!("inst-{i}"), "ide-agent")
                    .connect()
                    .await
            })
        })
        .collect();
    // Some are in the first batch, which waits for the lock; the others queue.
    eventually(
        Duration::from_secs(60),
        "all 200 hellos reached the writer",
        || async { s.hellos.arrived() == 200 },
    )
    .await;
    lock.commit().await.expect("unlock");
    let mut sessions = Vec::new();
    for connect in connects {
        sessions.push(connect.await.expect("join").expect("connect"));
    }
    let batches: Vec<String> = proxy
        .statements_since(mark)
        .into_iter()
        .filter(|sql| sql.contains("agentry_register_batch"))
        .collect();
    // In each of the writer's two lanes, the blocked batch, then all the
    // others (or all in the first, when the lane woke only after every
    // hello had arrived).
    assert!(
        (1..=4).contains(&batches.len()),
        "{} statements for 200 registrations",
        batches.len()
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM agent_registrations WHERE routable")
        .fetch_one(&s.pool)
        .await
        .expect("rows");
    assert_eq!(rows, 200);
    let epochs: Vec<i64> = sessions.iter().map(|s| s.current().epoch).collect();
    assert!(epochs.iter().all(|e| *e == 1), "{epochs:?}");
}

/// A registration PostgreSQL refuses (a NUL character in its name) fails
/// alone: the others batched with it are registered.
#[tokio::test]
async fn one_refused_registration_does_not_fail_its_batch() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    // Hold the first batch so that the rest, the bad one among them, share the next.
    let mut lock = s.pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE agent_registrations IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock");
    // Validation refuses a NUL before it reaches the writer (tests/hostile_input.rs);
    // the bad one goes to the writer directly, standing in for any value
    // the database refuses.
    let tenant: uuid::Uuid = t.id.parse().expect("tenant id");
    let calls: Vec<_> = (0..21)
        .map(|i| {
            let agent = t.agent.clone();
            let hellos = s.hellos.clone();
            tokio::spawn(async move {
                if i == 10 {
                    let bad = agentry_server::registrations::request::Announcement {
                        instance_id: format!("inst-{i}"),
                        agent_id: "ide-agent".into(),
                        name: "bad\0name".into(),
                        connection_details: serde_json::json!({}),
                        runtime_config: serde_json::json!({}),
                        capacity: None,
                    };
                    return hellos
                        .register(tenant, bad, false)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                }
                agent
                    .register_instance(
                        RegisterInstance::new(format!("inst-{i}"), "ide-agent")
                            .name(format!("ok-{i}")),
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    eventually(DEADLINE, "all 21 reached the writer", || async {
        s.hellos.arrived() == 21
    })
    .await;
    lock.commit().await.expect("unlock");
    let mut refused = 0;
    for (i, call) in calls.into_iter().enumerate() {
        match call.await.expect("join") {
            Ok(r) => assert_ne!(i, 10, "{r:?}"),
            Err(e) => {
                assert_eq!(i, 10, "only the bad one fails: {e:?}");
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 1);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM agent_registrations")
        .fetch_one(&s.pool)
        .await
        .expect("rows");
    assert_eq!(rows, 20);
}
