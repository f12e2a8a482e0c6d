//! The audit log: every admin and tenant write leaves exactly one event, in
//! the change's transaction; `ListAuditEvents` filters, pages and keeps
//! tenants apart; the sweeper applies the retention.

mod common;

use std::time::Duration;

use agentry_client::{
    Client, Code, CreateApiKey, CreateConfiguration, ListApiKeys, ListAuditEvents,
    RegisterInstance, UpdateConfiguration, pb,
};
use common::{TestServer, code};

/// An event as compared: (action, target kind, target id, key id, role, key's tenant).
type Row = (String, String, String, String, pb::Role, String);

fn row(e: &pb::AuditEvent) -> Row {
    (
        e.action.clone(),
        e.target_kind.clone(),
        e.target_id.clone(),
        e.key_id.clone(),
        e.role(),
        e.tenant_id.clone(),
    )
}

fn expect(action: &str, kind: &str, target: &str, key: &str, role: pb::Role, tenant: &str) -> Row {
    (
        action.into(),
        kind.into(),
        target.into(),
        key.into(),
        role,
        tenant.into(),
    )
}

/// Every event `client` may see, oldest first, walked page by page.
async fn all_events(client: &Client, filter: ListAuditEvents) -> Vec<pb::AuditEvent> {
    let mut events = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_audit_events(filter.clone().page_size(3).page_token(token))
            .await
            .expect("list audit events");
        events.extend(page.audit_events);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    events.reverse();
    events
}

async fn count(s: &TestServer) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&s.pool)
        .await
        .expect("count")
}

/// The id of the harness's admin key, created by the command line.
async fn admin_key_id(s: &TestServer) -> String {
    let keys = s
        .admin
        .list_api_keys(ListApiKeys::new())
        .await
        .expect("keys");
    keys.api_keys
        .iter()
        .find(|k| k.description == "test admin")
        .expect("the harness's key")
        .id
        .clone()
}

#[tokio::test]
async fn every_admin_and_tenant_write_is_audited_with_its_actor() {
    let s = TestServer::start().await;
    let admin = admin_key_id(&s).await;
    const PROMPT: &str = "You are the confidential assistant of ACME";

    let tenant = s.admin.create_tenant("acme").await.expect("tenant");
    let key = s
        .admin
        .create_api_key(CreateApiKey::new(pb::Role::Tenant).tenant(&tenant.id))
        .await
        .expect("tenant key");
    let tenant_key = key.api_key.clone().expect("record").id;
    let acme = common::client(s.addr, &key.secret).await;
    let manifest = s.manifest("ide-agent").await;
    let config = acme
        .create_configuration(
            CreateConfiguration::for_agent("ide-agent")
                .system_prompt(PROMPT)
                .max_workload(5),
        )
        .await
        .expect("configuration");
    acme.update_configuration(
        UpdateConfiguration::new(&config.id)
            .system_prompt(format!("{PROMPT}, v2"))
            .max_workload(6),
    )
    .await
    .expect("update");
    acme.update_workload(&config.id, 2).await.expect("workload");
    let registration = acme
        .register_instance(RegisterInstance::new("inst-1", "ide-agent"))
        .await
        .expect("register")
        .registration
        .expect("registration");
    acme.drain_registration("inst-1", "maintenance")
        .await
        .expect("drain");
    s.admin.cleanup(None, false).await.expect("cleanup");
    // Refused: a second manifest with the same agent_id leaves no event.
    assert_eq!(
        code(
            s.admin
                .create_manifest(agentry_client::CreateManifest::new(
                    "ide-agent",
                    "ide",
                    "Again",
                    "1.0.0"
                ),)
                .await
        ),
        Code::AlreadyExists
    );
    s.admin.revoke_api_key(&tenant_key).await.expect("revoke");

    let events = all_events(&s.admin, ListAuditEvents::new()).await;
    let t = tenant.id.as_str();
    use pb::Role::{Admin, Tenant, Unspecified};
    assert_eq!(
        events.iter().map(row).collect::<Vec<_>>(),
        vec![
            expect("api_key.create", "api_key", &admin, "", Unspecified, ""),
            expect("tenant.create", "tenant", t, &admin, Admin, ""),
            expect("api_key.create", "api_key", &tenant_key, &admin, Admin, ""),
            expect(
                "manifest.create",
                "manifest",
                &manifest.id,
                &admin,
                Admin,
                ""
            ),
            expect(
                "configuration.create",
                "configuration",
                &config.id,
                &tenant_key,
                Tenant,
                t
            ),
            expect(
                "configuration.update",
                "configuration",
                &config.id,
                &tenant_key,
                Tenant,
                t
            ),
            expect(
                "configuration.update_workload",
                "configuration",
                &config.id,
                &tenant_key,
                Tenant,
                t
            ),
            expect(
                "registration.drain",
                "registration",
                &registration.id,
                &tenant_key,
                Tenant,
                t
            ),
            expect(
                "registration.cleanup",
                "registrations",
                "",
                &admin,
                Admin,
                ""
            ),
            expect("api_key.revoke", "api_key", &tenant_key, &admin, Admin, ""),
        ]
    );
    let targets: Vec<&str> = events.iter().map(|e| e.target_tenant_id.as_str()).collect();
    assert_eq!(targets, vec!["", t, t, "", t, t, t, t, "", t]);
    // The update names what it changed, never the prompt itself.
    let update = agentry_client::struct_to_json(events[5].details.as_ref().expect("details"));
    assert_eq!(
        update,
        serde_json::json!({ "fields": ["system_prompt", "max_workload"] })
    );
    let drain = agentry_client::struct_to_json(events[7].details.as_ref().expect("details"));
    assert_eq!(
        drain,
        serde_json::json!({ "instance_id": "inst-1", "reason": "maintenance" })
    );

    let (_, secret_part) = key.secret.rsplit_once('_').expect("agk_<id>_<secret>");
    let leaks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE strpos(details::text, $1) > 0 \
         OR strpos(details::text, $2) > 0 OR strpos(details::text, $3) > 0",
    )
    .bind(&key.secret)
    .bind(secret_part)
    .bind(PROMPT)
    .fetch_one(&s.pool)
    .await
    .expect("search");
    assert_eq!(leaks, 0, "no secret and no prompt in the audit log");
}

#[tokio::test]
async fn a_tenant_sees_only_its_own_tenants_events() {
    let s = TestServer::start().await;
    let a = s.tenant("alpha").await;
    let b = s.tenant("beta").await;
    let manifest = s.manifest("ide-agent").await;
    let config = a
        .client
        .create_configuration(CreateConfiguration::for_agent("ide-agent"))
        .await
        .expect("configuration of A");

    let of_a = all_events(&a.client, ListAuditEvents::new()).await;
    let actions: Vec<(&str, &str)> = of_a
        .iter()
        .map(|e| (e.action.as_str(), e.target_kind.as_str()))
        .collect();
    // A's tenant and keys (made by the admin), and A's own configuration;
    // neither the manifest (system-wide) nor anything of B.
    assert_eq!(
        actions,
        vec![
            ("tenant.create", "tenant"),
            ("api_key.create", "api_key"),
            ("api_key.create", "api_key"),
            ("configuration.create", "configuration"),
        ]
    );
    assert!(
        of_a.iter()
            .all(|e| e.target_tenant_id == a.id || e.tenant_id == a.id)
    );

    let of_b = all_events(&b.client, ListAuditEvents::new()).await;
    assert_eq!(of_b.len(), 3, "B's tenant and two keys: {of_b:?}");
    assert!(of_b.iter().all(|e| e.target_tenant_id == b.id));
    // Naming A's objects gives B an empty page, not A's events.
    for filter in [
        ListAuditEvents::new().target(&config.id),
        ListAuditEvents::new().target(&a.id),
        ListAuditEvents::new().target(&manifest.id),
    ] {
        let page = b.client.list_audit_events(filter).await.expect("list");
        assert!(page.audit_events.is_empty(), "{page:?}");
    }
    // The admin sees both, and the manifest.
    let all = all_events(&s.admin, ListAuditEvents::new()).await;
    assert_eq!(all.len(), 1 + 3 + 3 + 1 + 1);
    // Agent keys may not read the log.
    assert_eq!(
        code(a.agent.list_audit_events(ListAuditEvents::new()).await),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn filters_and_pages_walk_the_log_newest_first() {
    let s = TestServer::start().await;
    let admin = admin_key_id(&s).await;
    let mut manifests = Vec::new();
    for i in 0..7 {
        manifests.push(s.manifest(&format!("agent-{i}")).await.id);
    }

    // Pages of 3 in sequence give every event once, newest first.
    let creates = ListAuditEvents::new().action("manifest.create");
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = s
            .admin
            .list_audit_events(creates.clone().page_size(3).page_token(token))
            .await
            .expect("page");
        pages += 1;
        assert!(page.audit_events.len() <= 3);
        seen.extend(page.audit_events.into_iter().map(|e| e.target_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    let newest_first: Vec<String> = manifests.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    let one = s
        .admin
        .list_audit_events(ListAuditEvents::new().target(&manifests[2]))
        .await
        .expect("by target");
    assert_eq!(one.audit_events.len(), 1);
    assert_eq!(one.audit_events[0].action, "manifest.create");
    let by_key = all_events(&s.admin, ListAuditEvents::new().key(&admin)).await;
    assert_eq!(
        by_key.len(),
        7,
        "the harness's own key was made by the command line"
    );

    // since is inclusive, until exclusive.
    let all = all_events(&s.admin, creates.clone()).await;
    let third = all[2].time.expect("time");
    let window = all_events(
        &s.admin,
        creates
            .clone()
            .since(third)
            .until(all[5].time.expect("time")),
    )
    .await;
    let ids: Vec<&str> = window.iter().map(|e| e.target_id.as_str()).collect();
    assert_eq!(
        ids,
        manifests[2..5]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );

    for (bad, field) in [
        (ListAuditEvents::new().target("nope"), "target_id"),
        (ListAuditEvents::new().key("nope"), "key_id"),
        (ListAuditEvents::new().page_token("garbage"), "page_token"),
        (
            ListAuditEvents::new()
                .since(all[5].time.expect("time"))
                .until(third),
            "end_time",
        ),
    ] {
        let err = s.admin.list_audit_events(bad).await.expect_err("refused");
        assert_eq!(err.code(), Some(Code::InvalidArgument), "{err:?}");
        assert_eq!(err.field(), Some(field));
    }
}

#[tokio::test]
async fn a_failed_write_leaves_no_event() {
    let s = TestServer::start().await;
    let t = s.tenant("acme").await;
    let manifest = s.manifest("ide-agent").await;
    let config = t
        .client
        .create_configuration(CreateConfiguration::for_agent("ide-agent").max_workload(2))
        .await
        .expect("configuration");
    t.client.update_workload(&config.id, 2).await.expect("full");
    let before = count(&s).await;

    assert_eq!(
        code(s.admin.create_tenant("acme").await),
        Code::AlreadyExists
    );
    assert_eq!(
        code(t.client.update_workload(&config.id, 1).await),
        Code::ResourceExhausted
    );
    // Refused after the row was locked and read, inside the transaction.
    assert_eq!(
        code(
            t.client
                .update_configuration(UpdateConfiguration::new(&config.id).max_workload(1))
                .await
        ),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(s.admin.delete_manifest(&manifest.id).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(t.client.drain_registration("no-such-instance", "x").await),
        Code::NotFound
    );
    assert_eq!(
        code(
            s.admin
                .revoke_api_key(&uuid::Uuid::new_v4().to_string())
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            s.admin
                .create_api_key(
                    CreateApiKey::new(pb::Role::Tenant).tenant(uuid::Uuid::new_v4().to_string())
                )
                .await
        ),
        Code::NotFound
    );
    assert_eq!(count(&s).await, before, "refused writes leave no event");

    // And a write that succeeds after them still leaves its one event.
    t.client
        .delete_configuration(&config.id)
        .await
        .expect("delete");
    assert_eq!(count(&s).await, before + 1);
}

#[tokio::test]
async fn the_sweeper_deletes_events_past_the_retention() {
    let s =
        TestServer::start_with(|c| c.registry.audit_retention = Duration::from_secs(3600)).await;
    sqlx::query(
        "INSERT INTO audit_events (id, at, key_id, role, action, target_kind) \
         VALUES ($1, now() - interval '2 hours', $2, 'admin', 'manifest.create', 'manifest')",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(uuid::Uuid::new_v4())
    .execute(&s.pool)
    .await
    .expect("an old event");
    let before = count(&s).await;

    s.admin.cleanup(None, false).await.expect("cleanup");
    let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM audit_events ORDER BY at")
        .fetch_all(&s.pool)
        .await
        .expect("actions");
    // The old one went; the harness's key and the cleanup itself stay.
    assert_eq!(before, 2);
    assert_eq!(actions, vec!["api_key.create", "registration.cleanup"]);
}
