//! The in-memory availability view that serves routing reads: state and
//! queries, no database. The change feed (`feed`) loads it and keeps it
//! current on every replica, this one's own writes included, so there is one
//! update path whatever replica made a change.
//!
//! Per configuration it keeps the active instances and, ordered by rank, the
//! routable ones, so a read walks configurations, not registrations.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use uuid::Uuid;

use super::history::{History, Record, Subscription};
use super::ranking::{self, Flap, Reported};
use super::request::SearchOrder;
use super::search::{ManifestHit, SkillIndex};
use crate::config::RoutingConfig;
use crate::telemetry::metrics as telemetry;

pub use super::request::Filter;
use crate::configurations::store::ConfigurationRow;
use crate::feed::LoadNote;
use crate::feed::{Follower, Snapshot, Update};
use crate::manifests::store::ManifestRow;
use crate::pb::encoded::{EncodedAgent, EncodedResult, SearchAnswer};
use crate::pb::{self, HealthStatus};
use crate::registrations::store::{LoadColumns, RegistrationRow};
use crate::registrations::writer::Departures;

#[derive(Debug)]
struct ManifestInfo {
    agent_id: String,
    agent_type: String,
    version: String,
    /// `version` parsed once for filters; `None` if it is not semver.
    semver: Option<semver::Version>,
    capabilities: Vec<String>,
    /// The labels of its metadata, as filters read them (`filter::labels`).
    labels: std::collections::BTreeMap<String, String>,
    status: String,
}

/// How many load reports one write lock applies (see [`View::apply`]).
const LOAD_CHUNK: usize = 64;

/// Ranks routable instances inside a configuration: healthy before degraded,
/// then by load (see `ranking`), open leases, recent failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    degraded: bool,
    /// The load in thousandths.
    cost: u32,
    busy: i32,
    failures: i32,
    id: Uuid,
}

impl Rank {
    fn load(&self) -> f64 {
        f64::from(self.cost) / 1000.0
    }
}

#[derive(Debug)]
struct Instance {
    registration: pb::Registration,
    health: HealthStatus,
    failures: i32,
    /// Takes new work (the row's `routable`: healthy or degraded, not drained).
    routable: bool,
    /// The replica holding its stream, and whether that replica's lease has
    /// run out (then the instance is not offered, whatever its row says).
    holder: Option<Uuid>,
    orphaned: bool,
    /// An operator drained it.
    drained: bool,
    reported: Option<Reported>,
    /// The row's `updated_at` as last heard: a load report older than the
    /// row the view holds is not applied (see [`View::apply_load`]).
    updated_at: DateTime<Utc>,
    /// Where it stands in `ConfigState::ranked`, if it does.
    ranked_as: Option<Rank>,
    /// When its rank changes by itself (a blackout ends, a report goes
    /// stale, a flap hold ends): [`View::tick`] ranks it again then.
    recheck: Option<DateTime<Utc>>,
}

/// An instance's load report as the view holds it. Reports travel in the
/// feed, not in rows (migration 0017): a row read again (its health
/// changed, the view reloaded) carries none, or an older one, and must not
/// undo the report the view holds for the same activation.
#[derive(Debug, Clone)]
struct HeldReport {
    epoch: i64,
    reported: Reported,
    load: Option<pb::LoadReport>,
    time: Option<prost_types::Timestamp>,
}

impl HeldReport {
    fn of(instance: &Instance) -> Option<HeldReport> {
        Some(HeldReport {
            epoch: instance.registration.epoch,
            reported: instance.reported?,
            load: instance.registration.load.clone(),
            time: instance.registration.load_report_time,
        })
    }

    /// Puts the held report into `fresh`, the same instance read again,
    /// unless `fresh` is another activation or holds a newer report.
    fn carry_into(self, fresh: &mut Instance) {
        if fresh.registration.epoch != self.epoch
            || fresh
                .reported
                .as_ref()
                .is_some_and(|r| r.at >= self.reported.at)
        {
            return;
        }
        fresh.reported = Some(self.reported);
        fresh.registration.load = self.load;
        fresh.registration.load_report_time = self.time;
    }
}

/// What ranking an instance depends on besides the instance.
struct Ctx<'a> {
    now: DateTime<Utc>,
    routing: &'a RoutingConfig,
    leases: &'a HashMap<Uuid, i32>,
    flaps: &'a HashMap<Uuid, Flap>,
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

    /// The load of instance `id` as ranked now.
    fn load_of(&self, id: Uuid, instance: &Instance, ctx: &Ctx<'_>) -> ranking::Load {
        ranking::load(
            instance.reported.as_ref(),
            ctx.leases.get(&id).copied().unwrap_or(0),
            self.configuration.max_workload,
            instance.failures,
            ctx.now,
            ctx.routing,
        )
    }

    /// Takes instance `id` out of the ranking.
    fn unrank(&mut self, id: Uuid) {
        if let Some(rank) = self.instances.get_mut(&id).and_then(|i| i.ranked_as.take()) {
            self.ranked.remove(&rank);
        }
    }

    /// Ranks instance `id` again, as things stand at `ctx.now`.
    fn rerank(&mut self, id: Uuid, ctx: &Ctx<'_>) {
        self.unrank(id);
        let Some(instance) = self.instances.get(&id) else {
            return;
        };
        let load = self.load_of(id, instance, ctx);
        let flap = ctx.flaps.get(&id);
        let held = flap.is_some_and(|f| f.held(ctx.now));
        let recheck = match (
            load.changes_at,
            flap.and_then(|f| f.held_until).filter(|_| held),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let rank = (instance.routable && !instance.orphaned && !held).then(|| Rank {
            degraded: instance.health != HealthStatus::Healthy,
            cost: ranking::cost(load.value),
            busy: ctx.leases.get(&id).copied().unwrap_or(0),
            failures: instance.failures,
            id,
        });
        if let Some(rank) = rank {
            self.ranked.insert(rank);
        }
        if let Some(instance) = self.instances.get_mut(&id) {
            instance.ranked_as = rank;
            instance.recheck = recheck;
        }
    }

    /// Ranks every instance again (the configuration's max_workload, which
    /// lease loads are shares of, may have changed).
    fn rerank_all(&mut self, ctx: &Ctx<'_>) {
        let ids: Vec<Uuid> = self.instances.keys().copied().collect();
        for id in ids {
            self.rerank(id, ctx);
        }
    }

    fn remove_instance(&mut self, id: Uuid) {
        self.unrank(id);
        if self
            .instances
            .remove(&id)
            .is_some_and(|old| old.health == HealthStatus::Healthy)
        {
            self.healthy -= 1;
        }
    }

    fn insert_instance(&mut self, id: Uuid, instance: Instance, ctx: &Ctx<'_>) {
        self.remove_instance(id);
        if instance.health == HealthStatus::Healthy {
            self.healthy += 1;
        }
        self.instances.insert(id, instance);
        self.rerank(id, ctx);
    }
}

#[derive(Debug, Default)]
struct TenantState {
    configs: HashMap<Uuid, ConfigState>,
    /// Which configuration each active instance belongs to.
    instance_config: HashMap<Uuid, Uuid>,
    /// Open leases per instance (kept apart so instance reloads keep them).
    leases: HashMap<Uuid, i32>,
    /// Flap damping per instance (kept apart for the same reason).
    flaps: HashMap<Uuid, Flap>,
}

impl TenantState {
    /// Splits the tenant into its configurations and what ranking reads.
    fn parts<'a>(
        &'a mut self,
        now: DateTime<Utc>,
        routing: &'a RoutingConfig,
    ) -> (&'a mut HashMap<Uuid, ConfigState>, Ctx<'a>) {
        (
            &mut self.configs,
            Ctx {
                now,
                routing,
                leases: &self.leases,
                flaps: &self.flaps,
            },
        )
    }
}

#[derive(Debug, Default)]
struct State {
    revision: u64,
    manifests: HashMap<Uuid, ManifestInfo>,
    /// Every manifest's skills, for `SearchAgents`.
    skills: SkillIndex,
    tenants: HashMap<Uuid, TenantState>,
    replicas: Replicas,
}

/// The replicas' leases as the feed told them: an instance whose holder's
/// lease ran out is not offered (the holder died or was cut off; a live
/// replica takes its row over a moment later). Expiry is judged by the
/// database's clock as the feed brought it, never by this process's: a
/// feed running late must not take a live replica's instances out.
#[derive(Debug, Default)]
struct Replicas {
    /// Each lease's expiry, and whether the view still counts it alive.
    leases: HashMap<Uuid, (DateTime<Utc>, bool)>,
    /// The latest database time the feed brought.
    clock: DateTime<Utc>,
}

impl Replicas {
    /// Whether an instance held by `holder` may be offered. A holder the
    /// view has not heard of counts as gone: its lease is written before
    /// any row names it, and the feed delivers in commit order.
    fn alive(&self, holder: Option<Uuid>) -> bool {
        holder.is_none_or(|h| self.leases.get(&h).is_some_and(|(_, alive)| *alive))
    }

    /// Takes `lease` as the feed brought it at database time `at`; returns
    /// the replicas whose standing changed (died by the clock, or came back).
    fn take(
        &mut self,
        lease: &crate::registrations::replicas::ReplicaLease,
        at: DateTime<Utc>,
    ) -> Vec<Uuid> {
        self.clock = self.clock.max(at);
        let was = self.leases.get(&lease.id).map(|(_, alive)| *alive);
        let mut changed = Vec::new();
        match lease.expires_at {
            Some(expires) => {
                let alive = expires > self.clock;
                self.leases.insert(lease.id, (expires, alive));
                if was.unwrap_or(false) != alive {
                    changed.push(lease.id);
                }
            }
            None => {
                if self
                    .leases
                    .remove(&lease.id)
                    .is_some_and(|(_, alive)| alive)
                {
                    changed.push(lease.id);
                }
            }
        }
        let clock = self.clock;
        for (id, (expires, alive)) in &mut self.leases {
            if *alive && *expires <= clock {
                *alive = false;
                changed.push(*id);
            }
        }
        changed
    }
}

/// The availability view of all tenants.
#[derive(Debug)]
pub struct View {
    state: RwLock<State>,
    /// What watchers are sent; written by [`View::publish`] under the state's
    /// write lock, and locked after the state whenever both are.
    history: Mutex<History>,
    ready: watch::Sender<bool>,
    routing: RoutingConfig,
}

impl View {
    /// An empty view that holds the latest `buffer` changes of watched
    /// tenants (all together, and of them no more than `buffer_bytes`) for
    /// watches to resume from.
    pub fn new(buffer: usize, buffer_bytes: usize) -> Self {
        View {
            state: RwLock::default(),
            history: Mutex::new(History::new(buffer, buffer_bytes)),
            ready: watch::channel(false).0,
            routing: RoutingConfig::default(),
        }
    }

    /// This view, ranking instances as `routing` says.
    #[must_use]
    pub fn with_routing(mut self, routing: RoutingConfig) -> Self {
        self.routing = routing;
        self
    }

    /// Ranks again the instances whose rank changed with time since the
    /// last call (a blackout ended, a report went stale, a flap hold ended),
    /// and ends the watch streams of tenants no watch held for
    /// [`super::history::UNWATCHED`]; called every 200 ms.
    pub fn tick(&self, now: DateTime<Utc>) {
        self.history()
            .forget_unwatched(std::time::Instant::now(), super::history::UNWATCHED);
        let due = |state: &State| -> Vec<(Uuid, Uuid, Uuid)> {
            let mut due = Vec::new();
            for (tenant, t) in &state.tenants {
                for (config, c) in &t.configs {
                    for (id, i) in &c.instances {
                        if i.recheck.is_some_and(|at| at <= now) {
                            due.push((*tenant, *config, *id));
                        }
                    }
                }
            }
            due
        };
        // Looked for under the read lock: most ticks find nothing.
        if due(&self.read()).is_empty() {
            return;
        }
        let mut state = self.write();
        let mut touched = Vec::new();
        for (tenant, config, id) in due(&state) {
            let Some(t) = state.tenants.get_mut(&tenant) else {
                continue;
            };
            t.flaps
                .retain(|_, f| f.held(now) || !f.is_idle(now, &self.routing));
            let (configs, ctx) = t.parts(now, &self.routing);
            if let Some(c) = configs.get_mut(&config) {
                c.rerank(id, &ctx);
                touched.push((tenant, config));
            }
        }
        touched.dedup();
        for (tenant, config) in touched {
            self.publish(&mut state, tenant, Some(config));
        }
    }

    /// Instances held out for flapping now.
    pub fn held_out(&self) -> usize {
        let now = Utc::now();
        self.read()
            .tenants
            .values()
            .map(|t| t.flaps.values().filter(|f| f.held(now)).count())
            .sum()
    }
}

impl View {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes to `tenant`'s changes as watchers see them (see
    /// [`History`]), starting its stream if it is not watched yet.
    pub fn subscribe(&self, tenant: Uuid) -> Subscription {
        let state = self.read();
        self.history().subscribe(tenant, || records(&state, tenant))
    }

    /// The streams of the watched tenants, their entries and latest changes.
    pub fn history(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many configurations and active instances the view holds.
    pub fn size(&self) -> (usize, usize) {
        let state = self.read();
        state
            .tenants
            .values()
            .flat_map(|t| t.configs.values())
            .fold((0, 0), |(configurations, instances), c| {
                (configurations + 1, instances + c.instances.len())
            })
    }

    /// The current revision.
    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    /// Whether the view has been loaded once.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until the view has been loaded once.
    pub async fn ready(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
    }

    /// Announces a change of one configuration's entry (or, with `None`, of
    /// all the tenant's). Every change of the view goes through here, which
    /// is why the pre-encoded entries are reset here, and why the watchers'
    /// history is written here.
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
        let mut history = self.history();
        if history.watches(tenant) {
            match configuration {
                Some(id) => history.update(tenant, id, record(state, tenant, id)),
                None => history.update_all(tenant, records(state, tenant)),
            }
        }
    }

    /// Replaces the whole view with `snapshot`.
    pub fn load(&self, snapshot: &Snapshot) {
        // Reports travel in the feed, not in the rows: what the view holds
        // outlives the reload (those that came meanwhile come again within
        // a third of their TTL).
        let mut held: HashMap<Uuid, HeldReport> = {
            let state = self.read();
            state
                .tenants
                .values()
                .flat_map(|t| t.configs.values())
                .flat_map(|c| c.instances.iter())
                .filter_map(|(id, i)| Some((*id, HeldReport::of(i)?)))
                .collect()
        };
        let mut fresh = State::default();
        for m in &snapshot.manifests {
            fresh.manifests.insert(m.id, manifest_info(m));
            fresh.skills.put(m.id, &m.skills.0, &m.capabilities.0);
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
        let mut state = self.write();
        // Flap damping outlives a reload: the instances did not stop flapping.
        for (id, t) in &mut state.tenants {
            if let Some(f) = fresh.tenants.get_mut(id) {
                f.flaps = std::mem::take(&mut t.flaps);
            }
        }
        let now = Utc::now();
        fresh.replicas.clock = snapshot.replicas_at;
        for lease in &snapshot.replicas {
            if let Some(expires) = lease.expires_at {
                fresh
                    .replicas
                    .leases
                    .insert(lease.id, (expires, expires > snapshot.replicas_at));
            }
        }
        for r in &snapshot.registrations {
            let alive = fresh.replicas.alive(r.replica_id);
            let tenant = fresh.tenants.entry(r.tenant_id).or_default();
            let held = held.remove(&r.id);
            place_instance(tenant, r.clone(), alive, now, &self.routing, held);
        }
        // Watched tenants that are gone lose their entries too.
        let mut tenants: Vec<Uuid> = fresh.tenants.keys().copied().collect();
        tenants.extend(self.history().tenants());
        tenants.sort_unstable();
        tenants.dedup();
        fresh.revision = state.revision;
        *state = fresh;
        for tenant in tenants {
            self.publish(&mut state, tenant, None);
        }
        drop(state);
        self.ready.send_replace(true);
    }

    /// Applies a burst of changes: the other changes of a run under one
    /// write lock, so that readers never see half a transaction; a run of
    /// load reports [`LOAD_CHUNK`] at a time, each chunk under its own lock,
    /// since reports need no atomicity with each other and a fleet's burst
    /// of a thousand of them under one lock would hold every read back for
    /// its whole length.
    ///
    /// Load reports only re-rank their instance; the configurations they
    /// touched are published once per chunk, instead of once per report:
    /// 10,000 agents whose load moves send thousands a second, mostly to
    /// few configurations, and each publish resets the configuration's
    /// pre-encoded answer (encoded again on the next read) and records a
    /// change for its watchers.
    pub fn apply(&self, updates: &[Update]) {
        let is_load = |u: &Update| matches!(u, Update::Load(_));
        for run in updates.chunk_by(|a, b| is_load(a) == is_load(b)) {
            let size = if is_load(&run[0]) {
                LOAD_CHUNK
            } else {
                run.len()
            };
            for chunk in run.chunks(size) {
                self.apply_locked(chunk);
            }
        }
    }

    fn apply_locked(&self, updates: &[Update]) {
        let mut state = self.write();
        let mut loaded = Vec::new();
        for update in updates {
            self.apply_one(&mut state, update, &mut loaded);
        }
        loaded.sort_unstable();
        loaded.dedup();
        for (tenant, configuration) in loaded {
            self.publish(&mut state, tenant, Some(configuration));
        }
    }

    /// Applies one change; a load report that changes its configuration's
    /// entry adds its (tenant, configuration) to `loaded` for [`View::apply`]
    /// to publish.
    fn apply_one(&self, state: &mut State, update: &Update, loaded: &mut Vec<(Uuid, Uuid)>) {
        match update {
            Update::Load(note) => {
                if self.apply_load(state, note) {
                    loaded.push((note.tenant, note.configuration));
                }
            }
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
                *t.leases.entry(*registration).or_default() += delta;
                if t.leases.get(registration).is_some_and(|n| *n <= 0) {
                    t.leases.remove(registration);
                }
                if let Some(config) = config {
                    let (configs, ctx) = t.parts(Utc::now(), &self.routing);
                    let ranked = configs.get_mut(&config).is_some_and(|c| {
                        let was = c.instances.get(registration).and_then(|i| i.ranked_as);
                        c.rerank(*registration, &ctx);
                        was.is_some()
                    });
                    if ranked {
                        self.publish(state, *tenant, Some(config));
                    }
                }
            }
            Update::Configuration {
                tenant, id, row, ..
            } => {
                let t = state.tenants.entry(*tenant).or_default();
                match row {
                    Some(row) => match t.configs.get_mut(id) {
                        Some(c) => {
                            let resized = c.configuration.max_workload != row.fields.max_workload;
                            c.configuration = row.clone().into();
                            c.manifest_id = row.manifest_id;
                            if resized {
                                let (configs, ctx) = t.parts(Utc::now(), &self.routing);
                                if let Some(c) = configs.get_mut(id) {
                                    c.rerank_all(&ctx);
                                }
                            }
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
                let alive = row
                    .as_ref()
                    .is_none_or(|r| state.replicas.alive(r.replica_id));
                let t = state.tenants.entry(*tenant).or_default();
                let now = Utc::now();
                let mut touched = vec![];
                let (mut was, mut held) = (None, None);
                if let Some(old) = t.instance_config.remove(id) {
                    if let Some(c) = t.configs.get_mut(&old) {
                        was = c.instances.get(id).map(|i| i.health);
                        held = c.instances.get(id).and_then(HeldReport::of);
                        c.remove_instance(*id);
                    }
                    touched.push(old);
                }
                if let Some(row) = row.as_ref().filter(|r| r.registration_status == "active") {
                    let health = HealthStatus::from_db_name(&row.health_status);
                    if was.is_some_and(|w| w != health)
                        && t.flaps.entry(*id).or_default().changed(now, &self.routing)
                    {
                        metrics::counter!(telemetry::FLAP_HOLDS).increment(1);
                        tracing::info!(registration = %id, "instance held out of routing: its health keeps changing");
                    }
                    touched.push(row.configuration_id);
                    place_instance(t, row.clone(), alive, now, &self.routing, held);
                }
                touched.dedup();
                for config in touched {
                    self.publish(state, *tenant, Some(config));
                }
            }
            Update::Manifest { id, row } => {
                match row {
                    Some(row) => {
                        state.skills.put(*id, &row.skills.0, &row.capabilities.0);
                        state.manifests.insert(*id, manifest_info(row))
                    }
                    None => {
                        state.skills.remove(*id);
                        state.manifests.remove(id)
                    }
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
            Update::Replica { lease, at } => {
                let now = Utc::now();
                for replica in state.replicas.take(lease, *at) {
                    let alive = state.replicas.alive(Some(replica));
                    if alive {
                        tracing::info!(%replica, "a replica's lease runs again; its instances are offered");
                    } else {
                        tracing::warn!(%replica, "a replica's lease ran out; its instances are not offered");
                    }
                    self.hold(state, replica, now);
                }
            }
        }
    }

    /// Ranks again every instance held by `replica` after its lease ran out
    /// or came back (as [`Replicas::alive`] now says), and publishes their
    /// configurations. Walks every instance: a replica's death is rare.
    fn hold(&self, state: &mut State, replica: Uuid, now: DateTime<Utc>) {
        let alive = state.replicas.alive(Some(replica));
        let mut touched = Vec::new();
        for (tenant, t) in &mut state.tenants {
            let (configs, ctx) = t.parts(now, &self.routing);
            for (config, c) in configs.iter_mut() {
                let held: Vec<Uuid> = c
                    .instances
                    .iter_mut()
                    .filter(|(_, i)| i.holder == Some(replica) && i.orphaned == alive)
                    .map(|(id, i)| {
                        i.orphaned = !alive;
                        *id
                    })
                    .collect();
                for id in &held {
                    c.rerank(*id, &ctx);
                }
                if !held.is_empty() {
                    touched.push((*tenant, *config));
                }
            }
        }
        for (tenant, config) in touched {
            self.publish(state, tenant, Some(config));
        }
    }

    /// Takes an instance's new load report from its notification and ranks
    /// the instance again; false if the view does not hold that activation
    /// of it, or holds a newer row (a snapshot read after the report
    /// committed, whose notification arrives after it).
    fn apply_load(&self, state: &mut State, note: &LoadNote) -> bool {
        let Some(t) = state.tenants.get_mut(&note.tenant) else {
            return false;
        };
        if t.instance_config.get(&note.id) != Some(&note.configuration) {
            return false;
        }
        let (configs, ctx) = t.parts(Utc::now(), &self.routing);
        let Some(c) = configs.get_mut(&note.configuration) else {
            return false;
        };
        let Some(instance) = c.instances.get_mut(&note.id) else {
            return false;
        };
        if instance.registration.epoch != note.epoch
            || note.updated_at.is_some_and(|at| instance.updated_at > at)
        {
            return false;
        }
        // Only the best instance is in the configuration's entry: a report
        // that neither makes nor unmakes it leaves the entry as it is, and
        // need not be published (most reports of a large fleet are such).
        let was_best = c.ranked.first().is_some_and(|r| r.id == note.id);
        let load = note.columns();
        instance.reported = reported(&load);
        let r = &mut instance.registration;
        r.load = load.report();
        r.load_report_time = pb::opt_timestamp(load.load_reported_at);
        // A report written into the row (replicas before migration 0017):
        // what the row now holds, as reading it would have given.
        if let (Some(checked), Some(updated)) = (note.last_health_check, note.updated_at) {
            instance.updated_at = updated;
            r.last_health_check = Some(pb::timestamp(checked));
            r.update_time = Some(pb::timestamp(updated));
        }
        c.rerank(note.id, &ctx);
        was_best || c.ranked.first().is_some_and(|r| r.id == note.id)
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
        let state = self.read();
        let Some(t) = state.tenants.get(&tenant) else {
            return Vec::new();
        };
        select(&state, t, filter, limit)
            .into_iter()
            .filter_map(|(score, id)| encoded(&state, t, id, score))
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
            .filter_map(|(_, id)| {
                // Among the lowest-load few, weighted by inverse load.
                let lowest = pick_among(&t.configs.get(&id)?.ranked);
                let weights: Vec<f64> = lowest.iter().map(|r| ranking::weight(r.load())).collect();
                Some((id, lowest.get(ranking::pick_weighted(&weights))?.id))
            })
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

impl View {
    /// Why the tenant's answer under `filter` is what it is: each answered
    /// configuration with the terms of its score and its instances' loads,
    /// and everything left out with the reason.
    pub fn explain(&self, tenant: Uuid, filter: &Filter, limit: usize) -> pb::Explanation {
        use pb::ExclusionReason as Why;
        let state = self.read();
        let mut explanation = pb::Explanation::default();
        let Some(t) = state.tenants.get(&tenant) else {
            return explanation;
        };
        let now = Utc::now();
        let answered: Vec<(f64, Uuid)> = select(&state, t, filter, limit);
        let mut ids: Vec<&Uuid> = t.configs.keys().collect();
        ids.sort();
        let exclude =
            |explanation: &mut pb::Explanation, c: &Uuid, i: Option<&Uuid>, (why, detail): Left| {
                explanation.excluded.push(pb::Exclusion {
                    configuration_id: c.to_string(),
                    registration_id: i.map(Uuid::to_string).unwrap_or_default(),
                    reason: why.into(),
                    detail,
                });
            };
        for id in ids {
            let c = &t.configs[id];
            match judge(&state, c, filter) {
                Err(left) => exclude(&mut explanation, id, None, left),
                Ok(_) if answered.iter().any(|(_, a)| a == id) => {}
                Ok((_, true)) if !filter.include_degraded => exclude(
                    &mut explanation,
                    id,
                    None,
                    (Why::DegradedOnly, "only degraded instances".into()),
                ),
                Ok(_) => exclude(
                    &mut explanation,
                    id,
                    None,
                    (Why::Limit, format!("past the limit of {limit}")),
                ),
            }
            let ctx = Ctx {
                now,
                routing: &self.routing,
                leases: &t.leases,
                flaps: &t.flaps,
            };
            let mut instances: Vec<(&Uuid, &Instance)> = c.instances.iter().collect();
            instances.sort_by_key(|(i, _)| **i);
            for (i, instance) in instances {
                let flap = t.flaps.get(i).filter(|f| f.held(now));
                let why = if instance.orphaned {
                    Some((Why::Unhealthy, "its replica's lease ran out".into()))
                } else if !instance.routable && instance.drained {
                    Some((Why::Draining, "drained by an operator".into()))
                } else if !instance.routable {
                    Some((
                        Why::Unhealthy,
                        format!("health {}", instance.health.as_str_name()),
                    ))
                } else if let Some(until) = flap.and_then(|f| f.held_until) {
                    Some((Why::Flapping, format!("held out until {until}")))
                } else if c.load_of(*i, instance, &ctx).source == pb::LoadSource::LeasesStaleReport
                {
                    Some((Why::LoadReportStale, "ranked by its leases".into()))
                } else {
                    None
                };
                if let Some(why) = why {
                    exclude(&mut explanation, id, Some(i), why);
                }
            }
        }
        for (score, id) in answered {
            explanation
                .candidates
                .push(self.explained(&state, t, id, score, now));
        }
        explanation
    }
}

impl View {
    /// The terms of configuration `id`'s `score`, and its ranked instances.
    fn explained(
        &self,
        state: &State,
        t: &TenantState,
        id: Uuid,
        score: f64,
        now: DateTime<Utc>,
    ) -> pb::ExplainedCandidate {
        let c = &t.configs[&id];
        let config = &c.configuration;
        let active = c.instances.len() as u32;
        let ctx = Ctx {
            now,
            routing: &self.routing,
            leases: &t.leases,
            flaps: &t.flaps,
        };
        let ranked: Vec<&Rank> = c.ranked.iter().collect();
        let weights: Vec<f64> = pick_among(&c.ranked)
            .iter()
            .map(|r| ranking::weight(r.load()))
            .collect();
        let total: f64 = weights.iter().sum();
        let instances = ranked
            .iter()
            .enumerate()
            .filter_map(|(n, r)| {
                let instance = c.instances.get(&r.id)?;
                let load = c.load_of(r.id, instance, &ctx);
                Some(pb::ExplainedInstance {
                    registration_id: r.id.to_string(),
                    instance_id: instance.registration.instance_id.clone(),
                    health_status: instance.health.into(),
                    load: load.value,
                    load_source: load.source.into(),
                    leases: r.busy,
                    error_penalty: load.penalty,
                    weight: weights.get(n).map_or(0.0, |w| w / total),
                })
            })
            .collect();
        pb::ExplainedCandidate {
            configuration_id: id.to_string(),
            agent_id: state
                .manifests
                .get(&c.manifest_id)
                .map(|m| m.agent_id.clone())
                .unwrap_or_default(),
            score,
            free_workload_term: 0.5
                * (1.0
                    - f64::from(config.current_workload) / f64::from(config.max_workload.max(1))),
            healthy_term: 0.3 * f64::from(c.healthy) / f64::from(active.max(1)),
            instances_term: 0.2 * (f64::from(active) / 3.0).min(1.0),
            instances,
        }
    }

    /// `SearchAgents`: the tenant's configurations whose manifests' skills
    /// match, ranked by relevance and availability together (routing.proto
    /// documents the score), one page of them.
    pub fn search(&self, tenant: Uuid, order: &SearchOrder) -> SearchAnswer {
        let state = self.read();
        let Some(t) = state.tenants.get(&tenant) else {
            return SearchAnswer::default();
        };
        let hits = state.skills.query(&order.terms, order.explain);
        if hits.is_empty() {
            return SearchAnswer::default();
        }
        struct Found<'a> {
            id: Uuid,
            hit: &'a ManifestHit,
            judged: std::result::Result<f64, Left>,
        }
        let mut found: Vec<Found<'_>> = t
            .configs
            .iter()
            .filter_map(|(id, c)| {
                let hit = hits.get(&c.manifest_id)?;
                let judged = judge(&state, c, &order.filter).map(|(score, _)| score);
                match &judged {
                    Err((pb::ExclusionReason::FilterMismatch, _)) => None,
                    Err(_) if !order.include_unavailable => None,
                    _ => Some(Found {
                        id: *id,
                        hit,
                        judged,
                    }),
                }
            })
            .collect();
        let best = found.iter().map(|f| f.hit.relevance).fold(0.0, f64::max);
        let scored = |f: &Found<'_>| {
            let relevance = if best > 0.0 {
                f.hit.relevance / best
            } else {
                0.0
            };
            let availability = *f.judged.as_ref().unwrap_or(&0.0);
            (
                relevance * (0.5 + 0.5 * availability),
                relevance,
                availability,
            )
        };
        found.sort_by(|a, b| scored(b).0.total_cmp(&scored(a).0).then(a.id.cmp(&b.id)));
        let total = found.len();
        let now = Utc::now();
        let results = found
            .iter()
            .skip(order.offset)
            .take(order.page_size)
            .map(|f| {
                let (score, relevance, availability) = scored(f);
                let c = &t.configs[&f.id];
                let (reason, detail) = match &f.judged {
                    Ok(_) => (pb::ExclusionReason::Unspecified, String::new()),
                    Err((why, detail)) => (*why, detail.clone()),
                };
                let head = pb::SearchResult {
                    configuration_id: f.id.to_string(),
                    name: c.configuration.name.clone(),
                    agent_id: state
                        .manifests
                        .get(&c.manifest_id)
                        .map(|m| m.agent_id.clone())
                        .unwrap_or_default(),
                    score,
                    relevance,
                    availability,
                    skills: f
                        .hit
                        .skills
                        .iter()
                        .map(|s| pb::SkillMatch {
                            skill_id: s.id.clone(),
                            skill_name: s.name.clone(),
                            relevance: s.relevance,
                            terms: s
                                .terms
                                .iter()
                                .map(|h| pb::TermMatch {
                                    term: h.term.clone(),
                                    field: h.field.name().into(),
                                    word: h.word.clone(),
                                    contribution: h.contribution,
                                })
                                .collect(),
                        })
                        .collect(),
                    // From the view's cache, in `EncodedResult::agent`.
                    agent: None,
                    unavailable_reason: reason.into(),
                    unavailable_detail: detail,
                    availability_terms: match (&f.judged, order.explain) {
                        (Ok(score), true) => Some(self.explained(&state, t, f.id, *score, now)),
                        _ => None,
                    },
                };
                EncodedResult {
                    head,
                    agent: f
                        .judged
                        .as_ref()
                        .ok()
                        .and_then(|s| encoded(&state, t, f.id, *s)),
                }
            })
            .collect();
        let next = order.offset + order.page_size;
        SearchAnswer {
            results,
            next_page_token: if next < total {
                crate::pagination::encode(&crate::pagination::Offset(next))
            } else {
                String::new()
            },
            total_size: i32::try_from(total).unwrap_or(i32::MAX),
        }
    }
}

/// The instances an acquire picks among: the lowest-load few of the best
/// health (degraded ones only when no healthy one is routable).
fn pick_among(ranked: &BTreeSet<Rank>) -> Vec<&Rank> {
    let Some(first) = ranked.first() else {
        return Vec::new();
    };
    ranked
        .iter()
        .take_while(|r| r.degraded == first.degraded)
        .take(ranking::PICK_AMONG)
        .collect()
}

impl View {
    /// How many of the tenant's configurations an acquire that found nothing
    /// left out, per reason ("full", 2), every reason named, zero included:
    /// the summary its `RESOURCE_EXHAUSTED` answers with, which counts each
    /// configuration once. Those the view leaves out under `filter` by their
    /// reason; those of `offered` (the candidates the lease batch refused)
    /// as [`CHANGED_MEANWHILE`]: the view had them available, but they filled
    /// up or their instance stopped taking work before the batch locked them
    /// (acquires at once, an instance going away); the available ones not
    /// offered as degraded-only, or past the candidates a reservation offers.
    /// Configurations only, so that it stays cheap however many instances
    /// the tenant runs.
    pub fn exclusions(
        &self,
        tenant: Uuid,
        filter: &Filter,
        offered: &[(Uuid, Uuid)],
    ) -> Vec<(String, usize)> {
        use pb::ExclusionReason as Why;
        let name = |why: Why| {
            why.as_str_name()
                .trim_start_matches("EXCLUSION_REASON_")
                .to_lowercase()
        };
        let mut counts: std::collections::BTreeMap<String, usize> = [
            Why::Disabled,
            Why::ManifestDeprecated,
            Why::FilterMismatch,
            Why::Full,
            Why::NoHealthyInstance,
            Why::DegradedOnly,
            Why::Limit,
        ]
        .into_iter()
        .map(|why| (name(why), 0))
        .chain([(CHANGED_MEANWHILE.to_owned(), 0)])
        .collect();
        let state = self.read();
        let configs = state.tenants.get(&tenant).map(|t| &t.configs);
        let judged: Vec<_> = configs
            .into_iter()
            .flat_map(|c| c.iter())
            .map(|(id, c)| (id, judge(&state, c, filter)))
            .collect();
        let healthy = judged.iter().any(|(_, j)| matches!(j, Ok((_, false))));
        for (id, judged) in judged {
            let why = match judged {
                Err((why, _)) => name(why),
                Ok(_) if offered.iter().any(|(c, _)| c == id) => CHANGED_MEANWHILE.to_owned(),
                Ok((_, true)) if healthy && !filter.include_degraded => name(Why::DegradedOnly),
                Ok(_) => name(Why::Limit),
            };
            *counts.entry(why).or_default() += 1;
        }
        counts.into_iter().collect()
    }
}

/// The `ErrorInfo` metadata key of a failed acquire that counts the
/// configurations the view offered and the lease batch refused.
pub const CHANGED_MEANWHILE: &str = "changed_meanwhile";

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
    judge(state, c, filter).ok()
}

/// A configuration left out, and why in words.
type Left = (pb::ExclusionReason, String);

/// [`candidate`], or why not.
fn judge(state: &State, c: &ConfigState, filter: &Filter) -> Result<(f64, bool), Left> {
    use pb::ExclusionReason as Why;
    let Some(m) = state.manifests.get(&c.manifest_id) else {
        return Err((Why::ManifestDeprecated, "its manifest is gone".into()));
    };
    let facts = super::filter::ManifestFacts {
        agent_id: &m.agent_id,
        agent_type: &m.agent_type,
        version: m.semver.as_ref(),
        capabilities: &m.capabilities,
        labels: &m.labels,
    };
    if !filter.matches(&facts) {
        return Err((Why::FilterMismatch, format!("manifest {}", m.agent_id)));
    }
    let usable = match m.status.as_str() {
        "active" | "beta" => true,
        "deprecated" => filter.include_deprecated,
        _ => false,
    };
    if !usable {
        return Err((Why::ManifestDeprecated, format!("manifest {}", m.status)));
    }
    let config = &c.configuration;
    if config.enabled != Some(true) {
        return Err((Why::Disabled, "the configuration is disabled".into()));
    }
    let (workload, max) = (config.current_workload, config.max_workload);
    if workload >= max {
        return Err((Why::Full, format!("workload {workload} of {max}")));
    }
    let Some(best) = c.ranked.first() else {
        return Err((
            Why::NoHealthyInstance,
            format!("{} active instances, none takes work", c.instances.len()),
        ));
    };
    Ok((
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

/// Configuration `id`'s entry with `score`, from the bytes encoded at its
/// last change (encoded now if it changed since).
fn encoded(state: &State, t: &TenantState, id: Uuid, score: f64) -> Option<EncodedAgent> {
    use prost::Message as _;
    let c = t.configs.get(&id)?;
    let body = match c.encoded.get() {
        Some(body) => body.clone(),
        None => {
            // Encoded with a zero score, which protobuf leaves out.
            let body: Arc<[u8]> = entry(state, t, id, 0.0)?.encode_to_vec().into();
            c.encoded.get_or_init(|| body).clone()
        }
    };
    Some(EncodedAgent { body, score })
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

/// Every filter: what a watch of any filter might see.
fn everything() -> Filter {
    Filter {
        include_degraded: true,
        include_deprecated: true,
        ..Filter::default()
    }
}

/// A configuration's entry as watchers see it, if some filter admits it.
fn record(state: &State, tenant: Uuid, id: Uuid) -> Option<Record> {
    let t = state.tenants.get(&tenant)?;
    let c = t.configs.get(&id)?;
    let (score, degraded) = candidate(state, c, &everything())?;
    let m = state.manifests.get(&c.manifest_id)?;
    Some(Record {
        agent: entry(state, t, id, score)?,
        degraded,
        deprecated: m.status == "deprecated",
        version: m.semver.clone(),
        labels: m.labels.clone(),
    })
}

/// The entries of all of `tenant`'s configurations that some filter admits.
fn records(state: &State, tenant: Uuid) -> Vec<(Uuid, Record)> {
    let Some(t) = state.tenants.get(&tenant) else {
        return Vec::new();
    };
    t.configs
        .keys()
        .filter_map(|id| Some((*id, record(state, tenant, *id)?)))
        .collect()
}

fn manifest_info(m: &ManifestRow) -> ManifestInfo {
    ManifestInfo {
        agent_id: m.agent_id.clone(),
        agent_type: m.agent_type.clone(),
        version: m.version.clone(),
        semver: semver::Version::parse(&m.version).ok(),
        // A skill id counts as a capability, for filters and in answers.
        capabilities: m
            .capabilities
            .0
            .iter()
            .cloned()
            .chain(
                m.skills
                    .0
                    .iter()
                    .filter(|s| !m.capabilities.0.contains(&s.id))
                    .map(|s| s.id.clone()),
            )
            .collect(),
        labels: super::filter::labels(&m.metadata),
        status: m.status.clone(),
    }
}

/// The report of a row's load columns as ranking reads it, if it holds one.
fn reported(load: &LoadColumns) -> Option<Reported> {
    let at = load.load_reported_at?;
    Some(Reported {
        utilization: load.load_utilization.unwrap_or(0.0),
        queue_depth: load.load_queue_depth.unwrap_or(0).max(0) as u32,
        at,
        first: load.load_first_reported_at.unwrap_or(at),
    })
}

/// Places row `r` in its tenant; `alive`: its holder's lease runs (or it
/// has none); `held`: the report the view held for it before a reload.
fn place_instance(
    t: &mut TenantState,
    r: RegistrationRow,
    alive: bool,
    now: DateTime<Utc>,
    routing: &RoutingConfig,
    held: Option<HeldReport>,
) {
    let (id, config) = (r.id, r.configuration_id);
    let mut instance = Instance {
        health: HealthStatus::from_db_name(&r.health_status),
        failures: r.failure_count,
        routable: r.routable,
        holder: r.replica_id,
        orphaned: !alive,
        drained: r.drain_time.is_some(),
        reported: reported(&r.load),
        updated_at: r.updated_at,
        ranked_as: None,
        recheck: None,
        registration: r.into(),
    };
    if let Some(held) = held {
        held.carry_into(&mut instance);
    }
    let TenantState {
        configs,
        instance_config,
        leases,
        flaps,
    } = t;
    if let Some(c) = configs.get_mut(&config) {
        let ctx = Ctx {
            now,
            routing,
            leases,
            flaps,
        };
        c.insert_instance(id, instance, &ctx);
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
        let Some(c) = t.configs.get_mut(&config) else {
            return;
        };
        c.unrank(registration);
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
            skills: Json(Vec::new()),
            card: None,
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
            manual_workload: 0,
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
            replica_id: None,
            load: Default::default(),
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
        let view = View::new(16, usize::MAX);
        view.load(&Snapshot {
            manifests: vec![manifest_row(manifest, "active")],
            configurations: vec![a.clone(), b.clone()],
            registrations: instances.clone(),
            open_leases: vec![],
            ..Default::default()
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

    /// The instance a configuration ranks first.
    fn best(view: &View, tenant: Uuid, configuration: Uuid) -> Option<Uuid> {
        let state = view.read();
        Some(
            state
                .tenants
                .get(&tenant)?
                .configs
                .get(&configuration)?
                .ranked
                .first()?
                .id,
        )
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

    /// Loads `f`'s view with one configuration (max_workload 10) of two
    /// healthy instances, the first holding 3 open leases.
    fn busy_and_idle(f: &Fleet) -> (ConfigurationRow, RegistrationRow, RegistrationRow) {
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
            ..Default::default()
        });
        (c, busy, idle)
    }

    #[test]
    fn open_leases_survive_a_reload_of_their_instance_and_rank_it() {
        let (f, _) = fleet();
        let (c, busy, idle) = busy_and_idle(&f);
        // Ranked first; the pick itself is weighted among the lowest few,
        // so the busy one may still be drawn now and then.
        assert_eq!(best(&f.view, f.tenant, c.id), Some(idle.id));
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

    /// A load report from its notification, landed `age` ms before a
    /// second from now (so after the rows the fleet was loaded with).
    fn note(c: &ConfigurationRow, r: &RegistrationRow, utilization: f64, age: i64) -> Update {
        let at = Utc::now() + chrono::Duration::seconds(1) - chrono::Duration::milliseconds(age);
        Update::Load(LoadNote {
            id: r.id,
            tenant: c.tenant_id,
            configuration: c.id,
            epoch: r.epoch,
            in_flight: Some(0),
            queue_depth: Some(0),
            utilization: Some(utilization),
            metrics: Some(serde_json::json!({})),
            reported_at: Some(at),
            first_reported_at: Some(at - chrono::Duration::hours(1)),
            last_health_check: Some(at),
            updated_at: Some(at),
        })
    }

    /// A report as a holding replica's load writer sends it: no row times.
    fn published(c: &ConfigurationRow, r: &RegistrationRow, utilization: f64) -> Update {
        let mut update = note(c, r, utilization, 0);
        if let Update::Load(n) = &mut update {
            (n.last_health_check, n.updated_at) = (None, None);
        }
        update
    }

    #[test]
    fn a_published_report_outlives_its_row_read_again_and_a_reload() {
        let (f, instances) = fleet();
        let a = &instances[0];
        let load_of = |view: &View| {
            view.explain(f.tenant, &everything(), 10)
                .candidates
                .iter()
                .flat_map(|c| &c.instances)
                .find(|i| i.registration_id == a.id.to_string())
                .map(|i| (i.load, i.load_source))
        };
        f.view.apply(&[published(&f.a, a, 0.7)]);
        let reported = Some((0.7, pb::LoadSource::Report as i32));
        assert_eq!(load_of(&f.view), reported);
        // Its health changed: the row, read again, holds no report.
        let mut row = a.clone();
        row.health_status = "degraded".into();
        row.updated_at = Utc::now() + chrono::Duration::seconds(5);
        f.view.apply(&[Update::Registration {
            tenant: f.tenant,
            id: a.id,
            row: Some(row.clone()),
        }]);
        assert_eq!(load_of(&f.view), reported);
        // The feed reconnected: the view reloads from rows without reports.
        let snapshot = |row: RegistrationRow| Snapshot {
            manifests: vec![manifest_row(f.manifest, "active")],
            configurations: vec![f.a.clone(), f.b.clone()],
            registrations: vec![row, instances[1].clone(), instances[2].clone()],
            ..Default::default()
        };
        f.view.load(&snapshot(row.clone()));
        assert_eq!(load_of(&f.view), reported);
        // Another activation of the instance starts without it.
        row.epoch += 1;
        f.view.load(&snapshot(row));
        assert_ne!(load_of(&f.view).map(|l| l.1), reported.map(|l| l.1));
    }

    #[test]
    fn load_notes_rank_without_a_row_and_a_burst_publishes_once() {
        let (f, instances) = fleet();
        let load_of = |id: Uuid| {
            let explanation = f.view.explain(f.tenant, &everything(), 10);
            explanation
                .candidates
                .iter()
                .flat_map(|c| &c.instances)
                .find(|i| i.registration_id == id.to_string())
                .map(|i| (i.load, i.load_source))
        };
        let a = &instances[0];
        let before = f.view.revision();
        // Three reports of one instance in one burst: the last one counts,
        // and its configuration is published once.
        f.view.apply(&[
            note(&f.a, a, 0.2, 30),
            note(&f.a, a, 0.4, 20),
            note(&f.a, a, 0.7, 10),
        ]);
        assert_eq!(f.view.revision(), before + 1);
        assert_eq!(load_of(a.id), Some((0.7, pb::LoadSource::Report as i32)));
        let (agents, _) = f.view.available(f.tenant, &Filter::default(), 10);
        let offered = agents
            .iter()
            .find_map(|e| e.instance.as_ref().filter(|i| i.id == a.id.to_string()))
            .expect("a offered");
        assert_eq!(offered.load.as_ref().map(|l| l.utilization), Some(0.7));
        // A report older than what the view holds, or of another epoch, is
        // not applied.
        f.view.apply(&[note(&f.a, a, 0.1, 60_000)]);
        let mut other_epoch = note(&f.a, a, 0.1, 0);
        if let Update::Load(n) = &mut other_epoch {
            n.epoch += 1;
        }
        f.view.apply(&[other_epoch]);
        assert_eq!(load_of(a.id), Some((0.7, pb::LoadSource::Report as i32)));
        // The agent stopped reporting: its leases rank it again.
        let mut cleared = note(&f.a, a, 0.0, 0);
        if let Update::Load(n) = &mut cleared {
            (n.in_flight, n.queue_depth, n.utilization, n.metrics) = (None, None, None, None);
            (n.reported_at, n.first_reported_at) = (None, None);
        }
        f.view.apply(&[cleared]);
        assert_ne!(
            load_of(a.id).map(|l| l.1),
            Some(pb::LoadSource::Report as i32)
        );
    }

    #[test]
    fn a_long_run_of_reports_is_applied_in_chunks_and_the_rest_of_the_burst_with_it() {
        let (f, instances) = fleet();
        let a = &instances[0];
        let before = f.view.revision();
        // 150 reports of a's only instance, the last the highest, then a
        // departure from b, all in one burst.
        let mut burst: Vec<Update> = (0..150)
            .map(|i| note(&f.a, a, f64::from(i) / 200.0, 150 - i64::from(i)))
            .collect();
        burst.push(Update::Registration {
            tenant: f.tenant,
            id: instances[1].id,
            row: None,
        });
        f.view.apply(&burst);
        // Three chunks of reports (64, 64, 22), each published once, and the
        // departure.
        assert_eq!(f.view.revision(), before + 4);
        let explanation = f.view.explain(f.tenant, &everything(), 10);
        let load = explanation
            .candidates
            .iter()
            .flat_map(|c| &c.instances)
            .find(|i| i.registration_id == a.id.to_string())
            .map(|i| i.load);
        assert_eq!(load, Some(149.0 / 200.0));
        assert!(f.view.leased(f.tenant, f.b.id, instances[1].id).is_none());
    }

    #[test]
    fn only_a_report_that_moves_the_best_instance_is_published() {
        let (f, _) = fleet();
        let (c, busy, idle) = busy_and_idle(&f);
        let offered = || {
            let (agents, _) = f.view.available(f.tenant, &Filter::default(), 10);
            let entry = agents.into_iter().find(|a| {
                a.configuration
                    .as_ref()
                    .is_some_and(|x| x.id == c.id.to_string())
            });
            entry.and_then(|a| a.instance).map(|i| i.id)
        };
        let body = || {
            let entries = f.view.available_encoded(f.tenant, &Filter::default(), 10);
            entries.into_iter().map(|e| e.body).collect::<Vec<_>>()
        };
        assert_eq!(offered(), Some(idle.id.to_string()));
        let (before, bodies) = (f.view.revision(), body());
        // The busy one (0.3 by its leases) reports more load: the idle one
        // stays first, and nothing the entry holds changed.
        f.view.apply(&[note(&c, &busy, 0.9, 10)]);
        assert_eq!(f.view.revision(), before, "not published");
        assert!(body().iter().zip(&bodies).all(|(a, b)| Arc::ptr_eq(a, b)));
        assert_eq!(best(&f.view, f.tenant, c.id), Some(idle.id));
        // The idle one reports more than it: the busy one is best now.
        f.view.apply(&[note(&c, &idle, 0.95, 5)]);
        assert_eq!(f.view.revision(), before + 1);
        assert_eq!(offered(), Some(busy.id.to_string()));
        // The best one's own report is in its entry: published.
        f.view.apply(&[note(&c, &busy, 0.5, 0)]);
        assert_eq!(f.view.revision(), before + 2);
        let (agents, _) = f.view.available(f.tenant, &Filter::default(), 10);
        let load = agents
            .iter()
            .find_map(|a| a.instance.as_ref().filter(|i| i.id == busy.id.to_string()))
            .and_then(|i| i.load.as_ref())
            .map(|l| l.utilization);
        assert_eq!(load, Some(0.5));
    }

    #[test]
    fn watch_records_admit_exactly_what_available_one_offers() {
        let (f, instances) = fleet();
        // b keeps only its degraded instance.
        f.view.apply(&[Update::Registration {
            tenant: f.tenant,
            id: instances[1].id,
            row: None,
        }]);
        let filters = |agent_type: &str| {
            let base = Filter::default();
            vec![
                base.clone(),
                Filter {
                    include_degraded: true,
                    ..base.clone()
                },
                Filter {
                    include_deprecated: true,
                    include_degraded: true,
                    ..base.clone()
                },
                Filter {
                    agent_id: Some("ide-agent".into()),
                    ..base.clone()
                },
                Filter {
                    agent_id: Some("slack-bot".into()),
                    ..base.clone()
                },
                Filter {
                    agent_type: Some(agent_type.into()),
                    ..base.clone()
                },
                Filter {
                    capabilities: vec!["code_editing".into()],
                    ..base.clone()
                },
                Filter {
                    capabilities: vec!["code_editing".into(), "terminal".into()],
                    ..base
                },
            ]
        };
        let check = |agent_type: &str| {
            for filter in filters(agent_type) {
                for c in [f.a.id, f.b.id] {
                    let offered = f.view.available_one(f.tenant, c, &filter);
                    let state = f.view.read();
                    let watched = record(&state, f.tenant, c)
                        .filter(|r| r.admits(&filter))
                        .map(|r| r.agent);
                    assert_eq!(watched, offered, "{filter:?}");
                }
            }
        };
        check("ide");
        check("chat");
        f.view.apply(&[Update::Manifest {
            id: f.manifest,
            row: Some(manifest_row(f.manifest, "deprecated")),
        }]);
        check("ide");
    }

    /// An instance is offered while its holder's lease runs by the database
    /// clock the feed brings (not this process's), is held out once that
    /// clock passes the lease, comes back with a renewal, and an instance
    /// naming a holder the view never heard of is not offered.
    #[test]
    fn instances_follow_their_holders_lease_by_the_feeds_clock() {
        use crate::registrations::replicas::ReplicaLease;
        let (f, _) = fleet();
        let c = configuration(Uuid::new_v4(), f.tenant, f.manifest, 0, 10);
        let (holder, stranger) = (Uuid::new_v4(), Uuid::new_v4());
        let t0 = Utc::now() - chrono::Duration::hours(1);
        let mut held = instance(&c, "healthy", 0);
        held.replica_id = Some(holder);
        let mut unknown = instance(&c, "healthy", 0);
        unknown.replica_id = Some(stranger);
        f.view.load(&Snapshot {
            manifests: vec![manifest_row(f.manifest, "active")],
            configurations: vec![c.clone()],
            registrations: vec![held.clone(), unknown.clone()],
            replicas: vec![ReplicaLease {
                id: holder,
                expires_at: Some(t0 + chrono::Duration::seconds(10)),
            }],
            replicas_at: t0,
            ..Default::default()
        });
        let offered = |f: &Fleet| -> Vec<Uuid> {
            f.view
                .candidates(f.tenant, &Filter::default(), 10)
                .into_iter()
                .map(|(_, i)| i)
                .collect()
        };
        // The lease ran out an hour ago by this clock, not by the feed's.
        assert_eq!(offered(&f), vec![held.id], "only the known holder's");
        let renewal = |expires: i64, at: i64| Update::Replica {
            lease: ReplicaLease {
                id: holder,
                expires_at: Some(t0 + chrono::Duration::seconds(expires)),
            },
            at: t0 + chrono::Duration::seconds(at),
        };
        // Another replica's renewal brings the clock past the lease.
        f.view.apply(&[Update::Replica {
            lease: ReplicaLease {
                id: stranger,
                expires_at: None,
            },
            at: t0 + chrono::Duration::seconds(11),
        }]);
        assert!(
            offered(&f).is_empty(),
            "held out once the clock passed its lease"
        );
        f.view.apply(&[renewal(25, 12)]);
        assert_eq!(offered(&f), vec![held.id], "back with a renewal");
        f.view.apply(&[renewal(25, 26)]);
        assert!(offered(&f).is_empty());
    }
}
