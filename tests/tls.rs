//! TLS end to end: the server with a certificate from a CA made here, the
//! SDK over `https://`, mutual TLS, and certificate names. Certificates are
//! generated in the test with rcgen; nothing is read from the machine.

mod common;

use std::path::{Path, PathBuf};

use agentry_client::{Client, ListManifests};
use agentry_server::config::TlsConfig;
use agentry_server::pb::Role;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// A CA, and certificates it signs.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, in PEM.
struct Pem {
    cert: String,
    key: String,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate valid for `names`.
    fn sign(&self, names: &[&str]) -> Pem {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &self.issuer)
            .expect("sign");
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write");
    path
}

/// A TLS server with `identity`, requiring client certificates of
/// `client_ca` when given; its address, its admin key and what keeps it up.
async fn tls_server(
    identity: &Pem,
    client_ca: Option<&Ca>,
) -> (
    u16,
    String,
    common::TestDb,
    tempfile::TempDir,
    tokio::sync::oneshot::Sender<()>,
) {
    tls_server_with(identity, client_ca, |_| {}).await
}

/// [`tls_server`], with `configure` applied to its settings.
async fn tls_server_with(
    identity: &Pem,
    client_ca: Option<&Ca>,
    configure: impl FnOnce(&mut agentry_server::ServeConfig),
) -> (
    u16,
    String,
    common::TestDb,
    tempfile::TempDir,
    tokio::sync::oneshot::Sender<()>,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::test_config();
    configure(&mut config);
    config.tls = TlsConfig {
        tls_cert: Some(write(dir.path(), "server.pem", &identity.cert)),
        tls_key: Some(write(dir.path(), "server.key", &identity.key)),
        tls_client_ca: client_ca.map(|ca| write(dir.path(), "clients.pem", &ca.pem())),
    };
    let db = common::TestDb::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = agentry_server::Server::new(db.pool.clone(), config);
    tokio::spawn(server.run(listener, async {
        let _ = stopped.await;
    }));
    let (_, key) = agentry_server::admin::store::create_key(
        &db.pool,
        &agentry_server::audit::Actor::OPERATOR,
        Role::Admin,
        None,
        "tls admin",
    )
    .await
    .expect("admin key");
    (port, key, db, dir, stop)
}

async fn list(client: agentry_client::Result<Client>) -> agentry_client::Result<usize> {
    Ok(client?
        .list_manifests(ListManifests::new())
        .await?
        .manifests
        .len())
}

#[tokio::test]
async fn the_sdk_speaks_tls_to_a_server_it_trusts_and_nothing_else() {
    let ca = Ca::new();
    let (port, key, _db, _dir, _stop) = tls_server(&ca.sign(&["localhost"]), None).await;
    let https = format!("https://localhost:{port}");
    let trusted = Client::builder(https.as_str())
        .api_key(&key)
        .tls_ca_certificate(ca.pem())
        .connect()
        .await;
    assert_eq!(list(trusted).await.expect("a round trip over TLS"), 0);

    // The system's and webpki roots do not know our CA.
    let untrusted = Client::builder(https.as_str())
        .api_key(&key)
        .connect()
        .await;
    assert!(list(untrusted).await.is_err(), "an unknown CA is refused");
    // Plaintext to a TLS server gets nowhere.
    let plain = Client::builder(format!("http://localhost:{port}"))
        .api_key(&key)
        .connect()
        .await;
    assert!(list(plain).await.is_err(), "plaintext is refused");
}

#[tokio::test]
async fn the_sdk_refuses_a_server_whose_certificate_names_another_host() {
    let ca = Ca::new();
    let (port, key, _db, _dir, _stop) = tls_server(&ca.sign(&["agentry.example"]), None).await;
    let connect = |domain: Option<&str>| {
        let mut builder = Client::builder(format!("https://localhost:{port}"))
            .api_key(&key)
            .tls_ca_certificate(ca.pem());
        if let Some(domain) = domain {
            builder = builder.tls_domain_name(domain);
        }
        builder.connect()
    };
    assert!(
        list(connect(None).await).await.is_err(),
        "localhost is not agentry.example"
    );
    assert_eq!(
        list(connect(Some("agentry.example")).await)
            .await
            .expect("the name it carries"),
        0
    );
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate_of_its_ca() {
    let (ca, clients, strangers) = (Ca::new(), Ca::new(), Ca::new());
    let (port, key, _db, _dir, _stop) = tls_server(&ca.sign(&["localhost"]), Some(&clients)).await;
    let connect = |identity: Option<Pem>| {
        let mut builder = Client::builder(format!("https://localhost:{port}"))
            .api_key(&key)
            .tls_ca_certificate(ca.pem());
        if let Some(id) = identity {
            builder = builder.tls_identity(id.cert, id.key);
        }
        builder.connect()
    };
    assert!(
        list(connect(None).await).await.is_err(),
        "no client certificate"
    );
    assert!(
        list(connect(Some(strangers.sign(&["caller"]))).await)
            .await
            .is_err(),
        "a certificate of another CA"
    );
    assert_eq!(
        list(connect(Some(clients.sign(&["caller"]))).await)
            .await
            .expect("mutual TLS"),
        0
    );
}

/// `agentry-server health --tls-ca` asks a TLS server (the image's
/// HEALTHCHECK with TLS on); without it, plaintext gets no answer.
#[tokio::test]
async fn the_health_command_asks_a_tls_server_with_its_ca() {
    let ca = Ca::new();
    let (port, _key, _db, dir, _stop) = tls_server(&ca.sign(&["localhost"]), None).await;
    let ca_path = write(dir.path(), "ca.pem", &ca.pem());
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_agentry-server"))
                .arg("health")
                .args(args)
                .env_remove("AGENTRY_TLS_CERT")
                .output()
        })
    };
    let addr = format!("localhost:{port}");
    let tls = run(vec![
        "--addr".into(),
        addr.clone(),
        "--tls-ca".into(),
        ca_path.display().to_string(),
        "--service".into(),
        "liveness".into(),
    ])
    .await
    .expect("join")
    .expect("run");
    assert!(tls.status.success(), "{tls:?}");
    assert_eq!(String::from_utf8_lossy(&tls.stdout).trim(), "SERVING");
    let plain = run(vec!["--addr".into(), addr])
        .await
        .expect("join")
        .expect("run");
    assert!(!plain.status.success(), "{plain:?}");
}

/// With TLS on, the handshake timeout covers TLS too: a connection that
/// never starts it, one that stops half way through its ClientHello, and
/// one that finishes TLS but never sends the HTTP/2 preface are all closed,
/// while a client that speaks is served.
#[tokio::test]
async fn tls_connections_that_do_not_finish_their_handshakes_are_closed_in_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = Ca::new();
    let (port, key, _db, dir, _stop) = tls_server_with(&ca.sign(&["localhost"]), None, |c| {
        c.connections.handshake_timeout = std::time::Duration::from_millis(500);
    })
    .await;
    let addr = ("127.0.0.1", port);
    let closed = |mut stream: tokio::net::TcpStream| async move {
        let mut buf = [0u8; 4096];
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    };
    let silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut half = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // A TLS record header announcing a handshake message, and no more.
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .expect("write");
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    for cert in tokio_rustls::rustls::pki_types::CertificateDer::pem_slice_iter(ca.pem().as_bytes())
    {
        roots.add(cert.expect("ca")).expect("add");
    }
    let mut client_config = tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("the TLS handshake");
    // A client that speaks is served meanwhile.
    let client = Client::builder(format!("https://localhost:{port}"))
        .api_key(&key)
        .tls_ca_certificate(ca.pem())
        .connect()
        .await;
    assert_eq!(list(client).await.expect("served over TLS"), 0);
    assert!(closed(silent).await, "a connection that never started TLS");
    assert!(
        closed(half).await,
        "a connection that stopped inside its ClientHello"
    );
    let mut buf = [0u8; 1024];
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "a connection that finished TLS but sent no preface"
    );
    drop(dir);
}
