//! SQL of registrations and their events. Every statement carries the tenant
//! (or the registration id a session already proved it owns) and, where a
//! stale writer could overwrite a newer one, the epoch.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

pub use super::request::{Announcement, RegistrationFilter, RegistrationKey, Transition};
use crate::audit::{self, Actor, Target};
use crate::error::{Error, Result, reason};
use crate::pb::{self, HealthStatus};

/// A registration as stored, with its manifest's agent_id.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RegistrationRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub manifest_id: Uuid,
    pub agent_id: String,
    pub configuration_id: Uuid,
    pub instance_id: String,
    pub name: String,
    pub registration_status: String,
    pub health_status: String,
    pub connection_details: serde_json::Value,
    pub runtime_config: serde_json::Value,
    pub capacity: Option<i32>,
    pub epoch: i64,
    pub failure_count: i32,
    pub last_health_check: DateTime<Utc>,
    pub activation_date: DateTime<Utc>,
    pub deactivation_date: Option<DateTime<Utc>>,
    pub drain_time: Option<DateTime<Utc>>,
    pub drain_reason: String,
    /// Takes new work: active, healthy or degraded, not drained (the
    /// generated column of migration 0008, the one definition of it).
    pub routable: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The replica holding its stream (migration 0016); `None`: none.
    /// While a live replica holds it, `last_health_check` reads as that
    /// replica's last lease renewal: the holder ends a stream that goes
    /// silent for the stale timeout, so the instance was heard from within
    /// the stale timeout of that time (the heartbeat interval, normally).
    pub replica_id: Option<Uuid>,
    /// The last load report (migration 0013); statements that do not read
    /// it leave it empty.
    #[sqlx(flatten)]
    pub load: LoadColumns,
}

/// The load report columns of a registration.
#[derive(Debug, Clone, Default, PartialEq, sqlx::FromRow)]
pub struct LoadColumns {
    #[sqlx(default)]
    pub load_in_flight: Option<i32>,
    #[sqlx(default)]
    pub load_queue_depth: Option<i32>,
    #[sqlx(default)]
    pub load_utilization: Option<f64>,
    #[sqlx(default)]
    pub load_metrics: Option<serde_json::Value>,
    #[sqlx(default)]
    pub load_reported_at: Option<DateTime<Utc>>,
    #[sqlx(default)]
    pub load_first_reported_at: Option<DateTime<Utc>>,
}

impl LoadColumns {
    /// The report, when the row holds one.
    pub fn report(&self) -> Option<pb::LoadReport> {
        self.load_reported_at?;
        Some(pb::LoadReport {
            in_flight: self.load_in_flight.unwrap_or(0).max(0) as u32,
            queue_depth: self.load_queue_depth.unwrap_or(0).max(0) as u32,
            utilization: self.load_utilization.unwrap_or(0.0),
            metrics: self
                .load_metrics
                .as_ref()
                .and_then(|m| m.as_object())
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

impl From<RegistrationRow> for pb::Registration {
    fn from(r: RegistrationRow) -> Self {
        pb::Registration {
            id: r.id.to_string(),
            tenant_id: r.tenant_id.to_string(),
            manifest_id: r.manifest_id.to_string(),
            agent_id: r.agent_id,
            configuration_id: r.configuration_id.to_string(),
            instance_id: r.instance_id,
            name: r.name,
            registration_status: pb::RegistrationStatus::from_db_name(&r.registration_status)
                .into(),
            health_status: HealthStatus::from_db_name(&r.health_status).into(),
            connection_details: Some(pb::json_to_struct(r.connection_details)),
            runtime_config: Some(pb::json_to_struct(r.runtime_config)),
            epoch: r.epoch,
            failure_count: r.failure_count,
            capacity: r.capacity,
            last_health_check: Some(pb::timestamp(r.last_health_check)),
            activation_date: Some(pb::timestamp(r.activation_date)),
            deactivation_date: pb::opt_timestamp(r.deactivation_date),
            drain_time: pb::opt_timestamp(r.drain_time),
            drain_reason: r.drain_reason,
            create_time: Some(pb::timestamp(r.created_at)),
            update_time: Some(pb::timestamp(r.updated_at)),
            load: r.load.report(),
            load_report_time: pb::opt_timestamp(r.load.load_reported_at),
        }
    }
}

/// Kinds of registration events that [`transition`] records. (The batch
/// statements of registrations, stream changes and the sweep name theirs in
/// SQL: registered, reconnected, swept.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    HealthChanged,
    Deactivated,
}

impl EventKind {
    fn as_str(self) -> &'static str {
        match self {
            EventKind::HealthChanged => "health_changed",
            EventKind::Deactivated => "deactivated",
        }
    }
}

macro_rules! select_from {
    ($source:literal) => {
        concat!(
            "SELECT r.id, r.tenant_id, r.manifest_id, m.agent_id, r.configuration_id, r.instance_id, r.name, \
             r.registration_status, r.health_status, r.connection_details, r.runtime_config, r.capacity, \
             r.epoch, r.failure_count, \
             CASE WHEN p.expires_at > now() THEN greatest(r.last_health_check, p.renewed_at) \
                  ELSE r.last_health_check END AS last_health_check, \
             r.activation_date, r.deactivation_date, \
             r.drain_time, r.drain_reason, r.routable, r.created_at, r.updated_at, r.replica_id, \
             r.load_in_flight, r.load_queue_depth, r.load_utilization, r.load_metrics, \
             r.load_reported_at, r.load_first_reported_at FROM ",
            $source,
            " r JOIN agent_manifests m ON m.id = r.manifest_id \
             LEFT JOIN agentry_replicas p ON p.id = r.replica_id"
        )
    };
}

/// Drains the active registration `instance_id` of `tenant` for `actor`:
/// routing stops offering it, across reconnects, until it is deactivated and
/// registers again. Draining twice keeps the first time.
pub async fn drain(
    pool: &PgPool,
    actor: &Actor,
    tenant: Uuid,
    instance_id: &str,
    reason: &str,
) -> Result<RegistrationRow> {
    let mut tx = pool.begin().await?;
    let drained: Option<(Uuid,)> = sqlx::query_as(
        "UPDATE agent_registrations SET drain_time = coalesce(drain_time, now()), drain_reason = $3, \
           updated_at = now() \
         WHERE tenant_id = $1 AND instance_id = $2 AND registration_status = 'active' RETURNING id",
    )
    .bind(tenant)
    .bind(instance_id)
    .bind(reason)
    .fetch_optional(&mut *tx)
    .await?;
    let key = match drained {
        Some((id,)) => RegistrationKey::Id(id),
        None => RegistrationKey::InstanceId(instance_id.to_owned()),
    };
    let row = get(&mut *tx, Some(tenant), &key).await?;
    if drained.is_none() {
        return Err(Refusal::Inactive.into());
    }
    let target = Target::new("registration", row.id, Some(tenant));
    let details = json!({ "instance_id": instance_id, "reason": reason });
    audit::record(&mut tx, actor, "registration.drain", target, details).await?;
    tx.commit().await?;
    Ok(row)
}

/// Appends an event for `row` in its current state.
pub async fn record(conn: &mut PgConnection, row: &RegistrationRow, kind: EventKind) -> Result<()> {
    sqlx::query(
        "INSERT INTO registration_events (tenant_id, registration_id, configuration_id, kind, health_status, epoch) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(row.tenant_id)
    .bind(row.id)
    .bind(row.configuration_id)
    .bind(kind.as_str())
    .bind(&row.health_status)
    .bind(row.epoch)
    .execute(conn)
    .await?;
    Ok(())
}

/// One registration of `tenant` (`None`: any tenant).
pub async fn get<'e>(
    db: impl PgExecutor<'e>,
    tenant: Option<Uuid>,
    key: &RegistrationKey,
) -> Result<RegistrationRow> {
    let query = match key {
        RegistrationKey::Id(id) => sqlx::query_as(concat!(
            select_from!("agent_registrations"),
            " WHERE r.id = $1 AND ($2::uuid IS NULL OR r.tenant_id = $2)"
        ))
        .bind(*id),
        RegistrationKey::InstanceId(instance) => sqlx::query_as(concat!(
            select_from!("agent_registrations"),
            " WHERE r.instance_id = $1 AND ($2::uuid IS NULL OR r.tenant_id = $2)"
        ))
        .bind(instance.as_str()),
    };
    query
        .bind(tenant)
        .fetch_optional(db)
        .await?
        .ok_or_else(|| Error::NotFound("registration".into()))
}

/// The registrations among `ids` that exist, in one read.
pub async fn get_many(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<RegistrationRow>> {
    Ok(sqlx::query_as(concat!(
        select_from!("agent_registrations"),
        " WHERE r.id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(pool)
    .await?)
}

/// Every active registration (the routing view's initial load).
pub async fn all_active(pool: &PgPool) -> Result<Vec<RegistrationRow>> {
    Ok(sqlx::query_as(concat!(
        select_from!("agent_registrations"),
        " WHERE r.registration_status = 'active'"
    ))
    .fetch_all(pool)
    .await?)
}

/// Registrations oldest first, `limit + 1` at most.
pub async fn list(pool: &PgPool, f: &RegistrationFilter) -> Result<Vec<RegistrationRow>> {
    Ok(sqlx::query_as(concat!(
        select_from!("agent_registrations"),
        " WHERE ($1::uuid IS NULL OR r.tenant_id = $1) \
           AND ($2::text IS NULL OR r.registration_status = $2) \
           AND ($3::text IS NULL OR r.health_status = $3) \
           AND ($4::text IS NULL OR m.agent_id = $4) \
           AND ($5::uuid IS NULL OR r.configuration_id = $5) \
           AND ($6::timestamptz IS NULL OR (r.created_at, r.id) > ($6, $7)) \
         ORDER BY r.created_at, r.id LIMIT $8"
    ))
    .bind(f.tenant)
    .bind(f.registration_status)
    .bind(f.health_status)
    .bind(&f.agent_id)
    .bind(f.configuration_id)
    .bind(f.after.map(|k| k.at))
    .bind(f.after.map(|k| k.id))
    .bind(f.limit + 1)
    .fetch_all(pool)
    .await?)
}

/// Why a fenced change did not apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    StaleEpoch(i64),
    Inactive,
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Error {
        match r {
            Refusal::NotFound => Error::NotFound("registration".into()),
            Refusal::StaleEpoch(current) => Error::Aborted(format!(
                "epoch is stale: the registration is at epoch {current}"
            )),
            Refusal::Inactive => Error::precondition(
                reason::REGISTRATION_INACTIVE,
                "the registration is inactive; register it again",
            ),
        }
    }
}

/// Applies `t` to the registration (`tenant`, `key`) when its epoch matches
/// (`epoch` 0 skips the check) and it is active; records an event when the
/// health changed. The row lock makes check and change one step.
pub async fn transition(
    pool: &PgPool,
    tenant: Option<Uuid>,
    key: &RegistrationKey,
    epoch: i64,
    t: Transition,
) -> Result<Result<RegistrationRow, Refusal>> {
    let mut tx = pool.begin().await?;
    let current = match key {
        RegistrationKey::Id(id) => sqlx::query_as::<_, (Uuid, i64, String, String)>(
            "SELECT id, epoch, registration_status, health_status FROM agent_registrations \
             WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2) FOR UPDATE",
        )
        .bind(*id),
        RegistrationKey::InstanceId(instance) => sqlx::query_as(
            "SELECT id, epoch, registration_status, health_status FROM agent_registrations \
             WHERE instance_id = $1 AND ($2::uuid IS NULL OR tenant_id = $2) FOR UPDATE",
        )
        .bind(instance.as_str()),
    }
    .bind(tenant)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, current_epoch, status, health)) = current else {
        return Ok(Err(Refusal::NotFound));
    };
    if epoch != 0 && epoch != current_epoch {
        return Ok(Err(Refusal::StaleEpoch(current_epoch)));
    }
    if status != "active" {
        return Ok(Err(Refusal::Inactive));
    }
    let (sql, new_health, kind) = match t {
        Transition::Report(h) => (
            "UPDATE agent_registrations SET health_status = $2, last_health_check = now(), \
             failure_count = CASE WHEN $2 = 'healthy' THEN 0 ELSE failure_count END, updated_at = now() \
             WHERE id = $1",
            h.db_name().unwrap_or("unknown"),
            EventKind::HealthChanged,
        ),
        Transition::Deactivate => (
            "UPDATE agent_registrations SET registration_status = 'inactive', health_status = $2, \
             deactivation_date = now(), updated_at = now() WHERE id = $1",
            "disconnected",
            EventKind::Deactivated,
        ),
    };
    sqlx::query(sql)
        .bind(id)
        .bind(new_health)
        .execute(&mut *tx)
        .await?;
    let row = get(&mut *tx, None, &RegistrationKey::Id(id)).await?;
    if health != new_health || matches!(t, Transition::Deactivate) {
        record(&mut tx, &row, kind).await?;
    }
    tx.commit().await?;
    Ok(Ok(row))
}
