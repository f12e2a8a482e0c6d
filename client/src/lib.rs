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
//! takes a builder also takes the request message itself. Each list call
//! pages (`list_manifests`...) and also streams every item across its pages
//! ([`Client::all_manifests`]... return [`Items`]). Every failure is an
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
//! [`ClientBuilder::timeout`], or per call with [`Client::with_timeout`]);
//! streams (the health stream, watches) have none, and run as long as they
//! are wanted. Calls that are safe to repeat (reads, and the writes whose
//! repeat changes nothing more, listed at [`RetryPolicy`]) are retried while
//! the server is unavailable; `acquire_agent` names each reservation with a
//! request id so that its repeat answers the same lease. Other calls are
//! never retried by the [`Client`], since a repeat could apply a change
//! twice. An [`AgentSession`] reconnects, a [`Router`] resubscribes, and a
//! [`Lease`] retries its renewals by themselves.
//!
//! One client can span several replicas of the server
//! ([`ClientBuilder::endpoint`], or one DNS name with
//! [`ClientBuilder::resolve`]): calls are balanced over the replicas that
//! pass their health check, a replica that fails is left out until it passes
//! again, and sessions, routers and leases carry on over the others.
//!
//! # TLS and its features
//!
//! The client speaks plaintext to `http://` URLs and TLS (rustls) to
//! `https://` ones, verifying the server's certificate and, for mutual TLS,
//! presenting its own ([`ClientBuilder::tls_ca_certificate`],
//! [`ClientBuilder::tls_identity`]). Cargo features pick what TLS is built:
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `tls-ring` | yes | TLS, with the `ring` crypto provider |
//! | `tls-aws-lc` | no | TLS, with the `aws-lc-rs` crypto provider (needs a C compiler, and CMake on some targets) |
//! | `tls-webpki-roots` | yes | Mozilla's root certificates, compiled in |
//! | `tls-native-roots` | no | the operating system's root certificates, read when connecting |
//!
//! For aws-lc-rs instead of ring: `default-features = false, features =
//! ["tls-aws-lc", "tls-webpki-roots"]`. With both providers, ring is used
//! unless the process installed a rustls default provider. Without either,
//! the crate has no TLS and an `https://` URL is [`Error::InvalidConfig`]
//! naming the features; without a root store, `https://` needs a CA of
//! its own (`tls_ca_certificate`).
//!
//! # What is this crate's own
//!
//! Its public types do not change with the versions of tonic, hyper or
//! http: [`Error`] holds a [`Code`], a [`Status`] and a [`TransportError`]
//! of this crate, [`Client::builder`] takes the URL as a string, and
//! [`Client::watch_available_agents`] returns [`AvailabilityEvents`]. What is
//! tied to tonic's version, and so *not* covered by this crate's semver, is
//! named so where it is: the escape hatches [`Error::tonic_status`],
//! [`Status::as_tonic`] and [`Status::into_tonic`], [`Error::details`]
//! (tonic-types' [`ErrorDetails`]), `From<tonic::Status> for Error`, and the
//! raw gRPC stubs of [`pb`] (tonic's generated clients).
//!
//! The messages of [`pb`] are prost's, and so are the well-known types they
//! hold, re-exported here ([`Timestamp`], [`Duration`], [`Struct`],
//! [`Value`], [`FieldMask`]): a new major version of prost is a breaking
//! release of this crate.

mod admin;
mod agent;
mod backoff;
mod builders;
mod client;
mod code;
mod configurations;
mod error;
mod json;
mod manifests;
mod pages;
mod registrations;
mod retry;
mod router;
mod routing;
mod status;

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
    AgentFilter, CreateApiKey, CreateConfiguration, CreateManifest, ImportAgentCard,
    ImportMcpServer, ListApiKeys, ListAuditEvents, ListConfigurations, ListManifests,
    ListRegistrations, ListTenants, RegisterInstance, SearchAgents, Skill, UpdateConfiguration,
    UpdateManifest,
};
pub use client::{Client, ClientBuilder, Compression};
pub use code::Code;
pub use error::{Error, Result, TransportError};
pub use json::{json_to_struct, struct_to_json};
pub use pages::Items;
/// The protobuf well-known types of the messages in [`pb`] (prost-types);
/// part of the generated messages, so a new major version of prost is a
/// breaking release of this crate.
pub use prost_types::{Duration, FieldMask, Struct, Timestamp, Value};
pub use retry::RetryPolicy;
pub use router::{Lease, Outcome, Router, RouterView};
pub use routing::{AvailabilityEvents, WatchPosition};
pub use status::Status;
/// The standard error details of a status (`google.rpc`), as
/// [`Error::details`] gives them. A type of tonic-types, whose versions follow
/// tonic's: like the other escape hatches the crate docs list, it is tied to
/// the version of tonic this crate uses and not covered by its semver.
pub use tonic_types::ErrorDetails;

/// Compiles the README's example as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
