//! Database connection and embedded migrations. (Database errors become
//! domain errors in `error.rs`.)

use std::time::Duration;

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::error::{Error, sqlstate};

/// The schema, embedded in the binary and applied at start-up.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Why the server could not get a usable database.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot use PostgreSQL at {url}: {reason}. Start PostgreSQL or point --database-url / DATABASE_URL at a reachable server"
)]
pub struct StartupError {
    url: String,
    reason: String,
}

/// Creates the database if missing, connects a pool and applies migrations.
pub async fn connect_and_migrate(url: &str, pool_size: u32) -> Result<PgPool, StartupError> {
    let fail = |reason: String| StartupError {
        url: redact(url),
        reason,
    };
    let options: PgConnectOptions = url
        .parse()
        .map_err(|e| fail(format!("invalid URL ({e})")))?;
    if !Postgres::database_exists(url)
        .await
        .map_err(|e| fail(e.to_string()))?
    {
        tracing::info!(
            database = options.get_database().unwrap_or_default(),
            "creating database"
        );
        if let Err(e) = Postgres::create_database(url).await {
            // Another replica may have created it in between.
            if !Postgres::database_exists(url).await.unwrap_or(false) {
                return Err(fail(e.to_string()));
            }
        }
    }
    // Plans fitted to each call's parameters and the tables as they are now.
    // A generic plan is cached per connection and kept: one chosen while a
    // table was nearly empty (a sequential scan, a hash join over every open
    // lease) stays for the connection's life as the table grows, unless an
    // ANALYZE happens to invalidate it. Planning these short statements costs
    // microseconds; such a plan cost the lease writer half its throughput.
    let options = options.options([("plan_cache_mode", "force_custom_plan")]);
    let pool = PgPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .map_err(|e| fail(e.to_string()))?;
    MIGRATOR
        .run(&pool)
        .await
        .map_err(|e| fail(format!("migration failed: {e}")))?;
    Ok(pool)
}

/// A failure that may be PostgreSQL's choice of a deadlock victim.
pub trait MaybeDeadlock {
    /// Whether PostgreSQL aborted the statement to break a deadlock.
    fn is_deadlock(&self) -> bool;
}

impl MaybeDeadlock for sqlx::Error {
    fn is_deadlock(&self) -> bool {
        self.as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|code| code == sqlstate::DEADLOCK_DETECTED)
    }
}

impl MaybeDeadlock for Error {
    fn is_deadlock(&self) -> bool {
        matches!(self, Error::Database(e) if e.is_deadlock())
    }
}

/// Tries a batch statement that locks rows of other servers' batches too:
/// when PostgreSQL picks it as a deadlock victim, it runs again after a
/// short random pause, up to three times in all.
pub async fn retrying_deadlocks<T, E, Fut>(
    what: &'static str,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, E>
where
    E: MaybeDeadlock,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    const TRIES: usize = 3;
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Err(e) if e.is_deadlock() && tries < TRIES => {
                tracing::info!(what, "batch chosen as a deadlock victim; trying again");
                tokio::time::sleep(Duration::from_millis(fastrand::u64(1..20))).await;
            }
            result => return result,
        }
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((creds, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match creds.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_password_only() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1/agentry"),
            "postgres://postgres@127.0.0.1/agentry"
        );
        assert_eq!(
            redact("postgres://nobody@127.0.0.1:1/x"),
            "postgres://nobody@127.0.0.1:1/x"
        );
    }
}
