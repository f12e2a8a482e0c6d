//! The server's PostgreSQL database as the load generator reads it: the
//! connection (and the autovacuum warning every run starts with), the
//! transaction counter the heartbeat mode reports and the stored workload the
//! acquire mode watches. Counters lag, so [`COUNTERS_SETTLE`] says how long to
//! wait before reading them.

use std::time::Duration;

use crate::Error;

/// How long PostgreSQL may take to publish an idle backend's counters.
pub(crate) const COUNTERS_SETTLE: Duration = Duration::from_secs(11);

/// A small pool on `url`; says whether autovacuum is on.
pub(crate) async fn connect(url: &str) -> Result<sqlx::PgPool, Error> {
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await?;
    // Without autovacuum, dead rows of the hot tables (workload counters,
    // leases, heartbeat times) pile up run after run and slow every write.
    let autovacuum: String = sqlx::query_scalar("SHOW autovacuum").fetch_one(&db).await?;
    println!("postgres_autovacuum: {autovacuum}");
    if autovacuum != "on" {
        eprintln!(
            "warning: autovacuum is off on this PostgreSQL; run VACUUM ANALYZE between runs (see BENCHMARKS.md)"
        );
    }
    Ok(db)
}

/// Vacuums the registrations, whose heartbeat times the fleet rewrites
/// 10,000 times a second: without autovacuum the second of two phases would
/// otherwise run against the dead rows of the first (its statements scan a
/// partial index of hundreds of thousands of entries for 10,000 live rows).
pub(crate) async fn vacuum_registrations(db: &sqlx::PgPool) -> Result<(), Error> {
    sqlx::query("VACUUM ANALYZE agent_registrations")
        .execute(db)
        .await?;
    Ok(())
}

/// Committed and rolled-back transactions of the database so far.
pub(crate) async fn transactions(db: &sqlx::PgPool) -> Result<i64, Error> {
    Ok(sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(db)
    .await?)
}

/// Registration rows updated so far (`n_tup_upd` of the table; published
/// late, as the transaction counters are).
pub(crate) async fn registration_updates(db: &sqlx::PgPool) -> Result<i64, Error> {
    Ok(sqlx::query_scalar(
        "SELECT n_tup_upd::bigint FROM pg_stat_user_tables WHERE relname = 'agent_registrations'",
    )
    .fetch_one(db)
    .await?)
}

/// Rows inserted, updated and deleted so far in every table of the
/// database (published late, as the transaction counters are).
pub(crate) async fn rows_written(db: &sqlx::PgPool) -> Result<i64, Error> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint FROM pg_stat_user_tables",
    )
    .fetch_one(db)
    .await?)
}

/// The stored `current_workload` of configuration `id`.
pub(crate) async fn current_workload(db: &sqlx::PgPool, id: &str) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT current_workload FROM agent_configurations WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(db)
        .await
}
