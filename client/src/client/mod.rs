//! The [`Client`] facade: the connection and API key it carries, the
//! authenticated service stubs, and how a call is made (deadline, and retries
//! of read-only calls). Its calls, grouped by resource, are in the
//! `manifests`, `configurations`, `registrations`, `routing`, `admin`,
//! `agent` and `router` modules of the crate.

mod auth;
mod builder;
mod replicas;

pub use builder::{ClientBuilder, Compression};

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Uri};
use tonic::{Code, Request, Response, Status};

use self::auth::Auth;
use self::replicas::Replicas;
use crate::error::{Error, Result};
use crate::pb::admin_service_client::AdminServiceClient;
use crate::pb::configuration_service_client::ConfigurationServiceClient;
use crate::pb::manifest_service_client::ManifestServiceClient;
use crate::pb::registration_service_client::RegistrationServiceClient;
use crate::pb::routing_service_client::RoutingServiceClient;
use crate::retry::RetryPolicy;

/// What the service stubs send through: the shared channel plus the API key.
pub(crate) type Authed = InterceptedService<Channel, Auth>;

/// A generated stub over [`Client::authed`], compressing as configured.
macro_rules! stub {
    ($client:ident, $stub:ident) => {{
        let stub = $stub::new($client.authed());
        match $client.compression {
            Some(c) => stub.send_compressed(c).accept_compressed(c),
            None => stub,
        }
    }};
}

/// A request field of type `google.protobuf.Duration`; a `Duration` too large
/// for it is [`Error::InvalidConfig`] naming `field`.
pub(crate) fn proto_duration(field: &str, d: Duration) -> Result<prost_types::Duration> {
    prost_types::Duration::try_from(d).map_err(|e| Error::InvalidConfig(format!("{field}: {e}")))
}

/// A connection that broke under a call is reported by tonic as `UNKNOWN`
/// ("transport error"); gRPC's other clients call it `UNAVAILABLE`, and so
/// does this one, so that it is retried like a replica that went away.
fn lost_connection_is_unavailable(status: Status) -> Status {
    let transport = std::error::Error::source(&status)
        .is_some_and(|source| source.is::<tonic::transport::Error>());
    if status.code() == Code::Unknown && transport {
        Status::unavailable(format!("the connection broke: {}", status.message()))
    } else {
        status
    }
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
/// Every unary call has a deadline ([`ClientBuilder::timeout`], or
/// [`Client::with_timeout`] for some calls), which applies to each attempt.
/// Calls that are safe to repeat are retried by the [`RetryPolicy`] (by
/// default three attempts while the server answers `UNAVAILABLE`); the
/// policy's documentation lists which calls those are and why. Streams
/// ([`Client::watch_available_agents`], the health stream under
/// [`AgentSession`](crate::AgentSession)) have no deadline.
///
/// Given several replicas ([`ClientBuilder::endpoint`], or a DNS name with
/// [`ClientBuilder::resolve`]), a client balances its calls over those that
/// pass their health check.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    auth: Auth,
    uri: Uri,
    timeout: Duration,
    retry: RetryPolicy,
    /// Sent and accepted on every call when set.
    compression: Option<tonic::codec::CompressionEncoding>,
    /// The replicas balanced over, when there are several (or a name to
    /// resolve); they are health-checked while any clone of the client lives.
    replicas: Option<Arc<Replicas>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("uri", &self.uri)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("replicas", &self.replicas)
            .field("compression", &self.compression)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// This client with another deadline for each call attempt, for the calls
    /// made through the copy; e.g. `client.with_timeout(Duration::from_millis(200)).get_manifest(id)`.
    /// Shares the connection and everything else with `self`.
    #[must_use]
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            timeout,
            ..self.clone()
        }
    }

    /// This client with another [`RetryPolicy`], for the calls made through
    /// the copy (e.g. [`RetryPolicy::never`] where a caller retries by itself).
    #[must_use]
    pub fn with_retry_policy(&self, retry: RetryPolicy) -> Client {
        Client {
            retry,
            ..self.clone()
        }
    }

    /// The per-call timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Tells the replica health checks that a call found a replica gone, so
    /// that they look again now rather than at their next interval.
    pub(crate) fn suspect_replicas(&self) {
        if let Some(replicas) = &self.replicas {
            replicas.check_now();
        }
    }

    /// The channel with the API key added to every request, as the generated
    /// service stubs take it.
    fn authed(&self) -> Authed {
        InterceptedService::new(self.channel.clone(), self.auth.clone())
    }

    pub(crate) fn manifest_service(&self) -> ManifestServiceClient<Authed> {
        stub!(self, ManifestServiceClient)
    }

    pub(crate) fn configuration_service(&self) -> ConfigurationServiceClient<Authed> {
        stub!(self, ConfigurationServiceClient)
    }

    pub(crate) fn registration_service(&self) -> RegistrationServiceClient<Authed> {
        stub!(self, RegistrationServiceClient)
    }

    pub(crate) fn routing_service(&self) -> RoutingServiceClient<Authed> {
        stub!(self, RoutingServiceClient)
    }

    pub(crate) fn admin_service(&self) -> AdminServiceClient<Authed> {
        stub!(self, AdminServiceClient)
    }

    /// Makes a call that is safe to repeat, retrying as the policy says.
    pub(crate) async fn retried<Req, Resp, Fut>(
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
                Err(e) => match self.retry.pause(attempt, &e) {
                    Some(pause) => {
                        tokio::time::sleep(pause).await;
                        attempt += 1;
                    }
                    None => return Err(e),
                },
                ok => return ok,
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
            Err(status) => {
                let e = Error::from(lost_connection_is_unavailable(status));
                if matches!(e, Error::Unavailable { .. }) {
                    self.suspect_replicas();
                }
                Err(e)
            }
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
        assert_eq!(e.code(), Some(crate::Code::DeadlineExceeded), "{e:?}");
    }

    #[tokio::test]
    async fn repeatable_calls_are_retried_on_unavailable_and_writes_are_not() {
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
            .retried((), failing(Code::Unavailable))
            .await
            .expect_err("read");
        assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
        assert_eq!(
            calls.swap(0, Ordering::SeqCst),
            3,
            "the default policy's attempts"
        );
        client
            .retried((), failing(Code::Internal))
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
        assert_eq!(client.retried((), flaky).await.expect("second attempt"), 7);

        // A client's retry policy can be changed for some calls.
        calls.store(0, Ordering::SeqCst);
        let once = client.with_retry_policy(RetryPolicy::never());
        once.retried((), failing(Code::Unavailable))
            .await
            .expect_err("never retried");
        assert_eq!(calls.swap(0, Ordering::SeqCst), 1);
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
