//! The SDK over several replicas and through faults: a replica killed while
//! acquires run, a replica shutting down under an agent session, answers
//! lost after the server acted, and a host name resolved to its addresses.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use agentry_client::{
    AgentFilter, Client, Code, ListManifests, Outcome, RetryPolicy, SessionEvent, pb,
};
use common::front::Front;
use common::routing::{DEADLINE, configure, manifest, register, wait_available, workload};
use common::{TestServer, eventually};

async fn open_leases(s: &TestServer) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM workload_leases WHERE released_at IS NULL")
        .fetch_one(&s.pool)
        .await
        .expect("count leases")
}

/// The answer to an acquire and then to a release is lost after the server
/// acted on it (the proxy drops what the server sends; keepalive notices).
/// Without retries the caller gets an error though the unit was reserved;
/// with them, the repeat carries the same request id and gets that lease,
/// and the repeated release gives the unit back once.
#[tokio::test]
async fn a_retried_acquire_and_release_after_lost_answers_hold_and_free_one_unit() {
    let s = TestServer::start().await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    let c = configure(&t, "ide-agent", 5).await;
    register(&t, "i1", "ide-agent").await;
    wait_available(&t.client, AgentFilter::new(), "routable", |a| a.len() == 1).await;
    let front = Front::start(s.addr).await;
    let client = Client::builder(front.url())
        .api_key(&t.tenant_key)
        .keepalive(Duration::from_millis(200), Duration::from_millis(300))
        .timeout(Duration::from_secs(20))
        .retry_policy(
            RetryPolicy::new()
                .attempts(3)
                .backoff(Duration::from_millis(10), Duration::from_millis(50)),
        )
        .connect()
        .await
        .expect("connect");
    let warm = || async {
        client
            .list_manifests(ListManifests::new())
            .await
            .expect("a connection that passes")
    };

    warm().await;
    front.lose_answers();
    let e = client
        .with_retry_policy(RetryPolicy::never())
        .acquire_agent(AgentFilter::new(), None)
        .await
        .expect_err("the answer was lost");
    assert_eq!(e.code(), Some(Code::Unavailable), "{e:?}");
    assert_eq!(
        workload(&t.client, &c.id).await,
        1,
        "granted; only the answer was lost"
    );

    warm().await;
    front.lose_answers();
    let connections = front.connections();
    let lease = client
        .acquire_agent(AgentFilter::new(), None)
        .await
        .expect("the repeat gets the lease");
    assert!(
        front.connections() > connections,
        "the repeat went on a new connection"
    );
    assert_eq!(
        workload(&t.client, &c.id).await,
        2,
        "one unit for the retried call, not two"
    );
    assert_eq!(open_leases(&s).await, 2);

    warm().await;
    front.lose_answers();
    let released = client
        .release_agent(&lease.id, pb::LeaseOutcome::Succeeded)
        .await
        .expect("the repeat answers");
    assert!(!released, "the lost first attempt released it");
    assert_eq!(workload(&t.client, &c.id).await, 1);
    assert_eq!(open_leases(&s).await, 1);
    assert_eq!(s.leases.stats.drifted_units.load(Ordering::SeqCst), 0);
}

/// Three replicas behind one client; one is killed (its connections drop,
/// new ones are refused) while four callers acquire and release. No call
/// fails, leases held across the kill keep renewing past their TTL, and
/// every unit comes back: the repeats of calls cut off on the dead replica
/// were answered, not applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_carry_on_when_one_of_three_replicas_is_killed_and_held_leases_keep_renewing() {
    let s1 = TestServer::start().await;
    let s2 = s1.replica().await;
    let s3 = s1.replica().await;
    manifest(&s1, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s1.tenant("acme").await;
    let c = configure(&t, "ide-agent", 1000).await;
    register(&t, "i1", "ide-agent").await;
    register(&t, "i2", "ide-agent").await;
    for s in [&s1, &s2, &s3] {
        let direct = common::client(s.addr, &t.tenant_key).await;
        wait_available(&direct, AgentFilter::new(), "every replica routes", |a| {
            a.len() == 1
        })
        .await;
    }
    let fronts = [
        Front::start(s1.addr).await,
        Front::start(s2.addr).await,
        Front::start(s3.addr).await,
    ];
    let client = Client::builder(fronts[0].url())
        .endpoint(fronts[1].url())
        .endpoint(fronts[2].url())
        .api_key(&t.tenant_key)
        .health_check_interval(Duration::from_millis(100))
        .timeout(Duration::from_secs(5))
        // Retries outlast the health check that drops the killed replica
        // by far: the balancer may pick it for every attempt until then.
        .retry_policy(
            RetryPolicy::new()
                .attempts(8)
                .backoff(Duration::from_millis(20), Duration::from_millis(500)),
        )
        .connect()
        .await
        .expect("connect");
    let ttl = Duration::from_secs(2);
    let router = client
        .router(AgentFilter::new())
        .await
        .expect("router")
        .lease_ttl(ttl);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(router.acquire().await.expect("held lease"));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (client, stop, done) = (client.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match client.acquire_agent(AgentFilter::new(), Some(ttl)).await {
                        Ok(lease) => {
                            if let Err(e) = client
                                .release_agent(&lease.id, pb::LeaseOutcome::Succeeded)
                                .await
                            {
                                failures.push(format!("release: {e}"));
                            }
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => failures.push(format!("acquire: {e}")),
                    }
                }
                failures
            })
        })
        .collect();
    // Calls flowing through both replicas before the kill.
    common::eventually(
        Duration::from_secs(30),
        "calls through both replicas",
        || async {
            done.load(Ordering::SeqCst) >= 20
                && s2.leases.stats.operations.load(Ordering::SeqCst) > 0
        },
    )
    .await;
    let on_s2 = s2.leases.stats.operations.load(Ordering::SeqCst);
    let before = done.load(Ordering::SeqCst);
    fronts[1].kill();
    // Longer than the held leases' TTL: they live only if renewals go on.
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for worker in workers {
        failures.extend(worker.await.expect("worker"));
    }
    let after = done.load(Ordering::SeqCst);
    eprintln!(
        "{before} acquire/release pairs before the kill, {after} in all; the killed replica had {on_s2} lease operations"
    );
    assert!(failures.is_empty(), "calls failed: {failures:?}");
    assert!(on_s2 > 0, "the killed replica had its share of calls");
    assert!(after > before, "calls went on after the kill");

    for lease in held {
        client
            .renew_lease(lease.id(), None)
            .await
            .expect("a held lease is still open after its TTL");
        assert!(lease.complete(Outcome::Succeeded).await.expect("complete"));
    }
    assert_eq!(
        workload(&client, &c.id).await,
        0,
        "every unit came back, none twice"
    );
    assert_eq!(s1.leases.stats.drifted_units.load(Ordering::SeqCst), 0);
}

/// An agent session on one of three replicas; that replica shuts down (it
/// drains its streams). The session reconnects to another replica, on the
/// same registration, and stays routable.
#[tokio::test]
async fn an_agent_session_moves_to_another_replica_when_its_replica_shuts_down() {
    let s1 = TestServer::start().await;
    let s2 = s1.replica().await;
    let s3 = s1.replica().await;
    manifest(&s1, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s1.tenant("acme").await;
    configure(&t, "ide-agent", 5).await;
    let mut servers = vec![s1, s2, s3];
    let agent = Client::builder(servers[0].url())
        .endpoint(servers[1].url())
        .endpoint(servers[2].url())
        .api_key(&t.agent_key)
        .health_check_interval(Duration::from_millis(100))
        .connect()
        .await
        .expect("connect");
    let mut session = agent
        .agent_session("i1", "ide-agent")
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .connect()
        .await
        .expect("session");
    let first = session.current();
    let registration = first.registration.expect("registration").id;

    let holder = servers
        .iter()
        .position(|s| s.sessions.len() == 1)
        .expect("one replica holds the stream");
    let mut leaving = servers.remove(holder);
    leaving.stop().await;

    let reconnected = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match session.next_event().await.expect("events") {
                SessionEvent::Reconnected { epoch } => return epoch,
                SessionEvent::Stopped(why) => panic!("the session gave up: {why}"),
                _ => {}
            }
        }
    })
    .await
    .expect("reconnected in time");
    let now = session.current();
    assert!(now.connected);
    assert!(
        reconnected > first.epoch,
        "a new epoch: {reconnected} after {}",
        first.epoch
    );
    assert_eq!(
        now.registration.expect("registration").id,
        registration,
        "the same registration"
    );
    eventually(
        Duration::from_secs(5),
        "another replica holds the stream",
        || async { servers.iter().map(|s| s.sessions.len()).sum::<usize>() == 1 },
    )
    .await;
    let router = common::client(servers[0].addr, &t.tenant_key).await;
    // At the reconnect's epoch: the view's copy from before the stop would
    // show i1 too.
    eventually(DEADLINE, "the agent is routable again", || async {
        let agents = router
            .get_available_agents(AgentFilter::new(), 0)
            .await
            .expect("available");
        agents.len() == 1
            && agents[0]
                .instance
                .as_ref()
                .is_some_and(|i| i.instance_id == "i1" && i.epoch == reconnected)
    })
    .await;
    session.close().await.expect("close");
}

/// A host name is resolved, its addresses checked, and calls balanced over
/// those that serve (here `localhost`, which may also name `::1`, where
/// nothing listens).
#[tokio::test]
async fn a_host_name_is_resolved_to_the_replicas_it_names() {
    let s = TestServer::start().await;
    let t = s.tenant("acme").await;
    let client = Client::builder(format!("http://localhost:{}", s.addr.port()))
        .resolve(Duration::from_millis(100))
        .health_check_interval(Duration::from_millis(100))
        .api_key(&t.tenant_key)
        .connect()
        .await
        .expect("connect");
    for _ in 0..20 {
        client
            .list_manifests(ListManifests::new())
            .await
            .expect("every call finds a replica");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
