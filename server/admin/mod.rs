//! Tenants and API keys.

mod service;
pub mod store;

pub use service::AdminApi;
