//! Load-aware routing: agents' load reports steer acquires, a report that
//! stops coming goes stale, explain names why each configuration and
//! instance is in or out, and flapping instances are held out and come back;
//! across two replicas, with real health streams.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use agentry_client::pb::{self, ExclusionReason as Why, LoadSource};
use agentry_client::{AgentFilter, AgentSession, Code, CreateConfiguration, UpdateConfiguration};
use common::routing::{DEADLINE, configure, manifest, register, wait_available};
use common::stream::{hello, raw_stream, welcome};
use common::{Tenant, TestServer, eventually};

fn fast_reports(c: &mut agentry_server::ServeConfig) {
    c.routing.load_report_blackout = Duration::ZERO;
    c.routing.load_report_ttl = Duration::from_secs(30);
}

async fn reporting(t: &Tenant, instance: &str, utilization: f64) -> AgentSession {
    let session = t
        .agent
        .agent_session(instance, "ide-agent")
        .connect()
        .await
        .expect("session");
    session.report(pb::LoadReport {
        utilization,
        ..Default::default()
    });
    session
}

/// Why the tenant's unfiltered answer is what it is.
async fn explanation(client: &agentry_client::Client) -> pb::Explanation {
    client
        .explain_available_agents(AgentFilter::new(), 0)
        .await
        .expect("explain")
        .explanation
        .expect("explanation")
}

/// The explained instances of the tenant's answer, by instance id.
async fn explained(client: &agentry_client::Client) -> HashMap<String, pb::ExplainedInstance> {
    explanation(client)
        .await
        .candidates
        .into_iter()
        .flat_map(|c| c.instances)
        .map(|i| (i.instance_id.clone(), i))
        .collect()
}

async fn wait_for_reports(client: &agentry_client::Client, instances: &[&str]) {
    eventually(DEADLINE, "both load reports reached routing", || async {
        let seen = explained(client).await;
        instances.iter().all(|i| {
            seen.get(*i)
                .is_some_and(|e| e.load_source == LoadSource::Report as i32)
        })
    })
    .await;
}

#[tokio::test]
async fn an_instance_reporting_high_utilisation_gets_less_work_than_an_idle_one() {
    let s = TestServer::start_with(fast_reports).await;
    let replica = s.replica().await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    configure(&t, "ide-agent", 10_000).await;
    let _busy = reporting(&t, "busy", 0.9).await;
    let _idle = reporting(&t, "idle", 0.1).await;
    let on_replica = common::client(replica.addr, &t.tenant_key).await;
    for client in [&t.client, &on_replica] {
        wait_for_reports(client, &["busy", "idle"]).await;
    }
    let seen = explained(&on_replica).await;
    assert!(seen["idle"].weight > seen["busy"].weight, "{seen:?}");

    let mut got: HashMap<String, u32> = HashMap::new();
    for n in 0..1_000 {
        let client = if n % 2 == 0 { &t.client } else { &on_replica };
        let lease = client
            .acquire_agent(AgentFilter::new(), None)
            .await
            .expect("acquire");
        let instance = lease
            .instance
            .as_ref()
            .expect("instance")
            .instance_id
            .clone();
        *got.entry(instance).or_default() += 1;
        client
            .release_agent(&lease.id, pb::LeaseOutcome::Succeeded)
            .await
            .expect("release");
    }
    let busy = got.get("busy").copied().unwrap_or(0);
    eprintln!("1,000 acquires: {got:?}");
    // Weights 1/(0.9+0.05) and 1/(0.1+0.05): the busy one's share is about 14 %.
    assert!(
        (50..=300).contains(&busy),
        "the busy instance got {busy} of 1,000 (expected about 140)"
    );
}

#[tokio::test]
async fn a_report_that_stops_coming_goes_stale_and_the_instance_is_ranked_by_leases() {
    let s = TestServer::start_with(|c| {
        c.routing.load_report_blackout = Duration::ZERO;
        // Long enough that the report is still fresh when first seen, even
        // after a slow write and feed; the stale wait below allows for it.
        c.routing.load_report_ttl = Duration::from_secs(3);
    })
    .await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    configure(&t, "ide-agent", 10).await;
    // A raw stream: one heartbeat with a report, then silence (the stream
    // stays open, so the instance stays active and healthy).
    let (tx, stream) = raw_stream(&s, &t.agent_key, vec![hello("quiet", "ide-agent")]).await;
    let mut stream = stream.expect("stream");
    let epoch = welcome(&mut stream).await.epoch;
    tx.send(pb::HealthStreamRequest {
        message: Some(pb::health_stream_request::Message::Heartbeat(
            pb::Heartbeat {
                sequence: 1,
                health_status: pb::HealthStatus::Healthy.into(),
                epoch,
                load: Some(pb::LoadReport {
                    utilization: 0.7,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    })
    .await
    .expect("heartbeat");
    // Ranked by the report, in one read (a second one could find it stale).
    eventually(DEADLINE, "the report ranks the instance", || async {
        explained(&t.client).await.get("quiet").is_some_and(|e| {
            e.load_source == LoadSource::Report as i32 && (e.load - 0.7).abs() < 1e-9
        })
    })
    .await;

    eventually(DEADLINE, "the report went stale", || async {
        explained(&t.client).await["quiet"].load_source == LoadSource::LeasesStaleReport as i32
    })
    .await;
    let why = explanation(&t.client).await;
    assert!(
        why.excluded
            .iter()
            .any(|e| e.reason == Why::LoadReportStale as i32 && !e.registration_id.is_empty()),
        "{why:?}"
    );
    assert_eq!(
        explained(&t.client).await["quiet"].load,
        0.0,
        "ranked by its leases (none) again"
    );
    drop(tx);
}

#[tokio::test]
async fn explain_names_the_reason_for_everything_left_out() {
    let s = TestServer::start().await;
    for (agent, kind, caps, status) in [
        ("ide-agent", "ide", "code", pb::ManifestStatus::Active),
        ("old-agent", "ide", "code", pb::ManifestStatus::Deprecated),
        ("off-agent", "ide", "code", pb::ManifestStatus::Active),
        ("full-agent", "ide", "code", pb::ManifestStatus::Active),
        ("empty-agent", "ide", "code", pb::ManifestStatus::Active),
        ("chat-agent", "chat", "talk", pb::ManifestStatus::Active),
    ] {
        manifest(&s, agent, kind, &[caps], status).await;
    }
    let t = s.tenant("acme").await;
    let ok = configure(&t, "ide-agent", 10).await;
    let old = configure(&t, "old-agent", 10).await;
    let off = t
        .client
        .create_configuration(CreateConfiguration::for_agent("off-agent").max_workload(10))
        .await
        .expect("configuration");
    t.client
        .update_configuration(UpdateConfiguration::new(&off.id).enabled(false))
        .await
        .expect("disable");
    let full = configure(&t, "full-agent", 1).await;
    let empty = configure(&t, "empty-agent", 10).await;
    let chat = configure(&t, "chat-agent", 10).await;
    for (instance, agent) in [
        ("ok-1", "ide-agent"),
        ("ok-drained", "ide-agent"),
        ("old-1", "old-agent"),
        ("off-1", "off-agent"),
        ("full-1", "full-agent"),
        ("chat-1", "chat-agent"),
    ] {
        register(&t, instance, agent).await;
    }
    t.client
        .drain_registration("ok-drained", "maintenance")
        .await
        .expect("drain");
    // A stream that breaks: the instance stays active, health unknown.
    let broken = t
        .agent
        .agent_session("ok-unhealthy", "ide-agent")
        .connect()
        .await
        .expect("session");
    drop(broken);
    let filter = || AgentFilter::new().capability("code");
    // The view must hold full-agent's instance before it can be filled.
    wait_available(
        &t.client,
        AgentFilter::new().agent_id("full-agent"),
        "full-agent is routable",
        |a| a.len() == 1,
    )
    .await;
    let held = t
        .client
        .acquire_agent(AgentFilter::new().agent_id("full-agent"), None)
        .await
        .expect("fills full-agent");

    let why = |explanation: &pb::Explanation, configuration: &str, instance: Option<&str>| {
        explanation
            .excluded
            .iter()
            .filter(|e| e.configuration_id == configuration)
            .filter(|e| {
                instance.is_none_or(|i| e.registration_id == i)
                    && (instance.is_some() || e.registration_id.is_empty())
            })
            .map(|e| Why::try_from(e.reason).expect("reason"))
            .collect::<Vec<_>>()
    };
    let registration = |instance: &str| {
        let client = t.client.clone();
        let instance = instance.to_owned();
        async move {
            client
                .get_registration_by_instance_id(&instance)
                .await
                .expect("registration")
                .id
        }
    };
    let (drained, unhealthy) = (
        registration("ok-drained").await,
        registration("ok-unhealthy").await,
    );
    eventually(DEADLINE, "the view has every change", || async {
        let answer = t
            .client
            .explain_available_agents(filter(), 0)
            .await
            .expect("explain");
        let e = answer.explanation.expect("explanation");
        why(&e, &off.id, None) == [Why::Disabled]
            && why(&e, &full.id, None) == [Why::Full]
            && why(&e, &ok.id, Some(&drained)) == [Why::Draining]
            && why(&e, &ok.id, Some(&unhealthy)) == [Why::Unhealthy]
    })
    .await;
    let answer = t
        .client
        .explain_available_agents(filter(), 0)
        .await
        .expect("explain");
    let e = answer.explanation.expect("explanation");
    assert_eq!(why(&e, &old.id, None), [Why::ManifestDeprecated], "{e:?}");
    assert_eq!(why(&e, &empty.id, None), [Why::NoHealthyInstance], "{e:?}");
    assert_eq!(why(&e, &chat.id, None), [Why::FilterMismatch], "{e:?}");
    assert!(
        why(&e, &ok.id, None).is_empty(),
        "ide-agent is answered: {e:?}"
    );
    let candidate = e
        .candidates
        .iter()
        .find(|c| c.configuration_id == ok.id)
        .expect("candidate");
    let terms = candidate.free_workload_term + candidate.healthy_term + candidate.instances_term;
    assert!(
        (terms - candidate.score).abs() < 1e-9,
        "the terms add up: {candidate:?}"
    );
    assert_eq!(
        candidate.instances.len(),
        1,
        "only ok-1 takes work: {candidate:?}"
    );
    assert_eq!(candidate.instances[0].instance_id, "ok-1");

    // Degraded only, while a healthy configuration exists.
    t.agent
        .update_health("ok-1", pb::HealthStatus::Degraded, 0)
        .await
        .expect("degraded");
    let another = configure_extra(&s, &t).await;
    eventually(DEADLINE, "ide-agent is degraded only", || async {
        let answer = t
            .client
            .explain_available_agents(filter(), 0)
            .await
            .expect("explain");
        why(&answer.explanation.expect("explanation"), &ok.id, None) == [Why::DegradedOnly]
    })
    .await;

    // An acquire that finds nothing says why in its error.
    let e = t
        .client
        .acquire_agent(AgentFilter::new().agent_id("full-agent"), None)
        .await
        .expect_err("full");
    assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e:?}");
    let info = e
        .details()
        .and_then(|d| d.error_info().cloned())
        .expect("ErrorInfo");
    assert_eq!(
        info.metadata.get("full").map(String::as_str),
        Some("1"),
        "{info:?}"
    );
    assert!(info.metadata.contains_key("filter_mismatch"), "{info:?}");
    // With explain, a granted lease carries the explanation too.
    let lease = t
        .client
        .acquire_agent_with(pb::AcquireAgentRequest {
            filter: Some(AgentFilter::new().agent_id(&another).into()),
            explain: true,
            ..Default::default()
        })
        .await
        .expect("acquire");
    assert!(lease.explanation.is_some_and(|e| !e.candidates.is_empty()));
    drop(held);
}

/// A healthy configuration besides ide-agent; its agent id.
async fn configure_extra(s: &TestServer, t: &Tenant) -> String {
    manifest(
        s,
        "other-agent",
        "ide",
        &["code"],
        pb::ManifestStatus::Active,
    )
    .await;
    configure(t, "other-agent", 10).await;
    register(t, "other-1", "other-agent").await;
    "other-agent".to_owned()
}

#[tokio::test]
async fn a_flapping_instance_is_held_out_then_readmitted_on_both_replicas() {
    let s = TestServer::start_with(|c| {
        c.routing.flap_threshold = 3;
        c.routing.flap_window = Duration::from_secs(30);
        // Long enough that the acquires below all run inside it.
        c.routing.flap_hold = Duration::from_secs(10);
    })
    .await;
    let replica = s.replica().await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    configure(&t, "ide-agent", 100).await;
    let flappy = register(&t, "flappy", "ide-agent").await;
    register(&t, "steady", "ide-agent").await;
    let on_replica = common::client(replica.addr, &t.tenant_key).await;
    let held_out = |client: agentry_client::Client| {
        let id = flappy.id.clone();
        async move {
            explanation(&client)
                .await
                .excluded
                .iter()
                .any(|e| e.registration_id == id && e.reason == Why::Flapping as i32)
        }
    };
    // Both replicas hold both instances before the first change: a replica
    // whose first snapshot came after a change would never count it.
    for client in [&t.client, &on_replica] {
        eventually(DEADLINE, "both instances routed", || async {
            explained(client).await.len() == 2
        })
        .await;
    }
    // Four changes within the window: one past the threshold. Each is seen
    // by both replicas before the next, so that no feed reads two at once.
    let changes = [
        pb::HealthStatus::Degraded,
        pb::HealthStatus::Healthy,
        pb::HealthStatus::Degraded,
        pb::HealthStatus::Healthy,
    ];
    for (i, health) in changes.into_iter().enumerate() {
        t.agent
            .update_health("flappy", health, 0)
            .await
            .expect("health");
        if i + 1 == changes.len() {
            break;
        }
        for client in [&t.client, &on_replica] {
            eventually(DEADLINE, "the health change routed", || async {
                explained(client)
                    .await
                    .get("flappy")
                    .is_some_and(|i| i.health_status == health as i32)
            })
            .await;
        }
    }
    for client in [&t.client, &on_replica] {
        eventually(DEADLINE, "held out for flapping", || {
            held_out((*client).clone())
        })
        .await;
    }
    for _ in 0..20 {
        let lease = on_replica
            .acquire_agent(AgentFilter::new(), None)
            .await
            .expect("acquire");
        assert_eq!(
            lease.instance.expect("instance").instance_id,
            "steady",
            "never the flapping one"
        );
        on_replica
            .release_agent(&lease.id, pb::LeaseOutcome::Succeeded)
            .await
            .expect("release");
    }
    for client in [&t.client, &on_replica] {
        eventually(DEADLINE * 2, "readmitted after its hold", || async {
            !held_out((*client).clone()).await && explained(client).await.contains_key("flappy")
        })
        .await;
    }
}
