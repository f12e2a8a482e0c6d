//! Routing through the SDK: available agents and their scores, workload
//! leases under contention across replicas, expiry, metrics, watch, Router.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use agentry_client::{
    AgentFilter, Client, Code, CreateConfiguration, CreateManifest, Outcome, RegisterInstance,
    UpdateConfiguration, pb,
};
use common::{Tenant, TestServer, code, eventually};

const DEADLINE: Duration = Duration::from_secs(10);

async fn manifest(
    s: &TestServer,
    agent_id: &str,
    agent_type: &str,
    caps: &[&str],
    status: pb::ManifestStatus,
) {
    s.admin
        .create_manifest(
            CreateManifest::new(agent_id, agent_type, agent_id, "1.0.0")
                .capabilities(caps.iter().copied())
                .status(status),
        )
        .await
        .expect("manifest");
}

async fn configure(t: &Tenant, agent_id: &str, max_workload: i32) -> pb::Configuration {
    t.client
        .create_configuration(CreateConfiguration::for_agent(agent_id).max_workload(max_workload))
        .await
        .expect("configuration")
}

async fn register(t: &Tenant, instance_id: &str, agent_id: &str) -> pb::Registration {
    t.agent
        .register_instance(RegisterInstance::new(instance_id, agent_id))
        .await
        .expect("register")
        .registration
        .expect("registration")
}

/// (agent_id, instance_id, score) of the available agents, as `client` sees them.
async fn available(client: &Client, filter: AgentFilter) -> Vec<(String, String, f64)> {
    client
        .get_available_agents(filter, 0)
        .await
        .expect("available")
        .into_iter()
        .map(|a| {
            (
                a.agent_id,
                a.instance.map(|i| i.instance_id).unwrap_or_default(),
                a.score,
            )
        })
        .collect()
}

async fn wait_available(
    client: &Client,
    filter: AgentFilter,
    what: &str,
    pred: impl Fn(&[(String, String, f64)]) -> bool,
) {
    eventually(DEADLINE, what, || {
        let (client, filter) = (client.clone(), filter.clone());
        let pred = &pred;
        async move { pred(&available(&client, filter).await) }
    })
    .await;
}

async fn next(events: &mut tonic::Streaming<pb::AvailabilityEvent>) -> pb::AvailabilityEvent {
    tokio::time::timeout(DEADLINE, events.message())
        .await
        .expect("in time")
        .expect("event")
        .expect("open")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test]
async fn available_agents_are_ordered_by_exact_scores() {
    let s = TestServer::start().await;
    for id in ["alpha", "bravo", "charlie"] {
        manifest(&s, id, "ide", &["code_editing"], pb::ManifestStatus::Active).await;
    }
    let t = s.tenant("acme").await;
    let a = configure(&t, "alpha", 10).await;
    let b = configure(&t, "bravo", 4).await;
    let c = configure(&t, "charlie", 2).await;
    register(&t, "a1", "alpha").await;
    register(&t, "b1", "bravo").await;
    register(&t, "b2", "bravo").await;
    t.agent
        .update_health("b2", pb::HealthStatus::Degraded, 0)
        .await
        .expect("degrade");
    for i in 1..=3 {
        register(&t, &format!("c{i}"), "charlie").await;
    }
    t.client.update_workload(&b.id, 2).await.expect("load b");
    t.client.update_workload(&c.id, 1).await.expect("load c");
    let _ = a;

    // alpha: 0.5*(1-0/10) + 0.3*(1/1) + 0.2*(1/3); charlie: 0.5*(1-1/2) + 0.3 + 0.2; bravo: 0.5*(1-2/4) + 0.3*(1/2) + 0.2*(2/3)
    let expected = [
        ("alpha", 0.5 + 0.3 + 0.2 / 3.0),
        ("charlie", 0.25 + 0.3 + 0.2),
        ("bravo", 0.25 + 0.15 + 0.4 / 3.0),
    ];
    wait_available(
        &t.client,
        AgentFilter::new(),
        "three configurations with their final scores",
        |agents| {
            agents.len() == 3
                && agents
                    .iter()
                    .zip(expected)
                    .all(|((agent, _, score), (name, want))| agent == name && close(*score, want))
        },
    )
    .await;
    let agents = available(&t.client, AgentFilter::new()).await;
    assert_eq!(
        agents[2].1, "b1",
        "healthy instances are routed to before degraded ones"
    );
}

#[tokio::test]
async fn unavailable_agents_never_appear_and_filters_apply() {
    let s = TestServer::start().await;
    manifest(
        &s,
        "ide-agent",
        "ide",
        &["code_editing", "terminal_access"],
        pb::ManifestStatus::Active,
    )
    .await;
    manifest(&s, "chat-bot", "chat", &["chat"], pb::ManifestStatus::Beta).await;
    manifest(
        &s,
        "old-agent",
        "ide",
        &["code_editing"],
        pb::ManifestStatus::Deprecated,
    )
    .await;
    manifest(
        &s,
        "off-agent",
        "ide",
        &["code_editing"],
        pb::ManifestStatus::Active,
    )
    .await;
    manifest(
        &s,
        "full-agent",
        "ide",
        &["code_editing"],
        pb::ManifestStatus::Active,
    )
    .await;
    manifest(
        &s,
        "gone-agent",
        "ide",
        &["code_editing"],
        pb::ManifestStatus::Active,
    )
    .await;
    manifest(
        &s,
        "sick-agent",
        "ide",
        &["code_editing"],
        pb::ManifestStatus::Active,
    )
    .await;
    let t = s.tenant("acme").await;
    for id in [
        "ide-agent",
        "chat-bot",
        "old-agent",
        "off-agent",
        "gone-agent",
        "sick-agent",
    ] {
        configure(&t, id, 5).await;
        register(&t, &format!("{id}-1"), id).await;
    }
    let off = t
        .client
        .list_configurations(agentry_client::ListConfigurations::new().agent_id("off-agent"))
        .await
        .expect("list");
    t.client
        .update_configuration(UpdateConfiguration::new(&off.configurations[0].id).enabled(false))
        .await
        .expect("disable");
    let full = configure(&t, "full-agent", 1).await;
    register(&t, "full-agent-1", "full-agent").await;
    t.client.update_workload(&full.id, 1).await.expect("fill");
    t.agent
        .deactivate_registration("gone-agent-1", 0)
        .await
        .expect("deactivate");
    sqlx::query("UPDATE agent_registrations SET health_status = 'unknown' WHERE instance_id = 'sick-agent-1'")
        .execute(&s.pool)
        .await
        .expect("unknown");

    let names = |agents: &[(String, String, f64)]| {
        let mut names: Vec<String> = agents.iter().map(|a| a.0.clone()).collect();
        names.sort();
        names
    };
    wait_available(
        &t.client,
        AgentFilter::new(),
        "only usable agents",
        |agents| names(agents) == ["chat-bot", "ide-agent"],
    )
    .await;
    let with_deprecated = available(&t.client, AgentFilter::new().include_deprecated(true)).await;
    assert_eq!(
        names(&with_deprecated),
        ["chat-bot", "ide-agent", "old-agent"]
    );
    assert_eq!(
        names(&available(&t.client, AgentFilter::new().agent_type("chat")).await),
        ["chat-bot"]
    );
    assert_eq!(
        names(&available(&t.client, AgentFilter::new().agent_id("ide-agent")).await),
        ["ide-agent"]
    );
    let both = AgentFilter::new()
        .capability("code_editing")
        .capability("terminal_access");
    assert_eq!(names(&available(&t.client, both).await), ["ide-agent"]);
    assert!(
        available(&t.client, AgentFilter::new().capability("flying"))
            .await
            .is_empty()
    );

    // Degraded: a fallback only when nothing healthy matches, or when asked for.
    t.agent
        .update_health("chat-bot-1", pb::HealthStatus::Degraded, 0)
        .await
        .expect("degrade");
    wait_available(
        &t.client,
        AgentFilter::new(),
        "degraded one hidden while a healthy one exists",
        |agents| names(agents) == ["ide-agent"],
    )
    .await;
    assert_eq!(
        names(&available(&t.client, AgentFilter::new().include_degraded(true)).await),
        ["chat-bot", "ide-agent"]
    );
    assert_eq!(
        names(&available(&t.client, AgentFilter::new().agent_type("chat")).await),
        ["chat-bot"],
        "fallback"
    );
}

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
    assert_eq!(
        t.client
            .get_configuration(&c.id)
            .await
            .expect("get")
            .current_workload,
        5
    );

    for lease in &leases {
        assert!(
            t.client
                .release_agent(&lease.id, pb::LeaseOutcome::Succeeded)
                .await
                .expect("release")
        );
    }
    assert_eq!(
        t.client
            .get_configuration(&c.id)
            .await
            .expect("get")
            .current_workload,
        0
    );
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
    let workload = t
        .client
        .get_configuration(&c.id)
        .await
        .expect("configuration")
        .current_workload;
    assert_eq!(workload, 1, "the other lease still counts");
}

#[tokio::test]
async fn the_view_counts_every_lease_when_many_change_in_one_transaction() {
    let s = TestServer::start().await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    let c = configure(&t, "ide-agent", 10).await;
    let mut instances = [
        register(&t, "a", "ide-agent").await,
        register(&t, "b", "ide-agent").await,
    ];
    // Equal in all else, instances rank by id: `low` first while neither has leases.
    instances.sort_by(|x, y| x.id.cmp(&y.id));
    let [low, high] = instances;
    let best = || async {
        t.client
            .get_available_agents(AgentFilter::new(), 0)
            .await
            .expect("available")
            .first()
            .and_then(|a| a.instance.as_ref())
            .map(|i| i.id.clone())
    };
    eventually(DEADLINE, "low-id instance first", || async {
        best().await.as_deref() == Some(low.id.as_str())
    })
    .await;
    // Two leases of `low` and one of `high`, written in one statement: `high`
    // must now rank first (one open lease against two).
    sqlx::query(
        "INSERT INTO workload_leases (id, tenant_id, configuration_id, registration_id, epoch, ttl_ms, expires_at) \
         SELECT gen_random_uuid(), $1::uuid, $2::uuid, r::uuid, 1, 60000, now() + interval '1 minute' \
         FROM unnest(ARRAY[$3, $3, $4]) AS r",
    )
    .bind(&t.id)
    .bind(&c.id)
    .bind(&low.id)
    .bind(&high.id)
    .execute(&s.pool)
    .await
    .expect("insert leases");
    eventually(DEADLINE, "the instance with fewer leases first", || async {
        best().await.as_deref() == Some(high.id.as_str())
    })
    .await;
    // Both of `low`'s leases released in one statement: `low` is back in front.
    sqlx::query(
        "UPDATE workload_leases SET released_at = now(), outcome = 'succeeded' WHERE registration_id = $1::uuid",
    )
    .bind(&low.id)
    .execute(&s.pool)
    .await
    .expect("release");
    eventually(DEADLINE, "the instance without leases first", || async {
        best().await.as_deref() == Some(low.id.as_str())
    })
    .await;
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
    assert_eq!(
        t.client
            .get_configuration(&c.id)
            .await
            .expect("get")
            .current_workload,
        0
    );

    // A crashed caller: the lease expires and the sweep gives the unit back.
    let short = t
        .client
        .acquire_agent(AgentFilter::new(), Some(Duration::from_millis(50)))
        .await
        .expect("acquire");
    assert_eq!(
        t.client
            .get_configuration(&c.id)
            .await
            .expect("get")
            .current_workload,
        1
    );
    eventually(DEADLINE, "the lease expired", || async {
        s.admin
            .cleanup(None, false)
            .await
            .expect("cleanup")
            .leases_expired
            == 1
    })
    .await;
    assert_eq!(
        t.client
            .get_configuration(&c.id)
            .await
            .expect("get")
            .current_workload,
        0
    );
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
    assert_eq!(
        t.client
            .get_configuration(&c.id)
            .await
            .expect("get")
            .current_workload,
        0,
        "given back once"
    );
}

#[tokio::test]
async fn the_view_follows_changes_made_through_another_replica() {
    let s = TestServer::start().await;
    let replica = s.replica().await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    let c = configure(&t, "ide-agent", 2).await;
    // Registered and changed through the replica, read through the first server.
    let key = s
        .admin
        .create_api_key(agentry_client::CreateApiKey::new(pb::Role::Agent).tenant(&t.id))
        .await
        .expect("key")
        .secret;
    let agent_on_replica = common::client(replica.addr, &key).await;
    agent_on_replica
        .register_instance(RegisterInstance::new("i1", "ide-agent"))
        .await
        .expect("register");
    wait_available(
        &t.client,
        AgentFilter::new(),
        "instance registered on the replica",
        |a| a.len() == 1,
    )
    .await;
    agent_on_replica
        .update_health("i1", pb::HealthStatus::Degraded, 0)
        .await
        .expect("degrade");
    wait_available(
        &t.client,
        AgentFilter::new().include_degraded(true),
        "degraded seen",
        |a| a.len() == 1 && close(a[0].2, 0.5 + 0.0 + 0.2 / 3.0),
    )
    .await;
    agent_on_replica
        .deactivate_registration("i1", 0)
        .await
        .expect("deactivate");
    wait_available(
        &t.client,
        AgentFilter::new().include_degraded(true),
        "deactivated instance gone",
        |a| a.is_empty(),
    )
    .await;
    let _ = c;
}

/// GetAvailableAgents answers from entries encoded once per change: each
/// kind of change must show up in the next answers, not only in the score.
#[tokio::test]
async fn available_entries_follow_every_change_of_what_they_show() {
    let s = TestServer::start().await;
    let m = s
        .admin
        .create_manifest(CreateManifest::new("ide-agent", "ide", "IDE", "1.0.0"))
        .await
        .expect("manifest");
    let t = s.tenant("acme").await;
    let c = configure(&t, "ide-agent", 4).await;
    register(&t, "i1", "ide-agent").await;
    let workload = |a: &pb::AvailableAgent| a.configuration.as_ref().map(|c| c.current_workload);
    wait_entry(&t.client, "the instance available", |a| {
        workload(a) == Some(0)
    })
    .await;

    t.client.update_workload(&c.id, 1).await.expect("workload");
    wait_entry(&t.client, "workload in the entry", |a| {
        workload(a) == Some(1)
    })
    .await;

    t.client
        .update_configuration(UpdateConfiguration::new(&c.id).system_prompt("be brief"))
        .await
        .expect("update");
    wait_entry(&t.client, "system prompt in the entry", |a| {
        a.configuration.as_ref().map(|c| c.system_prompt.as_str()) == Some("be brief")
    })
    .await;

    s.admin
        .update_manifest(agentry_client::UpdateManifest::new(&m.id).version("1.1.0"))
        .await
        .expect("manifest update");
    wait_entry(&t.client, "manifest version in the entry", |a| {
        a.version == "1.1.0"
    })
    .await;

    // The instance: its health, then a better instance taking its place.
    t.agent
        .update_health("i1", pb::HealthStatus::Degraded, 0)
        .await
        .expect("degrade");
    wait_entry(&t.client, "instance health in the entry", |a| {
        a.instance.as_ref().map(|i| i.health_status) == Some(pb::HealthStatus::Degraded as i32)
    })
    .await;
    register(&t, "i2", "ide-agent").await;
    wait_entry(&t.client, "the healthy instance in the entry", |a| {
        a.instance.as_ref().map(|i| i.instance_id.as_str()) == Some("i2")
    })
    .await;
}

/// Waits until the best available agent satisfies `pred`.
async fn wait_entry(client: &Client, what: &str, pred: impl Fn(&pb::AvailableAgent) -> bool) {
    eventually(DEADLINE, what, || async {
        let agents = client
            .get_available_agents(AgentFilter::new(), 0)
            .await
            .expect("available");
        agents.first().is_some_and(&pred)
    })
    .await;
}

#[tokio::test]
async fn the_view_applies_a_burst_of_changes_from_one_transaction() {
    let s = TestServer::start().await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    let c = configure(&t, "ide-agent", 10).await;
    for i in 0..200 {
        register(&t, &format!("i{i}"), "ide-agent").await;
    }
    wait_available(
        &t.client,
        AgentFilter::new(),
        "200 healthy instances",
        |a| a.len() == 1 && close(a[0].2, 0.5 + 0.3 + 0.2),
    )
    .await;
    // 199 deactivated and the last one degraded, all in one statement: the
    // feed delivers the notifications together.
    sqlx::query(
        "UPDATE agent_registrations SET \
           registration_status = CASE WHEN instance_id = 'i0' THEN 'active' ELSE 'inactive' END, \
           health_status = CASE WHEN instance_id = 'i0' THEN 'degraded' ELSE 'disconnected' END \
         WHERE configuration_id = $1::uuid",
    )
    .bind(&c.id)
    .execute(&s.pool)
    .await
    .expect("update");
    wait_available(
        &t.client,
        AgentFilter::new().include_degraded(true),
        "one degraded instance left",
        |a| a.len() == 1 && a[0].1 == "i0" && close(a[0].2, 0.5 + 0.0 + 0.2 / 3.0),
    )
    .await;
}

#[tokio::test]
async fn routing_reads_with_a_known_key_need_no_database() {
    let db = common::TestDb::new().await;
    let (proxy, pool) = db.through_proxy().await;
    let s = TestServer::with_pool(pool).await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    configure(&t, "ide-agent", 5).await;
    register(&t, "i1", "ide-agent").await;
    wait_available(&t.client, AgentFilter::new(), "instance available", |a| {
        a.len() == 1
    })
    .await;
    let unused_key = s
        .admin
        .create_api_key(agentry_client::CreateApiKey::new(pb::Role::Tenant).tenant(&t.id))
        .await
        .expect("key")
        .secret;
    let unused = common::client(s.addr, &unused_key).await;

    proxy.cut();
    // Writes need the database...
    assert_eq!(
        code(t.client.acquire_agent(AgentFilter::new(), None).await),
        Code::Unavailable
    );
    // ...a key the server has not checked yet cannot be checked...
    assert_eq!(
        code(unused.get_available_agents(AgentFilter::new(), 0).await),
        Code::Unavailable
    );
    // ...but a key it has checked, and the availability view, are in memory.
    for _ in 0..20 {
        let agents = available(&t.client, AgentFilter::new()).await;
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0].1, "i1");
    }

    proxy.restore();
    unused
        .get_available_agents(AgentFilter::new(), 0)
        .await
        .expect("checked once the database is back");
    drop(db);
}

#[tokio::test]
async fn watch_sends_a_snapshot_then_changes() {
    let s = TestServer::start().await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    let c = configure(&t, "ide-agent", 4).await;
    let mut events = t
        .client
        .watch_available_agents(AgentFilter::new())
        .await
        .expect("watch");
    use pb::availability_event::Event;
    let first = events.message().await.expect("event").expect("snapshot");
    assert!(
        matches!(first.event, Some(Event::Snapshot(ref s)) if s.agents.is_empty()),
        "{first:?}"
    );

    let instance = register(&t, "i1", "ide-agent").await;
    let mut last_revision = first.revision;
    let upserted = next(&mut events).await;
    assert!(upserted.revision > last_revision);
    last_revision = upserted.revision;
    let Some(Event::Upserted(agent)) = upserted.event else {
        panic!("{upserted:?}")
    };
    assert_eq!(agent.instance.expect("instance").id, instance.id);

    t.client.update_workload(&c.id, 2).await.expect("load");
    let changed = next(&mut events).await;
    assert!(changed.revision > last_revision);
    let Some(Event::Upserted(agent)) = changed.event else {
        panic!("{changed:?}")
    };
    assert!(close(agent.score, 0.5 * 0.5 + 0.3 + 0.2 / 3.0));

    t.agent
        .deactivate_registration("i1", 0)
        .await
        .expect("deactivate");
    let removed = next(&mut events).await;
    assert_eq!(removed.event, Some(Event::Removed(instance.id.clone())));
}

#[tokio::test]
async fn a_slow_watcher_gets_a_resync_and_a_fresh_snapshot() {
    let s = TestServer::start_with(|c| c.registry.watch_buffer = 8).await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    // Large events (a 30 KiB prompt), so that HTTP/2 flow control fills up after a few dozen.
    let c = t
        .client
        .create_configuration(
            CreateConfiguration::for_agent("ide-agent")
                .max_workload(1000)
                .system_prompt("p".repeat(30 * 1024)),
        )
        .await
        .expect("configuration");
    register(&t, "i1", "ide-agent").await;
    wait_available(&t.client, AgentFilter::new(), "available", |a| a.len() == 1).await;
    let mut events = t
        .client
        .watch_available_agents(AgentFilter::new())
        .await
        .expect("watch");
    // Do not read while far more changes happen than the buffer and flow control hold.
    for _ in 0..400 {
        t.client.update_workload(&c.id, 1).await.expect("+1");
    }
    use pb::availability_event::Event;
    let mut saw_resync = false;
    loop {
        let event = tokio::time::timeout(DEADLINE, events.message())
            .await
            .expect("in time")
            .expect("event")
            .expect("open");
        match event.event {
            Some(Event::Resync(_)) => saw_resync = true,
            Some(Event::Snapshot(snapshot)) if saw_resync => {
                let workload = snapshot.agents[0]
                    .configuration
                    .as_ref()
                    .expect("configuration")
                    .current_workload;
                if workload == 400 {
                    break;
                }
            }
            Some(Event::Upserted(agent))
                if saw_resync
                    && agent
                        .configuration
                        .as_ref()
                        .expect("configuration")
                        .current_workload
                        == 400 =>
            {
                break;
            }
            _ => {}
        }
    }
    assert!(saw_resync, "the subscriber was told to resync");
}

#[tokio::test]
async fn metrics_of_a_scripted_scenario_are_exact() {
    let s = TestServer::start().await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    let c = configure(&t, "ide-agent", 4).await;
    let r = register(&t, "i1", "ide-agent").await;
    let id = uuid::Uuid::parse_str(&c.id).expect("uuid");
    let tenant = uuid::Uuid::parse_str(&t.id).expect("uuid");
    let reg = uuid::Uuid::parse_str(&r.id).expect("uuid");
    // A scripted hour, written with explicit times relative to now: the
    // instance was healthy from -60 min to -30 min, unknown from -30 to -15, healthy since.
    sqlx::query("DELETE FROM registration_events")
        .execute(&s.pool)
        .await
        .expect("reset");
    for (minutes, kind, health) in [
        (60, "registered", "healthy"),
        (30, "failed", "unknown"),
        (15, "reconnected", "healthy"),
    ] {
        sqlx::query(
            "INSERT INTO registration_events (tenant_id, registration_id, configuration_id, kind, health_status, epoch, at) \
             VALUES ($1, $2, $3, $4, $5, 1, now() - make_interval(mins => $6))",
        )
        .bind(tenant)
        .bind(reg)
        .bind(id)
        .bind(kind)
        .bind(health)
        .bind(minutes)
        .execute(&s.pool)
        .await
        .expect("event");
    }
    // Leases: two concurrent 10-minute leases (succeeded, failed), one cancelled
    // 5-minute lease, one expired lease, and one that started before the hour.
    for (from, to, outcome) in [
        (50, 40, "succeeded"),
        (45, 35, "failed"),
        (20, 15, "cancelled"),
        (10, 5, "expired"),
        (70, 55, "succeeded"),
    ] {
        sqlx::query(
            "INSERT INTO workload_leases (id, tenant_id, configuration_id, registration_id, epoch, ttl_ms, acquired_at, expires_at, released_at, outcome) \
             VALUES ($1, $2, $3, $4, 1, 60000, now() - make_interval(mins => $5), now(), now() - make_interval(mins => $6), $7)",
        )
        .bind(uuid::Uuid::new_v4())
        .bind(tenant)
        .bind(id)
        .bind(reg)
        .bind(from)
        .bind(to)
        .bind(outcome)
        .execute(&s.pool)
        .await
        .expect("lease");
    }
    let m = t
        .client
        .get_agent_metrics(&c.id, Some(Duration::from_secs(3600)))
        .await
        .expect("metrics");
    assert_eq!(
        m.leases_acquired, 4,
        "the lease from -70 min started before the period"
    );
    assert_eq!(
        (
            m.leases_succeeded,
            m.leases_failed,
            m.leases_cancelled,
            m.leases_expired
        ),
        (2, 1, 1, 1)
    );
    assert_eq!(m.peak_workload, 2);
    // Busy minutes in the hour: 5 (-60..-55) + 10 + 10 + 5 + 5 = 35 of 60.
    let tolerance = 0.01; // the request's own "now" differs from the script's by milliseconds
    assert!(
        (m.average_workload - 35.0 / 60.0).abs() < tolerance,
        "{}",
        m.average_workload
    );
    assert!(
        (m.utilization - 35.0 / 60.0 / 4.0).abs() < tolerance,
        "{}",
        m.utilization
    );
    assert!(
        (m.healthy_time_ratio - 45.0 / 60.0).abs() < tolerance,
        "{}",
        m.healthy_time_ratio
    );
    assert_eq!(m.health_transitions, 2);
    assert_eq!(m.failures, 1);
    assert_eq!(m.instances_seen, 1);

    // Empty history and unknown ids answer sensibly.
    manifest(&s, "idle-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let idle = configure(&t, "idle-agent", 2).await;
    let m = t
        .client
        .get_agent_metrics(&idle.id, None)
        .await
        .expect("metrics");
    assert_eq!(
        (m.leases_acquired, m.peak_workload, m.instances_seen),
        (0, 0, 0)
    );
    assert_eq!(
        (m.average_workload, m.utilization, m.healthy_time_ratio),
        (0.0, 0.0, 0.0)
    );
    assert_eq!(
        code(
            t.client
                .get_agent_metrics(&uuid::Uuid::new_v4().to_string(), None)
                .await
        ),
        Code::NotFound
    );
}

#[tokio::test]
async fn routing_is_tenant_scoped_and_validated() {
    let s = TestServer::start().await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let a = s.tenant("acme").await;
    let b = s.tenant("globex").await;
    let c = configure(&a, "ide-agent", 3).await;
    register(&a, "i1", "ide-agent").await;
    wait_available(&a.client, AgentFilter::new(), "a's agent", |x| x.len() == 1).await;
    let lease = a
        .client
        .acquire_agent(AgentFilter::new(), None)
        .await
        .expect("acquire");

    assert!(available(&b.client, AgentFilter::new()).await.is_empty());
    assert_eq!(
        code(b.client.acquire_agent(AgentFilter::new(), None).await),
        Code::ResourceExhausted
    );
    assert_eq!(
        code(b.client.renew_lease(&lease.id, None).await),
        Code::NotFound
    );
    assert_eq!(
        code(
            b.client
                .release_agent(&lease.id, pb::LeaseOutcome::Succeeded)
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(b.client.get_agent_metrics(&c.id, None).await),
        Code::NotFound
    );
    assert_eq!(
        a.client
            .get_configuration(&c.id)
            .await
            .expect("get")
            .current_workload,
        1,
        "b changed nothing"
    );
    let mut watch = b
        .client
        .watch_available_agents(AgentFilter::new())
        .await
        .expect("watch");
    let first = watch.message().await.expect("event").expect("snapshot");
    assert!(
        matches!(first.event, Some(pb::availability_event::Event::Snapshot(ref s)) if s.agents.is_empty())
    );

    // Agents and admins do not route.
    assert_eq!(
        code(a.agent.get_available_agents(AgentFilter::new(), 0).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(s.admin.acquire_agent(AgentFilter::new(), None).await),
        Code::PermissionDenied
    );

    let field = |e: agentry_client::Error| e.field().map(str::to_owned);
    assert_eq!(
        field(
            a.client
                .get_available_agents(AgentFilter::new(), 5000)
                .await
                .expect_err("limit")
        ),
        Some("limit".into())
    );
    assert_eq!(
        field(
            a.client
                .get_available_agents(AgentFilter::new().agent_id("Bad Id"), 0)
                .await
                .expect_err("id")
        ),
        Some("filter.agent_id".into())
    );
    assert_eq!(
        field(
            a.client
                .get_available_agents(AgentFilter::new().agent_type("Bad Type"), 0)
                .await
                .expect_err("type")
        ),
        Some("filter.agent_type".into())
    );
    assert_eq!(
        field(
            a.client
                .get_available_agents(AgentFilter::new().capability(""), 0)
                .await
                .expect_err("cap")
        ),
        Some("filter.capabilities[0]".into())
    );
    assert_eq!(
        field(
            a.client
                .acquire_agent(AgentFilter::new(), Some(Duration::from_secs(7200)))
                .await
                .expect_err("ttl")
        ),
        Some("ttl".into())
    );
    assert_eq!(
        field(
            a.client
                .acquire_agent(AgentFilter::new(), Some(Duration::ZERO))
                .await
                .expect_err("ttl")
        ),
        Some("ttl".into())
    );
    assert_eq!(
        field(a.client.renew_lease("nope", None).await.expect_err("id")),
        Some("lease_id".into())
    );
    assert_eq!(
        field(
            a.client
                .release_agent(&lease.id, pb::LeaseOutcome::Unspecified)
                .await
                .expect_err("outcome")
        ),
        Some("outcome".into())
    );
    assert_eq!(
        field(
            a.client
                .get_agent_metrics(&c.id, Some(Duration::from_secs(365 * 86400)))
                .await
                .expect_err("period")
        ),
        Some("period".into())
    );
    assert_eq!(
        field(a.client.get_agent_metrics("x", None).await.expect_err("id")),
        Some("configuration_id".into())
    );
    assert_eq!(
        a.client
            .get_configuration(&c.id)
            .await
            .expect("get")
            .current_workload,
        1,
        "refused calls changed nothing"
    );
}

#[tokio::test]
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
    let router = router.lease_ttl(Duration::from_millis(300));
    assert!(router.agents().is_empty());
    register(&t, "i1", "ide-agent").await;
    let mut view = router.view();
    tokio::time::timeout(DEADLINE, view.wait_for(|v| v.agents.len() == 1))
        .await
        .expect("in time")
        .expect("view");

    // A long task: the guard renews its lease past several ttls.
    let long = router.acquire().await.expect("acquire");
    assert_eq!(long.instance().expect("instance").instance_id, "i1");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let swept = s.admin.cleanup(None, false).await.expect("cleanup");
    assert_eq!(
        swept.leases_expired, 0,
        "a held lease is renewed, not expired"
    );
    assert!(long.complete(Outcome::Succeeded).await.expect("complete"));

    // Dropped without complete: released as cancelled.
    let dropped = router.acquire().await.expect("acquire");
    let id = uuid::Uuid::parse_str(dropped.id()).expect("uuid");
    assert_eq!(
        t.client
            .get_configuration(&c.id)
            .await
            .expect("get")
            .current_workload,
        1
    );
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
    assert_eq!(
        t.client
            .get_configuration(&c.id)
            .await
            .expect("get")
            .current_workload,
        0
    );
}
