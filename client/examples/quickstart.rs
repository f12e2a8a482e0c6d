//! A tour of the SDK against a running server.
//!
//! ```sh
//! AGENTRY_URL=http://127.0.0.1:50051 AGENTRY_API_KEY=agk_... \
//!     cargo run -p agentry-client --example quickstart
//! ```
//!
//! `AGENTRY_API_KEY` must be an admin key. The example creates a tenant and a
//! tenant key, makes sure the `ide-agent` manifest exists, then, as the
//! tenant, configures it and reserves one unit of its workload.

use std::error::Error as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentry_client::{Client, CreateApiKey, CreateConfiguration, CreateManifest, Error, pb};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("AGENTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:50051".to_owned());
    let admin_key =
        std::env::var("AGENTRY_API_KEY").map_err(|_| "set AGENTRY_API_KEY to an admin API key")?;

    let admin = Client::builder(url.as_str())
        .api_key(admin_key)
        .timeout(Duration::from_secs(10))
        .connect()
        .await?;
    println!("connected to {url}");

    // A tenant with a fresh name, so the example can run again.
    let suffix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let tenant = admin.create_tenant(&format!("quickstart-{suffix}")).await?;
    println!("tenant {} ({})", tenant.name, tenant.id);

    let key = admin
        .create_api_key(
            CreateApiKey::new(pb::Role::Tenant)
                .tenant(&tenant.id)
                .description("quickstart"),
        )
        .await?;
    let key_id = key.api_key.as_ref().map_or("?", |k| k.id.as_str());
    println!("tenant key {key_id} (the secret is shown only once; not printed here)");

    // The manifest is shared by all tenants: reuse it when it already exists.
    let request = CreateManifest::new("ide-agent", "ide", "IDE Agent", "1.0.0")
        .description("Edits code in the IDE")
        .capabilities(["code_editing", "terminal_access"])
        .metadata(serde_json::json!({"vendor": "acme"}));
    let manifest = match admin.create_manifest(request).await {
        Ok(manifest) => {
            println!("created manifest {} ({})", manifest.agent_id, manifest.id);
            manifest
        }
        Err(Error::AlreadyExists { .. }) => {
            let manifest = admin.get_manifest_by_agent_id("ide-agent").await?;
            println!(
                "manifest {} already exists ({})",
                manifest.agent_id, manifest.id
            );
            manifest
        }
        Err(e) => return Err(e.into()),
    };

    // From here on, act as the tenant.
    let tenant_client = Client::builder(url.as_str())
        .api_key(key.secret)
        .connect()
        .await?;
    let configuration = tenant_client
        .create_configuration(
            CreateConfiguration::for_manifest(&manifest.id)
                .system_prompt("You are a helpful coding assistant")
                .settings(serde_json::json!({"allowed_directories": ["/workspace"]}))
                .temperature(0.2)
                .max_workload(2),
        )
        .await?;
    println!(
        "configuration {} of {}: max_workload {}",
        configuration.id, configuration.agent_id, configuration.max_workload
    );

    let reserved = tenant_client.update_workload(&configuration.id, 1).await?;
    println!(
        "reserved 1 unit: workload {}/{}",
        reserved.current_workload, reserved.max_workload
    );

    // Over the limit: nothing changes and the call says why.
    match tenant_client.update_workload(&configuration.id, 2).await {
        Err(e @ Error::ResourceExhausted { .. }) => println!("reserving 2 more is refused: {e}"),
        Err(e) => {
            eprintln!("unexpected error: {e} (source: {:?})", e.source());
            return Err(e.into());
        }
        Ok(c) => println!("unexpectedly reserved: workload {}", c.current_workload),
    }

    let released = tenant_client.update_workload(&configuration.id, -1).await?;
    println!(
        "released it: workload {}/{}",
        released.current_workload, released.max_workload
    );
    Ok(())
}
