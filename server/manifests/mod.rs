//! Tier 1: manifests, the system-wide blueprints of agent kinds: validated
//! requests (`request`), the service (`service`) and the SQL (`store`); the
//! skills and card fields they carry (`card`), the A2A cards and MCP
//! server.json documents they are imported from (`import`) and the cards
//! exported for a tenant's configuration (`export`).

pub mod card;
pub mod export;
pub mod import;
pub mod request;
mod service;
pub mod store;

pub use service::ManifestApi;
