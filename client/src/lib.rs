//! Rust client for [Agentry](https://github.com/agentry/agentry), a
//! multi-tenant registry and router for AI agents.
//!
//! Connect once with an API key ([`Client::builder`]); the key's role and
//! tenant decide what the [`Client`] may do. Its calls follow the three tiers
//! of the API, plus routing and administration:
//!
//! - **Manifests**, system-wide blueprints of agent kinds: admins write them,
//!   everyone reads them ([`CreateManifest`], [`ListManifests`], [`UpdateManifest`]).
//! - **Configurations**, how a tenant uses a manifest, with the atomically
//!   kept `current_workload` ([`CreateConfiguration`], [`UpdateConfiguration`],
//!   [`Client::update_workload`]).
//! - **Registrations**, the running instances. An agent process embeds an
//!   [`AgentSession`] ([`Client::agent_session`]): it registers over the
//!   health stream, sends heartbeats, hears configuration changes and drains,
//!   and reconnects by itself. [`RegisterInstance`] and the unary calls serve
//!   agents that cannot hold a stream.
//! - **Routing**, for services that hand tasks to agents: a [`Router`]
//!   ([`Client::router`]) keeps a live [`RouterView`] of the agents matching
//!   an [`AgentFilter`] and hands out [`Lease`]s, each one unit of an agent's
//!   workload, renewed while held and released by [`Lease::complete`] (or, if
//!   dropped, as cancelled).
//! - **Admin**: tenants and API keys ([`CreateApiKey`], [`ListApiKeys`],
//!   [`ListTenants`]) and the stale-instance sweep ([`Client::cleanup`]).
//!
//! Request builders fill in the protobuf requests of [`pb`]; a method that
//! takes a builder also takes the request message itself. Every failure is an
//! [`Error`] to match.
//!
//! ```no_run
//! use agentry_client::{Client, CreateConfiguration, CreateManifest, Error, ListManifests};
//! use std::time::Duration;
//!
//! # async fn run() -> agentry_client::Result<()> {
//! let client = Client::builder("http://127.0.0.1:50051")
//!     .api_key("agk_...")
//!     .timeout(Duration::from_secs(5))
//!     .connect()
//!     .await?;
//!
//! // Manifests need an admin key to create.
//! let request = CreateManifest::new("ide-agent", "ide", "IDE Agent", "1.0.0")
//!     .capabilities(["code_editing", "terminal_access"]);
//! let manifest = match client.create_manifest(request).await {
//!     Ok(manifest) => manifest,
//!     Err(Error::AlreadyExists { .. }) => client.get_manifest_by_agent_id("ide-agent").await?,
//!     Err(e) => return Err(e),
//! };
//!
//! let page = client.list_manifests(ListManifests::new().capability("code_editing")).await?;
//! println!("{} manifests, first page", page.manifests.len());
//!
//! // Configurations belong to the tenant of the key.
//! let configuration = client
//!     .create_configuration(CreateConfiguration::for_manifest(&manifest.id).max_workload(5))
//!     .await?;
//! let reserved = client.update_workload(&configuration.id, 1).await?;
//! assert_eq!(reserved.current_workload, 1);
//! # Ok(())
//! # }
//! ```
//!
//! Routing work with a tenant key:
//!
//! ```no_run
//! use agentry_client::{AgentFilter, Outcome};
//!
//! # async fn run(client: agentry_client::Client) -> agentry_client::Result<()> {
//! let router = client.router(AgentFilter::new().capability("code_editing")).await?;
//! let lease = router.acquire().await?; // one unit of workload, renewed while held
//! println!("send the task to {:?}", lease.instance().map(|i| &i.instance_id));
//! lease.complete(Outcome::Succeeded).await?;
//! # Ok(())
//! # }
//! ```
//!
//! The crate's `examples/` hold a whole agent (`agent.rs`) and router
//! (`router.rs`).
//!
//! Unary calls have a deadline (30 s unless set with
//! [`ClientBuilder::timeout`]); streams (the health stream, watches) have
//! none, and run as long as they are wanted. Read-only calls are retried briefly while the
//! server is unavailable; other calls are never retried by the [`Client`],
//! since a repeat could apply a change twice. The exceptions heal themselves
//! on purpose: an [`AgentSession`] reconnects, a [`Router`] resubscribes, and
//! a [`Lease`] retries its renewals (a renewal only moves the expiry). The
//! client speaks plain `http://` (no TLS yet).

mod admin;
mod agent;
mod backoff;
mod builders;
mod client;
mod configurations;
mod error;
mod json;
mod manifests;
mod registrations;
mod router;
mod routing;

/// Code generated from `proto/agentry/v1/*.proto` by the workspace's
/// `tests/codegen.rs`, which fails when this copy is stale; do not edit
/// (`AGENTRY_BLESS=1 cargo test --test codegen` regenerates it).
#[rustfmt::skip]
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic, rustdoc::all)]
mod generated {
    include!("generated/agentry.v1.rs");
}

/// The protobuf messages and enums of the `agentry.v1` API, as the server
/// sends and receives them.
///
/// Client methods take anything that converts into their request message
/// (the crate's builders, or a message built by hand) and return the response
/// messages as they are. The `*_service_client` modules hold the raw gRPC
/// stubs, for calls this crate does not wrap yet; they send no API key by
/// themselves.
pub mod pb {
    pub use crate::generated::*;
}

pub use agent::{AgentSession, AgentSessionBuilder, Events, SessionEvent, SessionState};
pub use builders::{
    AgentFilter, CreateApiKey, CreateConfiguration, CreateManifest, ListApiKeys,
    ListConfigurations, ListManifests, ListRegistrations, ListTenants, RegisterInstance,
    UpdateConfiguration, UpdateManifest,
};
pub use client::{Client, ClientBuilder};
pub use error::{Error, Result};
pub use json::{json_to_struct, struct_to_json};
pub use prost_types::{Duration, FieldMask, Struct, Timestamp, Value};
pub use router::{Lease, Outcome, Router, RouterView};
pub use tonic::transport::Uri;
pub use tonic::{Code, Status};

/// Compiles the README's example as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
