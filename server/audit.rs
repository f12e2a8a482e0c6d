//! The audit log: who changed what, written by the stores in the transaction
//! of the change (so a refused or rolled-back change leaves no event), and
//! read by `AdminService.ListAuditEvents`.
//!
//! Only admin and tenant writes are recorded, and the server's command line;
//! agents' registrations and heartbeats are in `registration_events`. The
//! details are a few facts chosen at each call site, never request bodies:
//! no key secrets, no system prompts (an update names the fields it changed).
//!
//! This module imports no tier, so that every tier's store can import it.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::pagination::{self, TimeKey};
use crate::pb::{self, Role};
use crate::request::Traced;

/// Who made a change: an API key, or the server's command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor {
    /// The key; `None` for the command line.
    pub key_id: Option<Uuid>,
    /// The key's role (`Unspecified` for the command line).
    pub role: Role,
    /// The key's tenant; `None` for admin keys and the command line.
    pub tenant: Option<Uuid>,
}

impl Actor {
    /// The server's command line (`agentry-server keys create`, ...), which
    /// needs database access rather than a key.
    pub const OPERATOR: Actor = Actor {
        key_id: None,
        role: Role::Unspecified,
        tenant: None,
    };

    /// The holder of API key `key_id`.
    pub fn key(key_id: Uuid, role: Role, tenant: Option<Uuid>) -> Actor {
        Actor {
            key_id: Some(key_id),
            role,
            tenant,
        }
    }

    fn role_name(&self) -> &'static str {
        match self.key_id {
            None => "operator",
            Some(_) => self.role.db_name().unwrap_or("operator"),
        }
    }
}

/// What a change was made to.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// `tenant`, `api_key`, `manifest`, `configuration`, `registration`...
    pub kind: &'static str,
    /// The object; `None` when the change has no single target (a cleanup).
    pub id: Option<Uuid>,
    /// The tenant the object belongs to; `None` for system-wide objects.
    pub tenant: Option<Uuid>,
}

impl Target {
    /// Object `id` of `kind`, belonging to `tenant` (`None`: system-wide).
    pub fn new(kind: &'static str, id: Uuid, tenant: Option<Uuid>) -> Target {
        Target {
            kind,
            id: Some(id),
            tenant,
        }
    }
}

/// Records that `actor` did `action` (`<kind>.<verb>`) to `target`, inside
/// the caller's transaction `conn`.
pub async fn record(
    conn: &mut PgConnection,
    actor: &Actor,
    action: &str,
    target: Target,
    details: serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_events (id, key_id, role, tenant_id, action, target_kind, target_id, \
         target_tenant_id, details) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(Uuid::new_v4())
    .bind(actor.key_id)
    .bind(actor.role_name())
    .bind(actor.tenant)
    .bind(action)
    .bind(target.kind)
    .bind(target.id)
    .bind(target.tenant)
    .bind(details)
    .execute(conn)
    .await?;
    Ok(())
}

/// An event as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub key_id: Option<Uuid>,
    pub role: String,
    pub tenant_id: Option<Uuid>,
    pub action: String,
    pub target_kind: String,
    pub target_id: Option<Uuid>,
    pub target_tenant_id: Option<Uuid>,
    pub details: serde_json::Value,
}

impl From<AuditRow> for pb::AuditEvent {
    fn from(row: AuditRow) -> Self {
        let text = |id: Option<Uuid>| id.map(|id| id.to_string()).unwrap_or_default();
        pb::AuditEvent {
            id: row.id.to_string(),
            time: Some(pb::timestamp(row.at)),
            key_id: text(row.key_id),
            role: Role::from_db_name(&row.role).into(),
            tenant_id: text(row.tenant_id),
            action: row.action,
            target_kind: row.target_kind,
            target_id: text(row.target_id),
            target_tenant_id: text(row.target_tenant_id),
            details: Some(pb::json_to_struct(row.details)),
        }
    }
}

/// Longest `action` filter accepted.
const MAX_ACTION_CHARS: usize = 64;

/// `ListAuditEvents`, validated. The tenant scope is not part of it: it
/// comes from the caller's key.
#[derive(Debug, Clone)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub target_id: Option<Uuid>,
    pub key_id: Option<Uuid>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub before: Option<TimeKey>,
    pub limit: i64,
}

impl TryFrom<pb::ListAuditEventsRequest> for AuditFilter {
    type Error = Error;
    fn try_from(r: pb::ListAuditEventsRequest) -> Result<Self> {
        crate::validate::text("action", &r.action, MAX_ACTION_CHARS)?;
        let since = time("start_time", r.start_time)?;
        let until = time("end_time", r.end_time)?;
        if let (Some(since), Some(until)) = (since, until)
            && until < since
        {
            return Err(Error::invalid("end_time", "is before start_time"));
        }
        Ok(AuditFilter {
            action: Some(r.action).filter(|a| !a.is_empty()),
            target_id: crate::validate::opt_uuid("target_id", &r.target_id)?,
            key_id: crate::validate::opt_uuid("key_id", &r.key_id)?,
            since,
            until,
            before: pagination::decode(&r.page_token)?,
            limit: pagination::page_size(r.page_size)?,
        })
    }
}

impl Traced for AuditFilter {}

/// A timestamp field, checked.
fn time(field: &str, t: Option<prost_types::Timestamp>) -> Result<Option<DateTime<Utc>>> {
    let Some(t) = t else { return Ok(None) };
    let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000);
    nanos
        .and_then(|n| DateTime::from_timestamp(t.seconds, n))
        .map(Some)
        .ok_or_else(|| Error::invalid(field, "is not a valid timestamp"))
}

/// Events matching `f` within `tenant` (`None`: every tenant), newest first,
/// `limit + 1` of them at most. A tenant's events are those made with its
/// keys and those about its objects.
pub async fn list(pool: &PgPool, tenant: Option<Uuid>, f: &AuditFilter) -> Result<Vec<AuditRow>> {
    Ok(sqlx::query_as(
        "SELECT id, at, key_id, role, tenant_id, action, target_kind, target_id, target_tenant_id, \
           details FROM audit_events \
         WHERE ($1::uuid IS NULL OR tenant_id = $1 OR target_tenant_id = $1) \
           AND ($2::text IS NULL OR action = $2) \
           AND ($3::uuid IS NULL OR target_id = $3) \
           AND ($4::uuid IS NULL OR key_id = $4) \
           AND ($5::timestamptz IS NULL OR at >= $5) \
           AND ($6::timestamptz IS NULL OR at < $6) \
           AND ($7::timestamptz IS NULL OR (at, id) < ($7, $8)) \
         ORDER BY at DESC, id DESC LIMIT $9",
    )
    .bind(tenant)
    .bind(&f.action)
    .bind(f.target_id)
    .bind(f.key_id)
    .bind(f.since)
    .bind(f.until)
    .bind(f.before.map(|k| k.at))
    .bind(f.before.map(|k| k.id))
    .bind(f.limit + 1)
    .fetch_all(pool)
    .await?)
}

/// One page of [`list`] and the token of the next.
pub async fn page(
    pool: &PgPool,
    tenant: Option<Uuid>,
    f: &AuditFilter,
) -> Result<pb::ListAuditEventsResponse> {
    let rows = list(pool, tenant, f).await?;
    let (rows, next_page_token) =
        pagination::page(rows, f.limit, |e| TimeKey { at: e.at, id: e.id });
    Ok(pb::ListAuditEventsResponse {
        audit_events: rows.into_iter().map(Into::into).collect(),
        next_page_token,
    })
}
