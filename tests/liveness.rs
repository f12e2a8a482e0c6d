//! Liveness by ownership: a replica that holds an instance's stream vouches
//! for it with one lease of its own, so heartbeats cost the database
//! nothing whatever the fleet's size; a replica whose lease runs out loses
//! its instances from routing everywhere, and a live replica takes their
//! rows over without tripping the partition guard; a replica restarted
//! after a crash offers nothing it does not hold.

mod common;

use std::time::Duration;

use agentry_client::{AgentFilter, Client, UpdateConfiguration, pb};
use common::{TestServer, eventually};

const DEADLINE: Duration = Duration::from_secs(30);

/// `n` SDK sessions of `agent_id` on `s`, 500 per client (a connection
/// carries at most `--connection-streams` of them).
async fn fleet(
    s: &TestServer,
    key: &str,
    prefix: &str,
    n: usize,
) -> Vec<agentry_client::AgentSession> {
    let mut sessions = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(500) {
        let client = common::client(s.addr, key).await;
        let mut connects = tokio::task::JoinSet::new();
        for i in chunk * 500..((chunk + 1) * 500).min(n) {
            let (client, name) = (client.clone(), format!("{prefix}-{i}"));
            connects.spawn(async move { client.agent_session(name, "ide-agent").connect().await });
        }
        for session in connects.join_all().await {
            sessions.push(session.expect("connect"));
        }
    }
    sessions
}

/// Waits until `client` is offered an instance of the tenant's one
/// configuration (`offered`), or none.
async fn routable(client: &Client, offered: bool, what: &str) {
    eventually(DEADLINE, what, || async {
        client
            .get_available_agents(AgentFilter::new().include_degraded(true), 0)
            .await
            .map(|agents| agents.iter().any(|a| a.instance.is_some()) == offered)
            .unwrap_or(false)
    })
    .await;
}

/// What reached PostgreSQL over `window` once `n` agents heartbeat every
/// second, after the change feed caught up with their registrations: the
/// statements' texts, the probe of grpc.health.v1 aside.
async fn statements_with(n: usize, window: Duration) -> (Vec<String>, u64) {
    let (ran, beats, _) = fleet_statements(n, window, false).await;
    (ran, beats)
}

/// [`statements_with`], and with `reports`, every agent's load report
/// moving every 500 ms meanwhile (each move passed on); also answers the
/// reports the load writer published.
async fn fleet_statements(n: usize, window: Duration, reports: bool) -> (Vec<String>, u64, u64) {
    let (_db, proxy, s) = common::counted_server(|c| {
        c.registry.heartbeat_interval = Duration::from_secs(1);
        c.registry.replica_lease = Duration::from_secs(3);
        c.limits.tenant_streams = 0;
    })
    .await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let sessions = fleet(&s, &t.agent_key, "inst", n).await;
    // The feed applies in commit order: once this update is routed, every
    // registration above has been read.
    let configuration = sessions[0].current().configuration.expect("configuration");
    t.client
        .update_configuration(UpdateConfiguration::new(&configuration.id).system_prompt("settled"))
        .await
        .expect("update");
    // Generous: 2,000 hellos on a busy 2-core machine.
    eventually(Duration::from_secs(120), "the feed caught up", || async {
        let got = t.client.get_available_agents(AgentFilter::new(), 1).await;
        got.ok()
            .and_then(|a| a.first().and_then(|a| a.configuration.clone()))
            .is_some_and(|c| c.system_prompt == "settled")
    })
    .await;
    let stats = &s.sessions.stats;
    let published = || {
        s.loads
            .stats()
            .changes
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let (mark, beats0, published0) = (
        proxy.statements(),
        stats.heartbeats.load(std::sync::atomic::Ordering::SeqCst),
        published(),
    );
    let started = tokio::time::Instant::now();
    let mut tick = 0u32;
    let mut moves = tokio::time::interval(Duration::from_millis(500));
    while started.elapsed() < window {
        moves.tick().await;
        if reports {
            tick += 1;
            for session in &sessions {
                session.report(pb::LoadReport {
                    utilization: if tick.is_multiple_of(2) { 0.2 } else { 0.8 },
                    ..Default::default()
                });
            }
        }
    }
    let ran = proxy.statements_since(mark);
    let beats = stats.heartbeats.load(std::sync::atomic::Ordering::SeqCst) - beats0;
    let published = published() - published0;
    drop(sessions);
    (ran, beats, published)
}

/// Counted on the wire: 100 and 2,000 streaming agents over the same window
/// cost the same statements (the lease's renewals and take-over checks),
/// and none writes a registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_cost_the_database_the_same_for_100_and_for_2000_agents() {
    let window = Duration::from_secs(3);
    let (small, small_beats) = statements_with(100, window).await;
    let (large, large_beats) = statements_with(2_000, window).await;
    assert!(
        large_beats > 10 * small_beats.max(1) / 2,
        "the large fleet heartbeat: {small_beats} and {large_beats}"
    );
    for ran in [&small, &large] {
        for statement in ran.iter() {
            assert!(
                statement.contains("agentry_replicas"),
                "only the replica's lease is written: {statement}"
            );
        }
    }
    // One renewal and one take-over check per third of the lease: the same
    // for both, give or take the tick at the window's edge.
    let (a, b) = (small.len() as i64, large.len() as i64);
    // At most four ticks of 1 s fit a window of 3 s.
    assert!(
        (a - b).abs() <= 2 && a <= 2 * 4,
        "{a} statements for 100 agents, {b} for 2,000: {small:#?} {large:#?}"
    );
}

/// Counted on the wire: 100 and 1,000 agents whose load reports all move
/// twice a second cost the same statements: the lease's, and one
/// publication of the replica's reports per --load-flush-interval at most;
/// no report writes a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_cost_one_statement_per_replica_and_interval_whatever_the_fleet() {
    let window = Duration::from_secs(3);
    let (small, _, small_reports) = fleet_statements(100, window, true).await;
    let (large, _, large_reports) = fleet_statements(1_000, window, true).await;
    assert!(
        large_reports > 5 * small_reports.max(1) && small_reports >= 100,
        "reports published: {small_reports} for 100 agents, {large_reports} for 1,000"
    );
    let publications = |ran: &[String]| {
        for statement in ran {
            assert!(
                statement.contains("agentry_replicas") || statement.contains("pg_notify"),
                "only the lease is written and the reports published: {statement}"
            );
        }
        ran.iter().filter(|s| s.contains("pg_notify")).count()
    };
    // The default interval, 100 ms: at most about 30 in 3 s, and more than
    // a handful, since the reports move every 500 ms.
    let (a, b) = (publications(&small), publications(&large));
    for n in [a, b] {
        assert!(
            (5..=40).contains(&n),
            "{a} publications for 100 agents, {b} for 1,000"
        );
    }
}

/// Replica `b`'s database goes away (through the proxy): its lease runs out,
/// and replica `a` stops offering `b`'s agents, then takes their rows over
/// (unknown, no holder, `orphaned`), and a sweep deactivates them later
/// without the partition guard taking a replica's death for a departure.
/// When `b` is back it finds its lease taken, and its agents register again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_lease_runs_out_loses_its_instances_everywhere() {
    let lease = Duration::from_millis(1500);
    let a = TestServer::start_with(|c| {
        c.registry.replica_lease = lease;
        c.registry.stale_timeout = Duration::from_millis(500);
    })
    .await;
    let db = a.db.as_ref().expect("db");
    let (proxy, pool) = db.through_proxy().await;
    let b = TestServer::with_pool_and(pool, |c| {
        c.registry.replica_lease = lease;
        c.registry.stale_timeout = Duration::from_millis(500);
        c.registry.heartbeat_interval = Duration::from_millis(100);
    })
    .await;
    a.manifest("ide-agent").await;
    let t = a.tenant("acme").await;
    let sessions = fleet(&b, &t.agent_key, "on-b", 20).await;
    routable(&t.client, true, "a offers b's agents").await;

    proxy.cut();
    // Within the lease (and a tick of the view) of b's last renewal.
    routable(&t.client, false, "a stops offering b's agents").await;
    eventually(DEADLINE, "a takes b's rows over", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM agent_registrations WHERE replica_id IS NULL \
             AND health_status = 'unknown' AND registration_status = 'active'",
        )
        .fetch_one(&a.pool)
        .await
        .expect("count")
            == 20
    })
    .await;
    let orphaned: i64 =
        sqlx::query_scalar("SELECT count(*) FROM registration_events WHERE kind = 'orphaned'")
            .fetch_one(&a.pool)
            .await
            .expect("events");
    assert_eq!(orphaned, 20);
    // Three stale timeouts after b's last renewal, a sweep deactivates them:
    // a replica's death is not the registry's trouble.
    let deactivated = std::sync::atomic::AtomicI64::new(0);
    eventually(DEADLINE, "sweeps deactivate them", || async {
        let report = a.admin.cleanup(None, false).await.expect("cleanup");
        assert!(!report.partition_guard_tripped, "{report:?}");
        deactivated.fetch_add(report.deactivated, std::sync::atomic::Ordering::SeqCst)
            + report.deactivated
            == 20
    })
    .await;

    // b is back: its lease was taken over, so it drains its streams and
    // the agents register again, on b, with rows naming it.
    proxy.restore();
    routable(&t.client, true, "b's agents registered again").await;
    eventually(DEADLINE, "all 20 held by b again", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM agent_registrations r JOIN agentry_replicas p ON p.id = r.replica_id \
             WHERE r.registration_status = 'active' AND r.health_status = 'healthy'",
        )
        .fetch_one(&a.pool)
        .await
        .expect("held")
            == 20
    })
    .await;
    drop(sessions);
}

/// kill -9 of a replica and a restart under its name: the new process ends
/// the dead one's lease at once and offers none of the instances whose
/// streams died with it (before, all of them, until the sweep).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarted_after_a_crash_offers_nothing_it_does_not_hold() {
    let db = common::TestDb::new().await;
    let args = [
        "--database-url",
        db.url.as_str(),
        "--replica-name",
        "crashing",
        "--replica-lease",
        "60s",
        "--heartbeat-interval",
        "100ms",
    ];
    let (_, secret) = agentry_server::admin::store::create_key(
        &db.pool,
        &agentry_server::audit::Actor::OPERATOR,
        agentry_server::pb::Role::Admin,
        None,
        "test admin",
    )
    .await
    .expect("admin key");
    let first = common::binary::ServerProcess::start(&args).await;
    let admin = common::client(first.addr, &secret).await;
    admin
        .create_manifest(agentry_client::CreateManifest::new(
            "ide-agent",
            "ide",
            "IDE",
            "1.0.0",
        ))
        .await
        .expect("manifest");
    let t = common::tenant_of(&admin, first.addr, "acme").await;
    let mut sessions = Vec::new();
    for i in 0..5 {
        sessions.push(
            t.agent
                .agent_session(format!("i{i}"), "ide-agent")
                .connect()
                .await
                .expect("connect"),
        );
    }
    routable(&t.client, true, "the agents are offered").await;

    // kill -9, and the agents die with it: nobody reconnects.
    drop(first);
    drop(sessions);
    let second = common::binary::ServerProcess::start(&args).await;
    let fresh = common::client(second.addr, &t.tenant_key).await;
    let offered = fresh
        .get_available_agents(AgentFilter::new().include_degraded(true), 0)
        .await
        .expect("available");
    assert!(
        offered.iter().all(|a| a.instance.is_none()),
        "instances whose streams died are offered: {offered:?}"
    );
    let orphaned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM agent_registrations WHERE replica_id IS NULL AND health_status = 'unknown'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("count");
    assert_eq!(orphaned, 5, "the restart took the dead process's rows over");
}

/// After an outage the row of a held instance may look silent for an hour:
/// the replica holding its stream vouches for it, so a sweep leaves it be,
/// and GetRegistration reads it as heard from at the holder's last renewal.
#[tokio::test]
async fn a_held_instance_is_never_swept_and_reads_as_heard_from_at_its_holders_renewal() {
    let s = TestServer::start_with(|c| c.registry.replica_lease = Duration::from_millis(900)).await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let session = t
        .agent
        .agent_session("inst-1", "ide-agent")
        .connect()
        .await
        .expect("connect");
    sqlx::query(
        "UPDATE agent_registrations SET last_health_check = now() - interval '1 hour' \
         WHERE instance_id = 'inst-1'",
    )
    .execute(&s.pool)
    .await
    .expect("silence the row");
    let report = s.admin.cleanup(None, true).await.expect("cleanup");
    assert_eq!(
        (report.marked_unknown, report.deactivated),
        (0, 0),
        "{report:?}"
    );
    let registration = t
        .client
        .get_registration_by_instance_id("inst-1")
        .await
        .expect("get");
    let heard = registration.last_health_check.expect("last health check");
    let age = chrono::Utc::now().timestamp() - heard.seconds;
    assert!(
        age <= 2,
        "heard from {age} s ago, as of the holder's renewal"
    );
    drop(session);
}

/// A fleet that connects at once, larger than the hello queue: the
/// registrations past the queue wait for room on their open streams (the
/// writer's statement held meanwhile), and every one is welcomed, none
/// turned away to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_past_the_hello_queue_wait_for_room_instead_of_being_turned_away() {
    let (_db, proxy, s) = common::counted_server(|c| c.registry.hello_queue = 4).await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    proxy.hold_statements("agentry_register_batch");
    let channel = common::raw::channel(s.url()).await;
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..40 {
        let (channel, key) = (channel.clone(), t.agent_key.clone());
        opening.spawn(async move {
            let (tx, stream) =
                common::stream::raw_stream_on(channel, &key, &format!("inst-{i}")).await;
            let mut stream = stream.expect("welcomed, not turned away");
            common::stream::welcome(&mut stream).await;
            (tx, stream)
        });
    }
    eventually(
        DEADLINE,
        "registrations waiting past the full queue",
        || async {
            s.hellos
                .stats
                .waited
                .load(std::sync::atomic::Ordering::SeqCst)
                >= 20
        },
    )
    .await;
    proxy.release_statements();
    let opened = opening.join_all().await;
    assert_eq!(opened.len(), 40);
    assert_eq!(
        s.hellos
            .stats
            .turned_away
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// Past --hello-wait, a registration that found the queue full is turned
/// away: UNAVAILABLE with a retry pushback, never a pool time-out; once the
/// database answers again, the same instances register.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_that_waits_past_the_hello_wait_is_turned_away_with_a_pushback() {
    let (_db, proxy, s) = common::counted_server(|c| {
        c.registry.hello_queue = 2;
        c.registry.hello_wait = Duration::from_millis(300);
    })
    .await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    proxy.hold_statements("agentry_register_batch");
    let channel = common::raw::channel(s.url()).await;
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (channel, key) = (channel.clone(), t.agent_key.clone());
        opening.spawn(async move {
            common::stream::raw_stream_on(channel, &key, &format!("inst-{i}")).await
        });
    }
    let turned_away = || {
        s.hellos
            .stats
            .turned_away
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    eventually(DEADLINE, "registrations turned away", || async {
        turned_away() >= 10
    })
    .await;
    proxy.release_statements();
    let (mut refused, mut welcomed) = (0, 0);
    for (_tx, opened) in opening.join_all().await {
        match opened {
            Ok(mut stream) => {
                common::stream::welcome(&mut stream).await;
                welcomed += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(
                    status.metadata().get("grpc-retry-pushback-ms").is_some(),
                    "{status:?}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!(refused as u64, turned_away());
    assert_eq!(welcomed + refused, 20);
    // The turned-away come back and are welcomed.
    for i in 0..20 {
        let (_tx, stream) =
            common::stream::raw_stream_on(channel.clone(), &t.agent_key, &format!("inst-{i}"))
                .await;
        common::stream::welcome(&mut stream.expect("welcomed on retry")).await;
    }
}

/// The holder judges silence: a stream that heartbeats past several stale
/// timeouts lives on, and once it stops it is ended DEADLINE_EXCEEDED after
/// the stale timeout, its row unknown with one more failure.
#[tokio::test]
async fn the_holder_ends_a_stream_that_stops_heartbeating() {
    use agentry_client::pb;
    let stale = Duration::from_millis(600);
    let s = TestServer::start_with(|c| c.registry.stale_timeout = stale).await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let (tx, stream) = common::stream::raw_stream(
        &s,
        &t.agent_key,
        vec![common::stream::hello("inst-1", "ide-agent")],
    )
    .await;
    let mut stream = stream.expect("stream");
    let epoch = common::stream::welcome(&mut stream).await.epoch;
    // Three stale timeouts of heartbeats, each acked: the stream lives on.
    let mut beat = tokio::time::interval(stale / 6);
    for sequence in 1..=18 {
        beat.tick().await;
        tx.send(common::stream::heartbeat(
            sequence,
            pb::HealthStatus::Healthy,
            epoch,
        ))
        .await
        .expect("send");
        let ack = tokio::time::timeout(DEADLINE, stream.message())
            .await
            .expect("in time")
            .expect("an ack, not the end");
        assert!(ack.is_some(), "the stream ended while heartbeating");
    }
    // Silence: the holder ends it.
    let end = common::stream::end_of(&mut stream, DEADLINE).await;
    assert_eq!(end.code(), tonic::Code::DeadlineExceeded, "{end:?}");
    eventually(DEADLINE, "unknown with one more failure", || async {
        sqlx::query_as::<_, (String, i32, Option<uuid::Uuid>)>(
            "SELECT health_status, failure_count, replica_id FROM agent_registrations",
        )
        .fetch_one(&s.pool)
        .await
        .expect("row")
            == ("unknown".into(), 1, None)
    })
    .await;
    assert_eq!(
        s.sessions
            .stats
            .silenced
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    drop(tx);
}
