//! Routing reads: available agents and their exact scores, filters, and the
//! in-memory view following every change (through another replica, in bursts,
//! per entry), served without the database.

mod common;

use agentry_client::{
    AgentFilter, Client, Code, CreateManifest, RegisterInstance, UpdateConfiguration, pb,
};
use common::routing::{DEADLINE, available, close, configure, manifest, register, wait_available};
use common::{TestServer, code, eventually};

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
    let sick: uuid::Uuid = sqlx::query_scalar(
        "UPDATE agent_registrations SET health_status = 'unknown' WHERE instance_id = 'sick-agent-1' RETURNING id",
    )
    .fetch_one(&s.pool)
    .await
    .expect("unknown");
    // The feed applies changes in commit order: once the view has the last
    // write, it has every one before it.
    eventually(DEADLINE, "the last write routed", || async {
        let why = t
            .client
            .explain_available_agents(AgentFilter::new(), 0)
            .await
            .expect("explain")
            .explanation
            .expect("explanation");
        why.excluded.iter().any(|e| {
            e.registration_id == sick.to_string()
                && e.reason == pb::ExclusionReason::Unhealthy as i32
        })
    })
    .await;

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

/// Notifications sent while the view's listening connection is down are
/// lost to it: when it is back, the view reloads whole, and answers with
/// what changed meanwhile (straight in the database, and through a replica).
#[tokio::test]
async fn the_view_reloads_after_its_listening_connection_drops() {
    let db = common::TestDb::new().await;
    let (proxy, pool) = db.through_proxy().await;
    let s = TestServer::with_pool(pool).await;
    let replica = TestServer::with_pool(db.pool.clone()).await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    manifest(&s, "chat-bot", "chat", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    let ide = configure(&t, "ide-agent", 5).await;
    configure(&t, "chat-bot", 5).await;
    register(&t, "i1", "ide-agent").await;
    let only =
        |name: &'static str| move |a: &[(String, String, f64)]| a.len() == 1 && a[0].0 == name;
    wait_available(
        &t.client,
        AgentFilter::new(),
        "ide-agent available",
        only("ide-agent"),
    )
    .await;

    proxy.cut();
    eventually(
        DEADLINE,
        "every connection through the proxy closed",
        || async { proxy.connections() == 0 },
    )
    .await;
    sqlx::query("UPDATE agent_configurations SET enabled = false WHERE id = $1::uuid")
        .bind(&ide.id)
        .execute(&db.pool)
        .await
        .expect("disable straight in the database");
    replica
        .clients_of(&t)
        .await
        .agent
        .register_instance(RegisterInstance::new("c1", "chat-bot"))
        .await
        .expect("register through the replica");
    assert_eq!(
        available(&t.client, AgentFilter::new()).await[0].0,
        "ide-agent",
        "the view missed both while its feed was down"
    );

    proxy.restore();
    wait_available(
        &t.client,
        AgentFilter::new(),
        "the reloaded view: ide-agent disabled, chat-bot registered",
        only("chat-bot"),
    )
    .await;
}
