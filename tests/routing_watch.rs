//! WatchAvailableAgents: a snapshot, then changes; a slow watcher resyncs.

mod common;

use agentry_client::{AgentFilter, CreateConfiguration, pb};
use common::TestServer;
use common::routing::{DEADLINE, close, configure, manifest, next, register, wait_available};

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
    use pb::availability_event::Event;
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
    assert_eq!(removed.event, Some(Event::Removed(instance.id.clone())));
}

#[tokio::test]
async fn a_slow_watcher_gets_a_resync_and_a_fresh_snapshot() {
    let s = TestServer::start_with(|c| c.registry.watch_buffer = 8).await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    // Large events (a 30 KiB prompt), so that HTTP/2 flow control fills up after a few dozen.
    let c = t
        .client
        .create_configuration(
            CreateConfiguration::for_agent("ide-agent")
                .max_workload(1000)
                .system_prompt("p".repeat(30 * 1024)),
        )
        .await
        .expect("configuration");
    register(&t, "i1", "ide-agent").await;
    wait_available(&t.client, AgentFilter::new(), "available", |a| a.len() == 1).await;
    let mut events = t
        .client
        .watch_available_agents(AgentFilter::new())
        .await
        .expect("watch");
    // Do not read while far more changes happen than the buffer and flow control hold.
    for _ in 0..400 {
        t.client.update_workload(&c.id, 1).await.expect("+1");
    }
    use pb::availability_event::Event;
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
