//! The in-memory availability view that serves routing reads.
//!
//! Every replica keeps one. It is loaded at start and kept current by the
//! change notifications that triggers send on `agentry_changes` for every
//! write, this replica's included, so there is one update path whatever
//! replica made a change. Heartbeat-only writes notify nobody. When the
//! listening connection drops, notifications may have been lost, so the view
//! reloads whole.
//!
//! Per configuration it keeps the active instances and, ordered by rank, the
//! routable ones, so a read walks configurations, not registrations.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use serde::Deserialize;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use super::encoded::EncodedAgent;
use crate::configurations::store::{self as configurations, ConfigurationRow};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::manifests::store::{self as manifests, ManifestKey, ManifestRow};
use crate::pb::{self, HealthStatus};
use crate::registrations::sessions::Sessions;
use crate::registrations::store::{self as registrations, RegistrationRow};

/// Channel the triggers of migration 0003 notify.
pub const CHANNEL: &str = "agentry_changes";
/// Notifications applied together at most.
const FEED_BATCH: usize = 1000;

/// A change of the view: one configuration of a tenant, or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The tenant whose view changed.
    pub tenant: Uuid,
    /// The configuration whose availability may have changed; `None`: any.
    pub configuration: Option<Uuid>,
    /// The view's revision after the change.
    pub revision: u64,
}

/// What a caller wants routed to.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub agent_id: Option<String>,
    pub agent_type: Option<String>,
    pub capabilities: Vec<String>,
    pub include_degraded: bool,
    pub include_deprecated: bool,
}

#[derive(Debug)]
struct ManifestInfo {
    agent_id: String,
    agent_type: String,
    version: String,
    capabilities: Vec<String>,
    status: String,
}

/// Ranks routable instances inside a configuration: healthy before degraded,
/// fewer open leases (plus reported load) first, fewer recent failures first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    degraded: bool,
    busy: i32,
    failures: i32,
    id: Uuid,
}

#[derive(Debug)]
struct Instance {
    registration: pb::Registration,
    health: HealthStatus,
    failures: i32,
    /// Drained by an operator: active, but takes no new work.
    drained: bool,
}

#[derive(Debug)]
struct ConfigState {
    configuration: pb::Configuration,
    manifest_id: Uuid,
    /// Active instances, routable or not.
    instances: HashMap<Uuid, Instance>,
    /// Healthy and degraded instances, best first.
    ranked: BTreeSet<Rank>,
    healthy: u32,
    /// The entry GetAvailableAgents answers with, encoded without its score
    /// on first use; every change of this configuration's view resets it
    /// (see [`View::publish`]).
    encoded: OnceLock<Arc<[u8]>>,
}

impl ConfigState {
    fn new(row: ConfigurationRow) -> Self {
        ConfigState {
            manifest_id: row.manifest_id,
            configuration: row.into(),
            instances: HashMap::new(),
            ranked: BTreeSet::new(),
            healthy: 0,
            encoded: OnceLock::new(),
        }
    }

    fn rank(&self, id: Uuid, leases: &HashMap<Uuid, i32>) -> Option<Rank> {
        let instance = self.instances.get(&id).filter(|i| !i.drained)?;
        let degraded = match instance.health {
            HealthStatus::Healthy => false,
            HealthStatus::Degraded => true,
            _ => return None,
        };
        Some(Rank {
            degraded,
            busy: leases.get(&id).copied().unwrap_or(0),
            failures: instance.failures,
            id,
        })
    }

    fn remove_instance(&mut self, id: Uuid, leases: &HashMap<Uuid, i32>) {
        if let Some(rank) = self.rank(id, leases) {
            self.ranked.remove(&rank);
        }
        if self
            .instances
            .remove(&id)
            .is_some_and(|old| old.health == HealthStatus::Healthy)
        {
            self.healthy -= 1;
        }
    }

    fn insert_instance(&mut self, instance: Instance, leases: &HashMap<Uuid, i32>) {
        let id = Uuid::try_parse(&instance.registration.id).unwrap_or_default();
        self.remove_instance(id, leases);
        if instance.health == HealthStatus::Healthy {
            self.healthy += 1;
        }
        self.instances.insert(id, instance);
        if let Some(rank) = self.rank(id, leases) {
            self.ranked.insert(rank);
        }
    }
}

#[derive(Debug, Default)]
struct TenantState {
    configs: HashMap<Uuid, ConfigState>,
    /// Which configuration each active instance belongs to.
    instance_config: HashMap<Uuid, Uuid>,
    /// Open leases per instance (kept apart so instance reloads keep them).
    leases: HashMap<Uuid, i32>,
}

#[derive(Debug, Default)]
struct State {
    revision: u64,
    manifests: HashMap<Uuid, ManifestInfo>,
    tenants: HashMap<Uuid, TenantState>,
}

/// The availability view of all tenants.
#[derive(Debug)]
pub struct View {
    state: RwLock<State>,
    changes: broadcast::Sender<Change>,
    ready: watch::Sender<bool>,
}

impl View {
    /// An empty view whose watchers may fall `buffer` changes behind before they resync.
    pub fn new(buffer: usize) -> Self {
        View {
            state: RwLock::default(),
            changes: broadcast::channel(buffer.max(1)).0,
            ready: watch::channel(false).0,
        }
    }
}

/// One notification of `agentry_changes`.
#[derive(Debug, Deserialize)]
struct Notice {
    k: String,
    id: Uuid,
    t: Option<Uuid>,
    w: Option<i32>,
    d: Option<i32>,
    op: Option<String>,
}

impl View {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes to changes; a receiver that lags must resync from a snapshot.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// The current revision.
    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    /// Waits until the view has been loaded once.
    pub async fn ready(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
    }

    /// Announces a change of one configuration's entry (or, with `None`, of
    /// all the tenant's). Every change of the view goes through here, which
    /// is why the pre-encoded entries are reset here.
    fn publish(&self, state: &mut State, tenant: Uuid, configuration: Option<Uuid>) {
        if let Some(t) = state.tenants.get_mut(&tenant) {
            match configuration {
                Some(id) => {
                    if let Some(c) = t.configs.get_mut(&id) {
                        c.encoded.take();
                    }
                }
                None => {
                    for c in t.configs.values_mut() {
                        c.encoded.take();
                    }
                }
            }
        }
        state.revision += 1;
        let _ = self.changes.send(Change {
            tenant,
            configuration,
            revision: state.revision,
        });
    }

    /// Replaces the whole view from the database.
    pub async fn load_all(&self, pool: &PgPool) -> Result<()> {
        let manifests = manifests::all(pool).await?;
        let configs = configurations::all(pool).await?;
        let instances = registrations::all_active(pool).await?;
        let leases: Vec<(Uuid, Uuid, i64)> = sqlx::query_as(
            "SELECT tenant_id, registration_id, count(*) FROM workload_leases WHERE released_at IS NULL GROUP BY 1, 2",
        )
        .fetch_all(pool)
        .await?;
        let mut fresh = State::default();
        for m in manifests {
            fresh.manifests.insert(m.id, manifest_info(m));
        }
        for (tenant, registration, count) in leases {
            fresh
                .tenants
                .entry(tenant)
                .or_default()
                .leases
                .insert(registration, i32::try_from(count).unwrap_or(i32::MAX));
        }
        for c in configs {
            fresh
                .tenants
                .entry(c.tenant_id)
                .or_default()
                .configs
                .insert(c.id, ConfigState::new(c));
        }
        for r in instances {
            let tenant = fresh.tenants.entry(r.tenant_id).or_default();
            place_instance(tenant, r);
        }
        let tenants: Vec<Uuid> = fresh.tenants.keys().copied().collect();
        let mut state = self.write();
        fresh.revision = state.revision;
        *state = fresh;
        for tenant in tenants {
            self.publish(&mut state, tenant, None);
        }
        drop(state);
        self.ready.send_replace(true);
        Ok(())
    }

    /// Applies one notification, reading the changed row where needed;
    /// changed registrations come read already, in `registrations`.
    async fn apply(
        &self,
        pool: &PgPool,
        sessions: &Sessions,
        notice: Notice,
        registrations: &HashMap<Uuid, RegistrationRow>,
    ) -> Result<()> {
        match (notice.k.as_str(), notice.t) {
            ("w", Some(tenant)) => {
                let mut state = self.write();
                let config = state
                    .tenants
                    .get_mut(&tenant)
                    .and_then(|t| t.configs.get_mut(&notice.id));
                if let (Some(config), Some(w)) = (config, notice.w) {
                    config.configuration.current_workload = w;
                    self.publish(&mut state, tenant, Some(notice.id));
                }
            }
            ("l", Some(tenant)) => {
                let mut state = self.write();
                let t = state.tenants.entry(tenant).or_default();
                let config = t.instance_config.get(&notice.id).copied();
                let old = config
                    .and_then(|c| t.configs.get(&c))
                    .and_then(|c| c.rank(notice.id, &t.leases));
                *t.leases.entry(notice.id).or_default() += notice.d.unwrap_or(0);
                if t.leases.get(&notice.id).is_some_and(|n| *n <= 0) {
                    t.leases.remove(&notice.id);
                }
                if let (Some(config), Some(old)) = (config, old) {
                    let TenantState {
                        configs, leases, ..
                    } = t;
                    if let Some(c) = configs.get_mut(&config) {
                        c.ranked.remove(&old);
                        if let Some(new) = c.rank(notice.id, leases) {
                            c.ranked.insert(new);
                        }
                    }
                    self.publish(&mut state, tenant, Some(config));
                }
            }
            ("c", Some(tenant)) => {
                let row = match configurations::get(pool, Some(tenant), notice.id, false).await {
                    Ok(row) => Some(row),
                    Err(Error::NotFound(_)) => None,
                    Err(e) => return Err(e),
                };
                if let Some(row) = &row {
                    self.ensure_manifest(pool, row.manifest_id).await?;
                }
                let changed: Option<pb::Configuration> = {
                    let mut state = self.write();
                    let t = state.tenants.entry(tenant).or_default();
                    let pushed = match row {
                        Some(row) => {
                            let configuration: pb::Configuration = row.clone().into();
                            match t.configs.get_mut(&notice.id) {
                                Some(c) => {
                                    c.configuration = configuration.clone();
                                    c.manifest_id = row.manifest_id;
                                }
                                None => {
                                    t.configs.insert(notice.id, ConfigState::new(row));
                                }
                            }
                            Some(configuration)
                        }
                        None => {
                            if let Some(gone) = t.configs.remove(&notice.id) {
                                for id in gone.instances.keys() {
                                    t.instance_config.remove(id);
                                }
                            }
                            None
                        }
                    };
                    self.publish(&mut state, tenant, Some(notice.id));
                    pushed.filter(|_| notice.op.as_deref() == Some("UPDATE"))
                };
                // Agents whose stream this replica holds hear about their configuration.
                if let Some(configuration) = changed {
                    sessions.configuration_changed(&configuration);
                }
            }
            ("r", Some(tenant)) => {
                let row = registrations
                    .get(&notice.id)
                    .filter(|r| r.tenant_id == tenant)
                    .cloned();
                let mut state = self.write();
                let t = state.tenants.entry(tenant).or_default();
                let mut touched = vec![];
                if let Some(old) = t.instance_config.remove(&notice.id) {
                    let TenantState {
                        configs, leases, ..
                    } = &mut *t;
                    if let Some(c) = configs.get_mut(&old) {
                        c.remove_instance(notice.id, leases);
                    }
                    touched.push(old);
                }
                if let Some(row) = row.filter(|r| r.registration_status == "active") {
                    if row.drain_time.is_some() {
                        sessions.drain(row.id, row.epoch, &row.drain_reason);
                    }
                    touched.push(row.configuration_id);
                    place_instance(t, row);
                }
                touched.dedup();
                for config in touched {
                    self.publish(&mut state, tenant, Some(config));
                }
            }
            ("m", _) => {
                let row = match manifests::get(pool, &ManifestKey::Id(notice.id), false).await {
                    Ok(row) => Some(row),
                    Err(Error::NotFound(_)) => None,
                    Err(e) => return Err(e),
                };
                let mut state = self.write();
                match row {
                    Some(row) => state.manifests.insert(notice.id, manifest_info(row)),
                    None => state.manifests.remove(&notice.id),
                };
                let affected: Vec<Uuid> = state
                    .tenants
                    .iter()
                    .filter(|(_, t)| t.configs.values().any(|c| c.manifest_id == notice.id))
                    .map(|(id, _)| *id)
                    .collect();
                for tenant in affected {
                    self.publish(&mut state, tenant, None);
                }
            }
            _ => tracing::debug!(kind = %notice.k, "ignored change notification"),
        }
        Ok(())
    }

    async fn ensure_manifest(&self, pool: &PgPool, id: Uuid) -> Result<()> {
        if self.read().manifests.contains_key(&id) {
            return Ok(());
        }
        let row = manifests::get(pool, &ManifestKey::Id(id), false).await?;
        self.write().manifests.insert(id, manifest_info(row));
        Ok(())
    }

    /// The tenant's available agents, best score first, at most `limit`.
    pub fn available(
        &self,
        tenant: Uuid,
        filter: &Filter,
        limit: usize,
    ) -> (Vec<pb::AvailableAgent>, u64) {
        let state = self.read();
        let agents = state.tenants.get(&tenant).map_or_else(Vec::new, |t| {
            select(&state, t, filter, limit)
                .into_iter()
                .filter_map(|(score, id)| entry(&state, t, id, score))
                .collect()
        });
        (agents, state.revision)
    }

    /// [`View::available`] as GetAvailableAgents sends it: each entry encoded
    /// once per change of its configuration.
    pub fn available_encoded(
        &self,
        tenant: Uuid,
        filter: &Filter,
        limit: usize,
    ) -> Vec<EncodedAgent> {
        use prost::Message as _;
        let state = self.read();
        let Some(t) = state.tenants.get(&tenant) else {
            return Vec::new();
        };
        select(&state, t, filter, limit)
            .into_iter()
            .filter_map(|(score, id)| {
                let c = t.configs.get(&id)?;
                let body = match c.encoded.get() {
                    Some(body) => body.clone(),
                    None => {
                        // Encoded with a zero score, which protobuf leaves out.
                        let body: Arc<[u8]> = entry(&state, t, id, 0.0)?.encode_to_vec().into();
                        c.encoded.get_or_init(|| body).clone()
                    }
                };
                Some(EncodedAgent { body, score })
            })
            .collect()
    }

    /// One configuration's entry, if it is available under `filter`
    /// (degraded-only ones count as available here; watchers see them flagged by health).
    pub fn available_one(
        &self,
        tenant: Uuid,
        configuration: Uuid,
        filter: &Filter,
    ) -> Option<pb::AvailableAgent> {
        let state = self.read();
        let t = state.tenants.get(&tenant)?;
        let c = t.configs.get(&configuration)?;
        let (score, degraded) = candidate(&state, c, filter)?;
        if degraded && !filter.include_degraded {
            return None;
        }
        entry(&state, t, configuration, score)
    }
}

/// The configurations of `t` available under `filter`, best score first, at
/// most `limit`, with their scores.
fn select(state: &State, t: &TenantState, filter: &Filter, limit: usize) -> Vec<(f64, Uuid)> {
    let mut found: Vec<(f64, bool, Uuid)> = t
        .configs
        .iter()
        .filter_map(|(id, c)| {
            candidate(state, c, filter).map(|(score, degraded)| (score, degraded, *id))
        })
        .collect();
    // Degraded-only configurations are a fallback when nothing healthy is available.
    if !filter.include_degraded && found.iter().any(|(_, degraded, _)| !degraded) {
        found.retain(|(_, degraded, _)| !degraded);
    }
    found.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.2.cmp(&b.2)));
    found.truncate(limit);
    found
        .into_iter()
        .map(|(score, _, id)| (score, id))
        .collect()
}

/// Whether a configuration is available under `filter`: its score, and
/// whether its best instance is only degraded.
fn candidate(state: &State, c: &ConfigState, filter: &Filter) -> Option<(f64, bool)> {
    let m = state.manifests.get(&c.manifest_id)?;
    let usable = match m.status.as_str() {
        "active" | "beta" => true,
        "deprecated" => filter.include_deprecated,
        _ => false,
    };
    let config = &c.configuration;
    let (workload, max) = (config.current_workload, config.max_workload);
    if !usable || config.enabled != Some(true) || workload >= max {
        return None;
    }
    if filter.agent_id.as_ref().is_some_and(|a| *a != m.agent_id)
        || filter
            .agent_type
            .as_ref()
            .is_some_and(|t| *t != m.agent_type)
        || !filter
            .capabilities
            .iter()
            .all(|cap| m.capabilities.contains(cap))
    {
        return None;
    }
    let best = c.ranked.first()?;
    Some((
        score(workload, max, c.healthy, c.instances.len() as u32),
        best.degraded,
    ))
}

/// Availability score of a configuration (documented in routing.proto):
/// 0.5 x free workload share + 0.3 x healthy share of active instances
/// + 0.2 x min(active instances / 3, 1).
pub fn score(workload: i32, max: i32, healthy: u32, active: u32) -> f64 {
    if max <= 0 || active == 0 {
        return 0.0;
    }
    let free = 1.0 - f64::from(workload) / f64::from(max);
    0.5 * free
        + 0.3 * (f64::from(healthy) / f64::from(active))
        + 0.2 * (f64::from(active) / 3.0).min(1.0)
}

fn entry(state: &State, t: &TenantState, id: Uuid, score: f64) -> Option<pb::AvailableAgent> {
    let c = t.configs.get(&id)?;
    let m = state.manifests.get(&c.manifest_id)?;
    let best = c.ranked.first()?;
    let instance = c.instances.get(&best.id)?;
    Some(pb::AvailableAgent {
        configuration: Some(c.configuration.clone()),
        agent_id: m.agent_id.clone(),
        agent_type: m.agent_type.clone(),
        version: m.version.clone(),
        capabilities: m.capabilities.clone(),
        instance: Some(instance.registration.clone()),
        score,
    })
}

fn manifest_info(m: ManifestRow) -> ManifestInfo {
    ManifestInfo {
        agent_id: m.agent_id,
        agent_type: m.agent_type,
        version: m.version,
        capabilities: m.capabilities.0,
        status: m.status,
    }
}

fn place_instance(t: &mut TenantState, r: RegistrationRow) {
    let (id, config) = (r.id, r.configuration_id);
    let instance = Instance {
        health: HealthStatus::from_db_name(&r.health_status),
        failures: r.failure_count,
        drained: r.drain_time.is_some(),
        registration: r.into(),
    };
    let TenantState {
        configs,
        instance_config,
        leases,
    } = t;
    if let Some(c) = configs.get_mut(&config) {
        c.insert_instance(instance, leases);
        instance_config.insert(id, config);
    }
}

/// Keeps the view (and the key cache) current from `agentry_changes` until `stopping` turns true.
pub async fn follow(ctx: Context, mut stopping: watch::Receiver<bool>) {
    loop {
        match listen_once(&ctx, &mut stopping).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "availability view lost its change feed; reloading");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stopping.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

async fn listen_once(ctx: &Context, stopping: &mut watch::Receiver<bool>) -> Result<()> {
    let (view, pool) = (&ctx.view, &ctx.pool);
    let mut listener = PgListener::connect_with(pool).await?;
    // Listen first, then load: nothing that commits in between is missed.
    listener.listen(CHANNEL).await?;
    ctx.auth.forget_all();
    view.load_all(pool).await?;
    loop {
        let notification = tokio::select! {
            n = listener.try_recv() => n?,
            _ = stopping.wait_for(|s| *s) => return Ok(()),
        };
        let Some(first) = notification else {
            // The connection dropped: notifications may be lost.
            return Err(Error::Internal("change feed connection lost".into()));
        };
        // Whatever else has arrived is applied with it, and the registrations
        // it names are read in one statement: a sweep or a fleet's reconnect
        // changes thousands at once, and one read each would queue on the pool.
        let mut notices = Vec::new();
        let mut next = Some(first);
        while let Some(notification) = next {
            match serde_json::from_str::<Notice>(notification.payload()) {
                Ok(notice) if notice.k == "k" => ctx.auth.forget(notice.id),
                Ok(notice) => notices.push(notice),
                Err(e) => tracing::warn!(error = %e, "malformed change notification"),
            }
            next = (notices.len() < FEED_BATCH)
                .then(|| listener.next_buffered())
                .flatten();
        }
        if let Err(e) = apply_all(ctx, notices).await {
            tracing::warn!(error = %e, "could not apply changes; reloading the view");
            view.load_all(pool).await?;
        }
    }
}

/// Applies notifications in order, reading the registrations they name first.
async fn apply_all(ctx: &Context, notices: Vec<Notice>) -> Result<()> {
    let mut ids: Vec<Uuid> = notices
        .iter()
        .filter(|n| n.k == "r")
        .map(|n| n.id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let registrations: HashMap<Uuid, RegistrationRow> = if ids.is_empty() {
        HashMap::new()
    } else {
        registrations::get_many(&ctx.pool, &ids)
            .await?
            .into_iter()
            .map(|r| (r.id, r))
            .collect()
    };
    for notice in notices {
        ctx.view
            .apply(&ctx.pool, &ctx.sessions, notice, &registrations)
            .await?;
    }
    Ok(())
}
