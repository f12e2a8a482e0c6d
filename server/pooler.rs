//! The start-up check for a pooler that would lose prepared statements.
//!
//! sqlx prepares named statements (`sqlx_s_1`, ...) and sends Parse and
//! Bind in separate protocol syncs. A pooler that hands one client
//! connection's statements to different PostgreSQL sessions (PgBouncer's
//! transaction mode) must carry them along, as PgBouncer 1.21+ does with
//! `max_prepared_statements` > 0. One that does not lets the server start
//! and then fails some calls (`prepared statement "sqlx_s_1" already
//! exists`), so start-up refuses it.
//!
//! The check, on one pooled connection A and a second one B opened the
//! same way:
//!
//! 1. A runs a prepared statement that answers its session's pid.
//! 2. B opens a transaction, which holds a session, and asks its pid.
//! 3. A runs its prepared statement again.
//!
//! Directly on PostgreSQL, and through a pooler in session mode, a
//! connection keeps its session: B's pid is another, A's stays, every time.
//! Under transaction pooling A holds no session between its statements, and
//! B's transaction takes the one A released last (PgBouncer reuses them
//! last in, first out), so A's second statement must run in another session
//! (or A moved on its own): the prepared statement either follows it, and
//! the pooler is accepted, or fails, and start-up refuses. A pid that did
//! not move proves nothing and is accepted, so the check never refuses a
//! setup that works; it misses a transaction pooler only when another
//! client takes that session between two statements, on a pooler that
//! reuses them in another order.

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};

/// The statement of steps 1 and 3 (prepared; sqlx names it).
const PID: &str = "SELECT pg_backend_pid()";
/// Step 2, in the simple protocol: B prepares nothing that A could run into.
const HOLD: &str = "BEGIN; SELECT pg_backend_pid()";

/// SQLSTATEs of a prepared statement that did not follow its connection:
/// `invalid_sql_statement_name` (it does not exist in that session),
/// `duplicate_prepared_statement` (another client's of the same name does),
/// `protocol_violation` (a Bind to another client's, with other parameters).
const LOST_STATEMENT: &[&str] = &["26000", "42P05", "08P01"];

/// How long A's second statement may wait for a session while B holds
/// one: a pooler with a single session for this database and role queues
/// it until B's transaction ends, which it never would.
const SECOND_STATEMENT: Duration = Duration::from_secs(2);

/// What the check found out.
#[derive(Debug, PartialEq, Eq)]
pub enum Pooling {
    /// A kept its session: PostgreSQL itself, a session pooler, or a
    /// transaction pooler that happened to give A the same session.
    Session,
    /// A's statements ran in different sessions, and its prepared
    /// statement followed it (PgBouncer 1.21+ with `max_prepared_statements`).
    TransactionKeepingStatements,
    /// A's second statement could not get a session while B held one: a
    /// transaction pooler with one session; whether it keeps prepared
    /// statements is not known.
    Undecided,
}

/// Why the check refused, or could not run.
#[derive(Debug)]
pub enum Refusal {
    /// A's prepared statement failed in the other session: PostgreSQL's text.
    LosesStatements(String),
    /// A statement of the check failed for another reason.
    Failed(sqlx::Error),
}

/// Runs the check on a connection of `pool` (A), and one opened with the
/// pool's options (B).
pub async fn check(pool: &PgPool) -> Result<Pooling, Refusal> {
    let mut a = pool.acquire().await.map_err(Refusal::Failed)?;
    let first: i32 = sqlx::query_scalar(PID)
        .fetch_one(&mut *a)
        .await
        .map_err(Refusal::Failed)?;
    let mut b = PgConnection::connect_with(&pool.connect_options())
        .await
        .map_err(Refusal::Failed)?;
    let held: Option<i32> = sqlx::raw_sql(HOLD)
        .fetch_optional(&mut b)
        .await
        .map_err(Refusal::Failed)?
        .map(|row| sqlx::Row::try_get(&row, 0))
        .transpose()
        .map_err(Refusal::Failed)?;
    let second = tokio::time::timeout(
        SECOND_STATEMENT,
        sqlx::query_scalar::<_, i32>(PID).fetch_one(&mut *a),
    )
    .await;
    // Ends B's transaction (a pooler releases the session it held).
    let _ = b.close().await;
    match second {
        Err(_) => {
            // Cut off mid-way, that connection is not to be reused.
            drop(a.detach());
            Ok(Pooling::Undecided)
        }
        Ok(Ok(second)) if second == first && held != Some(first) => Ok(Pooling::Session),
        Ok(Ok(_)) => Ok(Pooling::TransactionKeepingStatements),
        Ok(Err(sqlx::Error::Database(db)))
            if db
                .code()
                .is_some_and(|code| LOST_STATEMENT.contains(&code.as_ref())) =>
        {
            drop(a.detach());
            Err(Refusal::LosesStatements(db.message().to_owned()))
        }
        Ok(Err(e)) => Err(Refusal::Failed(e)),
    }
}
