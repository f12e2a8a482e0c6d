//! Manifests through the SDK: CRUD, validation, pagination, filters, roles.

mod common;

use agentry_client::{Code, CreateManifest, ListManifests, UpdateManifest, pb};
use common::{TestServer, code};

#[tokio::test]
async fn crud_roundtrip() {
    let s = TestServer::start().await;
    let created = s
        .admin
        .create_manifest(
            CreateManifest::new("ide-agent", "ide", "IDE Agent", "1.2.3")
                .description("edits code")
                .capabilities(["code_editing", "terminal_access"])
                .requirements("vscode >= 1.80")
                .metadata(serde_json::json!({"vendor": "acme", "tier": 2}))
                .status(pb::ManifestStatus::Beta),
        )
        .await
        .expect("create");
    assert_eq!(created.agent_id, "ide-agent");
    assert_eq!(created.capabilities, ["code_editing", "terminal_access"]);
    assert_eq!(created.status(), pb::ManifestStatus::Beta);
    assert!(uuid::Uuid::try_parse(&created.id).is_ok());

    let by_id = s.admin.get_manifest(&created.id).await.expect("get by id");
    let by_agent = s
        .admin
        .get_manifest_by_agent_id("ide-agent")
        .await
        .expect("get by agent_id");
    assert_eq!(by_id, created);
    assert_eq!(by_agent, created);
    let metadata = agentry_client::struct_to_json(by_id.metadata.as_ref().expect("metadata"));
    assert_eq!(metadata, serde_json::json!({"vendor": "acme", "tier": 2.0}));

    let updated = s
        .admin
        .update_manifest(
            UpdateManifest::new(&created.id)
                .version("1.3.0")
                .status(pb::ManifestStatus::Active),
        )
        .await
        .expect("update");
    assert_eq!(updated.version, "1.3.0");
    assert_eq!(updated.status(), pb::ManifestStatus::Active);
    assert_eq!(updated.name, "IDE Agent", "fields outside the mask stay");
    assert_eq!(updated.capabilities, created.capabilities);

    s.admin.delete_manifest(&created.id).await.expect("delete");
    assert_eq!(
        code(s.admin.get_manifest(&created.id).await),
        Code::NotFound
    );
    assert_eq!(
        code(s.admin.delete_manifest(&created.id).await),
        Code::NotFound
    );
}

#[tokio::test]
async fn duplicate_agent_id_is_already_exists() {
    let s = TestServer::start().await;
    s.manifest("ide-agent").await;
    let again = s
        .admin
        .create_manifest(CreateManifest::new("ide-agent", "chat", "Other", "2.0.0"))
        .await;
    assert_eq!(code(again), Code::AlreadyExists);
}

#[tokio::test]
async fn every_invalid_field_is_named() {
    let s = TestServer::start().await;
    let base = || CreateManifest::new("ok-agent", "ide", "Name", "1.0.0");
    let long = "x".repeat(5000);
    let cases: Vec<(&str, pb::CreateManifestRequest)> = vec![
        (
            "manifest.agent_id",
            CreateManifest::new("IDE_Agent", "ide", "Name", "1.0.0").into(),
        ),
        (
            "manifest.agent_id",
            CreateManifest::new("", "ide", "Name", "1.0.0").into(),
        ),
        (
            "manifest.agent_id",
            CreateManifest::new("-bad", "ide", "Name", "1.0.0").into(),
        ),
        (
            "manifest.agent_type",
            CreateManifest::new("ok-agent", "Has Space", "Name", "1.0.0").into(),
        ),
        (
            "manifest.name",
            CreateManifest::new("ok-agent", "ide", " ", "1.0.0").into(),
        ),
        (
            "manifest.version",
            CreateManifest::new("ok-agent", "ide", "Name", "1.0").into(),
        ),
        (
            "manifest.version",
            CreateManifest::new("ok-agent", "ide", "Name", "v1.0.0").into(),
        ),
        (
            "manifest.capabilities[1]",
            base().capabilities(["a", ""]).into(),
        ),
        (
            "manifest.capabilities[1]",
            base().capabilities(["a", "a"]).into(),
        ),
        (
            "manifest.description",
            base().description(long.clone()).into(),
        ),
        (
            "manifest.requirements",
            base().requirements(long.clone()).into(),
        ),
        (
            "manifest.metadata",
            base()
                .metadata(serde_json::json!({"blob": "y".repeat(70 * 1024)}))
                .into(),
        ),
        ("manifest", pb::CreateManifestRequest { manifest: None }),
        ("manifest.status", {
            let mut r: pb::CreateManifestRequest = base().into();
            r.manifest.as_mut().expect("manifest").status = 42;
            r
        }),
    ];
    for (field, request) in cases {
        let err = s.admin.create_manifest(request).await.expect_err(field);
        assert_eq!(err.code(), Some(Code::InvalidArgument), "{field}: {err:?}");
        assert_eq!(err.field(), Some(field), "{err:?}");
    }
    let listed = s
        .admin
        .list_manifests(ListManifests::new())
        .await
        .expect("list");
    assert!(listed.manifests.is_empty(), "nothing half-written stays");

    let m = s.manifest("ide-agent").await;
    let bad_updates: Vec<(&str, pb::UpdateManifestRequest)> = vec![
        (
            "manifest.version",
            UpdateManifest::new(&m.id).version("latest").into(),
        ),
        ("update_mask", UpdateManifest::new(&m.id).into()),
        (
            "manifest.id",
            UpdateManifest::new("not-a-uuid").name("x").into(),
        ),
        ("update_mask", {
            let mut r: pb::UpdateManifestRequest = UpdateManifest::new(&m.id).name("x").into();
            r.update_mask
                .as_mut()
                .expect("mask")
                .paths
                .push("agent_id".into());
            r
        }),
    ];
    for (field, request) in bad_updates {
        let err = s.admin.update_manifest(request).await.expect_err(field);
        assert_eq!(err.field(), Some(field), "{err:?}");
    }
    assert_eq!(
        s.admin.get_manifest(&m.id).await.expect("get"),
        m,
        "failed updates change nothing"
    );
    assert_eq!(
        s.admin
            .get_manifest("nope")
            .await
            .expect_err("bad id")
            .field(),
        Some("id")
    );
}

#[tokio::test]
async fn pagination_walks_every_page_once_in_order() {
    let s = TestServer::start().await;
    for i in 0..25 {
        s.manifest(&format!("agent-{i:02}")).await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = s
            .admin
            .list_manifests(ListManifests::new().page_size(10).page_token(token))
            .await
            .expect("page");
        pages += 1;
        seen.extend(page.manifests.into_iter().map(|m| m.agent_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..25).map(|i| format!("agent-{i:02}")).collect();
    assert_eq!(seen, expected);

    let bad = s
        .admin
        .list_manifests(ListManifests::new().page_token("garbage!"))
        .await;
    assert_eq!(bad.expect_err("bad token").field(), Some("page_token"));
    let bad = s
        .admin
        .list_manifests(ListManifests::new().page_size(5000))
        .await;
    assert_eq!(bad.expect_err("bad size").field(), Some("page_size"));
}

#[tokio::test]
async fn list_filters_by_type_status_and_capability() {
    let s = TestServer::start().await;
    let mk = |id: &'static str, ty: &'static str, caps: &'static [&'static str], st| {
        CreateManifest::new(id, ty, "N", "1.0.0")
            .capabilities(caps.iter().copied())
            .status(st)
    };
    for req in [
        mk(
            "ide-a",
            "ide",
            &["code_editing"],
            pb::ManifestStatus::Active,
        ),
        mk(
            "ide-b",
            "ide",
            &["terminal_access"],
            pb::ManifestStatus::Deprecated,
        ),
        mk(
            "chat-a",
            "chat",
            &["code_editing", "chat"],
            pb::ManifestStatus::Beta,
        ),
    ] {
        s.admin.create_manifest(req).await.expect("create");
    }
    let ids = |r: pb::ListManifestsResponse| {
        r.manifests
            .into_iter()
            .map(|m| m.agent_id)
            .collect::<Vec<_>>()
    };
    let l = |req: ListManifests| {
        let admin = s.admin.clone();
        async move { admin.list_manifests(req).await.expect("list") }
    };
    assert_eq!(
        ids(l(ListManifests::new().agent_type("ide")).await),
        ["ide-a", "ide-b"]
    );
    assert_eq!(
        ids(l(ListManifests::new().status(pb::ManifestStatus::Beta)).await),
        ["chat-a"]
    );
    assert_eq!(
        ids(l(ListManifests::new().capability("code_editing")).await),
        ["chat-a", "ide-a"]
    );
    assert_eq!(
        ids(l(ListManifests::new()
            .agent_type("ide")
            .capability("code_editing"))
        .await),
        ["ide-a"]
    );
}

#[tokio::test]
async fn delete_refused_while_configurations_reference_it() {
    let s = TestServer::start().await;
    let m = s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let c = t
        .client
        .create_configuration(agentry_client::CreateConfiguration::for_agent("ide-agent"))
        .await
        .expect("configure");
    assert_eq!(
        code(s.admin.delete_manifest(&m.id).await),
        Code::FailedPrecondition
    );
    t.client
        .delete_configuration(&c.id)
        .await
        .expect("delete configuration");
    s.admin
        .delete_manifest(&m.id)
        .await
        .expect("delete once unreferenced");
}

#[tokio::test]
async fn only_admins_change_manifests_everyone_reads_them() {
    let s = TestServer::start().await;
    let m = s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    for who in [&t.client, &t.agent] {
        let create = who
            .create_manifest(CreateManifest::new("x-agent", "ide", "X", "1.0.0"))
            .await;
        assert_eq!(code(create), Code::PermissionDenied);
        assert_eq!(
            code(
                who.update_manifest(UpdateManifest::new(&m.id).name("Y"))
                    .await
            ),
            Code::PermissionDenied
        );
        assert_eq!(
            code(who.delete_manifest(&m.id).await),
            Code::PermissionDenied
        );
        assert_eq!(who.get_manifest(&m.id).await.expect("read"), m);
        assert_eq!(
            who.list_manifests(ListManifests::new())
                .await
                .expect("list")
                .manifests
                .len(),
            1
        );
    }
}

/// `all_manifests` walks every page once: seven manifests, pages of three,
/// come out in order, each exactly once, as three page calls give them; a
/// refused page ends the stream with its error.
#[tokio::test]
async fn a_paginator_walks_three_pages_exactly_once_each() {
    use tokio_stream::StreamExt;
    let s = TestServer::start().await;
    for i in 0..7 {
        s.admin
            .create_manifest(CreateManifest::new(
                format!("agent-{i}"),
                "ide",
                "Agent",
                "1.0.0",
            ))
            .await
            .expect("create");
    }
    let mut paged = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = s
            .admin
            .list_manifests(ListManifests::new().page_size(3).page_token(&token))
            .await
            .expect("page");
        pages += 1;
        paged.extend(page.manifests.into_iter().map(|m| m.agent_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    let streamed: Vec<String> = s
        .admin
        .all_manifests(ListManifests::new().page_size(3))
        .map(|m| m.expect("item").agent_id)
        .collect()
        .await;
    let want: Vec<String> = (0..7).map(|i| format!("agent-{i}")).collect();
    assert_eq!(streamed, want, "every item once, in order");
    assert_eq!(streamed, paged);

    let mut refused = s.admin.all_manifests(ListManifests::new().page_size(-1));
    let first = refused.next().await.expect("an item");
    assert_eq!(
        first.expect_err("refused").code(),
        Some(Code::InvalidArgument)
    );
    assert!(
        refused.next().await.is_none(),
        "the stream ends after its error"
    );
}
