//! Tier 1: manifests, the system-wide blueprints of agent kinds: validated
//! requests (`request`), the service (`service`) and the SQL (`store`).

pub mod request;
mod service;
pub mod store;

pub use service::ManifestApi;
