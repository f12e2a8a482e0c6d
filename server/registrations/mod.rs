//! Tier 3: registrations, the running agent instances, and how they stay
//! registered: validated requests (`request`), registering (`registry`, batched by `hellos`) and fenced
//! changes (`registry`), the bidirectional health stream (`stream`), the live streams
//! in memory (`sessions`), this replica's lease, which vouches for the
//! streams it holds (`replicas`), the registration writer for the streams' state changes (`writer`), the load writer that publishes their load reports (`load_writer`), the stale sweep (`sweeper`), and the SQL (`store`).

pub mod hellos;
pub mod load;
pub mod load_writer;
pub mod registry;
pub mod replicas;
pub mod request;
mod service;
pub mod sessions;
pub mod store;
pub mod stream;
pub mod sweeper;
pub mod writer;

pub use service::RegistrationApi;
