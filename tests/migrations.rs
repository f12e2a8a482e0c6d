//! Migrations an operator controls: `agentry-server migrate`, and start-up
//! with `--migrate auto|check|off`, run as the built binary against real
//! databases and roles.

mod common;

use agentry_client::{
    AgentFilter, CreateApiKey, CreateConfiguration, CreateManifest, RegisterInstance, pb,
};
use agentry_server::admin::store as admin;
use agentry_server::db::MIGRATOR;
use agentry_server::pb::Role;
use common::binary::{ServerProcess, run, stderr_of, stdout_of};
use common::{TestDb, base_url};
use sqlx::Connection;

/// The migrations the binary knows, as (version, description).
fn known() -> Vec<(i64, String)> {
    MIGRATOR
        .iter()
        .map(|m| (m.version, m.description.to_string()))
        .collect()
}

async fn applied_versions(db: &TestDb) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&db.pool)
        .await
        .expect("read _sqlx_migrations")
}

async fn table_exists(db: &TestDb, name: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(name)
        .fetch_one(&db.pool)
        .await
        .expect("to_regclass")
}

/// A login role without CREATEDB, dropped (after the databases it was
/// granted rights in) when the test ends.
struct Role_ {
    name: String,
}

impl Role_ {
    async fn create() -> Role_ {
        let name = format!("agentry_dml_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&base_url())
            .await
            .expect("connect");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE \"{name}\" LOGIN NOCREATEDB NOCREATEROLE NOSUPERUSER"
        )))
        .execute(&mut conn)
        .await
        .expect("create role");
        Role_ { name }
    }

    /// Grants only what the running server needs: DML, sequences, functions.
    async fn grant_dml(&self, db: &TestDb) {
        for grant in [
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO",
            "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO",
            "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(format!("{grant} \"{}\"", self.name)))
                .execute(&db.pool)
                .await
                .expect("grant");
        }
    }
}

impl Drop for Role_ {
    fn drop(&mut self) {
        common::on_server(format!("DROP ROLE IF EXISTS \"{}\"", self.name));
    }
}

#[tokio::test]
async fn migrate_applies_every_migration_once_and_prints_them() {
    let db = TestDb::unmigrated().await;

    let first = run(&["--database-url", &db.url, "migrate"]).await;
    assert!(
        first.status.success(),
        "migrate failed: {}",
        stderr_of(&first)
    );
    let out = stdout_of(&first);
    for (version, description) in known() {
        assert!(
            out.contains(&format!("applied {version} {description}\n")),
            "migrate did not print migration {version}: {out}"
        );
    }
    assert_eq!(
        applied_versions(&db).await,
        known().iter().map(|(v, _)| *v).collect::<Vec<_>>()
    );

    let again = run(&["--database-url", &db.url, "migrate"]).await;
    assert!(
        again.status.success(),
        "second migrate failed: {}",
        stderr_of(&again)
    );
    assert!(
        !stdout_of(&again).contains("applied 1 "),
        "a second migrate applied something: {}",
        stdout_of(&again)
    );
    assert!(stdout_of(&again).contains("0 migration(s) applied now"));
}

#[tokio::test]
async fn off_serves_as_a_role_with_only_dml_rights() {
    let role = Role_::create().await;
    let db = TestDb::new().await;
    role.grant_dml(&db).await;
    let (_, secret) = admin::create_key(
        &db.pool,
        &agentry_server::audit::Actor::OPERATOR,
        Role::Admin,
        None,
        "test admin",
    )
    .await
    .expect("admin key");
    let as_role = db.url_as(&role.name);

    // The role really cannot run DDL, so start-up with migrations refuses,
    // naming the permission and the way out.
    let mut conn = sqlx::PgConnection::connect(&as_role)
        .await
        .expect("connect as role");
    let ddl = sqlx::query("CREATE TABLE ddl_probe (id int)")
        .execute(&mut conn)
        .await;
    assert_eq!(
        ddl.expect_err("DDL as the DML role")
            .as_database_error()
            .and_then(|e| e.code())
            .as_deref(),
        Some("42501")
    );
    let auto = run(&["--database-url", &as_role, "--migrate", "auto"]).await;
    assert!(!auto.status.success(), "auto started without DDL rights");
    let message = stderr_of(&auto);
    assert!(
        message.contains("permission denied") && message.contains("agentry-server migrate"),
        "auto's refusal does not say what happened: {message}"
    );

    let server = ServerProcess::start(&["--database-url", &as_role, "--migrate", "off"]).await;
    let admin_client = common::client(server.addr, &secret).await;
    admin_client
        .create_manifest(CreateManifest::new(
            "ide-agent",
            "ide",
            "IDE Agent",
            "1.0.0",
        ))
        .await
        .expect("create manifest as the DML role");
    let tenant = admin_client
        .create_tenant("acme")
        .await
        .expect("create tenant");
    let key = |role| {
        let admin_client = admin_client.clone();
        let id = tenant.id.clone();
        async move {
            admin_client
                .create_api_key(CreateApiKey::new(role).tenant(id))
                .await
                .expect("create key")
                .secret
        }
    };
    let tenant_client = common::client(server.addr, &key(pb::Role::Tenant).await).await;
    let agent_client = common::client(server.addr, &key(pb::Role::Agent).await).await;
    tenant_client
        .create_configuration(CreateConfiguration::for_agent("ide-agent").max_workload(2))
        .await
        .expect("create configuration");
    agent_client
        .register_instance(RegisterInstance::new("i1", "ide-agent"))
        .await
        .expect("register through agentry_register_batch");
    common::eventually(
        common::routing::DEADLINE,
        "the instance is available",
        || {
            let c = tenant_client.clone();
            async move {
                !c.get_available_agents(AgentFilter::new(), 0)
                    .await
                    .expect("available")
                    .is_empty()
            }
        },
    )
    .await;
    let lease = tenant_client
        .acquire_agent(AgentFilter::new(), None)
        .await
        .expect("acquire through agentry_lease_batch");
    assert!(!lease.id.is_empty(), "no lease granted: {lease:?}");
    assert!(!table_exists(&db, "ddl_probe").await);
    drop(server);
}

#[tokio::test]
async fn check_refuses_a_schema_missing_a_migration_and_changes_nothing() {
    let empty = TestDb::unmigrated().await;
    let refused = run(&["--database-url", &empty.url, "--migrate", "check"]).await;
    assert!(
        !refused.status.success(),
        "check started on an empty database"
    );
    let (first, description) = known()[0].clone();
    let message = stderr_of(&refused);
    assert!(
        message.contains(&format!("lacks migration {first} ({description})"))
            && message.contains("agentry-server migrate"),
        "check's refusal does not name the missing migration: {message}"
    );
    assert!(
        !table_exists(&empty, "_sqlx_migrations").await,
        "check created the migrations table"
    );

    let behind = TestDb::new().await;
    let (last, description) = known().last().cloned().expect("migrations");
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(last)
        .execute(&behind.pool)
        .await
        .expect("forget the last migration");
    let refused = run(&["--database-url", &behind.url, "--migrate", "check"]).await;
    assert!(
        !refused.status.success(),
        "check started one migration behind"
    );
    assert!(
        stderr_of(&refused).contains(&format!("lacks migration {last} ({description})")),
        "{}",
        stderr_of(&refused)
    );
}

#[tokio::test]
async fn a_newer_additive_schema_starts_auto_and_check_with_a_warning() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'future', true, '\\x00', 0)",
    )
    .execute(&db.pool)
    .await
    .expect("a migration of a newer release");

    for mode in ["auto", "check"] {
        let server = ServerProcess::start(&["--database-url", &db.url, "--migrate", mode]).await;
        let warned = server.logged("WARN").into_iter().any(|line| {
            line["fields"]["migrations"]
                .as_str()
                .is_some_and(|m| m.contains("9999 future"))
        });
        assert!(
            warned,
            "--migrate {mode} gave no warning naming 9999 future:\n{}",
            server.stderr()
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect health");
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
    assert!(
        applied_versions(&db).await.contains(&9999),
        "the newer migration's row is kept"
    );
}

#[tokio::test]
async fn a_changed_migration_refuses_auto_and_check_naming_it() {
    let db = TestDb::new().await;
    let (version, description) = known()[2].clone();
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00' WHERE version = $1")
        .bind(version)
        .execute(&db.pool)
        .await
        .expect("change a checksum");

    for mode in ["auto", "check"] {
        let refused = run(&["--database-url", &db.url, "--migrate", mode]).await;
        assert!(
            !refused.status.success(),
            "--migrate {mode} started on a changed migration"
        );
        let message = stderr_of(&refused);
        assert!(
            message.contains(&format!("migration {version} ({description})"))
                && message.contains("checksum mismatch"),
            "--migrate {mode} does not name the changed migration: {message}"
        );
        assert_eq!(
            message
                .trim()
                .lines()
                .last()
                .map(|l| l.starts_with("agentry-server: ")),
            Some(true)
        );
    }
    let checksum: Vec<u8> =
        sqlx::query_scalar("SELECT checksum FROM _sqlx_migrations WHERE version = $1")
            .bind(version)
            .fetch_one(&db.pool)
            .await
            .expect("checksum");
    assert_eq!(
        checksum,
        vec![0u8],
        "start-up rewrote the applied migration"
    );
}

#[tokio::test]
async fn an_unreachable_database_is_named_as_such() {
    let refused = run(&[
        "--database-url",
        "postgres://postgres@127.0.0.1:1/agentry",
        "--migrate",
        "check",
    ])
    .await;
    assert!(!refused.status.success());
    let message = stderr_of(&refused);
    assert!(
        message.contains("PostgreSQL at postgres://postgres@127.0.0.1:1/agentry is unreachable"),
        "{message}"
    );
}
