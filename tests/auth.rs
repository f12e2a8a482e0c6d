//! Authentication, roles, tenants and API keys.

mod common;

use agentry_client::{Client, Code, CreateApiKey, ListApiKeys, ListManifests, ListTenants, pb};
use common::{TestServer, client, code};

#[tokio::test]
async fn missing_malformed_and_unknown_keys_are_unauthenticated() {
    let s = TestServer::start().await;
    let no_key = Client::builder(s.url()).connect().await.expect("connect");
    assert_eq!(
        code(no_key.list_manifests(ListManifests::new()).await),
        Code::Unauthenticated
    );
    for key in ["garbage", "agk_00000000000000000000000000000000_secret"] {
        let c = client(s.addr, key).await;
        assert_eq!(
            code(c.list_manifests(ListManifests::new()).await),
            Code::Unauthenticated,
            "{key}"
        );
    }
    // A real key id with the wrong secret.
    let created = s
        .admin
        .create_api_key(CreateApiKey::new(pb::Role::Admin))
        .await
        .expect("key");
    let (prefix, _) = created.secret.rsplit_once('_').expect("key shape");
    let forged = client(
        s.addr,
        &format!("{prefix}_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    )
    .await;
    assert_eq!(
        code(forged.list_manifests(ListManifests::new()).await),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn revocation_takes_effect_at_once() {
    let s = TestServer::start().await;
    let t = s.tenant("acme").await;
    let created = s
        .admin
        .create_api_key(
            CreateApiKey::new(pb::Role::Tenant)
                .tenant(&t.id)
                .description("ci"),
        )
        .await
        .expect("key");
    let c = client(s.addr, &created.secret).await;
    c.list_manifests(ListManifests::new())
        .await
        .expect("works before revocation");
    let key = created.api_key.expect("record");
    let revoked = s.admin.revoke_api_key(&key.id).await.expect("revoke");
    assert!(revoked.revoke_time.is_some());
    assert_eq!(
        code(c.list_manifests(ListManifests::new()).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(
            s.admin
                .revoke_api_key(&uuid::Uuid::new_v4().to_string())
                .await
        ),
        Code::NotFound
    );
}

#[tokio::test]
async fn admin_service_is_admin_only() {
    let s = TestServer::start().await;
    let t = s.tenant("acme").await;
    for who in [&t.client, &t.agent] {
        assert_eq!(
            code(who.create_tenant("evil").await),
            Code::PermissionDenied
        );
        assert_eq!(
            code(who.list_tenants(ListTenants::new()).await),
            Code::PermissionDenied
        );
        assert_eq!(
            code(who.create_api_key(CreateApiKey::new(pb::Role::Admin)).await),
            Code::PermissionDenied
        );
        assert_eq!(
            code(who.list_api_keys(ListApiKeys::new()).await),
            Code::PermissionDenied
        );
        assert_eq!(
            code(who.revoke_api_key(&t.id).await),
            Code::PermissionDenied
        );
    }
}

#[tokio::test]
async fn tenants_and_keys_are_managed_and_validated() {
    let s = TestServer::start().await;
    let a = s.admin.create_tenant("acme").await.expect("tenant");
    assert_eq!(
        code(s.admin.create_tenant("acme").await),
        Code::AlreadyExists
    );
    assert_eq!(
        s.admin
            .create_tenant("Not A Slug")
            .await
            .expect_err("slug")
            .field(),
        Some("name")
    );
    for i in 0..4 {
        s.admin
            .create_tenant(&format!("t{i}"))
            .await
            .expect("tenant");
    }
    let first = s
        .admin
        .list_tenants(ListTenants::new().page_size(3))
        .await
        .expect("page 1");
    let second = s
        .admin
        .list_tenants(
            ListTenants::new()
                .page_size(3)
                .page_token(first.next_page_token),
        )
        .await
        .expect("page 2");
    let names: Vec<_> = first
        .tenants
        .iter()
        .chain(&second.tenants)
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(names, ["acme", "t0", "t1", "t2", "t3"]);
    assert!(second.next_page_token.is_empty());

    let bad: Vec<(&str, pb::CreateApiKeyRequest)> = vec![
        ("role", pb::CreateApiKeyRequest::default()),
        ("tenant_id", CreateApiKey::new(pb::Role::Tenant).into()),
        (
            "tenant_id",
            CreateApiKey::new(pb::Role::Agent).tenant("nope").into(),
        ),
        (
            "tenant_id",
            CreateApiKey::new(pb::Role::Admin).tenant(&a.id).into(),
        ),
        (
            "description",
            CreateApiKey::new(pb::Role::Admin)
                .description("d".repeat(300))
                .into(),
        ),
    ];
    for (field, request) in bad {
        assert_eq!(
            s.admin
                .create_api_key(request)
                .await
                .expect_err(field)
                .field(),
            Some(field)
        );
    }
    let unknown_tenant = s
        .admin
        .create_api_key(
            CreateApiKey::new(pb::Role::Tenant).tenant(uuid::Uuid::new_v4().to_string()),
        )
        .await;
    assert_eq!(code(unknown_tenant), Code::NotFound);

    let k = s
        .admin
        .create_api_key(CreateApiKey::new(pb::Role::Agent).tenant(&a.id))
        .await
        .expect("key");
    let listed = s
        .admin
        .list_api_keys(ListApiKeys::new().tenant(&a.id))
        .await
        .expect("list");
    assert_eq!(listed.api_keys.len(), 1);
    assert_eq!(
        listed.api_keys[0].id,
        k.api_key.as_ref().expect("record").id
    );
    assert_eq!(listed.api_keys[0].role(), pb::Role::Agent);

    // Only a hash of the secret is stored.
    let stored: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT secret_hash FROM api_keys")
        .fetch_all(&s.pool)
        .await
        .expect("read");
    assert!(stored.iter().all(|(h,)| {
        h.len() == 32
            && !k
                .secret
                .as_bytes()
                .windows(h.len())
                .any(|w| w == h.as_slice())
    }));
    let dump: (String,) = sqlx::query_as("SELECT string_agg(t::text, ' ') FROM api_keys t")
        .fetch_one(&s.pool)
        .await
        .expect("dump");
    let (_, secret_part) = k.secret.rsplit_once('_').expect("shape");
    assert!(!dump.0.contains(secret_part), "the secret is not stored");
}

#[tokio::test]
async fn revocation_reaches_other_replicas_through_the_change_feed() {
    let s = TestServer::start().await;
    let replica = s.replica().await;
    let t = s.tenant("acme").await;
    let created = s
        .admin
        .create_api_key(CreateApiKey::new(pb::Role::Tenant).tenant(&t.id))
        .await
        .expect("key");
    let on_replica = client(replica.addr, &created.secret).await;
    // Authenticated once on the replica, so the replica has it cached.
    on_replica
        .list_manifests(ListManifests::new())
        .await
        .expect("works");
    s.admin
        .revoke_api_key(&created.api_key.expect("record").id)
        .await
        .expect("revoke");
    common::eventually(
        std::time::Duration::from_secs(5),
        "the replica refuses the revoked key",
        || async {
            on_replica
                .list_manifests(ListManifests::new())
                .await
                .err()
                .and_then(|e| e.code())
                == Some(Code::Unauthenticated)
        },
    )
    .await;
}
