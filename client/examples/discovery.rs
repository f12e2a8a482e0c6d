//! Discovery: import an A2A AgentCard, register an agent for it, find it by
//! one of its skills, and read the card the tenant sees.
//!
//! ```sh
//! AGENTRY_URL=http://127.0.0.1:50051 AGENTRY_API_KEY=agk_... \
//!     cargo run -p agentry-client --example discovery
//! ```
//!
//! `AGENTRY_API_KEY` must be an admin key. The example creates a tenant with
//! a tenant key and an agent key, imports the card (again: `UNCHANGED`),
//! configures it for the tenant, registers an instance, then searches.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentry_client::{
    Client, CreateApiKey, CreateConfiguration, ImportAgentCard, RegisterInstance, SearchAgents, pb,
};

const CARD: &str = r#"{
  "name": "Translator",
  "description": "Translates text between languages",
  "version": "1.0.0",
  "supportedInterfaces": [
    {"url": "https://translator.example.com/a2a", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
  ],
  "provider": {"organization": "Example Inc.", "url": "https://example.com"},
  "capabilities": {"streaming": true},
  "defaultInputModes": ["text/plain"],
  "defaultOutputModes": ["text/plain"],
  "skills": [
    {"id": "translate", "name": "Translate text", "description": "Translates a text into another language",
     "tags": ["language", "french", "german"], "examples": ["Translate 'good morning' into French"]},
    {"id": "detect-language", "name": "Detect language", "description": "Says which language a text is in",
     "tags": ["language"]}
  ]
}"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("AGENTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:50051".to_owned());
    let admin_key =
        std::env::var("AGENTRY_API_KEY").map_err(|_| "set AGENTRY_API_KEY to an admin API key")?;
    let connect = |key: String| {
        let url = url.clone();
        async move {
            Client::builder(url.as_str())
                .api_key(key)
                .timeout(Duration::from_secs(10))
                .connect()
                .await
        }
    };
    let admin = connect(admin_key).await?;

    let imported = admin.import_agent_card(ImportAgentCard::new(CARD)).await?;
    let manifest = imported.manifest.clone().unwrap_or_default();
    println!(
        "{:?}: manifest {} {} with {} skills; ignored: {:?}",
        imported.outcome(),
        manifest.agent_id,
        manifest.version,
        manifest.skills.len(),
        imported.ignored
    );

    let suffix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let tenant = admin.create_tenant(&format!("discovery-{suffix}")).await?;
    let key = |role| admin.create_api_key(CreateApiKey::new(role).tenant(&tenant.id));
    let owner = connect(key(pb::Role::Tenant).await?.secret).await?;
    let agent = connect(key(pb::Role::Agent).await?.secret).await?;

    let config = owner
        .create_configuration(CreateConfiguration::for_agent(&manifest.agent_id))
        .await?;
    agent
        .register_instance(RegisterInstance::new("translator-1", &manifest.agent_id))
        .await?;

    // The view of every replica follows the registration through the change
    // feed: ask until the instance is routable.
    let mut found = Vec::new();
    for _ in 0..50 {
        found = owner
            .search_agents(SearchAgents::new("french").explain())
            .await?
            .results;
        if !found.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for r in &found {
        let skill = r.skills.first().map_or("?", |s| s.skill_name.as_str());
        let instance = r
            .agent
            .as_ref()
            .and_then(|a| a.instance.as_ref())
            .map_or("?", |i| i.instance_id.as_str());
        println!(
            "found {} (skill {skill:?}, relevance {:.2}, availability {:.2}) at instance {instance}",
            r.agent_id, r.relevance, r.availability
        );
    }
    if found.is_empty() {
        return Err("the search found nothing".into());
    }

    let card = owner.get_agent_card(&config.id).await?;
    println!("the tenant's card: {card}");
    Ok(())
}
