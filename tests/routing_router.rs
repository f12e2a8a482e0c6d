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
