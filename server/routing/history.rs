//! What `WatchAvailableAgents` sends, before any filter: per tenant, the
//! changes of its configurations' entries, numbered in a stream of this
//! replica (which starts at revision 1; each change adds one), and the latest changes of all tenants kept in one bounded
//! buffer so that a watch can resume where an earlier one stopped.
//!
//! A change records the configuration's entry before and after (`None`: not
//! available under any filter), so that what a watch of any filter makes of
//! it depends on the change alone, never on what the watch sent before: a
//! resumed watch sends exactly what a watch that never broke would have sent.
//! A change is recorded only when the entry differs from the one before, so
//! the view telling the same entry twice is one change.
//!
//! A tenant's stream starts when it is first watched on this replica (until
//! then the view records nothing for it) and ends [`UNWATCHED`] after its
//! last watch went away, with the changes it held: a watch that resumes
//! after that, like one resumed on a restarted server or another replica
//! (which have other streams), is resynced rather than sent wrong events.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use std::time::{Duration, Instant};

use prost::Message as _;
use tokio::sync::watch;
use uuid::Uuid;

use super::filter::ManifestFacts;
use super::request::Filter;
use crate::pb;

/// How long a tenant's stream outlives its last watch: long enough for a
/// watch that broke to resume here, short enough that a tenant watched once
/// does not keep its entries and changes in memory for good.
pub const UNWATCHED: Duration = Duration::from_secs(10);

/// A configuration's entry as a watch of any filter may see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The entry (with its score), as `View::available_one` builds it.
    pub agent: pb::AvailableAgent,
    /// Its best instance is only degraded.
    pub degraded: bool,
    /// Its manifest is deprecated.
    pub deprecated: bool,
    /// Its manifest's version, parsed, and labels: what filters ask beyond
    /// the entry's own fields.
    pub version: Option<semver::Version>,
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Record {
    /// Whether a watch of `filter` sees this entry. The same test as the
    /// view's `candidate` and `available_one` make on the live state, on the
    /// fields that the record keeps (a unit test of the view holds them together).
    pub fn admits(&self, filter: &Filter) -> bool {
        (!self.degraded || filter.include_degraded)
            && (!self.deprecated || filter.include_deprecated)
            && filter.matches(&ManifestFacts {
                agent_id: &self.agent.agent_id,
                agent_type: &self.agent.agent_type,
                version: self.version.as_ref(),
                capabilities: &self.agent.capabilities,
                labels: &self.labels,
            })
    }

    /// About what the record takes in memory: its entry's encoded size and
    /// labels, and what every allocation of it costs beyond its bytes.
    fn bytes(&self) -> usize {
        const OVERHEAD: usize = 256;
        let labels: usize = self
            .labels
            .iter()
            .map(|(k, v)| k.len() + v.len() + 48)
            .sum();
        self.agent.encoded_len() + labels + OVERHEAD
    }
}

/// One change of a tenant's entries.
#[derive(Debug)]
pub struct Change {
    /// The tenant's revision after it.
    pub revision: u64,
    /// The configuration whose entry changed.
    pub configuration: Uuid,
    /// The entry before; `None`: not available.
    pub before: Option<Arc<Record>>,
    /// The entry after; `None`: not available.
    pub after: Option<Arc<Record>>,
    /// What holding it costs: the record it brought (the one it removed,
    /// for a removal; the entry before is the change before's entry after).
    bytes: usize,
}

/// What [`History::since`] found.
#[derive(Debug)]
pub enum Since {
    /// The changes after the revision asked, oldest first, at most as many as
    /// asked (empty: none yet).
    Changes(Vec<Arc<Change>>),
    /// Not held: another stream, a revision this stream never reached, or
    /// changes already dropped from the buffer.
    Gone,
}

/// A watch's hold on its tenant's stream.
#[derive(Debug)]
pub struct Subscription {
    /// Names the tenant's stream on this replica.
    pub stream: Arc<str>,
    /// The tenant's latest revision; changes when a change is recorded.
    pub revisions: watch::Receiver<u64>,
}

#[derive(Debug)]
struct TenantStream {
    stream: Arc<str>,
    revision: u64,
    /// The entries available now.
    current: HashMap<Uuid, Arc<Record>>,
    /// The latest changes, oldest first; the last one is at `revision`.
    held: VecDeque<Arc<Change>>,
    revisions: watch::Sender<u64>,
    /// Since when no watch holds a subscription.
    unwatched_since: Option<Instant>,
}

/// The streams of the watched tenants and the buffer of their latest changes.
#[derive(Debug)]
pub struct History {
    /// Changes held, all tenants together.
    capacity: usize,
    /// Bytes of the changes held, all tenants together, and their bound.
    bytes: usize,
    max_bytes: usize,
    tenants: HashMap<Uuid, TenantStream>,
    /// The tenant of each held change, oldest first: which one to drop next.
    order: VecDeque<Uuid>,
}

impl History {
    /// A history that holds the latest `capacity` changes, and of them no
    /// more than `max_bytes` (but always the latest one).
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        History {
            capacity: capacity.max(1),
            bytes: 0,
            max_bytes,
            tenants: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether `tenant`'s changes are recorded.
    pub fn watches(&self, tenant: Uuid) -> bool {
        self.tenants.contains_key(&tenant)
    }

    /// The tenants whose changes are recorded.
    pub fn tenants(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.tenants.keys().copied()
    }

    /// Subscribes to `tenant`'s stream, starting it with the entries
    /// `current` gives when it has none yet. The caller holds the view still
    /// meanwhile, so that no change is missed between the two.
    pub fn subscribe(
        &mut self,
        tenant: Uuid,
        current: impl FnOnce() -> Vec<(Uuid, Record)>,
    ) -> Subscription {
        let t = self.tenants.entry(tenant).or_insert_with(|| TenantStream {
            stream: Uuid::new_v4().simple().to_string().into(),
            revision: 1,
            current: current()
                .into_iter()
                .map(|(id, r)| (id, Arc::new(r)))
                .collect(),
            held: VecDeque::new(),
            revisions: watch::channel(1).0,
            unwatched_since: None,
        });
        t.unwatched_since = None;
        Subscription {
            stream: t.stream.clone(),
            revisions: t.revisions.subscribe(),
        }
    }

    /// Records that `configuration`'s entry is now `record`, if that is a
    /// change and `tenant` is watched.
    pub fn update(&mut self, tenant: Uuid, configuration: Uuid, record: Option<Record>) {
        let Some(t) = self.tenants.get_mut(&tenant) else {
            return;
        };
        let before = t.current.get(&configuration);
        if before.map(|b| &**b) == record.as_ref() {
            return;
        }
        let after = record.map(Arc::new);
        let before = match &after {
            Some(after) => t.current.insert(configuration, after.clone()),
            None => t.current.remove(&configuration),
        };
        t.revision += 1;
        let bytes = after.as_ref().or(before.as_ref()).map_or(0, |r| r.bytes());
        t.held.push_back(Arc::new(Change {
            revision: t.revision,
            configuration,
            before,
            after,
            bytes,
        }));
        t.revisions.send_replace(t.revision);
        self.order.push_back(tenant);
        self.bytes += bytes;
        while self.order.len() > self.capacity
            || (self.bytes > self.max_bytes && self.order.len() > 1)
        {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(dropped) = self
                .tenants
                .get_mut(&oldest)
                .and_then(|t| t.held.pop_front())
            {
                self.bytes -= dropped.bytes;
            }
        }
    }

    /// Bytes of the changes held now.
    pub fn held_bytes(&self) -> usize {
        self.bytes
    }

    /// Ends the streams of tenants no watch has held for `after` (as of
    /// `now`), with their entries and changes; returns how many ended.
    pub fn forget_unwatched(&mut self, now: Instant, after: Duration) -> usize {
        let mut gone = Vec::new();
        for (tenant, t) in &mut self.tenants {
            if t.revisions.receiver_count() > 0 {
                t.unwatched_since = None;
                continue;
            }
            let since = *t.unwatched_since.get_or_insert(now);
            if now.duration_since(since) >= after {
                gone.push(*tenant);
            }
        }
        if gone.is_empty() {
            return 0;
        }
        for tenant in &gone {
            if let Some(t) = self.tenants.remove(tenant) {
                self.bytes -= t.held.iter().map(|c| c.bytes).sum::<usize>();
            }
        }
        self.order.retain(|t| !gone.contains(t));
        gone.len()
    }

    /// Records that `tenant`'s entries are now `records`, all others
    /// unavailable: one change per entry that differs, in configuration order.
    pub fn update_all(&mut self, tenant: Uuid, records: Vec<(Uuid, Record)>) {
        let Some(t) = self.tenants.get(&tenant) else {
            return;
        };
        let mut records: HashMap<Uuid, Record> = records.into_iter().collect();
        let mut ids: Vec<Uuid> = t.current.keys().chain(records.keys()).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let record = records.remove(&id);
            self.update(tenant, id, record);
        }
    }

    /// The entries of `tenant` that `filter` admits, best score first, and
    /// the revision they are at.
    pub fn snapshot(&self, tenant: Uuid, filter: &Filter) -> (Vec<pb::AvailableAgent>, u64) {
        let Some(t) = self.tenants.get(&tenant) else {
            return (Vec::new(), 0);
        };
        let mut found: Vec<(&Uuid, &Record)> = t
            .current
            .iter()
            .filter(|(_, r)| r.admits(filter))
            .map(|(id, r)| (id, &**r))
            .collect();
        found.sort_by(|a, b| {
            b.1.agent
                .score
                .total_cmp(&a.1.agent.score)
                .then(a.0.cmp(b.0))
        });
        let agents = found.into_iter().map(|(_, r)| r.agent.clone()).collect();
        (agents, t.revision)
    }

    /// At most `max` changes of `tenant`'s stream `stream` after `revision`.
    pub fn since(&self, tenant: Uuid, stream: &str, revision: u64, max: usize) -> Since {
        let Some(t) = self.tenants.get(&tenant).filter(|t| *t.stream == *stream) else {
            return Since::Gone;
        };
        // The held changes are at revisions first + 1 ..= t.revision.
        let first = t.revision - t.held.len() as u64;
        if revision < first || revision > t.revision {
            return Since::Gone;
        }
        let skip = usize::try_from(revision - first).unwrap_or(usize::MAX);
        Since::Changes(t.held.iter().skip(skip).take(max).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    //! The history alone: records made by hand.

    use super::*;

    fn record(agent_id: &str, score: f64) -> Record {
        Record {
            agent: pb::AvailableAgent {
                agent_id: agent_id.into(),
                capabilities: vec!["code_editing".into()],
                score,
                ..Default::default()
            },
            degraded: false,
            deprecated: false,
            version: None,
            labels: Default::default(),
        }
    }

    fn revisions(since: Since) -> Vec<u64> {
        match since {
            Since::Changes(changes) => changes.iter().map(|c| c.revision).collect(),
            Since::Gone => panic!("gone"),
        }
    }

    #[test]
    fn only_watched_tenants_and_real_changes_are_numbered() {
        let (tenant, other, a) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut h = History::new(16, usize::MAX);
        h.update(tenant, a, Some(record("x", 0.5)));
        assert!(!h.watches(tenant), "nothing recorded before a watch");
        let s = h.subscribe(tenant, || vec![(a, record("x", 0.5))]);
        // The same entry again is no change; another score is one.
        h.update(tenant, a, Some(record("x", 0.5)));
        h.update(tenant, a, Some(record("x", 0.7)));
        h.update(tenant, a, None);
        h.update(tenant, a, None);
        h.update(other, a, Some(record("x", 0.5)));
        assert_eq!(*s.revisions.borrow(), 3, "a stream starts at 1");
        let Since::Changes(changes) = h.since(tenant, &s.stream, 1, 10) else {
            panic!("held")
        };
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].before.as_deref(), Some(&record("x", 0.5)));
        assert_eq!(changes[0].after.as_deref(), Some(&record("x", 0.7)));
        assert_eq!(changes[1].after, None);
        assert!(h.snapshot(tenant, &Filter::default()).0.is_empty());
        assert!(matches!(h.since(tenant, "another", 1, 10), Since::Gone));
        assert!(matches!(h.since(tenant, &s.stream, 0, 10), Since::Gone));
        assert!(matches!(h.since(tenant, &s.stream, 4, 10), Since::Gone));
        assert!(revisions(h.since(tenant, &s.stream, 3, 10)).is_empty());
    }

    #[test]
    fn the_buffer_is_bounded_over_all_tenants_and_drops_the_oldest() {
        let (t1, t2, a) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut h = History::new(3, usize::MAX);
        let s1 = h.subscribe(t1, Vec::new);
        let s2 = h.subscribe(t2, Vec::new);
        for i in 1..=3 {
            h.update(t1, a, Some(record("x", f64::from(i))));
        }
        assert_eq!(revisions(h.since(t1, &s1.stream, 1, 10)), [2, 3, 4]);
        assert_eq!(revisions(h.since(t1, &s1.stream, 2, 1)), [3]);
        // Two changes of another tenant push out t1's two oldest.
        h.update(t2, a, Some(record("x", 1.0)));
        h.update(t2, a, Some(record("x", 2.0)));
        assert!(matches!(h.since(t1, &s1.stream, 2, 10), Since::Gone));
        assert_eq!(revisions(h.since(t1, &s1.stream, 3, 10)), [4]);
        assert_eq!(revisions(h.since(t2, &s2.stream, 1, 10)), [2, 3]);
    }

    #[test]
    fn update_all_changes_what_differs_and_removes_what_is_gone() {
        let (tenant, a, b, c) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        let mut h = History::new(16, usize::MAX);
        let s = h.subscribe(tenant, || {
            vec![(a, record("x", 0.5)), (b, record("y", 0.5))]
        });
        h.update_all(tenant, vec![(a, record("x", 0.5)), (c, record("z", 0.9))]);
        let Since::Changes(changes) = h.since(tenant, &s.stream, 1, 10) else {
            panic!("held")
        };
        let mut changed: Vec<(Uuid, bool)> = changes
            .iter()
            .map(|c| (c.configuration, c.after.is_some()))
            .collect();
        changed.sort();
        let mut expected = vec![(b, false), (c, true)];
        expected.sort();
        assert_eq!(changed, expected);
        let (agents, revision) = h.snapshot(tenant, &Filter::default());
        assert_eq!(revision, 3);
        let ids: Vec<&str> = agents.iter().map(|a| a.agent_id.as_str()).collect();
        assert_eq!(ids, ["z", "x"], "best score first");
        let only_y = Filter {
            agent_id: Some("y".into()),
            ..Filter::default()
        };
        assert!(h.snapshot(tenant, &only_y).0.is_empty());
    }

    #[test]
    fn the_buffer_is_bounded_in_bytes_and_keeps_the_latest() {
        let (tenant, a) = (Uuid::new_v4(), Uuid::new_v4());
        let big = |i: u32| Record {
            agent: pb::AvailableAgent {
                agent_id: format!("{i:0>10000}"),
                ..Default::default()
            },
            ..record("x", 0.5)
        };
        let one = big(0).bytes();
        let mut h = History::new(1_000, one * 10);
        let s = h.subscribe(tenant, Vec::new);
        for i in 1..=100 {
            h.update(tenant, a, Some(big(i)));
            assert!(h.held_bytes() <= one * 10, "held {} bytes", h.held_bytes());
        }
        // The latest ten changes are held (revisions 92..=101), no older.
        assert_eq!(revisions(h.since(tenant, &s.stream, 91, 100)).len(), 10);
        assert!(matches!(h.since(tenant, &s.stream, 90, 100), Since::Gone));
        // A change larger than the bound alone is still held.
        let mut h = History::new(1_000, 1);
        let s = h.subscribe(tenant, Vec::new);
        h.update(tenant, a, Some(big(1)));
        assert_eq!(revisions(h.since(tenant, &s.stream, 1, 10)), [2]);
    }

    #[test]
    fn a_tenant_no_watch_holds_is_forgotten_after_a_while_with_its_changes() {
        let (tenant, other, a) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut h = History::new(100, usize::MAX);
        let s = h.subscribe(tenant, Vec::new);
        let kept = h.subscribe(other, Vec::new);
        h.update(tenant, a, Some(record("x", 0.5)));
        h.update(other, a, Some(record("y", 0.5)));
        let now = Instant::now();
        assert_eq!(h.forget_unwatched(now, UNWATCHED), 0, "both watched");
        drop(s);
        assert_eq!(h.forget_unwatched(now, UNWATCHED), 0, "not for long yet");
        assert_eq!(h.forget_unwatched(now + UNWATCHED, UNWATCHED), 1);
        assert!(!h.watches(tenant));
        assert!(h.watches(other));
        assert_eq!(
            h.held_bytes(),
            record("y", 0.5).bytes(),
            "its changes went too"
        );
        h.update(other, a, Some(record("z", 0.5)));
        assert_eq!(revisions(h.since(other, &kept.stream, 1, 10)), [2, 3]);
    }
}
