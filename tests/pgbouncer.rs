//! Behind PgBouncer (Debian's 1.18, which `.ci/run` installs): queries go
//! through the pooler, migrations and the change feed's LISTEN through a
//! direct session URL, and the core flows work end to end: admin writes,
//! registration over a health stream (the batch functions), routing fed by
//! the change feed, leases, workload, the sweep under its advisory lock,
//! the audit log.
//!
//! Session mode: sqlx sends Parse and Bind in separate protocol syncs, which
//! PgBouncer before 1.21 may hand to different server connections in
//! transaction mode (named and unnamed statements alike, cache or not: the
//! first run of this test in transaction mode failed with `prepared
//! statement "sqlx_s_1" already exists`). Transaction mode needs PgBouncer
//! 1.21+ with `max_prepared_statements`, which follows statements across
//! server connections; Debian 12 does not package it (README, "Poolers"),
//! so what is tested of transaction mode is that start-up refuses 1.18's.

mod common;

use std::path::Path;
use std::time::Duration;

use agentry_client::{AgentFilter, ListAuditEvents};
use agentry_server::config::MigrateMode;
use agentry_server::db::{StartupError, Target, connect_to};
use agentry_server::pooler::{self, Pooling};
use common::binary::{run, stderr_of};

/// A PgBouncer in front of `database`, on a free port;
/// killed when dropped.
struct Bouncer {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

impl Bouncer {
    /// `pool_mode` is PgBouncer's: `session` or `transaction`.
    async fn start(database: &str, pool_mode: &str) -> Bouncer {
        assert!(
            Path::new(PGBOUNCER).exists(),
            "{PGBOUNCER} is missing: `apt-get install pgbouncer` (.ci/run does)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let dir = tempfile::tempdir().expect("tempdir");
        // Session mode gives each client connection a server of its own:
        // room for the server's pool of 8 and the harness's reads.
        // Servers are reused last in, first out (PgBouncer's default).
        let ini = format!(
            "[databases]\n\
             {database} = host=127.0.0.1 port=5432 dbname={database} user=postgres\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = any\n\
             pool_mode = {pool_mode}\n\
             default_pool_size = 20\n\
             max_client_conn = 100\n\
             server_tls_sslmode = disable\n\
             ignore_startup_parameters = extra_float_digits, options\n\
             logfile = {log}\n\
             pidfile = {pid}\n",
            log = dir.path().join("pgbouncer.log").display(),
            pid = dir.path().join("pgbouncer.pid").display(),
        );
        let config = dir.path().join("pgbouncer.ini");
        std::fs::write(&config, ini).expect("write ini");
        // PgBouncer refuses to run as root; the files must be the postgres user's to read and write.
        for path in [dir.path(), config.as_path()] {
            std::process::Command::new("chown")
                .args(["-R", "postgres", &path.display().to_string()])
                .status()
                .expect("chown");
        }
        let mut command = std::process::Command::new(PGBOUNCER);
        if running_as_root() {
            command.args(["-u", "postgres"]);
        }
        let child = command.arg(&config).spawn().expect("start pgbouncer");
        let bouncer = Bouncer {
            port,
            child,
            _dir: dir,
        };
        common::eventually(Duration::from_secs(10), "pgbouncer listening", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        bouncer
    }

    fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_flows_work_behind_pgbouncer_with_a_direct_url_for_listen_and_migrations() {
    let db = common::TestDb::new().await;
    let bouncer = Bouncer::start(&db.name, "session").await;
    // The server's own start-up path: the schema checked over the direct
    // URL, queries through the pooler.
    let connected = connect_to(
        &Target {
            url: &bouncer.url(&db.name),
            direct_url: Some(&db.url),
            pool_size: 8,
        },
        MigrateMode::Check,
    )
    .await
    .expect("connect through pgbouncer");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let s = common::TestServer::run_with_feed(
        listener,
        connected.pool,
        connected.direct,
        common::test_config(),
    )
    .await;

    s.manifest("ide-agent").await;
    let t = s.tenant("acme").await;
    let c = common::routing::configure(&t, "ide-agent", 3).await;
    let mut sessions = Vec::new();
    for i in 0..3 {
        sessions.push(
            t.agent
                .agent_session(format!("agent-{i}"), "ide-agent")
                .connect()
                .await
                .expect("health stream through pgbouncer"),
        );
    }
    // Routing hears of them through the feed's LISTEN on the direct pool.
    common::routing::wait_available(&t.client, AgentFilter::new(), "routable", |a| a.len() == 1)
        .await;
    let lease = t
        .client
        .acquire_agent(AgentFilter::new(), None)
        .await
        .expect("a lease through the batch function");
    assert!(
        t.client
            .release_agent(&lease.id, agentry_client::pb::LeaseOutcome::Succeeded)
            .await
            .expect("release")
    );
    let raised = t.client.update_workload(&c.id, 2).await.expect("workload");
    assert_eq!(raised.manual_workload, 2);
    let report = s
        .admin
        .cleanup(None, false)
        .await
        .expect("a sweep under its advisory lock");
    assert_eq!(report.deactivated, 0);
    let audit = s
        .admin
        .list_audit_events(ListAuditEvents::new())
        .await
        .expect("audit");
    assert!(
        audit
            .audit_events
            .iter()
            .any(|e| e.action == "configuration.update_workload")
    );
    drop(sessions);
}

/// Start-up checks for a pooler that loses prepared statements: PostgreSQL
/// itself and a session pooler keep a connection's session, every time
/// (`agentry_server::pooler`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pooler_check_accepts_postgresql_itself_and_session_pooling() {
    let db = common::TestDb::new().await;
    assert_eq!(
        pooler::check(&db.pool).await.map_err(|e| format!("{e:?}")),
        Ok(Pooling::Session),
        "PostgreSQL itself"
    );
    let bouncer = Bouncer::start(&db.name, "session").await;
    let pooled = sqlx::PgPool::connect(&bouncer.url(&db.name))
        .await
        .expect("connect through pgbouncer");
    for _ in 0..3 {
        assert_eq!(
            pooler::check(&pooled).await.map_err(|e| format!("{e:?}")),
            Ok(Pooling::Session),
            "session mode"
        );
    }
}

/// Transaction pooling that loses prepared statements between server
/// connections (PgBouncer 1.18, Debian 12's) lets the server start and then
/// fail calls; start-up refuses it instead, in one line that names the
/// pooler and what to do, through the start-up path and the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_refuses_transaction_pooling_that_loses_prepared_statements() {
    let db = common::TestDb::new().await;
    let bouncer = Bouncer::start(&db.name, "transaction").await;
    let pooled = bouncer.url(&db.name);
    let target = Target {
        url: &pooled,
        direct_url: Some(&db.url),
        pool_size: 8,
    };
    for _ in 0..3 {
        let err = connect_to(&target, MigrateMode::Check)
            .await
            .expect_err("transaction pooling of PgBouncer 1.18 refused");
        let message = err.to_string();
        assert!(
            matches!(err, StartupError::TransactionPooler { .. }),
            "{message}"
        );
        for part in [
            pooled.as_str(),
            "transaction pooling",
            "PgBouncer before 1.21",
            "pool_mode = session",
            "max_prepared_statements > 0",
        ] {
            assert!(message.contains(part), "{part:?} in {message}");
        }
        assert!(!message.contains('\n'), "one line: {message}");
    }

    let refused = run(&[
        "--database-url",
        &pooled,
        "--direct-database-url",
        &db.url,
        "--migrate",
        "check",
    ])
    .await;
    assert_eq!(refused.status.code(), Some(1), "{}", stderr_of(&refused));
    let stderr = stderr_of(&refused);
    let refusal: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("agentry-server: "))
        .collect();
    assert_eq!(refusal.len(), 1, "{stderr}");
    assert!(refusal[0].contains("PgBouncer before 1.21"), "{stderr}");
}
