//! Discovery: A2A cards imported into manifests (and MCP server.json), the
//! card exported for a tenant's configuration over gRPC and plain HTTP, and
//! skill search over live agents, through the SDK against a real server.

mod common;

use std::net::SocketAddr;

use agentry_client::{
    AgentFilter, Code, CreateConfiguration, ImportAgentCard, ImportMcpServer, SearchAgents, pb,
};
use common::routing::{self, register};
use common::{TestServer, code, eventually};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The smallest card the A2A 1.0 specification allows.
fn minimal_card() -> Value {
    json!({
        "name": "Echo Agent",
        "description": "Says back what it hears",
        "version": "0.1.0",
        "supportedInterfaces": [
            {"url": "https://echo.example.com/a2a", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
        ],
        "capabilities": {},
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": []
    })
}

/// A card with every field the specification names, several interfaces,
/// and a few that a manifest does not keep.
fn full_card() -> Value {
    json!({
        "name": "Recipe Agent",
        "description": "Finds and adapts recipes",
        "version": "1.2.0",
        "supportedInterfaces": [
            {"url": "https://recipes.example.com/a2a/v1", "protocolBinding": "JSONRPC", "protocolVersion": "1.0", "tenant": "theirs"},
            {"url": "https://grpc.recipes.example.com/a2a", "protocolBinding": "GRPC", "protocolVersion": "1.0"},
            {"url": "https://recipes.example.com/rest", "protocolBinding": "HTTP+JSON", "protocolVersion": "0.3"}
        ],
        "provider": {"organization": "Example Kitchens", "url": "https://kitchens.example.com"},
        "documentationUrl": "https://docs.recipes.example.com",
        "iconUrl": "https://recipes.example.com/icon.png",
        "capabilities": {
            "streaming": true,
            "pushNotifications": false,
            "extendedAgentCard": true,
            "extensions": [{"uri": "https://example.com/ext/nutrition", "required": false}]
        },
        "securitySchemes": {"bearer": {"httpAuthSecurityScheme": {"scheme": "Bearer"}}},
        "securityRequirements": [{"schemes": {"bearer": {"list": []}}}],
        "defaultInputModes": ["text/plain", "application/json"],
        "defaultOutputModes": ["text/plain"],
        "skills": [
            {
                "id": "find-recipe",
                "name": "Find recipe",
                "description": "Finds recipes by ingredients and cuisine",
                "tags": ["cooking", "recipes"],
                "examples": ["Find me a vegan lasagna"],
                "inputModes": ["text/plain"],
                "outputModes": ["application/json"],
                "securityRequirements": [{"schemes": {"bearer": {"list": []}}}]
            },
            {
                "id": "scale-recipe",
                "name": "Scale recipe",
                "description": "Scales a recipe to a number of servings",
                "tags": ["cooking"]
            }
        ],
        "signatures": [{"protected": "eyJhbGciOiJFUzI1NiJ9", "signature": "c2ln"}]
    })
}

/// A card of the 0.3 protocol: one `url`, a `preferredTransport` and
/// `additionalInterfaces` that repeat it.
fn card_03() -> Value {
    json!({
        "protocolVersion": "0.3.0",
        "name": "Weather Agent",
        "description": "Forecasts",
        "url": "https://weather.example.com/a2a",
        "preferredTransport": "JSONRPC",
        "additionalInterfaces": [
            {"url": "https://weather.example.com/a2a", "transport": "JSONRPC"},
            {"url": "https://weather.example.com/grpc", "transport": "GRPC"}
        ],
        "version": "2.0.0",
        "capabilities": {"streaming": false},
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": [{"id": "forecast", "name": "Forecast", "description": "Weather forecasts", "tags": ["weather"]}]
    })
}

async fn import(s: &TestServer, card: &Value) -> agentry_client::Result<pb::ImportResponse> {
    s.admin
        .import_agent_card(ImportAgentCard::new(card.to_string()))
        .await
}

#[tokio::test]
async fn real_shaped_cards_import_and_say_what_they_mapped_and_ignored() {
    let s = TestServer::start().await;

    let minimal = import(&s, &minimal_card()).await.expect("minimal card");
    assert_eq!(minimal.outcome(), pb::ImportOutcome::Created);
    let m = minimal.manifest.expect("manifest");
    assert_eq!(
        (
            m.agent_id.as_str(),
            m.agent_type.as_str(),
            m.version.as_str()
        ),
        ("echo-agent", "a2a", "0.1.0")
    );
    assert!(m.skills.is_empty());
    assert!(minimal.ignored.is_empty(), "{:?}", minimal.ignored);

    let full = import(&s, &full_card()).await.expect("full card");
    assert_eq!(full.outcome(), pb::ImportOutcome::Created);
    assert_eq!(
        full.ignored,
        [
            "$.signatures",
            "$.skills[0].securityRequirements",
            "$.supportedInterfaces[0].tenant"
        ]
    );
    for path in [
        "$.skills[0].examples",
        "$.provider.organization",
        "$.capabilities.extensions",
        "$.securitySchemes",
    ] {
        assert!(
            full.mapped.iter().any(|p| p == path),
            "{path} not in {:?}",
            full.mapped
        );
    }
    let m = full.manifest.expect("manifest");
    assert_eq!(m.skills.len(), 2);
    assert_eq!(m.skills[0].examples, ["Find me a vegan lasagna"]);
    let card = m.card.expect("card fields");
    assert_eq!(card.interfaces.len(), 3);
    assert_eq!(card.interfaces[1].protocol_binding, "GRPC");
    assert!(card.streaming && card.extended_agent_card && !card.push_notifications);
    // Stored: a read gives the same.
    let read = s
        .admin
        .get_manifest_by_agent_id("recipe-agent")
        .await
        .expect("get");
    assert_eq!(read.skills, m.skills);

    let old = import(&s, &card_03()).await.expect("0.3 card");
    let m = old.manifest.expect("manifest");
    let interfaces: Vec<(String, String)> = m
        .card
        .expect("card")
        .interfaces
        .into_iter()
        .map(|i| (i.url, i.protocol_binding))
        .collect();
    assert_eq!(
        interfaces,
        [
            (
                "https://weather.example.com/a2a".to_owned(),
                "JSONRPC".to_owned()
            ),
            (
                "https://weather.example.com/grpc".to_owned(),
                "GRPC".to_owned()
            )
        ]
    );

    // A tenant may not import.
    let t = s.tenant("acme").await;
    assert_eq!(
        code(
            t.client
                .import_agent_card(ImportAgentCard::new(minimal_card().to_string()))
                .await
        ),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn each_bad_card_names_its_json_path_and_writes_nothing() {
    let s = TestServer::start().await;
    let set = |path: &[&str], value: Value| {
        let mut card = full_card();
        let mut at = &mut card;
        for key in &path[..path.len() - 1] {
            at = match key.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[*key],
            };
        }
        let last = path[path.len() - 1];
        match value {
            Value::Null => {
                at.as_object_mut().expect("object").remove(last);
            }
            v => at[last] = v,
        }
        card.to_string()
    };
    let cases: Vec<(String, &str)> = vec![
        (set(&["name"], Value::Null), "$.name"),
        (set(&["description"], json!(7)), "$.description"),
        (set(&["version"], json!("v1")), "$.version"),
        (set(&["capabilities"], Value::Null), "$.capabilities"),
        (
            set(&["capabilities", "streaming"], json!("yes")),
            "$.capabilities.streaming",
        ),
        (
            set(&["defaultInputModes"], Value::Null),
            "$.defaultInputModes",
        ),
        (
            set(&["supportedInterfaces"], json!([])),
            "$.supportedInterfaces",
        ),
        (
            set(
                &["supportedInterfaces", "1", "url"],
                json!("ftp://files.example.com"),
            ),
            "$.supportedInterfaces[1].url",
        ),
        (
            set(
                &["supportedInterfaces", "2", "protocolBinding"],
                Value::Null,
            ),
            "$.supportedInterfaces[2].protocolBinding",
        ),
        (
            set(&["provider", "organization"], Value::Null),
            "$.provider.organization",
        ),
        (set(&["skills", "0", "id"], Value::Null), "$.skills[0].id"),
        (
            set(&["skills", "1", "id"], json!("find-recipe")),
            "$.skills[1].id",
        ),
        (
            set(&["skills", "1", "tags"], json!("cooking")),
            "$.skills[1].tags",
        ),
        (
            set(&["skills", "0", "examples"], json!(["ok", 3])),
            "$.skills[0].examples[1]",
        ),
        (
            set(&["skills", "1", "name"], json!("x".repeat(300))),
            "$.skills[1].name",
        ),
        (
            set(&["skills", "1", "description"], json!("nul\u{0}here")),
            "card_json",
        ),
        (set(&["skills"], json!({"id": "x"})), "$.skills"),
        ("{\"name\": ".to_owned(), "card_json"),
        ("[1, 2]".to_owned(), "$"),
        ("x".repeat(300 * 1024), "card_json"),
    ];
    for (card, path) in cases {
        let e = import_raw(&s, card).await.expect_err(path);
        assert_eq!(
            (e.code(), e.field()),
            (Some(Code::InvalidArgument), Some(path)),
            "{e:?}"
        );
    }
    let listed = s
        .admin
        .list_manifests(agentry_client::ListManifests::new())
        .await
        .expect("list");
    assert!(
        listed.manifests.is_empty(),
        "nothing half-written: {:?}",
        listed.manifests
    );
}

async fn import_raw(s: &TestServer, card: String) -> agentry_client::Result<pb::ImportResponse> {
    s.admin.import_agent_card(ImportAgentCard::new(card)).await
}

#[tokio::test]
async fn a_card_imported_again_updates_only_with_a_higher_version() {
    let s = TestServer::start().await;
    let first = import(&s, &full_card()).await.expect("first");
    assert_eq!(first.outcome(), pb::ImportOutcome::Created);
    let again = import(&s, &full_card()).await.expect("again");
    assert_eq!(again.outcome(), pb::ImportOutcome::Unchanged);
    assert_eq!(again.manifest, first.manifest);

    let mut changed = full_card();
    changed["skills"][1]["description"] = json!("Scales recipes up and down");
    let e = import(&s, &changed)
        .await
        .expect_err("same version, other content");
    assert_eq!(e.code(), Some(Code::FailedPrecondition));

    changed["version"] = json!("1.3.0");
    let checked = s
        .admin
        .import_agent_card(ImportAgentCard::new(changed.to_string()).validate_only())
        .await
        .expect("validate only");
    assert_eq!(checked.outcome(), pb::ImportOutcome::Validated);
    let stored = s
        .admin
        .get_manifest_by_agent_id("recipe-agent")
        .await
        .expect("get");
    assert_eq!(stored.version, "1.2.0", "validate_only wrote nothing");

    let updated = import(&s, &changed).await.expect("higher version");
    assert_eq!(updated.outcome(), pb::ImportOutcome::Updated);
    let m = updated.manifest.expect("manifest");
    assert_eq!(
        (m.version.as_str(), m.id.as_str()),
        ("1.3.0", first.manifest.as_ref().unwrap().id.as_str())
    );
    assert_eq!(m.skills[1].description, "Scales recipes up and down");

    let mut older = full_card();
    older["version"] = json!("1.0.0");
    assert_eq!(code(import(&s, &older).await), Code::FailedPrecondition);
}

#[tokio::test]
async fn an_mcp_server_json_imports() {
    let s = TestServer::start().await;
    let server = json!({
        "$schema": "https://static.modelcontextprotocol.io/schemas/2025-09-29/server.schema.json",
        "name": "io.github.example/weather",
        "title": "Weather",
        "description": "Weather forecasts over MCP",
        "version": "1.0.2",
        "websiteUrl": "https://weather.example.com",
        "repository": {"url": "https://github.com/example/weather", "source": "github"},
        "packages": [{"registryType": "npm", "identifier": "@example/weather", "version": "1.0.2", "transport": {"type": "stdio"}}],
        "remotes": [{"type": "streamable-http", "url": "https://mcp.weather.example.com/mcp"}]
    });
    let imported = s
        .admin
        .import_mcp_server(ImportMcpServer::new(server.to_string()))
        .await
        .expect("import");
    let m = imported.manifest.expect("manifest");
    assert_eq!(
        (m.agent_id.as_str(), m.agent_type.as_str(), m.name.as_str()),
        ("io-github-example-weather", "mcp", "Weather")
    );
    let card = m.card.expect("card");
    assert_eq!(card.interfaces[0].protocol_binding, "MCP+streamable-http");
    assert_eq!(
        card.provider.expect("provider").url,
        "https://github.com/example/weather"
    );
    assert!(
        imported.ignored.contains(&"$.packages".to_owned()),
        "{:?}",
        imported.ignored
    );
    assert!(imported.ignored.contains(&"$.repository.source".to_owned()));
    let e = s
        .admin
        .import_mcp_server(ImportMcpServer::new(
            json!({"name": "weather", "description": "d", "version": "1.0.0"}).to_string(),
        ))
        .await
        .expect_err("name without namespace");
    assert_eq!(e.field(), Some("$.name"));
}

/// GET `path` on `addr` with `key`, as a plain HTTP/1.1 client: status and body.
async fn http_get(addr: SocketAddr, path: &str, key: Option<&str>) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = key
        .map(|k| format!("authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: agentry\r\n{auth}connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut text = String::new();
    stream.read_to_string(&mut text).await.expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, body.to_owned())
}

#[tokio::test]
async fn the_exported_card_keeps_every_mapped_field_over_grpc_and_plain_http() {
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let s = TestServer::start_with(|c| c.metrics_addr = Some(metrics)).await;
    import(&s, &full_card()).await.expect("import");
    let t = s.tenant("acme").await;
    let other = s.tenant("globex").await;
    let config = t
        .client
        .create_configuration(CreateConfiguration::for_agent("recipe-agent"))
        .await
        .expect("configuration");

    let exported: Value =
        serde_json::from_str(&t.client.get_agent_card(&config.id).await.expect("card"))
            .expect("JSON");
    let original = full_card();
    for field in [
        "name",
        "description",
        "version",
        "provider",
        "documentationUrl",
        "iconUrl",
        "securitySchemes",
        "securityRequirements",
        "defaultInputModes",
        "defaultOutputModes",
        "capabilities",
    ] {
        assert_eq!(exported[field], original[field], "{field}");
    }
    let mut skills = original["skills"].clone();
    // Ignored on import, so not exported.
    skills[0]
        .as_object_mut()
        .unwrap()
        .remove("securityRequirements");
    assert_eq!(exported["skills"], skills);
    let interfaces = exported["supportedInterfaces"]
        .as_array()
        .expect("interfaces");
    assert_eq!(interfaces.len(), 3);
    for (got, want) in interfaces
        .iter()
        .zip(original["supportedInterfaces"].as_array().unwrap())
    {
        for field in ["url", "protocolBinding", "protocolVersion"] {
            assert_eq!(got[field], want[field]);
        }
        assert_eq!(got["tenant"], json!(t.id), "the tenant that sees the card");
    }
    assert!(exported.get("signatures").is_none());

    // Another tenant's configuration is not found, over both.
    assert_eq!(
        code(other.client.get_agent_card(&config.id).await),
        Code::NotFound
    );
    let path = format!("/configurations/{}/.well-known/agent-card.json", config.id);
    let (status, body) = http_get(metrics, &path, Some(&t.tenant_key)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON"),
        exported
    );
    assert_eq!(
        http_get(metrics, &path, Some(&other.tenant_key)).await.0,
        404
    );
    assert_eq!(http_get(metrics, &path, None).await.0, 401);
    assert_eq!(
        http_get(
            metrics,
            "/configurations/nope/.well-known/agent-card.json",
            Some(&t.tenant_key)
        )
        .await
        .0,
        404
    );
    // The scrape is still there.
    let (status, body) = http_get(metrics, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(body.contains("agentry_"), "{body}");
}

/// A manifest whose one skill has `name`, or whose example mentions `word`.
fn skill_card(name: &str, skill_name: &str, example: &str) -> Value {
    let mut card = minimal_card();
    card["name"] = json!(name);
    card["skills"] = json!([{
        "id": skill_name.to_lowercase().replace(' ', "-"),
        "name": skill_name,
        "description": "does one thing",
        "tags": [],
        "examples": [example]
    }]);
    card
}

async fn search(client: &agentry_client::Client, request: SearchAgents) -> Vec<(String, f64)> {
    client
        .search_agents(request)
        .await
        .expect("search")
        .results
        .into_iter()
        .map(|r| (r.agent_id, r.relevance))
        .collect()
}

#[tokio::test]
async fn search_ranks_name_matches_first_and_answers_only_live_agents_of_the_tenant() {
    let s = TestServer::start().await;
    for card in [
        skill_card("Translator", "Translate text", "hello"),
        skill_card(
            "Summarizer",
            "Summarize text",
            "translate this, then summarize it",
        ),
        skill_card("Idle Translator", "Translate documents", "hello"),
        skill_card("Secret Translator", "Translate secrets", "hello"),
    ] {
        import(&s, &card).await.expect("import");
    }
    routing::manifest(
        &s,
        "legacy",
        "ide",
        &["translation_memory"],
        pb::ManifestStatus::Active,
    )
    .await;
    let t = s.tenant("acme").await;
    let other = s.tenant("globex").await;
    for agent in ["translator", "summarizer", "idle-translator", "legacy"] {
        routing::configure(&t, agent, 4).await;
    }
    routing::configure(&other, "secret-translator", 4).await;
    for agent in ["translator", "summarizer", "legacy"] {
        register(&t, &format!("{agent}-1"), agent).await;
    }
    register(&other, "secret-1", "secret-translator").await;
    routing::wait_available(&t.client, AgentFilter::new(), "three routable", |a| {
        a.len() == 3
    })
    .await;
    routing::wait_available(&other.client, AgentFilter::new(), "theirs routable", |a| {
        a.len() == 1
    })
    .await;

    let found = search(&t.client, SearchAgents::new("translate")).await;
    let agents: Vec<&str> = found.iter().map(|(a, _)| a.as_str()).collect();
    // The name match outranks the example match; the idle one (no instance)
    // and the other tenant's never show.
    assert_eq!(agents, ["translator", "summarizer"], "{found:?}");
    assert!(routing::close(found[0].1, 1.0) && found[1].1 < found[0].1);

    // A prefix reaches the capability-only manifest too.
    let found = search(&t.client, SearchAgents::new("transl")).await;
    assert!(found.iter().any(|(a, _)| a == "legacy"), "{found:?}");

    // Unavailable ones on request, with the reason.
    let all = t
        .client
        .search_agents(SearchAgents::new("translate").include_unavailable())
        .await
        .expect("search");
    let idle = all
        .results
        .iter()
        .find(|r| r.agent_id == "idle-translator")
        .expect("idle one");
    assert_eq!(
        idle.unavailable_reason(),
        pb::ExclusionReason::NoHealthyInstance
    );
    assert!(idle.agent.is_none() && idle.availability == 0.0);
    assert!(
        all.results
            .iter()
            .all(|r| r.agent_id != "secret-translator")
    );
    let live = all
        .results
        .iter()
        .find(|r| r.agent_id == "translator")
        .expect("live");
    assert_eq!(
        live.agent
            .as_ref()
            .and_then(|a| a.instance.as_ref())
            .map(|i| i.instance_id.as_str()),
        Some("translator-1")
    );

    // The other tenant finds its own only.
    let theirs = search(&other.client, SearchAgents::new("translate")).await;
    assert_eq!(
        theirs.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
        ["secret-translator"]
    );

    // Fields, filters, explain, pages.
    let by_example = search(&t.client, SearchAgents::new("example:translate")).await;
    assert_eq!(
        by_example
            .iter()
            .map(|(a, _)| a.as_str())
            .collect::<Vec<_>>(),
        ["summarizer"]
    );
    let filtered = search(
        &t.client,
        SearchAgents::new("translate").filter(AgentFilter::new().capability("summarize-text")),
    )
    .await;
    assert_eq!(
        filtered.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
        ["summarizer"],
        "a skill id is a capability"
    );
    let explained = t
        .client
        .search_agents(SearchAgents::new("translate").explain())
        .await
        .expect("explain");
    let first = &explained.results[0];
    let term = &first.skills[0].terms[0];
    assert_eq!(
        (term.term.as_str(), term.field.as_str(), term.word.as_str()),
        ("translate", "name", "translate")
    );
    let terms = first
        .availability_terms
        .as_ref()
        .expect("availability terms");
    assert!(routing::close(terms.score, first.availability));
    assert!(routing::close(
        first.score,
        first.relevance * (0.5 + 0.5 * first.availability)
    ));
    let page = t
        .client
        .search_agents(SearchAgents::new("translate").page_size(1))
        .await
        .expect("page 1");
    assert_eq!((page.results.len(), page.total_size), (1, 2));
    let next = t
        .client
        .search_agents(
            SearchAgents::new("translate")
                .page_size(1)
                .page_token(page.next_page_token),
        )
        .await
        .expect("page 2");
    assert_eq!(next.results[0].agent_id, "summarizer");
    assert!(next.next_page_token.is_empty());

    // A bad query names the field.
    let e = t
        .client
        .search_agents(SearchAgents::new("colour:red"))
        .await
        .expect_err("bad field");
    assert_eq!(
        (e.code(), e.field()),
        (Some(Code::InvalidArgument), Some("query"))
    );
}

#[tokio::test]
async fn a_departed_agent_leaves_the_search_and_a_new_skill_enters_it() {
    let s = TestServer::start().await;
    import(&s, &skill_card("Translator", "Translate text", "hello"))
        .await
        .expect("import");
    let t = s.tenant("acme").await;
    routing::configure(&t, "translator", 4).await;
    let reg = register(&t, "translator-1", "translator").await;
    routing::wait_available(&t.client, AgentFilter::new(), "routable", |a| a.len() == 1).await;
    assert_eq!(
        search(&t.client, SearchAgents::new("translate"))
            .await
            .len(),
        1
    );

    t.agent
        .deactivate_registration(&reg.instance_id, 0)
        .await
        .expect("deactivate");
    eventually(
        routing::DEADLINE,
        "the departed agent leaves the search",
        || {
            let client = t.client.clone();
            async move {
                search(&client, SearchAgents::new("translate"))
                    .await
                    .is_empty()
            }
        },
    )
    .await;

    // A new version with another skill is searchable once its update lands.
    let mut card = skill_card("Translator", "Translate text", "hello");
    card["version"] = json!("0.2.0");
    card["skills"][0]["tags"] = json!(["multilingual"]);
    import(&s, &card).await.expect("update");
    register(&t, "translator-2", "translator").await;
    eventually(routing::DEADLINE, "the new tag is searchable", || {
        let client = t.client.clone();
        async move {
            search(&client, SearchAgents::new("tag:multilingual"))
                .await
                .len()
                == 1
        }
    })
    .await;
}

#[tokio::test]
async fn concurrent_first_imports_of_one_card_create_it_once() {
    let s = TestServer::start().await;
    let imports = (0..8).map(|_| {
        let admin = s.admin.clone();
        async move {
            admin
                .import_agent_card(ImportAgentCard::new(full_card().to_string()))
                .await
        }
    });
    let outcomes: Vec<pb::ImportOutcome> = futures_join(imports)
        .await
        .into_iter()
        .map(|r| r.expect("every import succeeds").outcome())
        .collect();
    let created = outcomes
        .iter()
        .filter(|o| **o == pb::ImportOutcome::Created)
        .count();
    let unchanged = outcomes
        .iter()
        .filter(|o| **o == pb::ImportOutcome::Unchanged)
        .count();
    assert_eq!((created, unchanged), (1, 7), "{outcomes:?}");
}

/// Runs the futures at once on the runtime, in order of their results.
async fn futures_join<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn skills_and_card_fields_are_checked_on_create_and_update_naming_proto_fields() {
    use agentry_client::{CreateManifest, Skill, UpdateManifest};
    let s = TestServer::start().await;
    let create = |skills: Vec<Skill>, card: Option<pb::AgentCardFields>| {
        let mut m = CreateManifest::new("coder", "ide", "Coder", "1.0.0");
        for skill in skills {
            m = m.skill(skill);
        }
        if let Some(card) = card {
            m = m.card(card);
        }
        let admin = s.admin.clone();
        async move { admin.create_manifest(m).await }
    };
    let e = create(vec![Skill::new("two words", "x")], None)
        .await
        .expect_err("whitespace id");
    assert_eq!(e.field(), Some("manifest.skills[0].id"));
    let e = create(vec![Skill::new("a", "A"), Skill::new("a", "B")], None)
        .await
        .expect_err("duplicate");
    assert_eq!(e.field(), Some("manifest.skills[1].id"));
    let bad_card = pb::AgentCardFields {
        interfaces: vec![pb::AgentInterface {
            url: "not a url".into(),
            protocol_binding: "GRPC".into(),
            protocol_version: "1.0".into(),
        }],
        ..Default::default()
    };
    let e = create(vec![], Some(bad_card)).await.expect_err("bad url");
    assert_eq!(e.field(), Some("manifest.card.interfaces[0].url"));

    let m = create(vec![Skill::new("edit", "Edit code").tags(["code"])], None)
        .await
        .expect("valid");
    assert_eq!(m.skills[0].tags, ["code"]);
    let updated = s
        .admin
        .update_manifest(UpdateManifest::new(&m.id).skills([Skill::new("review", "Review code")]))
        .await
        .expect("update skills");
    assert_eq!(
        updated
            .skills
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        ["review"]
    );
    assert_eq!(
        updated.capabilities,
        Vec::<String>::new(),
        "capabilities stay apart"
    );
}
