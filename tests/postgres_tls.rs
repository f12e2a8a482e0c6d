//! PostgreSQL over TLS: the local cluster serves TLS with Debian's
//! self-signed certificate, so `sslmode=require` (encrypt, do not verify)
//! works and `sslmode=verify-full` without that certificate's CA is refused.

mod common;

use sqlx::Connection;

/// A fresh database's URL on the test server, with `query` appended.
fn url(query: &str) -> (String, String) {
    let name = format!("agentry_tls_{}", uuid::Uuid::new_v4().simple());
    let base = common::base_url();
    let (server, _) = base.rsplit_once('/').expect("database path");
    (name.clone(), format!("{server}/{name}?{query}"))
}

async fn drop_database(name: &str) {
    let mut conn = sqlx::PgConnection::connect(&common::base_url())
        .await
        .expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .expect("drop");
}

#[tokio::test]
async fn the_server_uses_postgres_over_tls_with_sslmode_require() {
    let (name, url) = url("sslmode=require");
    let pool = agentry_server::db::connect_and_migrate(&url, 2)
        .await
        .expect("migrated over TLS");
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .expect("pg_stat_ssl");
    assert!(ssl, "the connection is encrypted");
    let s = common::TestServer::with_pool(pool).await;
    s.manifest("ide-agent").await;
    s.tenant("acme").await;
    drop(s);
    drop_database(&name).await;
}

#[tokio::test]
async fn sslmode_verify_full_refuses_a_certificate_it_cannot_verify() {
    let (name, url) = url("sslmode=verify-full");
    let err = agentry_server::db::connect_and_migrate(&url, 2)
        .await
        .expect_err("a self-signed certificate is not trusted");
    let message = err.to_string();
    eprintln!("{message}");
    assert!(message.contains("TLS with PostgreSQL"), "{message}");
    assert!(
        message.contains("sslrootcert"),
        "says what to check: {message}"
    );
    assert!(!message.contains("SQLx was built without TLS"), "{message}");
    drop_database(&name).await;
}
