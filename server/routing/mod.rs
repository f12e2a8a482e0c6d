//! Routing: the in-memory availability view (`view`), workload leases
//! (`store`, batched by `writer`), metrics (`metrics`) and the service
//! (`service`, `watch`; answers pre-encoded by `encoded`).

pub mod encoded;
mod metrics;
mod service;
pub mod store;
pub mod view;
mod watch;
pub mod writer;

pub use service::RoutingApi;
