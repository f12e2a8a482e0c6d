//! Test harness: a fresh database per test, a real server on 127.0.0.1:0, and
//! clients of the real SDK for each role.
#![allow(dead_code, unreachable_pub)]

pub mod binary;
pub mod front;
pub mod proxy;
pub mod raw;
pub mod routing;
pub mod stream;

use std::net::SocketAddr;
use std::time::Duration;

use agentry_client::{Client, pb};
use agentry_server::admin::store as admin;
use agentry_server::pb::Role;
use sqlx::{Connection, PgPool};
use tokio::sync::oneshot;
use uuid::Uuid;

/// Server holding the test databases; an explicit AGENTRY_TEST_DATABASE_URL wins.
pub fn base_url() -> String {
    std::env::var("AGENTRY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database of its own for one test, dropped (even on panic) when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    /// Creates and migrates a fresh database through the server's own start-up path.
    pub async fn new() -> TestDb {
        let (name, url) = TestDb::fresh_name();
        let pool = agentry_server::db::connect_and_migrate(&url, 8)
            .await
            .expect("create test database");
        TestDb { name, url, pool }
    }

    /// A fresh, empty database: no migration applied.
    pub async fn unmigrated() -> TestDb {
        let (name, url) = TestDb::fresh_name();
        let mut conn = sqlx::PgConnection::connect(&base_url())
            .await
            .expect("connect to the test server");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .expect("create database");
        let pool = PgPool::connect(&url).await.expect("connect");
        TestDb { name, url, pool }
    }

    fn fresh_name() -> (String, String) {
        let name = format!("agentry_test_{}", Uuid::new_v4().simple());
        let base = base_url();
        let url = match base.rsplit_once('/') {
            Some((server, _db)) => format!("{server}/{name}"),
            None => panic!("AGENTRY_TEST_DATABASE_URL needs a database path"),
        };
        (name, url)
    }

    /// This database's URL as role `user` (trust authentication).
    pub fn url_as(&self, user: &str) -> String {
        let (scheme, rest) = self.url.split_once("://").expect("scheme");
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        format!("{scheme}://{user}@{host}")
    }

    /// A proxy in front of this database, and a small pool through it that
    /// gives up quickly while the proxy is cut.
    pub async fn through_proxy(&self) -> (proxy::Proxy, PgPool) {
        self.through_proxy_with(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_millis(500)),
        )
        .await
    }

    /// A proxy in front of this database, and a pool with `options` through it.
    pub async fn through_proxy_with(
        &self,
        options: sqlx::postgres::PgPoolOptions,
    ) -> (proxy::Proxy, PgPool) {
        // In clear: the proxy reads the wire protocol to count statements.
        self.through_proxy_ssl(options, sqlx::postgres::PgSslMode::Disable)
            .await
    }

    /// A proxy in front of this database, and a pool with `options` through
    /// it whose connections ask for TLS as `ssl` says. The proxy declines
    /// TLS, so `Prefer` (the default of a URL) goes on in clear, but only
    /// after an SSLRequest that a resetting proxy leaves unanswered.
    pub async fn through_proxy_ssl(
        &self,
        options: sqlx::postgres::PgPoolOptions,
        ssl: sqlx::postgres::PgSslMode,
    ) -> (proxy::Proxy, PgPool) {
        let connect = self
            .url
            .parse::<sqlx::postgres::PgConnectOptions>()
            .expect("url")
            .ssl_mode(ssl);
        let target = format!("{}:{}", connect.get_host(), connect.get_port());
        let target = tokio::net::lookup_host(target)
            .await
            .expect("resolve")
            .next()
            .expect("address");
        let proxy = proxy::Proxy::start(target).await;
        let pool = options
            .connect_with(connect.host("127.0.0.1").port(proxy.addr.port()))
            .await
            .expect("pool through proxy");
        (proxy, pool)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        on_server(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ));
    }
}

/// Runs `statement` on the test server, ignoring its outcome: cleanup that
/// must happen even from `Drop`, which runs inside the test's runtime, so
/// it gets a thread and a runtime of its own.
pub fn on_server(statement: String) {
    let cleanup = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            if let Ok(mut conn) = sqlx::PgConnection::connect(&base_url()).await {
                let _ = sqlx::query(sqlx::AssertSqlSafe(statement))
                    .execute(&mut conn)
                    .await;
            }
        });
    });
    let _ = cleanup.join();
}

/// A running server and an admin client for it.
pub struct TestServer {
    pub addr: SocketAddr,
    pub admin: Client,
    pub pool: PgPool,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<agentry_server::Result<()>>>,
    pub db: Option<TestDb>,
    /// The server's health streams and their counters.
    pub sessions: std::sync::Arc<agentry_server::registrations::sessions::Sessions>,
    pub leases: std::sync::Arc<agentry_server::routing::writer::LeaseWriter>,
    pub hellos: std::sync::Arc<agentry_server::registrations::hellos::HelloWriter>,
    /// The load writer, which publishes the streams' load reports.
    pub loads: std::sync::Arc<agentry_server::registrations::load_writer::LoadWriter>,
    /// The listener's connections and their counters.
    pub connections: std::sync::Arc<agentry_server::connections::Connections>,
    pub config: agentry_server::ServeConfig,
}

/// How long a stopping server may take: its shutdown grace in
/// [`test_config`], and then some.
pub const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// Settings of test servers: fast heartbeats, slow background sweeps (tests
/// that need sweeps ask for them).
pub fn test_config() -> agentry_server::ServeConfig {
    let mut config = agentry_server::ServeConfig {
        health_check_interval: Duration::from_millis(100),
        shutdown_grace: Duration::from_secs(5),
        ..Default::default()
    };
    config.registry.heartbeat_interval = Duration::from_millis(50);
    config.registry.heartbeat_flush_interval = Duration::from_millis(100);
    config.registry.hello_timeout = Duration::from_secs(2);
    config.registry.sweep_interval = Duration::from_secs(3600);
    config
}

impl TestServer {
    /// A server over a fresh database.
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// A server over a fresh database, with `configure` applied to [`test_config`].
    pub async fn start_with(
        configure: impl FnOnce(&mut agentry_server::ServeConfig),
    ) -> TestServer {
        let db = TestDb::new().await;
        let mut config = test_config();
        configure(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut server = TestServer::run(listener, db.pool.clone(), config).await;
        server.db = Some(db);
        server
    }

    /// A server over `pool` (which may go through a proxy).
    pub async fn with_pool(pool: PgPool) -> TestServer {
        TestServer::with_pool_and(pool, |_| {}).await
    }

    /// A server over `pool`, with `configure` applied to [`test_config`].
    pub async fn with_pool_and(
        pool: PgPool,
        configure: impl FnOnce(&mut agentry_server::ServeConfig),
    ) -> TestServer {
        let mut config = test_config();
        configure(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        TestServer::run(listener, pool, config).await
    }

    /// Runs a server on `listener`.
    pub async fn run(
        listener: tokio::net::TcpListener,
        pool: PgPool,
        config: agentry_server::ServeConfig,
    ) -> TestServer {
        TestServer::run_with_feed(listener, pool, None, config).await
    }

    /// Runs a server on `listener` whose change feed listens on `feed`
    /// (a direct pool) instead of `pool`.
    pub async fn run_with_feed(
        listener: tokio::net::TcpListener,
        pool: PgPool,
        feed: Option<PgPool>,
        mut config: agentry_server::ServeConfig,
    ) -> TestServer {
        let addr = listener.local_addr().expect("addr");
        config.listen_addr = addr;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = agentry_server::Server::new(pool.clone(), config.clone()).with_feed_pool(feed);
        let sessions = server.sessions();
        let leases = server.leases();
        let hellos = server.hellos();
        let loads = server.loads();
        let connections = server.connections();
        let task = tokio::spawn(server.run(listener, async {
            let _ = stopped.await;
        }));
        let operator = &agentry_server::audit::Actor::OPERATOR;
        let (_, secret) = admin::create_key(&pool, operator, Role::Admin, None, "test admin")
            .await
            .expect("admin key");
        let admin = client(addr, &secret).await;
        TestServer {
            addr,
            admin,
            pool,
            stop: Some(stop),
            task: Some(task),
            db: None,
            sessions,
            leases,
            hellos,
            loads,
            connections,
            config,
        }
    }

    /// A second replica on the same database (its own address and admin client).
    pub async fn replica(&self) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        TestServer::run(listener, self.pool.clone(), self.config.clone()).await
    }

    /// Stops this server and starts a new one on the same address and database.
    pub async fn restart(mut self) -> TestServer {
        let (addr, pool, config, db) = (
            self.addr,
            self.pool.clone(),
            self.config.clone(),
            self.db.take(),
        );
        self.stop().await;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("rebind the same port");
        let mut server = TestServer::run(listener, pool, config).await;
        server.db = db;
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A tenant with a tenant key and an agent key.
    pub async fn tenant(&self, name: &str) -> Tenant {
        tenant_of(&self.admin, self.addr, name).await
    }

    /// The clients of tenant `t` (same keys) connected to this server, e.g. a replica.
    pub async fn clients_of(&self, t: &Tenant) -> Tenant {
        Tenant {
            id: t.id.clone(),
            client: client(self.addr, &t.tenant_key).await,
            agent: client(self.addr, &t.agent_key).await,
            tenant_key: t.tenant_key.clone(),
            agent_key: t.agent_key.clone(),
        }
    }

    /// A manifest with default fields, created by the admin.
    pub async fn manifest(&self, agent_id: &str) -> pb::Manifest {
        self.admin
            .create_manifest(agentry_client::CreateManifest::new(
                agent_id,
                "ide",
                "IDE Agent",
                "1.0.0",
            ))
            .await
            .expect("create manifest")
    }

    /// Sends the shutdown signal without waiting for the server to stop.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops the server through its shutdown signal and waits for it; a
    /// server that does not stop within [`STOP_DEADLINE`] fails the test.
    pub async fn stop(&mut self) {
        self.signal_stop();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(STOP_DEADLINE, task)
                .await
                .expect("the server stopped within STOP_DEADLINE")
                .expect("server task")
                .expect("server result");
        }
    }
}

/// A client of the SDK with `key`.
pub async fn client(addr: SocketAddr, key: &str) -> Client {
    Client::builder(format!("http://{addr}"))
        .api_key(key)
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("connect client")
}

/// A tenant's clients.
pub struct Tenant {
    pub id: String,
    /// With the tenant's `tenant` key.
    pub client: Client,
    /// With the tenant's `agent` key.
    pub agent: Client,
    pub tenant_key: String,
    pub agent_key: String,
}

/// A tenant created through `admin`, with a tenant key and an agent key,
/// and clients of both on the server at `addr`.
pub async fn tenant_of(admin: &Client, addr: SocketAddr, name: &str) -> Tenant {
    let tenant = admin.create_tenant(name).await.expect("create tenant");
    let key = |role: pb::Role| {
        let admin = admin.clone();
        let tenant_id = tenant.id.clone();
        async move {
            admin
                .create_api_key(agentry_client::CreateApiKey::new(role).tenant(tenant_id))
                .await
                .expect("create key")
                .secret
        }
    };
    let tenant_key = key(pb::Role::Tenant).await;
    let agent_key = key(pb::Role::Agent).await;
    Tenant {
        client: client(addr, &tenant_key).await,
        agent: client(addr, &agent_key).await,
        id: tenant.id,
        tenant_key,
        agent_key,
    }
}

/// The gRPC code of a failed call.
pub fn code<T: std::fmt::Debug>(result: agentry_client::Result<T>) -> agentry_client::Code {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("expected a status, got {e:?}")),
    }
}

/// A server over a fresh database whose pool goes through a [`proxy::Proxy`]
/// (roomy, patient), with nothing of its own on a timer: the database probe
/// behind grpc.health.v1 waits an hour, like the sweep. For counting the
/// statements that reach PostgreSQL.
pub async fn counted_server(
    configure: impl FnOnce(&mut agentry_server::ServeConfig),
) -> (TestDb, proxy::Proxy, TestServer) {
    let db = TestDb::new().await;
    let (proxy, pool) = db
        .through_proxy_with(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(30)),
        )
        .await;
    let s = TestServer::with_pool_and(pool, |c| {
        c.health_check_interval = Duration::from_secs(3600);
        configure(c);
    })
    .await;
    (db, proxy, s)
}

/// Holds the row lock of configuration `id` until the transaction ends:
/// whatever writes that row waits.
pub async fn lock_configuration(
    pool: &PgPool,
    id: &str,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut lock = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM agent_configurations WHERE id = $1::uuid FOR UPDATE")
        .bind(id)
        .execute(&mut *lock)
        .await
        .expect("lock the configuration");
    lock
}

/// Waits until `count` statements of this database whose text contains
/// `like` wait on a lock.
pub async fn wait_for_lock_waits(pool: &PgPool, like: &str, count: i64) {
    eventually(
        Duration::from_secs(10),
        &format!("{count} statements like {like:?} waiting on a lock"),
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND strpos(query, $1) > 0",
            )
            .bind(like)
            .fetch_one(pool)
            .await
            .expect("pg_stat_activity")
                == count
        },
    )
    .await;
}

/// Polls `condition` every 20 ms until it holds or `deadline` passes.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + deadline;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
