//! The SDK notices a dead connection by HTTP/2 keepalive: traffic to the
//! server is black-holed (the TCP connection stays open, nothing passes),
//! and a call fails `UNAVAILABLE` once a ping goes unanswered, long before
//! its own deadline; without keepalive the same call waits for its deadline.

mod common;

use std::time::{Duration, Instant};

use agentry_client::{Client, Code, ListManifests};
use common::front::Front;

async fn call_through(keepalive: bool, timeout: Duration) -> (Code, Duration) {
    let s = common::TestServer::start().await;
    let t = s.tenant("acme").await;
    let hole = Front::start(s.addr).await;
    let mut builder = Client::builder(format!("http://{}", hole.addr))
        .api_key(&t.tenant_key)
        .timeout(timeout);
    builder = if keepalive {
        builder.keepalive(Duration::from_millis(200), Duration::from_millis(300))
    } else {
        builder.no_keepalive()
    };
    let client = builder.connect().await.expect("connect");
    client
        .list_manifests(ListManifests::new())
        .await
        .expect("works while traffic passes");
    hole.black_hole();
    let started = Instant::now();
    let e = client
        .list_manifests(ListManifests::new())
        .await
        .expect_err("nothing gets through");
    (e.code().expect("a status"), started.elapsed())
}

#[tokio::test]
async fn a_black_holed_connection_is_noticed_by_keepalive_before_the_deadline() {
    let (code, took) = call_through(true, Duration::from_secs(30)).await;
    eprintln!("keepalive 200 ms + 300 ms: the call failed {code:?} after {took:?}");
    assert_eq!(
        code,
        Code::Unavailable,
        "the ping went unanswered, not the 30 s deadline"
    );
}

#[tokio::test]
async fn without_keepalive_the_same_call_waits_for_its_deadline() {
    let (code, took) = call_through(false, Duration::from_secs(2)).await;
    eprintln!("no keepalive: the call failed {code:?} after {took:?}");
    assert_eq!(code, Code::DeadlineExceeded);
}
