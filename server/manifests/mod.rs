//! Tier 1: manifests, the system-wide blueprints of agent kinds.

mod service;
pub mod store;

pub use service::ManifestApi;
