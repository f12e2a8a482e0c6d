//! The SDK's Router: a live view, and lease guards that renew and release themselves.

mod common;

use std::time::Duration;

use agentry_client::{AgentFilter, Outcome, pb};
use common::routing::{DEADLINE, configure, manifest, register, workload};
use common::{TestServer, eventually};

/// Lease time to live of the router: long enough that a renewal has a wide
/// margin on a busy machine, whatever share of it the guard renews at.
const TTL: Duration = Duration::from_secs(2);

// A runtime of its own threads: the guard's renewals do not wait on this test's task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_keeps_a_view_and_its_leases_release_themselves() {
    let s = TestServer::start().await;
    manifest(
        &s,
        "ide-agent",
        "ide",
        &["code_editing"],
        pb::ManifestStatus::Active,
    )
    .await;
    let t = s.tenant("acme").await;
    let c = configure(&t, "ide-agent", 2).await;
    let router = t
        .client
        .router(AgentFilter::new().capability("code_editing"))
        .await
        .expect("router");
    let router = router.lease_ttl(TTL);
    assert!(router.agents().is_empty());
    register(&t, "i1", "ide-agent").await;
    let mut view = router.view();
    tokio::time::timeout(DEADLINE, view.wait_for(|v| v.agents.len() == 1))
        .await
        .expect("in time")
        .expect("view");

    // A long task: the guard renews its lease past its first ttl.
    let long = router.acquire().await.expect("acquire");
    assert_eq!(long.instance().expect("instance").instance_id, "i1");
    let id = uuid::Uuid::parse_str(long.id()).expect("uuid");
    let first_expiry: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT expires_at FROM workload_leases WHERE id = $1")
            .bind(id)
            .fetch_one(&s.pool)
            .await
            .expect("lease");
    eventually(
        DEADLINE,
        "the lease outlived its first ttl, just renewed",
        || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT now() > $2 AND expires_at > now() + $3 * interval '1 millisecond' \
                 FROM workload_leases WHERE id = $1",
            )
            .bind(id)
            .bind(first_expiry)
            .bind(TTL.as_millis() as f64 / 2.0)
            .fetch_one(&s.pool)
            .await
            .expect("lease")
        },
    )
    .await;
    let swept = s.admin.cleanup(None, false).await.expect("cleanup");
    assert_eq!(
        swept.leases_expired, 0,
        "a held lease is renewed, not expired"
    );
    assert!(long.complete(Outcome::Succeeded).await.expect("complete"));

    // Dropped without complete: released as cancelled.
    let dropped = router.acquire().await.expect("acquire");
    let id = uuid::Uuid::parse_str(dropped.id()).expect("uuid");
    assert_eq!(workload(&t.client, &c.id).await, 1);
    drop(dropped);
    eventually(DEADLINE, "dropped lease released", || async {
        let outcome: Option<String> =
            sqlx::query_scalar("SELECT outcome FROM workload_leases WHERE id = $1")
                .bind(id)
                .fetch_one(&s.pool)
                .await
                .expect("lease");
        outcome.as_deref() == Some("cancelled")
    })
    .await;
    assert_eq!(workload(&t.client, &c.id).await, 0);
}

/// How many watches of this process's servers started as `start` says.
fn watch_starts(start: &str) -> u64 {
    let rendered = agentry_server::telemetry::metrics::recorder().render();
    let line = format!("agentry_watch_starts_total{{start=\"{start}\"}} ");
    rendered
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_resumes_after_a_lost_connection_without_a_snapshot() {
    // Installed before the server counts anything.
    agentry_server::telemetry::metrics::recorder();
    let s = TestServer::start().await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    let c = configure(&t, "ide-agent", 10).await;
    register(&t, "i1", "ide-agent").await;
    let front = common::front::Front::start(s.addr).await;
    let through_front = common::client(front.addr, &t.tenant_key).await;
    let router = through_front
        .router(AgentFilter::new())
        .await
        .expect("router");
    let mut view = router.view();
    tokio::time::timeout(DEADLINE, view.wait_for(|v| v.agents.len() == 1))
        .await
        .expect("in time")
        .expect("view");
    let (stream, resumed) = (view.borrow().stream_id.clone(), watch_starts("resumed"));

    front.drop_connections();
    // A change while the router is away (or coming back).
    t.client.update_workload(&c.id, 3).await.expect("+3");
    tokio::time::timeout(
        DEADLINE,
        view.wait_for(|v| {
            v.synced
                && v.agents.iter().any(|a| {
                    a.configuration
                        .as_ref()
                        .is_some_and(|c| c.current_workload == 3)
                })
        }),
    )
    .await
    .expect("in time")
    .expect("view");
    assert!(front.connections() >= 2, "the router reconnected");
    assert_eq!(watch_starts("resumed"), resumed + 1, "resumed, no snapshot");
    assert_eq!(view.borrow().stream_id, stream);
    assert_eq!(router.agents().len(), 1);
}
