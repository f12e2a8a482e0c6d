//! Workload leases: acquire and release under contention across replicas,
//! the lease writer's batches, releases racing each other, renewal and expiry.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use agentry_client::{AgentFilter, Code, pb};
use common::routing::{DEADLINE, configure, manifest, register, wait_available, workload};
use common::{TestServer, code, eventually};

#[tokio::test]
async fn two_hundred_concurrent_acquires_across_two_replicas_grant_exactly_max() {
    let s = TestServer::start().await;
    let replica = s.replica().await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    let c = configure(&t, "ide-agent", 5).await;
    register(&t, "i1", "ide-agent").await;
    register(&t, "i2", "ide-agent").await;
    let key = s
        .admin
        .create_api_key(agentry_client::CreateApiKey::new(pb::Role::Tenant).tenant(&t.id))
        .await
        .expect("key")
        .secret;
    let other = common::client(replica.addr, &key).await;
    for client in [&t.client, &other] {
        wait_available(
            client,
            AgentFilter::new(),
            "both replicas see the agent",
            |a| a.len() == 1,
        )
        .await;
    }

    let peak = Arc::new(AtomicI32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (pool, peak, stop) = (s.pool.clone(), peak.clone(), stop.clone());
        let id = uuid::Uuid::parse_str(&c.id).expect("uuid");
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let w: i32 = sqlx::query_scalar(
                    "SELECT current_workload FROM agent_configurations WHERE id = $1",
                )
                .bind(id)
                .fetch_one(&pool)
                .await
                .expect("read");
                peak.fetch_max(w, Ordering::SeqCst);
            }
        })
    };
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let client = if i % 2 == 0 {
                t.client.clone()
            } else {
                other.clone()
            };
            tokio::spawn(async move {
                client
                    .acquire_agent(AgentFilter::new(), Some(Duration::from_secs(60)))
                    .await
            })
        })
        .collect();
    let mut leases = Vec::new();
    let mut exhausted = 0;
    for call in calls {
        match call.await.expect("join") {
            Ok(lease) => leases.push(lease),
            Err(e) if e.code() == Some(Code::ResourceExhausted) => exhausted += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    stop.store(true, Ordering::SeqCst);
    watcher.await.expect("watcher");
    assert_eq!((leases.len(), exhausted), (5, 195));
    assert!(peak.load(Ordering::SeqCst) <= 5);
    assert_eq!(workload(&t.client, &c.id).await, 5);

    for lease in &leases {
        assert!(
            t.client
                .release_agent(&lease.id, pb::LeaseOutcome::Succeeded)
                .await
                .expect("release")
        );
    }
    assert_eq!(workload(&t.client, &c.id).await, 0);
}

#[tokio::test]
async fn concurrent_acquires_and_releases_share_transactions() {
    let s = TestServer::start().await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    let c = configure(&t, "ide-agent", 1000).await;
    register(&t, "i1", "ide-agent").await;
    wait_available(&t.client, AgentFilter::new(), "agent available", |a| {
        a.len() == 1
    })
    .await;
    let callers: Vec<_> = (0..200)
        .map(|_| {
            let client = t.client.clone();
            tokio::spawn(async move {
                let lease = client.acquire_agent(AgentFilter::new(), None).await?;
                client
                    .release_agent(&lease.id, pb::LeaseOutcome::Succeeded)
                    .await
            })
        })
        .collect();
    for caller in callers {
        assert!(caller.await.expect("task").expect("acquire and release"));
    }
    let (batches, operations) = (
        s.leases.stats.batches.load(Ordering::Relaxed),
        s.leases.stats.operations.load(Ordering::Relaxed),
    );
    assert_eq!(operations, 400);
    assert!(
        batches < operations,
        "{operations} operations in {batches} transactions"
    );
    let stored: (i32, i64, i64) = sqlx::query_as(
        "SELECT c.current_workload, count(l.id), count(l.released_at) \
         FROM agent_configurations c LEFT JOIN workload_leases l ON l.configuration_id = c.id \
         WHERE c.id = $1::uuid GROUP BY c.current_workload",
    )
    .bind(&c.id)
    .fetch_one(&s.pool)
    .await
    .expect("read");
    assert_eq!(stored, (0, 200, 200));
}

#[tokio::test]
async fn a_lease_released_by_many_callers_at_once_gives_its_unit_back_once() {
    let s = TestServer::start().await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    let c = configure(&t, "ide-agent", 5).await;
    register(&t, "i1", "ide-agent").await;
    wait_available(&t.client, AgentFilter::new(), "agent available", |a| {
        a.len() == 1
    })
    .await;
    let acquire = || t.client.acquire_agent(AgentFilter::new(), None);
    let (first, _second) = (
        acquire().await.expect("first"),
        acquire().await.expect("second"),
    );
    let releases: Vec<_> = (0..20)
        .map(|_| {
            let (client, id) = (t.client.clone(), first.id.clone());
            tokio::spawn(
                async move { client.release_agent(&id, pb::LeaseOutcome::Succeeded).await },
            )
        })
        .collect();
    let mut released = 0;
    for r in releases {
        released += usize::from(r.await.expect("task").expect("release"));
    }
    assert_eq!(released, 1, "exactly one call released the lease");
    assert_eq!(
        workload(&t.client, &c.id).await,
        1,
        "the other lease still counts"
    );
}

/// A release of a unit the counter no longer holds (it was taken down with
/// the bare `UpdateWorkload`) is drift: counted, and the counter stays at
/// zero instead of going negative.
#[tokio::test]
async fn a_release_the_counter_does_not_hold_is_counted_as_drift() {
    let s = TestServer::start().await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    let c = configure(&t, "ide-agent", 5).await;
    register(&t, "i1", "ide-agent").await;
    wait_available(&t.client, AgentFilter::new(), "agent available", |a| {
        a.len() == 1
    })
    .await;
    let lease = t
        .client
        .acquire_agent(AgentFilter::new(), None)
        .await
        .expect("acquire");
    assert_eq!(workload(&t.client, &c.id).await, 1);
    t.client
        .update_workload(&c.id, -1)
        .await
        .expect("take it down");
    assert_eq!(s.leases.stats.drifted_units.load(Ordering::SeqCst), 0);
    let released = t
        .client
        .release_agent(&lease.id, pb::LeaseOutcome::Succeeded)
        .await
        .expect("release");
    assert!(released);
    assert_eq!(s.leases.stats.drifted_units.load(Ordering::SeqCst), 1);
    assert_eq!(workload(&t.client, &c.id).await, 0);
}

#[tokio::test]
async fn leases_expire_release_once_and_cannot_be_renewed_after() {
    let s = TestServer::start().await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    let c = configure(&t, "ide-agent", 3).await;
    let instance = register(&t, "i1", "ide-agent").await;
    wait_available(&t.client, AgentFilter::new(), "agent available", |a| {
        a.len() == 1
    })
    .await;

    let lease = t
        .client
        .acquire_agent(AgentFilter::new(), None)
        .await
        .expect("acquire");
    assert_eq!(lease.epoch, instance.epoch);
    assert_eq!(lease.instance.as_ref().expect("instance").instance_id, "i1");
    assert_eq!(
        lease
            .configuration
            .as_ref()
            .expect("configuration")
            .current_workload,
        1
    );
    let renewed = t
        .client
        .renew_lease(&lease.id, Some(Duration::from_secs(120)))
        .await
        .expect("renew");
    assert!(
        renewed.expire_time.expect("expiry").seconds > lease.expire_time.expect("expiry").seconds
    );
    assert!(
        t.client
            .release_agent(&lease.id, pb::LeaseOutcome::Failed)
            .await
            .expect("release")
    );
    assert!(
        !t.client
            .release_agent(&lease.id, pb::LeaseOutcome::Failed)
            .await
            .expect("second release is harmless")
    );
    assert_eq!(
        code(t.client.renew_lease(&lease.id, None).await),
        Code::FailedPrecondition
    );
    assert_eq!(workload(&t.client, &c.id).await, 0);

    // A crashed caller: the lease expires and the sweep gives the unit back.
    let short = t
        .client
        .acquire_agent(AgentFilter::new(), Some(Duration::from_millis(50)))
        .await
        .expect("acquire");
    assert_eq!(workload(&t.client, &c.id).await, 1);
    eventually(DEADLINE, "the lease expired", || async {
        s.admin
            .cleanup(None, false)
            .await
            .expect("cleanup")
            .leases_expired
            == 1
    })
    .await;
    assert_eq!(workload(&t.client, &c.id).await, 0);
    assert!(
        !t.client
            .release_agent(&short.id, pb::LeaseOutcome::Succeeded)
            .await
            .expect("release after expiry")
    );
    assert_eq!(
        code(t.client.renew_lease(&short.id, None).await),
        Code::FailedPrecondition
    );
    assert_eq!(workload(&t.client, &c.id).await, 0, "given back once");
}

/// Counted where it happens, on the wire to PostgreSQL: concurrent acquires
/// reach the database as one `agentry_lease_batch` statement per batch of
/// the lease writer (up to 512 operations each), and nothing per call.
#[tokio::test]
async fn concurrent_acquires_cost_postgresql_one_statement_per_batch() {
    const CALLS: usize = 400;
    let (db, proxy, s) = common::counted_server(|_| {}).await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    let c = configure(&t, "ide-agent", 1000).await;
    register(&t, "i1", "ide-agent").await;
    wait_available(&t.client, AgentFilter::new(), "agent available", |a| {
        a.len() == 1
    })
    .await;
    // The writer's first batch waits on the configuration's row lock, so
    // that the calls behind it queue up and go together.
    let lock = common::lock_configuration(&db.pool, &c.id).await;
    let (mark, batches0) = (
        proxy.statements(),
        s.leases.stats.batches.load(Ordering::SeqCst),
    );
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let client = t.client.clone();
            tokio::spawn(async move { client.acquire_agent(AgentFilter::new(), None).await })
        })
        .collect();
    common::wait_for_lock_waits(&db.pool, "agentry_lease_batch", 1).await;
    lock.commit().await.expect("unlock");
    for call in calls {
        call.await.expect("join").expect("acquire");
    }
    let ran = proxy.statements_since(mark);
    let batches = s.leases.stats.batches.load(Ordering::SeqCst) - batches0;
    let lease_batches = ran
        .iter()
        .filter(|s| s.contains("agentry_lease_batch"))
        .count();
    assert_eq!(
        lease_batches as u64, batches,
        "one statement per batch the writer counts: {ran:#?}"
    );
    // The held batch, then everything queued behind it (under 512): two
    // statements when every call has arrived before the lock is released.
    // Calls that arrive later make batches of their own; the bound leaves
    // room for a slow machine, and is still far from one per call.
    assert!(
        ran.len() <= CALLS / 16,
        "{} statements for {CALLS} acquires: {ran:#?}",
        ran.len()
    );
    assert_eq!(workload(&t.client, &c.id).await, CALLS as i32);
}
