//! Rust client for [Agentry](https://github.com/agentry/agentry), a
//! multi-tenant registry and router for AI agents.
//!
//! Connect once with an API key, then call the server through [`Client`]:
//! request builders ([`CreateManifest`], [`UpdateConfiguration`]...) fill in
//! the protobuf requests of [`pb`], and every failure is an [`Error`] to match.
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
//! Calls have a deadline (30 s unless set with [`ClientBuilder::timeout`]).
//! Read-only calls are retried briefly while the server is unavailable;
//! calls that change something are never retried.

#![warn(missing_docs)]

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

/// Code generated from `proto/agentry/v1/*.proto` by `tests/codegen.rs` of
/// the workspace; do not edit.
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
