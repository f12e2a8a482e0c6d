//! Tier 3: registrations, the running agent instances, and how they stay
//! registered: the bidirectional health stream (`stream`), the in-memory
//! sessions and batched heartbeat writer (`sessions`), and the stale sweep
//! (`sweeper`).

mod service;
pub mod sessions;
pub mod store;
mod stream;
pub mod sweeper;

pub use service::RegistrationApi;
