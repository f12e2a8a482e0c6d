//! The [`Client`] facade: the connection and API key it carries, the
//! authenticated service stubs, and how a call is made (deadline, and retries
//! of read-only calls). Its calls, grouped by resource, are in the
//! `manifests`, `configurations`, `registrations`, `routing`, `admin`,
//! `agent` and `router` modules of the crate.

mod auth;
mod builder;

pub use builder::ClientBuilder;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Uri};
use tonic::{Code, Request, Response, Status};

use self::auth::Auth;
use crate::backoff::backoff;
use crate::error::{Error, Result};
use crate::pb::admin_service_client::AdminServiceClient;
use crate::pb::configuration_service_client::ConfigurationServiceClient;
use crate::pb::manifest_service_client::ManifestServiceClient;
use crate::pb::registration_service_client::RegistrationServiceClient;
use crate::pb::routing_service_client::RoutingServiceClient;

/// Attempts of a read-only call while the server answers `UNAVAILABLE`.
const READ_ATTEMPTS: u32 = 3;
/// Backoff before the second attempt; doubles for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// What the service stubs send through: the shared channel plus the API key.
pub(crate) type Authed = InterceptedService<Channel, Auth>;

/// A request field of type `google.protobuf.Duration`; a `Duration` too large
/// for it is [`Error::InvalidConfig`] naming `field`.
pub(crate) fn proto_duration(field: &str, d: Duration) -> Result<prost_types::Duration> {
    prost_types::Duration::try_from(d).map_err(|e| Error::InvalidConfig(format!("{field}: {e}")))
}

/// A connection to an Agentry server, authenticated with one API key; made
/// by [`Client::builder`].
///
/// Cheap to clone: clones share the underlying HTTP/2 connection, so make one
/// per API key and clone it into tasks. Calls are grouped by resource:
/// [manifests](#manifest-operations),
/// [configurations](#configuration-operations),
/// [registrations](#registration-operations) and the
/// [agent sessions](#agent-sessions) that keep them alive,
/// [routing](#routing-operations) and the [routers](#routers) that hold a
/// live view and leases, and [tenants and API keys](#admin-operations).
///
/// Every unary call has a deadline ([`ClientBuilder::timeout`]), which
/// applies to each attempt. Read-only calls (`get_*`, `list_*`) are made up
/// to three times, with exponential backoff and jitter, while the server
/// answers `UNAVAILABLE`; calls that change something are never retried,
/// since a lost reply may hide a change that was applied. Streams
/// ([`Client::watch_available_agents`], the health stream under
/// [`AgentSession`](crate::AgentSession)) have no deadline.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    auth: Auth,
    uri: Uri,
    timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("uri", &self.uri)
            .field("timeout", &self.timeout)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// The per-call timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The channel with the API key added to every request, as the generated
    /// service stubs take it.
    fn authed(&self) -> Authed {
        InterceptedService::new(self.channel.clone(), self.auth.clone())
    }

    pub(crate) fn manifest_service(&self) -> ManifestServiceClient<Authed> {
        ManifestServiceClient::new(self.authed())
    }

    pub(crate) fn configuration_service(&self) -> ConfigurationServiceClient<Authed> {
        ConfigurationServiceClient::new(self.authed())
    }

    pub(crate) fn registration_service(&self) -> RegistrationServiceClient<Authed> {
        RegistrationServiceClient::new(self.authed())
    }

    pub(crate) fn routing_service(&self) -> RoutingServiceClient<Authed> {
        RoutingServiceClient::new(self.authed())
    }

    pub(crate) fn admin_service(&self) -> AdminServiceClient<Authed> {
        AdminServiceClient::new(self.authed())
    }

    /// Makes a read-only call, retrying while the server is `UNAVAILABLE`.
    pub(crate) async fn read<Req, Resp, Fut>(
        &self,
        request: Req,
        call: impl Fn(Request<Req>) -> Fut,
    ) -> Result<Resp>
    where
        Req: Clone,
        Fut: Future<Output = std::result::Result<Response<Resp>, Status>>,
    {
        let mut attempt = 1;
        loop {
            match self.once(request.clone(), &call).await {
                Err(Error::Unavailable { .. }) if attempt < READ_ATTEMPTS => {
                    tokio::time::sleep(backoff(FIRST_BACKOFF, Duration::MAX, attempt - 1)).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Makes a call that changes something.
    pub(crate) async fn write<Req, Resp, Fut>(
        &self,
        request: Req,
        call: impl Fn(Request<Req>) -> Fut,
    ) -> Result<Resp>
    where
        Fut: Future<Output = std::result::Result<Response<Resp>, Status>>,
    {
        // Writes are never retried: a lost response may hide an applied write, and a repeat could apply it twice.
        self.once(request, &call).await
    }

    async fn once<Req, Resp, Fut>(
        &self,
        request: Req,
        call: &impl Fn(Request<Req>) -> Fut,
    ) -> Result<Resp>
    where
        Fut: Future<Output = std::result::Result<Response<Resp>, Status>>,
    {
        let mut request = Request::new(request);
        // Sent as `grpc-timeout`, so the server knows the deadline too; tonic
        // enforces it on the client side.
        request.set_timeout(self.timeout);
        let started = tokio::time::Instant::now();
        match call(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status)
                if status.code() == Code::Cancelled && started.elapsed() >= self.timeout =>
            {
                Err(Error::deadline_exceeded(status, self.timeout))
            }
            Err(status) => Err(status.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_server_gives_deadline_exceeded() {
        // Accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _server = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let client = Client::builder(format!("http://{addr}"))
            .timeout(Duration::from_millis(200))
            .connect_lazy()
            .expect("lazy");
        let started = std::time::Instant::now();
        let e = client.update_workload("x", 1).await.expect_err("silent");
        println!("{e:?} after {:?}", started.elapsed());
        assert_eq!(e.code(), Some(Code::DeadlineExceeded), "{e:?}");
    }

    #[tokio::test]
    async fn reads_are_retried_on_unavailable_and_writes_are_not() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let client = Client::builder("http://127.0.0.1:1")
            .connect_lazy()
            .expect("lazy");
        let calls = AtomicU32::new(0);
        let failing = |code: Code| {
            let calls = &calls;
            move |_: Request<()>| {
                calls.fetch_add(1, Ordering::SeqCst);
                std::future::ready(Err::<Response<()>, _>(Status::new(code, "down")))
            }
        };
        let e = client
            .read((), failing(Code::Unavailable))
            .await
            .expect_err("read");
        assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
        assert_eq!(calls.swap(0, Ordering::SeqCst), READ_ATTEMPTS);
        client
            .read((), failing(Code::Internal))
            .await
            .expect_err("read");
        assert_eq!(
            calls.swap(0, Ordering::SeqCst),
            1,
            "only UNAVAILABLE is retried"
        );
        client
            .write((), failing(Code::Unavailable))
            .await
            .expect_err("write");
        assert_eq!(
            calls.swap(0, Ordering::SeqCst),
            1,
            "writes are never retried"
        );

        // A read that recovers on its second attempt succeeds.
        let flaky = |_: Request<()>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(if n == 0 {
                Err(Status::unavailable("down"))
            } else {
                Ok(Response::new(7))
            })
        };
        assert_eq!(client.read((), flaky).await.expect("second attempt"), 7);
    }

    #[test]
    fn clients_and_their_futures_are_send() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<Client>();
        send_sync::<Error>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _guard = rt.enter();
        let client = Client::builder("http://127.0.0.1:1")
            .connect_lazy()
            .expect("lazy");
        send(&client.list_manifests(crate::ListManifests::new()));
        send(&client.get_manifest("x"));
        send(&client.update_workload("x", 1));
        send(&client.create_configuration(crate::CreateConfiguration::for_agent("a")));
        send(&client.revoke_api_key("x"));
    }
}
