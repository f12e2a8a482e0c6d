//! Tenants and API keys: validated requests (`request`), the service
//! (`service`) and the SQL (`store`, also used by the `keys` and `tenants`
//! commands).

pub mod request;
mod service;
pub mod store;

pub use service::AdminApi;
