//! What a client that does not play along may cost a replica: connections
//! that never speak are closed after the handshake timeout, one address
//! cannot take every connection, and subscribers that do not read hold a
//! bounded number of bytes (a watch is resynced, a health stream is cut).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use agentry_client::{AgentFilter, CreateConfiguration, UpdateConfiguration, pb};
use common::routing::{
    DEADLINE, a_large_entry_changing_under_an_unread_watch, manifest, wait_available,
};
use common::{TestServer, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The test process opens both ends of hundreds of connections.
fn enough_files() {
    rlimit::increase_nofile_limit(u64::MAX).expect("raise the limit of open files");
}

/// A TCP connection to `server` from `from` (any loopback address: the
/// caps count per address).
async fn connect_from(from: IpAddr, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind");
    socket.connect(server).await.expect("connect")
}

/// Whether the server closed `stream` (a read sees the end or a reset),
/// waiting up to `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let until = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // The server's own SETTINGS: it still holds the connection.
            Ok(Ok(_)) => {}
        }
    }
}

/// A health check over a new connection: a legitimate client being served.
async fn served(s: &TestServer) -> bool {
    let Ok(channel) = tonic::transport::Endpoint::from_shared(s.url())
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
    else {
        return false;
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .is_ok()
}

#[tokio::test]
async fn connections_that_do_not_finish_the_http2_handshake_are_closed_in_time() {
    enough_files();
    let timeout = Duration::from_secs(1);
    let s = TestServer::start_with(|c| c.connections.handshake_timeout = timeout).await;
    // A client that spoke before: its connection outlives the timeout.
    let mut early =
        tonic_health::pb::health_client::HealthClient::new(common::raw::channel(s.url()).await);
    early
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("served");
    let localhost = IpAddr::from([127, 0, 0, 1]);
    let mut silent = Vec::new();
    for i in 0..500 {
        let mut stream = connect_from(localhost, s.addr).await;
        match i % 5 {
            // Half a preface.
            0 => stream.write_all(&PREFACE[..12]).await.expect("write"),
            // The preface, without SETTINGS.
            1 => stream.write_all(PREFACE).await.expect("write"),
            // The preface and half a SETTINGS frame header.
            2 => {
                stream.write_all(PREFACE).await.expect("write");
                stream.write_all(&[0, 0, 0, 4]).await.expect("write");
            }
            // Nothing at all.
            _ => {}
        }
        silent.push(stream);
    }
    assert!(
        served(&s).await,
        "a new client is served while 500 connections sit silent"
    );
    let closing = silent.into_iter().map(|mut stream| {
        tokio::spawn(async move { closed_within(&mut stream, timeout * 20).await })
    });
    for (i, closed) in futures_join(closing).await.into_iter().enumerate() {
        assert!(closed, "silent connection {i} was not closed");
    }
    assert_eq!(
        s.connections
            .stats
            .handshake_timeouts
            .load(Ordering::Relaxed),
        500,
        "exactly the silent connections timed out"
    );
    // The early client's connection was never on probation past its SETTINGS.
    early
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("the early client's connection still serves");
    eventually(
        DEADLINE,
        "every closed connection leaves the count",
        || async { s.connections.stats.open.load(Ordering::Relaxed) <= 2 },
    )
    .await;
}

async fn futures_join<T: Send + 'static>(
    tasks: impl IntoIterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn connection_caps_refuse_at_accept_and_existing_clients_keep_working() {
    let s = TestServer::start_with(|c| {
        c.connections.max_connections = 8;
        c.connections.max_connections_per_peer = 5;
    })
    .await;
    let (one, two) = (IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 0, 2]));
    // The test server's admin client holds one connection from 127.0.0.1.
    let t = s.tenant("acme").await;
    eventually(
        DEADLINE,
        "the clients' connections are admitted",
        || async { s.connections.stats.open.load(Ordering::Relaxed) >= 1 },
    )
    .await;
    let mut held = Vec::new();
    let mut refused = 0;
    // Fill 127.0.0.1 up to its cap; the rest are refused at once.
    let room_one = 5 - s.connections.open_from(one);
    for _ in 0..10 {
        let mut stream = connect_from(one, s.addr).await;
        stream.write_all(PREFACE).await.ok();
        if closed_within(&mut stream, Duration::from_millis(500)).await {
            refused += 1;
        } else {
            held.push(stream);
        }
    }
    assert_eq!(held.len(), room_one, "127.0.0.1 holds exactly its cap");
    assert_eq!(s.connections.open_from(one), 5);
    assert_eq!(refused, 10 - room_one);
    assert_eq!(
        s.connections.stats.refused_peer.load(Ordering::Relaxed),
        refused as u64
    );
    // Another address still gets in, up to the replica's cap.
    let room = 8 - s.connections.stats.open.load(Ordering::Relaxed);
    let mut from_two = 0;
    for _ in 0..room + 2 {
        let mut stream = connect_from(two, s.addr).await;
        stream.write_all(PREFACE).await.ok();
        if !closed_within(&mut stream, Duration::from_millis(500)).await {
            from_two += 1;
            held.push(stream);
        }
    }
    assert_eq!(from_two, room, "127.0.0.2 fills what the replica has left");
    assert_eq!(s.connections.stats.refused_total.load(Ordering::Relaxed), 2);
    // The clients connected before keep working through it all.
    t.client
        .list_configurations(pb::ListConfigurationsRequest::default())
        .await
        .expect("an existing client is served");
    s.admin
        .create_tenant("beta")
        .await
        .expect("the admin client is served");
    // And a place that frees up is taken again.
    drop(held.pop());
    eventually(
        DEADLINE,
        "the dropped connection frees its place",
        || async { s.connections.stats.open.load(Ordering::Relaxed) < 8 },
    )
    .await;
    let mut stream = connect_from(two, s.addr).await;
    stream.write_all(PREFACE).await.ok();
    assert!(!closed_within(&mut stream, Duration::from_millis(500)).await);
}

#[tokio::test]
async fn a_watch_that_does_not_read_is_resynced_and_is_sent_a_bounded_amount() {
    let s = TestServer::start_with(|c| c.registry.watch_outbox_bytes = 64 * 1024).await;
    // 400 changes of a 30 KiB entry: 12 MB, three times the history's
    // default 4 MiB (its count bound, 16,384, would hold them all).
    let (_t, mut events) = a_large_entry_changing_under_an_unread_watch(&s).await;
    let (mut before_resync, mut saw_resync) = (0usize, false);
    loop {
        let event = tokio::time::timeout(DEADLINE, events.message())
            .await
            .expect("in time")
            .expect("event")
            .expect("open");
        let bytes = prost::Message::encoded_len(&event);
        let workload = |a: &pb::AvailableAgent| {
            a.configuration
                .as_ref()
                .expect("configuration")
                .current_workload
        };
        match event.event {
            Some(pb::availability_event::Event::Resync(_)) => saw_resync = true,
            Some(pb::availability_event::Event::Snapshot(s))
                if saw_resync && workload(&s.agents[0]) == 400 =>
            {
                break;
            }
            Some(pb::availability_event::Event::Upserted(a))
                if saw_resync && workload(&a) == 400 =>
            {
                break;
            }
            _ if !saw_resync => before_resync += bytes,
            _ => {}
        }
    }
    assert!(
        saw_resync,
        "the watcher fell out of the byte-bounded history"
    );
    // What reached it before: its outbox, HTTP/2's buffers and the client's
    // windows (2 MiB per stream), far below the 12 MB that changed.
    assert!(
        before_resync < 4 * 1024 * 1024,
        "{before_resync} bytes sent before the resync"
    );
}

#[tokio::test]
async fn an_agent_that_does_not_read_its_health_stream_is_cut_off() {
    let s = TestServer::start_with(|c| c.registry.stream_outbox_bytes = 16 * 1024).await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    let c = t
        .client
        .create_configuration(CreateConfiguration::for_agent("ide-agent").max_workload(10))
        .await
        .expect("configuration");
    // The smallest windows HTTP/2 allows: the agent's side holds little.
    let channel = tonic::transport::Endpoint::from_shared(s.url())
        .expect("uri")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let (_tx, stream) = common::stream::raw_stream_on(channel, &t.agent_key, "i1").await;
    let mut stream = stream.expect("stream");
    wait_available(&t.client, AgentFilter::new(), "registered", |a| {
        a.len() == 1
    })
    .await;
    // Pushed configurations of 30 KB each, unread: 1.2 MB.
    for i in 0..40 {
        t.client
            .update_configuration(
                UpdateConfiguration::new(&c.id).system_prompt(format!("{i}{}", "q".repeat(30_000))),
            )
            .await
            .expect("update");
    }
    // Reading again, the agent finds the stream ended, with the limit named.
    let status = common::stream::end_of(&mut stream, DEADLINE).await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("--stream-outbox-bytes"),
        "{status:?}"
    );
    wait_available(
        &t.client,
        AgentFilter::new(),
        "the cut-off agent leaves routing",
        |a| a.is_empty(),
    )
    .await;
}
