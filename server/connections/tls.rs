//! TLS of the gRPC listener, done here rather than by tonic so that the
//! handshake counts against the connection's handshake timeout and its
//! caps (tonic would hold a connection for its own timeout before ours
//! could start).

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

use crate::config::TlsConfig;
use crate::error::{Error, Result};

/// What accepts TLS connections for the listener.
pub type Acceptor = TlsAcceptor;

/// The acceptor `tls` describes: `None` for plaintext. The files are read
/// once at start-up; renewed certificates take a restart.
pub fn acceptor(tls: &TlsConfig) -> Result<Option<Acceptor>> {
    let (Some(cert), Some(key)) = (&tls.tls_cert, &tls.tls_key) else {
        return Ok(None);
    };
    let fail = |what: &str, e: &dyn std::fmt::Display| Error::Internal(format!("TLS: {what}: {e}"));
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| fail(&format!("cannot read {}", path.display()), &e))
    };
    let certs = |pem: Vec<u8>, path: &Path| {
        CertificateDer::pem_reader_iter(&mut Cursor::new(pem))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| fail(&format!("no certificate in {}", path.display()), &e))
    };
    let chain = certs(read(cert)?, cert)?;
    let key_der = PrivateKeyDer::from_pem_reader(&mut Cursor::new(read(key)?))
        .map_err(|e| fail(&format!("no private key in {}", key.display()), &e))?;
    let builder = ServerConfig::builder();
    let builder = match &tls.tls_client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(certs(read(ca)?, ca)?);
            let verifier = WebPkiClientVerifier::builder(roots.into())
                .build()
                .map_err(|e| fail("client CA", &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| fail("certificate and key", &e))?;
    config.alpn_protocols.push(b"h2".to_vec());
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}
