//! A client over TLS: verifies the server against a private CA, presents a
//! client certificate when the server asks for one (mutual TLS), and names
//! the certificate's host when connecting by address.
//!
//! ```sh
//! AGENTRY_URL=https://agentry.internal:50051 AGENTRY_API_KEY=<key> \
//! AGENTRY_CA=ca.pem [AGENTRY_CERT=client.pem AGENTRY_KEY=client.key] [AGENTRY_DOMAIN=agentry.internal] \
//!   cargo run -p agentry-client --example tls
//! ```
//!
//! Without `AGENTRY_CA`, the server's certificate is checked against the
//! system's roots and the webpki roots.

use agentry_client::{Client, ListManifests};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |name: &str| std::env::var(name).ok();
    let url = env("AGENTRY_URL").unwrap_or_else(|| "https://127.0.0.1:50051".into());
    let key = env("AGENTRY_API_KEY").ok_or("set AGENTRY_API_KEY")?;

    let mut builder = Client::builder(url).api_key(key);
    if let Some(ca) = env("AGENTRY_CA") {
        builder = builder.tls_ca_certificate(std::fs::read(ca)?);
    }
    if let (Some(cert), Some(key)) = (env("AGENTRY_CERT"), env("AGENTRY_KEY")) {
        builder = builder.tls_identity(std::fs::read(cert)?, std::fs::read(key)?);
    }
    if let Some(domain) = env("AGENTRY_DOMAIN") {
        builder = builder.tls_domain_name(domain);
    }
    let client = builder.connect().await?;
    let page = client.list_manifests(ListManifests::new()).await?;
    println!(
        "connected over TLS; {} manifests on the first page",
        page.manifests.len()
    );
    Ok(())
}
