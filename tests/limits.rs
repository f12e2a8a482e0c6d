//! Limits: requests per key, concurrent calls and streams per tenant,
//! streams per connection, failed authentications per peer address, message
//! sizes. Each test sets its limit low and crosses it.

mod common;

use std::time::Duration;

use agentry_client::{Code, CreateManifest, ListManifests, RetryPolicy, pb};
use common::stream::{hello, raw_stream, raw_stream_on, welcome};
use common::{TestServer, client, code, lock_configuration, wait_for_lock_waits};

#[tokio::test]
async fn a_key_past_its_rate_is_refused_with_a_retry_delay_and_other_keys_go_on() {
    let s = TestServer::start_with(|c| {
        // The admin key sets the tenants up within its burst.
        c.limits.key_requests_per_second = 1;
        c.limits.key_request_burst = 10;
    })
    .await;
    let (a, b) = (s.tenant("a").await, s.tenant("b").await);
    let mut refused = None;
    let once = a.client.with_retry_policy(RetryPolicy::never());
    for _ in 0..30 {
        if let Err(e) = once.list_manifests(ListManifests::new()).await {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("refused within 30 calls");
    assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e:?}");
    assert_eq!(e.reason().as_deref(), Some("RATE_LIMITED"));
    let wait = e.retry_after().expect("a retry delay");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(1),
        "{wait:?}"
    );
    b.client
        .list_manifests(ListManifests::new())
        .await
        .expect("another key is limited apart");
    // The SDK's default policy waits out the delay the server asks for.
    let started = std::time::Instant::now();
    a.client
        .list_manifests(ListManifests::new())
        .await
        .expect("after the delay the key works again");
    eprintln!("the retried call took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_tenant_with_all_its_calls_in_flight_is_refused_until_one_ends() {
    let s = TestServer::start_with(|c| c.limits.tenant_concurrent_calls = 1).await;
    s.manifest("ide-agent").await;
    let (a, b) = (s.tenant("a").await, s.tenant("b").await);
    let c = common::routing::configure(&a, "ide-agent", 5).await;
    // One call of tenant a held on a row lock.
    let lock = lock_configuration(&s.pool, &c.id).await;
    let held = tokio::spawn({
        let (client, id) = (a.client.clone(), c.id.clone());
        async move { client.update_workload(&id, 1).await }
    });
    wait_for_lock_waits(&s.pool, "manual_workload", 1).await;
    assert_eq!(
        code(a.client.list_manifests(ListManifests::new()).await),
        Code::ResourceExhausted
    );
    b.client
        .list_manifests(ListManifests::new())
        .await
        .expect("another tenant has its own budget");
    drop(lock);
    held.await.expect("join").expect("the held call completes");
    a.client
        .list_manifests(ListManifests::new())
        .await
        .expect("the budget came back");
}

#[tokio::test]
async fn a_tenant_with_all_its_streams_open_is_refused_until_one_closes() {
    let s = TestServer::start_with(|c| c.limits.tenant_streams = 2).await;
    s.manifest("ide-agent").await;
    let (a, b) = (s.tenant("a").await, s.tenant("b").await);
    let mut open = Vec::new();
    for i in 0..2 {
        let (tx, stream) =
            raw_stream(&s, &a.agent_key, vec![hello(&format!("a{i}"), "ide-agent")]).await;
        let mut stream = stream.expect("stream");
        welcome(&mut stream).await;
        open.push((tx, stream));
    }
    let (_tx, third) = raw_stream(&s, &a.agent_key, vec![hello("a2", "ide-agent")]).await;
    assert_eq!(
        third.expect_err("third stream").code(),
        tonic::Code::ResourceExhausted
    );
    let watch = client(s.addr, &a.tenant_key)
        .await
        .watch_available_agents(pb::AgentFilter::default())
        .await;
    assert_eq!(
        code(watch.map(|_| ())),
        Code::ResourceExhausted,
        "watches count too"
    );
    let (_tx, other) = raw_stream(&s, &b.agent_key, vec![hello("b0", "ide-agent")]).await;
    welcome(&mut other.expect("another tenant's stream")).await;

    drop(open.pop());
    common::eventually(
        Duration::from_secs(5),
        "a stream of a opens again",
        || async {
            let (_tx, again) = raw_stream(&s, &a.agent_key, vec![hello("a2", "ide-agent")]).await;
            again.is_ok()
        },
    )
    .await;
}

#[tokio::test]
async fn a_connection_opens_no_more_streams_than_its_limit_at_once() {
    let s = TestServer::start_with(|c| c.limits.connection_streams = 2).await;
    s.manifest("ide-agent").await;
    let t = s.tenant("a").await;
    let channel = tonic::transport::Endpoint::from_shared(s.url())
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let open = |instance: &'static str| {
        let (channel, key) = (channel.clone(), t.agent_key.clone());
        async move {
            let (tx, stream) = raw_stream_on(channel, &key, instance).await;
            let mut stream = stream.expect("stream");
            welcome(&mut stream).await;
            (tx, stream)
        }
    };
    let first = open("c0").await;
    let _second = open("c1").await;
    let third = tokio::spawn(open("c2"));
    // HTTP/2 holds the third stream back while two are open: it cannot
    // be welcomed before one of them closes, however long we wait.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "the third stream waits for a slot");
    drop(first);
    tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("opened once a slot freed")
        .expect("join");
}

#[tokio::test]
async fn an_address_with_too_many_failed_authentications_is_refused_for_the_rest_of_the_minute() {
    let s = TestServer::start_with(|c| c.limits.auth_failures_per_minute = 3).await;
    let t = s.tenant("a").await;
    let bad = client(s.addr, "agk_00000000000000000000000000000000_nope").await;
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(code(bad.list_manifests(ListManifests::new()).await));
    }
    // Three failures spend the budget: the rest of the minute is refused.
    assert_eq!(&codes[..3], [Code::Unauthenticated; 3]);
    assert_eq!(&codes[3..], [Code::ResourceExhausted; 2], "{codes:?}");
    let e = t
        .client
        .list_manifests(ListManifests::new())
        .await
        .expect_err("the address is refused, whatever key it shows");
    assert_eq!(e.code(), Some(Code::ResourceExhausted));
    assert!(e.retry_after().is_some_and(|d| d > Duration::ZERO));
}

#[tokio::test]
async fn a_request_over_the_message_size_is_refused_and_names_the_limit() {
    let s = TestServer::start_with(|c| c.limits.max_request_bytes = 1024).await;
    let e = s
        .admin
        .create_manifest(
            CreateManifest::new("big-agent", "big", "Big", "1.0.0").description("x".repeat(2048)),
        )
        .await
        .expect_err("too big");
    let status = e.status().expect("a status");
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{status:?}"
    );
    assert!(status.message().contains("1024"), "{status:?}");
    s.admin
        .create_manifest(CreateManifest::new(
            "small-agent",
            "small",
            "Small",
            "1.0.0",
        ))
        .await
        .expect("a small one passes");
}

/// Streams count against the tenant's streams, not its concurrent calls:
/// 50 agents saying hello at once all get in with a budget of one call in
/// flight (the storm benchmark found hellos refused by the call budget).
#[tokio::test]
async fn hellos_at_once_are_bounded_by_streams_not_by_concurrent_calls() {
    let s = TestServer::start_with(|c| c.limits.tenant_concurrent_calls = 1).await;
    s.manifest("ide-agent").await;
    let a = s.tenant("a").await;
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..50 {
        let key = a.agent_key.clone();
        let url = s.url();
        opening.spawn(async move {
            let channel = tonic::transport::Endpoint::from_shared(url)
                .expect("uri")
                .connect()
                .await
                .expect("connect");
            let (tx, opened) = raw_stream_on(channel, &key, &format!("h{i}")).await;
            (tx, opened)
        });
    }
    let mut held = Vec::new();
    for (tx, opened) in opening.join_all().await {
        let mut stream = opened.expect("every hello gets in");
        welcome(&mut stream).await;
        held.push((tx, stream));
    }
    assert_eq!(held.len(), 50);
}
