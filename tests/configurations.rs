//! Configurations through the SDK: CRUD, validation, pagination, tenant
//! isolation and the atomic workload counter.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use agentry_client::{Code, CreateConfiguration, ListConfigurations, UpdateConfiguration, pb};
use common::{TestServer, code};

#[tokio::test]
async fn crud_roundtrip_with_defaults() {
    let s = TestServer::start().await;
    let m = s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let model = uuid::Uuid::new_v4().to_string();
    let c = t
        .client
        .create_configuration(
            CreateConfiguration::for_agent("ide-agent")
                .system_prompt("You are a helpful coding assistant for ACME Corp")
                .settings(serde_json::json!({"allowed_directories": ["/workspace"]}))
                .temperature(0.2)
                .max_tokens(4096)
                .model_id(&model),
        )
        .await
        .expect("create");
    assert_eq!(c.tenant_id, t.id);
    assert_eq!(c.manifest_id, m.id);
    assert_eq!(c.agent_id, "ide-agent");
    assert_eq!(c.name, "IDE Agent", "name defaults to the manifest's");
    assert_eq!(c.enabled, Some(true));
    assert_eq!(c.max_workload, 10);
    assert_eq!(c.current_workload, 0);
    assert_eq!(c.temperature, Some(0.2));
    assert_eq!(c.max_tokens, Some(4096));
    assert_eq!(c.model_id, model);

    assert_eq!(t.client.get_configuration(&c.id).await.expect("get"), c);

    let u = t
        .client
        .update_configuration(
            UpdateConfiguration::new(&c.id)
                .enabled(false)
                .max_workload(3)
                .clear_temperature(),
        )
        .await
        .expect("update");
    assert_eq!(u.enabled, Some(false));
    assert_eq!(u.max_workload, 3);
    assert_eq!(u.temperature, None);
    assert_eq!(u.max_tokens, Some(4096), "fields outside the mask stay");
    assert_eq!(u.system_prompt, c.system_prompt);

    t.client.delete_configuration(&c.id).await.expect("delete");
    assert_eq!(
        code(t.client.get_configuration(&c.id).await),
        Code::NotFound
    );
    let by_manifest_id = t
        .client
        .create_configuration(CreateConfiguration::for_manifest(&m.id))
        .await;
    assert!(
        by_manifest_id.is_ok(),
        "created again after delete, by manifest id"
    );
}

#[tokio::test]
async fn one_configuration_per_tenant_and_manifest() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let a = s.tenant("acme").await;
    let b = s.tenant("globex").await;
    a.client
        .create_configuration(CreateConfiguration::for_agent("ide-agent"))
        .await
        .expect("first");
    let second = a
        .client
        .create_configuration(CreateConfiguration::for_agent("ide-agent"))
        .await;
    assert_eq!(code(second), Code::AlreadyExists);
    b.client
        .create_configuration(CreateConfiguration::for_agent("ide-agent"))
        .await
        .expect("other tenant is free");
    let missing = a
        .client
        .create_configuration(CreateConfiguration::for_agent("no-such-agent"))
        .await;
    assert_eq!(code(missing), Code::NotFound);
}

#[tokio::test]
async fn every_invalid_field_is_named() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let base = || CreateConfiguration::for_agent("ide-agent");
    let cases: Vec<(&str, pb::CreateConfigurationRequest)> = vec![
        ("configuration.temperature", base().temperature(2.5).into()),
        ("configuration.temperature", base().temperature(-0.1).into()),
        (
            "configuration.temperature",
            base().temperature(f64::NAN).into(),
        ),
        ("configuration.max_tokens", base().max_tokens(0).into()),
        ("configuration.max_workload", base().max_workload(-1).into()),
        (
            "configuration.max_workload",
            base().max_workload(1_000_000).into(),
        ),
        ("configuration.model_id", base().model_id("gpt-4").into()),
        ("configuration.name", base().name("n".repeat(300)).into()),
        (
            "configuration.system_prompt",
            base().system_prompt("p".repeat(40 * 1024)).into(),
        ),
        (
            "configuration.configuration",
            base()
                .settings(serde_json::json!({"x": "y".repeat(70 * 1024)}))
                .into(),
        ),
        (
            "agent_id",
            CreateConfiguration::for_agent("Bad Agent").into(),
        ),
        (
            "manifest_id",
            CreateConfiguration::for_manifest("nope").into(),
        ),
        ("manifest", pb::CreateConfigurationRequest::default()),
    ];
    for (field, request) in cases {
        let err = t
            .client
            .create_configuration(request)
            .await
            .expect_err(field);
        assert_eq!(err.code(), Some(Code::InvalidArgument), "{field}: {err:?}");
        assert_eq!(err.field(), Some(field), "{err:?}");
    }
    let listed = t
        .client
        .list_configurations(ListConfigurations::new())
        .await
        .expect("list");
    assert!(
        listed.configurations.is_empty(),
        "nothing half-written stays"
    );

    let c = t.client.create_configuration(base()).await.expect("create");
    let bad: Vec<(&str, pb::UpdateConfigurationRequest)> = vec![
        (
            "configuration.max_workload",
            UpdateConfiguration::new(&c.id).max_workload(0).into(),
        ),
        (
            "configuration.temperature",
            UpdateConfiguration::new(&c.id).temperature(9.0).into(),
        ),
        ("update_mask", UpdateConfiguration::new(&c.id).into()),
        (
            "configuration.id",
            UpdateConfiguration::new("x").enabled(true).into(),
        ),
    ];
    for (field, request) in bad {
        let err = t
            .client
            .update_configuration(request)
            .await
            .expect_err(field);
        assert_eq!(err.field(), Some(field), "{err:?}");
    }
    assert_eq!(
        t.client.get_configuration(&c.id).await.expect("get"),
        c,
        "failed updates change nothing"
    );
    for delta in [0, 200_000, -200_000] {
        let err = t
            .client
            .update_workload(&c.id, delta)
            .await
            .expect_err("bad delta");
        assert_eq!(err.field(), Some("delta"), "{delta}: {err:?}");
    }
}

#[tokio::test]
async fn pagination_and_filters() {
    let s = TestServer::start().await;
    let t = s.tenant("acme").await;
    let mut created = Vec::new();
    for i in 0..7 {
        s.manifest(&format!("agent-{i}")).await;
        let c = t
            .client
            .create_configuration(
                CreateConfiguration::for_agent(format!("agent-{i}")).enabled(i % 2 == 0),
            )
            .await
            .expect("create");
        created.push(c.id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = t
            .client
            .list_configurations(ListConfigurations::new().page_size(3).page_token(token))
            .await
            .expect("page");
        assert!(page.configurations.len() <= 3);
        seen.extend(page.configurations.into_iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, created, "every configuration once, oldest first");

    let enabled = t
        .client
        .list_configurations(ListConfigurations::new().enabled(true))
        .await
        .expect("list");
    assert_eq!(enabled.configurations.len(), 4);
    let one = t
        .client
        .list_configurations(ListConfigurations::new().agent_id("agent-3"))
        .await
        .expect("list");
    assert_eq!(one.configurations.len(), 1);
    assert_eq!(one.configurations[0].id, created[3]);
}

#[tokio::test]
async fn tenants_are_isolated() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let a = s.tenant("acme").await;
    let b = s.tenant("globex").await;
    let c = a
        .client
        .create_configuration(CreateConfiguration::for_agent("ide-agent"))
        .await
        .expect("create");

    assert_eq!(
        code(b.client.get_configuration(&c.id).await),
        Code::NotFound
    );
    assert_eq!(
        code(
            b.client
                .update_configuration(UpdateConfiguration::new(&c.id).enabled(false))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(b.client.update_workload(&c.id, 1).await),
        Code::NotFound
    );
    assert_eq!(
        code(b.client.delete_configuration(&c.id).await),
        Code::NotFound
    );
    let listed = b
        .client
        .list_configurations(ListConfigurations::new())
        .await
        .expect("list");
    assert!(listed.configurations.is_empty());
    // Naming the other tenant is not a way around it.
    let named = b
        .client
        .list_configurations(ListConfigurations::new().tenant(&a.id))
        .await;
    assert_eq!(code(named), Code::PermissionDenied);
    let named = b
        .client
        .create_configuration(CreateConfiguration::for_agent("ide-agent").tenant(&a.id))
        .await;
    assert_eq!(code(named), Code::PermissionDenied);

    assert_eq!(
        a.client.get_configuration(&c.id).await.expect("unchanged"),
        c
    );
    // Admins act for any tenant, and must say which one when creating.
    assert_eq!(
        s.admin
            .get_configuration(&c.id)
            .await
            .expect("admin get")
            .id,
        c.id
    );
    let admin_list = s
        .admin
        .list_configurations(ListConfigurations::new().tenant(&b.id))
        .await
        .expect("list");
    assert!(admin_list.configurations.is_empty());
    let no_tenant = s
        .admin
        .create_configuration(CreateConfiguration::for_agent("ide-agent"))
        .await;
    assert_eq!(
        no_tenant.expect_err("needs tenant").field(),
        Some("tenant_id")
    );
    s.admin
        .create_configuration(CreateConfiguration::for_agent("ide-agent").tenant(&b.id))
        .await
        .expect("admin creates for b");
    assert_eq!(
        b.client
            .list_configurations(ListConfigurations::new())
            .await
            .expect("list")
            .configurations
            .len(),
        1
    );
}

#[tokio::test]
async fn agents_cannot_manage_configurations() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let c = t
        .client
        .create_configuration(CreateConfiguration::for_agent("ide-agent"))
        .await
        .expect("create");
    assert_eq!(
        code(t.agent.get_configuration(&c.id).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(t.agent.update_workload(&c.id, 1).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(t.agent.list_configurations(ListConfigurations::new()).await),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn workload_bounds_and_max_workload_floor() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let c = t
        .client
        .create_configuration(CreateConfiguration::for_agent("ide-agent").max_workload(3))
        .await
        .expect("create");
    assert_eq!(
        t.client
            .update_workload(&c.id, 2)
            .await
            .expect("+2")
            .current_workload,
        2
    );
    assert_eq!(
        code(t.client.update_workload(&c.id, 2).await),
        Code::ResourceExhausted
    );
    assert_eq!(
        code(t.client.update_workload(&c.id, -3).await),
        Code::FailedPrecondition
    );
    let lowered = t
        .client
        .update_configuration(UpdateConfiguration::new(&c.id).max_workload(1))
        .await;
    assert_eq!(code(lowered), Code::FailedPrecondition);
    assert_eq!(
        t.client
            .update_workload(&c.id, -2)
            .await
            .expect("-2")
            .current_workload,
        0
    );
    assert_eq!(
        code(
            t.client
                .update_workload(&uuid::Uuid::new_v4().to_string(), 1)
                .await
        ),
        Code::NotFound
    );
}

#[tokio::test]
async fn concurrent_workload_updates_never_pass_max() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let c = t
        .client
        .create_configuration(CreateConfiguration::for_agent("ide-agent").max_workload(5))
        .await
        .expect("create");

    // Watch the stored value while 200 callers race.
    let peak = Arc::new(AtomicI32::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (pool, peak, stop) = (s.pool.clone(), peak.clone(), stop.clone());
        let id = uuid::Uuid::parse_str(&c.id).expect("uuid");
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let (w,): (i32,) = sqlx::query_as(
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
    let calls = (0..200).map(|_| {
        let client = t.client.clone();
        let id = c.id.clone();
        tokio::spawn(async move { client.update_workload(&id, 1).await })
    });
    let mut granted = 0;
    let mut exhausted = 0;
    for call in calls.collect::<Vec<_>>() {
        match call.await.expect("join") {
            Ok(_) => granted += 1,
            Err(e) if e.code() == Some(Code::ResourceExhausted) => exhausted += 1,
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    stop.store(true, Ordering::SeqCst);
    watcher.await.expect("watcher");
    assert_eq!((granted, exhausted), (5, 195));
    assert_eq!(
        t.client
            .get_configuration(&c.id)
            .await
            .expect("get")
            .current_workload,
        5
    );
    assert!(peak.load(Ordering::SeqCst) <= 5);

    // And back down, also concurrently: exactly five decrements succeed.
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let client = t.client.clone();
            let id = c.id.clone();
            tokio::spawn(async move { client.update_workload(&id, -1).await.is_ok() })
        })
        .collect();
    let mut released = 0;
    for call in calls {
        released += i32::from(call.await.expect("join"));
    }
    assert_eq!(released, 5);
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
async fn the_largest_allowed_prompt_round_trips() {
    // Far beyond the server codec's 1 KiB starting buffers, in both directions.
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let prompt: String = "é—🦀x".chars().cycle().take(32 * 1024).collect();
    let created = t
        .client
        .create_configuration(CreateConfiguration::for_agent("ide-agent").system_prompt(&prompt))
        .await
        .expect("create");
    assert_eq!(created.system_prompt, prompt);
    let read = t.client.get_configuration(&created.id).await.expect("get");
    assert_eq!(read.system_prompt, prompt);
    let listed = t
        .client
        .list_configurations(ListConfigurations::new())
        .await
        .expect("list");
    assert_eq!(listed.configurations[0].system_prompt, prompt);
}
