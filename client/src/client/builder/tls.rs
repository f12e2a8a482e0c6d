//! TLS of `https://` clients, as far as the crate's features allow: a crypto
//! provider (`tls-ring` or `tls-aws-lc`) makes TLS possible at all, a root
//! store (`tls-webpki-roots`, `tls-native-roots`) lets it verify servers
//! without a CA of the caller's.

use tonic::transport::Endpoint;

use super::Tls;
use crate::error::{Error, Result};

/// Applies `tls` to `endpoint`; fails with [`Error::InvalidConfig`] when
/// `tls` asks for what the settings or this build cannot do.
#[cfg(any(feature = "tls-ring", feature = "tls-aws-lc"))]
pub(super) fn configure(endpoint: Endpoint, tls: &Tls) -> Result<Endpoint> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};

    let mut config = ClientTlsConfig::new();
    config = if !tls.ca.is_empty() {
        config.ca_certificates(tls.ca.iter().map(Certificate::from_pem))
    } else if cfg!(any(
        feature = "tls-webpki-roots",
        feature = "tls-native-roots"
    )) {
        config.with_enabled_roots()
    } else {
        // An empty root store would refuse every server, later and less clearly.
        return Err(Error::InvalidConfig(format!(
            "server URL `{}`: no roots to verify the server's certificate against: \
             give its CA with `tls_ca_certificate`, or enable the `tls-webpki-roots` \
             or `tls-native-roots` feature of agentry-client",
            endpoint.uri()
        )));
    };
    if let Some((cert, key)) = &tls.identity {
        config = config.identity(Identity::from_pem(cert, key));
    }
    if let Some(domain) = &tls.domain {
        config = config.domain_name(domain.clone());
    }
    endpoint
        .tls_config(config)
        .map_err(|e| Error::InvalidConfig(format!("TLS settings: {e}")))
}

/// This build has no TLS: every `https://` URL is [`Error::InvalidConfig`],
/// naming the features that would make it work.
#[cfg(not(any(feature = "tls-ring", feature = "tls-aws-lc")))]
pub(super) fn configure(endpoint: Endpoint, _: &Tls) -> Result<Endpoint> {
    Err(Error::InvalidConfig(format!(
        "server URL `{}` needs TLS, which this build of agentry-client lacks: \
         enable its `tls-ring` (default) or `tls-aws-lc` feature",
        endpoint.uri()
    )))
}

#[cfg(test)]
mod tests {
    // Which of these exist depends on the features.
    #[allow(unused_imports)]
    use crate::{Client, Error};

    #[cfg(not(any(feature = "tls-ring", feature = "tls-aws-lc")))]
    #[tokio::test]
    async fn without_a_crypto_provider_https_names_the_features() {
        let e = Client::builder("https://127.0.0.1:1")
            .connect_lazy()
            .expect_err("no TLS in this build");
        assert!(matches!(e, Error::InvalidConfig(_)), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("`tls-ring`"), "{text}");
        assert!(text.contains("`tls-aws-lc`"), "{text}");
        // Plaintext still works.
        Client::builder("http://127.0.0.1:1")
            .connect_lazy()
            .expect("http:// needs no TLS");
    }

    #[cfg(all(
        any(feature = "tls-ring", feature = "tls-aws-lc"),
        not(any(feature = "tls-webpki-roots", feature = "tls-native-roots"))
    ))]
    #[tokio::test]
    async fn without_roots_https_needs_a_ca() {
        let e = Client::builder("https://127.0.0.1:1")
            .connect_lazy()
            .expect_err("nothing to verify against");
        assert!(matches!(e, Error::InvalidConfig(_)), "{e:?}");
        assert!(e.to_string().contains("tls_ca_certificate"), "{e}");
    }

    /// (Not with the native roots: a machine may have none, which tonic
    /// reports as an error.)
    #[cfg(all(
        any(feature = "tls-ring", feature = "tls-aws-lc"),
        feature = "tls-webpki-roots",
        not(feature = "tls-native-roots")
    ))]
    #[tokio::test]
    async fn with_a_crypto_provider_and_roots_https_is_accepted() {
        // Connecting lazily checks the settings without a server.
        Client::builder("https://127.0.0.1:1")
            .connect_lazy()
            .expect("TLS settings");
    }
}
