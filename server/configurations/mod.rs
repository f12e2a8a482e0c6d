//! Tier 2: configurations, how one tenant uses one manifest.

mod service;
pub mod store;

pub use service::ConfigurationApi;
