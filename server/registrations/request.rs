//! What callers ask of the registration tier, converted once from the proto
//! messages and validated; a bad field is `INVALID_ARGUMENT` naming it.

use std::time::Duration;

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::pagination::{self, TimeKey};
use crate::pb::{self, HealthStatus};
use crate::request::Traced;
use crate::validate;

/// Longest operator or agent message (drain reason, heartbeat message).
const MAX_REASON_CHARS: usize = 256;
/// Bounds of a `Cleanup` stale threshold. The sweep deactivates after three
/// thresholds, subtracted from the database's `now()`.
const MIN_STALE_THRESHOLD: Duration = Duration::from_secs(1);
const MAX_STALE_THRESHOLD: Duration = Duration::from_secs(24 * 3600);

/// What an instance says about itself when it registers (`RegisterInstance`
/// or a health stream's `Hello`).
#[derive(Debug, Clone)]
pub struct Announcement {
    pub instance_id: String,
    pub agent_id: String,
    pub name: String,
    pub connection_details: serde_json::Value,
    pub runtime_config: serde_json::Value,
    pub capacity: Option<i32>,
}

/// How to find one registration.
#[derive(Debug, Clone)]
pub enum RegistrationKey {
    Id(Uuid),
    InstanceId(String),
}

/// Filters of a registration listing (`tenant` is the caller's scope).
#[derive(Debug, Clone, Default)]
pub struct RegistrationFilter {
    pub tenant: Option<Uuid>,
    pub registration_status: Option<&'static str>,
    pub health_status: Option<&'static str>,
    pub agent_id: Option<String>,
    pub configuration_id: Option<Uuid>,
    pub after: Option<TimeKey>,
    pub limit: i64,
}

/// `ListRegistrations`: the tenant it names (admins only) and the filter.
#[derive(Debug)]
pub struct ListRegistrations {
    pub tenant_id: String,
    pub filter: RegistrationFilter,
}

/// A change of one registration's state asked for by a unary call, fenced by
/// epoch. (Changes a health stream causes go through `writer.rs`.)
#[derive(Debug, Clone, Copy)]
pub enum Transition {
    /// Health reported for the instance (healthy or degraded); healthy resets failures.
    Report(HealthStatus),
    /// The instance was deactivated.
    Deactivate,
}

/// A fenced change asked for by instance id (`UpdateHealth`, `DeactivateRegistration`).
#[derive(Debug)]
pub struct InstanceChange {
    pub instance_id: String,
    /// 0: unfenced.
    pub epoch: i64,
    pub change: Transition,
}

/// `DrainRegistration`.
#[derive(Debug)]
pub struct DrainOrder {
    pub instance_id: String,
    pub reason: String,
}

/// `Cleanup`: what the operator overrides of the sweep settings.
#[derive(Debug)]
pub struct CleanupOrder {
    pub stale_threshold: Option<Duration>,
    pub ignore_partition_guard: bool,
}

/// One heartbeat, checked against the health it may report.
#[derive(Debug)]
pub struct Beat {
    /// Healthy or degraded; `None`: unchanged.
    pub health: Option<HealthStatus>,
    pub current_load: i32,
    pub sequence: u64,
    /// The agent's load report, if the heartbeat carried one.
    pub load: Option<super::load::Load>,
}

/// An instance id: 1..=256 printable characters.
fn instance(field: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.chars().count() > 256 || value.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            "must be 1..=256 printable characters",
        ));
    }
    Ok(())
}

fn epoch(value: i64) -> Result<i64> {
    if value < 0 {
        return Err(Error::invalid("epoch", "must not be negative"));
    }
    Ok(value)
}

fn reported(field: &str, value: i32) -> Result<Option<HealthStatus>> {
    match validate::enum_value::<HealthStatus>(field, value)? {
        None => Ok(None),
        Some(h @ (HealthStatus::Healthy | HealthStatus::Degraded)) => Ok(Some(h)),
        Some(_) => Err(Error::invalid(field, "must be HEALTHY or DEGRADED")),
    }
}

fn reason(field: &str, value: &str) -> Result<()> {
    validate::text(field, value, MAX_REASON_CHARS)
}

impl Announcement {
    /// Validates the fields of a registration; `prefix` names the message.
    fn new(
        prefix: &str,
        instance_id: String,
        agent_id: String,
        name: String,
        connection_details: Option<prost_types::Struct>,
        runtime_config: Option<prost_types::Struct>,
        capacity: Option<i32>,
    ) -> Result<Self> {
        let f = |n: &str| format!("{prefix}{n}");
        instance(&f("instance_id"), &instance_id)?;
        validate::slug(&f("agent_id"), &agent_id, 64)?;
        validate::text(&f("name"), &name, validate::MAX_NAME_CHARS)?;
        if capacity.is_some_and(|c| c <= 0) {
            return Err(Error::invalid(
                f("capacity"),
                "must be greater than 0 when set",
            ));
        }
        Ok(Announcement {
            connection_details: validate::json(&f("connection_details"), connection_details)?,
            runtime_config: validate::json(&f("runtime_config"), runtime_config)?,
            instance_id,
            agent_id,
            name,
            capacity,
        })
    }
}

impl TryFrom<pb::RegisterInstanceRequest> for Announcement {
    type Error = Error;
    fn try_from(r: pb::RegisterInstanceRequest) -> Result<Self> {
        Announcement::new(
            "",
            r.instance_id,
            r.agent_id,
            r.name,
            r.connection_details,
            r.runtime_config,
            r.capacity,
        )
    }
}

impl TryFrom<pb::Hello> for Announcement {
    type Error = Error;
    fn try_from(h: pb::Hello) -> Result<Self> {
        Announcement::new(
            "hello.",
            h.instance_id,
            h.agent_id,
            h.name,
            h.connection_details,
            h.runtime_config,
            h.capacity,
        )
    }
}

impl Traced for Announcement {
    fn trace(&self, span: &tracing::Span) {
        span.record("instance", self.instance_id.as_str());
    }
}

impl TryFrom<pb::GetRegistrationRequest> for RegistrationKey {
    type Error = Error;
    fn try_from(r: pb::GetRegistrationRequest) -> Result<Self> {
        use pb::get_registration_request::Key;
        match r.key {
            Some(Key::Id(id)) => Ok(RegistrationKey::Id(validate::uuid("id", &id)?)),
            Some(Key::InstanceId(i)) => {
                instance("instance_id", &i)?;
                Ok(RegistrationKey::InstanceId(i))
            }
            None => Err(Error::invalid("key", "set id or instance_id")),
        }
    }
}

impl Traced for RegistrationKey {}

impl TryFrom<pb::ListRegistrationsRequest> for ListRegistrations {
    type Error = Error;
    fn try_from(r: pb::ListRegistrationsRequest) -> Result<Self> {
        if !r.agent_id.is_empty() {
            validate::slug("agent_id", &r.agent_id, 64)?;
        }
        let filter = RegistrationFilter {
            tenant: None,
            registration_status: validate::enum_value::<pb::RegistrationStatus>(
                "registration_status",
                r.registration_status,
            )?
            .and_then(pb::RegistrationStatus::db_name),
            health_status: validate::enum_value::<HealthStatus>("health_status", r.health_status)?
                .and_then(HealthStatus::db_name),
            agent_id: (!r.agent_id.is_empty()).then_some(r.agent_id),
            configuration_id: validate::opt_uuid("configuration_id", &r.configuration_id)?,
            after: pagination::decode::<TimeKey>(&r.page_token)?,
            limit: pagination::page_size(r.page_size)?,
        };
        Ok(ListRegistrations {
            tenant_id: r.tenant_id,
            filter,
        })
    }
}

impl Traced for ListRegistrations {}

impl TryFrom<pb::UpdateHealthRequest> for InstanceChange {
    type Error = Error;
    fn try_from(r: pb::UpdateHealthRequest) -> Result<Self> {
        instance("instance_id", &r.instance_id)?;
        let health = reported("health_status", r.health_status)?
            .ok_or_else(|| Error::invalid("health_status", "must be HEALTHY or DEGRADED"))?;
        Ok(InstanceChange {
            instance_id: r.instance_id,
            epoch: epoch(r.epoch)?,
            change: Transition::Report(health),
        })
    }
}

impl TryFrom<pb::DeactivateRegistrationRequest> for InstanceChange {
    type Error = Error;
    fn try_from(r: pb::DeactivateRegistrationRequest) -> Result<Self> {
        instance("instance_id", &r.instance_id)?;
        Ok(InstanceChange {
            instance_id: r.instance_id,
            epoch: epoch(r.epoch)?,
            change: Transition::Deactivate,
        })
    }
}

impl Traced for InstanceChange {
    fn trace(&self, span: &tracing::Span) {
        span.record("instance", self.instance_id.as_str());
    }
}

impl TryFrom<pb::DrainRegistrationRequest> for DrainOrder {
    type Error = Error;
    fn try_from(r: pb::DrainRegistrationRequest) -> Result<Self> {
        instance("instance_id", &r.instance_id)?;
        reason("reason", &r.reason)?;
        Ok(DrainOrder {
            instance_id: r.instance_id,
            reason: r.reason,
        })
    }
}

impl Traced for DrainOrder {
    fn trace(&self, span: &tracing::Span) {
        span.record("instance", self.instance_id.as_str());
    }
}

impl TryFrom<pb::CleanupRequest> for CleanupOrder {
    type Error = Error;
    fn try_from(r: pb::CleanupRequest) -> Result<Self> {
        let stale_threshold = validate::duration(
            "stale_threshold",
            r.stale_threshold,
            MIN_STALE_THRESHOLD,
            MAX_STALE_THRESHOLD,
        )?;
        Ok(CleanupOrder {
            stale_threshold,
            ignore_partition_guard: r.ignore_partition_guard,
        })
    }
}

impl Traced for CleanupOrder {}

impl TryFrom<pb::Heartbeat> for Beat {
    type Error = Error;
    fn try_from(hb: pb::Heartbeat) -> Result<Self> {
        let health = reported("heartbeat.health_status", hb.health_status)?;
        if hb.current_load < 0 {
            return Err(Error::invalid(
                "heartbeat.current_load",
                "must not be negative",
            ));
        }
        reason("heartbeat.message", &hb.message)?;
        Ok(Beat {
            health,
            current_load: hb.current_load,
            sequence: hb.sequence,
            load: hb.load.map(super::load::Load::try_from).transpose()?,
        })
    }
}
