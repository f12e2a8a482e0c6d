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
    // agk_<key id>_<secret>: the base64url secret may hold '_' itself, and
    // a short tail after the last one can occur in the dump by chance.
    let secret_part = k.secret.splitn(3, '_').nth(2).expect("shape");
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

/// Keys revoked on one replica end the health stream and the watch they
/// hold open on another, with `UNAUTHENTICATED`; the instance is no longer
/// healthy; a stream of a key that was not revoked goes on.
#[tokio::test]
async fn revocation_ends_open_streams_and_watches_on_every_replica() {
    use common::stream::{heartbeat, hello, raw_stream, welcome};
    use std::time::Duration;
    let s = TestServer::start().await;
    let replica = s.replica().await;
    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let key = |role| {
        let (admin, tenant) = (s.admin.clone(), t.id.clone());
        async move {
            admin
                .create_api_key(CreateApiKey::new(role).tenant(&tenant))
                .await
                .expect("key")
        }
    };
    let (doomed_agent, doomed_router) = (key(pb::Role::Agent).await, key(pb::Role::Tenant).await);

    let (_tx, stream) = raw_stream(
        &replica,
        &doomed_agent.secret,
        vec![hello("doomed", "ide-agent")],
    )
    .await;
    let mut stream = stream.expect("stream");
    welcome(&mut stream).await;
    let (kept_tx, kept) =
        raw_stream(&replica, &t.agent_key, vec![hello("kept", "ide-agent")]).await;
    let mut kept = kept.expect("stream");
    let epoch = welcome(&mut kept).await.epoch;
    let mut watch = client(replica.addr, &doomed_router.secret)
        .await
        .watch_available_agents(pb::AgentFilter::default())
        .await
        .expect("watch");
    watch.message().await.expect("snapshot").expect("event");

    for k in [&doomed_agent, &doomed_router] {
        s.admin
            .revoke_api_key(&k.api_key.as_ref().expect("record").id)
            .await
            .expect("revoke");
    }
    // Whatever else is in flight (an availability change), the call ends
    // with UNAUTHENTICATED soon after.
    async fn ended<T: std::fmt::Debug, E>(
        mut next: impl AsyncFnMut() -> Result<Option<T>, E>,
    ) -> E {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match next().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("ended with OK"),
                    Err(e) => return e,
                }
            }
        })
        .await
        .expect("ended within 5 s")
    }
    let status = ended(async || stream.message().await).await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let e = ended(async || watch.message().await).await;
    assert_eq!(e.code(), Some(Code::Unauthenticated), "{e:?}");
    common::eventually(
        Duration::from_secs(5),
        "the instance is unknown",
        || async {
            sqlx::query_scalar::<_, String>(
                "SELECT health_status FROM agent_registrations WHERE instance_id = 'doomed'",
            )
            .fetch_one(&s.pool)
            .await
            .expect("row")
                == "unknown"
        },
    )
    .await;

    kept_tx
        .send(heartbeat(1, pb::HealthStatus::Healthy, epoch))
        .await
        .expect("send");
    let ack = kept.message().await.expect("ack").expect("message");
    assert!(
        matches!(
            ack.message,
            Some(pb::health_stream_response::Message::Ack(_))
        ),
        "the other key's stream goes on: {ack:?}"
    );
}
