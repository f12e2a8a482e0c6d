//! Database connection and embedded migrations. (Database errors become
//! domain errors in `error.rs`.)

use std::time::Duration;

use sqlx::migrate::{MigrateDatabase, MigrateError, Migration, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres};

use crate::config::MigrateMode;
use crate::error::{Error, sqlstate};
use crate::pooler::{Pooling, Refusal};

/// The schema, embedded in the binary.
///
/// `ignore_missing`: a database one release ahead (rolled back binary) has
/// migrations this binary lacks. Migrations are additive for one release, so
/// they are accepted with a warning (see [`Schema::newer`]) instead of
/// refusing to start.
pub static MIGRATOR: Migrator = {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.ignore_missing = true;
    migrator
};

/// sqlx's default table of applied migrations.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// The SQLSTATEs start-up tells apart (the request path needs none of them).
mod startup_sqlstate {
    pub(super) const INVALID_PASSWORD: &str = "28P01";
    pub(super) const INVALID_AUTHORIZATION: &str = "28000";
    pub(super) const INVALID_CATALOG_NAME: &str = "3D000";
    pub(super) const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub(super) const UNDEFINED_TABLE: &str = "42P01";
}

/// Why the server could not get a usable database: what happened, then
/// what to do about it, on one line.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The URL does not parse.
    #[error("invalid database URL {url}: {reason}. Fix --database-url / DATABASE_URL")]
    InvalidUrl { url: String, reason: String },
    /// No PostgreSQL answers there.
    #[error(
        "PostgreSQL at {url} is unreachable: {reason}. Start PostgreSQL or point --database-url / DATABASE_URL at a reachable server"
    )]
    Unreachable { url: String, reason: String },
    /// TLS with PostgreSQL failed: its certificate did not verify, or the
    /// server does not speak TLS as `sslmode` demands.
    #[error(
        "TLS with PostgreSQL at {url} failed: {reason}. Check sslmode and sslrootcert in --database-url / DATABASE_URL"
    )]
    Tls { url: String, reason: String },
    /// PostgreSQL answered and refused the role.
    #[error(
        "PostgreSQL at {url} refused the login: {reason}. Check the user and password in --database-url / DATABASE_URL"
    )]
    LoginRefused { url: String, reason: String },
    /// The database is missing and this mode does not create it.
    #[error(
        "database {url} does not exist. Run `agentry-server migrate` (as a role with CREATEDB) to create and migrate it"
    )]
    NoDatabase { url: String },
    /// The role lacks a right the step needs.
    #[error(
        "permission denied at {url} while {doing}: {reason}. {}",
        permission_hint(doing)
    )]
    PermissionDenied {
        url: String,
        doing: &'static str,
        reason: String,
    },
    /// A migration this binary needs is not applied.
    #[error(
        "the schema of {url} lacks migration {version} ({description}). Run `agentry-server migrate` with this release"
    )]
    MissingMigration {
        url: String,
        version: i64,
        description: String,
    },
    /// An applied migration is not the one this binary has.
    #[error(
        "migration {version} ({description}) applied to {url} differs from this binary's (checksum mismatch): its file was edited after it was applied, or another build migrated the database. Restore the original migration or the database from a backup; `agentry-server migrate` never rewrites an applied migration"
    )]
    ChecksumMismatch {
        url: String,
        version: i64,
        description: String,
    },
    /// A migration failed half-way outside a transaction.
    #[error(
        "migration {version} of {url} failed half-way (marked unsuccessful in {MIGRATIONS_TABLE}). Repair the schema, delete that row, then run `agentry-server migrate`"
    )]
    Dirty { url: String, version: i64 },
    /// A migration's SQL failed (and was rolled back).
    #[error(
        "migration {version} failed on {url}: {reason}. Fix the cause, then run `agentry-server migrate`"
    )]
    MigrationFailed {
        url: String,
        version: i64,
        reason: String,
    },
    /// The pooler hands one connection's statements to different sessions
    /// and loses their prepared statements (`crate::pooler`).
    #[error(
        "the pooler at {url} runs one connection's statements in different PostgreSQL sessions (transaction pooling) and loses prepared statements between them ({reason}), as PgBouncer before 1.21 does, or 1.21+ with max_prepared_statements = 0: calls would fail. Set pool_mode = session, or run PgBouncer 1.21+ with max_prepared_statements > 0 (e.g. 200), or point --database-url / DATABASE_URL at PostgreSQL itself; keep --direct-database-url for the change feed"
    )]
    TransactionPooler { url: String, reason: String },
    /// Anything else PostgreSQL said.
    #[error("PostgreSQL at {url} failed while {doing}: {reason}")]
    Database {
        url: String,
        doing: &'static str,
        reason: String,
    },
}

/// What to do about a right the role lacks, by the step that needed it.
fn permission_hint(doing: &str) -> &'static str {
    if doing == CREATING_DATABASE {
        "Create the database as a role with CREATEDB (or have an administrator create it), then run `agentry-server migrate`"
    } else {
        "Run `agentry-server migrate` as the schema's owner, then start the server with --migrate off"
    }
}

const CREATING_DATABASE: &str = "creating the database";

impl StartupError {
    /// Names what PostgreSQL's answer to `doing` means for start-up.
    fn from_sqlx(url: &str, doing: &'static str, e: sqlx::Error) -> StartupError {
        use startup_sqlstate::*;
        let url = redact(url);
        let reason = e.to_string();
        match &e {
            sqlx::Error::Configuration(_) => StartupError::InvalidUrl { url, reason },
            // rustls reports a certificate it cannot verify as invalid data.
            sqlx::Error::Tls(_) => StartupError::Tls { url, reason },
            sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                StartupError::Tls { url, reason }
            }
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => {
                StartupError::Unreachable { url, reason }
            }
            sqlx::Error::Database(db) => match db.code().as_deref() {
                Some(INVALID_PASSWORD | INVALID_AUTHORIZATION) => {
                    StartupError::LoginRefused { url, reason }
                }
                Some(INVALID_CATALOG_NAME) => StartupError::NoDatabase { url },
                Some(INSUFFICIENT_PRIVILEGE) => {
                    StartupError::PermissionDenied { url, doing, reason }
                }
                _ => StartupError::Database { url, doing, reason },
            },
            _ => StartupError::Database { url, doing, reason },
        }
    }

    fn from_migrate(url: &str, e: MigrateError) -> StartupError {
        match e {
            MigrateError::VersionMismatch(version) => StartupError::ChecksumMismatch {
                url: redact(url),
                version,
                description: describe(version),
            },
            MigrateError::Dirty(version) => StartupError::Dirty {
                url: redact(url),
                version,
            },
            MigrateError::ExecuteMigration(e, version) => {
                match StartupError::from_sqlx(url, "applying a migration", e) {
                    StartupError::Database { url, reason, .. } => StartupError::MigrationFailed {
                        url,
                        version,
                        reason,
                    },
                    other => other,
                }
            }
            MigrateError::Execute(e) => StartupError::from_sqlx(url, "running migrations", e),
            other => StartupError::Database {
                url: redact(url),
                doing: "running migrations",
                reason: other.to_string(),
            },
        }
    }
}

/// A pool on a database whose schema `--migrate` accepted.
#[derive(Debug)]
pub struct Connected {
    /// The server's pool.
    pub pool: PgPool,
    /// A pool of one session connection for the change feed's LISTEN, when
    /// the main pool goes through a transaction-mode pooler.
    pub direct: Option<PgPool>,
    /// The migrations this start-up applied, oldest first.
    pub applied: Vec<&'static Migration>,
}

/// Creates the database if missing, connects a pool and applies migrations.
pub async fn connect_and_migrate(url: &str, pool_size: u32) -> Result<PgPool, StartupError> {
    Ok(connect(url, pool_size, MigrateMode::Auto).await?.pool)
}

/// How the server reaches its database.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// The pooled URL every query uses (possibly a pooler's).
    pub url: &'a str,
    /// A direct session URL for migrations and LISTEN; `None`: `url`.
    pub direct_url: Option<&'a str>,
    /// Connections of the pool.
    pub pool_size: u32,
}

/// Connects a pool and treats the schema as `mode` says (see [`MigrateMode`]).
pub async fn connect(
    url: &str,
    pool_size: u32,
    mode: MigrateMode,
) -> Result<Connected, StartupError> {
    connect_to(
        &Target {
            url,
            direct_url: None,
            pool_size,
        },
        mode,
    )
    .await
}

/// Connects to `target` and treats the schema as `mode` says: migrations
/// and the database's creation go through the direct URL, queries through
/// the pooled one.
pub async fn connect_to(target: &Target<'_>, mode: MigrateMode) -> Result<Connected, StartupError> {
    let Some(direct_url) = target.direct_url else {
        let connected = connect_one(target.url, target.pool_size, mode).await?;
        refuse_lost_statements(&connected.pool, target.url).await?;
        return Ok(connected);
    };
    // Session work first, on a pool of one direct connection kept for LISTEN.
    let direct = connect_one(direct_url, 1, mode).await?;
    let pooled = connect_one(target.url, target.pool_size, MigrateMode::Off).await?;
    refuse_lost_statements(&pooled.pool, target.url).await?;
    Ok(Connected {
        pool: pooled.pool,
        direct: Some(direct.pool),
        applied: direct.applied,
    })
}

/// Refuses a pooler at `url` that would lose prepared statements between
/// the sessions it hands one connection's statements to (`crate::pooler`);
/// accepts PostgreSQL itself and session pooling at the cost of a few
/// round trips and one connection.
async fn refuse_lost_statements(pool: &PgPool, url: &str) -> Result<(), StartupError> {
    const DOING: &str = "checking for a transaction pooler";
    match crate::pooler::check(pool).await {
        Ok(Pooling::Session) => Ok(()),
        Ok(Pooling::TransactionKeepingStatements) => {
            tracing::info!(
                url = %redact(url),
                "transaction pooling that keeps prepared statements (PgBouncer 1.21+ with max_prepared_statements): accepted"
            );
            Ok(())
        }
        Ok(Pooling::Undecided) => {
            tracing::warn!(
                url = %redact(url),
                "a pooler with a single server connection that pools transactions: cannot tell whether it keeps prepared statements; give it more connections, or use session mode"
            );
            Ok(())
        }
        Err(Refusal::LosesStatements(reason)) => Err(StartupError::TransactionPooler {
            url: redact(url),
            reason,
        }),
        Err(Refusal::Failed(e)) => Err(StartupError::from_sqlx(url, DOING, e)),
    }
}

async fn connect_one(
    url: &str,
    pool_size: u32,
    mode: MigrateMode,
) -> Result<Connected, StartupError> {
    let options: PgConnectOptions =
        url.parse()
            .map_err(|e: sqlx::Error| StartupError::InvalidUrl {
                url: redact(url),
                reason: e.to_string(),
            })?;
    if mode == MigrateMode::Auto {
        create_if_missing(url, &options).await?;
    }
    // One plain connection first: a pool turns a refused connection into a
    // bare timeout, and start-up must say what actually went wrong.
    PgConnection::connect_with(&options)
        .await
        .map_err(|e| StartupError::from_sqlx(url, "connecting", e))?
        .close()
        .await
        .map_err(|e| StartupError::from_sqlx(url, "connecting", e))?;
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
        .map_err(|e| StartupError::from_sqlx(url, "connecting", e))?;
    let applied = match mode {
        MigrateMode::Auto => migrate(&pool, url).await?,
        MigrateMode::Check => {
            check(&pool, url).await?;
            Vec::new()
        }
        MigrateMode::Off => Vec::new(),
    };
    Ok(Connected {
        pool,
        direct: None,
        applied,
    })
}

async fn create_if_missing(url: &str, options: &PgConnectOptions) -> Result<(), StartupError> {
    let exists = Postgres::database_exists(url)
        .await
        .map_err(|e| StartupError::from_sqlx(url, "looking for the database", e))?;
    if !exists {
        tracing::info!(
            database = options.get_database().unwrap_or_default(),
            "creating database"
        );
        if let Err(e) = Postgres::create_database(url).await {
            // Another replica may have created it in between.
            if !Postgres::database_exists(url).await.unwrap_or(false) {
                return Err(StartupError::from_sqlx(url, CREATING_DATABASE, e));
            }
        }
    }
    Ok(())
}

/// Applies the pending migrations and returns them; refuses a schema whose
/// applied migrations differ from this binary's, accepts a newer one.
pub async fn migrate(pool: &PgPool, url: &str) -> Result<Vec<&'static Migration>, StartupError> {
    let before = Schema::read(pool, url).await?;
    before.refuse_changed(url)?;
    before.warn_newer();
    MIGRATOR
        .run(pool)
        .await
        .map_err(|e| StartupError::from_migrate(url, e))?;
    let after = Schema::read(pool, url).await?;
    let applied: Vec<_> = known()
        .filter(|m| before.find(m.version).is_none() && after.find(m.version).is_some())
        .collect();
    for m in &applied {
        tracing::info!(version = m.version, description = %m.description, "applied migration");
    }
    Ok(applied)
}

/// Refuses a schema that lacks or changed a migration this binary knows,
/// without changing anything; accepts a newer one with a warning.
pub async fn check(pool: &PgPool, url: &str) -> Result<(), StartupError> {
    let schema = Schema::read(pool, url).await?;
    schema.refuse_changed(url)?;
    if let Some(m) = known().find(|m| schema.find(m.version).is_none()) {
        return Err(StartupError::MissingMigration {
            url: redact(url),
            version: m.version,
            description: m.description.to_string(),
        });
    }
    schema.warn_newer();
    Ok(())
}

/// The migrations this binary applies, oldest first.
fn known() -> impl Iterator<Item = &'static Migration> {
    MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
}

fn describe(version: i64) -> String {
    known()
        .find(|m| m.version == version)
        .map(|m| m.description.to_string())
        .unwrap_or_default()
}

/// One row of the migrations table.
#[derive(Debug, sqlx::FromRow)]
struct AppliedMigration {
    version: i64,
    description: String,
    success: bool,
    checksum: Vec<u8>,
}

/// The migrations a database records as applied.
#[derive(Debug)]
struct Schema {
    applied: Vec<AppliedMigration>,
}

impl Schema {
    /// Reads the migrations table; a database without one has none applied.
    async fn read(pool: &PgPool, url: &str) -> Result<Schema, StartupError> {
        let rows = sqlx::query_as::<_, AppliedMigration>(
            "SELECT version, description, success, checksum FROM _sqlx_migrations ORDER BY version",
        )
        .fetch_all(pool)
        .await;
        match rows {
            Ok(applied) => Ok(Schema { applied }),
            Err(sqlx::Error::Database(db))
                if db.code().as_deref() == Some(startup_sqlstate::UNDEFINED_TABLE) =>
            {
                Ok(Schema {
                    applied: Vec::new(),
                })
            }
            Err(e) => Err(StartupError::from_sqlx(
                url,
                "reading the applied migrations",
                e,
            )),
        }
    }

    fn find(&self, version: i64) -> Option<&AppliedMigration> {
        self.applied.iter().find(|a| a.version == version)
    }

    /// A half-applied migration, or a known one applied with other text.
    fn refuse_changed(&self, url: &str) -> Result<(), StartupError> {
        if let Some(dirty) = self.applied.iter().find(|a| !a.success) {
            return Err(StartupError::Dirty {
                url: redact(url),
                version: dirty.version,
            });
        }
        for m in known() {
            if let Some(a) = self.find(m.version)
                && *a.checksum != *m.checksum
            {
                return Err(StartupError::ChecksumMismatch {
                    url: redact(url),
                    version: m.version,
                    description: m.description.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Applied migrations this binary does not have: a newer release's.
    fn newer(&self) -> Vec<&AppliedMigration> {
        self.applied
            .iter()
            .filter(|a| known().all(|m| m.version != a.version))
            .collect()
    }

    fn warn_newer(&self) {
        let newer = self.newer();
        if newer.is_empty() {
            return;
        }
        let names = newer
            .iter()
            .map(|a| format!("{} {}", a.version, a.description))
            .collect::<Vec<_>>()
            .join(", ");
        tracing::warn!(
            migrations = %names,
            "the schema has migrations this binary does not know (a newer release's); accepted: migrations are additive for one release"
        );
    }
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
