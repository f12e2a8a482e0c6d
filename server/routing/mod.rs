//! Routing: validated requests (`request`), the in-memory availability view
//! (`view`), workload leases (`store`, batched by `writer`, expired
//! by the sweep through `expiry`), metrics
//! (`metrics`) and the service (`service`, `watch`).

pub mod expiry;
mod metrics;
pub mod request;
mod service;
pub mod store;
pub mod view;
mod watch;
pub mod writer;

pub use service::RoutingApi;
