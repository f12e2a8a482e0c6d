//! Request builders: required fields in `new`, optional ones as chained
//! setters, and `From<Builder>` for the protobuf request the call takes.
//!
//! The `Update*` builders also keep the request's `update_mask` in step:
//! every setter names its field there, so that only the fields you set change.
//!
//! One file per resource, named as the `Client` calls that take the builders.

// The macros come before the modules: `macro_rules!` is in scope only below
// its definition.

/// `From<Builder>` for the request message that a builder keeps whole in its
/// `request` field.
macro_rules! into_request {
    ($($builder:ident => $request:ident),+ $(,)?) => {$(
        impl From<$builder> for crate::pb::$request {
            fn from(b: $builder) -> Self {
                b.request
            }
        }
    )+};
}

/// The paging setters every `List*` builder has, for a request in `self.request`.
macro_rules! paging {
    () => {
        /// Maximum number of results (1..=1000; the server defaults to 100).
        pub fn page_size(mut self, page_size: i32) -> Self {
            self.request.page_size = page_size;
            self
        }

        /// The `next_page_token` of the previous page, to get the next one.
        /// Keep the other settings as they were for the previous page.
        pub fn page_token(mut self, page_token: impl Into<String>) -> Self {
            self.request.page_token = page_token.into();
            self
        }
    };
}

mod admin;
mod configurations;
mod manifests;
mod registrations;
mod routing;

pub use admin::{CreateApiKey, ListApiKeys, ListAuditEvents, ListTenants};
pub use configurations::{CreateConfiguration, ListConfigurations, UpdateConfiguration};
pub use manifests::{
    CreateManifest, ImportAgentCard, ImportMcpServer, ListManifests, Skill, UpdateManifest,
};
pub use registrations::{ListRegistrations, RegisterInstance};
pub use routing::{AgentFilter, SearchAgents};

/// Adds `path` to a field mask once.
fn mask(paths: &mut Vec<String>, path: &str) {
    if !paths.iter().any(|p| p == path) {
        paths.push(path.to_owned());
    }
}

/// The mask of an update; always sent, even empty (the server then rejects
/// the update as changing nothing).
fn field_mask(paths: Vec<String>) -> prost_types::FieldMask {
    prost_types::FieldMask { paths }
}

/// The paths of an update mask, for the tests of the `Update*` builders.
#[cfg(test)]
fn paths(mask: Option<prost_types::FieldMask>) -> Vec<String> {
    mask.expect("mask is always sent").paths
}
