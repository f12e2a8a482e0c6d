//! Database connection and embedded migrations. (Database errors become
//! domain errors in `error.rs`.)

use std::time::Duration;

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

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
