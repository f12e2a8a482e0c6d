//! The in-memory availability view that serves routing reads: state and
//! queries, no database. The change feed (`feed`) loads it and keeps it
//! current on every replica, this one's own writes included, so there is one
//! update path whatever replica made a change.
//!
//! Per configuration it keeps the active instances and, ordered by rank, the
//! routable ones, so a read walks configurations, not registrations.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock, RwLock};

use tokio::sync::{broadcast, watch};
use uuid::Uuid;

pub use super::request::Filter;
use crate::configurations::store::ConfigurationRow;
use crate::feed::{Follower, Snapshot, Update};
use crate::manifests::store::ManifestRow;
use crate::pb::encoded::EncodedAgent;
use crate::pb::{self, HealthStatus};
use crate::registrations::store::RegistrationRow;
use crate::registrations::writer::Departures;

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

#[derive(Debug)]
struct ManifestInfo {
    agent_id: String,
    agent_type: String,
    version: String,
    capabilities: Vec<String>,
    status: String,
}

/// Ranks routable instances inside a configuration: healthy before degraded,
/// fewer open leases first, fewer recent failures first. (The load agents
/// report in heartbeats is not used yet.)
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
    /// Takes new work (the row's `routable`: healthy or degraded, not drained).
    routable: bool,
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
        let instance = self.instances.get(&id).filter(|i| i.routable)?;
        Some(Rank {
            degraded: instance.health != HealthStatus::Healthy,
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

    fn insert_instance(&mut self, id: Uuid, instance: Instance, leases: &HashMap<Uuid, i32>) {
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

    /// Replaces the whole view with `snapshot`.
    pub fn load(&self, snapshot: &Snapshot) {
        let mut fresh = State::default();
        for m in &snapshot.manifests {
            fresh.manifests.insert(m.id, manifest_info(m));
        }
        for l in &snapshot.open_leases {
            fresh.tenants.entry(l.tenant_id).or_default().leases.insert(
                l.registration_id,
                i32::try_from(l.count).unwrap_or(i32::MAX),
            );
        }
        for c in &snapshot.configurations {
            fresh
                .tenants
                .entry(c.tenant_id)
                .or_default()
                .configs
                .insert(c.id, ConfigState::new(c.clone()));
        }
        for r in &snapshot.registrations {
            let tenant = fresh.tenants.entry(r.tenant_id).or_default();
            place_instance(tenant, r.clone());
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
    }

    /// Applies a burst of changes under one write lock.
    pub fn apply(&self, updates: &[Update]) {
        let mut state = self.write();
        for update in updates {
            self.apply_one(&mut state, update);
        }
    }

    fn apply_one(&self, state: &mut State, update: &Update) {
        match update {
            Update::Workload {
                tenant,
                configuration,
                current_workload,
            } => {
                let config = state
                    .tenants
                    .get_mut(tenant)
                    .and_then(|t| t.configs.get_mut(configuration));
                if let Some(config) = config {
                    config.configuration.current_workload = *current_workload;
                    self.publish(state, *tenant, Some(*configuration));
                }
            }
            Update::Leases {
                tenant,
                registration,
                delta,
            } => {
                let t = state.tenants.entry(*tenant).or_default();
                let config = t.instance_config.get(registration).copied();
                let old = config
                    .and_then(|c| t.configs.get(&c))
                    .and_then(|c| c.rank(*registration, &t.leases));
                *t.leases.entry(*registration).or_default() += delta;
                if t.leases.get(registration).is_some_and(|n| *n <= 0) {
                    t.leases.remove(registration);
                }
                if let (Some(config), Some(old)) = (config, old) {
                    let TenantState {
                        configs, leases, ..
                    } = t;
                    if let Some(c) = configs.get_mut(&config) {
                        c.ranked.remove(&old);
                        if let Some(new) = c.rank(*registration, leases) {
                            c.ranked.insert(new);
                        }
                    }
                    self.publish(state, *tenant, Some(config));
                }
            }
            Update::Configuration {
                tenant, id, row, ..
            } => {
                let t = state.tenants.entry(*tenant).or_default();
                match row {
                    Some(row) => match t.configs.get_mut(id) {
                        Some(c) => {
                            c.configuration = row.clone().into();
                            c.manifest_id = row.manifest_id;
                        }
                        None => {
                            t.configs.insert(*id, ConfigState::new(row.clone()));
                        }
                    },
                    None => {
                        if let Some(gone) = t.configs.remove(id) {
                            for instance in gone.instances.keys() {
                                t.instance_config.remove(instance);
                            }
                        }
                    }
                }
                self.publish(state, *tenant, Some(*id));
            }
            Update::Registration { tenant, id, row } => {
                let t = state.tenants.entry(*tenant).or_default();
                let mut touched = vec![];
                if let Some(old) = t.instance_config.remove(id) {
                    let TenantState {
                        configs, leases, ..
                    } = &mut *t;
                    if let Some(c) = configs.get_mut(&old) {
                        c.remove_instance(*id, leases);
                    }
                    touched.push(old);
                }
                if let Some(row) = row.as_ref().filter(|r| r.registration_status == "active") {
                    touched.push(row.configuration_id);
                    place_instance(t, row.clone());
                }
                touched.dedup();
                for config in touched {
                    self.publish(state, *tenant, Some(config));
                }
            }
            Update::Manifest { id, row } => {
                match row {
                    Some(row) => state.manifests.insert(*id, manifest_info(row)),
                    None => state.manifests.remove(id),
                };
                let affected: Vec<Uuid> = state
                    .tenants
                    .iter()
                    .filter(|(_, t)| t.configs.values().any(|c| c.manifest_id == *id))
                    .map(|(id, _)| *id)
                    .collect();
                for tenant in affected {
                    self.publish(state, tenant, None);
                }
            }
            Update::ApiKey { .. } => {}
        }
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

    /// The (configuration, instance) ids of the tenant's available agents,
    /// best score first, at most `limit`: what an acquire offers the lease
    /// writer, without building any answer.
    pub fn candidates(&self, tenant: Uuid, filter: &Filter, limit: usize) -> Vec<(Uuid, Uuid)> {
        let state = self.read();
        let Some(t) = state.tenants.get(&tenant) else {
            return Vec::new();
        };
        select(&state, t, filter, limit)
            .into_iter()
            .filter_map(|(_, id)| Some((id, t.configs.get(&id)?.ranked.first()?.id)))
            .collect()
    }

    /// The configuration and instance of a lease as the view knows them now,
    /// if it still holds both.
    pub fn leased(
        &self,
        tenant: Uuid,
        configuration: Uuid,
        instance: Uuid,
    ) -> Option<(pb::Configuration, pb::Registration)> {
        let state = self.read();
        let c = state.tenants.get(&tenant)?.configs.get(&configuration)?;
        let i = c.instances.get(&instance)?;
        Some((c.configuration.clone(), i.registration.clone()))
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

fn manifest_info(m: &ManifestRow) -> ManifestInfo {
    ManifestInfo {
        agent_id: m.agent_id.clone(),
        agent_type: m.agent_type.clone(),
        version: m.version.clone(),
        capabilities: m.capabilities.0.clone(),
        status: m.status.clone(),
    }
}

fn place_instance(t: &mut TenantState, r: RegistrationRow) {
    let (id, config) = (r.id, r.configuration_id);
    let instance = Instance {
        health: HealthStatus::from_db_name(&r.health_status),
        failures: r.failure_count,
        routable: r.routable,
        registration: r.into(),
    };
    let TenantState {
        configs,
        instance_config,
        leases,
    } = t;
    if let Some(c) = configs.get_mut(&config) {
        c.insert_instance(id, instance, leases);
        instance_config.insert(id, config);
    }
}

/// A stream that ended on this replica stops being offered here at once;
/// the feed brings the row as written a moment later.
impl Departures for View {
    fn departed(&self, tenant: Uuid, registration: Uuid) {
        let mut state = self.write();
        let Some(t) = state.tenants.get_mut(&tenant) else {
            return;
        };
        let Some(config) = t.instance_config.get(&registration).copied() else {
            return;
        };
        let TenantState {
            configs, leases, ..
        } = t;
        let Some(c) = configs.get_mut(&config) else {
            return;
        };
        if let Some(rank) = c.rank(registration, leases) {
            c.ranked.remove(&rank);
        }
        if let Some(instance) = c.instances.get_mut(&registration) {
            if instance.health == HealthStatus::Healthy {
                c.healthy -= 1;
            }
            instance.health = HealthStatus::Unknown;
            instance.routable = false;
        }
        self.publish(&mut state, tenant, Some(config));
    }
}

impl Follower for View {
    fn reset(&self, snapshot: &Snapshot) {
        self.load(snapshot);
    }

    fn apply(&self, updates: &[Update]) {
        View::apply(self, updates);
    }
}

#[cfg(test)]
mod tests {
    //! The view alone: snapshots and updates built in memory, no database.

    use chrono::Utc;
    use sqlx::types::Json;

    use super::*;
    use crate::configurations::store::ConfigurationFields;
    use crate::feed::Op;
    use crate::routing::store::OpenLeases;

    fn manifest(id: Uuid, agent_id: &str, status: &str, capabilities: &[&str]) -> ManifestRow {
        ManifestRow {
            id,
            agent_id: agent_id.into(),
            agent_type: "ide".into(),
            name: agent_id.into(),
            description: String::new(),
            version: "1.0.0".into(),
            capabilities: Json(capabilities.iter().map(|c| c.to_string()).collect()),
            requirements: String::new(),
            metadata: serde_json::json!({}),
            status: status.into(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn configuration(
        id: Uuid,
        tenant: Uuid,
        manifest: Uuid,
        work: i32,
        max: i32,
    ) -> ConfigurationRow {
        ConfigurationRow {
            id,
            tenant_id: tenant,
            manifest_id: manifest,
            agent_id: "ide-agent".into(),
            fields: ConfigurationFields {
                name: "ide".into(),
                enabled: true,
                configuration: serde_json::json!({}),
                system_prompt: String::new(),
                temperature: None,
                max_tokens: None,
                model_id: None,
                max_workload: max,
            },
            current_workload: work,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn instance(c: &ConfigurationRow, health: &str, failures: i32) -> RegistrationRow {
        let id = Uuid::new_v4();
        RegistrationRow {
            id,
            tenant_id: c.tenant_id,
            manifest_id: c.manifest_id,
            agent_id: c.agent_id.clone(),
            configuration_id: c.id,
            instance_id: id.to_string(),
            name: String::new(),
            registration_status: "active".into(),
            health_status: health.into(),
            connection_details: serde_json::json!({}),
            runtime_config: serde_json::json!({}),
            capacity: None,
            epoch: 1,
            failure_count: failures,
            last_health_check: Utc::now(),
            activation_date: Utc::now(),
            deactivation_date: None,
            drain_time: None,
            drain_reason: String::new(),
            routable: matches!(health, "healthy" | "degraded"),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    struct Fleet {
        view: View,
        tenant: Uuid,
        manifest: Uuid,
        a: ConfigurationRow,
        b: ConfigurationRow,
    }

    /// Two configurations of one manifest: `a` at 1/4 with one healthy
    /// instance, `b` at 0/2 with a healthy and a degraded one.
    fn fleet() -> (Fleet, Vec<RegistrationRow>) {
        let (tenant, manifest) = (Uuid::new_v4(), Uuid::new_v4());
        let a = configuration(Uuid::new_v4(), tenant, manifest, 1, 4);
        let b = configuration(Uuid::new_v4(), tenant, manifest, 0, 2);
        let instances = vec![
            instance(&a, "healthy", 0),
            instance(&b, "healthy", 2),
            instance(&b, "degraded", 0),
        ];
        let view = View::new(16);
        view.load(&Snapshot {
            manifests: vec![manifest_row(manifest, "active")],
            configurations: vec![a.clone(), b.clone()],
            registrations: instances.clone(),
            open_leases: vec![],
        });
        let fleet = Fleet {
            view,
            tenant,
            manifest,
            a,
            b,
        };
        (fleet, instances)
    }

    fn manifest_row(id: Uuid, status: &str) -> ManifestRow {
        manifest(id, "ide-agent", status, &["code_editing"])
    }

    fn ids(f: &Fleet, filter: &Filter) -> Vec<Uuid> {
        f.view
            .candidates(f.tenant, filter, 10)
            .into_iter()
            .map(|(c, _)| c)
            .collect()
    }

    #[test]
    fn a_loaded_view_ranks_configurations_by_score_and_instances_by_health_leases_failures() {
        let (f, instances) = fleet();
        // a: 0.5 * 3/4 + 0.3 * 1 + 0.2 * 1/3; b: 0.5 * 1 + 0.3 * 1/2 + 0.2 * 2/3.
        let (agents, _) = f.view.available(f.tenant, &Filter::default(), 10);
        let scores: Vec<f64> = agents.iter().map(|a| a.score).collect();
        let expected = [0.5 + 0.15 + 0.2 * 2.0 / 3.0, 0.375 + 0.3 + 0.2 / 3.0];
        assert!((scores[0] - expected[0]).abs() < 1e-9 && (scores[1] - expected[1]).abs() < 1e-9);
        assert_eq!(ids(&f, &Filter::default()), [f.b.id, f.a.id]);
        // Inside b the healthy instance wins although it failed twice.
        let best_of_b = f.view.candidates(f.tenant, &Filter::default(), 1)[0].1;
        assert_eq!(best_of_b, instances[1].id);
        // Two open leases on it make no difference to health order...
        f.view.apply(&[Update::Leases {
            tenant: f.tenant,
            registration: instances[1].id,
            delta: 2,
        }]);
        assert_eq!(
            f.view.candidates(f.tenant, &Filter::default(), 1)[0].1,
            instances[1].id
        );
        // ...but once it is unknown, the degraded one is offered.
        let mut unknown = instances[1].clone();
        unknown.health_status = "unknown".into();
        unknown.routable = false;
        f.view.apply(&[Update::Registration {
            tenant: f.tenant,
            id: unknown.id,
            row: Some(unknown),
        }]);
        // ...and b, degraded only now, falls behind a healthy a.
        assert_eq!(ids(&f, &Filter::default()), [f.a.id]);
        let degraded = Filter {
            include_degraded: true,
            ..Filter::default()
        };
        let b = f.view.candidates(f.tenant, &degraded, 10);
        assert!(b.contains(&(f.b.id, instances[2].id)), "{b:?}");
    }

    #[test]
    fn updates_change_what_is_available() {
        let (f, instances) = fleet();
        let any = Filter::default();
        let before = f.view.revision();
        // A full configuration is not offered.
        f.view.apply(&[Update::Workload {
            tenant: f.tenant,
            configuration: f.b.id,
            current_workload: 2,
        }]);
        assert_eq!(ids(&f, &any), [f.a.id]);
        assert!(f.view.revision() > before);
        // A disabled one neither.
        let mut disabled = f.a.clone();
        disabled.fields.enabled = false;
        f.view.apply(&[Update::Configuration {
            tenant: f.tenant,
            id: f.a.id,
            op: Op::Update,
            row: Some(disabled),
        }]);
        assert!(ids(&f, &any).is_empty());
        // A deprecated manifest only with include_deprecated.
        f.view.apply(&[
            Update::Workload {
                tenant: f.tenant,
                configuration: f.b.id,
                current_workload: 0,
            },
            Update::Manifest {
                id: f.manifest,
                row: Some(manifest_row(f.manifest, "deprecated")),
            },
        ]);
        assert!(ids(&f, &any).is_empty());
        let deprecated = Filter {
            include_deprecated: true,
            ..Filter::default()
        };
        assert_eq!(ids(&f, &deprecated), [f.b.id]);
        // A departed instance takes its configuration's redundancy with it;
        // a deleted configuration is gone with its instances.
        f.view.apply(&[Update::Registration {
            tenant: f.tenant,
            id: instances[1].id,
            row: None,
        }]);
        assert_eq!(
            f.view.candidates(f.tenant, &deprecated, 1)[0].1,
            instances[2].id
        );
        f.view.apply(&[Update::Configuration {
            tenant: f.tenant,
            id: f.b.id,
            op: Op::Delete,
            row: None,
        }]);
        assert!(ids(&f, &deprecated).is_empty());
        assert!(f.view.leased(f.tenant, f.b.id, instances[2].id).is_none());
    }

    #[test]
    fn degraded_only_configurations_are_a_fallback_and_filters_apply() {
        let (f, instances) = fleet();
        let capability = |c: &str| Filter {
            capabilities: vec![c.into()],
            ..Filter::default()
        };
        assert_eq!(ids(&f, &capability("code_editing")).len(), 2);
        assert!(ids(&f, &capability("terminal")).is_empty());
        let other_agent = Filter {
            agent_id: Some("slack-bot".into()),
            ..Filter::default()
        };
        assert!(ids(&f, &other_agent).is_empty());
        // b loses its healthy instance: only a (healthy) is offered, unless
        // degraded ones are asked for, or nothing healthy is left.
        f.view.apply(&[Update::Registration {
            tenant: f.tenant,
            id: instances[1].id,
            row: None,
        }]);
        assert_eq!(ids(&f, &Filter::default()), [f.a.id]);
        let degraded = Filter {
            include_degraded: true,
            ..Filter::default()
        };
        assert_eq!(ids(&f, &degraded).len(), 2);
        f.view.apply(&[Update::Registration {
            tenant: f.tenant,
            id: instances[0].id,
            row: None,
        }]);
        assert_eq!(ids(&f, &Filter::default()), [f.b.id]);
        // Another tenant sees nothing of this one.
        assert!(
            f.view
                .candidates(Uuid::new_v4(), &Filter::default(), 10)
                .is_empty()
        );
    }

    #[test]
    fn open_leases_survive_a_reload_of_their_instance_and_rank_it() {
        let (f, _) = fleet();
        let c = configuration(Uuid::new_v4(), f.tenant, f.manifest, 0, 10);
        let (busy, idle) = (instance(&c, "healthy", 0), instance(&c, "healthy", 0));
        f.view.load(&Snapshot {
            manifests: vec![manifest_row(f.manifest, "active")],
            configurations: vec![c.clone()],
            registrations: vec![busy.clone(), idle.clone()],
            open_leases: vec![OpenLeases {
                tenant_id: f.tenant,
                registration_id: busy.id,
                count: 3,
            }],
        });
        assert_eq!(
            f.view.candidates(f.tenant, &Filter::default(), 1)[0].1,
            idle.id
        );
        // The idle one is drained (not routable): the busy one is offered.
        let mut drained = idle.clone();
        drained.drain_time = Some(Utc::now());
        drained.routable = false;
        f.view.apply(&[Update::Registration {
            tenant: f.tenant,
            id: idle.id,
            row: Some(drained),
        }]);
        assert_eq!(
            f.view.candidates(f.tenant, &Filter::default(), 1)[0].1,
            busy.id
        );
        // Its leases end: still the only one, and its leases count is gone.
        f.view.apply(&[Update::Leases {
            tenant: f.tenant,
            registration: busy.id,
            delta: -3,
        }]);
        let (configuration, registration) = f.view.leased(f.tenant, c.id, busy.id).expect("held");
        assert_eq!(configuration.id, c.id.to_string());
        assert_eq!(registration.id, busy.id.to_string());
    }
}
