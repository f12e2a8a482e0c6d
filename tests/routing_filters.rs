//! The richer routing filters through the SDK: any-of and none-of
//! capabilities, agent types in a list, version requirements, labels of the
//! manifest metadata and expressions, each selecting the right
//! configurations on GetAvailableAgents, AcquireAgent and
//! WatchAvailableAgents; malformed ones refused naming their field.

mod common;

use agentry_client::{AgentFilter, Code, CreateManifest, Error, UpdateManifest, pb};
use common::routing::{available, configure, next, register, wait_available};
use common::{Tenant, TestServer};

/// The fleet: one configuration with one healthy instance per manifest.
///
/// | agent_id | type | version    | capabilities              | labels                    |
/// |----------|------|------------|---------------------------|---------------------------|
/// | editor   | ide  | 1.4.2      | code_editing, terminal    | tier=stable, team=core    |
/// | reviewer | ide  | 1.1.0      | code_editing, code_review | tier=experimental         |
/// | shell    | cli  | 2.0.0      | terminal                  | tier=stable               |
/// | chat     | chat | 0.9.0      | chat                      | (none: only non-strings)  |
/// | nightly  | ide  | 2.1.0-rc.1 | code_editing              | tier=beta                 |
const FLEET: &[(&str, &str, &str, &[&str])] = &[
    ("editor", "ide", "1.4.2", &["code_editing", "terminal"]),
    ("reviewer", "ide", "1.1.0", &["code_editing", "code_review"]),
    ("shell", "cli", "2.0.0", &["terminal"]),
    ("chat", "chat", "0.9.0", &["chat"]),
    ("nightly", "ide", "2.1.0-rc.1", &["code_editing"]),
];

fn metadata(agent_id: &str) -> serde_json::Value {
    match agent_id {
        "editor" => serde_json::json!({"labels": {"tier": "stable", "team": "core"}}),
        "reviewer" => serde_json::json!({"labels": {"tier": "experimental"}}),
        // Top-level strings are not labels.
        "shell" => serde_json::json!({"labels": {"tier": "stable"}, "region": "eu"}),
        // Nor are values under `labels` that are not strings.
        "chat" => serde_json::json!({"labels": {"replicas": 3, "gpu": true}}),
        _ => serde_json::json!({"labels": {"tier": "beta"}}),
    }
}

async fn fleet() -> (TestServer, Tenant) {
    let s = TestServer::start().await;
    let t = s.tenant("acme").await;
    for (agent_id, agent_type, version, caps) in FLEET {
        s.admin
            .create_manifest(
                CreateManifest::new(*agent_id, *agent_type, *agent_id, *version)
                    .capabilities(caps.iter().copied())
                    .metadata(metadata(agent_id)),
            )
            .await
            .expect("manifest");
        configure(&t, agent_id, 5).await;
        register(&t, &format!("{agent_id}-1"), agent_id).await;
    }
    wait_available(&t.client, AgentFilter::new(), "the whole fleet", |a| {
        a.len() == FLEET.len()
    })
    .await;
    (s, t)
}

/// The agent_ids `filter` selects, sorted.
async fn selected(t: &Tenant, filter: AgentFilter) -> Vec<String> {
    let mut names: Vec<String> = available(&t.client, filter)
        .await
        .into_iter()
        .map(|a| a.0)
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn each_filter_kind_selects_the_right_configurations() {
    let (_s, t) = fleet().await;
    let f = AgentFilter::new;
    let cases: Vec<(&str, AgentFilter, &[&str])> = vec![
        (
            "any of",
            f().any_capability("terminal").any_capability("code_review"),
            &["editor", "reviewer", "shell"],
        ),
        (
            "none of",
            f().no_capability("terminal"),
            &["chat", "nightly", "reviewer"],
        ),
        (
            "none of, two",
            f().no_capability("terminal").no_capability("chat"),
            &["nightly", "reviewer"],
        ),
        (
            "all of and any of",
            f().capability("code_editing")
                .any_capability("terminal")
                .any_capability("code_review"),
            &["editor", "reviewer"],
        ),
        (
            "types in a list",
            f().agent_types(["cli", "chat"]),
            &["chat", "shell"],
        ),
        (
            "agent_type and agent_types both hold",
            f().agent_type("ide").agent_types(["cli", "ide"]),
            &["editor", "nightly", "reviewer"],
        ),
        ("caret", f().version("^1.2"), &["editor"]),
        ("a range", f().version(">=1.0, <2"), &["editor", "reviewer"]),
        (
            "any version, but pre-releases",
            f().version("*"),
            &["chat", "editor", "reviewer", "shell"],
        ),
        (
            "a pre-release, asked for",
            f().version(">=2.1.0-rc.1"),
            &["nightly"],
        ),
        (
            "one label",
            f().label("tier", "stable"),
            &["editor", "shell"],
        ),
        (
            "two labels",
            f().label("tier", "stable").label("team", "core"),
            &["editor"],
        ),
        (
            "top-level metadata is no label",
            f().label("region", "eu"),
            &[],
        ),
        ("a number is no label", f().label("replicas", "3"), &[]),
        (
            "the issue's expression",
            f().expression(
                "capability:code_editing AND (capability:terminal OR type:ide) \
                 AND NOT label:tier=experimental AND version:^1.2",
            ),
            &["editor"],
        ),
        (
            "OR binds looser than AND",
            f().expression("type:cli OR type:ide AND label:tier=experimental"),
            &["reviewer", "shell"],
        ),
        (
            "parentheses",
            f().expression("(type:cli OR type:ide) AND label:tier=stable"),
            &["editor", "shell"],
        ),
        (
            "a label's presence",
            f().expression("NOT label:tier"),
            &["chat"],
        ),
        (
            "ids, quoted values, keywords in lowercase",
            f().expression(r#"id:chat or (id:"editor" and version:">=1.0, <2")"#),
            &["chat", "editor"],
        ),
        (
            "expression and fields together",
            f().capability("terminal").expression("NOT type:ide"),
            &["shell"],
        ),
        (
            "everything at once",
            f().agent_types(["ide", "cli"])
                .any_capability("terminal")
                .no_capability("code_review")
                .version(">=1")
                .label("tier", "stable")
                .expression("NOT id:shell"),
            &["editor"],
        ),
    ];
    for (what, filter, want) in cases {
        assert_eq!(selected(&t, filter).await, want, "{what}");
    }
}

#[tokio::test]
async fn acquire_and_watch_use_the_same_filters_and_follow_label_changes() {
    let (s, t) = fleet().await;
    // An acquire goes only where the expression allows.
    for _ in 0..3 {
        let lease = t
            .client
            .acquire_agent(
                AgentFilter::new().expression("capability:terminal AND NOT type:ide"),
                None,
            )
            .await
            .expect("acquire");
        assert_eq!(
            lease.configuration.expect("configuration").agent_id,
            "shell"
        );
    }
    let none = t
        .client
        .acquire_agent(AgentFilter::new().version("^3"), None)
        .await
        .expect_err("no agent of version 3");
    assert_eq!(none.code(), Some(Code::ResourceExhausted), "{none:?}");

    // A watch's snapshot holds the matching agents only...
    let mut events = t
        .client
        .watch_available_agents(AgentFilter::new().label("tier", "stable"))
        .await
        .expect("watch");
    let Some(pb::availability_event::Event::Snapshot(snapshot)) = next(&mut events).await.event
    else {
        panic!("a snapshot first");
    };
    let mut names: Vec<String> = snapshot.agents.into_iter().map(|a| a.agent_id).collect();
    names.sort();
    assert_eq!(names, ["editor", "shell"]);
    // ...and a manifest relabelled stable joins it, as it joins reads.
    let reviewer = s
        .admin
        .get_manifest_by_agent_id("reviewer")
        .await
        .expect("reviewer");
    s.admin
        .update_manifest(
            UpdateManifest::new(&reviewer.id)
                .metadata(serde_json::json!({"labels": {"tier": "stable"}})),
        )
        .await
        .expect("relabel");
    // (A manifest's change touches all its tenant's configurations: the
    // watcher may get the entry itself, or resync and a fresh snapshot.)
    loop {
        use pb::availability_event::Event;
        let agents = match next(&mut events).await.event {
            Some(Event::Upserted(a)) => vec![a],
            Some(Event::Snapshot(s)) => s.agents,
            Some(Event::Resync(_)) => vec![],
            other => panic!("unexpected {other:?}"),
        };
        for a in &agents {
            assert!(
                ["editor", "shell", "reviewer"].contains(&a.agent_id.as_str()),
                "{a:?}"
            );
        }
        if agents.iter().any(|a| a.agent_id == "reviewer") {
            break;
        }
    }
    wait_available(
        &t.client,
        AgentFilter::new().expression("label:tier=stable"),
        "reviewer relabelled",
        |a| a.len() == 3,
    )
    .await;
    assert_eq!(
        selected(&t, AgentFilter::new().expression("label:tier=experimental")).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn malformed_filters_are_invalid_arguments_naming_the_field() {
    let (_s, t) = fleet().await;
    let f = AgentFilter::new;
    let cases: Vec<(AgentFilter, &str, &str)> = vec![
        (
            f().expression("capability:a AND"),
            "filter.expression",
            "at character 17: expected a term such as capability:NAME, found the end",
        ),
        (
            f().expression("capability:a capability:b"),
            "filter.expression",
            "at character 14: expected AND, OR or the end",
        ),
        (
            f().expression("(type:ide OR type:cli"),
            "filter.expression",
            "at character 22: expected AND, OR or ')' closing the '(' at character 1",
        ),
        (
            f().expression("colour:red"),
            "filter.expression",
            "at character 1: unknown term \"colour:\"",
        ),
        (
            f().expression("type:ide AND version:^x"),
            "filter.expression",
            "at character 22: unexpected character 'x' while parsing major version number",
        ),
        (
            f().version("^1.x.3.4"),
            "filter.version",
            "expected a semver requirement such as ^1.2",
        ),
        (
            f().version(">=1 <2"),
            "filter.version",
            "expected comma after major version number, found '<'",
        ),
        (
            f().agent_types(["ide", "IDE"]),
            "filter.agent_types[1]",
            "lowercase slug",
        ),
        (
            f().any_capability(" padded"),
            "filter.any_capabilities[0]",
            "surrounding spaces",
        ),
        (
            f().no_capability(""),
            "filter.none_capabilities[0]",
            "non-empty",
        ),
        (f().label("", "x"), "filter.labels", "must not be empty"),
    ];
    for (filter, field, message) in cases {
        for call in ["get", "acquire", "watch"] {
            let err = match call {
                "get" => t.client.get_available_agents(filter.clone(), 0).await.err(),
                "acquire" => t.client.acquire_agent(filter.clone(), None).await.err(),
                _ => t.client.watch_available_agents(filter.clone()).await.err(),
            }
            .unwrap_or_else(|| panic!("{call} {filter:?}: accepted"));
            assert_eq!(err.code(), Some(Code::InvalidArgument), "{call}: {err:?}");
            assert_eq!(err.field(), Some(field), "{call}: {err:?}");
            let Error::InvalidArgument { message: got, .. } = &err else {
                panic!("{call}: {err:?}");
            };
            assert!(got.contains(message), "{call}: {got:?} lacks {message:?}");
        }
    }
}
