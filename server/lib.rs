//! Agentry server: a multi-tenant registry and router for AI agents.
//!
//! The three tiers of the product each have a module (`manifests`,
//! `configurations`, and later registrations and routing), split into the gRPC
//! service (`service.rs`) and its SQL (`store.rs`). Cross-cutting pieces:
//! `auth` (API keys, roles, tenant scope), `error` (the one place errors become
//! `tonic::Status`), `validate` (request checks that name the field) and
//! `server` (wiring, health, reflection, shutdown).

pub mod admin;
pub mod auth;
pub mod config;
pub mod configurations;
pub mod context;
pub mod db;
pub mod error;
pub mod manifests;
pub mod pagination;
pub mod pb;
pub mod registrations;
pub mod routing;
pub mod server;
pub mod validate;

pub use config::{Config, ServeConfig};
pub use error::{Error, Result};
pub use server::{Server, serve};
