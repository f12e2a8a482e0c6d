//! Registration unary RPCs: idempotent registration under contention,
//! health reports with epoch fencing, deactivation, listing, tenant isolation,
//! validation, and the stale sweep with its partition guard.

mod common;

use std::time::Duration;

use agentry_client::{Code, ListRegistrations, RegisterInstance, pb};
use common::{TestServer, code, eventually};

async fn age(s: &TestServer, instance_id: &str, seconds: i64) {
    sqlx::query("UPDATE agent_registrations SET last_health_check = now() - make_interval(secs => $2) WHERE instance_id = $1")
        .bind(instance_id)
        .bind(seconds as f64)
        .execute(&s.pool)
        .await
        .expect("age");
}

async fn state(s: &TestServer, instance_id: &str) -> (String, String, i32) {
    sqlx::query_as("SELECT registration_status, health_status, failure_count FROM agent_registrations WHERE instance_id = $1")
        .bind(instance_id)
        .fetch_one(&s.pool)
        .await
        .expect("row")
}

#[tokio::test]
async fn fifty_concurrent_registrations_make_one_row() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let agent = t.agent.clone();
            tokio::spawn(async move {
                agent
                    .register_instance(
                        RegisterInstance::new("ws_conn_abc123", "ide-agent")
                            .name(format!("try {i}")),
                    )
                    .await
            })
        })
        .collect();
    let mut epochs = Vec::new();
    let mut created = 0;
    for call in calls {
        let response = call.await.expect("join").expect("register");
        created += usize::from(response.created);
        epochs.push(response.registration.expect("registration").epoch);
    }
    epochs.sort_unstable();
    assert_eq!(
        epochs,
        (1..=50).collect::<Vec<i64>>(),
        "each call took its own epoch"
    );
    assert_eq!(created, 1);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM agent_registrations")
        .fetch_one(&s.pool)
        .await
        .expect("count");
    assert_eq!(rows, 1);
    let configs: Vec<(bool, i32)> =
        sqlx::query_as("SELECT enabled, max_workload FROM agent_configurations")
            .fetch_all(&s.pool)
            .await
            .expect("configurations");
    assert_eq!(
        configs,
        [(true, 10)],
        "the configuration was created once, with defaults"
    );

    let again = t
        .agent
        .register_instance(RegisterInstance::new("ws_conn_abc123", "ide-agent").name("VS Code"))
        .await
        .expect("register");
    let r = again.registration.expect("registration");
    assert!(!again.created);
    assert_eq!((r.name.as_str(), r.epoch), ("VS Code", 51));
    assert!(
        r.last_health_check.is_some()
            && r.activation_date.is_some()
            && r.deactivation_date.is_none()
    );
}

#[tokio::test]
async fn unknown_agents_are_not_found_unless_the_server_allows_creating_them() {
    let s = TestServer::start().await;
    let t = s.tenant("acme").await;
    let err = t
        .agent
        .register_instance(RegisterInstance::new("i", "mystery-agent"))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Some(Code::NotFound));
    assert!(err.to_string().contains("mystery-agent"), "{err}");

    let open = TestServer::start_with(|c| c.registry.create_unknown_manifests = true).await;
    let t = open.tenant("acme").await;
    t.agent
        .register_instance(RegisterInstance::new("i", "mystery-agent"))
        .await
        .expect("created on the fly");
    open.admin
        .get_manifest_by_agent_id("mystery-agent")
        .await
        .expect("placeholder manifest");
}

#[tokio::test]
async fn health_reports_are_fenced_and_refused_when_inactive() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let first = t
        .agent
        .register_instance(RegisterInstance::new("i", "ide-agent"))
        .await
        .expect("register");
    let old_epoch = first.registration.expect("registration").epoch;
    let second = t
        .agent
        .register_instance(RegisterInstance::new("i", "ide-agent"))
        .await
        .expect("register");
    let epoch = second.registration.expect("registration").epoch;

    assert_eq!(
        code(
            t.agent
                .update_health("i", pb::HealthStatus::Degraded, old_epoch)
                .await
        ),
        Code::Aborted
    );
    let r = t
        .agent
        .update_health("i", pb::HealthStatus::Degraded, epoch)
        .await
        .expect("degraded");
    assert_eq!(r.health_status(), pb::HealthStatus::Degraded);
    sqlx::query("UPDATE agent_registrations SET failure_count = 3")
        .execute(&s.pool)
        .await
        .expect("failures");
    let r = t
        .agent
        .update_health("i", pb::HealthStatus::Healthy, 0)
        .await
        .expect("healthy");
    assert_eq!(
        (r.health_status(), r.failure_count),
        (pb::HealthStatus::Healthy, 0),
        "healthy resets failures"
    );

    for bad in [
        pb::HealthStatus::Unspecified,
        pb::HealthStatus::Unknown,
        pb::HealthStatus::Disconnected,
    ] {
        let err = t
            .agent
            .update_health("i", bad, 0)
            .await
            .expect_err("bad health");
        assert_eq!(err.field(), Some("health_status"), "{bad:?}");
    }
    assert_eq!(
        t.agent
            .update_health("i", pb::HealthStatus::Healthy, -1)
            .await
            .expect_err("epoch")
            .field(),
        Some("epoch")
    );

    assert_eq!(
        code(t.agent.deactivate_registration("i", old_epoch).await),
        Code::Aborted
    );
    assert_eq!(
        state(&s, "i").await.0,
        "active",
        "a stale deactivation changed nothing"
    );
    let d = t
        .agent
        .deactivate_registration("i", epoch)
        .await
        .expect("deactivate");
    assert_eq!(
        (d.registration_status(), d.health_status()),
        (
            pb::RegistrationStatus::Inactive,
            pb::HealthStatus::Disconnected
        )
    );
    assert!(d.deactivation_date.is_some());
    assert_eq!(
        code(
            t.agent
                .update_health("i", pb::HealthStatus::Healthy, 0)
                .await
        ),
        Code::FailedPrecondition
    );
    assert_eq!(
        state(&s, "i").await.1,
        "disconnected",
        "not healthy-but-inactive"
    );

    let back = t
        .agent
        .register_instance(RegisterInstance::new("i", "ide-agent"))
        .await
        .expect("register again");
    let r = back.registration.expect("registration");
    assert_eq!(r.registration_status(), pb::RegistrationStatus::Active);
    assert!(r.deactivation_date.is_none());
    assert!(
        r.activation_date.expect("activation").seconds
            >= d.deactivation_date.expect("deactivation").seconds
    );
}

#[tokio::test]
async fn listing_filters_and_pages() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    s.manifest("chat-bot").await;
    let t = s.tenant("acme").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let agent = if i < 3 { "ide-agent" } else { "chat-bot" };
        let r = t
            .agent
            .register_instance(RegisterInstance::new(format!("i{i}"), agent))
            .await
            .expect("register");
        ids.push(r.registration.expect("registration").id);
    }
    t.agent
        .deactivate_registration("i4", 0)
        .await
        .expect("deactivate");
    t.agent
        .update_health("i1", pb::HealthStatus::Degraded, 0)
        .await
        .expect("degrade");

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = t
            .client
            .list_registrations(ListRegistrations::new().page_size(2).page_token(token))
            .await
            .expect("page");
        seen.extend(page.registrations.into_iter().map(|r| r.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ids, "every registration once, oldest first");
    let count = |req: ListRegistrations| {
        let client = t.client.clone();
        async move {
            client
                .list_registrations(req)
                .await
                .expect("list")
                .registrations
                .len()
        }
    };
    assert_eq!(
        count(ListRegistrations::new().status(pb::RegistrationStatus::Active)).await,
        4
    );
    assert_eq!(
        count(ListRegistrations::new().health(pb::HealthStatus::Degraded)).await,
        1
    );
    assert_eq!(
        count(ListRegistrations::new().agent_id("chat-bot")).await,
        2
    );
    let by_id = t.client.get_registration(&ids[0]).await.expect("get");
    assert_eq!(
        t.client
            .get_registration_by_instance_id("i0")
            .await
            .expect("get"),
        by_id
    );
    assert_eq!(
        count(ListRegistrations::new().configuration_id(&by_id.configuration_id)).await,
        3
    );
    let bad = t
        .client
        .list_registrations(ListRegistrations::new().page_token("nope"))
        .await;
    assert_eq!(bad.expect_err("token").field(), Some("page_token"));
}

#[tokio::test]
async fn tenants_never_see_or_touch_each_others_instances() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let a = s.tenant("acme").await;
    let b = s.tenant("globex").await;
    let ra = a
        .agent
        .register_instance(RegisterInstance::new("same", "ide-agent"))
        .await
        .expect("a")
        .registration
        .expect("a");
    for who in [&b.client, &b.agent] {
        assert_eq!(code(who.get_registration(&ra.id).await), Code::NotFound);
        assert_eq!(
            code(who.get_registration_by_instance_id("same").await),
            Code::NotFound
        );
        assert_eq!(
            code(
                who.update_health("same", pb::HealthStatus::Degraded, 0)
                    .await
            ),
            Code::NotFound
        );
        assert_eq!(
            code(who.deactivate_registration("same", 0).await),
            Code::NotFound
        );
        assert!(
            who.list_registrations(ListRegistrations::new())
                .await
                .expect("list")
                .registrations
                .is_empty()
        );
    }
    let rb = b
        .agent
        .register_instance(RegisterInstance::new("same", "ide-agent"))
        .await
        .expect("b")
        .registration
        .expect("b");
    assert_ne!(ra.id, rb.id, "no collision, no takeover");
    let after = a.client.get_registration(&ra.id).await.expect("a's");
    assert_eq!(
        (after.epoch, after.health_status()),
        (1, pb::HealthStatus::Healthy)
    );
    assert_eq!(
        s.admin
            .get_registration(&ra.id)
            .await
            .expect("admin reads any tenant")
            .id,
        ra.id
    );
    assert_eq!(
        code(
            s.admin
                .register_instance(RegisterInstance::new("x", "ide-agent"))
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(a.client.cleanup(None, false).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(a.agent.cleanup(None, false).await),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn every_invalid_registration_field_is_named_and_nothing_is_written() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let cases: Vec<(&str, RegisterInstance)> = vec![
        ("instance_id", RegisterInstance::new("", "ide-agent")),
        (
            "instance_id",
            RegisterInstance::new("x".repeat(257), "ide-agent"),
        ),
        ("instance_id", RegisterInstance::new("bad\nid", "ide-agent")),
        ("agent_id", RegisterInstance::new("i", "Bad Agent")),
        (
            "capacity",
            RegisterInstance::new("i", "ide-agent").capacity(0),
        ),
        (
            "name",
            RegisterInstance::new("i", "ide-agent").name("n".repeat(300)),
        ),
        (
            "connection_details",
            RegisterInstance::new("i", "ide-agent")
                .connection_details(serde_json::json!({"x": "y".repeat(70_000)})),
        ),
    ];
    for (field, request) in cases {
        let err = t.agent.register_instance(request).await.expect_err(field);
        assert_eq!(
            (err.code(), err.field()),
            (Some(Code::InvalidArgument), Some(field)),
            "{err:?}"
        );
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM agent_registrations")
        .fetch_one(&s.pool)
        .await
        .expect("count");
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn cleanup_marks_unknown_then_deactivates_and_records_events() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    for i in ["fresh", "quiet", "gone"] {
        t.agent
            .register_instance(RegisterInstance::new(i, "ide-agent"))
            .await
            .expect("register");
    }
    age(&s, "quiet", 90).await; // past T = 60 s
    age(&s, "gone", 200).await; // past 3T
    let report = s
        .admin
        .cleanup(Some(Duration::from_secs(60)), false)
        .await
        .expect("cleanup");
    assert_eq!(
        (
            report.marked_unknown,
            report.deactivated,
            report.partition_guard_tripped
        ),
        (2, 1, false)
    );
    assert_eq!(
        state(&s, "fresh").await,
        ("active".into(), "healthy".into(), 0)
    );
    assert_eq!(
        state(&s, "quiet").await,
        ("active".into(), "unknown".into(), 1)
    );
    assert_eq!(
        state(&s, "gone").await,
        ("inactive".into(), "disconnected".into(), 1)
    );
    let again = s
        .admin
        .cleanup(Some(Duration::from_secs(60)), false)
        .await
        .expect("cleanup");
    assert_eq!(
        (again.marked_unknown, again.deactivated),
        (0, 0),
        "a sweep is idempotent"
    );
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT kind FROM registration_events WHERE kind IN ('swept', 'deactivated') ORDER BY id",
    )
    .fetch_all(&s.pool)
    .await
    .expect("events");
    assert_eq!(kinds, ["swept", "swept", "deactivated"]);
    let bad = s
        .admin
        .cleanup(Some(Duration::ZERO), false)
        .await
        .expect_err("zero threshold");
    assert_eq!(bad.field(), Some("stale_threshold"));
}

/// Four instances of `fleet`, three of them silent for 1,000 s; six healthy
/// instances of `solo` and one silent: the overall share stays below the
/// guard's, the fleet tenant's does not.
async fn mass_silence(s: &TestServer) {
    s.manifest("ide-agent").await;
    let fleet = s.tenant("fleet").await;
    let solo = s.tenant("solo").await;
    for i in 0..4 {
        fleet
            .agent
            .register_instance(RegisterInstance::new(format!("f{i}"), "ide-agent"))
            .await
            .expect("register");
    }
    for i in 0..6 {
        solo.agent
            .register_instance(RegisterInstance::new(format!("s{i}"), "ide-agent"))
            .await
            .expect("register");
    }
    solo.agent
        .register_instance(RegisterInstance::new("lonely", "ide-agent"))
        .await
        .expect("register");
    for i in ["f0", "f1", "f2", "lonely"] {
        age(s, i, 1000).await;
    }
}

/// Nothing points at the registry (no outage seen, no streams lost): a
/// mass silence is a fleet that left, and goes at once.
#[tokio::test]
async fn a_mass_silence_without_a_cause_on_our_side_is_deactivated_at_once() {
    let s = TestServer::start().await;
    mass_silence(&s).await;
    let report = s
        .admin
        .cleanup(Some(Duration::from_secs(60)), false)
        .await
        .expect("cleanup");
    assert!(!report.partition_guard_tripped);
    assert_eq!(report.deactivated, 4);
    for i in ["f0", "f1", "f2", "lonely"] {
        assert_eq!(state(&s, i).await.0, "inactive", "{i}");
    }
}

/// After this replica saw its database go away, the same mass silence is
/// held back, per tenant: the fleet tenant's three stay active (unknown),
/// the solo tenant's single silent one goes; the operator can override.
#[tokio::test]
async fn after_a_database_outage_the_partition_guard_holds_back_mass_deactivation() {
    let db = common::TestDb::new().await;
    let (proxy, pool) = db.through_proxy().await;
    let s = TestServer::with_pool(pool).await;
    mass_silence(&s).await;
    proxy.cut();
    let failed = s.admin.cleanup(Some(Duration::from_secs(60)), false).await;
    assert_eq!(
        code(failed),
        Code::Unavailable,
        "the sweep fails while the database is away"
    );
    proxy.restore();
    let report = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(r) = s.admin.cleanup(Some(Duration::from_secs(60)), false).await {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("a sweep once the database is back");
    assert!(report.partition_guard_tripped);
    assert_eq!(
        report.deactivated, 1,
        "only the solo tenant's single silent instance"
    );
    assert_eq!(state(&s, "lonely").await.0, "inactive");
    for i in 0..3 {
        assert_eq!(
            state(&s, &format!("f{i}")).await,
            ("active".into(), "unknown".into(), 1),
            "held back"
        );
    }
    let forced = s
        .admin
        .cleanup(Some(Duration::from_secs(60)), true)
        .await
        .expect("cleanup");
    assert_eq!(forced.deactivated, 3, "the operator overrides the guard");
}

#[tokio::test]
async fn the_background_sweeper_runs_by_itself() {
    let s = TestServer::start_with(|c| {
        c.registry.sweep_interval = Duration::from_millis(100);
        c.registry.stale_timeout = Duration::from_millis(300);
    })
    .await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    t.agent
        .register_instance(RegisterInstance::new("silent", "ide-agent"))
        .await
        .expect("register");
    eventually(Duration::from_secs(10), "unknown", || async {
        state(&s, "silent").await.1 == "unknown"
    })
    .await;
    eventually(Duration::from_secs(10), "inactive", || async {
        state(&s, "silent").await.0 == "inactive"
    })
    .await;
}

#[tokio::test]
async fn retention_deletes_old_inactive_registrations() {
    let s = TestServer::start_with(|c| {
        c.registry.registration_retention = Some(Duration::from_secs(60))
    })
    .await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    t.agent
        .register_instance(RegisterInstance::new("old", "ide-agent"))
        .await
        .expect("register");
    t.agent
        .deactivate_registration("old", 0)
        .await
        .expect("deactivate");
    let kept = s.admin.cleanup(None, false).await.expect("cleanup");
    assert_eq!(kept.deleted, 0, "recently deactivated: kept");
    sqlx::query("UPDATE agent_registrations SET deactivation_date = now() - interval '1 hour'")
        .execute(&s.pool)
        .await
        .expect("age");
    assert_eq!(
        s.admin.cleanup(None, false).await.expect("cleanup").deleted,
        1
    );
}

/// Key of the sweep's advisory lock: `SWEEP_LOCK` in
/// server/registrations/sweeper.rs ("agentry" in ASCII).
const SWEEP_LOCK: i64 = 0x0061_6765_6e74_7279;

/// Registers `count` instances and makes them silent past T = 60 s.
async fn stale_instances(s: &TestServer, count: usize) -> Vec<String> {
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let mut ids = Vec::new();
    for i in 0..count {
        let id = format!("stale-{i}");
        t.agent
            .register_instance(RegisterInstance::new(&id, "ide-agent"))
            .await
            .expect("register");
        age(s, &id, 90).await;
        ids.push(id);
    }
    ids
}

async fn swept_events(s: &TestServer) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM registration_events WHERE kind = 'swept'")
        .fetch_one(&s.pool)
        .await
        .expect("events")
}

/// A sweep runs under an advisory lock: while another holder (a sweep on
/// another replica) has it, `Cleanup` skips its turn and changes nothing;
/// once released, the next one sweeps.
#[tokio::test]
async fn cleanup_skips_while_the_sweep_lock_is_held_elsewhere() {
    let s = TestServer::start().await;
    let ids = stale_instances(&s, 3).await;
    let mut other = s.pool.begin().await.expect("begin");
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SWEEP_LOCK)
        .execute(&mut *other)
        .await
        .expect("take the sweep lock");
    let skipped = s
        .admin
        .cleanup(Some(Duration::from_secs(60)), false)
        .await
        .expect("cleanup");
    assert_eq!(
        (
            skipped.marked_unknown,
            skipped.deactivated,
            skipped.leases_expired
        ),
        (0, 0, 0),
        "the sweep skipped its turn"
    );
    for id in &ids {
        assert_eq!(state(&s, id).await, ("active".into(), "healthy".into(), 0));
    }
    other.commit().await.expect("release the sweep lock");
    let swept = s
        .admin
        .cleanup(Some(Duration::from_secs(60)), false)
        .await
        .expect("cleanup");
    assert_eq!(swept.marked_unknown, 3);
    for id in &ids {
        assert_eq!(state(&s, id).await, ("active".into(), "unknown".into(), 1));
    }
}

/// Many Cleanups at once on two replicas: exactly one sweep marks the stale
/// instances, once each.
#[tokio::test]
async fn concurrent_cleanups_on_two_replicas_sweep_each_instance_once() {
    let s = TestServer::start().await;
    let replica = s.replica().await;
    let ids = stale_instances(&s, 10).await;
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let admin = if i % 2 == 0 { &s.admin } else { &replica.admin }.clone();
            tokio::spawn(async move { admin.cleanup(Some(Duration::from_secs(60)), false).await })
        })
        .collect();
    let mut marked = Vec::new();
    for call in calls {
        marked.push(call.await.expect("join").expect("cleanup").marked_unknown);
    }
    assert_eq!(marked.iter().sum::<i64>(), 10, "{marked:?}");
    assert_eq!(
        marked.iter().filter(|m| **m > 0).count(),
        1,
        "one sweep did it all: {marked:?}"
    );
    for id in &ids {
        assert_eq!(
            state(&s, id).await,
            ("active".into(), "unknown".into(), 1),
            "one failure counted"
        );
    }
    assert_eq!(swept_events(&s).await, 10);
}
