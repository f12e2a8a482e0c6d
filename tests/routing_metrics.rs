//! GetAgentMetrics over a scripted history.

mod common;

use std::time::Duration;

use agentry_client::{Code, pb};
use common::routing::{configure, manifest, register};
use common::{TestServer, code};

#[tokio::test]
async fn metrics_of_a_scripted_scenario_are_exact() {
    let s = TestServer::start().await;
    manifest(&s, "ide-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let t = s.tenant("acme").await;
    let c = configure(&t, "ide-agent", 4).await;
    let r = register(&t, "i1", "ide-agent").await;
    let id = uuid::Uuid::parse_str(&c.id).expect("uuid");
    let tenant = uuid::Uuid::parse_str(&t.id).expect("uuid");
    let reg = uuid::Uuid::parse_str(&r.id).expect("uuid");
    // A scripted hour, written with explicit times relative to now: the
    // instance was healthy from -60 min to -30 min, unknown from -30 to -15, healthy since.
    sqlx::query("DELETE FROM registration_events")
        .execute(&s.pool)
        .await
        .expect("reset");
    for (minutes, kind, health) in [
        (60, "registered", "healthy"),
        (30, "failed", "unknown"),
        (15, "reconnected", "healthy"),
    ] {
        sqlx::query(
            "INSERT INTO registration_events (tenant_id, registration_id, configuration_id, kind, health_status, epoch, at) \
             VALUES ($1, $2, $3, $4, $5, 1, now() - make_interval(mins => $6))",
        )
        .bind(tenant)
        .bind(reg)
        .bind(id)
        .bind(kind)
        .bind(health)
        .bind(minutes)
        .execute(&s.pool)
        .await
        .expect("event");
    }
    // Leases: two concurrent 10-minute leases (succeeded, failed), one cancelled
    // 5-minute lease, one expired lease, and one that started before the hour.
    for (from, to, outcome) in [
        (50, 40, "succeeded"),
        (45, 35, "failed"),
        (20, 15, "cancelled"),
        (10, 5, "expired"),
        (70, 55, "succeeded"),
    ] {
        sqlx::query(
            "INSERT INTO workload_leases (id, tenant_id, configuration_id, registration_id, epoch, ttl_ms, acquired_at, expires_at, released_at, outcome) \
             VALUES ($1, $2, $3, $4, 1, 60000, now() - make_interval(mins => $5), now(), now() - make_interval(mins => $6), $7)",
        )
        .bind(uuid::Uuid::new_v4())
        .bind(tenant)
        .bind(id)
        .bind(reg)
        .bind(from)
        .bind(to)
        .bind(outcome)
        .execute(&s.pool)
        .await
        .expect("lease");
    }
    let m = t
        .client
        .get_agent_metrics(&c.id, Some(Duration::from_secs(3600)))
        .await
        .expect("metrics");
    assert_eq!(
        m.leases_acquired, 4,
        "the lease from -70 min started before the period"
    );
    assert_eq!(
        (
            m.leases_succeeded,
            m.leases_failed,
            m.leases_cancelled,
            m.leases_expired
        ),
        (2, 1, 1, 1)
    );
    assert_eq!(m.peak_workload, 2);
    // Busy minutes in the hour: 5 (-60..-55) + 10 + 10 + 5 + 5 = 35 of 60.
    let tolerance = 0.01; // the request's own "now" differs from the script's by milliseconds
    assert!(
        (m.average_workload - 35.0 / 60.0).abs() < tolerance,
        "{}",
        m.average_workload
    );
    assert!(
        (m.utilization - 35.0 / 60.0 / 4.0).abs() < tolerance,
        "{}",
        m.utilization
    );
    assert!(
        (m.healthy_time_ratio - 45.0 / 60.0).abs() < tolerance,
        "{}",
        m.healthy_time_ratio
    );
    assert_eq!(m.health_transitions, 2);
    assert_eq!(m.failures, 1);
    assert_eq!(m.instances_seen, 1);

    // Empty history and unknown ids answer sensibly.
    manifest(&s, "idle-agent", "ide", &[], pb::ManifestStatus::Active).await;
    let idle = configure(&t, "idle-agent", 2).await;
    let m = t
        .client
        .get_agent_metrics(&idle.id, None)
        .await
        .expect("metrics");
    assert_eq!(
        (m.leases_acquired, m.peak_workload, m.instances_seen),
        (0, 0, 0)
    );
    assert_eq!(
        (m.average_workload, m.utilization, m.healthy_time_ratio),
        (0.0, 0.0, 0.0)
    );
    assert_eq!(
        code(
            t.client
                .get_agent_metrics(&uuid::Uuid::new_v4().to_string(), None)
                .await
        ),
        Code::NotFound
    );
}
