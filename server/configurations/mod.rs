//! Tier 2: configurations, how one tenant uses one manifest: validated
//! requests (`request`), the service (`service`) and the SQL (`store`).

pub mod request;
mod service;
pub mod store;

pub use service::ConfigurationApi;
