//! Connecting: [`ClientBuilder`] and the [`Client`] it makes.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Response, Status};

use crate::error::{Error, Result};
use crate::pb::admin_service_client::AdminServiceClient;
use crate::pb::configuration_service_client::ConfigurationServiceClient;
use crate::pb::manifest_service_client::ManifestServiceClient;
use crate::pb::registration_service_client::RegistrationServiceClient;
use crate::pb::routing_service_client::RoutingServiceClient;

/// Default per-call timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default timeout for establishing the connection.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of a read-only call while the server answers `UNAVAILABLE`.
const READ_ATTEMPTS: u32 = 3;
/// Backoff before the second attempt; doubles for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// A connection to an Agentry server, authenticated with one API key.
///
/// Cheap to clone: clones share the underlying HTTP/2 connection, so make one
/// per API key and clone it into tasks. Calls are grouped by resource:
/// [manifests](#manifest-operations), [configurations](#configuration-operations)
/// and [tenants and API keys](#admin-operations).
///
/// Every call has a deadline ([`ClientBuilder::timeout`]). Read-only calls
/// (`get_*`, `list_*`) are made up to three times, with exponential backoff
/// and jitter, while the server answers `UNAVAILABLE`; other calls are never
/// retried. The deadline applies to each attempt.
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

/// Settings of a [`Client`]; made by [`Client::builder`].
#[must_use = "a builder does nothing until `connect` is called"]
pub struct ClientBuilder {
    uri: std::result::Result<Uri, String>,
    api_key: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("uri", &self.uri)
            .field("api_key", &self.api_key.as_ref().map(|_| Redacted))
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl Client {
    /// Starts configuring a client of the server at `url`, e.g.
    /// `"http://127.0.0.1:50051"`.
    ///
    /// `url` may be a `&str`, a `String` or a [`Uri`]. Only `http://` is
    /// supported (no TLS yet). An unusable URL is reported by
    /// [`ClientBuilder::connect`] as [`Error::InvalidConfig`].
    pub fn builder<U>(url: U) -> ClientBuilder
    where
        U: TryInto<Uri>,
        U::Error: fmt::Display,
    {
        ClientBuilder {
            uri: url
                .try_into()
                .map_err(|e| format!("invalid server URL: {e}")),
            api_key: None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The per-call timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn manifest_service(
        &self,
    ) -> ManifestServiceClient<InterceptedService<Channel, Auth>> {
        ManifestServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub(crate) fn configuration_service(
        &self,
    ) -> ConfigurationServiceClient<InterceptedService<Channel, Auth>> {
        ConfigurationServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub(crate) fn registration_service(
        &self,
    ) -> RegistrationServiceClient<InterceptedService<Channel, Auth>> {
        RegistrationServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub(crate) fn routing_service(
        &self,
    ) -> RoutingServiceClient<InterceptedService<Channel, Auth>> {
        RoutingServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub(crate) fn admin_service(&self) -> AdminServiceClient<InterceptedService<Channel, Auth>> {
        AdminServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
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
                    tokio::time::sleep(backoff(attempt)).await;
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

impl ClientBuilder {
    /// The API key to send with every call, as `authorization: Bearer <key>`.
    ///
    /// Without one, every call fails with [`Error::Unauthenticated`]. The key
    /// never appears in `Debug` output or errors.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Deadline of each call attempt (default 30 s). A call that runs out of
    /// time fails with [`Error::DeadlineExceeded`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long establishing the connection may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Connects to the server now.
    ///
    /// Fails with [`Error::InvalidConfig`] for an unusable URL or API key, and
    /// with [`Error::Transport`] when the server cannot be reached.
    pub async fn connect(self) -> Result<Client> {
        let (endpoint, client) = self.prepare()?;
        let channel = endpoint.connect().await?;
        Ok(client(channel))
    }

    /// Makes a client that connects on its first call (and reconnects as
    /// needed), so that a server that is down is reported by calls, as
    /// [`Error::Unavailable`].
    ///
    /// Must be called from within a Tokio runtime. Fails with
    /// [`Error::InvalidConfig`] for an unusable URL or API key.
    pub fn connect_lazy(self) -> Result<Client> {
        let (endpoint, client) = self.prepare()?;
        Ok(client(endpoint.connect_lazy()))
    }

    /// Checks the settings; returns the endpoint and how to make the client
    /// from its channel.
    fn prepare(self) -> Result<(Endpoint, impl FnOnce(Channel) -> Client)> {
        let uri = self.uri.map_err(Error::InvalidConfig)?;
        match uri.scheme_str() {
            Some("http") if uri.authority().is_some() => {}
            Some("https") => {
                return Err(Error::InvalidConfig(format!(
                    "server URL `{uri}`: this client does not speak TLS yet; use http:// \
                     (behind a TLS-terminating proxy if needed)"
                )));
            }
            _ => {
                return Err(Error::InvalidConfig(format!(
                    "server URL `{uri}` must look like `http://host:port`"
                )));
            }
        }
        let auth = Auth::new(self.api_key.as_deref())?;
        let endpoint = Endpoint::from(uri.clone()).connect_timeout(self.connect_timeout);
        let timeout = self.timeout;
        Ok((endpoint, move |channel| Client {
            channel,
            auth,
            uri,
            timeout,
        }))
    }
}

/// Adds `authorization: Bearer <key>` to every request.
#[derive(Clone)]
pub(crate) struct Auth {
    header: Option<AsciiMetadataValue>,
}

impl Auth {
    fn new(key: Option<&str>) -> Result<Auth> {
        let header = match key {
            None => None,
            Some(key) => {
                let mut value = MetadataValue::try_from(format!("Bearer {}", key.trim()))
                    // Never echo the key itself.
                    .map_err(|_| {
                        Error::InvalidConfig(
                            "the API key contains characters not allowed in a header".into(),
                        )
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Auth { header })
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.header.is_some() {
            "Bearer <redacted>"
        } else {
            "none"
        })
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// Stands in for a secret in `Debug` output.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Sleep before attempt `attempt + 1`: exponential, with the upper half jittered.
fn backoff(attempt: u32) -> Duration {
    let full = FIRST_BACKOFF.saturating_mul(1 << (attempt - 1).min(16));
    let half = full / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let builder = Client::builder("http://127.0.0.1:50051").api_key("agk_id_secret");
        let text = format!("{builder:?}");
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        let auth = Auth::new(Some("agk_id_secret")).expect("auth");
        assert_eq!(format!("{auth:?}"), "Bearer <redacted>");
    }

    #[test]
    fn auth_adds_the_bearer_header() {
        let mut auth = Auth::new(Some(" agk_x ")).expect("auth");
        let request = auth.call(Request::new(())).expect("intercept");
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .map(|v| v.to_str().ok()),
            Some(Some("Bearer agk_x"))
        );
        let mut none = Auth::new(None).expect("auth");
        assert!(
            none.call(Request::new(()))
                .expect("intercept")
                .metadata()
                .get("authorization")
                .is_none()
        );
    }

    #[tokio::test]
    async fn bad_settings_are_invalid_config() {
        let e = Client::builder("http://127.0.0.1:1")
            .api_key("bad\nkey")
            .connect_lazy()
            .expect_err("key");
        assert!(matches!(e, Error::InvalidConfig(_)));
        assert!(!e.to_string().contains("bad"), "{e}");
        for url in [
            "not a url",
            "127.0.0.1:50051",
            "/path",
            "https://example.com",
            "ftp://x",
        ] {
            let e = Client::builder(url).connect().await.expect_err(url);
            assert!(matches!(e, Error::InvalidConfig(_)), "{url}: {e:?}");
        }
    }

    #[tokio::test]
    async fn unreachable_servers_are_transport_errors_or_unavailable() {
        // Port 1 on localhost refuses connections.
        let e = Client::builder("http://127.0.0.1:1")
            .connect()
            .await
            .expect_err("refused");
        assert!(matches!(e, Error::Transport(_)), "{e:?}");
        let lazy = Client::builder("http://127.0.0.1:1")
            .connect_lazy()
            .expect("lazy");
        let e = lazy.get_manifest("x").await.expect_err("refused");
        assert_eq!(e.code(), Some(Code::Unavailable), "{e:?}");
    }

    #[test]
    fn backoff_grows_with_jitter() {
        for _ in 0..100 {
            let first = backoff(1);
            let second = backoff(2);
            assert!(first >= FIRST_BACKOFF / 2 && first <= FIRST_BACKOFF);
            assert!(second >= FIRST_BACKOFF && second <= FIRST_BACKOFF * 2);
        }
    }

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
