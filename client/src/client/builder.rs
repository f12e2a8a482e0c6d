//! [`ClientBuilder`]: the settings of a [`Client`], checked once, and the
//! connection it opens.

use std::fmt;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Uri};

use super::auth::{Auth, Redacted};
use crate::Client;
use crate::error::{Error, Result};

/// Default per-call timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default timeout for establishing the connection.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

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
}
