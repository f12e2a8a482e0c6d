//! Agentry server: a multi-tenant registry and router for AI agents.
//!
//! `ARCHITECTURE.md` at the repository root walks through the parts. In short:
//! each tier has a module (`manifests`, `configurations`, `registrations`,
//! `routing`, plus `admin` for tenants and keys) holding its validated
//! requests (`request.rs`), its gRPC service (`service.rs`) and its SQL
//! (`store.rs`), and the moving parts of that tier (health streams and the
//! heartbeat writer; the availability view and the lease writer). `feed`
//! carries committed database changes to every replica's view, key cache and
//! sessions. Cross-cutting: `auth` (API keys, roles, tenant scope, the opening
//! of every handler), `limits` (rates and budgets per key, tenant and peer),
//! `audit` (the log of admin and tenant changes, written by the stores in the
//! change's transaction), `pooler` (the start-up check for a transaction
//! pooler that loses prepared statements), `telemetry` (metrics, request ids, access lines), `error` (the one mapping to `tonic::Status`, and of
//! database errors to domain errors), `validate`, `pagination`, `pb` (wire
//! types), `connections` (the listener's caps, handshake timeout and TLS),
//! `outbox` (the byte-bounded queue of every server stream), and `server`
//! (wiring, health, shutdown).

pub mod admin;
pub mod audit;
pub mod auth;
pub mod batching;
pub mod config;
pub mod configurations;
pub mod connections;
pub mod db;
pub mod deadline;
pub mod error;
pub mod feed;
pub mod limits;
pub mod manifests;
pub mod outbox;
pub mod pagination;
pub mod pb;
pub mod periodic;
pub mod pooler;
pub mod registrations;
pub mod request;
pub mod routing;
pub mod server;
pub mod telemetry;
pub mod validate;

pub use config::{Config, ServeConfig};
pub use error::{Error, Result};
pub use server::{Server, serve};
