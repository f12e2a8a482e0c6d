//! [`Items`]: every item of a list call, across its pages, as a `Stream`.
//! Each list method of [`Client`] has a counterpart here that keeps asking
//! for the next page until the server answers an empty `next_page_token`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_stream::Stream;

use crate::error::Result;
use crate::{Client, pb};

type Page<T> = Pin<Box<dyn Future<Output = Result<(Vec<T>, String)>> + Send>>;
type Fetch<T> = Box<dyn FnMut(String) -> Page<T> + Send>;

/// The items of a list call across all its pages, fetched one page at a
/// time as the stream is read (the request's `page_size` sets the page).
/// A failed page ends the stream after yielding its error.
#[must_use = "a stream does nothing unless polled"]
pub struct Items<T> {
    fetch: Fetch<T>,
    buffered: VecDeque<T>,
    pending: Option<Page<T>>,
    done: bool,
}

impl<T> std::fmt::Debug for Items<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Items")
            .field("buffered", &self.buffered.len())
            .field("done", &self.done)
            .finish()
    }
}

impl<T: Send + 'static> Items<T> {
    fn new(mut fetch: Fetch<T>) -> Self {
        let first = fetch(String::new());
        Items {
            fetch,
            buffered: VecDeque::new(),
            pending: Some(first),
            done: false,
        }
    }
}

impl<T: Unpin> Stream for Items<T> {
    type Item = Result<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<T>>> {
        loop {
            if let Some(item) = self.buffered.pop_front() {
                return Poll::Ready(Some(Ok(item)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            let Some(pending) = self.pending.as_mut() else {
                return Poll::Ready(None);
            };
            match pending.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    self.done = true;
                    self.pending = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Ok((items, next))) => {
                    self.buffered.extend(items);
                    if next.is_empty() {
                        self.done = true;
                        self.pending = None;
                    } else {
                        let page = (self.fetch)(next);
                        self.pending = Some(page);
                    }
                }
            }
        }
    }
}

/// One `Client` method per list call: `$name` streams what `$list` pages.
macro_rules! paginated {
    ($($(#[$doc:meta])* $name:ident => $list:ident($request:ty) -> $item:ty, $field:ident;)*) => {
        impl Client {
            $(
                $(#[$doc])*
                pub fn $name(&self, request: impl Into<$request>) -> Items<$item> {
                    let (client, request) = (self.clone(), request.into());
                    Items::new(Box::new(move |token| {
                        let (client, mut request) = (client.clone(), request.clone());
                        request.page_token = token;
                        Box::pin(async move {
                            let page = client.$list(request).await?;
                            Ok((page.$field, page.next_page_token))
                        })
                    }))
                }
            )*
        }
    };
}

paginated! {
    /// Every manifest [`Client::list_manifests`] would page through.
    all_manifests => list_manifests(pb::ListManifestsRequest) -> pb::Manifest, manifests;
    /// Every configuration [`Client::list_configurations`] would page through.
    all_configurations => list_configurations(pb::ListConfigurationsRequest) -> pb::Configuration, configurations;
    /// Every registration [`Client::list_registrations`] would page through.
    all_registrations => list_registrations(pb::ListRegistrationsRequest) -> pb::Registration, registrations;
    /// Every tenant [`Client::list_tenants`] would page through.
    all_tenants => list_tenants(pb::ListTenantsRequest) -> pb::Tenant, tenants;
    /// Every API key [`Client::list_api_keys`] would page through.
    all_api_keys => list_api_keys(pb::ListApiKeysRequest) -> pb::ApiKey, api_keys;
    /// Every audit event [`Client::list_audit_events`] would page through.
    all_audit_events => list_audit_events(pb::ListAuditEventsRequest) -> pb::AuditEvent, audit_events;
}
