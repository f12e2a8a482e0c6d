//! Routing: validated requests (`request`), what a caller's filter asks and
//! how a manifest meets it (`filter`), the in-memory availability view
//! (`view`), how it weighs instances (`ranking`), the skill index that
//! search reads beside it (`search`) and what watchers are sent
//! of it (`history`), workload leases (`store`, batched by `writer`, expired
//! by the sweep through `expiry`), metrics
//! (`metrics`) and the service (`service`, `watch`).

pub mod expiry;
pub mod filter;
pub mod history;
mod metrics;
pub mod ranking;
pub mod request;
pub mod search;
mod service;
pub mod store;
pub mod view;
mod watch;
pub mod writer;

pub use service::{RoutingApi, WatchSettings};
