//! Tier 2: configurations, how one tenant uses one manifest: validated
//! requests (`request`), the service (`service`) and the SQL (`store`); the
//! A2A card of a configuration (`cards`), which the HTTP endpoint (`http`)
//! serves too.

pub mod cards;
mod http;
pub mod request;
mod service;
pub mod store;

pub use http::CardEndpoint;
pub use service::ConfigurationApi;
