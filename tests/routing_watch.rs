//! WatchAvailableAgents: a snapshot, then changes, one event each and without
//! gaps; a slow watcher resyncs; a watch resumes from its last revision, on
//! the replica that counted it; quiet watches get progress events.

mod common;

use agentry_client::{AgentFilter, pb};
use common::TestServer;
use common::routing::{
    DEADLINE, a_large_entry_changing_under_an_unread_watch, close, configure, manifest, next,
    register, wait_available,
};

#[tokio::test]
async fn watch_sends_a_snapshot_then_changes() {
    let s = TestServer::start().await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    let c = configure(&t, "ide-agent", 4).await;
    let mut events = t
        .client
        .watch_available_agents(AgentFilter::new())
        .await
        .expect("watch");
    let first = events.message().await.expect("event").expect("snapshot");
    assert!(
        matches!(first.event, Some(Event::Snapshot(ref s)) if s.agents.is_empty()),
        "{first:?}"
    );

    let instance = register(&t, "i1", "ide-agent").await;
    let mut last_revision = first.revision;
    let upserted = next(&mut events).await;
    assert!(upserted.revision > last_revision);
    last_revision = upserted.revision;
    let Some(Event::Upserted(agent)) = upserted.event else {
        panic!("{upserted:?}")
    };
    assert_eq!(agent.instance.expect("instance").id, instance.id);

    t.client.update_workload(&c.id, 2).await.expect("load");
    let changed = next(&mut events).await;
    assert!(changed.revision > last_revision);
    let Some(Event::Upserted(agent)) = changed.event else {
        panic!("{changed:?}")
    };
    assert!(close(agent.score, 0.5 * 0.5 + 0.3 + 0.2 / 3.0));

    t.agent
        .deactivate_registration("i1", 0)
        .await
        .expect("deactivate");
    let removed = next(&mut events).await;
    assert_eq!(
        removed.event,
        Some(Event::Removed(pb::Removed {
            configuration_id: c.id.clone(),
            instance_id: instance.id.clone(),
        }))
    );
}

#[tokio::test]
async fn a_slow_watcher_gets_a_resync_and_a_fresh_snapshot() {
    let s = TestServer::start_with(|c| c.registry.watch_buffer = 8).await;
    // Large events (a 30 KiB prompt), so that HTTP/2 flow control fills up
    // after a few dozen; far more changes than the buffer and flow control hold.
    let (_t, mut events) = a_large_entry_changing_under_an_unread_watch(&s).await;
    let mut saw_resync = false;
    loop {
        let event = tokio::time::timeout(DEADLINE, events.message())
            .await
            .expect("in time")
            .expect("event")
            .expect("open");
        match event.event {
            Some(Event::Resync(_)) => saw_resync = true,
            Some(Event::Snapshot(snapshot)) if saw_resync => {
                let workload = snapshot.agents[0]
                    .configuration
                    .as_ref()
                    .expect("configuration")
                    .current_workload;
                if workload == 400 {
                    break;
                }
            }
            Some(Event::Upserted(agent))
                if saw_resync
                    && agent
                        .configuration
                        .as_ref()
                        .expect("configuration")
                        .current_workload
                        == 400 =>
            {
                break;
            }
            _ => {}
        }
    }
    assert!(saw_resync, "the subscriber was told to resync");
}

use std::time::Duration;

use agentry_client::{AvailabilityEvents, Client, WatchPosition};
use common::{Tenant, code};

type Event = pb::availability_event::Event;

/// The configuration an event is about, if it names one.
fn about(event: &pb::AvailabilityEvent) -> Option<&str> {
    match &event.event {
        Some(Event::Upserted(a)) => a.configuration.as_ref().map(|c| c.id.as_str()),
        Some(Event::Removed(r)) => Some(&r.configuration_id),
        _ => None,
    }
}

fn is_progress(event: &pb::AvailabilityEvent) -> bool {
    matches!(event.event, Some(Event::Progress(_)))
}

/// Reads `events` up to and including the first event at `revision`.
async fn read_to(events: &mut AvailabilityEvents, revision: u64) -> Vec<pb::AvailabilityEvent> {
    let mut read = Vec::new();
    loop {
        let event = next(events).await;
        let reached = event.revision >= revision;
        read.push(event);
        if reached {
            return read;
        }
    }
}

/// Reads `events` until `found` holds for one, which is returned last.
async fn read_until(
    events: &mut AvailabilityEvents,
    found: impl Fn(&pb::AvailabilityEvent) -> bool,
) -> Vec<pb::AvailabilityEvent> {
    let mut read = Vec::new();
    loop {
        let event = next(events).await;
        let done = found(&event);
        read.push(event);
        if done {
            return read;
        }
    }
}

/// Whether `event` is an upsert of configuration `id` at workload `workload`.
fn upsert_at(event: &pb::AvailabilityEvent, id: &str, workload: i32) -> bool {
    matches!(&event.event, Some(Event::Upserted(a))
        if a.configuration.as_ref().is_some_and(|c| c.id == id && c.current_workload == workload))
}

/// Checks that `events`, which follow an event at `from`, have no gaps: each
/// is one revision on, but for the progress events of a quiet watch, which
/// repeat it. Returns them without those.
fn without_gaps(from: u64, events: Vec<pb::AvailabilityEvent>) -> Vec<pb::AvailabilityEvent> {
    let mut revision = from;
    let mut changes = Vec::new();
    for event in events {
        if is_progress(&event) && event.revision == revision {
            continue;
        }
        assert_eq!(event.revision, revision + 1, "no gap: {event:?}");
        assert!(
            !matches!(
                event.event,
                Some(Event::Snapshot(_)) | Some(Event::Resync(_))
            ),
            "no snapshot: {event:?}"
        );
        revision = event.revision;
        changes.push(event);
    }
    changes
}

async fn snapshot_of(events: &mut AvailabilityEvents) -> (u64, Vec<pb::AvailableAgent>) {
    let event = next(events).await;
    match event.event {
        Some(Event::Snapshot(s)) => (event.revision, s.agents),
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

/// Waits until the view of `client`'s server has configuration `id` at `workload`.
async fn wait_for_workload(client: &Client, id: &str, workload: i32) {
    common::eventually(DEADLINE, "the view has the workload", || async {
        client
            .get_available_agents(AgentFilter::new().include_degraded(true), 0)
            .await
            .expect("available")
            .iter()
            .filter_map(|a| a.configuration.as_ref())
            .any(|c| c.id == id && c.current_workload == workload)
    })
    .await;
}

/// An ide agent (capability `code_editing`) and a chat agent, each with a
/// configuration of 10 units and one instance.
async fn two_agents(s: &TestServer) -> (Tenant, pb::Configuration, pb::Configuration) {
    manifest(
        s,
        "ide-agent",
        "ide",
        &["code_editing"],
        pb::ManifestStatus::Active,
    )
    .await;
    manifest(s, "chat-agent", "chat", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    let ide = configure(&t, "ide-agent", 10).await;
    let chat = configure(&t, "chat-agent", 10).await;
    register(&t, "i1", "ide-agent").await;
    register(&t, "c1", "chat-agent").await;
    wait_available(&t.client, AgentFilter::new(), "both available", |a| {
        a.len() == 2
    })
    .await;
    (t, ide, chat)
}

#[tokio::test]
async fn every_change_is_one_event_and_revisions_have_no_gaps_whatever_the_filter() {
    let s = TestServer::start().await;
    let (t, ide, chat) = two_agents(&s).await;
    let mut all = t
        .client
        .watch_available_agents(AgentFilter::new())
        .await
        .expect("watch");
    let mut editors = t
        .client
        .watch_available_agents(AgentFilter::new().capability("code_editing"))
        .await
        .expect("watch");
    let (from, agents) = snapshot_of(&mut all).await;
    assert_eq!(agents.len(), 2);
    let (editors_from, agents) = snapshot_of(&mut editors).await;
    assert_eq!(editors_from, from, "one stream of the tenant");
    assert_eq!(agents.len(), 1);

    // Workload changes of both, an acquire and a release (a lease and a
    // workload change each, which leave one entry change), a departure.
    for _ in 0..3 {
        t.client.update_workload(&ide.id, 1).await.expect("ide +1");
        t.client
            .update_workload(&chat.id, 1)
            .await
            .expect("chat +1");
    }
    let lease = t
        .client
        .acquire_agent(AgentFilter::new().capability("code_editing"), None)
        .await
        .expect("acquire");
    t.client
        .release_agent(&lease.id, pb::LeaseOutcome::Succeeded)
        .await
        .expect("release");
    t.agent
        .deactivate_registration("c1", 0)
        .await
        .expect("deactivate");

    let seen = read_until(&mut all, |e| {
        about(e) == Some(chat.id.as_str()) && matches!(e.event, Some(Event::Removed(_)))
    })
    .await;
    let changes = without_gaps(from, seen);
    // Every change concerns a watcher of everything, and none is sent twice.
    assert!(changes.iter().all(|e| !is_progress(e)), "{changes:#?}");
    for (a, b) in changes.iter().zip(changes.iter().skip(1)) {
        assert_ne!(a.event, b.event, "a change is sent once");
    }
    let workloads = |id: &str| -> Vec<i32> {
        changes
            .iter()
            .filter_map(|e| match &e.event {
                Some(Event::Upserted(a)) => a.configuration.as_ref().filter(|c| c.id == id),
                _ => None,
            })
            .map(|c| c.current_workload)
            .collect()
    };
    // The feed reads a row once per burst of changes, so changes close
    // together may come as one; never as two equal events.
    let (ide_workloads, chat_workloads) = (workloads(&ide.id), workloads(&chat.id));
    for w in [&ide_workloads, &chat_workloads] {
        assert!(w.windows(2).all(|p| p[0] != p[1]), "{w:?}");
        assert!(w.iter().all(|n| (1..=4).contains(n)), "{w:?}");
    }
    assert_eq!(ide_workloads.last(), Some(&3), "{ide_workloads:?}");
    assert_eq!(chat_workloads.last(), Some(&3), "{chat_workloads:?}");
    assert!(matches!(&changes.last().expect("removed").event,
            Some(Event::Removed(r)) if r.configuration_id == chat.id && !r.instance_id.is_empty()));

    // The filtered watcher sees the same revisions: the ide agent's changes
    // as they are, the chat agent's as progress.
    let last = changes.last().expect("changes").revision;
    let filtered = without_gaps(from, read_to(&mut editors, last).await);
    assert_eq!(filtered.len(), changes.len());
    for (mine, everything) in filtered.iter().zip(&changes) {
        assert_eq!(mine.revision, everything.revision);
        if about(everything) == Some(ide.id.as_str()) {
            assert_eq!(mine.event, everything.event);
        } else {
            assert!(is_progress(mine), "{mine:?}");
        }
        assert_eq!(mine.stream_id, everything.stream_id);
    }
}

#[tokio::test]
async fn a_watcher_that_resumes_gets_exactly_the_changes_it_missed_and_no_snapshot() {
    let s = TestServer::start().await;
    let (t, ide, chat) = two_agents(&s).await;
    let watch = || async {
        t.client
            .watch_available_agents(AgentFilter::new())
            .await
            .expect("watch")
    };
    let (mut steady, mut broken) = (watch().await, watch().await);
    let (from, _) = snapshot_of(&mut steady).await;
    snapshot_of(&mut broken).await;
    t.client.update_workload(&ide.id, 1).await.expect("+1");
    let both = read_until(&mut broken, |e| upsert_at(e, &ide.id, 1)).await;
    let position = broken.position().cloned().expect("a position");
    assert_eq!(position.revision, both.last().expect("event").revision);
    drop(broken);

    // While it is away: workload, a new instance, a departure, a removal.
    t.client.update_workload(&ide.id, 2).await.expect("+2");
    register(&t, "i2", "ide-agent").await;
    t.client
        .update_workload(&chat.id, 1)
        .await
        .expect("chat +1");
    t.agent
        .deactivate_registration("c1", 0)
        .await
        .expect("deactivate");
    t.client.update_workload(&ide.id, 1).await.expect("+1");
    let seen = read_until(&mut steady, |e| upsert_at(e, &ide.id, 4)).await;
    let seen = without_gaps(from, seen);
    let missed: Vec<_> = seen
        .into_iter()
        .filter(|e| e.revision > position.revision)
        .collect();
    // Five changes; fewer events when the feed read a row after a later
    // change to it had committed (the row is read when its notification is
    // handled), so only "some" is certain. What counts is below: the resumed
    // watch gets exactly these.
    assert!(!missed.is_empty(), "{missed:#?}");

    let mut resumed = t
        .client
        .watch_available_agents_since(AgentFilter::new(), &position)
        .await
        .expect("resume");
    let first = next(&mut resumed).await;
    assert!(
        is_progress(&first),
        "a resumed watch starts with progress: {first:?}"
    );
    assert_eq!(first.revision, position.revision);
    assert_eq!(first.stream_id, position.stream_id);
    let last = missed.last().expect("missed").revision;
    let got = without_gaps(position.revision, read_to(&mut resumed, last).await);
    assert_eq!(got, missed, "exactly the changes missed");

    // And it goes on live.
    t.client.update_workload(&ide.id, -4).await.expect("-4");
    let live = next(&mut resumed).await;
    assert_eq!(live.revision, last + 1);
    assert!(upsert_at(&live, &ide.id, 0), "{live:?}");
}

#[tokio::test]
async fn a_watcher_past_the_buffer_gets_a_resync_and_a_snapshot() {
    let s = TestServer::start_with(|c| c.registry.watch_buffer = 2).await;
    let (t, ide, _) = two_agents(&s).await;
    let mut events = t
        .client
        .watch_available_agents(AgentFilter::new())
        .await
        .expect("watch");
    snapshot_of(&mut events).await;
    let position = events.position().cloned().expect("position");
    drop(events);
    // More changes than the buffer holds (a full configuration would not be offered).
    for _ in 0..9 {
        t.client.update_workload(&ide.id, 1).await.expect("+1");
    }
    wait_for_workload(&t.client, &ide.id, 9).await;

    let mut resumed = t
        .client
        .watch_available_agents_since(AgentFilter::new(), &position)
        .await
        .expect("resume");
    let resync = next(&mut resumed).await;
    assert!(matches!(resync.event, Some(Event::Resync(_))), "{resync:?}");
    assert!(
        resumed.position().is_none(),
        "no position until the snapshot"
    );
    let (revision, agents) = snapshot_of(&mut resumed).await;
    assert_eq!(revision, resync.revision);
    assert!(
        revision > position.revision + 2,
        "the same stream, counted on past the buffer"
    );
    let workload = agents
        .iter()
        .filter_map(|a| a.configuration.as_ref())
        .find(|c| c.id == ide.id)
        .map(|c| c.current_workload);
    assert_eq!(workload, Some(9));

    // From the snapshot on, it can resume again.
    let position = resumed.position().cloned().expect("position");
    drop(resumed);
    let mut again = t
        .client
        .watch_available_agents_since(AgentFilter::new(), &position)
        .await
        .expect("resume");
    let first = next(&mut again).await;
    assert!(
        is_progress(&first) && first.revision == revision,
        "{first:?}"
    );
}

#[tokio::test]
async fn resuming_on_another_replica_gets_a_resync_and_a_snapshot() {
    let s = TestServer::start().await;
    let r = s.replica().await;
    let (t, ide, _) = two_agents(&s).await;
    let tr = r.clients_of(&t).await;
    let mut events = t
        .client
        .watch_available_agents(AgentFilter::new())
        .await
        .expect("watch");
    snapshot_of(&mut events).await;
    t.client.update_workload(&ide.id, 1).await.expect("+1");
    read_until(&mut events, |e| upsert_at(e, &ide.id, 1)).await;
    let position = events.position().cloned().expect("position");
    drop(events);
    wait_for_workload(&tr.client, &ide.id, 1).await;

    // The other replica counts in a stream of its own: it cannot resume.
    let mut moved = tr
        .client
        .watch_available_agents_since(AgentFilter::new(), &position)
        .await
        .expect("watch on the replica");
    let resync = next(&mut moved).await;
    assert!(matches!(resync.event, Some(Event::Resync(_))), "{resync:?}");
    assert_ne!(resync.stream_id, position.stream_id);
    let (revision, agents) = snapshot_of(&mut moved).await;
    assert_eq!(agents.len(), 2);
    assert!(agents.iter().any(|a| {
        a.configuration
            .as_ref()
            .is_some_and(|c| c.current_workload == 1)
    }));
    // A change made through the first replica reaches it, counted in its own stream.
    t.client.update_workload(&ide.id, 1).await.expect("+1");
    let change = next(&mut moved).await;
    assert!(upsert_at(&change, &ide.id, 2), "{change:?}");
    assert_eq!(change.revision, revision + 1);
    assert_eq!(change.stream_id, resync.stream_id);

    // Back on the first replica with the second one's position: resync again.
    let position = moved.position().cloned().expect("position");
    let mut back = t
        .client
        .watch_available_agents_since(AgentFilter::new(), &position)
        .await
        .expect("watch");
    let resync = next(&mut back).await;
    assert!(matches!(resync.event, Some(Event::Resync(_))), "{resync:?}");
    // A position that was never given is refused, naming the field.
    let no_stream = t
        .client
        .watch_available_agents_since(AgentFilter::new(), &WatchPosition::new("", 3))
        .await;
    let error = no_stream.expect_err("refused");
    assert_eq!(error.field(), Some("stream_id"));
    assert_eq!(
        code(Err::<(), _>(error)),
        agentry_client::Code::InvalidArgument
    );
}

#[tokio::test]
async fn a_quiet_watch_gets_progress_events_at_the_current_revision() {
    let interval = Duration::from_millis(300);
    let s = TestServer::start_with(|c| c.registry.watch_progress_interval = interval).await;
    let (t, ide, _) = two_agents(&s).await;
    let mut events = t
        .client
        .watch_available_agents(AgentFilter::new())
        .await
        .expect("watch");
    let (revision, _) = snapshot_of(&mut events).await;
    let started = tokio::time::Instant::now();
    let first = next(&mut events).await;
    let second = next(&mut events).await;
    for progress in [&first, &second] {
        assert!(is_progress(progress), "{progress:?}");
        assert_eq!(progress.revision, revision);
    }
    assert!(
        started.elapsed() >= interval,
        "not before the interval: {:?}",
        started.elapsed()
    );
    // A change, then quiet again: progress at the new revision.
    t.client.update_workload(&ide.id, 1).await.expect("+1");
    let change = read_until(&mut events, |e| !is_progress(e)).await;
    let change = change.last().expect("change");
    assert_eq!(change.revision, revision + 1);
    let progress = next(&mut events).await;
    assert!(is_progress(&progress) && progress.revision == change.revision);
}
