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

/// `UpdateWorkload` moves only the manual part of the counter (migration
/// 0011): it cannot take away units that leases hold. A counter that lost
/// them anyway (here, a hand edit) makes their release drift: counted, and
/// the counter stops at its manual part instead of going below it.
#[tokio::test]
async fn update_workload_cannot_free_leased_units_and_a_lost_unit_is_drift() {
    let s = TestServer::start().await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    let c = configure(&t, "ide-agent", 3).await;
    register(&t, "i1", "ide-agent").await;
    wait_available(&t.client, AgentFilter::new(), "agent available", |a| {
        a.len() == 1
    })
    .await;
    let mut leases = Vec::new();
    for _ in 0..2 {
        leases.push(
            t.client
                .acquire_agent(AgentFilter::new(), None)
                .await
                .expect("acquire"),
        );
    }
    // The reproducer: two leases on a cap of 3, then `delta: -2`.
    assert_eq!(
        code(t.client.update_workload(&c.id, -2).await),
        Code::FailedPrecondition
    );
    assert_eq!(workload(&t.client, &c.id).await, 2);
    let raised = t.client.update_workload(&c.id, 1).await.expect("+1");
    assert_eq!((raised.current_workload, raised.manual_workload), (3, 1));
    assert_eq!(
        code(t.client.acquire_agent(AgentFilter::new(), None).await),
        Code::ResourceExhausted,
        "the manual unit counts against the cap"
    );

    sqlx::query("UPDATE agent_configurations SET current_workload = current_workload - 1")
        .execute(&s.pool)
        .await
        .expect("hand edit");
    assert_eq!(s.leases.stats.drifted_units.load(Ordering::SeqCst), 0);
    for lease in &leases {
        assert!(
            t.client
                .release_agent(&lease.id, pb::LeaseOutcome::Succeeded)
                .await
                .expect("release")
        );
    }
    assert_eq!(s.leases.stats.drifted_units.load(Ordering::SeqCst), 1);
    let after = t.client.get_configuration(&c.id).await.expect("get");
    assert_eq!(
        (after.current_workload, after.manual_workload),
        (1, 1),
        "the counter stops at its manual part"
    );
}

/// 100 acquires race 30 `UpdateWorkload`s (+1 and -1) on a cap of 10: the
/// counter is always the manual part plus the open leases, never above the
/// cap, and giving back every lease leaves exactly the manual part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_workload_racing_acquires_keeps_the_counter_equal_to_manual_plus_leases() {
    let s = TestServer::start().await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    let c = configure(&t, "ide-agent", 10).await;
    register(&t, "i1", "ide-agent").await;
    register(&t, "i2", "ide-agent").await;
    wait_available(&t.client, AgentFilter::new(), "agents available", |a| {
        a.len() == 1
    })
    .await;
    let id = uuid::Uuid::parse_str(&c.id).expect("uuid");
    let pool = s.pool.clone();
    let counts = move || {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (i32, i32, i64)>(
                "SELECT current_workload, manual_workload, \
                   (SELECT count(*) FROM workload_leases WHERE configuration_id = $1 AND released_at IS NULL) \
                 FROM agent_configurations WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("counts")
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, counts) = (stop.clone(), counts.clone());
        tokio::spawn(async move {
            let mut seen = 0;
            while !stop.load(Ordering::SeqCst) {
                let (current, manual, open) = counts().await;
                assert!(current <= 10, "cap passed: {current}");
                assert_eq!(
                    i64::from(current),
                    i64::from(manual) + open,
                    "counter = manual + leases"
                );
                seen += 1;
            }
            seen
        })
    };
    let mut acquires = tokio::task::JoinSet::new();
    let mut updates = tokio::task::JoinSet::new();
    for i in 0..130 {
        let client = t.client.clone();
        if i % 13 < 3 {
            let delta = if i % 2 == 0 { 1 } else { -1 };
            let id = c.id.clone();
            updates.spawn(
                async move { (delta, client.update_workload(&id, delta).await.map(|_| ())) },
            );
        } else {
            acquires.spawn(async move { client.acquire_agent(AgentFilter::new(), None).await });
        }
    }
    let mut leases = Vec::new();
    for r in acquires.join_all().await {
        match r {
            Ok(lease) => leases.push(lease),
            Err(e) => assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e:?}"),
        }
    }
    for (delta, r) in updates.join_all().await {
        if let Err(e) = r {
            let want = if delta > 0 {
                Code::ResourceExhausted
            } else {
                Code::FailedPrecondition
            };
            assert_eq!(e.code(), Some(want), "delta {delta}: {e:?}");
        }
    }
    stop.store(true, Ordering::SeqCst);
    assert!(watcher.await.expect("watcher") > 0);
    let (current, manual, open) = counts().await;
    assert_eq!(open, leases.len() as i64);
    assert_eq!(i64::from(current), i64::from(manual) + open);
    assert!(!leases.is_empty() && current <= 10);
    for lease in &leases {
        t.client
            .release_agent(&lease.id, pb::LeaseOutcome::Succeeded)
            .await
            .expect("release");
    }
    assert_eq!(
        counts().await,
        (manual, manual, 0),
        "only the manual part is left"
    );
    assert_eq!(s.leases.stats.drifted_units.load(Ordering::SeqCst), 0);
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

    // A crashed caller: the lease (of the shortest ttl) expires and the
    // sweep gives the unit back.
    let short = t
        .client
        .acquire_agent(AgentFilter::new(), Some(Duration::from_secs(1)))
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
    let acquire = || {
        let client = t.client.clone();
        tokio::spawn(async move { client.acquire_agent(AgentFilter::new(), None).await })
    };
    // One call makes the held batch; the others queue behind it, and the
    // lock goes only once all of them have reached the writer.
    let mut calls = vec![acquire()];
    common::wait_for_lock_waits(&db.pool, "agentry_lease_batch", 1).await;
    calls.extend((1..CALLS).map(|_| acquire()));
    let leases = &s.leases;
    eventually(
        DEADLINE,
        "every call queued behind the held batch",
        || async { leases.queued() == CALLS - 1 },
    )
    .await;
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
    // The held batch, then everything queued behind it (under 512).
    assert_eq!(lease_batches, 2, "{ran:#?}");
    // Besides them, only what the feed reads for the changes they made.
    assert!(
        ran.len() <= CALLS / 16,
        "{} statements for {CALLS} acquires: {ran:#?}",
        ran.len()
    );
    assert_eq!(workload(&t.client, &c.id).await, CALLS as i32);
}

/// AcquireAgent with a request id (AIP-155): a repeat answers the first
/// lease, whether it comes later, at the same moment on two replicas, or
/// after the lease was released; another tenant's same id is its own.
#[tokio::test]
async fn acquires_named_by_a_request_id_reserve_one_unit_however_often_repeated() {
    let s = TestServer::start().await;
    let replica = s.replica().await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    let c = configure(&t, "ide-agent", 10).await;
    register(&t, "i1", "ide-agent").await;
    let on_replica = common::client(replica.addr, &t.tenant_key).await;
    for client in [&t.client, &on_replica] {
        wait_available(client, AgentFilter::new(), "the agent is routable", |a| {
            a.len() == 1
        })
        .await;
    }
    let request = |id: &str| pb::AcquireAgentRequest {
        filter: Some(AgentFilter::new().into()),
        request_id: id.to_owned(),
        ..Default::default()
    };

    let first_id = uuid::Uuid::new_v4().to_string();
    let first = t
        .client
        .acquire_agent_with(request(&first_id))
        .await
        .expect("first");
    let again = on_replica
        .acquire_agent_with(request(&first_id))
        .await
        .expect("repeat");
    assert_eq!(
        again.id, first.id,
        "a repeat on another replica answers the same lease"
    );
    assert_eq!(workload(&t.client, &c.id).await, 1);

    // Twenty at once, half on each replica: in one batch or racing batches.
    let id = uuid::Uuid::new_v4().to_string();
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let client = if i % 2 == 0 {
                t.client.clone()
            } else {
                on_replica.clone()
            };
            let request = request(&id);
            tokio::spawn(async move { client.acquire_agent_with(request).await })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for call in calls {
        ids.insert(call.await.expect("task").expect("acquire").id);
    }
    assert_eq!(ids.len(), 1, "twenty repeats at once, one lease: {ids:?}");
    assert_eq!(workload(&t.client, &c.id).await, 2);

    // Released, a repeat answers the released lease and reserves nothing.
    assert!(
        t.client
            .release_agent(&first.id, pb::LeaseOutcome::Succeeded)
            .await
            .expect("release")
    );
    let replayed = t
        .client
        .acquire_agent_with(request(&first_id))
        .await
        .expect("repeat after release");
    assert_eq!(replayed.id, first.id);
    assert_eq!(
        workload(&t.client, &c.id).await,
        1,
        "only the twenty's lease is open"
    );

    // Another tenant's request with the same id is a reservation of its own
    // (and cannot see the first tenant's lease).
    let other = s.tenant("globex").await;
    configure(&other, "ide-agent", 10).await;
    register(&other, "g1", "ide-agent").await;
    wait_available(&other.client, AgentFilter::new(), "globex's agent", |a| {
        a.len() == 1
    })
    .await;
    let theirs = other
        .client
        .acquire_agent_with(request(&id))
        .await
        .expect("another tenant");
    assert!(!ids.contains(&theirs.id));

    for bad in ["not-a-uuid", "\0"] {
        let e = t
            .client
            .acquire_agent_with(request(bad))
            .await
            .expect_err(bad);
        assert_eq!(e.code(), Some(Code::InvalidArgument), "{e:?}");
        assert_eq!(e.field(), Some("request_id"), "{e:?}");
    }
    assert_eq!(workload(&t.client, &c.id).await, 1);
}

/// The per-reason counts of a `RESOURCE_EXHAUSTED` acquire, as numbers.
fn exclusion_counts(e: &agentry_client::Error) -> std::collections::BTreeMap<String, usize> {
    let info = e
        .details()
        .and_then(|d| d.error_info().cloned())
        .unwrap_or_else(|| panic!("an ErrorInfo: {e:?}"));
    assert_eq!(info.reason, "RESOURCE_EXHAUSTED", "{info:?}");
    info.metadata
        .iter()
        .map(|(why, n)| {
            let n = n
                .parse()
                .unwrap_or_else(|_| panic!("{why}: {n:?} is a count"));
            (why.clone(), n)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acquire_refused_under_contention_counts_every_configuration_by_reason() {
    let s = TestServer::start().await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    manifest(&s, "chat-agent", "chat", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    let max = 3;
    let c = configure(&t, "ide-agent", max).await;
    configure(&t, "chat-agent", 5).await;
    register(&t, "i1", "ide-agent").await;
    let ide = || AgentFilter::new().agent_type("ide");
    for round in 0..3 {
        // The view sees the configuration empty: the refusals of this round
        // are the lease batch's, as the cap fills under the callers' feet.
        eventually(DEADLINE, "the view has the ide agent free", || {
            let client = t.client.clone();
            async move {
                client
                    .get_available_agents(ide(), 0)
                    .await
                    .expect("available")
                    .iter()
                    .any(|a| {
                        a.configuration
                            .as_ref()
                            .is_some_and(|c| c.current_workload == 0)
                    })
            }
        })
        .await;
        let callers: Vec<_> = (0..40)
            .map(|_| {
                let client = t.client.clone();
                tokio::spawn(async move { client.acquire_agent(ide(), None).await })
            })
            .collect();
        let mut leases = vec![];
        let mut refused = 0;
        for caller in callers {
            match caller.await.expect("task") {
                Ok(lease) => leases.push(lease),
                Err(e) => {
                    assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e:?}");
                    let counts = exclusion_counts(&e);
                    assert_eq!(
                        counts.values().sum::<usize>(),
                        2,
                        "round {round}: each configuration counted once: {counts:?}"
                    );
                    for why in [
                        "disabled",
                        "manifest_deprecated",
                        "filter_mismatch",
                        "full",
                        "no_healthy_instance",
                        "degraded_only",
                        "limit",
                        "changed_meanwhile",
                    ] {
                        assert!(
                            counts.contains_key(why),
                            "round {round}: no {why}: {counts:?}"
                        );
                    }
                    assert_eq!(counts["filter_mismatch"], 1, "{counts:?}");
                    assert_eq!(
                        counts["full"] + counts["changed_meanwhile"],
                        1,
                        "round {round}: the ide agent is full, or filled meanwhile: {counts:?}"
                    );
                    refused += 1;
                }
            }
        }
        assert_eq!(leases.len(), max as usize, "round {round}");
        assert_eq!(refused, 40 - max as usize);
        for lease in leases {
            assert!(
                t.client
                    .release_agent(&lease.id, pb::LeaseOutcome::Succeeded)
                    .await
                    .expect("release")
            );
        }
        assert_eq!(workload(&t.client, &c.id).await, 0);
    }
    // A tenant with no configuration at all is answered with the counts too.
    let empty = s.tenant("empty").await;
    let e = empty
        .client
        .acquire_agent(ide(), None)
        .await
        .expect_err("nothing to acquire");
    let counts = exclusion_counts(&e);
    assert!(
        counts.contains_key("full") && counts.values().all(|&n| n == 0),
        "{counts:?}"
    );
}
