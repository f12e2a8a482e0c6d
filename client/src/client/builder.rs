//! [`ClientBuilder`]: the settings of a [`Client`], checked once, and the
//! connection it opens. What TLS the crate's features allow is in `tls`.

mod tls;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Uri};

use super::auth::{Auth, Redacted};
use super::replicas::{self, Replicas};
use crate::Client;
use crate::error::{Error, Result};
use crate::retry::RetryPolicy;

/// Default per-call timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default timeout for establishing the connection.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default HTTP/2 keepalive: a ping this often, even when idle...
const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ...and a connection whose ping is not answered within this is dead.
const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default interval of the replicas' health checks.
const DEFAULT_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Settings of a [`Client`]; made by [`Client::builder`].
#[must_use = "a builder does nothing until `connect` is called"]
pub struct ClientBuilder {
    /// The replicas: the URL given to [`Client::builder`], then those added.
    uris: Vec<std::result::Result<Uri, String>>,
    api_key: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
    compression: Option<Compression>,
    tls: Tls,
    keepalive: Option<(Duration, Duration)>,
    retry: RetryPolicy,
    resolve: Option<Duration>,
    health_check_interval: Duration,
}

/// Everything an endpoint of one replica is made from.
struct EndpointSettings {
    connect_timeout: Duration,
    keepalive: Option<(Duration, Duration)>,
    /// `Some` for `https://`.
    tls: Option<Tls>,
}

impl EndpointSettings {
    /// The endpoint of `uri`; `domain` is the name the certificate must
    /// carry when `uri` was resolved from it (the builder's own setting wins).
    fn endpoint(&self, uri: Uri, domain: Option<String>) -> Result<Endpoint> {
        let mut endpoint = Endpoint::from(uri).connect_timeout(self.connect_timeout);
        if let Some((interval, timeout)) = self.keepalive {
            endpoint = endpoint
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(timeout)
                .keep_alive_while_idle(true);
        }
        match (&self.tls, domain) {
            (Some(tls), Some(domain)) if tls.domain.is_none() => {
                let named = Tls {
                    domain: Some(domain),
                    ..tls.clone()
                };
                tls::configure(endpoint, &named)
            }
            (Some(tls), _) => tls::configure(endpoint, tls),
            (None, _) => Ok(endpoint),
        }
    }
}

/// TLS settings of an `https://` client.
#[derive(Default, Clone)]
struct Tls {
    /// PEM CA certificates to trust instead of the system's and webpki roots.
    ca: Vec<Vec<u8>>,
    /// PEM certificate chain and key presented to servers that ask (mTLS).
    identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the server's certificate must carry, if not the URL's host.
    domain: Option<String>,
}

impl Tls {
    fn is_set(&self) -> bool {
        !self.ca.is_empty() || self.identity.is_some() || self.domain.is_some()
    }
}

/// How a [`Client`] compresses what it sends; see [`ClientBuilder::compression`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// gzip, which every Agentry server accepts.
    Gzip,
}

impl Compression {
    pub(super) fn encoding(self) -> tonic::codec::CompressionEncoding {
        match self {
            Compression::Gzip => tonic::codec::CompressionEncoding::Gzip,
        }
    }
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("uris", &self.uris)
            .field("api_key", &self.api_key.as_ref().map(|_| Redacted))
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("compression", &self.compression)
            .field("keepalive", &self.keepalive)
            .field("retry", &self.retry)
            .field("resolve", &self.resolve)
            .field("health_check_interval", &self.health_check_interval)
            .field("tls_ca_certificates", &self.tls.ca.len())
            .field(
                "tls_identity",
                &self.tls.identity.as_ref().map(|_| Redacted),
            )
            .field("tls_domain_name", &self.tls.domain)
            .finish()
    }
}

impl Client {
    /// Starts configuring a client of the server at `url`, e.g.
    /// `"http://127.0.0.1:50051"`.
    ///
    /// `url` (a `&str` or a `String`) is `http://host:port`
    /// in plaintext, or `https://host:port` over TLS, verifying the server's
    /// certificate against the roots of the crate's features (the webpki
    /// roots by default; see [`ClientBuilder::tls_ca_certificate`] for a
    /// private CA). TLS needs the `tls-ring` (default) or `tls-aws-lc`
    /// feature. An unusable URL is reported by [`ClientBuilder::connect`] as
    /// [`Error::InvalidConfig`]. More replicas: [`ClientBuilder::endpoint`].
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            uris: vec![parse(url)],
            api_key: None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            compression: None,
            tls: Tls::default(),
            keepalive: Some((DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT)),
            retry: RetryPolicy::default(),
            resolve: None,
            health_check_interval: DEFAULT_HEALTH_CHECK_INTERVAL,
        }
    }
}

fn parse(url: impl Into<String>) -> std::result::Result<Uri, String> {
    Uri::try_from(url.into()).map_err(|e| format!("invalid server URL: {e}"))
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

    /// Compresses every request with `compression`, and asks the server to
    /// compress its answers the same way (default: no compression). Worth it
    /// for large prompts and settings over slow links; small calls only pay
    /// the CPU.
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = Some(compression);
        self
    }

    /// HTTP/2 keepalive: a ping every `interval`, idle or not, and the
    /// connection is dropped (calls on it fail with
    /// [`Error::Unavailable`], and the next call reconnects) when a ping is
    /// not answered within `timeout`. So a peer that vanished without closing
    /// (a black-holed network, a frozen host) is noticed within `interval +
    /// timeout` instead of at each call's deadline. Default: 30 s and 10 s.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keepalive = Some((interval, timeout));
        self
    }

    /// No keepalive pings (a dead peer is noticed by each call's deadline).
    pub fn no_keepalive(mut self) -> Self {
        self.keepalive = None;
        self
    }

    /// Trusts the CA certificate(s) in `pem` for the server's certificate,
    /// instead of the system's and webpki roots (a private CA). May be
    /// called more than once. Needs an `https://` URL.
    pub fn tls_ca_certificate(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.tls.ca.push(pem.as_ref().to_vec());
        self
    }

    /// Presents this client certificate chain and its private key (both
    /// PEM) to servers that require mutual TLS. The key never appears in
    /// `Debug` output. Needs an `https://` URL.
    pub fn tls_identity(mut self, cert_pem: impl AsRef<[u8]>, key_pem: impl AsRef<[u8]>) -> Self {
        self.tls.identity = Some((cert_pem.as_ref().to_vec(), key_pem.as_ref().to_vec()));
        self
    }

    /// The name the server's certificate must be valid for, when it is not
    /// the URL's host (e.g. connecting by IP address). Needs an `https://` URL.
    pub fn tls_domain_name(mut self, name: impl Into<String>) -> Self {
        self.tls.domain = Some(name.into());
        self
    }

    /// Which failed calls are made again (default: [`RetryPolicy::default`]).
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Adds another replica of the server, e.g. `"http://10.0.0.2:50051"`;
    /// calls are then balanced over all of them (same scheme for all).
    /// See [`ClientBuilder::health_check_interval`] for how a replica that
    /// is gone is left out.
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.uris.push(parse(url));
        self
    }

    /// Resolves the host name of each URL through DNS every `interval` and
    /// balances over every address it resolves to (a Kubernetes headless
    /// service, say), following the name as replicas come and go. Over TLS
    /// the certificate must be valid for the name.
    pub fn resolve(mut self, interval: Duration) -> Self {
        self.resolve = Some(interval);
        self
    }

    /// With several replicas (or [`ClientBuilder::resolve`]): how often each
    /// replica's `grpc.health.v1` status is checked (default 5 s; also at
    /// once when a call finds a replica unavailable). A replica that is not
    /// `SERVING` gets no new calls until it is again; when none is, all get
    /// them.
    pub fn health_check_interval(mut self, interval: Duration) -> Self {
        self.health_check_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Connects to the server now (with several replicas: to the first one
    /// that answers; the others are connected as calls need them).
    ///
    /// Fails with [`Error::InvalidConfig`] for an unusable URL or API key, and
    /// with [`Error::Transport`] when no replica can be reached.
    pub async fn connect(self) -> Result<Client> {
        let prepared = self.prepare()?;
        if prepared.replicas.is_none() {
            let channel = prepared.endpoints[0]
                .connect()
                .await
                .map_err(Error::transport)?;
            return Ok(prepared.client(channel, None));
        }
        let mut last = None;
        for endpoint in &prepared.endpoints {
            match endpoint.connect().await {
                Ok(_) => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        if let Some(e) = last {
            return Err(Error::transport(e));
        }
        prepared.balanced()
    }

    /// Makes a client that connects on its first call (and reconnects as
    /// needed), so that a server that is down is reported by calls, as
    /// [`Error::Unavailable`].
    ///
    /// Must be called from within a Tokio runtime. Fails with
    /// [`Error::InvalidConfig`] for an unusable URL or API key.
    pub fn connect_lazy(self) -> Result<Client> {
        let prepared = self.prepare()?;
        if prepared.replicas.is_none() {
            let channel = prepared.endpoints[0].connect_lazy();
            return Ok(prepared.client(channel, None));
        }
        prepared.balanced()
    }

    /// Checks the settings.
    fn prepare(self) -> Result<Prepared> {
        let uris = self
            .uris
            .into_iter()
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(Error::InvalidConfig)?;
        let mut secure = None;
        for uri in &uris {
            let tls = match uri.scheme_str() {
                _ if uri.authority().is_none() => None,
                Some("http") if self.tls.is_set() => {
                    return Err(Error::InvalidConfig(format!(
                        "server URL `{uri}`: TLS settings need an https:// URL"
                    )));
                }
                Some("http") => Some(false),
                Some("https") => Some(true),
                _ => None,
            };
            let Some(tls) = tls else {
                return Err(Error::InvalidConfig(format!(
                    "server URL `{uri}` must look like `http://host:port` or `https://host:port`"
                )));
            };
            if secure.is_some_and(|s| s != tls) {
                return Err(Error::InvalidConfig(
                    "the replicas' URLs mix http:// and https://".into(),
                ));
            }
            secure = Some(tls);
        }
        let settings = EndpointSettings {
            connect_timeout: self.connect_timeout,
            keepalive: self.keepalive,
            tls: secure.unwrap_or(false).then_some(self.tls),
        };
        let endpoints = uris
            .iter()
            .map(|uri| settings.endpoint(uri.clone(), None))
            .collect::<Result<Vec<_>>>()?;
        let replicas = (uris.len() > 1 || self.resolve.is_some()).then(|| replicas::Settings {
            targets: uris.clone(),
            resolve: self.resolve,
            interval: self.health_check_interval,
            timeout: self.connect_timeout.min(self.timeout),
        });
        Ok(Prepared {
            auth: Auth::new(self.api_key.as_deref())?,
            uri: uris[0].clone(),
            endpoints,
            settings: Arc::new(settings),
            replicas,
            timeout: self.timeout,
            retry: self.retry,
            compression: self.compression.map(Compression::encoding),
        })
    }
}

/// Checked settings, ready to make a client.
struct Prepared {
    auth: Auth,
    /// The first URL, for `Debug`.
    uri: Uri,
    /// One per URL.
    endpoints: Vec<Endpoint>,
    settings: Arc<EndpointSettings>,
    /// `Some` when balancing over replicas.
    replicas: Option<replicas::Settings>,
    timeout: Duration,
    retry: RetryPolicy,
    compression: Option<tonic::codec::CompressionEncoding>,
}

impl Prepared {
    fn client(self, channel: Channel, replicas: Option<Replicas>) -> Client {
        Client {
            channel,
            auth: self.auth,
            uri: self.uri,
            timeout: self.timeout,
            retry: self.retry,
            compression: self.compression,
            replicas: replicas.map(Arc::new),
        }
    }

    /// A client over the balanced channel of the replicas.
    fn balanced(mut self) -> Result<Client> {
        let Some(replicas) = self.replicas.take() else {
            return Err(Error::InvalidConfig("no replicas to balance over".into()));
        };
        let settings = self.settings.clone();
        let make = Arc::new(move |uri, domain| settings.endpoint(uri, domain));
        let (channel, replicas) = replicas::balance(replicas, make)?;
        Ok(self.client(channel, Some(replicas)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;

    #[test]
    fn debug_never_shows_the_key() {
        let builder = Client::builder("http://127.0.0.1:50051").api_key("agk_id_secret");
        let text = format!("{builder:?}");
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[tokio::test]
    async fn bad_settings_are_invalid_config() {
        let e = Client::builder("http://127.0.0.1:1")
            .api_key("bad\nkey")
            .connect_lazy()
            .expect_err("key");
        assert!(matches!(e, Error::InvalidConfig(_)));
        assert!(!e.to_string().contains("bad"), "{e}");
        for url in ["not a url", "127.0.0.1:50051", "/path", "ftp://x"] {
            let e = Client::builder(url).connect().await.expect_err(url);
            assert!(matches!(e, Error::InvalidConfig(_)), "{url}: {e:?}");
        }
        let e = Client::builder("http://127.0.0.1:1")
            .tls_domain_name("agentry.example")
            .connect_lazy()
            .expect_err("TLS settings on http://");
        assert!(e.to_string().contains("https://"), "{e}");
    }

    #[test]
    fn debug_never_shows_the_client_key() {
        let builder = Client::builder("https://127.0.0.1:50051")
            .tls_identity("CERT", "-----BEGIN PRIVATE KEY-----secret");
        let text = format!("{builder:?}");
        assert!(!text.contains("secret"), "{text}");
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
}
